/* Small helpers shared by the metastep command's subcommands. */
#ifndef METASTEP_TOOLS_UTIL_H
#define METASTEP_TOOLS_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "metastep/tensor.h"

/* Write s as a JSON string literal (quoted, escaped). */
void util_json_string(FILE *f, const char *s);
/* Index of s in names[0..n), or -1. */
int util_choice(const char *s, const char *const *names, int n);
/* Parse a whole decimal integer within [lo, hi]; false otherwise. */
bool util_int(const char *s, int lo, int hi, int *out);
bool util_long(const char *s, long lo, long hi, long *out);
/* Parse a whole finite floating-point number; false otherwise. */
bool util_double(const char *s, double *out);
/* Create a directory and its missing parents (mkdir -p); false with errno
 * set when one cannot be created. */
bool util_mkdirs(const char *path);
/* Element i of a tensor as double (any dtype). */
double util_value(const ms_tensor *t, int64_t i);

#endif
