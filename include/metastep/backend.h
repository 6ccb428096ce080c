/* metastep — the backend ABI.
 *
 * A backend is a shared object exporting one function,
 *
 *     const ms_backend *metastep_backend_entry(void);
 *
 * returning a pointer to a constant table.  The table starts with the common
 * plugin header (ms_plugin_header: ABI version, table size, name,
 * description), then optional init/shutdown, then one function pointer per
 * kernel family.  Later minor versions append slots at the end; the frontend
 * reads a slot only when the table's `size` covers it.
 *
 * Kernels work on raw host buffers: contiguous unless strides are given,
 * strides and shapes counted in elements, row-major.  They know nothing of
 * autodiff, containers or meta-learning.  A kernel returns MS_OK, or
 * MS_ERR_UNSUPPORTED to have the reference backend serve that call (the
 * frontend counts these fallbacks), or another status on a real failure.
 * A NULL slot is served by the reference backend for every call.
 * Kernels must be safe to call from several threads at once (every backend
 * declares this by being loadable; the meta steps' worker pool relies on it).
 * A backend whose kernels thread internally says so with the ABI 1.2
 * set_num_threads slot, so that the frontend can keep tasks × kernel threads
 * within the cores.
 * The frontend validates every argument before calling a kernel: kernels may
 * assume shapes are consistent, ndim is in [0, MS_MAX_DIMS] and no buffer
 * aliases another unless stated.
 */
#ifndef METASTEP_BACKEND_H
#define METASTEP_BACKEND_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metastep/plugin.h"
#include "metastep/status.h"
#include "metastep/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MS_BACKEND_ABI_MAJOR 1
#define MS_BACKEND_ABI_MINOR 2
#define MS_BACKEND_ENTRY_SYMBOL "metastep_backend_entry"

/* Elementwise unary ops: y = op(x).  Values are fixed (ABI).  NaN in gives
 * NaN out for every op, as in NumPy and PyTorch: relu(NaN) and sign(NaN) are
 * NaN; infinities follow IEEE and libm (relu(-inf) 0, sigmoid(±inf) 1 and 0,
 * exp(-inf) 0).  docs/semantics.md, "Non-finite values". */
typedef enum ms_unary_op {
    MS_UNARY_NEG = 0, MS_UNARY_ABS, MS_UNARY_SIGN, MS_UNARY_EXP, MS_UNARY_LOG,
    MS_UNARY_SQRT, MS_UNARY_SQUARE, MS_UNARY_RECIPROCAL, MS_UNARY_TANH,
    MS_UNARY_SIGMOID, MS_UNARY_RELU, MS_UNARY_SIN, MS_UNARY_COS,
    MS_UNARY_COUNT
} ms_unary_op;

/* Elementwise binary ops: y = a op b.  Comparisons give 1.0 or 0.0 in the
 * operands' dtype (with a NaN operand: 0, except NE 1).  MAXIMUM/MINIMUM
 * propagate NaN like NumPy; the arithmetic ops follow IEEE. */
typedef enum ms_binary_op {
    MS_BINARY_ADD = 0, MS_BINARY_SUB, MS_BINARY_MUL, MS_BINARY_DIV, MS_BINARY_POW,
    MS_BINARY_MAXIMUM, MS_BINARY_MINIMUM,
    MS_BINARY_EQ, MS_BINARY_NE, MS_BINARY_LT, MS_BINARY_LE, MS_BINARY_GT, MS_BINARY_GE,
    MS_BINARY_COUNT
} ms_binary_op;

/* Reductions.  MEAN divides the sum by the number of reduced elements; the
 * mean of zero elements is NaN, the max/min of zero elements is refused by the
 * frontend before the kernel is called.  A NaN among the reduced elements
 * makes the result NaN for every op (MAX/MIN too, as NumPy's max); a sum
 * meeting +inf and -inf is NaN. */
typedef enum ms_reduce_op {
    MS_REDUCE_SUM = 0, MS_REDUCE_MEAN, MS_REDUCE_MAX, MS_REDUCE_MIN,
    MS_REDUCE_COUNT
} ms_reduce_op;

/* Kernel families, for fallback counters and `metastep backends`. */
typedef enum ms_kernel {
    MS_KERNEL_UNARY = 0, MS_KERNEL_BINARY, MS_KERNEL_REDUCE, MS_KERNEL_GEMM,
    MS_KERNEL_COPY, MS_KERNEL_SOFTMAX, MS_KERNEL_FILL, MS_KERNEL_ARANGE,
    MS_KERNEL_WHERE,
    /* ABI 1.1 */
    MS_KERNEL_CONV2D, MS_KERNEL_CONV2D_BWD_DATA, MS_KERNEL_CONV2D_BWD_WEIGHTS,
    MS_KERNEL_COUNT
} ms_kernel;

/* A 2-D convolution (ABI 1.1), NCHW as PyTorch, cross-correlation (no kernel
 * flip), the same stride and zero padding in both spatial dims:
 *   x (n, c, h, w), weights (o, c, kh, kw), y (n, o, oh, ow) with
 *   oh = (h + 2 padding - kh) / stride + 1 (floored), likewise ow;
 *   y[b,f,i,j] = sum_{ch,p,q} x[b, ch, i·stride + p - padding, j·stride + q - padding]
 *                             · w[f, ch, p, q]      (x is 0 outside its bounds).
 * The frontend guarantees every size >= 1, stride >= 1, 0 <= padding, and
 * oh, ow >= 1.  All buffers are contiguous and do not overlap. */
typedef struct ms_conv2d_desc {
    int64_t n, c, h, w;   /* input */
    int64_t o, kh, kw;    /* filters */
    int64_t oh, ow;       /* output spatial size */
    int64_t stride, padding;
} ms_conv2d_desc;

typedef struct ms_backend {
    ms_plugin_header header; /* abi_major = MS_BACKEND_ABI_MAJOR, size = sizeof(ms_backend) */

    /* Called once after loading; NULL: nothing to do.  A non-OK status refuses the backend. */
    ms_status (*init)(void);
    /* Called once before unloading at process exit; NULL: nothing to do. */
    void (*shutdown)(void);

    /* y[i] = op(x[i]) for i < n.  x and y may be the same buffer. */
    ms_status (*unary)(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y);

    /* y = a op b over `shape` (ndim dims).  y is contiguous; sa and sb are the
     * operands' strides per output dim, 0 where the operand is broadcast.
     * Other backends are never given aliased buffers here; the reference
     * backend also accepts y equal to a (or b) when that operand walks y's
     * elements in y's order, which compiled steps use when ref serves this
     * slot (an elementwise result written over an operand that dies there). */
    ms_status (*binary)(ms_binary_op op, ms_dtype dt, int ndim, const int64_t *shape,
                        const void *a, const int64_t *sa, const void *b, const int64_t *sb,
                        void *y);

    /* Reduce contiguous x of `shape` over the dims whose bit is set in `axes`
     * (bit d for dim d).  y is contiguous with the reduced dims of size 1. */
    ms_status (*reduce)(ms_reduce_op op, ms_dtype dt, int ndim, const int64_t *shape,
                        uint32_t axes, const void *x, void *y);

    /* For each batch index p < batch:
     *   C_p = alpha * op(A_p) * op(B_p) + beta * C_p,
     * row-major; op(A_p) is m×k (A stored k×m when trans_a), op(B_p) is k×n;
     * A_p = a + p*stride_a (stride 0: every batch shares A), likewise B and C
     * (stride_c > 0).  When beta is 0, C is not read (it may hold NaN). */
    ms_status (*gemm)(ms_dtype dt, bool trans_a, bool trans_b, int64_t batch,
                      int64_t m, int64_t n, int64_t k, double alpha,
                      const void *a, int64_t lda, int64_t stride_a,
                      const void *b, int64_t ldb, int64_t stride_b, double beta,
                      void *c, int64_t ldc, int64_t stride_c);

    /* dst[i·ds] = src[i·ss] for every index i of `shape`: transposes, slices,
     * concatenation and broadcast materialisation.  Buffers do not overlap. */
    ms_status (*copy)(ms_dtype dt, int ndim, const int64_t *shape,
                      const void *src, const int64_t *ss, void *dst, const int64_t *ds);

    /* Softmax (or log-softmax when `log`) of contiguous x viewed as
     * (outer, len, inner) along the middle axis; numerically stable (max
     * subtracted).  len >= 1.  A row holding a NaN or a +inf, or whose
     * entries are all -inf, is NaN throughout (PyTorch); a -inf in a row with
     * a finite maximum gives 0 (log-softmax: -inf). */
    ms_status (*softmax)(ms_dtype dt, bool log, int64_t outer, int64_t len, int64_t inner,
                         const void *x, void *y);

    /* dst[i·ds] = value for every index i of `shape`. */
    ms_status (*fill)(ms_dtype dt, int ndim, const int64_t *shape, const int64_t *ds,
                      double value, void *dst);

    /* y[i] = start + i * step for i < n, each computed directly (not accumulated). */
    ms_status (*arange)(ms_dtype dt, int64_t n, double start, double step, void *y);

    /* y = (c != 0) ? a : b over `shape`, y contiguous, c/a/b strided as in binary;
     * c has dtype dt too (a NaN condition selects a).  Values pass unchanged. */
    ms_status (*where)(ms_dtype dt, int ndim, const int64_t *shape,
                       const void *c, const int64_t *sc, const void *a, const int64_t *sa,
                       const void *b, const int64_t *sb, void *y);

    /* ---- ABI 1.1: convolution.  A 1.0 table ends above; the frontend then
     * (or for a NULL slot) has the reference backend serve these. ---- */

    /* y = conv(x, w) + bias (bias: o values added per output channel, or
     * NULL for none); see ms_conv2d_desc. */
    ms_status (*conv2d)(ms_dtype dt, const ms_conv2d_desc *d, const void *x, const void *w,
                        const void *bias, void *y);
    /* gx (n, c, h, w) = the gradient of sum(gy · conv(x, w)) with respect to x:
     * the transposed convolution of gy (n, o, oh, ow) with w.  Elements of x
     * that no window reads (the floor of oh, ow) get 0.  gx is overwritten. */
    ms_status (*conv2d_backward_data)(ms_dtype dt, const ms_conv2d_desc *d, const void *gy,
                                      const void *w, void *gx);
    /* gw (o, c, kh, kw) = the gradient of sum(gy · conv(x, w)) with respect
     * to w.  gw is overwritten. */
    ms_status (*conv2d_backward_weights)(ms_dtype dt, const ms_conv2d_desc *d, const void *x,
                                         const void *gy, void *gw);

    /* ---- ABI 1.2: threading.  A 1.0 or 1.1 table ends above. ---- */

    /* Sets how many threads each kernel call may use internally (n >= 1) for
     * calls made from the calling thread from now on; a library whose
     * setting is process-wide (OpenBLAS) applies it to every thread.
     * Returns the previous count, for restoring it.  NULL (or absent): the
     * kernels do not thread internally.  The meta steps' worker pool calls it
     * with 1 while tasks run on several threads (metastep_options.threads),
     * so that tasks × kernel threads never oversubscribe the cores. */
    int (*set_num_threads)(int n);
} ms_backend;

/* The smallest table size a major-1 backend may declare: every slot of ABI
 * 1.0 (through `where`).  A 1.0 table stays valid: the frontend reads a later
 * slot only when the table's size covers it (MS_BACKEND_HAS_SLOT). */
#define MS_BACKEND_MIN_SIZE (offsetof(ms_backend, where) + sizeof(void *))
/* Whether table t (of header.size bytes) has the slot `slot` at all. */
#define MS_BACKEND_HAS_SLOT(t, slot) \
    ((t)->header.size >= offsetof(ms_backend, slot) + sizeof((t)->slot))

/* The entry point every backend exports. */
typedef const ms_backend *(*ms_backend_entry_fn)(void);

/* Short names of the kernel families and ops ("gemm", "tanh", "add", "sum"),
 * for tables and messages.  Never NULL. */
const char *ms_kernel_name(ms_kernel k);
const char *ms_unary_op_name(ms_unary_op op);
const char *ms_binary_op_name(ms_binary_op op);
const char *ms_reduce_op_name(ms_reduce_op op);

#ifdef __cplusplus
}
#endif
#endif
