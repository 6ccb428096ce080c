/* metastep — the backend conformance engine, shared by `metastep conformance`
 * and the check suite tests/conformance/.
 *
 * Modelled on ggml's tests/test-backend-ops.cpp: one list of cases per kernel
 * family, each run on the candidate backend and on the reference backend with
 * the same seeded inputs, the outputs compared within the tolerances of one
 * table (conformance.c, TOLERANCES).  Kernels are called directly through the
 * backend tables; then every forward op of ops.h runs end to end under
 * metastep_set_backend(candidate) and ("ref"), and every differentiable op's
 * float32 gradient is compared the same way ("grad"), and its float64
 * gradient on the candidate against central finite differences
 * ("gradcheck"); then a few kernels run on several threads at once
 * ("threads"); last, the convolution kernels of ABI 1.1 ("conv").  Uses only the public headers.
 */
#ifndef METASTEP_CONFORMANCE_H
#define METASTEP_CONFORMANCE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

/* One row of the result table: a kernel (family/op/dtype) and its cases. */
typedef struct conf_row {
    char kernel[64];     /* "unary/tanh/float32", "gemm/float64", "grad/matmul/float32" */
    char family[16];     /* "unary", ..., "ops", "grad", "gradcheck" */
    int cases;           /* cases run */
    int native;          /* cases the candidate served itself */
    int fallback;        /* NULL slot or MS_ERR_UNSUPPORTED (not a failure) */
    int failed;          /* cases outside tolerance or with an error status */
    double worst;        /* worst relative error over the compared cases */
    double worst_tol;    /* the tolerance that applied to that case (0: exact) */
    double worst_ratio;  /* worst / worst_tol: the case closest to failing */
    char first_failure[256]; /* what failed first, with the case's shapes */
} conf_row;

typedef struct conf_report {
    char backend[512];     /* as given: a name or a path */
    char name[64];         /* the table's name */
    char description[256]; /* the table's description */
    conf_row *rows;
    int nrows, cap;
    int failed_rows;
    char error[1024];      /* non-empty when the run could not start (load failure) */
} conf_report;

/* The families, in run order ("unary", ..., "where", "ops", "grad", "gradcheck",
 * "threads": a few kernels called from several threads at once, "conv": the
 * ABI 1.1 convolution kernels, read from a candidate's table only when its
 * size covers them: a 1.0 table's are reported as fallback). */
extern const char *const conf_families[];
extern const int conf_family_count;

/* Run the families whose name is in `families` (NULL-terminated list; NULL:
 * every family) on `backend` (a name or a path to a .so).  Always returns a
 * report (NULL only when out of memory); on a load failure report->error is
 * set and there are no rows. */
conf_report *conf_run(const char *backend, const char *const *families);

/* Rows failed (plus one when report->error is set). */
int conf_failures(const conf_report *r);

/* The table (every row, or with quiet only failed rows), then a summary line
 * and one "FAIL kernel: reason" line per failed row. */
void conf_print(FILE *f, const conf_report *r, bool quiet);

void conf_free(conf_report *r);

#endif
