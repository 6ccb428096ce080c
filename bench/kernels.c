/* bench-kernels: what each backend's kernels cost when called through the
 * kernel table, and whether dispatch through a backend costs anything over
 * calling OpenBLAS directly.
 *
 *   ./build/bench/bench-kernels [--smoke] [BACKEND...]   (default: ref openblas onednn xsmm)
 *
 * --smoke: one call per repeat, one repeat, and no shape over 2^24
 * multiply-adds or elements: checks that every path runs (CI does this in a
 * release build), in about a second; its numbers mean nothing.
 *
 * float32 GEMM (square 8..1024, skinny shapes, the batched small GEMMs of
 * MAML) in GFLOP/s, float32 conv2d forward / backward data / backward
 * weights on the layers of Conv4 (3x3, padding 1, 32 filters) at the sizes
 * of 28x28 5-way 1-shot (5 support images, 80 query images) in GFLOP/s, and
 * elementwise add and tanh in GB/s; every number is the
 * median of 5 repeats, each repeat long enough (~30 ms) for the clock.  The
 * last columns call cblas_sgemm directly on the same shapes (a loop over the
 * batch for batched shapes) and give backend/direct for the openblas backend.
 * Not run by `meson test`: timing is never a pass condition.
 */
#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"
#include "metastep/backend.h"
#include "metastep/metastep.h"

#define REPEATS 5
#define TARGET_SECONDS 0.03
static bool smoke; /* --smoke */
#define SMOKE_MAX_WORK ((int64_t)1 << 24)
#define MAX_BACKENDS 8

/* Median seconds per call of fn(user) over REPEATS repeats. */
typedef int (*bench_fn)(void *user);
static double time_call(bench_fn fn, void *user)
{
    if (fn(user) != 0) /* warm-up; also checks the call is served */
        return NAN;
    double t0 = bench_now();
    fn(user);
    double once = bench_now() - t0;
    long iters = once > 0 ? (long)(TARGET_SECONDS / once) : 1000;
    if (iters < 1 || smoke)
        iters = 1;
    if (iters > 100000)
        iters = 100000;
    const int repeats = smoke ? 1 : REPEATS;
    double t[REPEATS];
    for (int r = 0; r < repeats; r++) {
        t0 = bench_now();
        for (long i = 0; i < iters; i++)
            fn(user);
        t[r] = (bench_now() - t0) / (double)iters;
    }
    qsort(t, (size_t)repeats, sizeof *t, bench_cmp_double);
    return t[repeats / 2];
}

typedef struct gemm_args {
    const ms_backend *b; /* NULL: cblas_sgemm directly */
    int64_t batch, m, n, k, stride_b;
    bool ta, tb;
    float *a, *bm, *c;
} gemm_args;

static int run_gemm(void *user)
{
    gemm_args *g = user;
    const int64_t lda = g->ta ? g->m : g->k, ldb = g->tb ? g->k : g->n;
    if (!g->b) {
        for (int64_t p = 0; p < g->batch; p++)
            cblas_sgemm(CblasRowMajor, g->ta ? CblasTrans : CblasNoTrans,
                        g->tb ? CblasTrans : CblasNoTrans, (int)g->m, (int)g->n, (int)g->k,
                        1.0f, g->a + p * g->m * g->k, (int)lda, g->bm + p * g->stride_b,
                        (int)ldb, 0.0f, g->c + p * g->m * g->n, (int)g->n);
        return 0;
    }
    if (!g->b->gemm)
        return 1;
    ms_status st = g->b->gemm(MS_F32, g->ta, g->tb, g->batch, g->m, g->n, g->k, 1.0, g->a, lda,
                              g->m * g->k, g->bm, ldb, g->stride_b, 0.0, g->c, g->n,
                              g->m * g->n);
    return st == MS_OK ? 0 : 1;
}

typedef struct elem_args {
    const ms_backend *b;
    int op; /* 0 add, 1 tanh */
    int64_t n;
    float *x, *y, *z;
} elem_args;

static int run_elem(void *user)
{
    elem_args *e = user;
    if (e->op == 0) {
        if (!e->b->binary)
            return 1;
        const int64_t one = 1;
        return e->b->binary(MS_BINARY_ADD, MS_F32, 1, &e->n, e->x, &one, e->y, &one, e->z) !=
               MS_OK;
    }
    if (!e->b->unary)
        return 1;
    return e->b->unary(MS_UNARY_TANH, MS_F32, e->n, e->x, e->z) != MS_OK;
}

static float *random_floats(int64_t n, uint64_t seed)
{
    float *p = malloc((size_t)(n ? n : 1) * sizeof *p);
    if (!p)
        return NULL;
    ms_tensor *t = ms_random_uniform(MS_F32, 1, &n, -1, 1, seed);
    if (t)
        memcpy(p, ms_tensor_data(t), (size_t)n * sizeof *p);
    ms_release(t);
    return p;
}

static void machine(void)
{
    char model[256] = "unknown";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) == 0) {
                const char *v = strchr(line, ':');
                if (v) {
                    snprintf(model, sizeof model, "%s", v + 2);
                    model[strcspn(model, "\n")] = '\0';
                }
                break;
            }
        }
        fclose(f);
    }
    const char *ct = getenv("OPENBLAS_CORETYPE");
    const char *nt = getenv("OPENBLAS_NUM_THREADS"), *omp = getenv("OMP_NUM_THREADS");
    printf("machine: %s; %ld CPUs online\n", model, sysconf(_SC_NPROCESSORS_ONLN));
    printf("OPENBLAS_CORETYPE=%s, OPENBLAS_NUM_THREADS=%s; OpenBLAS core that ran: %s; %d threads\n",
           ct ? ct : "(unset)", nt ? nt : "(unset)", openblas_get_corename(),
           openblas_get_num_threads());
    printf("%s\nOMP_NUM_THREADS=%s (oneDNN runs on OpenMP: on an oversubscribed machine its spinning threads can cost 100x)\n", openblas_get_config(), omp ? omp : "(unset)");
}

typedef struct shape {
    const char *label;
    int64_t batch, m, n, k;
    bool shared_b; /* batch stride 0 for B: every task multiplies by the same weights */
    bool ta, tb;   /* op(A) = Aᵀ (A stored k×m), op(B) = Bᵀ (B stored n×k) */
} shape;

static const shape SHAPES[] = {
    {"8", 1, 8, 8, 8, false, false, false},
    {"16", 1, 16, 16, 16, false, false, false},
    {"32", 1, 32, 32, 32, false, false, false},
    {"64", 1, 64, 64, 64, false, false, false},
    {"128", 1, 128, 128, 128, false, false, false},
    {"256", 1, 256, 256, 256, false, false, false},
    {"512", 1, 512, 512, 512, false, false, false},
    {"1024", 1, 1024, 1024, 1024, false, false, false},
    {"250x40x40 (25 tasks x 10 rows)", 1, 250, 40, 40, false, false, false},
    {"1024x64x1024", 1, 1024, 1024, 64, false, false, false},
    {"1024x1024x64", 1, 1024, 64, 1024, false, false, false},
    {"25 x (10x40)(40x40) shared B", 25, 10, 40, 40, true, false, false},
    {"25 x (10x40)(40x40)", 25, 10, 40, 40, false, false, false},
    {"25 x (10x1)(1x40)", 25, 10, 40, 1, true, false, false},
    /* the backward pass of 25 x (10x40)(40x40): G Wᵀ and the per-task Xᵀ G */
    {"25 x (10x40)(40x40)T shared B", 25, 10, 40, 40, true, false, true},
    {"25 x (40x10)T(10x40)", 25, 40, 40, 10, false, true, false},
};
#define NSHAPES ((int)(sizeof SHAPES / sizeof *SHAPES))

typedef struct conv_args {
    const ms_backend *b;
    int kind; /* 0 forward (with bias), 1 backward data, 2 backward weights */
    ms_conv2d_desc d;
    float *x, *w, *bias, *y;
} conv_args;

static int run_conv(void *user)
{
    conv_args *a = user;
    const ms_backend *b = a->b;
    ms_status st = MS_ERR_UNSUPPORTED;
    switch (a->kind) {
    case 0:
        if (MS_BACKEND_HAS_SLOT(b, conv2d) && b->conv2d)
            st = b->conv2d(MS_F32, &a->d, a->x, a->w, a->bias, a->y);
        break;
    case 1:
        if (MS_BACKEND_HAS_SLOT(b, conv2d_backward_data) && b->conv2d_backward_data)
            st = b->conv2d_backward_data(MS_F32, &a->d, a->y, a->w, a->x);
        break;
    default:
        if (MS_BACKEND_HAS_SLOT(b, conv2d_backward_weights) && b->conv2d_backward_weights)
            st = b->conv2d_backward_weights(MS_F32, &a->d, a->x, a->y, a->w);
        break;
    }
    return st == MS_OK ? 0 : 1;
}

typedef struct conv_shape {
    int64_t n, c, hw;
} conv_shape;

/* Conv4 on 28x28 images: layer 1 (1 channel in) at 28x28, layers 2-4 (32 in)
 * at 14x14, 7x7 and 3x3 after each 2x2 pooling; 5 images (5-way 1-shot
 * support set) and 80 (5-way 16-query set, or a batch of support sets). */
static const conv_shape CONV_SHAPES[] = {
    {5, 1, 28}, {5, 32, 14}, {5, 32, 7}, {5, 32, 3},
    {80, 1, 28}, {80, 32, 14}, {80, 32, 7}, {80, 32, 3},
};
#define NCONV ((int)(sizeof CONV_SHAPES / sizeof *CONV_SHAPES))

static int bench_conv(int nb, const char *const *names, const ms_backend *const *tables)
{
    static const char *const kinds[] = {"forward (bias)", "backward data", "backward weights"};
    for (int kind = 0; kind < 3; kind++) {
        printf("\nfloat32 conv2d %s, 32 filters 3x3, stride 1, padding 1 (GFLOP/s, median of %d)\n",
               kinds[kind], REPEATS);
        printf("%-32s", "images x channels x size");
        for (int i = 0; i < nb; i++)
            printf(" %10s", names[i]);
        printf("\n");
        for (int s = 0; s < NCONV; s++) {
            const conv_shape *cs = &CONV_SHAPES[s];
            ms_conv2d_desc d = {cs->n, cs->c, cs->hw, cs->hw, 32, 3, 3, cs->hw, cs->hw, 1, 1};
            const double macs = (double)(d.n * d.o * d.oh * d.ow * d.c * d.kh * d.kw);
            if (smoke && macs > (double)(SMOKE_MAX_WORK / 4)) /* ref takes ~0.1 s here */
                continue;
            float *x = random_floats(d.n * d.c * d.h * d.w, 7);
            float *w = random_floats(d.o * d.c * d.kh * d.kw, 8);
            float *bias = random_floats(d.o, 9);
            float *y = random_floats(d.n * d.o * d.oh * d.ow, 10);
            if (!x || !w || !bias || !y) {
                fprintf(stderr, "bench-kernels: out of memory\n");
                return 1;
            }
            char label[64];
            snprintf(label, sizeof label, "%lld x %lld x %lldx%lld", (long long)d.n,
                     (long long)d.c, (long long)d.h, (long long)d.w);
            printf("%-32s", label);
            for (int i = 0; i < nb; i++) {
                conv_args a = {tables[i], kind, d, x, w, bias, y};
                double t = time_call(run_conv, &a);
                if (isnan(t))
                    printf(" %10s", "fallback");
                else
                    printf(" %10.2f", 2.0 * macs / t * 1e-9);
                fflush(stdout);
            }
            printf("\n");
            free(x);
            free(w);
            free(bias);
            free(y);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *defaults[] = {"ref", "openblas", "onednn", "xsmm"};
    const char *names[MAX_BACKENDS];
    const ms_backend *tables[MAX_BACKENDS];
    int nb = 0;
    if (argc > 1 && strcmp(argv[1], "--smoke") == 0) {
        smoke = true;
        argc--;
        argv++;
    }
    int nreq = argc > 1 ? argc - 1 : (int)(sizeof defaults / sizeof *defaults);
    for (int i = 0; i < nreq && nb < MAX_BACKENDS; i++) {
        const char *name = argc > 1 ? argv[i + 1] : defaults[i];
        const ms_backend *t = NULL;
        if (metastep_load_backend(name, &t) != MS_OK) {
            const char *msg = NULL;
            ms_last_error(&msg);
            fprintf(stderr, "bench-kernels: skipping %s: %s\n", name, msg ? msg : "");
            ms_clear_error();
            continue;
        }
        names[nb] = name;
        tables[nb++] = t;
    }
    machine();
    for (int i = 0; i < nb; i++)
        printf("backend %-9s %s\n", names[i], tables[i]->header.description);
    int blas_col = -1;
    for (int i = 0; i < nb; i++)
        if (strcmp(tables[i]->header.name, "openblas") == 0)
            blas_col = i;

    printf("\nfloat32 GEMM, C = op(A)*op(B), NN unless a T says so (GFLOP/s, median of %d)\n", REPEATS);
    printf("%-32s", "shape (m x n x k)");
    for (int i = 0; i < nb; i++)
        printf(" %10s", names[i]);
    printf(" %10s %12s\n", "cblas", "openblas/cb");
    for (int s = 0; s < NSHAPES; s++) {
        const shape *sh = &SHAPES[s];
        if (smoke && sh->batch * sh->m * sh->n * sh->k > SMOKE_MAX_WORK)
            continue;
        const int64_t bstride = sh->shared_b ? 0 : sh->k * sh->n;
        float *a = random_floats(sh->batch * sh->m * sh->k, 1);
        float *b = random_floats((sh->shared_b ? 1 : sh->batch) * sh->k * sh->n, 2);
        float *c = random_floats(sh->batch * sh->m * sh->n, 3);
        if (!a || !b || !c) {
            fprintf(stderr, "bench-kernels: out of memory\n");
            return 1;
        }
        const double flops = 2.0 * (double)(sh->batch * sh->m * sh->n * sh->k);
        printf("%-32s", sh->label);
        double blas_backend = NAN;
        for (int i = 0; i < nb; i++) {
            gemm_args g = {tables[i], sh->batch, sh->m, sh->n, sh->k, bstride, sh->ta, sh->tb, a, b, c};
            double t = time_call(run_gemm, &g);
            if (i == blas_col)
                blas_backend = t;
            if (isnan(t))
                printf(" %10s", "fallback");
            else
                printf(" %10.2f", flops / t * 1e-9);
            fflush(stdout);
        }
        gemm_args g = {NULL, sh->batch, sh->m, sh->n, sh->k, bstride, sh->ta, sh->tb, a, b, c};
        double direct = time_call(run_gemm, &g);
        printf(" %10.2f", flops / direct * 1e-9);
        if (!isnan(blas_backend))
            printf(" %12.3f", direct / blas_backend);
        printf("\n");
        free(a);
        free(b);
        free(c);
    }

    if (bench_conv(nb, names, tables) != 0)
        return 1;

    static const int64_t sizes[] = {1000, 65536, 1048576, 16777216};
    static const char *const ops[] = {"add", "tanh"};
    for (int op = 0; op < 2; op++) {
        printf("\nfloat32 %s (GB/s moved: %s; median of %d)\n", ops[op],
               op == 0 ? "3 x 4 bytes per element" : "2 x 4 bytes per element", REPEATS);
        printf("%-32s", "elements");
        for (int i = 0; i < nb; i++)
            printf(" %10s", names[i]);
        printf("\n");
        for (size_t z = 0; z < sizeof sizes / sizeof *sizes; z++) {
            const int64_t n = sizes[z];
            if (smoke && n > SMOKE_MAX_WORK)
                continue;
            float *x = random_floats(n, 4), *y = random_floats(n, 5), *o = random_floats(n, 6);
            if (!x || !y || !o) {
                fprintf(stderr, "bench-kernels: out of memory\n");
                return 1;
            }
            printf("%-32lld", (long long)n);
            for (int i = 0; i < nb; i++) {
                elem_args e = {tables[i], op, n, x, y, o};
                double t = time_call(run_elem, &e);
                if (isnan(t))
                    printf(" %10s", "fallback");
                else
                    printf(" %10.2f", (op == 0 ? 12.0 : 8.0) * (double)n / t * 1e-9);
                fflush(stdout);
            }
            printf("\n");
            free(x);
            free(y);
            free(o);
        }
    }
    printf("\n\"fallback\": the slot is NULL or declined the call (the reference backend would serve it).\n");
    return 0;
}
