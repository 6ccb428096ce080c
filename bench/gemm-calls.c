/* bench-gemm-calls: nanoseconds per call of the eight GEMMs of one task's
 * forward and backward pass in bench-meta's sine MLP (1-40-40-1, K = 10),
 * through each backend's table: the cost of a small GEMM as a compiled
 * step's replay pays it, call overhead included.
 *
 *   taskset -c 1 ./build-rel/bench/bench-gemm-calls [--smoke] [BACKEND...]
 *
 * Per backend and shape: the median of 5 repeats of a loop of calls of
 * ~0.1 s (backends interleaved per shape), float32, alpha 1, beta 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "benchutil.h"
#include "metastep/backend.h"
#include "metastep/metastep.h"

#define MAX_BACKENDS 8
#define REPEATS 5

typedef struct shape {
    bool ta, tb;
    int64_t m, n, k;
    const char *what;
} shape;

static const shape shapes[] = {
    {false, false, 10, 40, 1, "layer 1 forward"},
    {false, false, 10, 40, 40, "layer 2 forward"},
    {false, false, 10, 1, 40, "layer 3 forward"},
    {false, true, 10, 40, 1, "layer 3 input gradient"},
    {true, false, 40, 1, 10, "layer 3 weight gradient"},
    {false, true, 10, 40, 40, "layer 2 input gradient"},
    {true, false, 40, 40, 10, "layer 2 weight gradient"},
    {true, false, 1, 40, 10, "layer 1 weight gradient"},
};

static double ns_per_call(const ms_backend *t, const shape *s, const float *a, const float *b,
                          float *c, long calls)
{
    const int64_t lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n;
    double t0 = bench_now();
    for (long i = 0; i < calls; i++)
        t->gemm(MS_F32, s->ta, s->tb, 1, s->m, s->n, s->k, 1.0, a, lda, 0, b, ldb, 0, 0.0, c,
                s->n, 0);
    return (bench_now() - t0) / (double)calls * 1e9;
}

int main(int argc, char **argv)
{
    bool smoke = argc > 1 && strcmp(argv[1], "--smoke") == 0;
    if (smoke)
        argc--, argv++;
    static const char *const defaults[] = {"ref", "openblas", "xsmm"};
    const char *names[MAX_BACKENDS];
    const ms_backend *tables[MAX_BACKENDS];
    int nb = 0, nreq = argc > 1 ? argc - 1 : 3;
    for (int i = 0; i < nreq && nb < MAX_BACKENDS; i++) {
        const char *name = argc > 1 ? argv[i + 1] : defaults[i];
        const ms_backend *t = NULL;
        if (metastep_load_backend(name, &t) != MS_OK || !t->gemm) {
            fprintf(stderr, "bench-gemm-calls: skipping %s\n", name);
            ms_clear_error();
            continue;
        }
        names[nb] = name;
        tables[nb++] = t;
    }
    float *a = calloc(1600, sizeof *a), *b = calloc(1600, sizeof *b), *c = calloc(1600, sizeof *c);
    if (!a || !b || !c)
        return 1;
    for (int i = 0; i < 1600; i++)
        a[i] = 0.001f * (float)i, b[i] = 1.5f - 0.0005f * (float)i;
    printf("ns per float32 GEMM call (median of %d), C = op(A)·op(B)\n", REPEATS);
    printf("%-14s %-26s", "shape m x n x k", "");
    for (int i = 0; i < nb; i++)
        printf(" %10s", names[i]);
    printf("\n");
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        const shape *sh = &shapes[s];
        long calls[MAX_BACKENDS];
        double runs[MAX_BACKENDS][REPEATS];
        for (int i = 0; i < nb; i++) { /* warm-up and calibration to ~0.1 s */
            double per = ns_per_call(tables[i], sh, a, b, c, 1000);
            calls[i] = smoke ? 10 : (long)(1e8 / (per > 1 ? per : 1)) + 1;
        }
        for (int r = 0; r < REPEATS; r++)
            for (int i = 0; i < nb; i++)
                runs[i][r] = ns_per_call(tables[i], sh, a, b, c, calls[i]);
        char label[64];
        snprintf(label, sizeof label, "%c%c %lldx%lldx%lld", sh->ta ? 'T' : 'N', sh->tb ? 'T' : 'N',
                 (long long)sh->m, (long long)sh->n, (long long)sh->k);
        printf("%-14s %-26s", label, sh->what);
        for (int i = 0; i < nb; i++) {
            qsort(runs[i], REPEATS, sizeof runs[i][0], bench_cmp_double);
            printf(" %10.1f", runs[i][REPEATS / 2]);
        }
        printf("\n");
    }
    free(a);
    free(b);
    free(c);
    return 0;
}
