/* The six-task model test_meta_threads and test_meta_shard share: a small
 * tanh network on T tasks, inner and outer costs that can be made to fail
 * on a chosen task (failing[]), a batch function, the batch and variables
 * (optionally already requiring a gradient), the configuration of one
 * compared step (cfg), the step itself and bit-for-bit comparisons.  Included once per test program. */
#ifndef METASTEP_TESTS_SIX_TASKS_H
#define METASTEP_TESTS_SIX_TASKS_H

#include <check.h>
#include <stdbool.h>

#include "metastep/metastep.h"

enum { T = 6, P = 5, D = 3, H = 4 };

static void put(ms_container *c, const char *key, ms_tensor *t)
{
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(ms_container_set(c, key, t), MS_OK);
    ms_release(t);
}

/* pred = tanh(x @ l/w + l/b) @ h/w; cost = mean((pred - y)^2) */
static ms_tensor *cost_on(const ms_container *b, const ms_container *v, const char *x,
                          const char *y)
{
    ms_tensor *hid = ms_tanh(ms_add(ms_matmul(ms_container_get(b, x), ms_container_get(v, "l/w")),
                                    ms_container_get(v, "l/b")));
    ms_tensor *pred = ms_matmul(hid, ms_container_get(v, "h/w"));
    return ms_mean(ms_square(ms_sub(pred, ms_container_get(b, y))), 0, NULL, false);
}

/* Tasks whose id is in `failing` refuse (unbatched only: a sub-batch holds
 * one id). */
static int failing[2] = {-1, -1};

static ms_tensor *inner_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    ms_tensor *id = ms_container_get(b, "id");
    if (id && ms_tensor_numel(id) == 1) {
        int t = (int)ms_tensor_item(id);
        if (t == failing[0] || t == failing[1]) {
            ms_record_error(MS_ERR_INVALID_ARG, "task %d refuses", t);
            return NULL;
        }
    }
    return cost_on(b, v, "xs", "ys");
}

static ms_tensor *outer_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return cost_on(b, v, "xq", "yq");
}

static ms_container *halve(const ms_container *b, void *u)
{
    (void)u;
    return ms_container_mul_scalar(b, 0.5);
}

static ms_container *make_batch(void)
{
    ms_container *b = ms_container_new();
    int64_t sx[3] = {T, P, D}, sy[3] = {T, P, 1}, sid[2] = {T, 1};
    put(b, "xs", ms_random_uniform(MS_F32, 3, sx, -1, 1, 1));
    put(b, "ys", ms_random_uniform(MS_F32, 3, sy, -1, 1, 2));
    put(b, "xq", ms_random_uniform(MS_F32, 3, sx, -1, 1, 3));
    put(b, "yq", ms_random_uniform(MS_F32, 3, sy, -1, 1, 4));
    put(b, "id", ms_arange(MS_F32, 0, T, 1));
    ms_container *r = ms_container_new();
    for (int i = 0; i < ms_container_size(b); i++) {
        ms_tensor *t = ms_container_at(b, i);
        if (strcmp(ms_container_key(b, i), "id") == 0)
            put(r, "id", ms_reshape(t, 2, sid));
        else
            ck_assert_int_eq(ms_container_set(r, ms_container_key(b, i), t), MS_OK);
    }
    ms_container_release(b);
    return r;
}

static ms_container *make_vars(bool requires_grad)
{
    ms_container *v = ms_container_new();
    int64_t sw[2] = {D, H}, sb[1] = {H}, sh[2] = {H, 1};
    ms_tensor *w = ms_random_uniform(MS_F32, 2, sw, -1, 1, 5);
    ms_tensor *b = ms_random_uniform(MS_F32, 1, sb, -0.5, 0.5, 6);
    ms_tensor *h = ms_random_uniform(MS_F32, 2, sh, -1, 1, 7);
    if (requires_grad) {
        put(v, "l/w", ms_variable(w));
        put(v, "l/b", ms_variable(b));
        put(v, "h/w", ms_variable(h));
        ms_release(w);
        ms_release(b);
        ms_release(h);
    } else {
        put(v, "l/w", w);
        put(v, "l/b", b);
        put(v, "h/w", h);
    }
    return v;
}

typedef struct cfg {
    int alg; /* 0 maml, 1 fomaml, 2 reptile */
    bool batched, mask, batch_fn, stop, avg, rg;
    metastep_return_inner ret;
} cfg;

static const char *const head_only[] = {"h/w", NULL};

/* One step of c on threads threads, sharded when shard is not NULL. */
static ms_status step(const cfg *c, const ms_container *batch, const ms_container *vars,
                      int threads, const metastep_shard *shard, metastep_result *r)
{
    if (c->alg == 2) {
        metastep_reptile_options o = METASTEP_REPTILE_OPTIONS_DEFAULT;
        o.batched = c->batched;
        o.return_inner_v = c->ret;
        o.stop_gradients = c->stop;
        o.threads = threads;
        o.shard = shard;
        return metastep_reptile_step(batch, inner_cost, vars, 2, 0.1, &o, r);
    }
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = c->batched;
    o.inner_v = c->mask ? head_only : NULL;
    o.inner_batch_fn = c->batch_fn ? halve : NULL;
    o.outer_batch_fn = c->batch_fn ? halve : NULL;
    o.average_across_steps = c->avg;
    o.return_inner_v = c->ret;
    o.stop_gradients = c->stop;
    o.threads = threads;
    o.shard = shard;
    return (c->alg == 0 ? metastep_maml_step : metastep_fomaml_step)(batch, inner_cost, outer_cost,
                                                                      vars, 2, 0.1, &o, r);
}

static bool same_tensor(const ms_tensor *a, const ms_tensor *b)
{
    if (!a || !b)
        return a == b;
    if (ms_tensor_dtype(a) != ms_tensor_dtype(b) || ms_tensor_numel(a) != ms_tensor_numel(b) ||
        ms_tensor_ndim(a) != ms_tensor_ndim(b))
        return false;
    return memcmp(ms_tensor_data(a), ms_tensor_data(b),
                  (size_t)ms_tensor_numel(a) * ms_dtype_size(ms_tensor_dtype(a))) == 0;
}

static bool same_container(const ms_container *a, const ms_container *b)
{
    if (!a || !b)
        return a == b;
    if (ms_container_size(a) != ms_container_size(b))
        return false;
    for (int i = 0; i < ms_container_size(a); i++)
        if (strcmp(ms_container_key(a, i), ms_container_key(b, i)) != 0 ||
            !same_tensor(ms_container_at(a, i), ms_container_at(b, i)))
            return false;
    return true;
}

#endif
