/* core/tensor: tensors, scopes, retain/release, the random number
 * generator, printing, and the recorded graph (nodes, variables, no-grad
 * scopes).  A graph node is owned by the tensor it produced and freed with
 * it, so its lifetime lives here, below the ops that record nodes and the
 * autodiff layer that walks them. */
#ifndef METASTEP_CORE_TENSOR_H
#define METASTEP_CORE_TENSOR_H

#include "runtime/runtime.h"

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

/* --- tensors (tensor.c) --- */
/* Uninitialised tensor, registered in the current scope; NULL + error on failure. */
MS_HIDDEN ms_tensor *ms__tensor_new(const char *fn, ms_dtype dt, int ndim, const int64_t *shape);
/* As ms__tensor_new but owned by the caller alone (no scope): for temporaries. */
MS_HIDDEN ms_tensor *ms__tensor_tmp(const char *fn, ms_dtype dt, int ndim, const int64_t *shape);
/* Undo a just-created tensor after a failure: drop it from the scope if it is
 * the scope's newest entry, then release it. */
MS_HIDDEN void ms__discard(ms_tensor *t);
/* Free the lists this thread's scopes keep for reuse (none may be open): a
 * worker thread calls it before it exits, so that nothing it cached is lost. */
MS_HIDDEN void ms__thread_release(void);
/* Validate a tensor argument: NULL -> MS_ERR_NULL_ARG recorded; released -> error. */
MS_HIDDEN bool ms__check(const char *fn, const ms_tensor *t, const char *argname);
MS_HIDDEN bool ms__same_dtype(const char *fn, const ms_tensor *a, const ms_tensor *b);
/* Normalise an axis in [-ndim, ndim) to [0, ndim); -1 with error recorded when out of range. */
MS_HIDDEN int ms__axis(const char *fn, int axis, int ndim);
/* Contiguous element strides of a shape. */
MS_HIDDEN void ms__strides(int ndim, const int64_t *shape, int64_t *strides);
/* For a measurement inside the library that must not disturb the caller's
 * (ms_peak_tensor_bytes): restart the peak at the live bytes, returning the
 * peak so far; afterwards raise it back to at least that value. */
MS_HIDDEN int64_t ms__peak_tensor_bytes_restart(void);
MS_HIDDEN void ms__peak_tensor_bytes_raise(int64_t v);
/* After an internal scope is popped, hand a retained result to the now-current scope. */
MS_HIDDEN void ms__scope_adopt(ms_tensor *t);

/* --- the recorded graph (graph.c): nodes live and die with the tensors
 * they produce, so they belong to this layer; ms_grad (core/autodiff) walks
 * them from above --- */
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
/* Depth of ms_no_grad_push on this thread. */
MS_HIDDEN extern _Thread_local int ms__no_grad_depth;
/* True when recording is on and any of the inputs requires a gradient.
 * Inline: every op asks, and the common no-gradient case is answered by the
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
/* Release a node's inputs and free it (when the tensor it produced dies, or
 * when ms_grad without create_graph consumes it). */
MS_HIDDEN void ms__node_free(ms_node *n);

#endif
