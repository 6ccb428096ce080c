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
 * Kernels must be safe to call from several threads at once.
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
#define MS_BACKEND_ABI_MINOR 0
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
    MS_KERNEL_COUNT
} ms_kernel;

typedef struct ms_backend {
    ms_plugin_header header; /* abi_major = MS_BACKEND_ABI_MAJOR, size = sizeof(ms_backend) */

    /* Called once after loading; NULL: nothing to do.  A non-OK status refuses the backend. */
    ms_status (*init)(void);
    /* Called once before unloading at process exit; NULL: nothing to do. */
    void (*shutdown)(void);

    /* y[i] = op(x[i]) for i < n.  x and y may be the same buffer. */
    ms_status (*unary)(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y);

    /* y = a op b over `shape` (ndim dims).  y is contiguous; sa and sb are the
     * operands' strides per output dim, 0 where the operand is broadcast. */
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
} ms_backend;

/* The smallest table size a major-1 backend may declare: every slot above. */
#define MS_BACKEND_MIN_SIZE (offsetof(ms_backend, where) + sizeof(void *))

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
