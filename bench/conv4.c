/* bench-conv4: seconds per meta step of Conv4 MAML on few-shot image
 * classification, on every backend, with the FLOPs each step executes.
 *
 *   ./build/bench/bench-conv4 [--backends ref,openblas,onednn] [--algos maml,fomaml]
 *                             [--inner-steps 1] [--ways 5] [--shots 1] [--query 15]
 *                             [--filters 32] [--meta-batch 4] [--size 28]
 *                             [--repeats 5] [--target 1.0] [--json] [--smoke]
 *                             [--threads N]
 *
 * The model is the MAML paper's Conv4: 4 blocks of [conv 3×3 (F filters,
 * stride 1, padding 1), batch norm (training mode), ReLU, max-pool 2×2], then
 * a linear layer to the ways; softmax cross-entropy on the support set
 * (inner) and the query set (outer).  One timed meta step is what `metastep
 * train` does: the meta step over the meta-batch (unbatched: a loop over the
 * tasks) plus the outer Adam update (lr 1e-3).  float32, inner lr 0.4 (the
 * MAML paper's Omniglot setting).  Images are random: the time does not
 * depend on their values.
 *
 * FLOPs: one step runs first under a counting backend (bench/flopcount.c,
 * computing with openblas where built, else ref) that adds 2 FLOPs per multiply-add of every GEMM and
 * convolution call; GFLOP/s = those FLOPs / the median seconds per step.
 * Timing protocol as bench-meta: a warm-up step, N calibrated so a repeat
 * takes about --target seconds, the backends interleaved within each repeat,
 * the median of --repeats.  Peak RSS is the whole process's.  --smoke: one
 * step of each, for CI (the numbers mean nothing).  --threads N (N > 1):
 * every backend runs twice, with one thread and with metastep_options.threads
 * = N (the tasks on N threads), interleaved within each repeat, the backend's
 * kernel threads set to the run's count as metastep train --threads does;
 * the N-thread row gives its speed-up, and --json every repeat's seconds.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "benchutil.h"
#include "metastep/metastep.h"

#define MAX_BACKENDS 8
#define MAX_REPEATS 50

typedef struct cfg {
    int ways, shots, query, filters, meta_batch, size, inner_steps;
} cfg;
static cfg C = {5, 1, 15, 32, 4, 28, 1};

static void die_ms(const char *what)
{
    const char *msg = NULL;
    ms_last_error(&msg);
    fprintf(stderr, "bench-conv4: %s: %s\n", what, msg ? msg : "failed");
    exit(1);
}

/* ------------------------------------------------------------- the model */

static int spatial_after(int s, int blocks)
{
    for (int b = 0; b < blocks; b++)
        s /= 2; /* conv keeps the size (3×3, padding 1); the pool floors it */
    return s;
}

static void put(ms_container *c, const char *key, ms_tensor *t)
{
    if (!t || ms_container_set(c, key, t) != MS_OK)
        die_ms(key);
}

static ms_container *conv4_init(uint64_t seed)
{
    ms_container *v = ms_container_new();
    char key[64];
    int64_t cin = 1;
    for (int b = 1; b <= 4; b++) {
        int64_t ws[4] = {C.filters, cin, 3, 3}, vs[1] = {C.filters};
        double a = sqrt(6.0 / (double)(cin * 9 + C.filters * 9)); /* Glorot uniform */
        snprintf(key, sizeof key, "block%d/conv/w", b);
        put(v, key, ms_random_uniform(MS_F32, 4, ws, -a, a, seed + (uint64_t)b));
        snprintf(key, sizeof key, "block%d/conv/b", b);
        put(v, key, ms_zeros(MS_F32, 1, vs));
        snprintf(key, sizeof key, "block%d/bn/gamma", b);
        put(v, key, ms_ones(MS_F32, 1, vs));
        snprintf(key, sizeof key, "block%d/bn/beta", b);
        put(v, key, ms_zeros(MS_F32, 1, vs));
        cin = C.filters;
    }
    int s = spatial_after(C.size, 4);
    int64_t feat = (int64_t)C.filters * s * s, hw[2] = {feat, C.ways}, hb[1] = {C.ways};
    double a = sqrt(6.0 / (double)(feat + C.ways));
    put(v, "head/w", ms_random_uniform(MS_F32, 2, hw, -a, a, seed + 99));
    put(v, "head/b", ms_zeros(MS_F32, 1, hb));
    return v;
}

static ms_tensor *conv4_cost(const ms_container *batch, const ms_container *v, const char *set)
{
    char kx[32], ky[32], key[64];
    snprintf(kx, sizeof kx, "%s/x", set);
    snprintf(ky, sizeof ky, "%s/y", set);
    ms_tensor *x = ms_container_get(batch, kx), *y = ms_container_get(batch, ky);
    int64_t n = ms_tensor_numel(y) / C.ways;
    int64_t xs[4] = {n, 1, C.size, C.size}, ys[2] = {n, C.ways};
    ms_tensor *h = ms_reshape(x, 4, xs);
    for (int b = 1; b <= 4; b++) {
        snprintf(key, sizeof key, "block%d/conv/w", b);
        ms_tensor *w = ms_container_get(v, key);
        snprintf(key, sizeof key, "block%d/conv/b", b);
        h = ms_conv2d(h, w, ms_container_get(v, key), 1, 1);
        snprintf(key, sizeof key, "block%d/bn/gamma", b);
        ms_tensor *g = ms_container_get(v, key);
        snprintf(key, sizeof key, "block%d/bn/beta", b);
        h = ms_max_pool2d(ms_relu(ms_batch_norm(h, g, ms_container_get(v, key), 1e-5)), 2, 2);
    }
    int s = spatial_after(C.size, 4);
    int64_t fs[2] = {n, (int64_t)C.filters * s * s};
    ms_tensor *logits = ms_add(ms_matmul(ms_reshape(h, 2, fs), ms_container_get(v, "head/w")),
                               ms_container_get(v, "head/b"));
    return ms_softmax_cross_entropy(logits, ms_reshape(y, 2, ys));
}

static ms_tensor *inner_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return conv4_cost(b, v, "support");
}
static ms_tensor *outer_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return conv4_cost(b, v, "query");
}

/* Random images and shuffled one-hot labels for meta_batch tasks. */
static ms_container *make_batch(uint64_t seed)
{
    ms_container *b = ms_container_new();
    const char *sets[2] = {"support", "query"};
    const int per[2] = {C.shots, C.query};
    char key[32];
    for (int s = 0; s < 2; s++) {
        int64_t n = (int64_t)C.ways * per[s];
        int64_t xs[5] = {C.meta_batch, n, 1, C.size, C.size}, ys[3] = {C.meta_batch, n, C.ways};
        snprintf(key, sizeof key, "%s/x", sets[s]);
        put(b, key, ms_random_uniform(MS_F32, 5, xs, 0.0, 1.0, seed + (uint64_t)s));
        float *lab = calloc((size_t)(C.meta_batch * n * C.ways), sizeof *lab);
        for (int64_t t = 0; t < C.meta_batch; t++)
            for (int64_t i = 0; i < n; i++)
                lab[(t * n + i) * C.ways + i % C.ways] = 1.0f;
        snprintf(key, sizeof key, "%s/y", sets[s]);
        put(b, key, ms_tensor_from_data(MS_F32, 3, ys, lab));
        free(lab);
    }
    return b;
}

/* ------------------------------------------------------------ the steps */

typedef struct run {
    const char *backend;
    int threads;
    double raw[MAX_REPEATS]; /* seconds per step of each repeat, in order */
    ms_container *vars;
    metastep_optim_state *opt;
    long n;
    double secs[MAX_REPEATS];
    double last_cost;
} run;

static ms_container *g_batch;
static int g_threads = 1; /* metastep_options.threads of the run being timed */

static bool one_step(run *r, bool maml)
{
    ms_scope_push();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false; /* per-task weights of a conv net: the loop over tasks */
    o.threads = g_threads;
    metastep_result res = {0};
    ms_status st = (maml ? metastep_maml_step : metastep_fomaml_step)(
        g_batch, inner_cost, outer_cost, r->vars, C.inner_steps, 0.4, &o, &res);
    ms_container *next = st == MS_OK ? metastep_optim_step(r->opt, r->vars, res.grads, 1e-3, true)
                                     : NULL;
    if (next) {
        r->last_cost = ms_tensor_item(res.cost);
        ms_container_release(r->vars);
        r->vars = next;
    }
    metastep_result_release(&res);
    ms_scope_pop();
    return next != NULL;
}

static void with_backend(const char *name)
{
    if (metastep_set_backend(name) != MS_OK)
        die_ms(name);
}

static void prepare(run *r)
{
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    r->vars = conv4_init(7);
    r->opt = metastep_optim_state_new(&adam);
    if (!r->vars || !r->opt)
        die_ms("init");
}

/* FLOPs of one meta step, counted by bench/flopcount.c wrapping ref. */
static double count_flops(bool maml, const char *build_backends)
{
    char fc[1024], ref[1024], target[1024];
    snprintf(fc, sizeof fc, "%s/libmetastep-backend-flopcount.so", BENCH_DIR);
    snprintf(ref, sizeof ref, "%s/libmetastep-backend-ref.so", build_backends);
    /* openblas computes the counting step quickly where it is built */
    snprintf(target, sizeof target, "%s/libmetastep-backend-openblas.so", build_backends);
    setenv("METASTEP_FLOPCOUNT_REF", ref, 1);
    setenv("METASTEP_FLOPCOUNT_TARGET", target, 1);
    void *h = dlopen(fc, RTLD_NOW | RTLD_NOLOAD);
    with_backend(fc);
    if (!h)
        h = dlopen(fc, RTLD_NOW | RTLD_NOLOAD);
    unsigned long long (*read)(void) =
        h ? (unsigned long long (*)(void))dlsym(h, "metastep_flopcount") : NULL;
    if (!read) {
        fprintf(stderr, "bench-conv4: cannot read the FLOP counter of %s\n", fc);
        exit(1);
    }
    run r = {0};
    prepare(&r);
    unsigned long long before = read();
    if (!one_step(&r, maml))
        die_ms("counting step");
    double f = (double)(read() - before);
    metastep_unset_backend();
    ms_container_release(r.vars);
    metastep_optim_state_release(r.opt);
    return f;
}

int main(int argc, char **argv)
{
    const char *backends[MAX_BACKENDS] = {"ref", "openblas", "onednn"};
    int nb = 3, repeats = 5, nalgos = 2, threads = 1;
    bool algos[2] = {true, true}, json = false, smoke = false; /* maml, fomaml */
    double target = 1.0;
    char listbuf[256];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *ints[] = {&C.ways, &C.shots, &C.query, &C.filters, &C.meta_batch, &C.size,
                       &C.inner_steps, &repeats, &threads};
        const char *names[] = {"--ways", "--shots", "--query", "--filters", "--meta-batch",
                               "--size", "--inner-steps", "--repeats", "--threads"};
        bool done = false;
        for (int k = 0; k < 9 && !done; k++)
            if (!strcmp(a, names[k]) && v) {
                *ints[k] = atoi(v);
                done = ++i;
            }
        if (done)
            continue;
        if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--smoke")) {
            smoke = true;
        } else if (!strcmp(a, "--target") && v) {
            target = atof(argv[++i]);
        } else if ((!strcmp(a, "--backends") || !strcmp(a, "--algos")) && v &&
                   strlen(v) < sizeof listbuf) {
            bool is_b = !strcmp(a, "--backends");
            static char keep[2][256];
            strcpy(keep[is_b], argv[++i]);
            int k = 0;
            if (!is_b)
                algos[0] = algos[1] = false;
            for (char *save = NULL, *t = strtok_r(keep[is_b], ",", &save); t;
                 t = strtok_r(NULL, ",", &save)) {
                if (is_b && k < MAX_BACKENDS)
                    backends[k++] = t;
                else if (!is_b && (!strcmp(t, "maml") || !strcmp(t, "fomaml")))
                    algos[strcmp(t, "maml") != 0] = true, k++;
            }
            if (is_b)
                nb = k;
            else
                nalgos = k;
        } else {
            fprintf(stderr, "bench-conv4: unknown or incomplete option '%s' (see the comment "
                            "at the top of bench/conv4.c)\n", a);
            return 2;
        }
    }
    (void)nalgos;
    if (C.ways < 2 || C.shots < 1 || C.query < 1 || C.filters < 1 || C.meta_batch < 1 ||
        C.size < 16 || C.inner_steps < 0 || repeats < 1 || repeats > MAX_REPEATS || nb < 1 ||
        threads < 1) {
        fprintf(stderr, "bench-conv4: invalid setting\n");
        return 2;
    }
    if (smoke)
        repeats = 1;
    g_batch = make_batch(1);
    if (!g_batch)
        die_ms("batch");
    if (!json)
        printf("Conv4 %d-way %d-shot, %d query/class, F=%d, %dx%d, meta-batch %d, %d inner "
               "step(s), float32, unbatched\n\n%-7s %-9s %10s %10s %9s %8s %10s\n",
               C.ways, C.shots, C.query, C.filters, C.size, C.size, C.meta_batch,
               C.inner_steps, "algo", "backend", "s/step", "GFLOP/s", "GFLOP", "N", "cost");
    else
        printf("{\"program\": \"bench-conv4\", \"results\": [");
    bool first = true;
    for (int a = 0; a < 2; a++) {
        if (!algos[a])
            continue;
        bool maml = a == 0;
        double flops = count_flops(maml, BACKEND_DIR);
        run runs[2 * MAX_BACKENDS] = {{0}};
        const int per = threads > 1 ? 2 : 1, nr = nb * per;
        for (int b = 0; b < nr; b++) {
            runs[b].backend = backends[b / per];
            runs[b].threads = b % per ? threads : 1;
            with_backend(runs[b].backend);
            g_threads = runs[b].threads;
            metastep_set_backend_threads(g_threads);
            prepare(&runs[b]);
            if (!one_step(&runs[b], maml)) /* warm-up */
                die_ms(runs[b].backend);
            double t0 = bench_now();
            if (!one_step(&runs[b], maml))
                die_ms(runs[b].backend);
            double once = bench_now() - t0;
            runs[b].n = smoke ? 1 : (long)ceil(target / (once > 1e-6 ? once : 1e-6));
            if (runs[b].n < 1)
                runs[b].n = 1;
            metastep_unset_backend();
        }
        for (int r = 0; r < repeats; r++)
            for (int b = 0; b < nr; b++) {
                with_backend(runs[b].backend);
                g_threads = runs[b].threads;
                metastep_set_backend_threads(g_threads);
                double t0 = bench_now();
                for (long i = 0; i < runs[b].n; i++)
                    if (!one_step(&runs[b], maml))
                        die_ms(runs[b].backend);
                runs[b].raw[r] = runs[b].secs[r] = (bench_now() - t0) / (double)runs[b].n;
                metastep_unset_backend();
            }
        for (int b = 0; b < nr; b++) {
            qsort(runs[b].secs, (size_t)repeats, sizeof(double), bench_cmp_double);
            double s = runs[b].secs[repeats / 2];
            double speedup = b % per ? runs[b - 1].secs[repeats / 2] / s : 0;
            if (json) {
                printf("%s\n  {\"algo\": \"%s\", \"backend\": \"%s\", \"threads\": %d, "
                       "\"seconds_per_step\": %.6g, \"gflops\": %.4g, \"gflop_per_step\": %.6g, "
                       "\"n\": %ld, \"last_cost\": %.6g, \"repeat_seconds\": [",
                       first ? "" : ",", maml ? "maml" : "fomaml", runs[b].backend,
                       runs[b].threads, s, flops / s * 1e-9, flops * 1e-9, runs[b].n,
                       runs[b].last_cost);
                for (int r = 0; r < repeats; r++)
                    printf("%s%.6g", r ? ", " : "", runs[b].raw[r]);
                printf("]}");
            } else {
                printf("%-7s %-9s %10.4f %10.2f %9.3f %8ld %10.4f", maml ? "maml" : "fomaml",
                       runs[b].backend, s, flops / s * 1e-9, flops * 1e-9, runs[b].n,
                       runs[b].last_cost);
                if (speedup > 0)
                    printf("  %d threads: x%.2f", runs[b].threads, speedup);
                printf("\n");
            }
            first = false;
            ms_container_release(runs[b].vars);
            metastep_optim_state_release(runs[b].opt);
        }
    }
    double rss = (double)bench_peak_rss_kib() / 1024.0;
    if (json)
        printf("\n], \"peak_rss_mib\": %.2f, \"repeats\": %d}\n", rss, repeats);
    else
        printf("\nmedian of %d repeats, backends interleaved; peak RSS of the process %.1f MiB\n",
               repeats, rss);
    ms_container_release(g_batch);
    return 0;
}
