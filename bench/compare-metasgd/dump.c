/* The first meta-gradient of Meta-SGD and MAML++ LSLR on the sine setting,
 * for bench/compare-metasgd/run to check against PyTorch.
 *
 *     bench-metasgd-dump DIR [BACKEND]
 *
 * Writes DIR/in.safetensors (the sine plugin's initial MLP variables, seed 0;
 * one meta-batch of 25 tasks, K = 10, seed 1000; the learned rates, under
 * "metasgd/<key>" shaped like each variable and "lslr/<key>" of shape [3],
 * deterministic non-uniform values around 0.01) and, for every layout
 * (metasgd, lslr), inner steps 1..3, batched and unbatched, with and without
 * the MAML++ multi-step loss weights of meta-step 5 of 10, second order,
 * DIR/out-LAYOUT-STEPS-MODE-MSL.safetensors: "cost" and every gradient
 * ("l1/w", ..., "inner_lr/l1/w", ...).  float32. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "metastep/metastep.h"

static int fail(const char *what)
{
    const char *msg = NULL;
    ms_last_error(&msg);
    fprintf(stderr, "bench-metasgd-dump: %s: %s\n", what, msg ? msg : "failed");
    return 1;
}

/* Rates around 0.01: 0.01 * (1 + 0.5 sin(0.7 i + 1.3 j)) for element i of
 * the j-th variable (the same formula in sine_metasgd.py). */
static ms_tensor *rates_for(int ndim, const int64_t *shape, int j)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    float *v = malloc(sizeof *v * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        v[i] = (float)(0.01 * (1 + 0.5 * sin(0.7 * (double)i + 1.3 * j)));
    ms_tensor *t = ms_tensor_from_data(MS_F32, ndim, shape, v);
    free(v);
    return t;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench-metasgd-dump DIR [BACKEND]\n");
        return 2;
    }
    if (argc > 2 && metastep_set_backend(argv[2]) != MS_OK)
        return fail("backend");
    const metastep_task *task;
    if (metastep_load_task("sine", &task) != MS_OK)
        return fail("the sine task");
    ms_container *vars = task->init_variables(0, MS_F32);
    ms_container *batch = task->sample(25, 10, 1000, MS_F32);
    if (!vars || !batch)
        return fail("variables and batch");
    ms_container *in = ms_container_copy(vars), *rates[2] = {ms_container_new(), ms_container_new()};
    char key[256];
    for (int i = 0; i < ms_container_size(batch); i++)
        ms_container_set(in, ms_container_key(batch, i), ms_container_at(batch, i));
    for (int j = 0; j < ms_container_size(vars); j++) {
        const ms_tensor *v = ms_container_at(vars, j);
        ms_tensor *m = rates_for(ms_tensor_ndim(v), ms_tensor_shape(v), j);
        ms_tensor *l = rates_for(1, (int64_t[]){3}, j);
        ms_container_set(rates[0], ms_container_key(vars, j), m);
        ms_container_set(rates[1], ms_container_key(vars, j), l);
        snprintf(key, sizeof key, "metasgd/%s", ms_container_key(vars, j));
        ms_container_set(in, key, m);
        snprintf(key, sizeof key, "lslr/%s", ms_container_key(vars, j));
        ms_container_set(in, key, l);
        ms_release(m);
        ms_release(l);
    }
    snprintf(key, sizeof key, "%s/in.safetensors", argv[1]);
    if (ms_container_save(in, key) != MS_OK)
        return fail("write");
    const char *layouts[2] = {"metasgd", "lslr"};
    for (int lay = 0; lay < 2; lay++)
        for (int steps = 1; steps <= 3; steps++)
            for (int batched = 0; batched < 2; batched++)
                for (int msl = 0; msl < 2; msl++) {
                    ms_container *r = rates[lay], *sl = NULL;
                    if (lay == 1) { /* the first `steps` entries of each [3] */
                        sl = ms_container_new();
                        for (int j = 0; j < ms_container_size(r); j++) {
                            ms_tensor *t = ms_slice(ms_container_at(r, j), 0, 0, steps);
                            ms_container_set(sl, ms_container_key(r, j), t);
                            ms_release(t);
                        }
                        r = sl;
                    }
                    double w[4];
                    metastep_options o = METASTEP_OPTIONS_DEFAULT;
                    o.batched = batched;
                    o.inner_learning_rates = r;
                    o.inner_lr_per_step = lay == 1;
                    if (msl && metastep_msl_weights(steps, 5, 10, w))
                        o.step_weights = w;
                    ms_container *v = batched ? ms_container_replicate(vars, 25) : ms_container_copy(vars);
                    metastep_result res;
                    if (metastep_maml_step(batch, task->inner_cost, task->outer_cost, v, steps, 0.0,
                                           &o, &res) != MS_OK)
                        return fail("meta-step");
                    ms_container *out = ms_container_copy(res.grads);
                    ms_container_set(out, "cost", res.cost);
                    snprintf(key, sizeof key, "%s/out-%s-%d-%s-%d.safetensors", argv[1],
                             layouts[lay], steps, batched ? "batched" : "loop", msl);
                    if (ms_container_save(out, key) != MS_OK)
                        return fail("write");
                    ms_container_release(out);
                    metastep_result_release(&res);
                    ms_container_release(v);
                    ms_container_release(sl);
                }
    printf("%s\n", argv[1]);
    return 0;
}
