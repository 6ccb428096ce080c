/* fewshot — 5-way 1-shot image classification with MAML (Finn et al. 2017,
 * section 5.2) using the library API: the Conv4 model and its costs are
 * written here with ms_conv2d, ms_batch_norm, ms_max_pool2d and
 * ms_softmax_cross_entropy; the episodes come from the `images` task plugin
 * (Fashion-MNIST by default: meta-training on classes 0,2,4,6,8, held-out
 * evaluation on the unseen classes 1,3,5,7,9).
 *
 *   build/examples/fewshot [STEPS] [FILTERS] [DATA]
 *   METASTEP_BACKEND=openblas build/examples/fewshot 300 16
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "metastep/metastep.h"

#define WAYS 5
#define SHOTS 1
#define QUERY 5       /* query images per class */
#define TASKS 4       /* episodes per meta-step */
#define INNER_LR 0.4  /* one adaptation step, as in the MAML paper */
#define OUTER_LR 1e-3 /* Adam on the meta-parameters */
#define EVAL_TASKS 20

static int filters = 32;

/* Ops return tensors owned by the open scope; outside any scope the
 * container must own the only reference. */
static void put(ms_container *c, const char *key, ms_tensor *t)
{
    ms_container_set(c, key, t);
    if (ms_scope_depth() == 0)
        ms_release(t);
}

/* Conv4: four blocks of conv 3x3 (padding 1), batch norm, ReLU, max-pool 2x2;
 * 28 -> 14 -> 7 -> 3 -> 1, then a linear layer to WAYS logits. */
static ms_container *init_model(uint64_t seed)
{
    ms_container *v = ms_container_new();
    char key[64];
    for (int b = 1; b <= 4; b++) {
        int in = b == 1 ? 1 : filters;
        double r = 1.0 / sqrt(9.0 * in);
        int64_t w[4] = {filters, in, 3, 3}, f[1] = {filters};
        snprintf(key, sizeof key, "block%d/conv/w", b);
        put(v, key, ms_random_uniform(MS_F32, 4, w, -r, r, seed + 4 * b));
        snprintf(key, sizeof key, "block%d/conv/b", b);
        put(v, key, ms_random_uniform(MS_F32, 1, f, -r, r, seed + 4 * b + 1));
        snprintf(key, sizeof key, "block%d/bn/gamma", b);
        put(v, key, ms_ones(MS_F32, 1, f));
        snprintf(key, sizeof key, "block%d/bn/beta", b);
        put(v, key, ms_zeros(MS_F32, 1, f));
    }
    double r = 1.0 / sqrt((double)filters);
    put(v, "head/w", ms_random_uniform(MS_F32, 2, (int64_t[]){filters, WAYS}, -r, r, seed + 100));
    put(v, "head/b", ms_random_uniform(MS_F32, 1, (int64_t[]){WAYS}, -r, r, seed + 101));
    return v;
}

/* logits (n, WAYS) of images x (n, 1, 28, 28) */
static ms_tensor *forward(const ms_container *v, const ms_tensor *x)
{
    ms_tensor *h = (ms_tensor *)x;
    char w[32], b[32], g[32], be[32];
    for (int k = 1; k <= 4; k++) {
        snprintf(w, sizeof w, "block%d/conv/w", k);
        snprintf(b, sizeof b, "block%d/conv/b", k);
        snprintf(g, sizeof g, "block%d/bn/gamma", k);
        snprintf(be, sizeof be, "block%d/bn/beta", k);
        h = ms_conv2d(h, ms_container_get(v, w), ms_container_get(v, b), 1, 1);
        /* training-mode statistics of the set itself, as in MAML */
        h = ms_batch_norm(h, ms_container_get(v, g), ms_container_get(v, be), 1e-5);
        h = ms_max_pool2d(ms_relu(h), 2, 2);
    }
    if (!h)
        return NULL; /* the first failure is recorded: ms_last_error */
    h = ms_reshape(h, 2, (int64_t[]){ms_tensor_shape(h)[0], filters});
    return ms_add(ms_matmul(h, ms_container_get(v, "head/w")), ms_container_get(v, "head/b"));
}

/* The meta steps (unbatched) hand each task's sub-batch, leaves (1, ...):
 * drop the task axis and take the cross-entropy. */
static ms_tensor *xent(const ms_container *b, const ms_container *v, const char *x, const char *y)
{
    ms_tensor *images = ms_squeeze(ms_container_get(b, x), 0);
    return ms_softmax_cross_entropy(forward(v, images), ms_squeeze(ms_container_get(b, y), 0));
}
static ms_tensor *support_cost(const ms_container *b, const ms_container *v, void *user)
{
    (void)user;
    return xent(b, v, "support/x", "support/y");
}
static ms_tensor *query_cost(const ms_container *b, const ms_container *v, void *user)
{
    (void)user;
    return xent(b, v, "query/x", "query/y");
}

/* The support cost as a function of the variables, for ms_execute_with_gradients. */
static ms_tensor *support_of(const ms_container *v, void *task)
{
    return support_cost(task, v, NULL);
}

/* Query accuracy of one episode after `steps` gradient steps on its support. */
static double episode_accuracy(const ms_container *task, const ms_container *params, int steps)
{
    ms_scope_push();
    ms_container *v = ms_container_copy(params);
    for (int s = 0; v && s < steps; s++) {
        ms_tensor *cost;
        ms_container *g = NULL, *next = NULL;
        if (ms_execute_with_gradients(support_of, (void *)task, v, false, &cost, &g) == MS_OK)
            next = metastep_gradient_descent_update(v, g, INNER_LR, true);
        ms_container_release(g);
        ms_container_release(v);
        v = next;
    }
    if (!v) {
        ms_scope_pop();
        return NAN;
    }
    ms_no_grad_push();
    ms_tensor *logits = forward(v, ms_squeeze(ms_container_get(task, "query/x"), 0));
    ms_tensor *y = ms_squeeze(ms_container_get(task, "query/y"), 0);
    ms_no_grad_pop();
    if (!logits) {
        ms_container_release(v);
        ms_scope_pop();
        return NAN;
    }
    int n = (int)ms_tensor_shape(logits)[0], right = 0;
    const float *l = ms_tensor_data(logits), *t = ms_tensor_data(y);
    for (int i = 0; i < n; i++) {
        int best = 0, label = 0;
        for (int j = 1; j < WAYS; j++) {
            best = l[i * WAYS + j] > l[i * WAYS + best] ? j : best;
            label = t[i * WAYS + j] > t[i * WAYS + label] ? j : label;
        }
        right += best == label;
    }
    ms_container_release(v);
    ms_scope_pop();
    return (double)right / n;
}

static int die(const char *what)
{
    const char *msg = "";
    ms_last_error(&msg);
    fprintf(stderr, "fewshot: %s: %s\n", what, msg);
    return 1;
}

int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 300;
    filters = argc > 2 ? atoi(argv[2]) : 32;
    if (!metastep_current_backend())
        return die("cannot load the default backend");
    /* The episodes: the images task plugin, configured through ABI 1.1. */
    const metastep_task *images;
    if (metastep_load_task("images", &images) != MS_OK)
        return die("cannot load the images task plugin");
    if (!METASTEP_TASK_HAS_SLOT(images, configure) || !images->configure ||
        !METASTEP_TASK_HAS_SLOT(images, sample_heldout) || !images->sample_heldout)
        return die("the images plugin predates task ABI 1.1");
    char ways[16], query[16];
    snprintf(ways, sizeof ways, "%d", WAYS);
    snprintf(query, sizeof query, "%d", QUERY);
    if (images->configure("ways", ways) || images->configure("query", query) ||
        (argc > 3 && images->configure("data", argv[3])))
        return die("cannot configure the images task");
    printf("backend: %s; %d-way %d-shot, Conv4 with %d filters\n",
           metastep_backend_description(metastep_current_backend()), WAYS, SHOTS, filters);

    ms_container *params = init_model(0);
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    metastep_optim_state *opt = metastep_optim_state_new(&adam);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false; /* a convolution's weights have no task axis: loop over tasks */
    ms_container *held_out = images->sample_heldout(EVAL_TASKS, SHOTS, 1000000, MS_F32);
    int n = 0;
    ms_container **tasks = NULL;
    if (!held_out || ms_container_unstack(held_out, true, &n, &tasks) != MS_OK)
        return die("cannot draw the held-out episodes");
    for (int step = 0; step <= steps; step++) {
        if (step % 50 == 0 || step == steps) {
            double a0 = 0, a1 = 0;
            for (int t = 0; t < n; t++) {
                a0 += episode_accuracy(tasks[t], params, 0) / n;
                a1 += episode_accuracy(tasks[t], params, 1) / n;
            }
            if (isnan(a0) || isnan(a1))
                return die("evaluation failed");
            printf("step %4d  held-out accuracy (unseen classes): %5.1f%% unadapted, %5.1f%% "
                   "after one step\n", step, 100 * a0, 100 * a1);
            fflush(stdout);
        }
        if (step == steps)
            break;
        ms_container *batch = images->sample(TASKS, SHOTS, (uint64_t)step, MS_F32);
        metastep_result r;
        if (!batch ||
            metastep_maml_step(batch, support_cost, query_cost, params, 1, INNER_LR, &o, &r) != MS_OK)
            return die("maml_step failed");
        ms_container *next = metastep_optim_step(opt, params, r.grads, OUTER_LR, true);
        if (!next)
            return die("optimizer step failed");
        ms_container_release(params);
        params = next;
        metastep_result_release(&r);
        ms_container_release(batch);
    }
    for (int t = 0; t < n; t++)
        ms_container_release(tasks[t]);
    free(tasks);
    ms_container_release(held_out);
    ms_container_release(params);
    metastep_optim_state_release(opt);
    return 0;
}
