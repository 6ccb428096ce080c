/* The command's side of Meta-SGD, MAML++ and ANIL (variants.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "variants.h"

#define PREFIX METASTEP_INNER_LR_PREFIX
#define PREFIX_LEN (sizeof PREFIX - 1)

void variant_head(const ms_container *model, char *buf, size_t cap, const char *chains[2])
{
    int n = ms_container_size(model);
    const char *last = n ? ms_container_key(model, n - 1) : "";
    const char *slash = strrchr(last, '/');
    snprintf(buf, cap, "%.*s", slash ? (int)(slash - last) : (int)strlen(last), last);
    chains[0] = buf;
    chains[1] = NULL;
}

ms_status variant_split(const ms_container *params, ms_container **model, ms_container **rates)
{
    *model = ms_container_new();
    *rates = ms_container_new();
    ms_status st = *model && *rates ? MS_OK : MS_ERR_NOMEM;
    for (int i = 0; st == MS_OK && i < ms_container_size(params); i++) {
        const char *key = ms_container_key(params, i);
        bool rate = strncmp(key, PREFIX, PREFIX_LEN) == 0;
        st = ms_container_set(rate ? *rates : *model, rate ? key + PREFIX_LEN : key,
                              ms_container_at(params, i));
    }
    if (st != MS_OK) {
        ms_container_release(*model);
        ms_container_release(*rates);
        *model = *rates = NULL;
    }
    return st;
}

bool variant_per_step(const ms_container *model, const ms_container *rates)
{
    for (int i = 0; i < ms_container_size(rates); i++) {
        const ms_tensor *r = ms_container_at(rates, i);
        const ms_tensor *v = ms_container_has(model, ms_container_key(rates, i))
                                 ? ms_container_get(model, ms_container_key(rates, i)) : NULL;
        if (!v || ms_tensor_ndim(r) != ms_tensor_ndim(v))
            return true;
        for (int d = 0; d < ms_tensor_ndim(r); d++)
            if (ms_tensor_shape(r)[d] != ms_tensor_shape(v)[d])
                return true;
    }
    return false;
}

ms_container *variant_with_rates(const ms_container *model, const char *const *inner_v,
                                 bool per_step, int steps, double lr)
{
    ms_container *r = metastep_inner_lr_init(model, inner_v, true, per_step, steps, lr);
    ms_container *out = r ? ms_container_copy(model) : NULL;
    char key[512];
    for (int i = 0; out && i < ms_container_size(r); i++) {
        snprintf(key, sizeof key, "%s%s", PREFIX, ms_container_key(r, i));
        if (ms_container_set(out, key, ms_container_at(r, i)) != MS_OK) {
            ms_container_release(out);
            out = NULL;
        }
    }
    ms_container_release(r);
    return out;
}

typedef struct cost_ctx {
    const metastep_task *task;
    const ms_container *sub, *full;
} cost_ctx;

/* The support cost with the adapting variables xs put into the full set. */
static ms_tensor *support_with(const ms_container *xs, void *user)
{
    cost_ctx *c = user;
    ms_container *v = ms_container_set_at_key_chains(c->full, xs);
    ms_tensor *y = v ? c->task->inner_cost(c->sub, v, NULL) : NULL;
    ms_container_release(v);
    return y;
}

/* One adaptation step (step index i) of v; a new container or NULL. */
static ms_container *adapt_step(const metastep_task *task, const ms_container *sub,
                                const ms_container *v, const variant_adapt *a, int i)
{
    ms_container *sel = a->inner_v ? ms_container_at_key_chains(v, a->inner_v) : ms_container_copy(v);
    cost_ctx ctx = {task, sub, v};
    ms_tensor *y = NULL;
    ms_container *g = NULL, *upd = NULL, *next = NULL;
    ms_scope_push();
    if (sel && ms_execute_with_gradients(support_with, &ctx, sel, false, &y, &g) == MS_OK) {
        if (!a->rates) {
            upd = metastep_gradient_descent_update(sel, g, a->lr, true);
        } else {
            ms_no_grad_push();
            upd = ms_container_new();
            for (int k = 0; upd && k < ms_container_size(sel); k++) {
                const char *key = ms_container_key(sel, k);
                ms_tensor *r = ms_container_get(a->rates, key);
                if (r && a->per_step) {
                    int64_t s = ms_tensor_shape(r)[0], at = i < s ? i : s - 1;
                    r = ms_reshape(ms_slice(r, 0, at, at + 1), ms_tensor_ndim(r) - 1,
                                   ms_tensor_shape(r) + 1);
                }
                ms_tensor *t = ms_sub(ms_container_at(sel, k), ms_mul(r, ms_container_get(g, key)));
                if (!t || ms_container_set(upd, key, t) != MS_OK) {
                    ms_container_release(upd);
                    upd = NULL;
                }
            }
            ms_no_grad_pop();
        }
    }
    next = upd ? ms_container_set_at_key_chains(v, upd) : NULL;
    ms_scope_pop();
    ms_container_release(upd);
    ms_container_release(g);
    ms_container_release(sel);
    return next;
}

ms_container *variant_adapt_task(const metastep_task *task, const ms_container *sub,
                                 const ms_container *model, const variant_adapt *a, int steps)
{
    ms_container *v = ms_container_copy(model);
    for (int i = 0; v && i < steps; i++) {
        ms_container *next = adapt_step(task, sub, v, a, i);
        ms_container_release(v);
        v = next;
    }
    return v;
}

/* Fraction of rows whose largest logit is the one-hot's label. */
static double accuracy_of(const ms_tensor *logits, const ms_tensor *onehot)
{
    int64_t n = ms_tensor_shape(logits)[0], k = ms_tensor_shape(logits)[1], right = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t best = 0, label = 0;
        for (int64_t j = 1; j < k; j++) {
            if (util_value(logits, i * k + j) > util_value(logits, i * k + best))
                best = j;
            if (util_value(onehot, i * k + j) > util_value(onehot, i * k + label))
                label = j;
        }
        right += best == label;
    }
    return n ? (double)right / (double)n : 0.0;
}

ms_status variant_evaluate(const metastep_task *task, const ms_container *model,
                           const variant_adapt *a, int num_tasks, int k, uint64_t seed,
                           ms_dtype dt, bool accuracy, metastep_eval *out)
{
    *out = (metastep_eval){.steps = {0, 1, 10}, .has_accuracy = accuracy};
    for (int p = 0; p < METASTEP_EVAL_POINTS; p++)
        out->accuracy[p] = out->accuracy_ci95[p] = NAN;
    bool held = METASTEP_TASK_HAS_SLOT(task, sample_heldout) && task->sample_heldout;
    ms_container *batch = (held ? task->sample_heldout : task->sample)(num_tasks, k, seed, dt);
    if (!batch)
        return ms_last_error(NULL);
    int n = 0;
    ms_container **subs = NULL;
    ms_status st = ms_container_unstack(batch, true, &n, &subs);
    double *acc = calloc((size_t)n * METASTEP_EVAL_POINTS + 1, sizeof *acc);
    if (st == MS_OK && !acc)
        st = ms_record_error(MS_ERR_NOMEM, "evaluate: out of memory");
    for (int p = 0; p < METASTEP_EVAL_POINTS; p++)
        out->loss[p] = 0;
    for (int t = 0; st == MS_OK && t < n; t++) {
        ms_container *v = ms_container_copy(model);
        int point = 0;
        for (int step = 0; v && st == MS_OK && step <= 10; step++) {
            if (step == out->steps[point]) {
                ms_scope_push();
                ms_no_grad_push();
                ms_tensor *loss = task->outer_cost(subs[t], v, NULL);
                if (!loss) {
                    st = ms_last_error(NULL);
                } else {
                    out->loss[point] += ms_tensor_item(loss) / n;
                    if (accuracy) {
                        ms_tensor *qx = ms_squeeze(ms_container_get(subs[t], "query/x"), 0);
                        ms_tensor *qy = ms_squeeze(ms_container_get(subs[t], "query/y"), 0);
                        ms_tensor *logits = qx && qy ? task->predict(v, qx) : NULL;
                        if (!logits)
                            st = ms_last_error(NULL);
                        else
                            acc[(size_t)point * n + t] = accuracy_of(logits, qy);
                    }
                }
                point++;
                ms_no_grad_pop();
                ms_scope_pop();
            }
            if (st == MS_OK && step < 10) {
                ms_container *next = adapt_step(task, subs[t], v, a, step);
                ms_container_release(v);
                v = next;
                if (!v)
                    st = ms_last_error(NULL) != MS_OK ? ms_last_error(NULL) : MS_ERR_INTERNAL;
            }
        }
        ms_container_release(v);
    }
    for (int p = 0; st == MS_OK && accuracy && p < METASTEP_EVAL_POINTS; p++) {
        double m = 0, ss = 0;
        for (int t = 0; t < n; t++)
            m += acc[(size_t)p * n + t] / n;
        for (int t = 0; t < n; t++)
            ss += (acc[(size_t)p * n + t] - m) * (acc[(size_t)p * n + t] - m);
        out->accuracy[p] = m;
        out->accuracy_ci95[p] = n > 1 ? 1.96 * sqrt(ss / (n - 1)) / sqrt((double)n) : NAN;
    }
    for (int t = 0; t < n; t++)
        ms_container_release(subs[t]);
    free(subs);
    free(acc);
    ms_container_release(batch);
    return st;
}
