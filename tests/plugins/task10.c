/* A task plugin built as the task ABI 1.0 knew it: its table ends at
 * `truth` (header.size says so) and is followed by poison, so a frontend
 * that read the 1.1 slots (configure, sample_heldout) without checking the
 * size would jump to address 1.  Its evaluate writes only the 1.0 members of
 * metastep_eval (it reports an accuracy, but no confidence interval).
 * The task: y = a x with a ~ U[-2, 2]; the model y = w x; MSE. */
#include <stddef.h>
#include <string.h>

#include "metastep/metastep.h"

typedef struct task_v10 {
    ms_plugin_header header;
    ms_container *(*init_variables)(uint64_t seed, ms_dtype dt);
    metastep_cost_fn inner_cost, outer_cost;
    ms_container *(*sample)(int num_tasks, int k, uint64_t seed, ms_dtype dt);
    ms_status (*evaluate)(const ms_container *, int, int, double, uint64_t, ms_dtype,
                          metastep_eval *);
    ms_tensor *(*predict)(const ms_container *, const ms_tensor *);
    ms_tensor *(*truth)(const ms_container *, int, const ms_tensor *);
} task_v10;

static ms_container *init_variables(uint64_t seed, ms_dtype dt)
{
    ms_container *v = ms_container_new();
    ms_tensor *w = ms_random_uniform(dt, 2, (int64_t[]){1, 1}, -1, 1, seed);
    ms_container_set(v, "w", w);
    if (ms_scope_depth() == 0)
        ms_release(w);
    return v;
}

static ms_tensor *mse(const ms_container *b, const ms_container *v, const char *x, const char *y)
{
    ms_tensor *d = ms_sub(ms_matmul(ms_container_get(b, x), ms_container_get(v, "w")),
                          ms_container_get(b, y));
    return ms_mean(ms_square(d), 0, NULL, false);
}
static ms_tensor *inner(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return mse(b, v, "support/x", "support/y");
}
static ms_tensor *outer(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return mse(b, v, "query/x", "query/y");
}

static ms_container *sample(int num_tasks, int k, uint64_t seed, ms_dtype dt)
{
    ms_scope_push();
    int64_t t[3] = {num_tasks, 1, 1}, p[3] = {num_tasks, k, 1};
    ms_tensor *a = ms_random_uniform(dt, 3, t, -2, 2, 4 * seed);
    ms_tensor *xs = ms_random_uniform(dt, 3, p, -1, 1, 4 * seed + 1);
    ms_tensor *xq = ms_random_uniform(dt, 3, p, -1, 1, 4 * seed + 2);
    ms_container *b = ms_container_new();
    ms_container_set(b, "support/x", xs);
    ms_container_set(b, "support/y", ms_mul(a, xs));
    ms_container_set(b, "query/x", xq);
    ms_container_set(b, "query/y", ms_mul(a, xq));
    ms_scope_pop();
    return b;
}

static ms_status evaluate(const ms_container *v, int num_tasks, int k, double lr, uint64_t seed,
                          ms_dtype dt, metastep_eval *out)
{
    (void)lr;
    ms_container *b = sample(num_tasks, k, seed, dt);
    ms_scope_push();
    double l = ms_tensor_item(outer(b, v, NULL));
    ms_scope_pop();
    ms_container_release(b);
    metastep_eval e = {.steps = {0, 1, 10}, .loss = {l, l, l}, .accuracy = {0.5, 0.5, 0.5},
                       .has_accuracy = true};
    memcpy(out, &e, offsetof(metastep_eval, accuracy_ci95)); /* the 1.0 struct's size */
    return MS_OK;
}

static const struct {
    task_v10 table;
    void *poison[4];
} plugin = {
    .table = {.header = {METASTEP_TASK_ABI_MAJOR, 0, sizeof(task_v10), "v10",
                         "test task built against the task ABI 1.0"},
              .init_variables = init_variables, .inner_cost = inner, .outer_cost = outer,
              .sample = sample, .evaluate = evaluate},
    .poison = {(void *)1, (void *)1, (void *)1, (void *)1},
};

MS_PLUGIN_EXPORT const metastep_task *metastep_task_entry(void)
{
    return (const metastep_task *)(const void *)&plugin.table;
}
