/* Compiled meta steps (include/metastep/plan.h): the eager step recorded on
 * a kernel tape (core/runtime/tape.c) and replayed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "learn/learn.h"
#include "metastep/plan.h"

typedef enum { PLAN_MAML, PLAN_FOMAML, PLAN_REPTILE } plan_algo;

/* A batch or variables leaf as traced, or an output. */
typedef struct slot_sig {
    char *kc;
    ms_dtype dt;
    int ndim;
    int64_t shape[MS_MAX_DIMS];
    int alias; /* leaves: the first leaf with the same block (itself if none) */
    int id;    /* tape buffer */
    int64_t off;
} slot_sig;

typedef struct outs {
    int n;
    slot_sig *s;
    bool present;
} outs;

struct metastep_plan {
    const char *fn;
    plan_algo algo;
    metastep_cost_fn inner, outer;
    int steps;
    double lr;
    metastep_options o;
    metastep_reptile_options r;
    /* the trace */
    void *backend;
    ms_tape *tape;
    int nleaves, nbatch;
    slot_sig *leaves;
    outs cost, grads, inner_v;
    metastep_plan_info info;
};

static void free_slots(slot_sig *s, int n)
{
    for (int i = 0; s && i < n; i++)
        free(s[i].kc);
    free(s);
}

static void drop_trace(metastep_plan *p)
{
    ms__tape_free(p->tape);
    p->tape = NULL;
    free_slots(p->leaves, p->nleaves);
    free_slots(p->cost.s, p->cost.n);
    free_slots(p->grads.s, p->grads.n);
    free_slots(p->inner_v.s, p->inner_v.n);
    p->leaves = NULL;
    p->nleaves = p->nbatch = 0;
    memset(&p->cost, 0, sizeof p->cost);
    memset(&p->grads, 0, sizeof p->grads);
    memset(&p->inner_v, 0, sizeof p->inner_v);
    p->info.kernels = 0;
    p->info.arena_bytes = 0;
}

void metastep_plan_free(metastep_plan *p)
{
    if (!p)
        return;
    drop_trace(p);
    free(p);
}

static ms_status make(const char *fn, plan_algo algo, metastep_cost_fn inner,
                      metastep_cost_fn outer, int steps, double lr, const metastep_options *o,
                      const metastep_reptile_options *r, metastep_plan **out)
{
    if (!out)
        return ms__fail(MS_ERR_NULL_ARG, "%s: out is NULL", fn);
    *out = NULL;
    if (!inner)
        return ms__fail(MS_ERR_NULL_ARG, "%s: the cost function is NULL", fn);
    if (steps < 0)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: inner_grad_steps is %d", fn, steps);
    if (!isfinite(lr) || (algo == PLAN_REPTILE && lr == 0))
        return ms__fail(MS_ERR_INVALID_ARG, "%s: inner_learning_rate %g is %s", fn, lr,
                        isfinite(lr) ? "0; Reptile divides by it" : "not finite");
    bool stop = algo == PLAN_REPTILE ? r->stop_gradients : o->stop_gradients;
    if (!stop)
        return ms__fail(MS_ERR_INVALID_ARG,
                        "%s: stop_gradients is off, so the cost would keep its graph, which a "
                        "replay does not build; use the eager step",
                        fn);
    if ((algo == PLAN_REPTILE ? r->shard : o->shard) != NULL)
        return ms__fail(MS_ERR_INVALID_ARG,
                        "%s: a sharded step exchanges its tasks' records with other processes "
                        "through the shard's hook, which a replay would not call; use the eager "
                        "step",
                        fn);
    if (algo != PLAN_REPTILE && (o->inner_learning_rates || o->step_weights))
        return ms__fail(MS_ERR_INVALID_ARG,
                        "%s: learned inner learning rates and step weights change from one "
                        "meta-step to the next, and a trace would keep their first values; use "
                        "the eager step",
                        fn);
    metastep_plan *p = calloc(1, sizeof *p);
    if (!p)
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    *p = (metastep_plan){.fn = fn, .algo = algo, .inner = inner, .outer = outer,
                         .steps = steps, .lr = lr, .o = *o, .r = *r};
    p->o.threads = 0;
    p->r.threads = 0;
    *out = p;
    return MS_OK;
}

ms_status metastep_plan_maml(metastep_cost_fn inner_cost_fn, metastep_cost_fn outer_cost_fn,
                             int inner_grad_steps, double inner_learning_rate,
                             const metastep_options *opts, metastep_plan **out)
{
    metastep_options o = opts ? *opts : METASTEP_OPTIONS_DEFAULT;
    metastep_reptile_options r = METASTEP_REPTILE_OPTIONS_DEFAULT;
    return make("metastep_plan_maml", PLAN_MAML, inner_cost_fn, outer_cost_fn,
                inner_grad_steps, inner_learning_rate, &o, &r, out);
}

ms_status metastep_plan_fomaml(metastep_cost_fn inner_cost_fn, metastep_cost_fn outer_cost_fn,
                               int inner_grad_steps, double inner_learning_rate,
                               const metastep_options *opts, metastep_plan **out)
{
    metastep_options o = opts ? *opts : METASTEP_OPTIONS_DEFAULT;
    metastep_reptile_options r = METASTEP_REPTILE_OPTIONS_DEFAULT;
    return make("metastep_plan_fomaml", PLAN_FOMAML, inner_cost_fn, outer_cost_fn,
                inner_grad_steps, inner_learning_rate, &o, &r, out);
}

ms_status metastep_plan_reptile(metastep_cost_fn cost_fn, int inner_grad_steps,
                                double inner_learning_rate, const metastep_reptile_options *opts,
                                metastep_plan **out)
{
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    metastep_reptile_options r = opts ? *opts : METASTEP_REPTILE_OPTIONS_DEFAULT;
    return make("metastep_plan_reptile", PLAN_REPTILE, cost_fn, NULL, inner_grad_steps,
                inner_learning_rate, &o, &r, out);
}

ms_status metastep_plan_get_info(const metastep_plan *p, metastep_plan_info *info)
{
    if (!p || !info)
        return ms__fail(MS_ERR_NULL_ARG, "metastep_plan_get_info: %s is NULL",
                        p ? "info" : "plan");
    *info = p->info;
    return MS_OK;
}

static ms_status eager(const metastep_plan *p, const ms_container *batch,
                       const ms_container *variables, metastep_result *out)
{
    switch (p->algo) {
    case PLAN_MAML:
        return metastep_maml_step(batch, p->inner, p->outer, variables, p->steps, p->lr, &p->o,
                                  out);
    case PLAN_FOMAML:
        return metastep_fomaml_step(batch, p->inner, p->outer, variables, p->steps, p->lr,
                                    &p->o, out);
    default:
        return metastep_reptile_step(batch, p->inner, variables, p->steps, p->lr, &p->r, out);
    }
}

static ms_tensor *leaf(const metastep_plan *p, const ms_container *b, const ms_container *v,
                       int i)
{
    return i < p->nbatch ? ms_container_at(b, i) : ms_container_at(v, i - p->nbatch);
}

static const char *leaf_key(const metastep_plan *p, const ms_container *b,
                            const ms_container *v, int i)
{
    return i < p->nbatch ? ms_container_key(b, i) : ms_container_key(v, i - p->nbatch);
}

static size_t block_bytes(const ms_tensor *t) { return (size_t)1 << t->block; }

static bool same_layout(const slot_sig *s, const ms_tensor *t)
{
    if (s->dt != t->dtype || s->ndim != t->ndim)
        return false;
    for (int d = 0; d < t->ndim; d++)
        if (s->shape[d] != t->shape[d])
            return false;
    return true;
}

/* Whether batch and variables have the structure the trace was made for. */
static bool matches(const metastep_plan *p, const ms_container *b, const ms_container *v)
{
    if (!p->tape || p->backend != ms__backend_handle() || ms_container_size(b) != p->nbatch ||
        ms_container_size(b) + ms_container_size(v) != p->nleaves)
        return false;
    for (int i = 0; i < p->nleaves; i++) {
        const slot_sig *s = &p->leaves[i];
        const ms_tensor *t = leaf(p, b, v, i);
        if (!t || !same_layout(s, t) || strcmp(s->kc, leaf_key(p, b, v, i)) != 0)
            return false;
        if (leaf(p, b, v, s->alias) != t) /* the same aliasing */
            return false;
        for (int j = 0; j < i && s->alias == i; j++)
            if (leaf(p, b, v, j) == t)
                return false;
    }
    return true;
}

static ms_status set_sig(slot_sig *s, const char *kc, const ms_tensor *t)
{
    s->kc = strdup(kc ? kc : "");
    s->dt = t->dtype;
    s->ndim = t->ndim;
    memcpy(s->shape, t->shape, sizeof s->shape);
    return s->kc ? MS_OK : MS_ERR_NOMEM;
}

static ms_status locate_outs(ms_tape *tape, outs *o, const ms_container *c, const ms_tensor *one)
{
    if (!c && !one)
        return MS_OK;
    o->present = true;
    o->n = one ? 1 : ms_container_size(c);
    o->s = calloc((size_t)o->n + 1, sizeof *o->s);
    if (!o->s)
        return MS_ERR_NOMEM;
    for (int i = 0; i < o->n; i++) {
        const ms_tensor *t = one ? one : ms_container_at(c, i);
        ms_status st = set_sig(&o->s[i], one ? "" : ms_container_key(c, i), t);
        if (st == MS_OK)
            st = ms__tape_locate(tape, t->data, (size_t)t->numel * ms_dtype_size(t->dtype),
                                 &o->s[i].id, &o->s[i].off);
        if (st != MS_OK)
            return st;
    }
    return MS_OK;
}

static ms_status trace(metastep_plan *p, const ms_container *b, const ms_container *v,
                       metastep_result *out)
{
    drop_trace(p);
    p->nbatch = ms_container_size(b);
    p->nleaves = p->nbatch + ms_container_size(v);
    p->leaves = calloc((size_t)p->nleaves + 1, sizeof *p->leaves);
    p->tape = ms__tape_new();
    if (!p->leaves || !p->tape) {
        drop_trace(p);
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory", p->fn);
    }
    ms_status st = ms__tape_begin(p->tape);
    for (int i = 0; st == MS_OK && i < p->nleaves; i++) {
        const ms_tensor *t = leaf(p, b, v, i);
        slot_sig *s = &p->leaves[i];
        st = set_sig(s, leaf_key(p, b, v, i), t);
        s->alias = i;
        for (int j = 0; j < i; j++)
            if (leaf(p, b, v, j) == t) {
                s->alias = j;
                break;
            }
        s->id = ms__tape_input(p->tape, t, block_bytes(t), i);
        if (st == MS_OK && s->id < 0)
            st = MS_ERR_NOMEM;
    }
    if (st == MS_OK)
        st = eager(p, b, v, out);
    ms__tape_end();
    if (st != MS_OK) {
        drop_trace(p);
        return st;
    }
    const char *why = ms__tape_why(p->tape);
    if (why) {
        st = ms__fail(MS_ERR_INVALID_ARG, "%s: cannot compile this step: %s; call the eager step",
                      p->fn, why);
    } else {
        st = locate_outs(p->tape, &p->cost, NULL, out->cost);
        if (st == MS_OK)
            st = locate_outs(p->tape, &p->grads, out->grads, NULL);
        if (st == MS_OK)
            st = locate_outs(p->tape, &p->inner_v, out->inner_v, NULL);
        if (st == MS_OK)
            st = ms__tape_finish(p->tape);
        if (st != MS_OK)
            st = ms__fail(st, "%s: cannot plan the trace (%s)", p->fn, ms_status_string(st));
    }
    if (st != MS_OK) {
        metastep_result_release(out);
        drop_trace(p);
        return st;
    }
    p->backend = ms__backend_handle();
    const char *dump = getenv("METASTEP_PLAN_DUMP");
    FILE *f = dump && *dump ? fopen(dump, "w") : NULL;
    if (f) {
        ms__tape_dump(p->tape, f);
        fclose(f);
    }
    p->info.traces++;
    p->info.kernels = ms__tape_ops(p->tape);
    p->info.arena_bytes = ms__tape_arena_bytes(p->tape);
    return MS_OK;
}

/* Fresh tensors (owned by the caller, in no scope) holding the outputs. */
static ms_tensor *take(const metastep_plan *p, const slot_sig *s)
{
    ms_tensor *t = ms__tensor_tmp(p->fn, s->dt, s->ndim, s->shape);
    if (t && t->numel)
        memcpy(t->data, ms__tape_addr(p->tape, s->id, s->off),
               (size_t)t->numel * ms_dtype_size(s->dt));
    return t;
}

static ms_container *take_all(const metastep_plan *p, const outs *o)
{
    if (!o->present)
        return NULL;
    ms_container *c = ms_container_new();
    for (int i = 0; c && i < o->n; i++) {
        ms_tensor *t = take(p, &o->s[i]);
        ms_status st = t ? ms_container_set(c, o->s[i].kc, t) : MS_ERR_NOMEM;
        ms_release(t);
        if (st != MS_OK) {
            ms_container_release(c);
            return NULL;
        }
    }
    return c;
}

static ms_status replay(metastep_plan *p, const ms_container *b, const ms_container *v,
                        metastep_result *out)
{
    for (int i = 0; i < p->nleaves; i++)
        ms__tape_set_input(p->tape, p->leaves[i].id, leaf(p, b, v, i));
    ms_status st = ms__tape_replay(p->tape);
    if (st != MS_OK) {
        /* a finiteness check or a kernel failed: the eager step says which */
        p->info.eager_reruns++;
        return eager(p, b, v, out);
    }
    p->info.replays++;
    out->cost = take(p, &p->cost.s[0]);
    out->grads = take_all(p, &p->grads);
    out->inner_v = take_all(p, &p->inner_v);
    if (!out->cost || !out->grads || (p->inner_v.present && !out->inner_v)) {
        metastep_result_release(out);
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory for the results", p->fn);
    }
    return MS_OK;
}

ms_status metastep_plan_run(metastep_plan *p, const ms_container *batch,
                            const ms_container *variables, metastep_result *out)
{
    if (out)
        memset(out, 0, sizeof *out);
    if (!p || !batch || !variables || !out)
        return ms__fail(MS_ERR_NULL_ARG, "metastep_plan_run: %s is NULL",
                        !p ? "plan" : !batch ? "batch" : !variables ? "variables" : "out");
    if (ms__taping())
        return ms__fail(MS_ERR_INVALID_ARG,
                        "%s: called from a callable of a step being traced", p->fn);
    if (matches(p, batch, variables))
        return replay(p, batch, variables, out);
    return trace(p, batch, variables, out);
}
