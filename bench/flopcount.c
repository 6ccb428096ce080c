/* A counting backend for bench-conv4: it serves every kernel by calling a
 * target backend's table (dlopened from METASTEP_FLOPCOUNT_TARGET, a path),
 * or the reference backend's (METASTEP_FLOPCOUNT_REF) where the target has no
 * slot or declines the call, and adds up the floating-point operations of the GEMM and convolution
 * calls (2 per multiply-add) on the way, so a benchmark can count exactly the
 * FLOPs one meta step executes.  The other kernels are elementwise or
 * reductions and are not counted.
 *
 * bench-conv4 loads it by path with metastep_set_backend, runs a few meta
 * steps, and reads the count through metastep_flopcount (dlsym).  It is used
 * for counting only: timings are taken on the real backends.  The count does
 * not depend on the target: every call is counted once, whoever serves it. */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "metastep/backend.h"

static const ms_backend *ref, *target;
static atomic_ullong flops;

MS_PLUGIN_EXPORT unsigned long long metastep_flopcount(void);
MS_PLUGIN_EXPORT unsigned long long metastep_flopcount(void) { return atomic_load(&flops); }

static void add(double f) { atomic_fetch_add(&flops, (unsigned long long)f); }

static const ms_backend *open_table(const char *env)
{
    const char *path = getenv(env);
    void *h = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    ms_backend_entry_fn entry = h ? (ms_backend_entry_fn)dlsym(h, MS_BACKEND_ENTRY_SYMBOL) : NULL;
    const ms_backend *t = entry ? entry() : NULL;
    if (t && t->init && t->init() != MS_OK)
        t = NULL;
    return t;
}

static ms_status fc_init(void)
{
    ref = open_table("METASTEP_FLOPCOUNT_REF");
    target = open_table("METASTEP_FLOPCOUNT_TARGET");
    if (!target)
        target = ref;
    return ref ? MS_OK : MS_ERR_BACKEND;
}

/* The target's slot unless it lacks it or declines, then ref's. */
#define SERVE(slot, ...)                                                                    \
    do {                                                                                    \
        if (MS_BACKEND_HAS_SLOT(target, slot) && target->slot) {                            \
            ms_status st_ = target->slot(__VA_ARGS__);                                      \
            if (st_ != MS_ERR_UNSUPPORTED)                                                  \
                return st_;                                                                 \
        }                                                                                   \
        return ref->slot(__VA_ARGS__);                                                      \
    } while (0)

static ms_status fc_unary(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y)
{
    SERVE(unary, op, dt, n, x, y);
}
static ms_status fc_binary(ms_binary_op op, ms_dtype dt, int ndim, const int64_t *shape,
                           const void *a, const int64_t *sa, const void *b, const int64_t *sb,
                           void *y)
{
    SERVE(binary, op, dt, ndim, shape, a, sa, b, sb, y);
}
static ms_status fc_reduce(ms_reduce_op op, ms_dtype dt, int ndim, const int64_t *shape,
                           uint32_t axes, const void *x, void *y)
{
    SERVE(reduce, op, dt, ndim, shape, axes, x, y);
}
static ms_status fc_gemm(ms_dtype dt, bool ta, bool tb, int64_t batch, int64_t m, int64_t n,
                         int64_t k, double alpha, const void *a, int64_t lda, int64_t sa,
                         const void *b, int64_t ldb, int64_t sb, double beta, void *c, int64_t ldc,
                         int64_t sc)
{
    add(2.0 * (double)batch * (double)m * (double)n * (double)k);
    SERVE(gemm, dt, ta, tb, batch, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc);
}
static ms_status fc_copy(ms_dtype dt, int ndim, const int64_t *shape, const void *src,
                         const int64_t *ss, void *dst, const int64_t *ds)
{
    SERVE(copy, dt, ndim, shape, src, ss, dst, ds);
}
static ms_status fc_softmax(ms_dtype dt, bool lg, int64_t outer, int64_t len, int64_t inner,
                            const void *x, void *y)
{
    SERVE(softmax, dt, lg, outer, len, inner, x, y);
}
static ms_status fc_fill(ms_dtype dt, int ndim, const int64_t *shape, const int64_t *ds,
                         double value, void *dst)
{
    SERVE(fill, dt, ndim, shape, ds, value, dst);
}
static ms_status fc_arange(ms_dtype dt, int64_t n, double start, double step, void *y)
{
    SERVE(arange, dt, n, start, step, y);
}
static ms_status fc_where(ms_dtype dt, int ndim, const int64_t *shape, const void *c,
                          const int64_t *sc, const void *a, const int64_t *sa, const void *b,
                          const int64_t *sb, void *y)
{
    SERVE(where, dt, ndim, shape, c, sc, a, sa, b, sb, y);
}
/* multiply-adds of one convolution: every output element sums c·kh·kw taps
 * (padding taps included: the work a dense kernel does) */
static double conv_flops(const ms_conv2d_desc *d)
{
    return 2.0 * (double)d->n * (double)d->o * (double)d->oh * (double)d->ow * (double)d->c *
           (double)d->kh * (double)d->kw;
}
static ms_status fc_conv2d(ms_dtype dt, const ms_conv2d_desc *d, const void *x, const void *w,
                           const void *bias, void *y)
{
    add(conv_flops(d));
    SERVE(conv2d, dt, d, x, w, bias, y);
}
static ms_status fc_conv2d_bwd_data(ms_dtype dt, const ms_conv2d_desc *d, const void *gy,
                                    const void *w, void *gx)
{
    add(conv_flops(d));
    SERVE(conv2d_backward_data, dt, d, gy, w, gx);
}
static ms_status fc_conv2d_bwd_weights(ms_dtype dt, const ms_conv2d_desc *d, const void *x,
                                       const void *gy, void *gw)
{
    add(conv_flops(d));
    SERVE(conv2d_backward_weights, dt, d, x, gy, gw);
}

static const ms_backend table = {
    .header = {MS_BACKEND_ABI_MAJOR, MS_BACKEND_ABI_MINOR, sizeof(ms_backend), "flopcount",
               "counts GEMM and convolution FLOPs, computing with a target backend (bench-conv4)"},
    .init = fc_init,
    .unary = fc_unary,
    .binary = fc_binary,
    .reduce = fc_reduce,
    .gemm = fc_gemm,
    .copy = fc_copy,
    .softmax = fc_softmax,
    .fill = fc_fill,
    .arange = fc_arange,
    .where = fc_where,
    .conv2d = fc_conv2d,
    .conv2d_backward_data = fc_conv2d_bwd_data,
    .conv2d_backward_weights = fc_conv2d_bwd_weights,
};

MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void);
MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void) { return &table; }
