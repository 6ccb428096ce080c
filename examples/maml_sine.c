/* maml_sine — meta-train the sine-wave regression of Finn et al. (2017) with
 * second-order MAML, using the library API alone (no plugin, no command).
 *
 *   build/examples/maml_sine [STEPS] [BACKEND]
 *   METASTEP_BACKEND=openblas build/examples/maml_sine 500
 *
 * A task is y = A sin(x - phase) with A in [0.1, 5], phase in [0, pi] and
 * x in [-5, 5]; the model, an MLP 1-40-40-1 with ReLU, adapts to a task from
 * K = 10 points with one gradient step.  MAML learns initial weights from
 * which that one step already fits a new sine well.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "metastep/metastep.h"

#define K 10          /* support (and query) points per task */
#define TASKS 25      /* tasks per meta-step */
#define HIDDEN 40
#define INNER_LR 0.01 /* the adaptation step */
#define OUTER_LR 1e-3 /* Adam on the meta-parameters */

static const char *const W[3] = {"l1/w", "l2/w", "l3/w"}, *const B[3] = {"l1/b", "l2/b", "l3/b"};

/* Put an op's result in a container.  Ops return tensors owned by the open
 * scope; outside any scope the container must own the only reference. */
static void put(ms_container *c, const char *key, ms_tensor *t)
{
    ms_container_set(c, key, t);
    if (ms_scope_depth() == 0)
        ms_release(t);
}

/* The model: x of shape (..., K, 1) through three layers.  No intermediate
 * is freed here: the meta step's scopes take care of that. */
static ms_tensor *forward(const ms_container *v, const ms_tensor *x)
{
    ms_tensor *h = (ms_tensor *)x;
    for (int l = 0; l < 3; l++) {
        h = ms_add(ms_matmul(h, ms_container_get(v, W[l])), ms_container_get(v, B[l]));
        if (l < 2)
            h = ms_relu(h);
    }
    return h;
}

/* Mean squared error on one part of the batch; the meta steps call these
 * with each task's sub-batch (unbatched mode: leaves of shape (1, K, 1)). */
static ms_tensor *mse(const ms_container *b, const ms_container *v, const char *x, const char *y)
{
    ms_tensor *d = ms_sub(forward(v, ms_container_get(b, x)), ms_container_get(b, y));
    return ms_mean(ms_square(d), 0, NULL, false);
}
static ms_tensor *support_cost(const ms_container *b, const ms_container *v, void *user)
{
    (void)user;
    return mse(b, v, "xs", "ys");
}
static ms_tensor *query_cost(const ms_container *b, const ms_container *v, void *user)
{
    (void)user;
    return mse(b, v, "xq", "yq");
}

/* A meta-batch of TASKS sine tasks: every leaf has a leading task axis. */
static ms_container *sample_tasks(uint64_t seed)
{
    int64_t t[3] = {TASKS, 1, 1}, pts[3] = {TASKS, K, 1};
    ms_scope_push(); /* frees the amplitudes and phases at the pop */
    ms_tensor *amp = ms_random_uniform(MS_F32, 3, t, 0.1, 5.0, 4 * seed);
    ms_tensor *phase = ms_random_uniform(MS_F32, 3, t, 0.0, M_PI, 4 * seed + 1);
    ms_tensor *xs = ms_random_uniform(MS_F32, 3, pts, -5, 5, 4 * seed + 2);
    ms_tensor *xq = ms_random_uniform(MS_F32, 3, pts, -5, 5, 4 * seed + 3);
    ms_container *b = ms_container_new(); /* containers hold their own references */
    ms_container_set(b, "xs", xs);
    ms_container_set(b, "ys", ms_mul(amp, ms_sin(ms_sub(xs, phase))));
    ms_container_set(b, "xq", xq);
    ms_container_set(b, "yq", ms_mul(amp, ms_sin(ms_sub(xq, phase))));
    ms_scope_pop();
    return b;
}

/* PyTorch's default initialisation for linear layers. */
static ms_container *init_model(void)
{
    const int64_t dims[4] = {1, HIDDEN, HIDDEN, 1};
    ms_container *v = ms_container_new();
    for (int l = 0; l < 3; l++) {
        double r = 1.0 / sqrt((double)dims[l]);
        put(v, W[l], ms_random_uniform(MS_F32, 2, (int64_t[]){dims[l], dims[l + 1]}, -r, r, 2 * l));
        put(v, B[l], ms_random_uniform(MS_F32, 1, (int64_t[]){dims[l + 1]}, -r, r, 2 * l + 1));
    }
    return v;
}

static int die(const char *what)
{
    const char *msg;
    ms_last_error(&msg);
    fprintf(stderr, "maml_sine: %s: %s\n", what, msg);
    return 1;
}

/* usage: maml_sine [STEPS [BACKEND [OUTPUT]]]; OUTPUT defaults to
 * out/maml_sine.safetensors (out/ is created), never the current directory. */
int main(int argc, char **argv)
{
    int steps = argc > 1 ? atoi(argv[1]) : 1000;
    const char *output = argc > 3 ? argv[3] : "out/maml_sine.safetensors";
    if (argc <= 3 && mkdir("out", 0777) != 0 && errno != EEXIST) {
        perror("maml_sine: cannot create out/");
        return 1;
    }
    /* Without an argument the backend is METASTEP_BACKEND's, or ref. */
    if (argc > 2 && metastep_set_backend(argv[2]) != MS_OK)
        return die("cannot set the backend");
    if (!metastep_current_backend())
        return die("cannot load the default backend");
    printf("backend: %s\n", metastep_backend_description(metastep_current_backend()));

    ms_container *params = init_model();
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    metastep_optim_state *opt = metastep_optim_state_new(&adam); /* Adam's moments */
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false; /* loop over the tasks; each adapts from the same params */

    ms_container *held_out = sample_tasks(1000000); /* never used for training */
    for (int step = 0; step <= steps; step++) {
        if (step % 100 == 0 || step == steps) {
            /* The held-out loss after one step: a meta step's cost. */
            metastep_result r;
            if (metastep_fomaml_step(held_out, support_cost, query_cost, params, 1, INNER_LR, &o,
                                     &r) != MS_OK)
                return die("evaluation failed");
            printf("step %5d  held-out query MSE after one adaptation step: %.4f\n", step,
                   ms_tensor_item(r.cost));
            metastep_result_release(&r);
        }
        if (step == steps)
            break;
        ms_container *batch = sample_tasks((uint64_t)step);
        metastep_result r; /* cost, grads (and adapted variables, unused) */
        if (metastep_maml_step(batch, support_cost, query_cost, params, 1, INNER_LR, &o, &r) !=
            MS_OK)
            return die("maml_step failed");
        /* One Adam step on the meta-gradient. */
        ms_container *next = metastep_optim_step(opt, params, r.grads, OUTER_LR, true);
        if (!next)
            return die("optimizer step failed");
        ms_container_release(params);
        params = next;
        metastep_result_release(&r);
        ms_container_release(batch);
    }
    /* Keep the meta-parameters for another program, or for PyTorch. */
    if (ms_container_save(params, output) != MS_OK)
        return die("cannot save the parameters");
    printf("saved the meta-parameters to %s\n", output);
    ms_container_release(held_out);
    ms_container_release(params);
    metastep_optim_state_release(opt);
    return 0;
}
