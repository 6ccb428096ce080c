/* metastep — the libxsmm backend.
 *
 * Serves GEMM (float32 and float64) through libxsmm's JIT-generated small
 * matrix kernels, which neither pack their operands nor zero C: one kernel
 * call per batch item and tile.  Every other kernel slot is NULL, so the
 * reference backend serves it.
 *
 * libxsmm is column-major; metastep is row-major.  A row-major m×n C with
 * leading dimension ldc is, read column-major, Cᵀ (n×m, same ld), so
 *     C = op(A)·op(B)   is computed as   Cᵀ = op(B)ᵀ·op(A)ᵀ
 * column-major, with libxsmm's A the buffer of B and its B the buffer of A.
 * libxsmm 1.17 generates kernels for its B transposed (our trans_a) but not
 * for its A transposed (our trans_b): a transposed B is therefore copied
 * into its plain layout first (once per call when every batch item shares
 * B), which costs O(n·k) against the GEMM's O(m·n·k).
 *
 * The JIT kernels take alpha = 1 and beta ∈ {0, 1} only; the other cases
 * scale C before or after (no change in rounding against the reference
 * backend's alpha·acc + beta·C), and alpha ≠ 1 with beta ≠ 0 computes the
 * product into a scratch tile.  With beta 0 the kernels are generated with
 * LIBXSMM_GEMM_FLAG_BETA_0 and never read C.  The kernels do every
 * multiply-add (no zero skipping), so NaN and infinities propagate as IEEE
 * GEMM does, as in the reference backend.
 *
 * Three thin shapes are plain loops instead (thin_* and rowdot_*, below):
 * one output column (A stored transposed, or not, with AVX-512), and outer
 * products with B stored transposed.
 *
 * Large problems are cut into TILE_M × TILE_N × TILE_K tiles (the later
 * k-tiles accumulate with beta 1) so that the working set of one kernel call
 * stays in cache: still no packing, one JIT kernel per tile shape.
 *
 * libxsmm's dispatch (a registry of generated code) is thread-safe; in front
 * of it each thread keeps a small direct-mapped cache of the kernels it used
 * last, which takes dispatch from ~70 ns to a few ns per call.
 */
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxsmm.h>
#include <libxsmm_generator.h>

#include "metastep/backend.h"

/* Tile sizes in metastep's (row-major) terms: rows of C, columns of C, and
 * the inner dimension.  A problem within them is one kernel call. */
#define TILE_M 64
#define TILE_N 64
#define TILE_K 256

/* Elements of a transposed B kept on the stack (larger ones are malloc'd). */
#define STACK_BT 2048

/* ------------------------------------------------------------------------ */
/* kernel cache                                                              */

typedef struct kc_entry {
    int key[8]; /* dtype, M, N, K, lda, ldb, ldc, flags (libxsmm's terms) */
    libxsmm_xmmfunction fn;
} kc_entry;

#define KC_SIZE 64 /* power of two */
static _Thread_local kc_entry tl_kernels[KC_SIZE];

/* The kernel for column-major C (M×N, ldc) = A (M×K, lda) · B (K×N, ldb, or
 * stored N×K when `flags` has TRANS_B), beta from `flags` (BETA_0 or 1);
 * NULL when libxsmm cannot generate it. */
static libxsmm_xmmfunction get_kernel(ms_dtype dt, int M, int N, int K, int lda, int ldb,
                                      int ldc, int flags)
{
    const int key[8] = {(int)dt, M, N, K, lda, ldb, ldc, flags};
    uint32_t h = 2166136261u;
    for (int i = 0; i < 8; i++)
        h = (h ^ (uint32_t)key[i]) * 16777619u;
    kc_entry *e = &tl_kernels[(h ^ (h >> 15)) & (KC_SIZE - 1)];
    if (e->fn.xmm && memcmp(e->key, key, sizeof key) == 0)
        return e->fn;

    libxsmm_xmmfunction fn;
    const int prefetch = LIBXSMM_GEMM_PREFETCH_NONE;
    const libxsmm_blasint m = M, n = N, k = K, la = lda, lb = ldb, lc = ldc;
    if (dt == MS_F32) {
        const float alpha = 1.0f, beta = (flags & LIBXSMM_GEMM_FLAG_BETA_0) ? 0.0f : 1.0f;
        fn.smm = libxsmm_smmdispatch(m, n, k, &la, &lb, &lc, &alpha, &beta, &flags, &prefetch);
    } else {
        const double alpha = 1.0, beta = (flags & LIBXSMM_GEMM_FLAG_BETA_0) ? 0.0 : 1.0;
        fn.dmm = libxsmm_dmmdispatch(m, n, k, &la, &lb, &lc, &alpha, &beta, &flags, &prefetch);
    }
    if (fn.xmm) {
        memcpy(e->key, key, sizeof key);
        e->fn = fn;
    }
    return fn;
}

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */

/* Whether libxsmm generates AVX code here (set once at init). */
static bool g_avx;

/* libxsmm's generated kernels return with the upper halves of the vector
 * registers dirty (no vzeroupper).  The code that runs next is compiled for
 * baseline x86-64, SSE-encoded (this file, the frontend, the reference
 * backend's default paths), and each of its vector instructions then waits
 * on the dirty upper state: measured here, a 10×40×1 GEMM took 230 ns
 * through this backend against 29 ns for the bare kernel.  Every path that
 * ran generated code clears the state before returning. */
static inline void clean_upper(void)
{
#if defined(__x86_64__) || defined(__i386__)
    if (g_avx)
        __asm__ volatile("vzeroupper");
#endif
}

static bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* C (m×n, ldc) = beta * C, or zeros when beta is 0 (C not read). */
static void scale_c(ms_dtype dt, int64_t m, int64_t n, double beta, void *c, int64_t ldc)
{
    if (beta == 1.0)
        return;
    for (int64_t i = 0; i < m; i++) {
        if (dt == MS_F32) {
            float *row = (float *)c + i * ldc;
            const float bf = (float)beta;
            if (beta == 0.0)
                memset(row, 0, (size_t)n * sizeof(float));
            else
                for (int64_t j = 0; j < n; j++)
                    row[j] *= bf;
        } else {
            double *row = (double *)c + i * ldc;
            if (beta == 0.0)
                memset(row, 0, (size_t)n * sizeof(double));
            else
                for (int64_t j = 0; j < n; j++)
                    row[j] *= beta;
        }
    }
}

/* C (m×n, ldc) = alpha * S (m×n, lds) + beta * C, or alpha * S when beta is 0. */
static void combine_c(ms_dtype dt, int64_t m, int64_t n, double alpha, const void *s,
                      int64_t lds, double beta, void *c, int64_t ldc)
{
    for (int64_t i = 0; i < m; i++) {
        if (dt == MS_F32) {
            const float *sr = (const float *)s + i * lds;
            float *cr = (float *)c + i * ldc;
            const float af = (float)alpha, bf = (float)beta;
            if (beta == 0.0)
                for (int64_t j = 0; j < n; j++)
                    cr[j] = af * sr[j];
            else
                for (int64_t j = 0; j < n; j++)
                    cr[j] = af * sr[j] + bf * cr[j];
        } else {
            const double *sr = (const double *)s + i * lds;
            double *cr = (double *)c + i * ldc;
            if (beta == 0.0)
                for (int64_t j = 0; j < n; j++)
                    cr[j] = alpha * sr[j];
            else
                for (int64_t j = 0; j < n; j++)
                    cr[j] = alpha * sr[j] + beta * cr[j];
        }
    }
}

/* The generated transposition of a column-major rows×cols block of es-byte
 * elements into a cols×rows one (leading dimension cols), from the thread's
 * cache; NULL when libxsmm generates none for it.  libxsmm_otrans looks the
 * kernel up in its registry on every call, which cost more than the
 * transposition of MAML's 40×40 weights itself. */
typedef struct tc_entry {
    unsigned key[3]; /* es, rows, cols */
    libxsmm_xtransfunction fn;
} tc_entry;

#define TC_SIZE 16 /* power of two */
static _Thread_local tc_entry tl_trans[TC_SIZE];

static libxsmm_xtransfunction get_trans(unsigned es, unsigned rows, unsigned cols)
{
    tc_entry *e = &tl_trans[(es * 31u + rows * 131u + cols * 7u) & (TC_SIZE - 1)];
    if (e->fn && e->key[0] == es && e->key[1] == rows && e->key[2] == cols)
        return e->fn;
    libxsmm_descriptor_blob blob;
    const libxsmm_trans_descriptor *d = libxsmm_trans_descriptor_init(&blob, es, rows, cols, cols);
    libxsmm_xtransfunction fn = d ? libxsmm_dispatch_trans(d) : NULL;
    if (fn) {
        e->key[0] = es, e->key[1] = rows, e->key[2] = cols;
        e->fn = fn;
    }
    return fn;
}

/* dst (rows×cols, contiguous) = srcᵀ, src stored cols×rows with leading
 * dimension lds. */
static void transpose(ms_dtype dt, int64_t rows, int64_t cols, const void *src, int64_t lds,
                      void *dst)
{
    const unsigned es = dt == MS_F32 ? sizeof(float) : sizeof(double);
    if (rows <= 64 && cols <= 64 && lds <= INT_MAX) {
        libxsmm_xtransfunction fn = get_trans(es, (unsigned)rows, (unsigned)cols);
        if (fn) {
            const unsigned ldi = (unsigned)lds, ldo = (unsigned)cols;
            fn(src, &ldi, dst, &ldo);
            clean_upper();
            return;
        }
    }
    /* libxsmm's own (JIT) transposition: src is column-major rows x cols */
    if (fits_int(rows) && fits_int(cols) && fits_int(lds)) {
        libxsmm_otrans(dst, src, dt == MS_F32 ? sizeof(float) : sizeof(double),
                       (libxsmm_blasint)rows, (libxsmm_blasint)cols, (libxsmm_blasint)lds,
                       (libxsmm_blasint)cols);
        clean_upper();
        return;
    }
    if (dt == MS_F32) {
        const float *s = src;
        float *d = dst;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++)
                d[i * cols + j] = s[j * lds + i];
    } else {
        const double *s = src;
        double *d = dst;
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++)
                d[i * cols + j] = s[j * lds + i];
    }
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* How alpha and beta reach the beta ∈ {0, 1}, alpha = 1 kernels. */
typedef enum scale_mode {
    MODE_DIRECT,    /* alpha 1, beta 0 or 1: the kernel alone */
    MODE_PRESCALE,  /* alpha 1, other beta: C *= beta, then the beta-1 kernel */
    MODE_POSTSCALE, /* other alpha, beta 0: the beta-0 kernel, then C *= alpha */
    MODE_SCRATCH    /* other alpha and beta: the product into a scratch tile */
} scale_mode;

/* ------------------------------------------------------------------------ */
/* thin products                                                             */

/* C = A·B (+ C) for two thin shapes libxsmm serves badly: one output column
 * with A stored transposed (n = 1: libxsmm vectorizes along the output's
 * columns), and an outer product with B stored transposed (k = 1, which the
 * kernels would first transpose).  MAML's 40×1×10 (Aᵀ) and 10×40×1 (Bᵀ)
 * products took 171 and 141 ns through libxsmm; as loops, a batched
 * FOMAML step's 40×1×10 products take half the time (METASTEP_PLAN_PROFILE).
 * Each output is summed over q in order, as the reference backend does. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                          \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define THIN_SIMD __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define THIN_SIMD
#endif
#define THIN_MAX_M 256
#define DEF_THIN(T, S)                                                                         \
    THIN_SIMD static void thin_##S(bool ta, int64_t batch, int64_t m, int64_t n, int64_t k,     \
                                   const T *a, int64_t lda, int64_t sa, const T *b, int64_t sb, \
                                   bool acc_c, T *c, int64_t ldc, int64_t sc)                   \
    {                                                                                          \
        for (int64_t p = 0; p < batch; p++) {                                                  \
            const T *ap = a + p * sa, *bp = b + p * sb;                                        \
            T *cp = c + p * sc;                                                                \
            if (k == 1) { /* C[i, j] = A[i, 0] · B[j, 0] (B stored n×1, ldb 1) */              \
                for (int64_t i = 0; i < m; i++) {                                              \
                    const T ai = ta ? ap[i] : ap[i * lda];                                     \
                    T *restrict ci = cp + i * ldc;                                             \
                    if (acc_c)                                                                 \
                        for (int64_t j = 0; j < n; j++)                                        \
                            ci[j] = ai * bp[j] + ci[j];                                        \
                    else                                                                       \
                        for (int64_t j = 0; j < n; j++)                                        \
                            ci[j] = ai * bp[j];                                                \
                }                                                                              \
            } else { /* n = 1, A stored k×m: acc[i] over q in order */                         \
                T acc[THIN_MAX_M];                                                             \
                for (int64_t i = 0; i < m; i++)                                                \
                    acc[i] = 0;                                                                \
                for (int64_t q = 0; q < k; q++) {                                              \
                    const T bv = bp[q];                                                        \
                    const T *restrict aq = ap + q * lda;                                       \
                    for (int64_t i = 0; i < m; i++)                                            \
                        acc[i] += aq[i] * bv;                                                  \
                }                                                                              \
                for (int64_t i = 0; i < m; i++)                                                \
                    cp[i * ldc] = acc_c ? acc[i] + cp[i * ldc] : acc[i];                       \
            }                                                                                  \
        }                                                                                      \
    }

DEF_THIN(float, f32)
DEF_THIN(double, f64)

/* One output column with A not transposed (n = 1: C[i] = A[i, :] · B[:, 0],
 * B's column contiguous): libxsmm generates it with one scalar lane per
 * output (its M is our n = 1), 147 ns for MAML's 10×1×40 layer against
 * 30-40 ns as dot products of A's contiguous rows, 16 (float) or 8 (double)
 * lanes at a time, the tail masked, summed across lanes at the end. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_ROWDOT 1
static bool g_avx512; /* set once at init */

#define DEF_ROWDOT(T, S, W, V, LOADU, MASKZ, MASK_T, FMADD, REDUCE, ZERO)                       \
    __attribute__((target("avx512f"))) static void rowdot_##S(                                  \
        int64_t batch, int64_t m, int64_t k, const T *a, int64_t lda, int64_t sa, const T *b,   \
        int64_t sb, bool acc_c, T *c, int64_t ldc, int64_t sc)                                  \
    {                                                                                          \
        const int64_t full = k - k % W;                                                        \
        const MASK_T tail = (MASK_T)((1u << (k % W)) - 1u);                                    \
        for (int64_t p = 0; p < batch; p++) {                                                  \
            const T *ap = a + p * sa, *bp = b + p * sb;                                        \
            T *cp = c + p * sc;                                                                \
            for (int64_t i = 0; i < m; i++) {                                                  \
                const T *ai = ap + i * lda;                                                    \
                V s = ZERO();                                                                  \
                for (int64_t q = 0; q < full; q += W)                                          \
                    s = FMADD(LOADU(ai + q), LOADU(bp + q), s);                                \
                if (tail)                                                                      \
                    s = FMADD(MASKZ(tail, ai + full), MASKZ(tail, bp + full), s);              \
                const T r = REDUCE(s);                                                         \
                cp[i * ldc] = acc_c ? r + cp[i * ldc] : r;                                     \
            }                                                                                  \
        }                                                                                      \
    }

DEF_ROWDOT(float, f32, 16, __m512, _mm512_loadu_ps, _mm512_maskz_loadu_ps, __mmask16,
           _mm512_fmadd_ps, _mm512_reduce_add_ps, _mm512_setzero_ps)
DEF_ROWDOT(double, f64, 8, __m512d, _mm512_loadu_pd, _mm512_maskz_loadu_pd, __mmask8,
           _mm512_fmadd_pd, _mm512_reduce_add_pd, _mm512_setzero_pd)
#endif

/* ------------------------------------------------------------------------ */
/* gemm                                                                      */

static ms_status xsmm_gemm(ms_dtype dt, bool trans_a, bool trans_b, int64_t batch, int64_t m,
                           int64_t n, int64_t k, double alpha, const void *a, int64_t lda,
                           int64_t stride_a, const void *b, int64_t ldb, int64_t stride_b,
                           double beta, void *c, int64_t ldc, int64_t stride_c)
{
    if (dt != MS_F32 && dt != MS_F64)
        return MS_ERR_UNSUPPORTED;
    if (batch <= 0 || m <= 0 || n <= 0)
        return MS_OK;
    const size_t es = dt == MS_F32 ? sizeof(float) : sizeof(double);

    if (k <= 0 || alpha == 0.0) {
        /* alpha * (empty or zero product) = 0: C = beta * C, A and B not read
         * (BLAS, and the reference backend). */
        for (int64_t p = 0; p < batch; p++)
            scale_c(dt, m, n, beta, (char *)c + (size_t)(p * stride_c) * es, ldc);
        return MS_OK;
    }
    /* libxsmm_blasint is int: every size and leading dimension must fit. */
    if (!fits_int(m) || !fits_int(n) || !fits_int(k) || !fits_int(lda) || !fits_int(ldb) ||
        !fits_int(ldc))
        return MS_ERR_UNSUPPORTED;

    /* The thin loops take alpha 1 and beta 0 or 1.  column: one output
     * column with B's column contiguous (ldb 1, or B stored transposed);
     * outer: B stored transposed n×1 (k = 1, ldb 1). */
    const bool plain = alpha == 1.0 && (beta == 0.0 || beta == 1.0);
    const bool column = n == 1 && (trans_b || ldb == 1), outer = k == 1 && trans_b && ldb == 1;
#ifdef HAVE_ROWDOT
    if (plain && column && !trans_a && g_avx512) {
        if (dt == MS_F32)
            rowdot_f32(batch, m, k, a, lda, stride_a, b, stride_b, beta == 1.0, c, ldc, stride_c);
        else
            rowdot_f64(batch, m, k, a, lda, stride_a, b, stride_b, beta == 1.0, c, ldc, stride_c);
        clean_upper();
        return MS_OK;
    }
#endif
    if (plain && ((column && trans_a && m <= THIN_MAX_M) || outer)) {
        if (dt == MS_F32)
            thin_f32(trans_a, batch, m, n, k, a, lda, stride_a, b, stride_b, beta == 1.0, c, ldc,
                     stride_c);
        else
            thin_f64(trans_a, batch, m, n, k, a, lda, stride_a, b, stride_b, beta == 1.0, c, ldc,
                     stride_c);
        return MS_OK;
    }

    scale_mode mode;
    if (alpha == 1.0)
        mode = (beta == 0.0 || beta == 1.0) ? MODE_DIRECT : MODE_PRESCALE;
    else
        mode = beta == 0.0 ? MODE_POSTSCALE : MODE_SCRATCH;
    /* The flags of the first k-tile's kernel; later k-tiles accumulate. */
    const int first_beta0 =
        (mode == MODE_DIRECT || mode == MODE_POSTSCALE) ? (beta == 0.0) : mode == MODE_SCRATCH;
    const int tflag = trans_a ? LIBXSMM_GEMM_FLAG_TRANS_B : 0;

    /* One tile (every small GEMM, MAML's among them): one kernel for the
     * whole batch, fetched before anything is written. */
    if (m <= TILE_M && n <= TILE_N && k <= TILE_K && !trans_b && mode != MODE_SCRATCH) {
        const int flags = tflag | (first_beta0 ? LIBXSMM_GEMM_FLAG_BETA_0 : 0);
        libxsmm_xmmfunction fn =
            get_kernel(dt, (int)n, (int)m, (int)k, (int)ldb, (int)lda, (int)ldc, flags);
        if (!fn.xmm)
            return MS_ERR_UNSUPPORTED;
        for (int64_t p = 0; p < batch; p++) {
            const char *ap = (const char *)a + (size_t)(p * stride_a) * es;
            const char *bp = (const char *)b + (size_t)(p * stride_b) * es;
            char *cp = (char *)c + (size_t)(p * stride_c) * es;
            if (mode == MODE_PRESCALE)
                scale_c(dt, m, n, beta, cp, ldc);
            if (dt == MS_F32)
                fn.smm((const float *)bp, (const float *)ap, (float *)cp);
            else
                fn.dmm((const double *)bp, (const double *)ap, (double *)cp);
            if (mode == MODE_POSTSCALE) {
                clean_upper();
                scale_c(dt, m, n, alpha, cp, ldc);
            }
        }
        clean_upper();
        return MS_OK;
    }

    /* Fetch every kernel shape the tile loops will use (at most 16) before
     * anything is written, so a kernel libxsmm declines leaves C untouched
     * for the reference backend. */
    const int64_t ldb_eff = trans_b ? n : ldb;
    {
        /* full tiles, and the edge tiles when there are several */
        const int64_t mts[2] = {min64(m, TILE_M), m > TILE_M ? m % TILE_M : 0};
        const int64_t nts[2] = {min64(n, TILE_N), n > TILE_N ? n % TILE_N : 0};
        const int64_t kts[2] = {min64(k, TILE_K), k > TILE_K ? k % TILE_K : 0};
        for (int x = 0; x < 2; x++)
            for (int y = 0; y < 2; y++)
                for (int z = 0; z < 2; z++)
                    for (int later = 0; later < 2; later++) {
                        /* the first k-tile is a full one (or all of k) */
                        if (mts[x] == 0 || nts[y] == 0 || kts[z] == 0 || (!later && z == 1) ||
                            (later && k <= TILE_K))
                            continue;
                        const int flags =
                            tflag | ((!later && first_beta0) ? LIBXSMM_GEMM_FLAG_BETA_0 : 0);
                        const int64_t ldt = mode == MODE_SCRATCH ? nts[y] : ldc;
                        if (!get_kernel(dt, (int)nts[y], (int)mts[x], (int)kts[z], (int)ldb_eff,
                                        (int)lda, (int)ldt, flags)
                                 .xmm)
                            return MS_ERR_UNSUPPORTED;
                    }
    }

    /* A transposed B becomes a contiguous k×n copy: once for the call when
     * the batch shares it, else once per batch item. */
    const bool bt_shared = trans_b && (stride_b == 0 || batch == 1);
    double bt_stack[STACK_BT];
    void *bt = NULL, *bt_heap = NULL;
    if (trans_b) {
        if (k * n <= (int64_t)(sizeof bt_stack / es)) {
            bt = bt_stack;
        } else {
            bt = bt_heap = malloc((size_t)(k * n) * es);
            if (!bt)
                return MS_ERR_NOMEM;
        }
        if (bt_shared)
            transpose(dt, k, n, b, ldb, bt);
    }
    const int64_t tm = min64(m, TILE_M), tn = min64(n, TILE_N);
    void *scratch = NULL;
    if (mode == MODE_SCRATCH) {
        scratch = malloc((size_t)(tm * tn) * es);
        if (!scratch) {
            free(bt_heap);
            return MS_ERR_NOMEM;
        }
    }

    ms_status st = MS_OK;
    for (int64_t p = 0; p < batch && st == MS_OK; p++) {
        const char *ap = (const char *)a + (size_t)(p * stride_a) * es;
        const char *bp = (const char *)b + (size_t)(p * stride_b) * es;
        char *cp = (char *)c + (size_t)(p * stride_c) * es;
        if (trans_b) {
            if (!bt_shared)
                transpose(dt, k, n, bp, ldb, bt);
            bp = bt;
        }
        for (int64_t i0 = 0; i0 < m && st == MS_OK; i0 += TILE_M) {
            const int64_t mt = min64(m - i0, TILE_M);
            for (int64_t j0 = 0; j0 < n && st == MS_OK; j0 += TILE_N) {
                const int64_t nt = min64(n - j0, TILE_N);
                char *ct = cp + (size_t)(i0 * ldc + j0) * es;
                char *target = mode == MODE_SCRATCH ? scratch : ct;
                const int64_t ldt = mode == MODE_SCRATCH ? nt : ldc;
                if (mode == MODE_PRESCALE)
                    scale_c(dt, mt, nt, beta, ct, ldc);
                for (int64_t l0 = 0; l0 < k; l0 += TILE_K) {
                    const int64_t kt = min64(k - l0, TILE_K);
                    const int flags =
                        tflag | ((l0 == 0 && first_beta0) ? LIBXSMM_GEMM_FLAG_BETA_0 : 0);
                    /* Column-major: M = nt, N = mt, K = kt; its A is our B. */
                    libxsmm_xmmfunction fn = get_kernel(dt, (int)nt, (int)mt, (int)kt,
                                                        (int)ldb_eff, (int)lda, (int)ldt, flags);
                    if (!fn.xmm) {
                        /* Fetched above: only if libxsmm's registry failed
                         * in between, with C partly written. */
                        st = MS_ERR_INTERNAL;
                        break;
                    }
                    const char *bt_p = bp + (size_t)(l0 * ldb_eff + j0) * es;
                    const char *at_p =
                        ap + (size_t)(trans_a ? l0 * lda + i0 : i0 * lda + l0) * es;
                    if (dt == MS_F32)
                        fn.smm((const float *)bt_p, (const float *)at_p, (float *)target);
                    else
                        fn.dmm((const double *)bt_p, (const double *)at_p, (double *)target);
                }
                clean_upper();
                if (st != MS_OK)
                    break;
                if (mode == MODE_POSTSCALE)
                    scale_c(dt, mt, nt, alpha, ct, ldc);
                else if (mode == MODE_SCRATCH)
                    combine_c(dt, mt, nt, alpha, scratch, nt, beta, ct, ldc);
            }
        }
    }
    free(scratch);
    free(bt_heap);
    return st;
}

/* ------------------------------------------------------------------------ */
/* table                                                                     */

static char g_description[200] = "libxsmm";
static pthread_once_t g_init_once = PTHREAD_ONCE_INIT;

static void init_once(void)
{
    libxsmm_init();
    g_avx = libxsmm_get_target_archid() >= LIBXSMM_X86_AVX;
#ifdef HAVE_ROWDOT
    g_avx512 = __builtin_cpu_supports("avx512f");
#endif
    snprintf(g_description, sizeof g_description,
             "libxsmm %s (JIT for %s); float32/float64 gemm, no packing", LIBXSMM_VERSION,
             libxsmm_get_target_arch());
}

static ms_status xsmm_init(void)
{
    pthread_once(&g_init_once, init_once);
    return MS_OK;
}

static void xsmm_shutdown(void) { libxsmm_finalize(); }

static const ms_backend g_table = {
    .header = {MS_BACKEND_ABI_MAJOR, MS_BACKEND_ABI_MINOR, sizeof(ms_backend), "xsmm",
               g_description},
    .init = xsmm_init,
    .shutdown = xsmm_shutdown,
    .unary = NULL,
    .binary = NULL,
    .reduce = NULL,
    .gemm = xsmm_gemm,
    .copy = NULL,
    .softmax = NULL,
    .fill = NULL,
    .arange = NULL,
    .where = NULL,
};

MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void)
{
    pthread_once(&g_init_once, init_once);
    return &g_table;
}
