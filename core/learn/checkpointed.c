/* Checkpointed second-order MAML: metastep_maml_step with
 * metastep_options.checkpoint_every != 0 (docs/long-inner-loops.md).
 *
 * The un-checkpointed step keeps the graph of all k inner steps alive until
 * it differentiates the outer cost, so its memory grows like k.  Here, per
 * task (or for the whole batch, batched):
 *
 *   forward   the inner loop runs with a one-step graph only (the inner
 *             gradient is taken without create_graph and the update is
 *             detached), storing at steps N, 2N, ... the adapted variables
 *             and the inner optimizer's state (momentum buffers, Adam
 *             moments and step count): ceil(k/N) - 1 checkpoints;
 *   backward  the segments are taken from the last to the first.  Segment
 *             [a, b) restarts from its checkpoint, with the stored
 *             variables and optimizer state made leaves that require a
 *             gradient, and replays its steps with the full second-order
 *             graph.  Its scalar is
 *                 J = (the outer costs of its steps, / (k + 1), when
 *                      average_across_steps; the final cost in the last
 *                      segment)
 *                   + sum over the adapted variables and the state at b of
 *                     <adjoint at b, value at b>
 *             whose gradient with respect to the segment's leaves is the
 *             adjoint at a (a vector-Jacobian product through the segment),
 *             and with respect to the outer variables that do not adapt,
 *             their share of the gradient from this segment (they enter
 *             every step).  The first segment starts from the outer
 *             variables themselves, so its gradient there completes the
 *             meta-gradient.
 *
 * Peak memory: the checkpoints, one segment's graph and two adjoints; for
 * N = sqrt(k) that is O(sqrt(k)) steps' worth instead of O(k), for one more
 * forward pass of the inner loop.  The seed of each step's cost and of each
 * variable at a segment boundary is exactly the value the un-checkpointed
 * backward sweep carries there, so the results agree to float rounding: the
 * only differences are the order in which ms_grad adds contributions that
 * meet at one tensor (see docs/long-inner-loops.md).
 */
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "learn/learn.h"

/* ---- helpers shared with imaml.c (learn.h); the others are meta.c's ---- */

ms_tensor *ms__inner_product(const ms_container *a, const ms_container *b)
{
    ms_tensor *acc = NULL;
    for (int i = 0; i < ms_container_size(a); i++) {
        ms_tensor *y = ms_container_get(b, ms_container_key(a, i));
        ms_tensor *p = y ? ms_sum(ms_mul(ms_container_at(a, i), y), 0, NULL, false) : NULL;
        if (!p)
            return NULL;
        acc = acc ? ms_add(acc, p) : p;
        if (!acc)
            return NULL;
    }
    return acc;
}

/* ---- the checkpointed step ---- */

static ms_status err_or(ms_status fallback)
{
    ms_status st = ms_last_error(NULL);
    return st != MS_OK ? st : fallback;
}

typedef struct ck_cfg {
    const char *fn;
    metastep_cost_fn inner_fn, ofn;
    int steps, every;
    double lr;
    const metastep_optimizer *opt;
    bool avg, unique_inner, inner_is_outer, batched, stop;
    bool stateful; /* the optimizer has a state (built-in: saved and restored) */
    const char *const *inner_v;
    bool keep_inner;
    int num_tasks;
    void *user;
} ck_cfg;

/* What one task (or the batch) gives back. */
typedef struct ck_out {
    ms_tensor *cost;     /* retained; with its (consumed) graph unless stop */
    ms_container *grads; /* with respect to the outer variables */
    ms_container *vars;  /* the adapted variables, detached */
} ck_out;

static void ck_out_release(ck_out *o)
{
    ms_release(o->cost);
    ms_container_release(o->grads);
    ms_container_release(o->vars);
    memset(o, 0, sizeof *o);
}

static void swap_in(ms_container **slot, ms_container *v)
{
    ms_container_release(*slot);
    *slot = v;
}

/* One inner step from vars with the optimizer state s.  record: keep the
 * second-order graph (create_graph, differentiable update); otherwise the
 * gradient is taken without a graph and the update is detached.  With
 * average_across_steps and record, *step_cost receives the step's outer
 * cost (the inner cost itself when that is the outer cost, as meta.c).
 * Every tensor made here belongs to the caller's scope. */
static ms_status inner_step(const ck_cfg *c, const ms_container *ib, const ms_container *ob,
                            const ms_container *vars, metastep_optim_state *s, bool record, int i,
                            int task, ms_container **next, ms_tensor **step_cost)
{
    *next = NULL;
    if (step_cost)
        *step_cost = NULL;
    ms_container *sel = ms__select_vars(vars, c->inner_v, c->keep_inner);
    ms_container *iv = sel ? ms__as_variables(sel) : NULL;
    ms_container_release(sel);
    ms_container *full = iv && c->unique_inner ? ms_container_set_at_key_chains(vars, iv) : NULL;
    ms_status st = iv && (full || !c->unique_inner) ? MS_OK : err_or(MS_ERR_INTERNAL);
    ms_tensor *cost = NULL;
    ms_container *g = NULL;
    if (st == MS_OK) {
        cost = c->inner_fn(ib, full ? full : iv, c->user);
        st = ms__check_cost(c->fn, cost, "inner", i, task);
    }
    if (st == MS_OK) {
        st = ms_grad(cost, iv, record, &g);
        if (st == MS_OK && c->batched && c->num_tasks != 1)
            swap_in(&g, ms_container_mul_scalar(g, (double)c->num_tasks));
        if (st == MS_OK && !g)
            st = err_or(MS_ERR_INTERNAL);
        if (st == MS_OK)
            st = ms__check_grads(c->fn, g, "inner", i, task);
    }
    if (st == MS_OK && record && c->avg && step_cost) {
        if (c->inner_is_outer) {
            *step_cost = cost;
        } else {
            *step_cost = c->ofn(ob, vars, c->user);
            st = ms__check_cost(c->fn, *step_cost, c->ofn == c->inner_fn ? "inner" : "outer", i,
                                task);
        }
    }
    if (st == MS_OK) {
        ms_container *upd = metastep_optim_step(s, iv, g, c->lr, !record);
        *next = upd && c->unique_inner ? ms_container_set_at_key_chains(vars, upd) : upd;
        if (upd && c->unique_inner)
            ms_container_release(upd);
        st = *next ? MS_OK : err_or(MS_ERR_INTERNAL);
    }
    ms_container_release(g);
    ms_container_release(full);
    ms_container_release(iv);
    return st;
}

/* A container's tensors at the given keys, each prefixed (wrt of one
 * ms_grad: "v/" adapted variables, "s/" optimizer state, "o/" outer). */
static ms_status add_prefixed(ms_container *dst, const char *prefix, const ms_container *src,
                              const ms_container *keys)
{
    char key[1024];
    for (int i = 0; i < ms_container_size(keys); i++) {
        const char *k = ms_container_key(keys, i);
        ms_tensor *t = ms_container_get(src, k);
        if (!t)
            return err_or(MS_ERR_KEY);
        snprintf(key, sizeof key, "%s%s", prefix, k);
        ms_status st = ms_container_set(dst, key, t);
        if (st != MS_OK)
            return st;
    }
    return MS_OK;
}

/* The leaves of g under prefix, with the prefix taken off. */
static ms_container *unprefixed(const ms_container *g, const char *prefix)
{
    ms_container *out = ms_container_new();
    size_t n = strlen(prefix);
    for (int i = 0; out && i < ms_container_size(g); i++) {
        const char *k = ms_container_key(g, i);
        if (strncmp(k, prefix, n) == 0 && ms_container_set(out, k + n, ms_container_at(g, i)) != MS_OK) {
            ms_container_release(out);
            return NULL;
        }
    }
    return out;
}

/* The optimizer state as saved (leaves "m/...", "v/..." and "t"), without
 * "t": the tensors that carry an adjoint. */
static ms_container *state_tensors(const ck_cfg *c, const metastep_optim_state *s)
{
    if (!c->stateful)
        return ms_container_new();
    ms_container *saved = metastep_optim_state_save(s);
    if (!saved || !ms_container_has(saved, "t"))
        return saved;
    const char *t[2] = {"t", NULL};
    ms_container *out = ms_container_prune_key_chains(saved, t);
    ms_container_release(saved);
    return out;
}

/* One task's checkpointed second-order pass.  vars0: the full variables,
 * the outer ones being the leaves in ov. */
static ms_status ck_task(const ck_cfg *c, const ms_container *ib, const ms_container *ob,
                         const ms_container *vars0, const ms_container *ov, int task, ck_out *o)
{
    memset(o, 0, sizeof *o);
    const int k = c->steps, every = c->every;
    const int nseg = k == 0 ? 1 : (k + every - 1) / every;
    ms_container **ckv = calloc((size_t)nseg, sizeof *ckv), **cks = calloc((size_t)nseg, sizeof *cks);
    ms_tensor **costs = calloc((size_t)k + 1, sizeof *costs);
    ms_container *adapted = ms__select_vars(vars0, c->inner_v, c->keep_inner);
    /* the outer variables that do not adapt: every segment adds to them */
    ms_container *fixed = ms_container_new();
    for (int i = 0; fixed && adapted && i < ms_container_size(ov); i++)
        if (!ms_container_has(adapted, ms_container_key(ov, i)) &&
            ms_container_set(fixed, ms_container_key(ov, i), ms_container_at(ov, i)) != MS_OK)
            swap_in(&fixed, NULL);
    ms_status st = ckv && cks && costs && adapted && fixed
                       ? MS_OK
                       : err_or(ms__fail(MS_ERR_NOMEM, "%s: out of memory", c->fn));
    metastep_optim_state *s = NULL;

    /* forward: one step's graph at a time, a checkpoint every `every` steps */
    if (st == MS_OK && nseg > 1) {
        s = metastep_optim_state_new(c->opt);
        ms_container *cur = s ? ms_container_stop_gradient(vars0) : NULL;
        st = cur ? MS_OK : err_or(MS_ERR_INTERNAL);
        for (int i = 0; st == MS_OK && i < (nseg - 1) * every; i++) {
            ms_container *next = NULL;
            ms_scope_push();
            st = inner_step(c, ib, ob, cur, s, false, i, task, &next, NULL);
            ms_scope_pop();
            if (st == MS_OK)
                swap_in(&cur, next);
            if (st == MS_OK && (i + 1) % every == 0) {
                int j = (i + 1) / every;
                ckv[j] = ms__select_vars(cur, c->inner_v, c->keep_inner);
                cks[j] = c->stateful ? metastep_optim_state_save(s) : ms_container_new();
                if (!ckv[j] || !cks[j])
                    st = err_or(MS_ERR_INTERNAL);
            }
        }
        ms_container_release(cur);
        metastep_optim_state_release(s);
        s = NULL;
    }

    /* backward: the segments from the last, each replayed with its graph */
    ms_container *lam = NULL, *lam_s = NULL, *gfixed = NULL;
    for (int j = nseg - 1; st == MS_OK && j >= 0; j--) {
        const int a = j * every, b = a + every < k ? a + every : k;
        ms_scope_push();
        s = metastep_optim_state_new(c->opt);
        st = s ? MS_OK : err_or(MS_ERR_INTERNAL);
        ms_container *leaves = NULL, *sleaves = NULL, *cur = NULL, *wrt = ms_container_new();
        if (st == MS_OK && j == 0) {
            cur = ms_container_copy(vars0);
        } else if (st == MS_OK) {
            leaves = ms_container_new();
            sleaves = ms_container_new();
            ms_container *restore = ms_container_new();
            for (int i = 0; leaves && i < ms_container_size(ckv[j]); i++)
                if (ms__container_adopt(leaves, c->fn, ms_container_key(ckv[j], i),
                                        ms_variable(ms_container_at(ckv[j], i))) != MS_OK)
                    swap_in(&leaves, NULL);
            for (int i = 0; restore && sleaves && i < ms_container_size(cks[j]); i++) {
                const char *key = ms_container_key(cks[j], i);
                ms_tensor *t = ms_container_at(cks[j], i);
                bool is_t = strcmp(key, "t") == 0;
                ms_tensor *leaf = is_t ? t : ms_variable(t);
                if (!leaf || ms_container_set(restore, key, leaf) != MS_OK ||
                    (!is_t && ms_container_set(sleaves, key, leaf) != MS_OK))
                    swap_in(&sleaves, NULL);
            }
            cur = leaves ? ms_container_set_at_key_chains(vars0, leaves) : NULL;
            st = !cur || !sleaves || !restore ? err_or(MS_ERR_INTERNAL)
                 : c->stateful                ? metastep_optim_state_restore(s, restore)
                                              : MS_OK;
            ms_container_release(restore);
        }
        if (st == MS_OK && !wrt)
            st = err_or(MS_ERR_NOMEM);
        /* replay [a, b) with the second-order graph */
        ms_tensor *seg = NULL; /* the sum of this segment's costs */
        for (int i = a; st == MS_OK && i < b; i++) {
            ms_container *next = NULL;
            ms_tensor *sc = NULL;
            st = inner_step(c, ib, ob, cur, s, true, i, task, &next, &sc);
            if (st == MS_OK)
                swap_in(&cur, next);
            if (st == MS_OK && sc) {
                costs[i] = ms_retain(ms_stop_gradient(sc));
                seg = seg ? ms_add(seg, sc) : sc;
                st = costs[i] && seg ? MS_OK : err_or(MS_ERR_INTERNAL);
            }
        }
        ms_tensor *J = NULL;
        if (st == MS_OK && b == k) { /* the last segment ends with the final cost */
            ms_tensor *fin = c->ofn(ob, cur, c->user);
            st = ms__check_cost(c->fn, fin, c->ofn == c->inner_fn ? "inner" : "outer", k, task);
            if (st == MS_OK) {
                costs[k] = ms_retain(c->stop ? ms_stop_gradient(fin) : fin);
                o->vars = ms_container_stop_gradient(cur);
                seg = seg ? ms_add(seg, fin) : fin;
                J = c->avg ? ms_div_scalar(seg, (double)(k + 1)) : fin;
                st = costs[k] && o->vars && J ? MS_OK : err_or(MS_ERR_INTERNAL);
            }
        } else if (st == MS_OK) {
            /* the adjoints from the segment after this one; a part may be
             * empty (nothing adapts, a stateless optimizer) */
            ms_container *sb = state_tensors(c, s);
            bool has_v = ms_container_size(lam) > 0, has_s = ms_container_size(lam_s) > 0;
            ms_tensor *p = has_v ? ms__inner_product(lam, cur) : NULL;
            ms_tensor *ps = sb && has_s ? ms__inner_product(lam_s, sb) : NULL;
            st = sb && (p || !has_v) && (ps || !has_s) ? MS_OK : err_or(MS_ERR_INTERNAL);
            ms_tensor *parts[3] = {seg ? ms_div_scalar(seg, (double)(k + 1)) : NULL, p, ps};
            for (int q = 0; st == MS_OK && q < 3; q++)
                if (parts[q])
                    J = J ? ms_add(J, parts[q]) : parts[q];
            if (st == MS_OK && (seg || has_v || has_s) && !J)
                st = err_or(MS_ERR_INTERNAL);
            ms_container_release(sb);
        }
        if (st == MS_OK)
            st = j == 0 ? add_prefixed(wrt, "o/", ov, ov) : add_prefixed(wrt, "o/", ov, fixed);
        if (st == MS_OK && j > 0)
            st = add_prefixed(wrt, "v/", leaves, leaves);
        if (st == MS_OK && j > 0)
            st = add_prefixed(wrt, "s/", sleaves, sleaves);
        ms_container *g = NULL;
        if (st == MS_OK && J)
            st = ms_grad(J, wrt, false, &g);
        else if (st == MS_OK) /* nothing before this point reaches the cost */
            g = ms_container_new();
        if (st == MS_OK) {
            swap_in(&lam, unprefixed(g, "v/"));
            swap_in(&lam_s, unprefixed(g, "s/"));
            ms_container *go = unprefixed(g, "o/");
            if (!gfixed) {
                gfixed = go;
            } else if (go) {
                /* add this segment's share key by key */
                ms_container *sum = ms_container_new();
                for (int i = 0; sum && i < ms_container_size(ov); i++) {
                    const char *key = ms_container_key(ov, i);
                    bool h1 = ms_container_has(gfixed, key), h2 = ms_container_has(go, key);
                    ms_tensor *t = h1 && h2 ? ms_add(ms_container_get(gfixed, key),
                                                     ms_container_get(go, key))
                                   : h1 ? ms_container_get(gfixed, key)
                                   : h2 ? ms_container_get(go, key) : NULL;
                    if ((h1 || h2) && (!t || ms_container_set(sum, key, t) != MS_OK))
                        swap_in(&sum, NULL);
                }
                ms_container_release(go);
                swap_in(&gfixed, sum);
            }
            if (!lam || !lam_s || !gfixed)
                st = err_or(MS_ERR_INTERNAL);
        }
        ms_container_release(g);
        ms_container_release(wrt);
        ms_container_release(cur);
        ms_container_release(leaves);
        ms_container_release(sleaves);
        metastep_optim_state_release(s);
        s = NULL;
        /* the adjoints and sums must outlive the scope: copy them out of it
         * (containers hold their own references, so nothing to do) */
        ms_scope_pop();
    }
    if (st == MS_OK) {
        /* the gradient in the outer variables' order */
        o->grads = ms_container_new();
        for (int i = 0; o->grads && i < ms_container_size(ov); i++) {
            const char *key = ms_container_key(ov, i);
            const ms_tensor *v = ms_container_at(ov, i);
            ms_status sst =
                ms_container_has(gfixed, key)
                    ? ms_container_set(o->grads, key, ms_container_get(gfixed, key))
                    : ms__container_adopt(o->grads, c->fn, key,
                                          ms_zeros(ms_tensor_dtype(v), ms_tensor_ndim(v),
                                                   ms_tensor_shape(v)));
            if (sst != MS_OK)
                swap_in(&o->grads, NULL);
        }
        st = o->grads ? ms__check_grads(c->fn, o->grads, "outer", k, task) : err_or(MS_ERR_INTERNAL);
    }
    if (st == MS_OK) {
        /* the cost, summed in step order as meta.c does */
        ms_scope_push();
        ms_tensor *cost = costs[k];
        if (c->avg) {
            ms_tensor *total = NULL;
            for (int i = 0; i < k && costs[i]; i++)
                total = total ? ms_add(total, costs[i]) : costs[i];
            cost = ms_div_scalar(total ? ms_add(total, costs[k]) : costs[k], (double)(k + 1));
        }
        o->cost = ms_retain(cost);
        ms_scope_pop();
        st = o->cost ? MS_OK : err_or(MS_ERR_INTERNAL);
    }
    ms_container_release(lam);
    ms_container_release(lam_s);
    ms_container_release(gfixed);
    for (int j = 0; j < nseg; j++) {
        if (ckv)
            ms_container_release(ckv[j]);
        if (cks)
            ms_container_release(cks[j]);
    }
    for (int i = 0; costs && i <= k; i++)
        ms_release(costs[i]);
    free(ckv);
    free(cks);
    free(costs);
    ms_container_release(adapted);
    ms_container_release(fixed);
    if (st != MS_OK)
        ck_out_release(o);
    return st;
}

/* ---- tasks: batched at once, or one by one (on the pool when threads > 1) ---- */

typedef struct ck_run {
    const ck_cfg *c;
    ms_container **subs;
    const ms_container *variables, *ov;
    const metastep_options *o;
    ck_out *outs;
    ms_status *sts;
    char **msgs;
    atomic_int first_failed;
} ck_run;

/* Task t with private leaf copies of the outer variables, so that tasks on
 * several threads never walk the same tensors; the gradient with respect to
 * a copy is the gradient with respect to the original. */
static ms_status run_one(ck_run *r, int t, ck_out *out)
{
    const ck_cfg *c = r->c;
    ms_scope_push();
    ms_container *ov = ms_container_new();
    for (int i = 0; ov && i < ms_container_size(r->ov); i++)
        if (ms__container_adopt(ov, c->fn, ms_container_key(r->ov, i),
                                ms_variable(ms_container_at(r->ov, i))) != MS_OK)
            swap_in(&ov, NULL);
    ms_container *vars = ov ? ms_container_set_at_key_chains(r->variables, ov) : NULL;
    ms_container *ib = vars ? ms__apply_batch_fn(r->o->inner_batch_fn, r->subs[t], c->user, c->fn) : NULL;
    ms_container *ob = ib ? ms__apply_batch_fn(r->o->outer_batch_fn, r->subs[t], c->user, c->fn) : NULL;
    ms_status st = ob ? ck_task(c, ib, ob, vars, ov, t, out) : err_or(MS_ERR_INTERNAL);
    if (st == MS_OK)
        swap_in(&out->vars, ms_container_expand_dims(out->vars, 0));
    if (st == MS_OK && !out->vars)
        st = err_or(MS_ERR_INTERNAL);
    if (st != MS_OK)
        ck_out_release(out);
    ms_container_release(ib);
    ms_container_release(ob);
    ms_container_release(vars);
    ms_container_release(ov);
    ms_scope_pop();
    return st;
}

static void run_on_worker(void *ctx, int t)
{
    ck_run *r = ctx;
    if (t > atomic_load_explicit(&r->first_failed, memory_order_relaxed))
        return;
    ms_clear_error();
    r->sts[t] = run_one(r, t, &r->outs[t]);
    if (r->sts[t] == MS_OK)
        return;
    const char *msg = NULL;
    ms_last_error(&msg);
    r->msgs[t] = strdup(msg && *msg ? msg : ms_status_string(r->sts[t]));
    int f = atomic_load(&r->first_failed);
    while (t < f && !atomic_compare_exchange_weak(&r->first_failed, &f, t))
        ;
}

static int64_t container_bytes(const ms_container *c)
{
    int64_t n = 0;
    for (int i = 0; c && i < ms_container_size(c); i++) {
        const ms_tensor *t = ms_container_at(c, i);
        n += ms_tensor_numel(t) * (ms_tensor_dtype(t) == MS_F32 ? 4 : 8);
    }
    return n;
}

/* checkpoint_budget_mib: measure, on the first task, the peak tensor bytes
 * of a one-step segment (G: its graph and its backward sweep) and a
 * checkpoint (S: the adapted variables and the optimizer state), then take
 * the largest N whose checkpoints and N-step segment fit the budget. */
static ms_status choose_every(ck_cfg *c, double budget_mib, const ms_container *ib,
                              const ms_container *ob, const ms_container *vars0)
{
    const int k = c->steps;
    if (k <= 1) {
        c->every = 1;
        return MS_OK;
    }
    /* a one-step segment as the backward pass runs it: the recorded step,
     * then the gradient of a scalar of its outputs with respect to leaves
     * standing for the checkpoint; its peak is one step's share of a
     * segment's */
    ms_scope_push();
    const int64_t old_peak = ms__peak_tensor_bytes_restart();
    const int64_t before = ms_live_tensor_bytes();
    metastep_optim_state *s = metastep_optim_state_new(c->opt);
    ms_container *sel = ms__select_vars(vars0, c->inner_v, c->keep_inner);
    ms_container *leaves = sel ? ms_container_stop_gradient(sel) : NULL;
    ms_container *lv = ms_container_new(), *start = NULL, *next = NULL, *st_b = NULL, *g = NULL;
    for (int i = 0; leaves && lv && i < ms_container_size(leaves); i++)
        if (ms__container_adopt(lv, c->fn, ms_container_key(leaves, i),
                                ms_variable(ms_container_at(leaves, i))) != MS_OK)
            swap_in(&lv, NULL);
    start = lv ? ms_container_set_at_key_chains(vars0, lv) : NULL;
    ms_tensor *sc = NULL;
    ms_status st = s && start ? inner_step(c, ib, ob, start, s, true, 0, 0, &next, &sc)
                              : err_or(MS_ERR_INTERNAL);
    int64_t S = 0;
    if (st == MS_OK) {
        ms_container *ad = ms__select_vars(next, c->inner_v, c->keep_inner);
        st_b = state_tensors(c, s);
        S = container_bytes(ad) + container_bytes(st_b);
        ms_tensor *J = ad && ms_container_size(ad) ? ms__inner_product(ad, ad) : NULL;
        if (J && sc)
            J = ms_add(J, sc);
        if (J)
            st = ms_grad(J, lv, false, &g);
        ms_container_release(ad);
    }
    const int64_t G = ms_peak_tensor_bytes() - before;
    ms__peak_tensor_bytes_raise(old_peak);
    ms_container_release(g);
    ms_container_release(next);
    ms_container_release(st_b);
    ms_container_release(start);
    ms_container_release(lv);
    ms_container_release(leaves);
    ms_container_release(sel);
    metastep_optim_state_release(s);
    ms_scope_pop();
    if (st != MS_OK)
        return st;
    const double budget = budget_mib * 1048576.0;
    double least = INFINITY;
    for (int n = k; n >= 1; n--) {
        double need = (double)((k + n - 1) / n - 1) * (double)S + (double)n * (double)G;
        if (need <= budget) {
            c->every = n;
            return MS_OK;
        }
        least = need < least ? need : least;
    }
    return ms__fail(MS_ERR_INVALID_ARG, "%s: checkpoint_budget_mib %g is too small for %d inner "
                    "steps: a one-step segment takes %.3g MiB and a checkpoint %.3g MiB, so the "
                    "least budget is %.4g MiB", c->fn, budget_mib, k, (double)G / 1048576.0,
                    (double)S / 1048576.0, least / 1048576.0);
}

ms_status ms__maml_checkpointed(const char *fn, const ms_container *batch,
                                metastep_cost_fn inner_fn, metastep_cost_fn outer_fn,
                                const ms_container *variables, int steps, double lr,
                                const metastep_options *o, const metastep_optimizer *opt,
                                int num_tasks, metastep_result *out)
{
    if (o->checkpoint_every < -1)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: checkpoint_every is %d; it must be >= 1, 0 "
                        "(off) or -1 (sqrt of the inner steps)", fn, o->checkpoint_every);
    if (opt->state_new) {
        /* a stateful optimizer must let its state be stored and restored */
        metastep_optim_state *s = metastep_optim_state_new(opt);
        ms_container *saved = s ? metastep_optim_state_save(s) : NULL;
        ms_container_release(saved);
        metastep_optim_state_release(s);
        if (!saved)
            return ms__fail(MS_ERR_INVALID_ARG, "%s: checkpoint_every needs the inner optimizer's "
                            "state at the checkpoints, and '%s' is a user optimizer with a state "
                            "metastep cannot store (use gradient descent, metastep_sgd, "
                            "metastep_adam or a stateless optimizer, or checkpoint_every 0)",
                            fn, opt->name ? opt->name : "(unnamed)");
    }
    const double budget = o->checkpoint_budget_mib;
    if (!(budget >= 0) || !isfinite(budget))
        return ms__fail(MS_ERR_INVALID_ARG, "%s: checkpoint_budget_mib is %g; it must be >= 0 "
                        "and finite", fn, budget);
    const bool by_budget = budget > 0 && o->checkpoint_every == 0;
    int every = o->checkpoint_every;
    if (every == -1)
        every = (int)ceil(sqrt((double)steps));
    if (every < 1)
        every = 1;
    bool inner_masked = o->inner_v != NULL;
    ck_cfg c = {.fn = fn, .inner_fn = inner_fn, .ofn = outer_fn ? outer_fn : inner_fn,
                .steps = steps, .every = every, .lr = lr, .opt = opt,
                .avg = o->average_across_steps, .unique_inner = inner_masked,
                .inner_is_outer = !outer_fn && !inner_masked && !o->outer_v,
                .batched = o->batched, .stop = o->stop_gradients, .inner_v = o->inner_v,
                .keep_inner = o->keep_inner_v, .num_tasks = num_tasks, .user = o->user,
                .stateful = opt->state_new != NULL};
    ms_scope_push();
    ms_container *sel = ms__select_vars(variables, o->outer_v, o->keep_outer_v);
    ms_container *ov = ms_container_new();
    for (int i = 0; sel && ov && i < ms_container_size(sel); i++)
        if (ms__container_adopt(ov, fn, ms_container_key(sel, i),
                                ms_variable(ms_container_at(sel, i))) != MS_OK)
            swap_in(&ov, NULL);
    ms_status st = sel && ov ? MS_OK : err_or(MS_ERR_INTERNAL);
    ms_tensor *cost = NULL;
    ms_container *grads = NULL, *inner_v = NULL;
    if (st == MS_OK && c.batched) {
        ms_container *vars = ms_container_set_at_key_chains(variables, ov);
        ms_container *ib = vars ? ms__apply_batch_fn(o->inner_batch_fn, batch, c.user, fn) : NULL;
        ms_container *ob = ib ? ms__apply_batch_fn(o->outer_batch_fn, batch, c.user, fn) : NULL;
        ck_out r;
        st = ob ? MS_OK : err_or(MS_ERR_INTERNAL);
        if (st == MS_OK && by_budget)
            st = choose_every(&c, budget, ib, ob, vars);
        if (st == MS_OK)
            st = ck_task(&c, ib, ob, vars, ov, 0, &r);
        if (st == MS_OK) {
            cost = ms_retain(r.cost);
            grads = ms_container_sum(r.grads, 0);
            if (o->return_inner_v == METASTEP_RETURN_INNER_ALL) {
                inner_v = ms_container_copy(r.vars);
            } else if (o->return_inner_v == METASTEP_RETURN_INNER_FIRST) {
                inner_v = ms_container_new();
                for (int i = 0; inner_v && i < ms_container_size(r.vars); i++)
                    if (ms__container_adopt(inner_v, fn, ms_container_key(r.vars, i),
                                            ms_slice(ms_container_at(r.vars, i), 0, 0, 1)) != MS_OK)
                        swap_in(&inner_v, NULL);
            }
            if (!grads || (o->return_inner_v != METASTEP_RETURN_INNER_NONE && !inner_v))
                st = err_or(MS_ERR_INTERNAL);
            ck_out_release(&r);
        }
        ms_container_release(ib);
        ms_container_release(ob);
        ms_container_release(vars);
    } else if (st == MS_OK) {
        int n = 0;
        ms_container **subs = NULL;
        st = ms_container_unstack(batch, true, &n, &subs);
        ck_run r = {.c = &c, .subs = subs, .variables = variables, .ov = ov, .o = o};
        const int nt = num_tasks;
        r.outs = calloc((size_t)nt, sizeof *r.outs);
        r.sts = calloc((size_t)nt, sizeof *r.sts);
        r.msgs = calloc((size_t)nt, sizeof *r.msgs);
        if (st == MS_OK && (!r.outs || !r.sts || !r.msgs))
            st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
        if (st == MS_OK && by_budget) { /* measured on the first task, on this thread */
            ms_container *ib = ms__apply_batch_fn(o->inner_batch_fn, subs[0], c.user, fn);
            ms_container *ob = ib ? ms__apply_batch_fn(o->outer_batch_fn, subs[0], c.user, fn) : NULL;
            ms_container *vars = ms_container_set_at_key_chains(variables, ov);
            st = ob && vars ? choose_every(&c, budget, ib, ob, vars) : err_or(MS_ERR_INTERNAL);
            ms_container_release(ib);
            ms_container_release(ob);
            ms_container_release(vars);
        }
        bool parallel = o->threads > 1 && nt > 1 && c.stop;
        if (st == MS_OK && !parallel) {
            for (int t = 0; st == MS_OK && t < nt; t++)
                st = run_one(&r, t, &r.outs[t]);
        } else if (st == MS_OK) {
            const char *m = NULL;
            ms_status before = ms_last_error(&m);
            char *saved = before != MS_OK ? strdup(m) : NULL;
            atomic_init(&r.first_failed, nt);
            ms__pool_run(o->threads, nt, run_on_worker, &r);
            ms_clear_error();
            if (before != MS_OK)
                ms__fail(before, "%s", saved ? saved : ms_status_string(before));
            free(saved);
            for (int t = 0; st == MS_OK && t < nt; t++)
                if (r.sts[t] != MS_OK)
                    st = ms__fail(r.sts[t], "%s", r.msgs[t] ? r.msgs[t] : ms_status_string(r.sts[t]));
        }
        /* combine in task order, as meta.c */
        ms_tensor *total = NULL;
        ms_container *gsum = NULL;
        ms_container **adapted = st == MS_OK ? calloc((size_t)nt, sizeof *adapted) : NULL;
        int nad = 0;
        if (st == MS_OK && !adapted)
            st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
        for (int t = 0; st == MS_OK && t < nt; t++) {
            total = total ? ms_add(total, r.outs[t].cost) : r.outs[t].cost;
            swap_in(&gsum, gsum ? ms_container_add(gsum, r.outs[t].grads)
                                : ms_container_copy(r.outs[t].grads));
            if (o->return_inner_v == METASTEP_RETURN_INNER_ALL ||
                (o->return_inner_v == METASTEP_RETURN_INNER_FIRST && t == 0))
                adapted[nad++] = r.outs[t].vars;
            if (!total || !gsum)
                st = err_or(MS_ERR_INTERNAL);
        }
        if (st == MS_OK) {
            cost = ms_retain(ms_div_scalar(total, (double)nt));
            grads = ms_container_div_scalar(gsum, (double)nt);
            if (nad)
                inner_v = ms_container_concat(nad, adapted, 0);
            if (!cost || !grads || (nad && !inner_v))
                st = err_or(MS_ERR_INTERNAL);
        }
        ms_container_release(gsum);
        free(adapted);
        for (int t = 0; t < nt; t++) {
            if (r.outs)
                ck_out_release(&r.outs[t]);
            if (r.msgs)
                free(r.msgs[t]);
        }
        free(r.outs);
        free(r.sts);
        free(r.msgs);
        for (int i = 0; i < n; i++)
            ms_container_release(subs[i]);
        free(subs);
    }
    if (st == MS_OK && c.stop) {
        ms_tensor *d = ms_retain(ms_stop_gradient(cost));
        ms_release(cost);
        cost = d;
        st = cost ? MS_OK : err_or(MS_ERR_INTERNAL);
    }
    if (st == MS_OK) {
        out->cost = cost;
        out->grads = grads;
        out->inner_v = inner_v;
    } else {
        ms_release(cost);
        ms_container_release(grads);
        ms_container_release(inner_v);
    }
    ms_container_release(ov);
    ms_container_release(sel);
    ms_scope_pop();
    return st;
}
