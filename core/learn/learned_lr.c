/* Learned inner learning rates (Meta-SGD, MAML++ LSLR), MAML++'s multi-step
 * loss schedule and derivative-order annealing: the parts that are not the
 * meta steps' own loop (core/learn/meta.c calls these at its hooks).
 * docs/variants.md states what is computed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "learn/learn.h"

#define PREFIX METASTEP_INNER_LR_PREFIX
#define PREFIX_LEN (sizeof PREFIX - 1)

bool ms__llr_is_rate_key(const char *key)
{
    return key && strncmp(key, PREFIX, PREFIX_LEN) == 0;
}

/* c[key] = t, a new reference handed over (NULL: the op failed). */
static ms_status adopt(ms_container *c, const char *fn, const char *key, ms_tensor *t)
{
    return ms__container_adopt(c, fn, key, t);
}

static ms_container *inner_vars(const ms_container *variables, const char *const *inner_v,
                                bool keep)
{
    if (!inner_v)
        return ms_container_copy(variables);
    return keep ? ms_container_at_key_chains(variables, inner_v)
                : ms_container_prune_key_chains(variables, inner_v);
}

static void shape_str(char *b, size_t n, int ndim, const int64_t *s)
{
    size_t used = (size_t)snprintf(b, n, "(");
    for (int i = 0; i < ndim && used < n; i++)
        used += (size_t)snprintf(b + used, n - used, "%s%lld", i ? "," : "", (long long)s[i]);
    if (used < n)
        snprintf(b + used, n - used, ")");
}

ms_status ms__llr_validate(const char *fn, const metastep_options *o,
                           const ms_container *variables, int steps,
                           const metastep_optimizer *opt, bool batched)
{
    if (o->step_weights) {
        if (o->average_across_steps)
            return ms__fail(MS_ERR_INVALID_ARG, "%s: step_weights and average_across_steps are "
                            "both set; average_across_steps is the uniform step_weights, give "
                            "one of them", fn);
        for (int i = 0; i <= steps; i++)
            if (!isfinite(o->step_weights[i]))
                return ms__fail(MS_ERR_INVALID_ARG, "%s: step_weights[%d] is %g; the weights "
                                "must be finite", fn, i, o->step_weights[i]);
    }
    const ms_container *rates = o->inner_learning_rates;
    if (!rates) {
        if (o->inner_lr_per_step)
            return ms__fail(MS_ERR_INVALID_ARG, "%s: inner_lr_per_step is set but "
                            "inner_learning_rates is NULL", fn);
        return MS_OK;
    }
    if (opt && opt->step != metastep_gradient_descent.step)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: learned inner learning rates need plain "
                        "gradient descent as the inner step, not '%s'", fn,
                        opt->name ? opt->name : "a user optimizer");
    if (o->inner_lr_per_step && steps < 1)
        return ms__fail(MS_ERR_INVALID_ARG, "%s: per-step learned rates with %d inner steps", fn,
                        steps);
    for (int i = 0; i < ms_container_size(variables); i++)
        if (ms__llr_is_rate_key(ms_container_key(variables, i)))
            return ms__fail(MS_ERR_KEY, "%s: the variable '%s' is under '%s', where the learned "
                            "rates' gradients go", fn, ms_container_key(variables, i), PREFIX);
    ms_container *iv = inner_vars(variables, o->inner_v, o->keep_inner_v);
    if (!iv)
        return ms_last_error(NULL);
    ms_status st = MS_OK;
    for (int i = 0; st == MS_OK && i < ms_container_size(iv); i++)
        if (!ms_container_has(rates, ms_container_key(iv, i)))
            st = ms__fail(MS_ERR_KEY, "%s: the inner variable '%s' has no learned rate in "
                          "inner_learning_rates", fn, ms_container_key(iv, i));
    for (int i = 0; st == MS_OK && i < ms_container_size(rates); i++) {
        const char *key = ms_container_key(rates, i);
        const ms_tensor *r = ms_container_at(rates, i);
        if (!ms_container_has(iv, key)) {
            st = ms__fail(MS_ERR_KEY, "%s: inner_learning_rates names '%s', which is not an "
                          "inner variable", fn, key);
            break;
        }
        const ms_tensor *v = ms_container_get(iv, key);
        if (ms_tensor_dtype(r) != ms_tensor_dtype(v)) {
            st = ms__fail(MS_ERR_DTYPE, "%s: the learned rate of '%s' is %s, the variable %s",
                          fn, key, ms_dtype_name(ms_tensor_dtype(r)),
                          ms_dtype_name(ms_tensor_dtype(v)));
            break;
        }
        int rn = ms_tensor_ndim(r), vn = ms_tensor_ndim(v);
        const int64_t *rs = ms_tensor_shape(r), *vs = ms_tensor_shape(v);
        char rb[128], vb[128];
        shape_str(rb, sizeof rb, rn, rs);
        if (batched) { /* the per-task shape */
            vn--;
            vs++;
        }
        shape_str(vb, sizeof vb, vn, vs);
        if (o->inner_lr_per_step) {
            if (rn < 1 || rs[0] != steps) {
                st = ms__fail(MS_ERR_SHAPE, "%s: the per-step learned rate of '%s' has shape %s; "
                              "its leading axis must be the %d inner steps", fn, key, rb, steps);
                break;
            }
            rn--;
            rs++;
        }
        bool ok = rn <= vn;
        for (int d = 0; ok && d < rn; d++)
            ok = rs[d] == 1 || rs[d] == vs[vn - rn + d];
        if (!ok) {
            st = ms__fail(MS_ERR_SHAPE, "%s: the learned rate of '%s' has shape %s, which does "
                          "not broadcast against the variable's %s%s", fn, key, rb, vb,
                          batched ? " (one task's)" : "");
            break;
        }
        const int64_t n = ms_tensor_numel(r);
        const void *d = ms_tensor_data(r);
        for (int64_t j = 0; j < n; j++) {
            double x = ms_tensor_dtype(r) == MS_F32 ? (double)((const float *)d)[j]
                                                    : ((const double *)d)[j];
            if (!isfinite(x)) {
                st = ms__fail(MS_ERR_NUMERIC, "%s: the learned rate of '%s' is %g at element "
                              "%lld", fn, key, x, (long long)j);
                break;
            }
        }
    }
    ms_container_release(iv);
    return st;
}

ms_container *ms__llr_leaves(const ms_container *rates)
{
    ms_container *out = ms_container_new();
    for (int i = 0; out && i < ms_container_size(rates); i++)
        if (adopt(out, "meta", ms_container_key(rates, i), ms_variable(ms_container_at(rates, i))) !=
            MS_OK) {
            ms_container_release(out);
            return NULL;
        }
    return out;
}

ms_container *ms__llr_join(const ms_container *vars, const ms_container *rates)
{
    ms_container *out = ms_container_copy(vars);
    char key[1024];
    for (int i = 0; out && i < ms_container_size(rates); i++) {
        snprintf(key, sizeof key, "%s%s", PREFIX, ms_container_key(rates, i));
        if (ms_container_set(out, key, ms_container_at(rates, i)) != MS_OK) {
            ms_container_release(out);
            return NULL;
        }
    }
    return out;
}

ms_container *ms__llr_same_keys(const ms_container *vars, const ms_container *rates,
                                const ms_container *like)
{
    ms_container *out = ms_container_new();
    for (int i = 0; out && i < ms_container_size(like); i++) {
        const char *key = ms_container_key(like, i);
        ms_tensor *t = ms__llr_is_rate_key(key) ? ms_container_get(rates, key + PREFIX_LEN)
                                                : ms_container_get(vars, key);
        if (!t || ms_container_set(out, key, t) != MS_OK) {
            ms_container_release(out);
            return NULL;
        }
    }
    return out;
}

/* Step i's rate: the whole tensor, or its slice i without the step axis. */
static ms_tensor *rate_at(const ms_tensor *r, bool per_step, int i)
{
    if (!per_step)
        return (ms_tensor *)r;
    return ms_reshape(ms_slice(r, 0, i, i + 1), ms_tensor_ndim(r) - 1, ms_tensor_shape(r) + 1);
}

ms_container *ms__llr_update(const ms_container *rates, bool per_step, int step,
                             const ms_container *w, const ms_container *g, bool stop)
{
    ms_container *out = ms_container_new();
    for (int i = 0; out && i < ms_container_size(w); i++) {
        const char *key = ms_container_key(w, i);
        ms_tensor *r = rate_at(ms_container_get(rates, key), per_step, step);
        ms_tensor *t = ms_sub(ms_container_at(w, i), ms_mul(r, ms_container_get(g, key)));
        if (stop)
            t = ms_stop_gradient(t);
        if (ms_container_set(out, key, t) != MS_OK) {
            ms_container_release(out);
            return NULL;
        }
    }
    return out;
}

/* x summed over the axes that broadcasting added to (or stretched in) a
 * tensor of shape (rn, rs), and given that shape. */
static ms_tensor *reduce_to(const ms_tensor *x, int rn, const int64_t *rs)
{
    if (!x)
        return NULL;
    int n = ms_tensor_ndim(x), axes[MS_MAX_DIMS], na = 0;
    const int64_t *xs = ms_tensor_shape(x);
    for (int d = 0; d < n - rn; d++)
        axes[na++] = d;
    for (int d = 0; d < rn; d++)
        if (rs[d] == 1 && xs[n - rn + d] != 1)
            axes[na++] = n - rn + d;
    ms_tensor *s = na ? ms_sum(x, na, axes, false) : (ms_tensor *)x;
    return ms_reshape(s, rn, rs);
}

ms_container *ms__llr_fo_grads(const ms_container *rates, bool per_step, const ms_container *G,
                               ms_container *const *hist, int j, double scale)
{
    ms_container *out = ms_container_new();
    char key[1024];
    for (int k = 0; out && k < ms_container_size(rates); k++) {
        const char *name = ms_container_key(rates, k);
        const ms_tensor *r = ms_container_at(rates, k);
        const ms_tensor *gk = ms_container_get(G, name);
        int rn = ms_tensor_ndim(r) - (per_step ? 1 : 0);
        const int64_t *rs = ms_tensor_shape(r) + (per_step ? 1 : 0);
        const int steps = per_step ? (int)ms_tensor_shape(r)[0] : 0;
        ms_tensor *res = NULL;
        if (per_step) {
            ms_tensor *parts[256], **p = steps <= 256 ? parts : malloc(sizeof *p * (size_t)steps);
            for (int i = 0; p && i < steps; i++)
                p[i] = i < j ? reduce_to(ms_mul(gk, ms_container_get(hist[i], name)), rn, rs)
                             : ms_zeros(ms_tensor_dtype(r), rn, rs);
            res = p ? ms_stack(steps, p, 0) : NULL;
            if (p != parts)
                free(p);
        } else {
            res = j == 0 ? ms_zeros(ms_tensor_dtype(r), rn, rs) : NULL;
            for (int i = 0; i < j; i++) {
                ms_tensor *t = reduce_to(ms_mul(gk, ms_container_get(hist[i], name)), rn, rs);
                res = res ? ms_add(res, t) : t;
            }
        }
        res = ms_mul_scalar(res, -scale);
        snprintf(key, sizeof key, "%s%s", PREFIX, name);
        if (!res || ms_container_set(out, key, res) != MS_OK) {
            ms_container_release(out);
            out = NULL;
        }
    }
    return out;
}

ms_container *ms__llr_reduce_tasks(const ms_container *g, bool mean)
{
    ms_container *out = ms_container_new();
    const int axis0[1] = {0};
    for (int i = 0; out && i < ms_container_size(g); i++) {
        const char *key = ms_container_key(g, i);
        ms_tensor *t = ms_container_at(g, i);
        if (!ms__llr_is_rate_key(key))
            t = mean ? ms_mean(t, 1, axis0, false) : ms_sum(t, 1, axis0, false);
        if (!t || ms_container_set(out, key, t) != MS_OK) {
            ms_container_release(out);
            return NULL;
        }
    }
    return out;
}

/* ------------------------------------------------------ public helpers */

ms_container *metastep_inner_lr_init(const ms_container *variables, const char *const *inner_v,
                                     bool keep_inner_v, bool per_step, int steps, double value)
{
    const char *fn = "metastep_inner_lr_init";
    if (!variables) {
        ms__fail(MS_ERR_NULL_ARG, "%s: variables is NULL", fn);
        return NULL;
    }
    if ((per_step && steps < 1) || !isfinite(value)) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: %s", fn,
                 !isfinite(value) ? "the value is not finite" : "per-step rates need steps >= 1");
        return NULL;
    }
    ms_container *iv = inner_vars(variables, inner_v, keep_inner_v);
    ms_container *out = iv ? ms_container_new() : NULL;
    ms_scope_push();
    for (int i = 0; out && i < ms_container_size(iv); i++) {
        const ms_tensor *v = ms_container_at(iv, i);
        int64_t s1[1] = {steps};
        ms_tensor *t = per_step ? ms_full(ms_tensor_dtype(v), 1, s1, value)
                                : ms_full(ms_tensor_dtype(v), ms_tensor_ndim(v),
                                          ms_tensor_shape(v), value);
        if (!t || ms_container_set(out, ms_container_key(iv, i), t) != MS_OK) {
            ms_container_release(out);
            out = NULL;
        }
    }
    ms_scope_pop();
    ms_container_release(iv);
    return out;
}

bool metastep_msl_weights(int steps, long meta_step, long anneal_steps, double *weights)
{
    if (steps < 1 || anneal_steps < 1 || !weights)
        return false;
    const double S = steps, lo = 0.03 / S;
    weights[0] = 0;
    if (meta_step >= anneal_steps) {
        for (int i = 1; i < steps; i++)
            weights[i] = 0;
        weights[steps] = 1;
        return false;
    }
    const double e = meta_step < 0 ? 0 : (double)meta_step, d = 1.0 / S / (double)anneal_steps;
    for (int i = 1; i < steps; i++)
        weights[i] = fmax(1.0 / S - e * d, lo);
    weights[steps] = fmin(1.0 / S + e * (S - 1) * d, 1.0 - (S - 1) * lo);
    return true;
}

ms_status metastep_annealed_maml_step(long meta_step, long first_order_until,
                                      const ms_container *batch, metastep_cost_fn inner_cost_fn,
                                      metastep_cost_fn outer_cost_fn,
                                      const ms_container *variables, int inner_grad_steps,
                                      double inner_learning_rate, const metastep_options *opts,
                                      metastep_result *out)
{
    return (meta_step < first_order_until ? metastep_fomaml_step : metastep_maml_step)(
        batch, inner_cost_fn, outer_cost_fn, variables, inner_grad_steps, inner_learning_rate,
        opts, out);
}
