/* Autodiff cost on every backend, side by side: a 1-40-40-1 ReLU MLP on 10
 * points in float32, timing
 *   fwd+bwd      the MSE loss and ms_grad (create_graph false), and
 *   fwd+bwd+2nd  ms_grad with create_graph, then the gradient of sum(g^2)
 *                (the double backward second-order MAML needs).
 * Each figure is the median over REPEATS runs of ITERS iterations, in
 * microseconds per iteration; backends are interleaved within each repeat so
 * drift affects them alike.
 *
 *   ./build/bench/bench-autodiff [iters] [repeats]
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "metastep/metastep.h"

#define MAX_REPEATS 64

static const char *const backends[] = {"ref", "openblas", "onednn"};
#define NB ((int)(sizeof backends / sizeof backends[0]))

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

typedef struct problem {
    ms_tensor *x, *y;
    ms_container *w;
} problem;

static ms_tensor *loss(const problem *p)
{
    const ms_container *w = p->w;
    ms_tensor *h = ms_relu(ms_add(ms_matmul(p->x, ms_container_get(w, "l1/w")),
                                  ms_container_get(w, "l1/b")));
    h = ms_relu(ms_add(ms_matmul(h, ms_container_get(w, "l2/w")), ms_container_get(w, "l2/b")));
    ms_tensor *out = ms_add(ms_matmul(h, ms_container_get(w, "l3/w")),
                            ms_container_get(w, "l3/b"));
    return ms_mean(ms_square(ms_sub(out, p->y)), 0, NULL, false);
}

static int make_problem(problem *p)
{
    int64_t sx[2] = {10, 1};
    p->x = ms_linspace(MS_F32, -1, 1, 10);
    p->x = ms_reshape(p->x, 2, sx);
    p->y = ms_sin(ms_mul_scalar(p->x, 3.0));
    int64_t shapes[6][2] = {{1, 40}, {40, 0}, {40, 40}, {40, 0}, {40, 1}, {1, 0}};
    const char *keys[6] = {"l1/w", "l1/b", "l2/w", "l2/b", "l3/w", "l3/b"};
    p->w = ms_container_new();
    for (int i = 0; i < 6; i++) {
        int nd = shapes[i][1] ? 2 : 1;
        double std = nd == 2 ? 0.4 : 0.1;
        ms_tensor *v = ms_variable(ms_random_normal(MS_F32, nd, shapes[i], 0, std, 100u + (unsigned)i));
        if (!v || ms_container_set(p->w, keys[i], v) != MS_OK)
            return -1;
    }
    return p->x && p->y ? 0 : -1;
}

/* One iteration; returns 0 on success. */
static int step(const problem *p, bool second)
{
    ms_scope_push();
    ms_container *g = NULL, *g2 = NULL;
    ms_status st = ms_grad(loss(p), p->w, second, &g);
    if (st == MS_OK && second) {
        ms_tensor *s = NULL;
        for (int i = 0; i < ms_container_size(g); i++) {
            ms_tensor *t = ms_sum(ms_square(ms_container_at(g, i)), 0, NULL, false);
            s = s ? ms_add(s, t) : t;
        }
        st = ms_grad(s, p->w, false, &g2);
    }
    ms_container_release(g);
    ms_container_release(g2);
    ms_scope_pop();
    return st == MS_OK ? 0 : -1;
}

static double time_iters(const problem *p, bool second, int iters)
{
    double t0 = now_us();
    for (int i = 0; i < iters; i++)
        if (step(p, second) != 0)
            return -1;
    return (now_us() - t0) / iters;
}

int main(int argc, char **argv)
{
    int iters = argc > 1 ? atoi(argv[1]) : 300;
    int repeats = argc > 2 ? atoi(argv[2]) : 7;
    if (iters < 1)
        iters = 1;
    if (repeats < 1 || repeats > MAX_REPEATS)
        repeats = 7;

    ms_scope_push(); /* owns the problem's tensors */
    problem p;
    if (make_problem(&p) != 0) {
        const char *msg = NULL;
        ms_last_error(&msg);
        fprintf(stderr, "bench-autodiff: setup failed: %s\n", msg ? msg : "?");
        return 1;
    }
    bool ok[NB];
    for (int b = 0; b < NB; b++) {
        ms_clear_error();
        ok[b] = metastep_set_backend(backends[b]) == MS_OK;
        if (ok[b]) {
            ok[b] = step(&p, false) == 0 && step(&p, true) == 0; /* also a warm-up */
            for (int i = 0; ok[b] && i < iters / 4; i++)
                ok[b] = step(&p, false) == 0 && step(&p, true) == 0;
            metastep_unset_backend();
        }
        if (!ok[b]) {
            const char *msg = NULL;
            ms_last_error(&msg);
            fprintf(stderr, "bench-autodiff: backend %s unavailable: %s\n", backends[b],
                    msg ? msg : "?");
        }
    }
    static double t1[NB][MAX_REPEATS], t2[NB][MAX_REPEATS];
    for (int r = 0; r < repeats; r++) {
        for (int b = 0; b < NB; b++) {
            if (!ok[b])
                continue;
            metastep_set_backend(backends[b]);
            t1[b][r] = time_iters(&p, false, iters);
            t2[b][r] = time_iters(&p, true, iters);
            metastep_unset_backend();
        }
    }
    printf("autodiff: 1-40-40-1 ReLU MLP, 10 points, float32; median of %d x %d iterations\n",
           repeats, iters);
    printf("%-10s %16s %20s %8s\n", "backend", "fwd+bwd (us)", "fwd+bwd+2nd (us)", "ratio");
    for (int b = 0; b < NB; b++) {
        if (!ok[b]) {
            printf("%-10s %16s %20s %8s\n", backends[b], "n/a", "n/a", "");
            continue;
        }
        double m1 = median(t1[b], repeats), m2 = median(t2[b], repeats);
        printf("%-10s %16.1f %20.1f %8.2f\n", backends[b], m1, m2, m2 / m1);
    }
    ms_container_release(p.w);
    ms_scope_pop();
    return 0;
}
