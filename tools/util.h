/* Small helpers shared by the metastep command's subcommands. */
#ifndef METASTEP_TOOLS_UTIL_H
#define METASTEP_TOOLS_UTIL_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
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
/* The options of a command, parsed with getopt_long: "--name value",
 * "--name=value", -h (--help); fn(user, opts[i].val, value) takes a known
 * option (false: "invalid value").  A long option the command does not know
 * goes to extra(user, key, key_len, value) -- value from "=value" or the
 * next argument unless that starts with "--", else NULL -- or, when extra is
 * NULL, is refused as "unknown option '--key'".  Returns 0, or 2 after a
 * message on stderr (unknown option, missing value, invalid value, stray
 * argument). */
typedef bool (*util_opt_fn)(void *user, int id, const char *value);
typedef bool (*util_extra_fn)(void *user, const char *key, size_t key_len, const char *value);
int util_parse_options(const char *cmd, int argc, char **argv, const struct option *opts,
                       util_opt_fn fn, util_extra_fn extra, void *user);
/* Remove DIR's "*.tmp-PID-N" files whose process PID is gone (left by a
 * kill during an atomic write); returns how many. */
int util_remove_stale_temporaries(const char *dir);
/* Write a whole file atomically (temporary file, fsync, rename); false with
 * errno set on failure (nothing left behind). */
bool util_write_atomic(const char *path, const char *text, size_t len);
/* A JSON number: %.6g, or null when NaN or infinite. */
void util_json_number(FILE *f, double v);
/* Element i of a tensor as double (any dtype). */
double util_value(const ms_tensor *t, int64_t i);

#endif
