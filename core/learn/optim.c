/* Optimizers: gradient descent, SGD with momentum (plain and Nesterov), Adam.
 * Every update is written with differentiable ops, so with stop_gradients
 * off a meta step can differentiate through it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "learn/learn.h"

/* Per-leaf update: returns the new variable; may replace the leaf's state
 * tensors in st[0..1] (borrowed from the current scope). */
typedef ms_tensor *(*leaf_update)(const metastep_optimizer *o, const ms_tensor *w,
                                  const ms_tensor *g, double lr, int t, ms_tensor **st);

typedef struct moments {
    ms_container *m, *v; /* per-leaf state, by key chain */
    int t;               /* steps taken */
} moments;

static ms_tensor *maybe_detach(ms_tensor *t, bool stop) { return stop ? ms_stop_gradient(t) : t; }

/* A non-empty state container (momentum buffers, Adam moments: from earlier
 * steps or restored from a checkpoint) must hold exactly the variables' key
 * chains with their shapes: a missing, extra or misshapen leaf would
 * silently restart that leaf's statistics or broadcast into garbage. */
static bool state_matches(const char *fn, const char *what, const ms_container *st,
                          const ms_container *w)
{
    if (!st || ms_container_size(st) == 0)
        return true;
    for (int i = 0; i < ms_container_size(st); i++)
        if (!ms_container_has(w, ms_container_key(st, i))) {
            ms__fail(MS_ERR_KEY, "%s: the optimizer state's %s has '%s', which is not a variable",
                     fn, what, ms_container_key(st, i));
            return false;
        }
    for (int i = 0; i < ms_container_size(w); i++) {
        const char *key = ms_container_key(w, i);
        const ms_tensor *x = ms_container_at(w, i);
        const ms_tensor *y = ms_container_has(st, key) ? ms_container_get(st, key) : NULL;
        if (!y) {
            ms__fail(MS_ERR_KEY, "%s: the optimizer state's %s has no '%s'", fn, what, key);
            return false;
        }
        bool same = ms_tensor_ndim(x) == ms_tensor_ndim(y) &&
                    ms_tensor_dtype(x) == ms_tensor_dtype(y);
        for (int d = 0; same && d < ms_tensor_ndim(x); d++)
            same = ms_tensor_shape(x)[d] == ms_tensor_shape(y)[d];
        if (!same) {
            char a[MS_SHAPE_BUF], b[MS_SHAPE_BUF];
            ms__fail(MS_ERR_SHAPE, "%s: the optimizer state's %s '%s' is %s %s, the variable %s %s",
                     fn, what, key, ms_dtype_name(ms_tensor_dtype(y)),
                     ms__shape_str(a, sizeof a, ms_tensor_ndim(y), ms_tensor_shape(y)),
                     ms_dtype_name(ms_tensor_dtype(x)),
                     ms__shape_str(b, sizeof b, ms_tensor_ndim(x), ms_tensor_shape(x)));
            return false;
        }
    }
    return true;
}

/* Apply `fn` to every leaf; the state containers (when s is non-NULL) are
 * replaced by the new state. */
static ms_container *apply(const char *fn, const metastep_optimizer *o, moments *s,
                           const ms_container *w, const ms_container *g, double lr, bool stop,
                           leaf_update update)
{
    if (!w || !g) {
        ms__fail(MS_ERR_NULL_ARG, "%s: %s is NULL", fn, w ? "dcdw" : "w");
        return NULL;
    }
    if (!isfinite(lr)) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: learning rate %g is not finite", fn, lr);
        return NULL;
    }
    ms_status st = ms_container_assert_identical_structure(w, g);
    if (st != MS_OK) {
        ms__fail(st, "%s: variables and gradients differ in structure", fn);
        return NULL;
    }
    if (s && (!state_matches(fn, "first buffer (m)", s->m, w) ||
              !state_matches(fn, "second buffer (v)", s->v, w)))
        return NULL;
    ms_container *out = ms_container_new();
    ms_container *nm = s ? ms_container_new() : NULL, *nv = s ? ms_container_new() : NULL;
    if (!out || (s && (!nm || !nv))) {
        ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
        goto fail;
    }
    int t = s ? s->t + 1 : 0;
    /* intermediates go with this scope; the containers keep the results */
    ms_scope_push();
    bool ok = true;
    for (int i = 0; ok && i < ms_container_size(w); i++) {
        const char *key = ms_container_key(w, i);
        ms_tensor *state[2] = {NULL, NULL};
        if (s && s->m && ms_container_has(s->m, key))
            state[0] = ms_container_get(s->m, key);
        if (s && s->v && ms_container_has(s->v, key))
            state[1] = ms_container_get(s->v, key);
        ms_tensor *nw = update(o, ms_container_at(w, i), ms_container_get(g, key), lr, t, state);
        ok = ms__container_adopt(out, fn, key, maybe_detach(nw, stop)) == MS_OK &&
             (!s || !state[0] || ms__container_adopt(nm, fn, key, maybe_detach(state[0], stop)) == MS_OK) &&
             (!s || !state[1] || ms__container_adopt(nv, fn, key, maybe_detach(state[1], stop)) == MS_OK);
    }
    ms_scope_pop();
    if (!ok)
        goto fail;
    if (s) {
        ms_container_release(s->m);
        ms_container_release(s->v);
        s->m = nm;
        s->v = nv;
        s->t = t;
    }
    return out;
fail:
    ms_container_release(out);
    ms_container_release(nm);
    ms_container_release(nv);
    return NULL;
}

/* --- gradient descent --- */

static ms_tensor *gd_leaf(const metastep_optimizer *o, const ms_tensor *w, const ms_tensor *g,
                          double lr, int t, ms_tensor **st)
{
    (void)o, (void)t, (void)st;
    return ms_sub(w, ms_mul_scalar(g, lr));
}

static ms_container *gd_step(const metastep_optimizer *o, void *state, const ms_container *w,
                             const ms_container *g, double lr, bool stop)
{
    (void)state;
    return apply("gradient_descent", o, NULL, w, g, lr, stop, gd_leaf);
}

const metastep_optimizer metastep_gradient_descent = {
    .name = "gradient_descent", .state_new = NULL, .state_free = NULL, .step = gd_step,
    .hyper = {0, 0, 0, 0}};

ms_container *metastep_gradient_descent_update(const ms_container *w, const ms_container *dcdw,
                                               double lr, bool stop_gradients)
{
    return apply("metastep_gradient_descent_update", &metastep_gradient_descent, NULL, w, dcdw,
                 lr, stop_gradients, gd_leaf);
}

/* --- stateful optimizers share one state layout --- */

static void *moments_new(const metastep_optimizer *o)
{
    (void)o;
    moments *m = calloc(1, sizeof *m);
    if (!m)
        ms__fail(MS_ERR_NOMEM, "optimizer state: out of memory");
    return m;
}

static void moments_free(void *p)
{
    moments *m = p;
    if (!m)
        return;
    ms_container_release(m->m);
    ms_container_release(m->v);
    free(m);
}

/* --- SGD with momentum: hyper = {momentum, nesterov} --- */

static ms_tensor *sgd_leaf(const metastep_optimizer *o, const ms_tensor *w, const ms_tensor *g,
                           double lr, int t, ms_tensor **st)
{
    (void)t;
    double mu = o->hyper[0];
    /* PyTorch's convention: the first buffer is the gradient itself */
    st[0] = st[0] ? ms_add(ms_mul_scalar(st[0], mu), g) : ms_mul_scalar(g, 1.0);
    ms_tensor *dir = o->hyper[1] != 0 ? ms_add(g, ms_mul_scalar(st[0], mu)) : st[0];
    return ms_sub(w, ms_mul_scalar(dir, lr));
}

static ms_container *stateful_step(const metastep_optimizer *o, void *state,
                                   const ms_container *w, const ms_container *g, double lr,
                                   bool stop, leaf_update update)
{
    if (!state) {
        ms__fail(MS_ERR_NULL_ARG, "%s: state is NULL (make one with metastep_optim_state_new)",
                 o->name);
        return NULL;
    }
    return apply(o->name, o, state, w, g, lr, stop, update);
}

static ms_container *sgd_step(const metastep_optimizer *o, void *state, const ms_container *w,
                              const ms_container *g, double lr, bool stop)
{
    return stateful_step(o, state, w, g, lr, stop, sgd_leaf);
}

metastep_optimizer metastep_sgd(double momentum, bool nesterov)
{
    return (metastep_optimizer){.name = nesterov ? "sgd_nesterov" : "sgd_momentum",
                                .state_new = moments_new, .state_free = moments_free,
                                .step = sgd_step, .hyper = {momentum, nesterov ? 1 : 0, 0, 0}};
}

/* --- Adam: hyper = {beta1, beta2, eps} --- */

/* sqrt(x) for x >= 0 whose derivative at 0 is taken as 0 instead of
 * infinity: the value is exact, and a second-order gradient stays finite. */
static ms_tensor *safe_sqrt(const ms_tensor *x)
{
    ms_tensor *pos = ms_greater(x, ms_scalar(ms_tensor_dtype(x), 0.0));
    ms_tensor *one = ms_scalar(ms_tensor_dtype(x), 1.0);
    return ms_mul(ms_sqrt(ms_where(pos, x, one)), pos);
}

static ms_tensor *adam_leaf(const metastep_optimizer *o, const ms_tensor *w, const ms_tensor *g,
                            double lr, int t, ms_tensor **st)
{
    double b1 = o->hyper[0], b2 = o->hyper[1], eps = o->hyper[2];
    ms_tensor *m = ms_mul_scalar(g, 1.0 - b1), *v = ms_mul_scalar(ms_square(g), 1.0 - b2);
    if (st[0])
        m = ms_add(ms_mul_scalar(st[0], b1), m);
    if (st[1])
        v = ms_add(ms_mul_scalar(st[1], b2), v);
    st[0] = m;
    st[1] = v;
    ms_tensor *mhat = ms_div_scalar(m, 1.0 - pow(b1, t));
    ms_tensor *vhat = ms_div_scalar(v, 1.0 - pow(b2, t));
    return ms_sub(w, ms_mul_scalar(ms_div(mhat, ms_add_scalar(safe_sqrt(vhat), eps)), lr));
}

/* y = x op s for a scalar s, or y = a op b: the kernel calls the ops above
 * make (binary_scalar's float copy of s for float32), without the tensors
 * around them. */
static ms_status k_scalar(ms_binary_op op, const ms_tensor *x, double s, void *y)
{
    float sf = (float)s;
    const void *sp = x->dtype == MS_F32 ? (const void *)&sf : (const void *)&s;
    const int64_t n = x->numel, one = 1, zero = 0;
    return msk_binary(op, x->dtype, 1, &n, x->data, &one, sp, &zero, y);
}

static ms_status k_binary(ms_binary_op op, const ms_tensor *like, const void *a, const void *b,
                          void *y)
{
    const int64_t n = like->numel, one = 1;
    return msk_binary(op, like->dtype, 1, &n, a, &one, b, &one, y);
}

/* Adam with stop_gradients on, which the outer update of every meta-step
 * is: the same kernels in the same order as adam_leaf (so the same bits on
 * an elementwise-exact backend), on five buffers per leaf instead of
 * fourteen tensors, graph-free.  safe_sqrt is plain sqrt here: it differs
 * from it only for a NaN second moment, where the update is NaN either way.
 * A bench-meta sine step spent 12% of its time in adam_leaf. */
static ms_tensor *adam_leaf_stopped(const metastep_optimizer *o, const ms_tensor *w,
                                    const ms_tensor *g, double lr, int t, ms_tensor **st)
{
    static const char fn[] = "metastep_optim_step (adam)";
    if (g->dtype != w->dtype || g->numel != w->numel) /* the ops' own errors */
        return adam_leaf(o, w, g, lr, t, st);
    const double b1 = o->hyper[0], b2 = o->hyper[1], eps = o->hyper[2];
    ms_tensor *m = ms__tensor_new(fn, w->dtype, w->ndim, w->shape);
    ms_tensor *v = ms__tensor_new(fn, w->dtype, w->ndim, w->shape);
    ms_tensor *nw = ms__tensor_new(fn, w->dtype, w->ndim, w->shape);
    ms_tensor *t1 = ms__tensor_new(fn, w->dtype, w->ndim, w->shape);
    ms_tensor *t2 = ms__tensor_new(fn, w->dtype, w->ndim, w->shape);
    if (!m || !v || !nw || !t1 || !t2)
        return NULL;
    if (!w->numel)
        return st[0] = m, st[1] = v, nw;
    ms_status k = MS_OK;
#define K(call)                                                                                   \
    if (k == MS_OK)                                                                               \
    k = (call)
    if (st[0]) { /* m = b1 m + (1 - b1) g */
        K(k_scalar(MS_BINARY_MUL, g, 1.0 - b1, t2->data));
        K(k_scalar(MS_BINARY_MUL, st[0], b1, t1->data));
        K(k_binary(MS_BINARY_ADD, w, t1->data, t2->data, m->data));
    } else {
        K(k_scalar(MS_BINARY_MUL, g, 1.0 - b1, m->data));
    }
    K(msk_unary(MS_UNARY_SQUARE, w->dtype, w->numel, g->data, t1->data));
    if (st[1]) { /* v = b2 v + (1 - b2) g² */
        K(k_scalar(MS_BINARY_MUL, t1, 1.0 - b2, t2->data));
        K(k_scalar(MS_BINARY_MUL, st[1], b2, t1->data));
        K(k_binary(MS_BINARY_ADD, w, t1->data, t2->data, v->data));
    } else {
        K(k_scalar(MS_BINARY_MUL, t1, 1.0 - b2, v->data));
    }
    K(k_scalar(MS_BINARY_DIV, m, 1.0 - pow(b1, t), t1->data));          /* m̂ */
    K(k_scalar(MS_BINARY_DIV, v, 1.0 - pow(b2, t), t2->data));          /* v̂ */
    K(msk_unary(MS_UNARY_SQRT, w->dtype, w->numel, t2->data, t2->data)); /* √v̂ */
    K(k_scalar(MS_BINARY_ADD, t2, eps, nw->data));                        /* √v̂ + ε */
    K(k_binary(MS_BINARY_DIV, w, t1->data, nw->data, t2->data));
    K(k_scalar(MS_BINARY_MUL, t2, lr, t1->data));
    K(k_binary(MS_BINARY_SUB, w, w->data, t1->data, nw->data));
#undef K
    if (k != MS_OK) {
        ms__fail(k, "%s: a kernel failed (%s)", fn, ms_status_string(k));
        return NULL;
    }
    st[0] = m;
    st[1] = v;
    return nw;
}

static ms_container *adam_step(const metastep_optimizer *o, void *state, const ms_container *w,
                               const ms_container *g, double lr, bool stop)
{
    return stateful_step(o, state, w, g, lr, stop, stop ? adam_leaf_stopped : adam_leaf);
}

metastep_optimizer metastep_adam(double beta1, double beta2, double eps)
{
    return (metastep_optimizer){.name = "adam", .state_new = moments_new,
                                .state_free = moments_free, .step = adam_step,
                                .hyper = {beta1, beta2, eps, 0}};
}

/* --- per-use state for callers --- */

/* The state holds a copy of the optimizer (a small value), so the caller's
 * optimizer may be a temporary or go out of scope while the state lives. */
struct metastep_optim_state {
    metastep_optimizer copy;
    const metastep_optimizer *opt; /* &copy */
    void *state;
};

metastep_optim_state *metastep_optim_state_new(const metastep_optimizer *opt)
{
    if (!opt || !opt->step) {
        ms__fail(MS_ERR_NULL_ARG, "metastep_optim_state_new: optimizer or its step is NULL");
        return NULL;
    }
    metastep_optim_state *s = calloc(1, sizeof *s);
    if (!s) {
        ms__fail(MS_ERR_NOMEM, "metastep_optim_state_new: out of memory");
        return NULL;
    }
    s->copy = *opt;
    s->opt = &s->copy;
    if (s->opt->state_new && !(s->state = s->opt->state_new(s->opt))) {
        free(s);
        return NULL;
    }
    return s;
}

void metastep_optim_state_release(metastep_optim_state *s)
{
    if (!s)
        return;
    if (s->opt->state_free)
        s->opt->state_free(s->state);
    free(s);
}

ms_container *metastep_optim_step(metastep_optim_state *s, const ms_container *w,
                                  const ms_container *dcdw, double lr, bool stop_gradients)
{
    if (!s) {
        ms__fail(MS_ERR_NULL_ARG, "metastep_optim_step: state is NULL");
        return NULL;
    }
    return s->opt->step(s->opt, s->state, w, dcdw, lr, stop_gradients);
}

static bool built_in(const metastep_optimizer *o)
{
    return o->step == gd_step || o->step == sgd_step || o->step == adam_step;
}

ms_container *metastep_optim_state_save(const metastep_optim_state *s)
{
    if (!s) {
        ms__fail(MS_ERR_NULL_ARG, "metastep_optim_state_save: state is NULL");
        return NULL;
    }
    if (!built_in(s->opt)) {
        ms__fail(MS_ERR_UNSUPPORTED, "metastep_optim_state_save: '%s' is not a built-in optimizer",
                 s->opt->name ? s->opt->name : "(unnamed)");
        return NULL;
    }
    ms_container *out = ms_container_new();
    const moments *m = s->state;
    if (!out || !m)
        return out;
    const ms_container *parts[2] = {m->m, m->v};
    const char *prefix[2] = {"m/", "v/"};
    char key[512];
    for (int p = 0; p < 2; p++)
        for (int i = 0; parts[p] && i < ms_container_size(parts[p]); i++) {
            snprintf(key, sizeof key, "%s%s", prefix[p], ms_container_key(parts[p], i));
            if (ms_container_set(out, key, ms_container_at(parts[p], i)) != MS_OK) {
                ms_container_release(out);
                return NULL;
            }
        }
    if (ms__container_adopt(out, "metastep_optim_state_save", "t", ms_scalar(MS_F64, m->t))) {
        ms_container_release(out);
        return NULL;
    }
    return out;
}

ms_status metastep_optim_state_restore(metastep_optim_state *s, const ms_container *saved)
{
    const char *fn = "metastep_optim_state_restore";
    if (!s || !saved)
        return ms__fail(MS_ERR_NULL_ARG, "%s: NULL argument", fn);
    if (!built_in(s->opt))
        return ms__fail(MS_ERR_UNSUPPORTED, "%s: '%s' is not a built-in optimizer", fn,
                        s->opt->name ? s->opt->name : "(unnamed)");
    moments *m = s->state;
    if (!m) /* gradient descent has no state */
        return MS_OK;
    if (!ms_container_has(saved, "t"))
        return ms__fail(MS_ERR_FORMAT, "%s: no step count 't' in the saved state", fn);
    ms_container *nm = ms_container_new(), *nv = ms_container_new();
    ms_status st = nm && nv ? MS_OK : ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    for (int i = 0; st == MS_OK && i < ms_container_size(saved); i++) {
        const char *key = ms_container_key(saved, i);
        if (strcmp(key, "t") == 0)
            continue;
        if (strncmp(key, "m/", 2) != 0 && strncmp(key, "v/", 2) != 0)
            st = ms__fail(MS_ERR_FORMAT, "%s: unexpected entry '%s'", fn, key);
        else
            st = ms_container_set(key[0] == 'm' ? nm : nv, key + 2, ms_container_at(saved, i));
    }
    /* ->data, not ms_tensor_item: the step count is the optimizer's own
     * bookkeeping (checkpointed MAML restores it inside a step), which a
     * compiled step's trace must not take for a callable's host read */
    const ms_tensor *tt = ms_container_get(saved, "t");
    double t = !tt || tt->numel != 1 ? NAN
               : tt->dtype == MS_F32 ? (double)*(const float *)tt->data : *(const double *)tt->data;
    if (st == MS_OK && (!(t >= 0) || t > 1e9))
        st = ms__fail(MS_ERR_FORMAT, "%s: step count %g is invalid", fn, t);
    if (st != MS_OK) {
        ms_container_release(nm);
        ms_container_release(nv);
        return st;
    }
    ms_container_release(m->m);
    ms_container_release(m->v);
    m->m = ms_container_size(nm) ? nm : (ms_container_release(nm), NULL);
    m->v = ms_container_size(nv) ? nv : (ms_container_release(nv), NULL);
    m->t = (int)t;
    return MS_OK;
}
