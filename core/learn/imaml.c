/* Implicit MAML (include/metastep/imaml.h, docs/long-inner-loops.md).
 *
 * Per task: the proximal inner loop with one step's graph at a time, the
 * outer gradient g at the adapted variables, then conjugate gradient on
 * (I + H/lambda) x = g.  The vectors of CG live in plain double arrays (the
 * variables flattened in container order); each iteration's Hessian-vector
 * product is the gradient of <grad inner(phi), p> with respect to phi, from
 * one first-order graph kept for the whole solve (ms_grad with create_graph
 * leaves it intact). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "learn/learn.h"

static const char *FN = "metastep_imaml_step";

static ms_status err_or(ms_status fallback)
{
    ms_status st = ms_last_error(NULL);
    return st != MS_OK ? st : fallback;
}

static void swap_in(ms_container **slot, ms_container *v)
{
    ms_container_release(*slot);
    *slot = v;
}

static int64_t flat_size(const ms_container *c)
{
    int64_t n = 0;
    for (int i = 0; i < ms_container_size(c); i++)
        n += ms_tensor_numel(ms_container_at(c, i));
    return n;
}

static void to_flat(const ms_container *c, double *x)
{
    for (int i = 0; i < ms_container_size(c); i++) {
        const ms_tensor *t = ms_container_at(c, i);
        const int64_t n = ms_tensor_numel(t);
        if (ms_tensor_dtype(t) == MS_F32)
            for (int64_t j = 0; j < n; j++)
                x[j] = ((const float *)ms_tensor_data(t))[j];
        else
            memcpy(x, ms_tensor_data(t), (size_t)n * sizeof *x);
        x += n;
    }
}

/* A container shaped as `like` with the values of x (new, constants). */
static ms_container *from_flat(const ms_container *like, const double *x)
{
    ms_container *out = ms_container_new();
    for (int i = 0; out && i < ms_container_size(like); i++) {
        const ms_tensor *t = ms_container_at(like, i);
        const int64_t n = ms_tensor_numel(t);
        ms_tensor *r;
        if (ms_tensor_dtype(t) == MS_F32) {
            float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
            for (int64_t j = 0; f && j < n; j++)
                f[j] = (float)x[j];
            r = f ? ms_tensor_from_data(MS_F32, ms_tensor_ndim(t), ms_tensor_shape(t), f) : NULL;
            free(f);
        } else {
            r = ms_tensor_from_data(MS_F64, ms_tensor_ndim(t), ms_tensor_shape(t), x);
        }
        if (ms__container_adopt(out, FN, ms_container_key(like, i), r) != MS_OK)
            swap_in(&out, NULL);
        x += n;
    }
    return out;
}

static double dot(const double *a, const double *b, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

typedef struct im_cfg {
    metastep_cost_fn inner_fn, ofn;
    int steps;
    double lr;
    const metastep_optimizer *opt;
    const metastep_imaml_options *o;
} im_cfg;

/* inner(phi) + lambda/2 ||phi - theta||^2 */
static ms_tensor *proximal_cost(const im_cfg *c, const ms_container *ib, const ms_container *phi,
                                const ms_container *theta, int step, int task, ms_status *st)
{
    ms_tensor *cost = c->inner_fn(ib, phi, c->o->user);
    *st = ms__check_cost(FN, cost, "inner", step, task);
    if (*st != MS_OK)
        return NULL;
    ms_tensor *reg = NULL;
    for (int i = 0; i < ms_container_size(phi); i++) {
        ms_tensor *d = ms_sub(ms_container_at(phi, i), ms_container_get(theta, ms_container_key(phi, i)));
        ms_tensor *s = ms_sum(ms_square(d), 0, NULL, false);
        reg = reg ? ms_add(reg, s) : s;
    }
    ms_tensor *r = reg ? ms_add(cost, ms_mul_scalar(reg, 0.5 * c->o->lambda)) : cost;
    if (!r)
        *st = err_or(MS_ERR_INTERNAL);
    return r;
}

typedef struct im_out {
    ms_tensor *cost;     /* retained */
    ms_container *grads; /* the implicit meta-gradient */
    ms_container *vars;  /* adapted, with a leading axis */
} im_out;

static void im_out_release(im_out *o)
{
    ms_release(o->cost);
    ms_container_release(o->grads);
    ms_container_release(o->vars);
    memset(o, 0, sizeof *o);
}

static ms_status im_task(const im_cfg *c, const ms_container *ib, const ms_container *ob,
                         const ms_container *variables, int task, im_out *o)
{
    memset(o, 0, sizeof *o);
    ms_scope_push();
    ms_container *theta = ms_container_stop_gradient(variables);
    ms_container *phi = theta ? ms_container_copy(theta) : NULL;
    metastep_optim_state *s = metastep_optim_state_new(c->opt);
    ms_status st = theta && phi && s ? MS_OK : err_or(MS_ERR_INTERNAL);
    /* the proximal inner loop, one step's graph at a time */
    for (int i = 0; st == MS_OK && i < c->steps; i++) {
        ms_scope_push();
        ms_container *pv = ms__as_variables(phi), *g = NULL;
        st = pv ? MS_OK : err_or(MS_ERR_INTERNAL);
        ms_tensor *cost = st == MS_OK ? proximal_cost(c, ib, pv, theta, i, task, &st) : NULL;
        if (st == MS_OK)
            st = ms_grad(cost, pv, false, &g);
        if (st == MS_OK)
            st = ms__check_grads(FN, g, "inner", i, task);
        if (st == MS_OK) {
            ms_container *next = metastep_optim_step(s, pv, g, c->lr, true);
            st = next ? MS_OK : err_or(MS_ERR_INTERNAL);
            if (next)
                swap_in(&phi, next);
        }
        ms_container_release(g);
        ms_container_release(pv);
        ms_scope_pop();
    }
    metastep_optim_state_release(s);
    /* the outer cost and its gradient at the adapted variables */
    ms_container *pv = st == MS_OK ? ms__as_variables(phi) : NULL, *gout = NULL, *gin = NULL;
    if (st == MS_OK && !pv)
        st = err_or(MS_ERR_INTERNAL);
    ms_tensor *outer = NULL;
    if (st == MS_OK) {
        outer = c->ofn(ob, pv, c->o->user);
        st = ms__check_cost(FN, outer, c->ofn == c->inner_fn ? "inner" : "outer", c->steps, task);
    }
    if (st == MS_OK)
        st = ms_grad(outer, pv, false, &gout);
    if (st == MS_OK)
        st = ms__check_grads(FN, gout, "outer", c->steps, task);
    if (st == MS_OK) {
        o->cost = ms_retain(ms_stop_gradient(outer));
        o->vars = ms_container_expand_dims(phi, 0);
        st = o->cost && o->vars ? MS_OK : err_or(MS_ERR_INTERNAL);
    }
    /* the inner cost's gradient with its graph, for Hessian-vector products */
    ms_container *hv = st == MS_OK ? ms__as_variables(phi) : NULL;
    if (st == MS_OK) {
        ms_tensor *lin = hv ? c->inner_fn(ib, hv, c->o->user) : NULL;
        st = hv ? ms__check_cost(FN, lin, "inner", c->steps, task) : err_or(MS_ERR_INTERNAL);
        if (st == MS_OK)
            st = ms_grad(lin, hv, true, &gin);
    }
    /* conjugate gradient on (I + H/lambda) x = gout */
    const int64_t n = st == MS_OK ? flat_size(gout) : 0;
    double *x = calloc((size_t)n + 1, sizeof *x), *r = malloc(((size_t)n + 1) * sizeof *r),
           *p = malloc(((size_t)n + 1) * sizeof *p), *ap = malloc(((size_t)n + 1) * sizeof *ap);
    if (st == MS_OK && (!x || !r || !p || !ap))
        st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", FN);
    if (st == MS_OK) {
        to_flat(gout, r);
        memcpy(p, r, (size_t)n * sizeof *p);
        double rs = dot(r, r, n), stop = c->o->cg_tol * sqrt(rs);
        const double lam = c->o->lambda;
        bool break_now = false;
        for (int it = 0; st == MS_OK && !break_now && it < c->o->cg_steps && sqrt(rs) > stop;
             it++) {
            ms_scope_push();
            ms_container *pc = from_flat(gout, p), *hp = NULL;
            ms_tensor *y = pc ? ms__inner_product(gin, pc) : NULL;
            st = y ? ms_grad(y, hv, true, &hp) : err_or(MS_ERR_INTERNAL);
            if (st == MS_OK)
                st = ms__check_grads(FN, hp, "Hessian-vector", c->steps, task);
            if (st == MS_OK) {
                to_flat(hp, ap);
                for (int64_t i = 0; i < n; i++)
                    ap[i] = p[i] + ap[i] / lam;
                double pap = dot(p, ap, n);
                if (!isfinite(pap)) {
                    st = ms__fail(MS_ERR_NUMERIC, "%s: the Hessian-vector product is not finite "
                                  "(task %d)", FN, task);
                } else if (pap <= 0) {
                    /* I + H/lambda is not positive definite along p (the inner
                     * loop is far from a minimum of the proximal problem):
                     * stop there, as truncated Newton-CG does; at the first
                     * iteration the answer is g itself (first order) */
                    if (it == 0)
                        memcpy(x, p, (size_t)n * sizeof *x);
                    break_now = true;
                } else {
                    double alpha = rs / pap;
                    for (int64_t i = 0; i < n; i++) {
                        x[i] += alpha * p[i];
                        r[i] -= alpha * ap[i];
                    }
                    double rs2 = dot(r, r, n);
                    for (int64_t i = 0; i < n; i++)
                        p[i] = r[i] + rs2 / rs * p[i];
                    rs = rs2;
                }
            }
            ms_container_release(hp);
            ms_container_release(pc);
            ms_scope_pop();
        }
    }
    if (st == MS_OK) {
        o->grads = from_flat(variables, x); /* the container keeps it past the pop */
        st = o->grads ? MS_OK : err_or(MS_ERR_INTERNAL);
    }
    free(x), free(r), free(p), free(ap);
    ms_container_release(gin);
    ms_container_release(hv);
    ms_container_release(gout);
    ms_container_release(pv);
    ms_container_release(phi);
    ms_container_release(theta);
    ms_scope_pop();
    if (st != MS_OK)
        im_out_release(o);
    return st;
}

ms_status metastep_imaml_step(const ms_container *batch, metastep_cost_fn inner_cost_fn,
                              metastep_cost_fn outer_cost_fn, const ms_container *variables,
                              int inner_grad_steps, double inner_learning_rate,
                              const metastep_imaml_options *opts, metastep_result *out)
{
    if (!out)
        return ms__fail(MS_ERR_NULL_ARG, "%s: out is NULL", FN);
    memset(out, 0, sizeof *out);
    metastep_imaml_options o = opts ? *opts : METASTEP_IMAML_OPTIONS_DEFAULT;
    if (!batch || !variables || !inner_cost_fn)
        return ms__fail(MS_ERR_NULL_ARG, "%s: %s is NULL", FN,
                        !batch ? "batch" : !variables ? "variables" : "the cost function");
    if (inner_grad_steps < 0)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: inner_grad_steps is %d; it must be >= 0", FN,
                        inner_grad_steps);
    if (!isfinite(inner_learning_rate))
        return ms__fail(MS_ERR_INVALID_ARG, "%s: inner_learning_rate %g is not finite", FN,
                        inner_learning_rate);
    if (!(o.lambda > 0) || !isfinite(o.lambda))
        return ms__fail(MS_ERR_INVALID_ARG, "%s: lambda is %g; it must be > 0 and finite", FN,
                        o.lambda);
    if (o.cg_steps < 1)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: cg_steps is %d; it must be >= 1", FN, o.cg_steps);
    if (!(o.cg_tol >= 0))
        return ms__fail(MS_ERR_INVALID_ARG, "%s: cg_tol is %g; it must be >= 0", FN, o.cg_tol);
    if (ms_container_size(variables) == 0)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: variables is empty", FN);
    int64_t lead = -1;
    for (int i = 0; i < ms_container_size(batch); i++) {
        const ms_tensor *t = ms_container_at(batch, i);
        if (ms_tensor_ndim(t) == 0)
            return ms__fail(MS_ERR_SHAPE, "%s: batch leaf '%s' is 0-d; leaves need a leading "
                            "task dimension", FN, ms_container_key(batch, i));
        if (lead >= 0 && ms_tensor_shape(t)[0] != lead)
            return ms__fail(MS_ERR_SHAPE, "%s: batch leaves have different leading dimensions "
                            "('%s')", FN, ms_container_key(batch, i));
        lead = ms_tensor_shape(t)[0];
    }
    if (lead <= 0)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: the batch holds no tasks", FN);
    if (o.num_tasks < 0 || o.num_tasks > lead)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: num_tasks %d is outside [1, %lld]", FN,
                        o.num_tasks, (long long)lead);
    const int nt = o.num_tasks ? o.num_tasks : (int)lead;
    const metastep_optimizer *opt =
        o.inner_optimization_step ? o.inner_optimization_step : &metastep_gradient_descent;
    if (!opt->step)
        return ms__fail(MS_ERR_NULL_ARG, "%s: the inner optimizer's step is NULL", FN);
    im_cfg c = {.inner_fn = inner_cost_fn, .ofn = outer_cost_fn ? outer_cost_fn : inner_cost_fn,
                .steps = inner_grad_steps, .lr = inner_learning_rate, .opt = opt, .o = &o};
    ms_scope_push();
    int n = 0;
    ms_container **subs = NULL;
    ms_status st = ms_container_unstack(batch, true, &n, &subs);
    ms_tensor *total = NULL, *held = NULL;
    ms_container *gsum = NULL, **adapted = calloc((size_t)nt, sizeof *adapted);
    int nad = 0;
    if (st == MS_OK && !adapted)
        st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", FN);
    for (int t = 0; st == MS_OK && t < nt; t++) {
        ms_container *ib = ms__apply_batch_fn(o.inner_batch_fn, subs[t], o.user, FN);
        ms_container *ob = ib ? ms__apply_batch_fn(o.outer_batch_fn, subs[t], o.user, FN) : NULL;
        im_out r;
        st = ob ? im_task(&c, ib, ob, variables, t, &r) : err_or(MS_ERR_INTERNAL);
        if (st == MS_OK) {
            if (!total) { /* the first task's cost: keep its reference */
                held = total = r.cost;
                r.cost = NULL;
            } else {
                total = ms_add(total, r.cost);
            }
            swap_in(&gsum, gsum ? ms_container_add(gsum, r.grads) : ms_container_copy(r.grads));
            if (o.return_inner_v == METASTEP_RETURN_INNER_ALL ||
                (o.return_inner_v == METASTEP_RETURN_INNER_FIRST && t == 0)) {
                adapted[nad++] = r.vars;
                r.vars = NULL;
            }
            st = total && gsum ? MS_OK : err_or(MS_ERR_INTERNAL);
            im_out_release(&r);
        }
        ms_container_release(ib);
        ms_container_release(ob);
    }
    if (st == MS_OK) {
        out->cost = ms_retain(ms_div_scalar(total, (double)nt));
        out->grads = ms_container_div_scalar(gsum, (double)nt);
        if (nad)
            out->inner_v = ms_container_concat(nad, adapted, 0);
        if (!out->cost || !out->grads || (nad && !out->inner_v)) {
            st = err_or(MS_ERR_INTERNAL);
            metastep_result_release(out);
        }
    }
    for (int i = 0; i < nad; i++)
        ms_container_release(adapted[i]);
    free(adapted);
    ms_container_release(gsum);
    ms_release(held);
    for (int i = 0; i < n; i++)
        ms_container_release(subs[i]);
    free(subs);
    ms_scope_pop();
    return st;
}
