/* Reverse-mode autodiff: ms_grad's backward sweep over the recorded graph
 * (core/tensor/graph.c records it), and ms_execute_with_gradients. */
#include <stdlib.h>
#include <string.h>

#include "autodiff/autodiff.h"

static atomic_ullong visit_gen;

/* ------------------------------------------------------------- ms_grad */

enum { MARK_WRT = 1, MARK_RELEVANT = 2, MARK_REACH = 4 };

static bool same_shape_t(const ms_tensor *a, const ms_tensor *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return false;
    return true;
}

typedef struct sweep {
    ms_tensor **order; /* post-order: inputs before the tensors computed from them */
    size_t n, cap;
} sweep;

static bool push(ms_tensor ***arr, size_t *n, size_t *cap, ms_tensor *t)
{
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        ms_tensor **a = realloc(*arr, c * sizeof *a);
        if (!a)
            return false;
        *arr = a;
        *cap = c;
    }
    (*arr)[(*n)++] = t;
    return true;
}

static int node_arity(const ms_node *n) { return n->nmany ? n->nmany : n->nin; }

static ms_tensor *node_input(const ms_node *n, int i)
{
    if (n->nmany)
        return n->many[i]->requires_grad ? n->many[i] : NULL;
    return n->need[i] ? n->in[i] : NULL;
}

/* Iterative DFS from y collecting every tensor that requires a gradient, in
 * post-order; each gets one reference held until the sweep ends, so freeing
 * nodes as the sweep goes cannot free a tensor still to be visited.  A tensor
 * is "relevant" when a wrt tensor is reachable from it. */
static bool collect(ms_tensor *y, sweep *s, uint64_t gen, uint64_t min_level)
{
    ms_tensor **stack = NULL;
    int *child = NULL;
    size_t sn = 0, scap = 0, ccap = 0;
    bool ok = true;
    y->visit = gen;
    ok = push(&stack, &sn, &scap, y);
    if (ok) {
        child = malloc(scap * sizeof *child);
        ccap = scap;
        ok = child != NULL;
        if (ok)
            child[0] = 0;
    }
    while (ok && sn) {
        ms_tensor *t = stack[sn - 1];
        int i = child[sn - 1]++;
        if (t->node && i < node_arity(t->node)) {
            ms_tensor *in = node_input(t->node, i);
            /* shallower than every wrt tensor: no path to one below it */
            if (in && in->visit != gen && in->level >= min_level) {
                in->visit = gen;
                ok = push(&stack, &sn, &scap, in);
                if (ok && scap > ccap) {
                    int *c = realloc(child, scap * sizeof *c);
                    ok = c != NULL;
                    if (ok) {
                        child = c;
                        ccap = scap;
                    }
                }
                if (ok)
                    child[sn - 1] = 0;
            }
            continue;
        }
        sn--;
        bool rel = (t->pending & MARK_WRT) != 0;
        /* inputs below min_level were not walked: they carry no mark, and
         * they may be shared with an ms_grad running on another thread
         * (the meta steps' workers), so they are not even read */
        for (int j = 0; t->node && j < node_arity(t->node); j++) {
            ms_tensor *in = node_input(t->node, j);
            rel = rel || (in && in->level >= min_level && (in->pending & MARK_RELEVANT));
        }
        if (rel)
            t->pending |= MARK_RELEVANT;
        ok = push(&s->order, &s->n, &s->cap, ms_retain(t));
        if (!ok)
            ms_release(t);
    }
    free(stack);
    free(child);
    return ok;
}

static ms_status accumulate(ms_tensor *t, ms_tensor *g)
{
    if (!g)
        return MS_OK;
    if (!t->gacc) {
        t->gacc = g;
        return MS_OK;
    }
    t->gacc = ms_add(t->gacc, g);
    return t->gacc ? MS_OK : MS_ERR_NOMEM;
}

/* Whether a gradient must flow into `in`: it requires one and a wrt tensor
 * lies at or below it.  Inputs that collect() did not walk (shallower than
 * every wrt tensor) have no marks, so they never receive one, and no state
 * is left on a tensor the clean-up does not visit. */
static bool wanted(const ms_tensor *in, uint64_t min_level)
{
    /* the level first: an input that was not walked may be shared with an
     * ms_grad on another thread, so its marks are not read */
    return in && in->level >= min_level && (in->pending & MARK_RELEVANT);
}

static ms_status backward_sweep(sweep *s, bool create_graph, uint64_t min_level)
{
    for (size_t k = s->n; k-- > 0;) {
        ms_tensor *t = s->order[k];
        ms_node *n = t->node;
        if (!n || !t->gacc)
            continue;
        int arity = node_arity(n);
        bool small_want[MS_NODE_MAX_IN] = {false, false, false};
        ms_tensor *small[MS_NODE_MAX_IN] = {NULL, NULL, NULL};
        bool *want = small_want;
        ms_tensor **gin = small;
        if (arity > MS_NODE_MAX_IN) {
            want = calloc((size_t)arity, sizeof *want);
            gin = calloc((size_t)arity, sizeof *gin);
            if (!want || !gin) {
                free(want);
                free(gin);
                return ms__fail(MS_ERR_NOMEM, "ms_grad: out of memory");
            }
        }
        bool down = false; /* does a wrt tensor lie below t? */
        for (int j = 0; j < arity; j++) {
            want[j] = wanted(node_input(n, j), min_level);
            down = down || want[j];
        }
        ms_status st = MS_OK;
        if (down)
            st = n->backward(n, want, t, t->gacc, gin);
        /* A backward fills gin[j] for every wanted input; a NULL there is a
         * failed op.  (The thread's last error cannot tell: it may hold an
         * unrelated failure from before this ms_grad.) */
        for (int j = 0; down && st == MS_OK && j < arity; j++) {
            if (!want[j])
                continue;
            if (!gin[j]) {
                st = ms_last_error(NULL);
                if (st == MS_OK)
                    st = ms__fail(MS_ERR_INTERNAL, "ms_grad: the backward of %s failed", n->op);
            } else {
                st = accumulate(node_input(n, j), gin[j]);
            }
        }
        if (gin != small) {
            free(gin);
            free(want);
        }
        if (st != MS_OK)
            return st;
        if (down && !create_graph) { /* consume the graph as we go */
            t->node = NULL;
            t->graph_freed = true;
            ms__node_free(n);
        }
    }
    return MS_OK;
}

ms_status ms_grad_seeded(const ms_tensor *y, const ms_tensor *seed, const ms_container *wrt,
                         bool create_graph, ms_container **grads)
{
    const char *fn = "ms_grad";
    if (!grads)
        return ms__fail(MS_ERR_NULL_ARG, "%s: grads is NULL", fn);
    *grads = NULL;
    if (!ms__check(fn, y, "y"))
        return ms_last_error(NULL);
    if (!wrt)
        return ms__fail(MS_ERR_NULL_ARG, "%s: wrt is NULL", fn);
    if (y->graph_freed)
        return ms__fail(MS_ERR_GRAPH, "%s: y's graph was already consumed by an ms_grad "
                        "without create_graph", fn);
    if (seed) {
        if (!ms__check(fn, seed, "seed") || !ms__same_dtype(fn, y, seed))
            return ms_last_error(NULL);
        if (seed->numel != y->numel) {
            char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
            return ms__fail(MS_ERR_SHAPE, "%s: seed of shape %s for y of shape %s", fn,
                            ms__shape_str(b1, sizeof b1, seed->ndim, seed->shape),
                            ms__shape_str(b2, sizeof b2, y->ndim, y->shape));
        }
    } else if (y->numel != 1) {
        char b[MS_SHAPE_BUF];
        return ms__fail(MS_ERR_GRAPH, "%s: y has shape %s; the gradient of a non-scalar needs a "
                        "seed (ms_grad_seeded)", fn, ms__shape_str(b, sizeof b, y->ndim, y->shape));
    }
    int nw = ms_container_size(wrt);
    for (int i = 0; i < nw; i++) {
        ms_tensor *w = ms_container_at(wrt, i);
        if (!ms__check(fn, w, ms_container_key(wrt, i)))
            return ms_last_error(NULL);
        if (!w->requires_grad)
            return ms__fail(MS_ERR_GRAPH, "%s: wrt '%s' is not a variable (make it with "
                            "ms_variable, or pass the container the cost was computed from)",
                            fn, ms_container_key(wrt, i));
        if (w->dtype != y->dtype)
            return ms__fail(MS_ERR_DTYPE, "%s: wrt '%s' is %s but y is %s", fn,
                            ms_container_key(wrt, i), ms_dtype_name(w->dtype),
                            ms_dtype_name(y->dtype));
    }
    ms_container *out = ms_container_new();
    if (!out)
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    ms_status st = ms_scope_push();
    if (st != MS_OK) {
        ms_container_release(out);
        return st;
    }
    if (!create_graph)
        ms_no_grad_push();
    uint64_t min_level = UINT64_MAX;
    for (int i = 0; i < nw; i++) {
        ms_tensor *w = ms_container_at(wrt, i);
        w->pending |= MARK_WRT;
        min_level = w->level < min_level ? w->level : min_level;
    }
    sweep s = {NULL, 0, 0};
    uint64_t gen = atomic_fetch_add(&visit_gen, 1) + 1;
    ms_tensor *yy = (ms_tensor *)y;
    if (yy->requires_grad && !collect(yy, &s, gen, min_level))
        st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    /* A tensor whose node an earlier ms_grad (create_graph false) freed hides
     * what lay below it: when y reaches it other than through a wrt tensor,
     * the gradients would silently miss that part, so refuse. */
    if (st == MS_OK && s.n)
        s.order[s.n - 1]->pending |= MARK_REACH; /* y: the DFS root comes last */
    for (size_t k = s.n; st == MS_OK && k-- > 0;) {
        ms_tensor *t = s.order[k];
        if (!(t->pending & MARK_REACH) || (t->pending & MARK_WRT))
            continue;
        if (t->graph_freed)
            st = ms__fail(MS_ERR_GRAPH, "%s: y depends on a tensor whose graph was already "
                          "consumed by an ms_grad without create_graph", fn);
        /* only walked inputs: a mark on any other would outlive this call */
        for (int j = 0; t->node && j < node_arity(t->node); j++) {
            ms_tensor *in = node_input(t->node, j);
            if (in && in->level >= min_level)
                in->pending |= MARK_REACH;
        }
    }
    if (st == MS_OK && yy->requires_grad) {
        yy->gacc = seed ? ms_reshape(seed, y->ndim, y->shape) : ms_ones(y->dtype, y->ndim, y->shape);
        st = yy->gacc ? backward_sweep(&s, create_graph, min_level) : ms_last_error(NULL);
    }
    ms_tensor **results = calloc((size_t)nw + 1, sizeof *results);
    if (!results && st == MS_OK)
        st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    for (int i = 0; st == MS_OK && i < nw; i++) {
        ms_tensor *w = ms_container_at(wrt, i);
        ms_tensor *g = w->gacc ? w->gacc : ms_zeros(w->dtype, w->ndim, w->shape);
        if (g && !same_shape_t(g, w))
            g = ms_reshape(g, w->ndim, w->shape);
        if (!g) {
            st = ms_last_error(NULL);
            break;
        }
        results[i] = ms_retain(g);
        st = ms_container_set(out, ms_container_key(wrt, i), g);
    }
    for (int i = 0; i < nw; i++)
        ms_container_at(wrt, i)->pending = 0;
    for (size_t k = 0; k < s.n; k++) {
        s.order[k]->gacc = NULL;
        s.order[k]->pending = 0;
    }
    for (int i = 0; i < nw; i++)
        ms_container_at(wrt, i)->gacc = NULL;
    yy->gacc = NULL;
    if (!create_graph)
        ms_no_grad_pop();
    ms_scope_pop();
    for (int i = 0; results && i < nw; i++)
        ms_release(results[i]);
    free(results);
    for (size_t k = 0; k < s.n; k++)
        ms_release(s.order[k]);
    free(s.order);
    if (st != MS_OK) {
        ms_container_release(out);
        return st;
    }
    *grads = out;
    return MS_OK;
}

ms_status ms_grad(const ms_tensor *y, const ms_container *wrt, bool create_graph,
                  ms_container **grads)
{
    return ms_grad_seeded(y, NULL, wrt, create_graph, grads);
}

ms_status ms_execute_with_gradients(ms_grad_fn fn, void *user, const ms_container *xs,
                                    bool retain_grads, ms_tensor **y, ms_container **grads)
{
    const char *name = "ms_execute_with_gradients";
    if (!fn || !xs || !y || !grads)
        return ms__fail(MS_ERR_NULL_ARG, "%s: NULL argument", name);
    *y = NULL;
    *grads = NULL;
    ms_container *vs = ms_container_new();
    if (!vs)
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory", name);
    ms_status st = ms_scope_push();
    ms_tensor *cost = NULL;
    for (int i = 0; st == MS_OK && i < ms_container_size(xs); i++) {
        ms_tensor *v = ms_variable(ms_container_at(xs, i));
        st = v ? ms_container_set(vs, ms_container_key(xs, i), v) : ms_last_error(NULL);
    }
    if (st == MS_OK) {
        cost = fn(vs, user);
        if (!cost)
            st = ms__fail(MS_ERR_INVALID_ARG, "%s: the function returned NULL", name);
    }
    if (st == MS_OK)
        st = ms_grad(cost, vs, retain_grads, grads);
    if (st == MS_OK && !retain_grads)
        cost = ms_stop_gradient(cost);
    ms_retain(cost);
    ms_scope_pop();
    ms_container_release(vs);
    if (st != MS_OK) {
        ms_release(cost);
        return st;
    }
    ms__scope_adopt(cost);
    *y = cost;
    return MS_OK;
}
