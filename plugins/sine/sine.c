/* The sinusoid regression of Finn et al. 2017 (MAML, section 5.1).
 *
 * A task is y = A sin(x - phi) with amplitude A ~ U[0.1, 5] and phase
 * phi ~ U[0, pi]; x ~ U[-5, 5]; K support and K query points.  The model is
 * an MLP 1-40-40-1 with ReLU and the loss the mean squared error.
 *
 * Variables for one task: l1/w (1,40) l1/b (40) l2/w (40,40) l2/b (40)
 * l3/w (40,1) l3/b (1).  In batched mode the meta steps give them a leading
 * task axis, which the forward pass handles through matmul's batching. */
#include <math.h>
#include <stdlib.h>

#include "metastep/metastep.h"

#define HIDDEN 40
#define PI 3.14159265358979323846

static const char *const W[3] = {"l1/w", "l2/w", "l3/w"};
static const char *const B[3] = {"l1/b", "l2/b", "l3/b"};

/* c[key] = t, the container keeping the only reference outside scopes */
static ms_status put(ms_container *c, const char *key, ms_tensor *t)
{
    if (!t)
        return ms_last_error(NULL);
    ms_status st = ms_container_set(c, key, t);
    if (ms_scope_depth() == 0)
        ms_release(t);
    return st;
}

static ms_container *init_variables(uint64_t seed, ms_dtype dt)
{
    /* PyTorch's nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) */
    const int64_t dims[4] = {1, HIDDEN, HIDDEN, 1};
    ms_container *v = ms_container_new();
    for (int l = 0; v && l < 3; l++) {
        double bound = 1.0 / sqrt((double)dims[l]);
        int64_t ws[2] = {dims[l], dims[l + 1]}, bs[1] = {dims[l + 1]};
        if (put(v, W[l], ms_random_uniform(dt, 2, ws, -bound, bound, seed * 16 + 2 * l)) ||
            put(v, B[l], ms_random_uniform(dt, 1, bs, -bound, bound, seed * 16 + 2 * l + 1))) {
            ms_container_release(v);
            return NULL;
        }
    }
    return v;
}

/* A bias of a batched model, (T, n), must broadcast over the points axis. */
static ms_tensor *bias(const ms_tensor *b)
{
    return ms_tensor_ndim(b) == 2 ? ms_expand_dims(b, 1) : (ms_tensor *)b;
}

/* x: (..., K, 1) -> (..., K, 1) */
static ms_tensor *forward(const ms_container *v, const ms_tensor *x)
{
    ms_tensor *h = (ms_tensor *)x;
    for (int l = 0; l < 3; l++) {
        h = ms_add(ms_matmul(h, ms_container_get(v, W[l])), bias(ms_container_get(v, B[l])));
        if (l < 2)
            h = ms_relu(h);
    }
    return h;
}

static ms_tensor *mse(const ms_container *batch, const ms_container *v, const char *x,
                      const char *y)
{
    ms_tensor *d = ms_sub(forward(v, ms_container_get(batch, x)), ms_container_get(batch, y));
    return ms_mean(ms_square(d), 0, NULL, false);
}

static ms_tensor *support_cost(const ms_container *batch, const ms_container *v, void *user)
{
    (void)user;
    return mse(batch, v, "support/x", "support/y");
}

static ms_tensor *query_cost(const ms_container *batch, const ms_container *v, void *user)
{
    (void)user;
    return mse(batch, v, "query/x", "query/y");
}

/* y = A sin(x - phi) with A, phi of shape (T,) broadcast over (T, K, 1) */
static ms_tensor *sine(const ms_tensor *amp, const ms_tensor *phase, const ms_tensor *x)
{
    int64_t s[3] = {ms_tensor_shape(amp)[0], 1, 1};
    return ms_mul(ms_reshape(amp, 3, s), ms_sin(ms_sub(x, ms_reshape(phase, 3, s))));
}

static ms_container *sample(int num_tasks, int k, uint64_t seed, ms_dtype dt)
{
    if (num_tasks < 1 || k < 1) {
        ms_record_error(MS_ERR_INVALID_ARG, "sine: %d tasks of %d points: both must be >= 1",
                        num_tasks, k);
        return NULL;
    }
    ms_no_grad_push();
    ms_scope_push();
    int64_t t1[1] = {num_tasks}, pts[3] = {num_tasks, k, 1};
    uint64_t s = seed * 8;
    ms_tensor *amp = ms_random_uniform(dt, 1, t1, 0.1, 5.0, s);
    ms_tensor *phase = ms_random_uniform(dt, 1, t1, 0.0, PI, s + 1);
    ms_tensor *xs = ms_random_uniform(dt, 3, pts, -5.0, 5.0, s + 2);
    ms_tensor *xq = ms_random_uniform(dt, 3, pts, -5.0, 5.0, s + 3);
    ms_container *b = ms_container_new();
    ms_status st = b ? MS_OK : MS_ERR_NOMEM;
    if (!st) st = put(b, "support/x", xs);
    if (!st) st = put(b, "support/y", sine(amp, phase, xs));
    if (!st) st = put(b, "query/x", xq);
    if (!st) st = put(b, "query/y", sine(amp, phase, xq));
    if (!st) st = put(b, "task/amplitude", amp);
    if (!st) st = put(b, "task/phase", phase);
    ms_scope_pop();
    ms_no_grad_pop();
    if (st) {
        ms_container_release(b);
        return NULL;
    }
    return b;
}


static ms_tensor *support_of(const ms_container *v, void *batch)
{
    return support_cost(batch, v, NULL);
}

/* All tasks adapt at once: the cost is the mean over tasks, so each copy's
 * gradient is 1/T of its task's; scaling by T gives per-task descent. */
static ms_status evaluate(const ms_container *variables, int num_tasks, int k, double inner_lr,
                          uint64_t seed, ms_dtype dt, metastep_eval *out)
{
    if (!variables || !out || num_tasks < 1 || k < 1)
        return ms_record_error(MS_ERR_INVALID_ARG, "sine evaluate: bad arguments (%d tasks, "
                               "k %d)", num_tasks, k);
    *out = (metastep_eval){.steps = {0, 1, 10}, .has_accuracy = false};
    ms_container *batch = sample(num_tasks, k, seed, dt);
    ms_container *v = batch ? ms_container_replicate(variables, num_tasks) : NULL;
    ms_status st = v ? MS_OK : ms_last_error(NULL);
    int point = 0;
    for (int step = 0; st == MS_OK && step <= 10; step++) {
        ms_scope_push();
        if (step == out->steps[point]) {
            ms_no_grad_push();
            out->loss[point++] = ms_tensor_item(query_cost(batch, v, NULL));
            ms_no_grad_pop();
        }
        if (step < 10) {
            ms_container *g = NULL, *scaled = NULL, *next = NULL;
            ms_tensor *y = NULL;
            st = ms_execute_with_gradients(support_of, batch, v, false, &y, &g);
            if (st == MS_OK)
                scaled = ms_container_mul_scalar(g, (double)num_tasks);
            if (scaled)
                next = metastep_gradient_descent_update(v, scaled, inner_lr, true);
            if (st == MS_OK && !next)
                st = ms_last_error(NULL);
            if (next) {
                ms_container_release(v);
                v = next;
            }
            ms_container_release(scaled);
            ms_container_release(g);
        }
        ms_scope_pop();
    }
    ms_container_release(v);
    ms_container_release(batch);
    return st;
}

static ms_tensor *predict(const ms_container *variables, const ms_tensor *x)
{
    return forward(variables, x);
}

static ms_tensor *truth(const ms_container *batch, int task, const ms_tensor *x)
{
    ms_tensor *amp = ms_slice(ms_container_get(batch, "task/amplitude"), 0, task, task + 1);
    ms_tensor *phase = ms_slice(ms_container_get(batch, "task/phase"), 0, task, task + 1);
    return ms_mul(amp, ms_sin(ms_sub(x, phase)));
}

static const metastep_task table = {
    .header = {METASTEP_TASK_ABI_MAJOR, METASTEP_TASK_ABI_MINOR, sizeof(metastep_task), "sine",
               "sinusoid regression (Finn et al. 2017): A in [0.1,5], phase in [0,pi], "
               "x in [-5,5]; MLP 1-40-40-1 ReLU, MSE"},
    .init_variables = init_variables,
    .inner_cost = support_cost,
    .outer_cost = query_cost,
    .sample = sample,
    .evaluate = evaluate,
    .predict = predict,
    .truth = truth,
};

MS_PLUGIN_EXPORT const metastep_task *metastep_task_entry(void) { return &table; }
