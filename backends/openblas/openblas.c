/* metastep — the OpenBLAS backend.
 *
 * Serves GEMM (float32 and float64) through cblas_?gemm, or cblas_?gemv when
 * one of m, n is 1, looping over the batch; contiguous-run copies through
 * memcpy; and conv2d forward, backward-data and backward-weights (float32 and
 * float64) through im2col + GEMM (col2im for the data gradient).  Every other kernel slot is NULL, so the reference backend serves
 * it: OpenBLAS's level-1 routines do not beat plain loops on elementwise
 * work.
 */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
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
             "%s; core %s; %d thread%s; float32/float64 gemm, copy and conv2d", cfg,
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
/* conv2d (ABI 1.1): im2col + GEMM, col2im for the data gradient             */
/*                                                                            */
/* Images are processed in groups of g: im2col writes a (c·kh·kw) × (g·oh·ow) */
/* matrix (zeros where a window reads the padding) and one GEMM per group     */
/* multiplies it by the weights (o × c·kh·kw).  With g = 1 the GEMM writes    */
/* straight into y; with g > 1 (small images, where one image's GEMM is too   */
/* small for OpenBLAS to reach speed) a (o × g·oh·ow) result is scattered     */
/* into y.  Scratch is malloc'ed per call (thread-safe).                      */
/*                                                                            */
/* Non-finite values: the reference skips padded taps, while im2col+GEMM      */
/* multiplies them by an explicit 0, and 0·inf is NaN.  So a forward call     */
/* whose weights hold a NaN or an infinity, or a weight-gradient call whose   */
/* output gradient does, with padding > 0, is declined (ref serves it).  The  */
/* data gradient drops the padded positions in col2im: the same products as   */
/* the reference, no decline needed.                                          */
/* ------------------------------------------------------------------------ */

/* Columns per GEMM below which images are grouped. */
#ifndef CONV_MIN_COLS
#define CONV_MIN_COLS 256
#endif
/* Largest scratch matrix, in elements, a group may use. */
#define CONV_MAX_SCRATCH ((int64_t)1 << 22)

static int64_t conv_group(const ms_conv2d_desc *d, int64_t rows)
{
    const int64_t ohw = d->oh * d->ow;
    int64_t g = (CONV_MIN_COLS + ohw - 1) / ohw;
    if (g > d->n)
        g = d->n;
    while (g > 1 && rows * g * ohw > CONV_MAX_SCRATCH)
        g--;
    return g < 1 ? 1 : g;
}

static bool conv_fits(const ms_conv2d_desc *d)
{
    const int64_t ckk = d->c * d->kh * d->kw, ohw = d->oh * d->ow;
    /* Every GEMM dimension and leading dimension must fit an int. */
    return fits_int(ckk) && fits_int(d->o) && fits_int(d->n * ohw) && fits_int(d->o * ckk);
}

#define DEF_CONV_BLAS(T, S, GEMM)                                                               \
    static bool all_finite_##S(const T *p, int64_t n)                                           \
    {                                                                                           \
        T acc = 0;                                                                              \
        for (int64_t i = 0; i < n; i++)                                                         \
            acc += p[i] - p[i]; /* 0 for finite values, NaN otherwise */                        \
        return acc == 0;                                                                        \
    }                                                                                           \
    /* col[(ch,p,q), img·ohw + i·ow + j] = x[b0+img, ch, i·s+p-pad, j·s+q-pad] or 0. */          \
    static void im2col_##S(const ms_conv2d_desc *d, const T *x, int64_t b0, int64_t g, T *col)  \
    {                                                                                           \
        const int64_t ohw = d->oh * d->ow, ld = g * ohw;                                        \
        for (int64_t ch = 0; ch < d->c; ch++)                                                   \
            for (int64_t p = 0; p < d->kh; p++)                                                 \
                for (int64_t q = 0; q < d->kw; q++) {                                           \
                    T *row = col + ((ch * d->kh + p) * d->kw + q) * ld;                         \
                    for (int64_t img = 0; img < g; img++) {                                     \
                        const T *xc = x + ((b0 + img) * d->c + ch) * d->h * d->w;               \
                        T *out = row + img * ohw;                                               \
                        for (int64_t i = 0; i < d->oh; i++, out += d->ow) {                     \
                            const int64_t r = i * d->stride + p - d->padding;                   \
                            if (r < 0 || r >= d->h) {                                           \
                                memset(out, 0, (size_t)d->ow * sizeof(T));                      \
                                continue;                                                       \
                            }                                                                   \
                            const T *xr = xc + r * d->w;                                        \
                            int64_t j = 0, c0 = q - d->padding;                                 \
                            for (; j < d->ow && c0 + j * d->stride < 0; j++)                    \
                                out[j] = 0;                                                     \
                            if (d->stride == 1) {                                               \
                                int64_t jend = d->w - c0; /* first j with col >= w */           \
                                if (jend > d->ow)                                               \
                                    jend = d->ow;                                               \
                                if (jend > j) {                                                 \
                                    memcpy(out + j, xr + c0 + j, (size_t)(jend - j) * sizeof(T)); \
                                    j = jend;                                                   \
                                }                                                               \
                            } else {                                                            \
                                for (; j < d->ow && c0 + j * d->stride < d->w; j++)             \
                                    out[j] = xr[c0 + j * d->stride];                            \
                            }                                                                   \
                            for (; j < d->ow; j++)                                              \
                                out[j] = 0;                                                     \
                        }                                                                       \
                    }                                                                           \
                }                                                                               \
    }                                                                                           \
    /* gx[b0+img] += col entries, in-bounds taps only (gx zeroed by the caller). */              \
    static void col2im_##S(const ms_conv2d_desc *d, const T *col, int64_t b0, int64_t g, T *gx) \
    {                                                                                           \
        const int64_t ohw = d->oh * d->ow, ld = g * ohw;                                        \
        for (int64_t img = 0; img < g; img++)                                                   \
            for (int64_t ch = 0; ch < d->c; ch++) {                                             \
                T *xc = gx + ((b0 + img) * d->c + ch) * d->h * d->w;                            \
                for (int64_t p = 0; p < d->kh; p++)                                             \
                    for (int64_t q = 0; q < d->kw; q++) {                                       \
                        const T *in = col + ((ch * d->kh + p) * d->kw + q) * ld + img * ohw;    \
                        for (int64_t i = 0; i < d->oh; i++, in += d->ow) {                      \
                            const int64_t r = i * d->stride + p - d->padding;                   \
                            if (r < 0 || r >= d->h)                                             \
                                continue;                                                       \
                            T *xr = xc + r * d->w;                                              \
                            for (int64_t j = 0; j < d->ow; j++) {                               \
                                const int64_t cc = j * d->stride + q - d->padding;              \
                                if (cc >= 0 && cc < d->w)                                       \
                                    xr[cc] += in[j];                                            \
                            }                                                                   \
                        }                                                                       \
                    }                                                                           \
            }                                                                                   \
    }                                                                                           \
    static ms_status conv_fwd_##S(const ms_conv2d_desc *d, const T *x, const T *w,              \
                                  const T *bias, T *y)                                          \
    {                                                                                           \
        const int64_t ckk = d->c * d->kh * d->kw, ohw = d->oh * d->ow;                          \
        if (d->padding > 0 && !all_finite_##S(w, d->o * ckk))                                   \
            return MS_ERR_UNSUPPORTED;                                                          \
        const int64_t g = conv_group(d, ckk + d->o);                                            \
        T *col = malloc((size_t)(ckk * g * ohw) * sizeof(T));                                   \
        T *out = g > 1 ? malloc((size_t)(d->o * g * ohw) * sizeof(T)) : NULL;                   \
        if (!col || (g > 1 && !out)) {                                                          \
            free(col);                                                                          \
            free(out);                                                                          \
            return MS_ERR_NOMEM;                                                                \
        }                                                                                       \
        for (int64_t b0 = 0; b0 < d->n; b0 += g) {                                              \
            const int64_t gg = d->n - b0 < g ? d->n - b0 : g, cols = gg * ohw;                  \
            im2col_##S(d, x, b0, gg, col);                                                      \
            T *dst = g > 1 ? out : y + b0 * d->o * ohw;                                         \
            GEMM(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)d->o, (int)cols, (int)ckk,     \
                 (T)1, w, (int)ckk, col, (int)cols, (T)0, dst, (int)cols);                      \
            for (int64_t img = 0; img < gg; img++)                                              \
                for (int64_t f = 0; f < d->o; f++) {                                            \
                    const T *src = dst + f * cols + img * ohw;                                  \
                    T *yo = y + ((b0 + img) * d->o + f) * ohw;                                  \
                    if (g > 1)                                                                  \
                        memcpy(yo, src, (size_t)ohw * sizeof(T));                               \
                    if (bias) {                                                                 \
                        const T bf = bias[f];                                                   \
                        for (int64_t k = 0; k < ohw; k++)                                       \
                            yo[k] += bf;                                                        \
                    }                                                                           \
                }                                                                               \
        }                                                                                       \
        free(col);                                                                              \
        free(out);                                                                              \
        return MS_OK;                                                                           \
    }                                                                                           \
    /* gy of images b0..b0+gg as one (o × gg·ohw) matrix. */                                     \
    static void gather_gy_##S(const ms_conv2d_desc *d, const T *gy, int64_t b0, int64_t gg,     \
                              T *dst)                                                           \
    {                                                                                           \
        const int64_t ohw = d->oh * d->ow, cols = gg * ohw;                                     \
        for (int64_t img = 0; img < gg; img++)                                                  \
            for (int64_t f = 0; f < d->o; f++)                                                  \
                memcpy(dst + f * cols + img * ohw, gy + ((b0 + img) * d->o + f) * ohw,          \
                       (size_t)ohw * sizeof(T));                                                \
    }                                                                                           \
    static ms_status conv_bwd_data_##S(const ms_conv2d_desc *d, const T *gy, const T *w, T *gx) \
    {                                                                                           \
        const int64_t ckk = d->c * d->kh * d->kw, ohw = d->oh * d->ow;                          \
        const int64_t g = conv_group(d, ckk + d->o);                                            \
        T *col = malloc((size_t)(ckk * g * ohw) * sizeof(T));                                   \
        T *gyg = g > 1 ? malloc((size_t)(d->o * g * ohw) * sizeof(T)) : NULL;                   \
        if (!col || (g > 1 && !gyg)) {                                                          \
            free(col);                                                                          \
            free(gyg);                                                                          \
            return MS_ERR_NOMEM;                                                                \
        }                                                                                       \
        memset(gx, 0, (size_t)(d->n * d->c * d->h * d->w) * sizeof(T));                        \
        for (int64_t b0 = 0; b0 < d->n; b0 += g) {                                              \
            const int64_t gg = d->n - b0 < g ? d->n - b0 : g, cols = gg * ohw;                  \
            const T *src = gy + b0 * d->o * ohw;                                                \
            if (g > 1) {                                                                        \
                gather_gy_##S(d, gy, b0, gg, gyg);                                              \
                src = gyg;                                                                      \
            }                                                                                   \
            /* col (ckk × cols) = wᵀ · gy_group */                                              \
            GEMM(CblasRowMajor, CblasTrans, CblasNoTrans, (int)ckk, (int)cols, (int)d->o,       \
                 (T)1, w, (int)ckk, src, (int)cols, (T)0, col, (int)cols);                      \
            col2im_##S(d, col, b0, gg, gx);                                                     \
        }                                                                                       \
        free(col);                                                                              \
        free(gyg);                                                                              \
        return MS_OK;                                                                           \
    }                                                                                           \
    static ms_status conv_bwd_weights_##S(const ms_conv2d_desc *d, const T *x, const T *gy,     \
                                          T *gw)                                                \
    {                                                                                           \
        const int64_t ckk = d->c * d->kh * d->kw, ohw = d->oh * d->ow;                          \
        if (d->padding > 0 && !all_finite_##S(gy, d->n * d->o * ohw))                           \
            return MS_ERR_UNSUPPORTED;                                                          \
        const int64_t g = conv_group(d, ckk + d->o);                                            \
        T *col = malloc((size_t)(ckk * g * ohw) * sizeof(T));                                   \
        T *gyg = g > 1 ? malloc((size_t)(d->o * g * ohw) * sizeof(T)) : NULL;                   \
        if (!col || (g > 1 && !gyg)) {                                                          \
            free(col);                                                                          \
            free(gyg);                                                                          \
            return MS_ERR_NOMEM;                                                                \
        }                                                                                       \
        for (int64_t b0 = 0; b0 < d->n; b0 += g) {                                              \
            const int64_t gg = d->n - b0 < g ? d->n - b0 : g, cols = gg * ohw;                  \
            const T *src = gy + b0 * d->o * ohw;                                                \
            if (g > 1) {                                                                        \
                gather_gy_##S(d, gy, b0, gg, gyg);                                              \
                src = gyg;                                                                      \
            }                                                                                   \
            im2col_##S(d, x, b0, gg, col);                                                      \
            /* gw (o × ckk) (+)= gy_group · colᵀ; the first group overwrites gw */              \
            GEMM(CblasRowMajor, CblasNoTrans, CblasTrans, (int)d->o, (int)ckk, (int)cols,       \
                 (T)1, src, (int)cols, col, (int)cols, b0 == 0 ? (T)0 : (T)1, gw, (int)ckk);    \
        }                                                                                       \
        free(col);                                                                              \
        free(gyg);                                                                              \
        return MS_OK;                                                                           \
    }

DEF_CONV_BLAS(float, f32, cblas_sgemm)
DEF_CONV_BLAS(double, f64, cblas_dgemm)

static ms_status blas_conv2d(ms_dtype dt, const ms_conv2d_desc *d, const void *x, const void *w,
                             const void *bias, void *y)
{
    if ((dt != MS_F32 && dt != MS_F64) || !conv_fits(d))
        return MS_ERR_UNSUPPORTED;
    return dt == MS_F32 ? conv_fwd_f32(d, x, w, bias, y) : conv_fwd_f64(d, x, w, bias, y);
}

static ms_status blas_conv2d_backward_data(ms_dtype dt, const ms_conv2d_desc *d, const void *gy,
                                           const void *w, void *gx)
{
    if ((dt != MS_F32 && dt != MS_F64) || !conv_fits(d))
        return MS_ERR_UNSUPPORTED;
    return dt == MS_F32 ? conv_bwd_data_f32(d, gy, w, gx) : conv_bwd_data_f64(d, gy, w, gx);
}

static ms_status blas_conv2d_backward_weights(ms_dtype dt, const ms_conv2d_desc *d,
                                              const void *x, const void *gy, void *gw)
{
    if ((dt != MS_F32 && dt != MS_F64) || !conv_fits(d))
        return MS_ERR_UNSUPPORTED;
    return dt == MS_F32 ? conv_bwd_weights_f32(d, x, gy, gw) : conv_bwd_weights_f64(d, x, gy, gw);
}

/* ------------------------------------------------------------------------ */
/* table                                                                     */

static ms_status blas_init(void)
{
    pthread_once(&g_description_once, fill_description);
    return MS_OK;
}

/* ABI 1.2: OpenBLAS threads its calls itself; its setting is process-wide. */
static int blas_set_num_threads(int n)
{
    int prev = openblas_get_num_threads();
    if (n >= 1 && n != prev)
        openblas_set_num_threads(n);
    return prev;
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
    .conv2d = blas_conv2d,
    .conv2d_backward_data = blas_conv2d_backward_data,
    .conv2d_backward_weights = blas_conv2d_backward_weights,
    .set_num_threads = blas_set_num_threads,
};

MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void)
{
    pthread_once(&g_description_once, fill_description);
    return &g_table;
}
