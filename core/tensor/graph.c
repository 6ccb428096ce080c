/* The recorded graph: no-grad scopes, recording a node when an op runs,
 * freeing it with the tensor it produced, and leaf variables. */
#include <stdlib.h>
#include <string.h>

#include "tensor/tensor.h"

_Thread_local int ms__no_grad_depth;

void ms_no_grad_push(void) { ms__no_grad_depth++; }
void ms_no_grad_pop(void)
{
    if (ms__no_grad_depth > 0)
        ms__no_grad_depth--;
}
bool ms_grad_enabled(void) { return ms__no_grad_depth == 0; }

bool ms_requires_grad(const ms_tensor *t) { return t && t->requires_grad; }

ms_tensor *ms__record(ms_tensor *y, const char *op, ms_backward_fn bw, const ms_tensor *a,
                      const ms_tensor *b, const ms_tensor *c, double s, const int *iarg,
                      int niarg)
{
    size_t cls;
    ms_node *n = ms__block_alloc(sizeof *n, &cls);
    if (!n) {
        ms__fail(MS_ERR_NOMEM, "%s: cannot record the graph", op);
        ms__discard(y);
        return NULL;
    }
    memset(n, 0, sizeof *n);
    n->cls = cls;
    n->op = op;
    n->backward = bw;
    const ms_tensor *in[MS_NODE_MAX_IN] = {a, b, c};
    uint64_t level = 0;
    for (int i = 0; i < MS_NODE_MAX_IN; i++) {
        if (in[i]) {
            n->in[i] = ms_retain((ms_tensor *)in[i]);
            n->need[i] = in[i]->requires_grad;
            n->nin = i + 1;
            level = in[i]->level > level ? in[i]->level : level;
        }
    }
    y->level = level + 1;
    n->s = s;
    for (int i = 0; i < niarg && i < MS_MAX_DIMS + 2; i++)
        n->iarg[i] = iarg[i];
    y->node = n;
    y->requires_grad = true;
    return y;
}

void ms__node_free(ms_node *n)
{
    for (int i = 0; i < MS_NODE_MAX_IN; i++)
        ms_release(n->in[i]);
    for (int i = 0; i < n->nmany; i++)
        ms_release(n->many[i]);
    free(n->many);
    ms__block_free(n, n->cls);
}

static ms_tensor *leaf_copy(const char *fn, const ms_tensor *t, bool requires_grad)
{
    if (!ms__check(fn, t, "t"))
        return NULL;
    ms_tensor *y = ms__tensor_new(fn, t->dtype, t->ndim, t->shape);
    if (!y)
        return NULL;
    if (t->numel)
        ms__host_copy(y->data, t->data, (size_t)t->numel * ms_dtype_size(t->dtype));
    y->requires_grad = requires_grad;
    return y;
}

ms_tensor *ms_variable(const ms_tensor *t) { return leaf_copy("ms_variable", t, true); }
ms_tensor *ms_stop_gradient(const ms_tensor *t)
{
    return leaf_copy("ms_stop_gradient", t, false);
}
