/* metastep — the OpenBLAS backend.
 *
 * Serves GEMM (float32 and float64) through cblas_?gemm, or cblas_?gemv when
 * one of m, n is 1, looping over the batch; and contiguous-run copies through
 * memcpy.  Every other kernel slot is NULL, so the reference backend serves
 * it: OpenBLAS's level-1 routines do not beat plain loops on elementwise
 * work.
 */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <cblas.h>

#include "metastep/backend.h"

/* ------------------------------------------------------------------------ */
/* description                                                               */

static char g_description[256] = "OpenBLAS";
static pthread_once_t g_description_once = PTHREAD_ONCE_INIT;

static void fill_description(void)
{
    const char *config = openblas_get_config();
    const char *core = openblas_get_corename();
    char cfg[160];
    snprintf(cfg, sizeof cfg, "%s", config ? config : "OpenBLAS (unknown version)");
    /* Trim trailing blanks: OpenBLAS's config string ends with a space. */
    size_t len = strlen(cfg);
    while (len > 0 && (cfg[len - 1] == ' ' || cfg[len - 1] == '\n'))
        cfg[--len] = '\0';
    int threads = openblas_get_num_threads();
    snprintf(g_description, sizeof g_description,
             "%s; core %s; %d thread%s; float32/float64 gemm and copy", cfg,
             core ? core : "unknown", threads, threads == 1 ? "" : "s");
}

/* ------------------------------------------------------------------------ */
/* gemm                                                                      */

static bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* C (m×n, ldc) = beta * C, or zeros when beta is 0 (C not read). */
static void scale_c(ms_dtype dt, int64_t m, int64_t n, double beta, void *c, int64_t ldc)
{
    if (beta == 1.0)
        return;
    for (int64_t i = 0; i < m; i++) {
        if (dt == MS_F32) {
            float *row = (float *)c + i * ldc;
            if (beta == 0.0) {
                memset(row, 0, (size_t)n * sizeof(float));
            } else {
                float bf = (float)beta;
                for (int64_t j = 0; j < n; j++)
                    row[j] *= bf;
            }
        } else {
            double *row = (double *)c + i * ldc;
            if (beta == 0.0) {
                memset(row, 0, (size_t)n * sizeof(double));
            } else {
                for (int64_t j = 0; j < n; j++)
                    row[j] *= beta;
            }
        }
    }
}

/* Zero a strided vector (used before gemv with beta 0 so C is never read:
 * some OpenBLAS versions scale y by beta with a NaN-propagating scal). */
static void zero_vec(ms_dtype dt, int64_t len, void *y, int64_t inc)
{
    if (dt == MS_F32) {
        float *p = y;
        for (int64_t i = 0; i < len; i++)
            p[i * inc] = 0.0f;
    } else {
        double *p = y;
        for (int64_t i = 0; i < len; i++)
            p[i * inc] = 0.0;
    }
}

static ms_status blas_gemm(ms_dtype dt, bool trans_a, bool trans_b, int64_t batch, int64_t m,
                           int64_t n, int64_t k, double alpha, const void *a, int64_t lda,
                           int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b,
                           double beta, void *c, int64_t ldc, int64_t stride_c)
{
    if (dt != MS_F32 && dt != MS_F64)
        return MS_ERR_UNSUPPORTED;
    if (batch <= 0 || m <= 0 || n <= 0)
        return MS_OK;
    const size_t es = dt == MS_F32 ? sizeof(float) : sizeof(double);

    if (k <= 0) {
        /* alpha * (empty product) = 0: C = beta * C. */
        for (int64_t p = 0; p < batch; p++)
            scale_c(dt, m, n, beta, (char *)c + (size_t)(p * stride_c) * es, ldc);
        return MS_OK;
    }

    /* Stored shapes: A is (trans_a ? k×m : m×k), B is (trans_b ? n×k : k×n). */
    int64_t a_rows = trans_a ? k : m, a_cols = trans_a ? m : k;
    int64_t b_rows = trans_b ? n : k, b_cols = trans_b ? k : n;
    /* A single-row matrix's leading dimension is never used: normalise it so
     * BLAS's argument checks pass. */
    if (a_rows == 1)
        lda = a_cols;
    if (b_rows == 1)
        ldb = b_cols;
    if (m == 1 && ldc < n)
        ldc = n;
    if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) ||
        !fits_int(ldc) || lda < a_cols || ldb < b_cols || ldc < n)
        return MS_ERR_UNSUPPORTED;

    const enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
    const enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;

    for (int64_t p = 0; p < batch; p++) {
        const char *ap = (const char *)a + (size_t)(p * stride_a) * es;
        const char *bp = (const char *)b + (size_t)(p * stride_b) * es;
        char *cp = (char *)c + (size_t)(p * stride_c) * es;

        if (n == 1) {
            /* c[:,0] = alpha * op(A) · op(B)[:,0] + beta * c[:,0]. */
            int incx = trans_b ? 1 : (int)ldb;
            int incy = (int)ldc;
            if (beta == 0.0)
                zero_vec(dt, m, cp, ldc);
            if (dt == MS_F32)
                cblas_sgemv(CblasRowMajor, ta, (int)a_rows, (int)a_cols, (float)alpha,
                            (const float *)ap, (int)lda, (const float *)bp, incx,
                            (float)beta, (float *)cp, incy);
            else
                cblas_dgemv(CblasRowMajor, ta, (int)a_rows, (int)a_cols, alpha,
                            (const double *)ap, (int)lda, (const double *)bp, incx, beta,
                            (double *)cp, incy);
        } else if (m == 1) {
            /* c[0,:]ᵀ = alpha * op(B)ᵀ · op(A)[0,:]ᵀ + beta * c[0,:]ᵀ. */
            enum CBLAS_TRANSPOSE tbt = trans_b ? CblasNoTrans : CblasTrans;
            int incx = trans_a ? (int)lda : 1;
            if (beta == 0.0)
                zero_vec(dt, n, cp, 1);
            if (dt == MS_F32)
                cblas_sgemv(CblasRowMajor, tbt, (int)b_rows, (int)b_cols, (float)alpha,
                            (const float *)bp, (int)ldb, (const float *)ap, incx,
                            (float)beta, (float *)cp, 1);
            else
                cblas_dgemv(CblasRowMajor, tbt, (int)b_rows, (int)b_cols, alpha,
                            (const double *)bp, (int)ldb, (const double *)ap, incx, beta,
                            (double *)cp, 1);
        } else {
            if (dt == MS_F32)
                cblas_sgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, (float)alpha,
                            (const float *)ap, (int)lda, (const float *)bp, (int)ldb,
                            (float)beta, (float *)cp, (int)ldc);
            else
                cblas_dgemm(CblasRowMajor, ta, tb, (int)m, (int)n, (int)k, alpha,
                            (const double *)ap, (int)lda, (const double *)bp, (int)ldb, beta,
                            (double *)cp, (int)ldc);
        }
    }
    return MS_OK;
}

/* ------------------------------------------------------------------------ */
/* copy                                                                      */

/* Drop size-1 dims and merge adjacent dims that are contiguous in both src
 * and dst.  Returns the new ndim (0 means a single element). */
static int coalesce2(int ndim, const int64_t *shape, const int64_t *s1, const int64_t *s2,
                     int64_t *osh, int64_t *o1, int64_t *o2)
{
    int nd = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1)
            continue;
        if (nd > 0 && o1[nd - 1] == s1[d] * shape[d] && o2[nd - 1] == s2[d] * shape[d]) {
            osh[nd - 1] *= shape[d];
            o1[nd - 1] = s1[d];
            o2[nd - 1] = s2[d];
            continue;
        }
        osh[nd] = shape[d];
        o1[nd] = s1[d];
        o2[nd] = s2[d];
        nd++;
    }
    return nd;
}

static ms_status blas_copy(ms_dtype dt, int ndim, const int64_t *shape, const void *src,
                           const int64_t *ss, void *dst, const int64_t *ds)
{
    if (dt != MS_F32 && dt != MS_F64)
        return MS_ERR_UNSUPPORTED;
    if (ndim < 0 || ndim > MS_MAX_DIMS)
        return MS_ERR_UNSUPPORTED;
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0)
            return MS_OK;
    const size_t es = dt == MS_F32 ? sizeof(float) : sizeof(double);

    int64_t sh[MS_MAX_DIMS], st_s[MS_MAX_DIMS], st_d[MS_MAX_DIMS];
    int nd = coalesce2(ndim, shape, ss, ds, sh, st_s, st_d);
    if (nd == 0) {
        memcpy(dst, src, es);
        return MS_OK;
    }
    /* Inner run: contiguous in both -> memcpy; otherwise an element loop. */
    const int inner = nd - 1;
    const bool contiguous = st_s[inner] == 1 && st_d[inner] == 1;
    const int64_t len = sh[inner];

    int64_t idx[MS_MAX_DIMS] = {0};
    const char *sp = src;
    char *dp = dst;
    for (;;) {
        if (contiguous) {
            memcpy(dp, sp, (size_t)len * es);
        } else if (dt == MS_F32) {
            const float *s = (const float *)sp;
            float *o = (float *)dp;
            for (int64_t i = 0; i < len; i++)
                o[i * st_d[inner]] = s[i * st_s[inner]];
        } else {
            const double *s = (const double *)sp;
            double *o = (double *)dp;
            for (int64_t i = 0; i < len; i++)
                o[i * st_d[inner]] = s[i * st_s[inner]];
        }
        /* Advance the outer index. */
        int d = inner - 1;
        for (; d >= 0; d--) {
            if (++idx[d] < sh[d]) {
                sp += st_s[d] * (int64_t)es;
                dp += st_d[d] * (int64_t)es;
                break;
            }
            sp -= (sh[d] - 1) * st_s[d] * (int64_t)es;
            dp -= (sh[d] - 1) * st_d[d] * (int64_t)es;
            idx[d] = 0;
        }
        if (d < 0)
            break;
    }
    return MS_OK;
}

/* ------------------------------------------------------------------------ */
/* table                                                                     */

static ms_status blas_init(void)
{
    pthread_once(&g_description_once, fill_description);
    return MS_OK;
}

static const ms_backend g_table = {
    .header = {MS_BACKEND_ABI_MAJOR, MS_BACKEND_ABI_MINOR, sizeof(ms_backend), "openblas",
               g_description},
    .init = blas_init,
    .shutdown = NULL,
    .unary = NULL,
    .binary = NULL,
    .reduce = NULL,
    .gemm = blas_gemm,
    .copy = blas_copy,
    .softmax = NULL,
    .fill = NULL,
    .arange = NULL,
    .where = NULL,
};

MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void)
{
    pthread_once(&g_description_once, fill_description);
    return &g_table;
}
