/* Internal to core/: the tensor layout, the allocator, error helpers, kernel
 * dispatch and autodiff hooks.  Nothing here is installed. */
#ifndef METASTEP_CORE_INTERNAL_H
#define METASTEP_CORE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metastep/metastep.h"
#include "metastep/backend.h"

#define MS_HIDDEN __attribute__((visibility("hidden")))
#define MS_UNUSED __attribute__((unused))
#define MS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define MS_TENSOR_MAGIC 0x6d737465u /* "mste" */
#define MS_TENSOR_DEAD 0xdeadbeefu

struct ms_node;

struct ms_tensor {
    uint32_t magic;         /* MS_TENSOR_MAGIC while alive */
    atomic_int refs;
    ms_dtype dtype;
    int ndim;
    int64_t shape[MS_MAX_DIMS];
    int64_t numel;
    void *data;             /* 64-byte aligned, inside the same block */
    size_t block;           /* allocator size class of the block */
    bool requires_grad;     /* a variable, or computed from one with recording on */
    bool graph_freed;       /* its graph was consumed by ms_grad(create_graph=false) */
    struct ms_node *node;   /* the op that produced it (NULL for leaves) */
    /* depth in the graph: 0 for leaves, 1 + the deepest input for a recorded
     * op.  A tensor can depend on another only if it is deeper, so ms_grad
     * need not look below the shallowest tensor it differentiates with
     * respect to */
    uint64_t level;
    /* scratch used by ms_grad while it runs */
    uint64_t visit;
    ms_tensor *gacc;
    int pending;
};

/* --- allocator (alloc.c) --- */
MS_HIDDEN void *ms__block_alloc(size_t bytes, size_t *cls);
MS_HIDDEN void ms__block_free(void *p, size_t cls);

/* --- errors (error.c) --- */
/* Record (st, message) as this thread's error unless one is already recorded.
 * Returns st so callers can `return ms__fail(...)`. */
MS_HIDDEN ms_status ms__fail(ms_status st, const char *fmt, ...) MS_PRINTF(2, 3);
/* Format a shape as "(3,4)" into buf. */
MS_HIDDEN const char *ms__shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);
#define MS_SHAPE_BUF 96

/* --- tensors (tensor.c) --- */
/* Uninitialised tensor, registered in the current scope; NULL + error on failure. */
MS_HIDDEN ms_tensor *ms__tensor_new(const char *fn, ms_dtype dt, int ndim, const int64_t *shape);
/* As ms__tensor_new but owned by the caller alone (no scope): for temporaries. */
MS_HIDDEN ms_tensor *ms__tensor_tmp(const char *fn, ms_dtype dt, int ndim, const int64_t *shape);
/* Undo a just-created tensor after a failure: drop it from the scope if it is
 * the scope's newest entry, then release it. */
MS_HIDDEN void ms__discard(ms_tensor *t);
/* Validate a tensor argument: NULL -> MS_ERR_NULL_ARG recorded; released -> error. */
MS_HIDDEN bool ms__check(const char *fn, const ms_tensor *t, const char *argname);
MS_HIDDEN bool ms__same_dtype(const char *fn, const ms_tensor *a, const ms_tensor *b);
/* Normalise an axis in [-ndim, ndim) to [0, ndim); -1 with error recorded when out of range. */
MS_HIDDEN int ms__axis(const char *fn, int axis, int ndim);
/* Contiguous element strides of a shape. */
MS_HIDDEN void ms__strides(int ndim, const int64_t *shape, int64_t *strides);
/* After an internal scope is popped, hand a retained result to the now-current scope. */
MS_HIDDEN void ms__scope_adopt(ms_tensor *t);

/* --- dispatch (runtime.c): the active backend, with fallback to ref --- */
typedef struct ms_loaded ms_loaded;
MS_HIDDEN const ms_backend *ms__ref(void);
MS_HIDDEN ms_status msk_unary(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y);
MS_HIDDEN ms_status msk_binary(ms_binary_op op, ms_dtype dt, int ndim, const int64_t *shape,
                               const void *a, const int64_t *sa, const void *b,
                               const int64_t *sb, void *y);
MS_HIDDEN ms_status msk_reduce(ms_reduce_op op, ms_dtype dt, int ndim, const int64_t *shape,
                               uint32_t axes, const void *x, void *y);
MS_HIDDEN ms_status msk_gemm(ms_dtype dt, bool ta, bool tb, int64_t batch, int64_t m, int64_t n,
                             int64_t k, double alpha, const void *a, int64_t lda, int64_t sa,
                             const void *b, int64_t ldb, int64_t sb, double beta, void *c,
                             int64_t ldc, int64_t sc);
MS_HIDDEN ms_status msk_copy(ms_dtype dt, int ndim, const int64_t *shape, const void *src,
                             const int64_t *ss, void *dst, const int64_t *ds);
MS_HIDDEN ms_status msk_softmax(ms_dtype dt, bool log, int64_t outer, int64_t len, int64_t inner,
                                const void *x, void *y);
MS_HIDDEN ms_status msk_fill(ms_dtype dt, int ndim, const int64_t *shape, const int64_t *ds,
                             double value, void *dst);
MS_HIDDEN ms_status msk_arange(ms_dtype dt, int64_t n, double start, double step, void *y);
MS_HIDDEN ms_status msk_where(ms_dtype dt, int ndim, const int64_t *shape, const void *c,
                              const int64_t *sc, const void *a, const int64_t *sa, const void *b,
                              const int64_t *sb, void *y);

/* --- plugin loader (loader.c), shared by backends and task plugins --- */
typedef struct ms_plugin_kind {
    const char *kind;         /* "backend", "task" */
    const char *prefix;       /* file name prefix, e.g. "libmetastep-backend-" */
    const char *entry_symbol; /* exported entry function */
    const char *path_env;     /* colon-separated search path variable */
    const char *build_dir;    /* build-tree directory */
    const char *install_dir;  /* install directory */
    uint32_t abi_major;
    size_t min_size;          /* smallest acceptable table size */
} ms_plugin_kind;

/* Find (by name or path) and open a plugin, check its header.  On success
 * *table is the header of its table, *path a malloc'd resolved path and
 * *handle the dlopen handle.  On failure returns MS_ERR_BACKEND with the
 * message recorded. */
MS_HIDDEN ms_status ms__plugin_open(const ms_plugin_kind *k, const char *name, void **handle,
                                    const ms_plugin_header **table, char **path);
MS_HIDDEN int ms__plugin_list(const ms_plugin_kind *k,
                              void (*fn)(const char *name, const char *path, void *user),
                              void *user);
MS_HIDDEN size_t ms__plugin_search_path(const ms_plugin_kind *k, char *buf, size_t cap);

/* --- containers (container.c) --- */
/* Store an op's result t at key in c, taking over the op's reference when no
 * scope owns it.  A NULL t (a failed op) gives an error naming the key. */
MS_HIDDEN ms_status ms__container_adopt(ms_container *c, const char *fn, const char *key,
                                        ms_tensor *t);

/* --- safetensors (safetensors.c) --- */
/* ms_container_load on n bytes at buf (which it only reads; n bytes past buf
 * are never touched); name (may be NULL) labels messages.  Used by
 * ms_container_load and by the fuzzer in tests/fuzz/. */
MS_HIDDEN ms_status ms__container_load_mem(const void *buf, size_t n, const char *name,
                                           ms_container **out);

/* --- autodiff hooks (autodiff.c) --- */
typedef struct ms_node ms_node;
/* Compute input gradients: for every input i with want[i] true, gin[i]
 * receives a new tensor (NULL only when the op failed); inputs with want[i]
 * false are left alone, so no work is spent on gradients nobody uses
 * (PyTorch's needs_input_grad).  want has one entry per input (n->nin, or
 * n->nmany for concat) and is true only where the input requires a gradient
 * and leads to a tensor ms_grad differentiates with respect to.  `y` is the
 * node's output, `gy` the gradient flowing into it. */
typedef ms_status (*ms_backward_fn)(const ms_node *n, const bool *want, const ms_tensor *y,
                                    const ms_tensor *gy, ms_tensor **gin);
#define MS_NODE_MAX_IN 3
struct ms_node {
    const char *op;              /* for messages */
    ms_backward_fn backward;
    int nin;
    ms_tensor *in[MS_NODE_MAX_IN]; /* retained inputs (the backward may read them) */
    bool need[MS_NODE_MAX_IN];   /* whether input i requires a gradient */
    double s;                    /* op scalar (tensor-scalar ops, ...) */
    int iarg[MS_MAX_DIMS + 2];   /* op integer arguments (axes, perm, ...) */
    int64_t larg[MS_MAX_DIMS + 2];
    ms_tensor **many;            /* concat: nmany retained inputs (malloc'd) */
    int nmany;
    size_t cls;                  /* allocator size class of the node */
};
/* True when recording is on and any of the inputs requires a gradient. */
/* Depth of ms_no_grad_push on this thread (autodiff.c). */
MS_HIDDEN extern _Thread_local int ms__no_grad_depth;
/* Inline: every op asks, and the common no-gradient case is answered by the
 * inputs' flags alone. */
static inline bool ms__needs_grad(const ms_tensor *a, const ms_tensor *b, const ms_tensor *c)
{
    return ((a && a->requires_grad) || (b && b->requires_grad) || (c && c->requires_grad)) &&
           ms__no_grad_depth == 0;
}
/* Attach a node to y (retaining the inputs).  Returns y, or NULL (y released)
 * on allocation failure. */
MS_HIDDEN ms_tensor *ms__record(ms_tensor *y, const char *op, ms_backward_fn bw,
                                const ms_tensor *a, const ms_tensor *b, const ms_tensor *c,
                                double s, const int *iarg, int niarg);
MS_HIDDEN void ms__node_free(ms_node *n);


#endif
