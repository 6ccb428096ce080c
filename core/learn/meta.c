/* The meta steps, following docs/semantics.md "The meta steps" (which
 * follows Ivy's ivy/functional/ivy/meta.py).
 *
 * Memory: every inner step and every task runs in a scope of its own.  What
 * must outlive a scope is carried in containers (which hold their own
 * references) or retained explicitly; in second-order mode the graph itself
 * keeps alive what the final gradient needs, and nothing else. */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "learn/learn.h"

typedef struct meta_cfg {
    const char *fn; /* public name, for messages */
    metastep_cost_fn inner_fn, outer_fn;
    int steps;
    double lr;
    const metastep_optimizer *opt;
    int order; /* 1: first order, 2: differentiate through the inner loop */
    bool avg;
    const char *const *inner_v, *const *outer_v;
    bool keep_inner, keep_outer;
    bool batched;
    int num_tasks;
    bool stop;
    void *user;
    int threads; /* > 1: unbatched tasks on the worker pool */
    const metastep_shard *shard; /* this process runs some tasks (shard.c) */
    /* second order, unbatched: differentiate each task's cost as soon as its
     * inner loop ends (the gradient of the mean is the mean of the
     * gradients), so only one task's graph is alive at a time */
    const ms_container *per_task_wrt;
    /* beyond Ivy (learned_lr.c, docs/variants.md); NULL: Ivy's behaviour */
    const ms_container *rates; /* the caller's learned inner rates */
    bool rates_per_step;
    const double *weights; /* step_weights */
} meta_cfg;

typedef struct task_out {
    ms_tensor *cost;     /* retained */
    ms_container *vars;  /* adapted variables */
    ms_container *grads; /* first order: the gradient contribution */
} task_out;

static void task_out_release(task_out *t)
{
    ms_release(t->cost);
    ms_container_release(t->vars);
    ms_container_release(t->grads);
    memset(t, 0, sizeof *t);
}

/* Replace *slot by v (both owned containers). */
static void swap_in(ms_container **slot, ms_container *v)
{
    ms_container_release(*slot);
    *slot = v;
}

/* Replace a retained tensor by another, retaining the new one. */
static void carry(ms_tensor **slot, ms_tensor *t)
{
    ms_retain(t);
    ms_release(*slot);
    *slot = t;
}

/* The variables a mask selects: all when mask is NULL, the chains when keep,
 * the rest otherwise. */
ms_container *ms__select_vars(const ms_container *vars, const char *const *mask, bool keep)
{
    if (!mask)
        return ms_container_copy(vars);
    return keep ? ms_container_at_key_chains(vars, mask) : ms_container_prune_key_chains(vars, mask);
}

/* Tensors to differentiate with respect to: those already in a graph stay
 * (so second order flows through them); constants become variables. */
ms_container *ms__as_variables(const ms_container *c)
{
    ms_container *out = ms_container_new();
    for (int i = 0; out && i < ms_container_size(c); i++) {
        ms_tensor *t = ms_container_at(c, i);
        const char *key = ms_container_key(c, i);
        ms_status st = ms_requires_grad(t) ? ms_container_set(out, key, t)
                                           : ms__container_adopt(out, "meta", key, ms_variable(t));
        if (st != MS_OK) {
            ms_container_release(out);
            return NULL;
        }
    }
    return out;
}

ms_status ms__check_cost(const char *fn, const ms_tensor *cost, const char *which, int step,
                         int task)
{
    if (!cost) {
        ms_status st = ms_last_error(NULL);
        return ms__fail(st == MS_OK ? MS_ERR_INVALID_ARG : st,
                        "%s: the %s cost function returned NULL (step %d, task %d)", fn, which,
                        step, task);
    }
    if (ms_tensor_numel(cost) != 1)
        return ms__fail(MS_ERR_INVALID_ARG,
                        "%s: the %s cost function returned %lld elements, not one (step %d, task %d)",
                        fn, which, (long long)ms_tensor_numel(cost), step, task);
    /* t->data, not ms_tensor_item: a compiled step's trace refuses host reads
     * by the callables, not the step's own checks */
    ms__tape_check(cost->data, 1, cost->dtype);
    double v = cost->dtype == MS_F32 ? (double)*(const float *)cost->data
                                     : *(const double *)cost->data;
    if (!isfinite(v))
        return ms__fail(MS_ERR_NUMERIC, "%s: the %s cost is %g at step %d of task %d", fn,
                        which, v, step, task);
    return MS_OK;
}

/* Index of t's first NaN or infinite element, or -1.  The data is eager host
 * memory, read in one pass; blocks of branch-free tests let the compiler
 * vectorise it (x - x is 0 unless x is NaN or infinite). */
#define SCAN_NONFINITE(T)                                                                    \
    do {                                                                                     \
        const T *x = (const T *)t->data;                                                     \
        for (int64_t i0 = 0; i0 < n; i0 += 256) {                                            \
            const int64_t len = n - i0 < 256 ? n - i0 : 256;                                 \
            int bad = 0;                                                                     \
            for (int64_t i = 0; i < len; i++)                                                \
                bad |= (x[i0 + i] - x[i0 + i]) != 0;                                         \
            for (int64_t i = 0; bad && i < len; i++)                                         \
                if (!isfinite(x[i0 + i]))                                                    \
                    return i0 + i;                                                           \
        }                                                                                    \
    } while (0)

static int64_t first_nonfinite(const ms_tensor *t)
{
    const int64_t n = ms_tensor_numel(t);
    if (ms_tensor_dtype(t) == MS_F32)
        SCAN_NONFINITE(float);
    else
        SCAN_NONFINITE(double);
    return -1;
}
#undef SCAN_NONFINITE

/* A gradient with a NaN or an infinity is refused, as a non-finite cost is.
 * Ivy replaces such entries by 0, which silently stops that variable from
 * learning and hides the bug that produced the value (the usual fix is in
 * the cost: sqrt(x + eps) rather than sqrt(x)).  task < 0: the gradient of
 * the mean over every task. */
ms_status ms__check_grads(const char *fn, const ms_container *g, const char *which, int step,
                          int task)
{
    for (int i = 0; g && i < ms_container_size(g); i++) {
        const ms_tensor *t = ms_container_at(g, i);
        ms__tape_check(t->data, t->numel, t->dtype);
        const int64_t at = first_nonfinite(t);
        if (at < 0)
            continue;
        const void *data = t->data;
        const double v = ms_tensor_dtype(t) == MS_F32 ? (double)((const float *)data)[at]
                                                      : ((const double *)data)[at];
        char where[64];
        if (task >= 0)
            snprintf(where, sizeof where, "at step %d of task %d", step, task);
        else
            snprintf(where, sizeof where, "after step %d (mean over the tasks)", step);
        return ms__fail(MS_ERR_NUMERIC,
                        "%s: the %s gradient for '%s' is %s (element %lld) %s; non-finite "
                        "gradients are refused, not zeroed: make the cost differentiable there "
                        "(e.g. sqrt(x + eps))",
                        fn, which, ms_container_key(g, i),
                        isnan(v) ? "NaN" : v > 0 ? "inf" : "-inf", (long long)at, where);
    }
    return MS_OK;
}

/* Gradient of cost with respect to wrt, times num_tasks when batched;
 * refused when not finite (which/step/task name it). */
static ms_status grads_of(const meta_cfg *c, ms_tensor *cost, const ms_container *wrt,
                          bool create_graph, ms_container **g, const char *which, int step,
                          int task)
{
    ms_status st = ms_grad(cost, wrt, create_graph, g);
    if (st == MS_OK && c->batched && c->num_tasks != 1)
        swap_in(g, ms_container_mul_scalar(*g, (double)c->num_tasks));
    if (st == MS_OK && !*g)
        st = ms_last_error(NULL);
    return st != MS_OK ? st : ms__check_grads(c->fn, *g, which, step, task);
}

/* Add g to the running sum of contributions (or make it the last one). */
static ms_status keep_contribution(task_out *o, ms_container *g, int *count, bool sum)
{
    (*count)++;
    if (!o->grads || !sum) {
        swap_in(&o->grads, g);
        return MS_OK;
    }
    ms_container *s = ms_container_add(o->grads, g);
    ms_container_release(g);
    if (!s)
        return ms_last_error(NULL);
    swap_in(&o->grads, s);
    return MS_OK;
}

static ms_container *same_keys(const ms_container *vars, const ms_container *like);

/* Learned rates, first order: g (a contribution at step `step`, holding the
 * gradient for every rate's variable) gains the rates' gradients; only the
 * keys of `keep` (NULL: all) stay of the variables' own. */
static ms_status add_rate_grads(const meta_cfg *c, const ms_container *rates,
                                ms_container *const *hist, int step, const ms_container *keep,
                                ms_container **g)
{
    double scale = c->batched && c->num_tasks != 1 ? 1.0 / c->num_tasks : 1.0;
    ms_container *rg = ms__llr_fo_grads(rates, c->rates_per_step, *g, hist, step, scale);
    ms_container *own = keep ? same_keys(*g, keep) : NULL;
    ms_container *all = rg ? ms_container_set_at_key_chains(own ? own : *g, rg) : NULL;
    ms_container_release(rg);
    ms_container_release(own);
    swap_in(g, all);
    return all ? MS_OK : ms_last_error(NULL);
}

/* The outer cost at vars; for first order also its gradient with respect to
 * the outer variables, kept when `keep` (with learned rates, theirs too,
 * from the inner gradients hist of the steps before; weighted by w with
 * step weights). */
static ms_status outer_cost(const meta_cfg *c, metastep_cost_fn fn, const ms_container *batch,
                            const ms_container *vars, bool keep, task_out *o, int *count,
                            ms_tensor **cost, int step, int task, const ms_container *rates,
                            ms_container *const *hist, double w)
{
    if (c->order == 2) {
        *cost = fn(batch, vars, c->user);
        return ms__check_cost(c->fn, *cost, c->outer_fn ? "outer" : "inner", step, task);
    }
    ms_container *sel = ms__select_vars(vars, c->outer_v, c->keep_outer), *outer_sel = NULL;
    if (sel && rates && keep && c->outer_v) { /* the rates' variables are differentiated too */
        ms_container *rv = same_keys(vars, rates);
        outer_sel = sel;
        sel = rv ? ms_container_set_at_key_chains(outer_sel, rv) : NULL;
        ms_container_release(rv);
    }
    ms_container *ov = sel ? ms__as_variables(sel) : NULL;
    ms_container_release(sel);
    ms_container *full = ov && c->outer_v ? ms_container_set_at_key_chains(vars, ov) : NULL;
    ms_status st = ov ? MS_OK : ms_last_error(NULL);
    if (st == MS_OK) {
        *cost = fn(batch, full ? full : ov, c->user);
        st = ms__check_cost(c->fn, *cost, c->outer_fn ? "outer" : "inner", step, task);
    }
    ms_container *g = NULL;
    if (st == MS_OK)
        st = grads_of(c, *cost, ov, false, &g, "outer", step, task);
    if (st == MS_OK && keep && rates)
        st = add_rate_grads(c, rates, hist, step, outer_sel, &g);
    if (st == MS_OK && keep && c->weights) {
        swap_in(&g, ms_container_mul_scalar(g, w));
        st = g ? MS_OK : ms_last_error(NULL);
    }
    if (st == MS_OK && keep)
        st = keep_contribution(o, g, count, c->avg || c->weights);
    else
        ms_container_release(g);
    ms_container_release(outer_sel);
    ms_container_release(full);
    ms_container_release(ov);
    return st;
}

/* One task's inner loop (or the whole batch's, when batched); rates: the
 * learned inner rates to use (variables of the graph for second order), or
 * NULL for the scalar rate. */
static ms_status train_task(const meta_cfg *c, const ms_container *inner_batch,
                            const ms_container *outer_batch, const ms_container *variables,
                            const ms_container *rates, int task, task_out *o)
{
    memset(o, 0, sizeof *o);
    const metastep_optimizer *opt = c->opt;
    void *state = opt->state_new ? opt->state_new(opt) : NULL;
    if (opt->state_new && !state)
        return ms_last_error(NULL);
    bool unique_inner = c->inner_v != NULL, unique_outer = c->outer_v != NULL;
    bool inner_is_outer = !c->outer_fn && !unique_inner && !unique_outer;
    metastep_cost_fn ofn = c->outer_fn ? c->outer_fn : c->inner_fn;
    ms_container *vars = ms_container_copy(variables);
    ms_tensor *total = NULL;
    int count = 0;
    ms_status st = vars ? MS_OK : ms_last_error(NULL);
    /* learned rates, first order: every step's inner gradient */
    ms_container **hist = NULL;
    if (st == MS_OK && rates && c->order == 1 &&
        !(hist = calloc((size_t)c->steps + 1, sizeof *hist)))
        st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", c->fn);
    for (int i = 0; st == MS_OK && i < c->steps; i++) {
        /* with step weights, step i's cost counts only when weighted */
        const bool msl = c->weights && c->weights[i] != 0;
        ms_scope_push();
        ms_container *sel = ms__select_vars(vars, c->inner_v, c->keep_inner);
        ms_container *iv = sel ? ms__as_variables(sel) : NULL;
        ms_container_release(sel);
        ms_container *full = iv && unique_inner ? ms_container_set_at_key_chains(vars, iv) : NULL;
        ms_tensor *cost = NULL;
        ms_container *g = NULL, *next = NULL;
        st = iv && (full || !unique_inner) ? MS_OK : ms_last_error(NULL);
        if (st == MS_OK) {
            cost = c->inner_fn(inner_batch, full ? full : iv, c->user);
            st = ms__check_cost(c->fn, cost, "inner", i, task);
        }
        if (st == MS_OK)
            st = grads_of(c, cost, iv, c->order == 2, &g, "inner", i, task);
        if (st == MS_OK) {
            if (inner_is_outer) {
                if (c->order == 1 && (rates || c->weights) && (c->avg || msl)) {
                    ms_container *contrib = ms_container_copy(g);
                    if (rates)
                        st = add_rate_grads(c, rates, hist, i, NULL, &contrib);
                    if (st == MS_OK && c->weights)
                        swap_in(&contrib, ms_container_mul_scalar(contrib, c->weights[i]));
                    st = st == MS_OK && contrib ? keep_contribution(o, contrib, &count, true)
                                                : st != MS_OK ? st : ms_last_error(NULL);
                    if (st != MS_OK)
                        ms_container_release(contrib);
                } else if (c->order == 1 && !c->weights) {
                    /* the update direction is also the contribution */
                    st = keep_contribution(o, ms_container_copy(g), &count, c->avg);
                }
            } else if (c->avg || msl) {
                /* Ivy computes this step's outer cost (and, first order, its
                 * gradient) at every step, but uses them only when averaging
                 * across steps: otherwise they are skipped */
                st = outer_cost(c, ofn, outer_batch, vars, true, o, &count, &cost, i, task, rates,
                                hist, c->weights ? c->weights[i] : 1);
            }
        }
        if (st == MS_OK && c->avg)
            carry(&total, total ? ms_add(total, cost) : cost);
        if (st == MS_OK && msl) {
            ms_tensor *wc = ms_mul_scalar(cost, c->weights[i]);
            carry(&total, total ? ms_add(total, wc) : wc);
        }
        if (st == MS_OK && hist && !(hist[i] = ms_container_copy(g)))
            st = ms_last_error(NULL);
        if (st == MS_OK) {
            ms_container *upd = rates ? ms__llr_update(rates, c->rates_per_step, i, iv, g, c->stop)
                                      : opt->step(opt, state, iv, g, c->lr, c->stop);
            next = upd && unique_inner ? ms_container_set_at_key_chains(vars, upd) : upd;
            if (upd && unique_inner)
                ms_container_release(upd);
            st = next ? MS_OK : ms_last_error(NULL);
        }
        if (st == MS_OK)
            swap_in(&vars, next);
        ms_container_release(g);
        ms_container_release(full);
        ms_container_release(iv);
        ms_scope_pop();
    }
    ms_tensor *final = NULL;
    if (st == MS_OK) {
        ms_scope_push();
        st = outer_cost(c, ofn, outer_batch, vars, true, o, &count, &final, c->steps, task, rates,
                        hist, c->weights ? c->weights[c->steps] : 1);
        if (st == MS_OK && c->avg) {
            ms_tensor *sum = total ? ms_add(total, final) : final;
            carry(&o->cost, ms_div_scalar(sum, (double)(c->steps + 1)));
            if (c->order == 1 && count > 1)
                swap_in(&o->grads, ms_container_div_scalar(o->grads, (double)count));
        } else if (st == MS_OK && c->weights) {
            ms_tensor *wf = ms_mul_scalar(final, c->weights[c->steps]);
            carry(&o->cost, total ? ms_add(total, wf) : wf);
        } else if (st == MS_OK) {
            carry(&o->cost, final);
        }
        if (st == MS_OK && c->stop)
            swap_in(&vars, ms_container_stop_gradient(vars));
        if (st == MS_OK && !c->batched)
            swap_in(&vars, ms_container_expand_dims(vars, 0));
        if (st == MS_OK && (!vars || !o->cost || (c->order == 1 && !o->grads)))
            st = ms_last_error(NULL) != MS_OK ? ms_last_error(NULL) : MS_ERR_INTERNAL;
        ms_scope_pop();
    }
    ms_release(total);
    for (int i = 0; hist && i <= c->steps; i++)
        ms_container_release(hist[i]);
    free(hist);
    if (opt->state_free)
        opt->state_free(state);
    o->vars = vars;
    if (st != MS_OK)
        task_out_release(o);
    return st;
}

/* The adapted variables to return: all, or each leaf's first entry. */
static ms_container *returned_inner(const meta_cfg *c, metastep_return_inner which,
                                    ms_container *vars)
{
    if (which == METASTEP_RETURN_INNER_NONE || !vars)
        return NULL;
    ms_container *v = c->stop ? ms_container_copy(vars) : ms_container_stop_gradient(vars);
    if (which == METASTEP_RETURN_INNER_ALL || !v)
        return v;
    ms_container *first = ms_container_new();
    for (int i = 0; first && i < ms_container_size(v); i++)
        if (ms__container_adopt(first, c->fn, ms_container_key(v, i),
                                ms_slice(ms_container_at(v, i), 0, 0, 1)) != MS_OK) {
            ms_container_release(first);
            first = NULL;
        }
    ms_container_release(v);
    return first;
}

ms_container *ms__apply_batch_fn(metastep_batch_fn fn, const ms_container *b, void *user,
                                 const char *name)
{
    if (!fn)
        return ms_container_copy(b);
    ms_container *r = fn(b, user);
    if (!r)
        ms__fail(MS_ERR_INVALID_ARG, "%s: the batch function returned NULL", name);
    return r;
}

/* ---- unbatched: each task on its own (on a worker thread when threads > 1),
 * the results combined in task order ---- */

typedef struct task_slot {
    ms_status st;
    char *msg;   /* the failing task's message (malloc'ed) */
    task_out o;
} task_slot;

typedef struct unbatched {
    const meta_cfg *c;
    ms_container **subs;
    const ms_container *variables;
    const ms_container *rates; /* learned inner rates, or NULL */
    metastep_batch_fn inner_bfn, outer_bfn;
    metastep_return_inner ret;
    /* parallel runs */
    bool private_vars;   /* give each task stand-ins for the variables that need a gradient */
    task_slot *slots;
    atomic_int first_failed; /* the lowest failing task index so far (n: none) */
    /* the running combination */
    ms_tensor *total;
    ms_container *gsum, **adapted;
    int nadapted;
} unbatched;

/* vars with every tensor that requires a gradient replaced by a private
 * leaf copy (same values).  ms_grad marks the tensors it walks (visit,
 * pending, gacc), so tasks running at once must not share one that a walk
 * can reach; a leaf copy cuts the graph there.  Used only when the results
 * are detached anyway (stop_gradients), so losing the path back to the
 * caller's variables changes nothing that is returned. */
static ms_container *stand_ins(const ms_container *vars)
{
    ms_container *out = ms_container_new();
    for (int i = 0; out && i < ms_container_size(vars); i++) {
        ms_tensor *t = ms_container_at(vars, i);
        const char *key = ms_container_key(vars, i);
        ms_status st = ms_requires_grad(t)
                           ? ms__container_adopt(out, "meta", key, ms_variable(t))
                           : ms_container_set(out, key, t);
        if (st != MS_OK) {
            ms_container_release(out);
            return NULL;
        }
    }
    return out;
}

/* The tensors of vars at the keys of like. */
static ms_container *same_keys(const ms_container *vars, const ms_container *like)
{
    ms_container *out = ms_container_new();
    for (int i = 0; out && i < ms_container_size(like); i++) {
        const char *key = ms_container_key(like, i);
        ms_tensor *t = ms_container_get(vars, key);
        if (!t || ms_container_set(out, key, t) != MS_OK) {
            ms_container_release(out);
            return NULL;
        }
    }
    return out;
}

/* Task t from its sub-batch to its cost, gradient contribution and adapted
 * variables (in o, which outlives the task's scope). */
static ms_status run_task(const unbatched *u, int t, task_out *o)
{
    const meta_cfg *c = u->c;
    memset(o, 0, sizeof *o);
    ms_scope_push();
    const ms_container *vars = u->variables, *wrt = c->per_task_wrt, *rates = u->rates;
    ms_container *priv = NULL, *priv_wrt = NULL, *priv_rates = NULL;
    ms_status st = MS_OK;
    if (u->private_vars) {
        priv = stand_ins(u->variables);
        if (rates && !(priv_rates = stand_ins(rates)))
            st = ms_last_error(NULL);
        priv_wrt = priv && wrt ? (rates ? ms__llr_same_keys(priv, priv_rates, wrt)
                                        : same_keys(priv, wrt)) : NULL;
        if (!priv || (wrt && !priv_wrt))
            st = ms_last_error(NULL) != MS_OK ? ms_last_error(NULL) : MS_ERR_INTERNAL;
        vars = priv;
        wrt = wrt ? priv_wrt : NULL;
        rates = rates ? priv_rates : NULL;
    }
    ms_container *ib = st == MS_OK ? ms__apply_batch_fn(u->inner_bfn, u->subs[t], c->user, c->fn) : NULL;
    ms_container *ob = ib ? ms__apply_batch_fn(u->outer_bfn, u->subs[t], c->user, c->fn) : NULL;
    if (st == MS_OK)
        st = ob ? train_task(c, ib, ob, vars, rates, t, o) : ms_last_error(NULL);
    if (st == MS_OK && wrt) {
        swap_in(&o->grads, NULL);
        st = ms_grad(o->cost, wrt, false, &o->grads);
        if (st == MS_OK)
            st = ms__check_grads(c->fn, o->grads, "outer", c->steps, t);
        carry(&o->cost, ms_stop_gradient(o->cost));
        swap_in(&o->vars, ms_container_stop_gradient(o->vars));
        if (st == MS_OK && (!o->cost || !o->vars))
            st = ms_last_error(NULL) != MS_OK ? ms_last_error(NULL) : MS_ERR_INTERNAL;
    }
    if (st != MS_OK)
        task_out_release(o);
    ms_container_release(ib);
    ms_container_release(ob);
    ms_container_release(priv_wrt);
    ms_container_release(priv_rates);
    ms_container_release(priv);
    ms_scope_pop();
    return st;
}

/* Add task t's results to the running sums; takes o's adapted variables
 * when they are returned. */
static ms_status combine(unbatched *u, int t, task_out *o)
{
    const meta_cfg *c = u->c;
    ms_scope_push();
    carry(&u->total, u->total ? ms_add(u->total, o->cost) : o->cost);
    ms_status st = u->total ? MS_OK : ms_last_error(NULL);
    if (st == MS_OK && (c->order == 1 || c->per_task_wrt)) {
        ms_container *s = u->gsum ? ms_container_add(u->gsum, o->grads) : ms_container_copy(o->grads);
        st = s ? MS_OK : ms_last_error(NULL);
        swap_in(&u->gsum, s);
    }
    if (st == MS_OK &&
        (u->ret == METASTEP_RETURN_INNER_ALL || (u->ret == METASTEP_RETURN_INNER_FIRST && t == 0))) {
        u->adapted[u->nadapted++] = o->vars;
        o->vars = NULL;
    }
    ms_scope_pop();
    return st;
}

static void task_on_worker(void *ctx, int t)
{
    unbatched *u = ctx;
    task_slot *s = &u->slots[t];
    if (t > atomic_load_explicit(&u->first_failed, memory_order_relaxed))
        return; /* a task before it failed: its result is never used */
    ms_clear_error(); /* each task's first error is its own */
    s->st = run_task(u, t, &s->o);
    if (s->st == MS_OK)
        return;
    const char *msg = NULL;
    ms_last_error(&msg);
    s->msg = strdup(msg && *msg ? msg : ms_status_string(s->st));
    int f = atomic_load(&u->first_failed);
    while (t < f && !atomic_compare_exchange_weak(&u->first_failed, &f, t))
        ;
}

/* ---- sharded (metastep_options.shard): this process's tasks into records
 * (shard.c), the exchange, then every task's record combined in task order
 * as above, on every process ---- */

typedef struct shard_run {
    unbatched *u;
    int first;
} shard_run;

static void shard_task_on_worker(void *ctx, int i)
{
    shard_run *r = ctx;
    task_on_worker(r->u, r->first + i);
}

static ms_status run_shard(unbatched *u, bool parallel)
{
    const meta_cfg *c = u->c;
    const metastep_shard *sh = c->shard;
    const int n = c->num_tasks, lo = sh->first, hi = sh->first + sh->count;
    ms__shard_layout l;
    ms_container *like = ms__select_vars(u->variables, c->outer_v, c->keep_outer);
    ms_status st = like ? ms__shard_layout_init(&l, like, u->ret != METASTEP_RETURN_INNER_NONE
                                                              ? u->variables : NULL)
                        : ms_last_error(NULL);
    ms_container_release(like);
    if (st != MS_OK)
        return st;
    char *recs = calloc((size_t)n, l.bytes);
    if (!recs)
        st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", c->fn);
    /* the local tasks' errors travel in their records: keep the caller's
     * pending error aside meanwhile */
    const char *m = NULL;
    ms_status before = ms_last_error(&m);
    char *saved = before != MS_OK ? strdup(m) : NULL;
    if (st == MS_OK && parallel && hi - lo > 1) {
        if (!(u->slots = calloc((size_t)n, sizeof *u->slots)))
            st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", c->fn);
        if (st == MS_OK) {
            atomic_init(&u->first_failed, n);
            shard_run r = {u, lo};
            ms__pool_run(c->threads, hi - lo, shard_task_on_worker, &r);
            for (int t = lo; t < hi; t++) {
                task_slot *s = &u->slots[t];
                bool skipped = t > atomic_load(&u->first_failed);
                ms__shard_pack(&l, c->fn, t, skipped ? MS_ERR_INTERNAL : s->st,
                               skipped ? "not run: an earlier task failed" : s->msg, s->o.cost,
                               s->o.grads, s->o.vars, recs + (size_t)t * l.bytes);
                task_out_release(&s->o);
                free(s->msg);
            }
        }
        free(u->slots);
        u->slots = NULL;
    } else if (st == MS_OK) {
        ms_status failed = MS_OK;
        for (int t = lo; t < hi; t++) {
            task_out o = {0};
            ms_status ts = failed != MS_OK ? MS_ERR_INTERNAL : run_task(u, t, &o);
            const char *msg = "not run: an earlier task failed";
            if (failed == MS_OK && ts != MS_OK)
                ms_last_error(&msg);
            ms__shard_pack(&l, c->fn, t, ts, msg, o.cost, o.grads, o.vars,
                           recs + (size_t)t * l.bytes);
            task_out_release(&o);
            if (ts != MS_OK)
                failed = ts;
            ms_clear_error();
        }
    }
    if (st == MS_OK) {
        ms_clear_error();
        if (before != MS_OK)
            ms__fail(before, "%s", saved ? saved : ms_status_string(before));
    }
    free(saved);
    /* every process exchanges, whatever its tasks gave: the others wait for it */
    if (st == MS_OK)
        st = sh->exchange(sh->ctx, recs, l.bytes, n, lo, sh->count);
    for (int t = 0; st == MS_OK && t < n; t++) {
        task_out o = {0};
        st = ms__shard_unpack(&l, c->fn, recs + (size_t)t * l.bytes, &o.cost, &o.grads, &o.vars);
        if (st == MS_OK)
            st = combine(u, t, &o);
        task_out_release(&o);
    }
    free(recs);
    ms__shard_layout_free(&l);
    return st;
}

static ms_status run_unbatched(unbatched *u, ms_tensor **cost, ms_container **grads,
                               ms_container **inner_v)
{
    const meta_cfg *c = u->c;
    const int n = c->num_tasks;
    ms_status st = MS_OK;
    if (!(u->adapted = calloc((size_t)n, sizeof *u->adapted)))
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory", c->fn);
    /* With stop_gradients off the results keep their graph back to the
     * caller's variables.  When those require a gradient (always, for
     * second order: the outer variables), every task's graph reaches the
     * same tensors and concurrent ms_grad walks would mark them at once; so
     * then the tasks run here, one after another. */
    bool shared = false;
    for (int i = 0; i < ms_container_size(u->variables); i++)
        shared |= ms_requires_grad(ms_container_at(u->variables, i));
    bool parallel = c->threads > 1 && n > 1 &&
                    (c->order == 2 ? c->per_task_wrt != NULL : c->stop || !shared);
    if (c->shard) {
        u->private_vars = shared;
        st = run_shard(u, parallel);
    } else if (!parallel) {
        /* one task at a time: only one task's graph is alive at once */
        for (int t = 0; st == MS_OK && t < n; t++) {
            task_out o;
            st = run_task(u, t, &o);
            if (st == MS_OK)
                st = combine(u, t, &o);
            task_out_release(&o);
        }
    } else {
        u->private_vars = shared;
        if (!(u->slots = calloc((size_t)n, sizeof *u->slots)))
            st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", c->fn);
        if (st == MS_OK) {
            /* the caller runs tasks too: keep its own pending error aside */
            const char *m = NULL;
            ms_status before = ms_last_error(&m);
            char *saved = before != MS_OK ? strdup(m) : NULL;
            atomic_init(&u->first_failed, n);
            ms__pool_run(c->threads, n, task_on_worker, u);
            ms_clear_error();
            if (before != MS_OK)
                ms__fail(before, "%s", saved ? saved : ms_status_string(before));
            free(saved);
        }
        for (int t = 0; st == MS_OK && t < n; t++) {
            task_slot *s = &u->slots[t];
            st = s->st != MS_OK ? ms__fail(s->st, "%s", s->msg ? s->msg : ms_status_string(s->st))
                                : combine(u, t, &s->o);
        }
        for (int t = 0; u->slots && t < n; t++) {
            task_out_release(&u->slots[t].o);
            free(u->slots[t].msg);
        }
        free(u->slots);
    }
    if (st == MS_OK) {
        *cost = ms_retain(ms_div_scalar(u->total, (double)n));
        if (c->order == 1 || c->per_task_wrt)
            *grads = ms_container_div_scalar(u->gsum, (double)n);
        if (u->nadapted) {
            ms_container *all = ms_container_concat(u->nadapted, u->adapted, 0);
            *inner_v = c->stop ? all : ms_container_stop_gradient(all);
            if (!c->stop)
                ms_container_release(all);
        }
        if (!*cost || ((c->order == 1 || c->per_task_wrt) && !*grads) ||
            (u->nadapted && !*inner_v))
            st = ms_last_error(NULL) != MS_OK ? ms_last_error(NULL) : MS_ERR_INTERNAL;
    }
    for (int i = 0; i < u->nadapted; i++)
        ms_container_release(u->adapted[i]);
    free(u->adapted);
    ms_release(u->total);
    ms_container_release(u->gsum);
    return st;
}

/* Every task: cost, first-order gradient and adapted variables, combined as
 * Ivy's _train_tasks does. */
static ms_status train_tasks(const meta_cfg *c, const ms_container *batch,
                             const ms_container *variables, const ms_container *rates,
                             metastep_batch_fn inner_bfn,
                             metastep_batch_fn outer_bfn, metastep_return_inner ret,
                             ms_tensor **cost, ms_container **grads, ms_container **inner_v)
{
    *cost = NULL;
    *grads = NULL;
    *inner_v = NULL;
    if (c->batched) {
        ms_container *ib = ms__apply_batch_fn(inner_bfn, batch, c->user, c->fn);
        ms_container *ob = ib ? ms__apply_batch_fn(outer_bfn, batch, c->user, c->fn) : NULL;
        task_out o;
        ms_status st = ob ? train_task(c, ib, ob, variables, rates, 0, &o) : ms_last_error(NULL);
        ms_container_release(ib);
        ms_container_release(ob);
        if (st != MS_OK)
            return st;
        *cost = ms_retain(o.cost);
        if (c->order == 1) {
            *grads = rates ? ms__llr_reduce_tasks(o.grads, true) : ms_container_mean(o.grads, 0);
            if (!*grads)
                st = ms_last_error(NULL);
        }
        *inner_v = returned_inner(c, ret, o.vars);
        task_out_release(&o);
        return st;
    }
    int n = 0;
    ms_container **subs = NULL;
    ms_status st = ms_container_unstack(batch, true, &n, &subs);
    unbatched u = {.c = c, .subs = subs, .variables = variables, .rates = rates,
                   .inner_bfn = inner_bfn,
                   .outer_bfn = outer_bfn, .ret = ret};
    if (st == MS_OK)
        st = run_unbatched(&u, cost, grads, inner_v);
    for (int i = 0; i < n; i++)
        ms_container_release(subs[i]);
    free(subs);
    return st;
}

/* Validate the common arguments and work out num_tasks. */
static ms_status validate(meta_cfg *c, const ms_container *batch, const ms_container *variables,
                          metastep_result *out)
{
    ms_status st;
    if (!out)
        return ms__fail(MS_ERR_NULL_ARG, "%s: out is NULL", c->fn);
    memset(out, 0, sizeof *out);
    if (!batch || !variables || !c->inner_fn)
        return ms__fail(MS_ERR_NULL_ARG, "%s: %s is NULL", c->fn,
                        !batch ? "batch" : !variables ? "variables" : "the cost function");
    if (c->steps < 0)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: inner_grad_steps is %d; it must be >= 0", c->fn,
                        c->steps);
    if (!isfinite(c->lr))
        return ms__fail(MS_ERR_INVALID_ARG, "%s: inner_learning_rate %g is not finite", c->fn,
                        c->lr);
    if (ms_container_size(variables) == 0)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: variables is empty", c->fn);
    int64_t lead = -1;
    for (int i = 0; i < ms_container_size(batch); i++) {
        const ms_tensor *t = ms_container_at(batch, i);
        if (ms_tensor_ndim(t) == 0)
            return ms__fail(MS_ERR_SHAPE, "%s: batch leaf '%s' is 0-d; leaves need a leading "
                            "task dimension", c->fn, ms_container_key(batch, i));
        int64_t d = ms_tensor_shape(t)[0];
        if (lead >= 0 && d != lead)
            return ms__fail(MS_ERR_SHAPE, "%s: batch leaves have different leading dimensions "
                            "(%lld for '%s', %lld before)", c->fn, (long long)d,
                            ms_container_key(batch, i), (long long)lead);
        lead = d;
    }
    if (lead < 0)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: batch is empty", c->fn);
    if (c->num_tasks < 0 || c->num_tasks > lead)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: num_tasks %d is outside [1, %lld] (the batch's "
                        "leading dimension)", c->fn, c->num_tasks, (long long)lead);
    if (c->threads < 0)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: threads is %d; it must be >= 0", c->fn,
                        c->threads);
    if (c->num_tasks == 0)
        c->num_tasks = (int)lead;
    if (c->num_tasks == 0)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: the batch holds no tasks", c->fn);
    if (c->shard && (st = ms__shard_validate(c->fn, c->shard, c->num_tasks, c->batched,
                                              c->stop)) != MS_OK)
        return st;
    if (c->shard && (c->rates || c->weights))
        return ms__fail(MS_ERR_INVALID_ARG,
                        "%s: a shard cannot be combined with learned inner learning rates or "
                        "step weights",
                        c->fn);
    /* a mask naming no variable is an error now, not at step 3 */
    const char *const *masks[2] = {c->inner_v, c->outer_v};
    for (int m = 0; m < 2; m++) {
        for (int k = 0; masks[m] && masks[m][k]; k++) {
            const char *one[2] = {masks[m][k], NULL};
            ms_container *sel = ms_container_at_key_chains(variables, one);
            if (!sel)
                return ms__fail(MS_ERR_KEY, "%s: %s names '%s', which is not a variable", c->fn,
                                m ? "outer_v" : "inner_v", masks[m][k]);
            ms_container_release(sel);
        }
    }
    if (!c->opt)
        c->opt = &metastep_gradient_descent;
    if (!c->opt->step)
        return ms__fail(MS_ERR_NULL_ARG, "%s: the inner optimizer's step is NULL", c->fn);
    return MS_OK;
}

static ms_status finish(const meta_cfg *c, ms_status st, ms_tensor *cost, ms_container *grads,
                        ms_container *inner_v, metastep_result *out)
{
    if (st == MS_OK && c->stop) {
        ms_tensor *d = ms_stop_gradient(cost);
        ms_retain(d);
        ms_release(cost);
        cost = d;
        st = cost ? MS_OK : ms_last_error(NULL);
    }
    if (st != MS_OK) {
        ms_release(cost);
        ms_container_release(grads);
        ms_container_release(inner_v);
        return st;
    }
    out->cost = cost;
    out->grads = grads;
    out->inner_v = inner_v;
    return MS_OK;
}

static ms_status first_order(meta_cfg *c, const ms_container *batch,
                             const ms_container *variables, const metastep_options *o,
                             metastep_result *out)
{
    ms_status st = validate(c, batch, variables, out);
    if (st == MS_OK)
        st = ms__llr_validate(c->fn, o, variables, c->steps, c->opt, c->batched);
    if (st != MS_OK)
        return st;
    ms_scope_push();
    ms_tensor *cost;
    ms_container *grads, *inner_v;
    st = train_tasks(c, batch, variables, c->rates, o->inner_batch_fn, o->outer_batch_fn,
                     o->return_inner_v, &cost, &grads, &inner_v);
    st = finish(c, st, cost, grads, inner_v, out);
    ms_scope_pop();
    return st;
}

static meta_cfg make_cfg(const char *fn, metastep_cost_fn inner, metastep_cost_fn outer,
                         int steps, double lr, const metastep_options *o, int order)
{
    return (meta_cfg){.fn = fn, .inner_fn = inner, .outer_fn = outer, .steps = steps, .lr = lr,
                      .opt = o->inner_optimization_step, .order = order,
                      .avg = o->average_across_steps, .inner_v = o->inner_v,
                      .outer_v = o->outer_v, .keep_inner = o->keep_inner_v,
                      .keep_outer = o->keep_outer_v, .batched = o->batched,
                      .num_tasks = o->num_tasks, .stop = o->stop_gradients, .user = o->user,
                      .threads = o->threads, .rates = o->inner_learning_rates,
                      .rates_per_step = o->inner_lr_per_step, .weights = o->step_weights,
                      .shard = o->shard};
}

ms_status metastep_fomaml_step(const ms_container *batch, metastep_cost_fn inner_cost_fn,
                               metastep_cost_fn outer_cost_fn, const ms_container *variables,
                               int inner_grad_steps, double inner_learning_rate,
                               const metastep_options *opts, metastep_result *out)
{
    metastep_options o = opts ? *opts : METASTEP_OPTIONS_DEFAULT;
    meta_cfg c = make_cfg("metastep_fomaml_step", inner_cost_fn, outer_cost_fn,
                          inner_grad_steps, inner_learning_rate, &o, 1);
    return first_order(&c, batch, variables, &o, out);
}

ms_status metastep_reptile_step(const ms_container *batch, metastep_cost_fn cost_fn,
                                const ms_container *variables, int inner_grad_steps,
                                double inner_learning_rate, const metastep_reptile_options *opts,
                                metastep_result *out)
{
    metastep_reptile_options r = opts ? *opts : METASTEP_REPTILE_OPTIONS_DEFAULT;
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.inner_optimization_step = r.inner_optimization_step;
    o.batched = r.batched;
    o.return_inner_v = r.return_inner_v;
    o.num_tasks = r.num_tasks;
    o.stop_gradients = r.stop_gradients;
    o.user = r.user;
    o.threads = r.threads;
    o.shard = r.shard;
    o.average_across_steps = true;
    meta_cfg c = make_cfg("metastep_reptile_step", cost_fn, NULL, inner_grad_steps,
                          inner_learning_rate, &o, 1);
    if (out && inner_learning_rate == 0) {
        memset(out, 0, sizeof *out);
        return ms__fail(MS_ERR_INVALID_ARG, "%s: inner_learning_rate is 0; Reptile divides by it",
                        c.fn);
    }
    ms_status st = first_order(&c, batch, variables, &o, out);
    if (st == MS_OK) {
        ms_container *g = ms_container_div_scalar(out->grads, inner_learning_rate);
        if (!g) {
            st = ms_last_error(NULL);
            metastep_result_release(out);
        } else {
            swap_in(&out->grads, g);
        }
    }
    return st;
}

ms_status metastep_maml_step(const ms_container *batch, metastep_cost_fn inner_cost_fn,
                             metastep_cost_fn outer_cost_fn, const ms_container *variables,
                             int inner_grad_steps, double inner_learning_rate,
                             const metastep_options *opts, metastep_result *out)
{
    metastep_options o = opts ? *opts : METASTEP_OPTIONS_DEFAULT;
    meta_cfg c = make_cfg("metastep_maml_step", inner_cost_fn, outer_cost_fn, inner_grad_steps,
                          inner_learning_rate, &o, 2);
    ms_status st = validate(&c, batch, variables, out);
    if (st == MS_OK)
        st = ms__llr_validate(c.fn, &o, variables, c.steps, c.opt, c.batched);
    if (st != MS_OK)
        return st;
    if ((o.checkpoint_every != 0 || o.checkpoint_budget_mib != 0) &&
        (o.inner_learning_rates || o.step_weights || o.shard)) {
        memset(out, 0, sizeof *out);
        return ms__fail(MS_ERR_INVALID_ARG,
                        "%s: checkpointing (checkpoint_every, checkpoint_budget_mib) does not "
                        "support learned inner learning rates, step weights or a shard",
                        c.fn);
    }
    if (o.checkpoint_every != 0 || o.checkpoint_budget_mib != 0) /* checkpointed.c */
        return ms__maml_checkpointed(c.fn, batch, inner_cost_fn, outer_cost_fn, variables,
                                     inner_grad_steps, inner_learning_rate, &o, c.opt,
                                     c.num_tasks, out);
    bool stop = c.stop;
    c.stop = false; /* the inner procedure stays differentiable */
    ms_scope_push();
    ms_container *sel = ms__select_vars(variables, c.outer_v, c.keep_outer);
    ms_container *ov = ms_container_new();
    st = sel && ov ? MS_OK : ms_last_error(NULL);
    for (int i = 0; st == MS_OK && i < ms_container_size(sel); i++)
        st = ms__container_adopt(ov, c.fn, ms_container_key(sel, i),
                                 ms_variable(ms_container_at(sel, i)));
    ms_container *vars = st == MS_OK && c.outer_v ? ms_container_set_at_key_chains(variables, ov)
                                                  : NULL;
    if (st == MS_OK && c.outer_v && !vars)
        st = ms_last_error(NULL);
    /* learned rates: leaves of the graph, differentiated with the variables */
    ms_container *rates = NULL, *wrt = NULL;
    if (st == MS_OK && c.rates) {
        rates = ms__llr_leaves(c.rates);
        wrt = rates ? ms__llr_join(ov, rates) : NULL;
        st = wrt ? MS_OK : ms_last_error(NULL);
    }
    ms_tensor *cost = NULL;
    ms_container *grads = NULL, *inner_v = NULL;
    /* The returned cost keeps its graph when stop_gradients is off, so only
     * then is the whole procedure differentiated at once. */
    if (!c.batched && stop)
        c.per_task_wrt = wrt ? wrt : ov;
    if (st == MS_OK)
        st = train_tasks(&c, batch, vars ? vars : ov, rates, o.inner_batch_fn, o.outer_batch_fn,
                         o.return_inner_v, &cost, &grads, &inner_v);
    if (st == MS_OK && !c.per_task_wrt) {
        st = ms_grad(cost, wrt ? wrt : ov, false, &grads);
        if (st == MS_OK)
            st = ms__check_grads(c.fn, grads, "outer", c.steps, c.batched ? 0 : -1);
    }
    if (st == MS_OK && c.batched) {
        swap_in(&grads, rates ? ms__llr_reduce_tasks(grads, false) : ms_container_sum(grads, 0));
        st = grads ? MS_OK : ms_last_error(NULL);
    }
    c.stop = stop;
    if (st == MS_OK && inner_v && stop)
        swap_in(&inner_v, ms_container_stop_gradient(inner_v));
    st = finish(&c, st, cost, grads, inner_v, out);
    ms_container_release(wrt);
    ms_container_release(rates);
    ms_container_release(vars);
    ms_container_release(ov);
    ms_container_release(sel);
    ms_scope_pop();
    return st;
}

void metastep_result_release(metastep_result *r)
{
    if (!r)
        return;
    ms_release(r->cost);
    ms_container_release(r->grads);
    ms_container_release(r->inner_v);
    memset(r, 0, sizeof *r);
}
