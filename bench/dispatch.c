/* bench-dispatch: per-op dispatch overhead on tiny tensors.
 *
 * For every backend found, times ms_add, ms_mul, ms_tanh, ms_sum (4-element
 * float32) and ms_matmul (2×2 float32), each in a loop of N iterations with a
 * scope pushed and popped every 1000 iterations, repeated 5 times; reports
 * the median ns per op.  Beside each op it times the raw kernel call through
 * the backend's table (metastep_load_backend) on the same buffers, so the
 * frontend's overhead (op - kernel: validation, allocation, scope, dispatch)
 * is visible.  Op and kernel runs alternate; the table gives medians, and the
 * overhead from the fastest runs too (min op - min kernel), which a busy
 * machine disturbs least.  A kernel slot the backend leaves NULL is served by ref, as the
 * frontend does; such kernels are marked '*'.
 *
 * Each loop runs `iterations` times (default 1000000), or fewer for a slow
 * backend so that one run takes about half a second (the count is printed).
 *
 * usage: bench-dispatch [iterations [backend,backend,...]]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metastep/backend.h"
#include "metastep/metastep.h"

#define REPS 5
#define SCOPE_EVERY 1000
#define MAX_BACKENDS 16
#define RUN_BUDGET_NS 5e8 /* cap on one timed run for slow backends */

enum { OP_ADD, OP_MUL, OP_TANH, OP_SUM, OP_MATMUL, NOPS };
static const char *const op_names[NOPS] = {"ms_add", "ms_mul", "ms_tanh", "ms_sum",
                                           "ms_matmul"};

typedef struct inputs {
    ms_tensor *a, *b;   /* 4-element float32 */
    ms_tensor *m1, *m2; /* 2×2 float32 */
} inputs;

/* Wall time: a backend may run a kernel on worker threads (oneDNN's OpenMP),
 * so this thread's CPU time would leave that out. */
static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
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

static ms_tensor *run_op(int op, const inputs *in)
{
    switch (op) {
    case OP_ADD: return ms_add(in->a, in->b);
    case OP_MUL: return ms_mul(in->a, in->b);
    case OP_TANH: return ms_tanh(in->a);
    case OP_SUM: return ms_sum(in->a, 0, NULL, false);
    default: return ms_matmul(in->m1, in->m2);
    }
}

/* ns per op of one timed loop through the frontend; negative on failure */
static double time_op(int op, const inputs *in, long iters)
{
    double t0 = now_ns();
    ms_tensor *last = NULL;
    for (long i = 0; i < iters; i += SCOPE_EVERY) {
        ms_scope_push();
        long end = i + SCOPE_EVERY < iters ? i + SCOPE_EVERY : iters;
        for (long j = i; j < end; j++)
            last = run_op(op, in);
        if (!last) {
            ms_scope_pop();
            return -1;
        }
        ms_scope_pop();
    }
    return (now_ns() - t0) / (double)iters;
}

/* The table that serves a kernel family for backend t: its own slot, else ref's. */
typedef struct kernels {
    const ms_backend *unary, *binary, *reduce, *gemm;
} kernels;

/* ns per raw kernel call on the same buffers; negative on failure */
/* The reference table, for kernels that decline a call (the frontend then
 * calls ref too, counting a fallback). */
static const ms_backend *g_ref;

static ms_status call_kernel(int op, const kernels *k, const inputs *in, const ms_backend **used)
{
    static const int64_t shape[1] = {4}, unit[1] = {1};
    const void *a = ms_tensor_data(in->a), *b = ms_tensor_data(in->b);
    const void *m1 = ms_tensor_data(in->m1), *m2 = ms_tensor_data(in->m2);
    float y[4];
    const ms_backend *t = *used;
    switch (op) {
    case OP_ADD:
    case OP_MUL:
        return t->binary(op == OP_ADD ? MS_BINARY_ADD : MS_BINARY_MUL, MS_F32, 1, shape, a, unit,
                         b, unit, y);
    case OP_TANH:
        return t->unary(MS_UNARY_TANH, MS_F32, 4, a, y);
    case OP_SUM:
        return t->reduce(MS_REDUCE_SUM, MS_F32, 1, shape, 1u, a, y);
    default:
        (void)k;
        return t->gemm(MS_F32, false, false, 1, 2, 2, 2, 1.0, m1, 2, 0, m2, 2, 0, 0.0, y, 2, 4);
    }
}

static double time_kernel(int op, const kernels *k, const inputs *in, long iters)
{
    const ms_backend *t = op == OP_ADD || op == OP_MUL ? k->binary
                          : op == OP_TANH              ? k->unary
                          : op == OP_SUM               ? k->reduce
                                                       : k->gemm;
    if (call_kernel(op, k, in, &t) == MS_ERR_UNSUPPORTED)
        t = g_ref; /* declined at this size: what the frontend runs instead */
    ms_status st = MS_OK;
    double t0 = now_ns();
    for (long i = 0; i < iters && st == MS_OK; i++)
        st = call_kernel(op, k, in, &t);
    double dt = now_ns() - t0;
    return st == MS_OK ? dt / (double)iters : -1;
}

static void cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            const char *v = strchr(line, ':');
            if (v) {
                v++;
                while (*v == ' ' || *v == '\t')
                    v++;
                snprintf(buf, cap, "%s", v);
                buf[strcspn(buf, "\n")] = '\0';
            }
            break;
        }
    }
    fclose(f);
}

static int count_cpus(void)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return 0;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strncmp(line, "processor", 9) == 0;
    fclose(f);
    return n;
}

typedef struct found {
    int n;
    char name[MAX_BACKENDS][64];
} found;

static void collect(const char *name, const char *path, void *user)
{
    (void)path;
    found *f = user;
    if (f->n < MAX_BACKENDS)
        snprintf(f->name[f->n++], sizeof f->name[0], "%s", name);
}

static int backend_rank(const char *name)
{
    return strcmp(name, "ref") == 0 ? 0 : strcmp(name, "openblas") == 0 ? 1
         : strcmp(name, "onednn") == 0 ? 2 : 3;
}

static bool wanted(const char *only, const char *name)
{
    if (!only)
        return true;
    size_t n = strlen(name);
    for (const char *p = only; (p = strstr(p, name)) != NULL; p += n)
        if ((p == only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? strtol(argv[1], NULL, 10) : 1000000;
    const char *only = argc > 2 ? argv[2] : NULL;
    if (iters < SCOPE_EVERY || argc > 3) {
        fprintf(stderr, "usage: bench-dispatch [iterations >= %d [backend,...]]\n", SCOPE_EVERY);
        return 2;
    }

    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    const char *coretype = getenv("OPENBLAS_CORETYPE");
    printf("machine:           %s (%d logical cpus)\n", cpu, count_cpus());
    printf("OPENBLAS_CORETYPE: %s\n", coretype ? coretype : "(unset)");
    printf("loop:              %ld iterations, scope push/pop every %d, %d runs (wall clock)\n",
           iters, SCOPE_EVERY, REPS);

    /* the backends, ref first, then openblas, onednn, then any others */
    found f = {.n = 0};
    metastep_list_backends(collect, &f);
    for (int i = 1; i < f.n; i++)
        for (int j = i; j > 0 && backend_rank(f.name[j]) < backend_rank(f.name[j - 1]); j--) {
            char t[64];
            memcpy(t, f.name[j], sizeof t);
            memcpy(f.name[j], f.name[j - 1], sizeof t);
            memcpy(f.name[j - 1], t, sizeof t);
        }

    const ms_backend *ref = NULL;
    if (metastep_load_backend("ref", &ref) != MS_OK) {
        const char *msg;
        ms_last_error(&msg);
        fprintf(stderr, "bench-dispatch: %s\n", msg);
        return 1;
    }
    g_ref = ref;

    int nb = 0;
    char names[MAX_BACKENDS][64];
    kernels kern[MAX_BACKENDS];
    printf("\nbackends:\n");
    for (int i = 0; i < f.n; i++) {
        if (!wanted(only, f.name[i]))
            continue;
        const ms_backend *t = NULL;
        ms_clear_error();
        if (metastep_load_backend(f.name[i], &t) != MS_OK) {
            const char *msg;
            ms_last_error(&msg);
            printf("  %-9s skipped: %s\n", f.name[i], msg);
            continue;
        }
        memcpy(names[nb], f.name[i], sizeof names[nb]);
        kern[nb] = (kernels){t->unary ? t : ref, t->binary ? t : ref, t->reduce ? t : ref,
                             t->gemm ? t : ref};
        printf("  %-9s %s\n", names[nb], t->header.description);
        nb++;
    }
    ms_clear_error();

    const float av[4] = {0.5f, -1.25f, 2.0f, 0.75f}, bv[4] = {1.5f, 0.25f, -0.5f, 3.0f};
    int64_t s4[1] = {4}, s22[2] = {2, 2};
    inputs in = {ms_tensor_from_data(MS_F32, 1, s4, av), ms_tensor_from_data(MS_F32, 1, s4, bv),
                 ms_tensor_from_data(MS_F32, 2, s22, av), ms_tensor_from_data(MS_F32, 2, s22, bv)};
    if (!in.a || !in.b || !in.m1 || !in.m2) {
        fprintf(stderr, "bench-dispatch: cannot make the inputs\n");
        return 1;
    }

    double op_ns[MAX_BACKENDS][NOPS], k_ns[MAX_BACKENDS][NOPS], min_front[MAX_BACKENDS][NOPS];
    double k_spread[MAX_BACKENDS][NOPS]; /* slowest / fastest kernel run */
    long used[MAX_BACKENDS][NOPS];
    bool via_ref[MAX_BACKENDS][NOPS];
    for (int b = 0; b < nb; b++) {
        if (metastep_set_backend(names[b]) != MS_OK)
            return 1;
        const ms_backend *own[NOPS] = {kern[b].binary, kern[b].binary, kern[b].unary,
                                       kern[b].reduce, kern[b].gemm};
        for (int op = 0; op < NOPS; op++) {
            via_ref[b][op] = own[op] == ref && strcmp(names[b], "ref") != 0;
            double ro[REPS], rk[REPS];
            /* warm up (caches, lazy primitives) and size the runs */
            long n = iters;
            double w = time_op(op, &in, SCOPE_EVERY * 10);
            w = w > 0 ? w : 1;
            if (w * (double)n > RUN_BUDGET_NS)
                n = ((long)(RUN_BUDGET_NS / w) / SCOPE_EVERY + 1) * SCOPE_EVERY;
            time_kernel(op, &kern[b], &in, n / 10);
            used[b][op] = n;
            for (int r = 0; r < REPS; r++) {
                ro[r] = time_op(op, &in, n);
                rk[r] = time_kernel(op, &kern[b], &in, n);
            }
            op_ns[b][op] = median(ro, REPS); /* sorts ro and rk */
            k_ns[b][op] = median(rk, REPS);
            min_front[b][op] = ro[0] - rk[0];
            k_spread[b][op] = rk[0] > 0 ? rk[REPS - 1] / rk[0] : 1;
            if (op_ns[b][op] < 0 || k_ns[b][op] < 0) {
                const char *msg;
                ms_last_error(&msg);
                fprintf(stderr, "bench-dispatch: %s under %s failed: %s\n", op_names[op],
                        names[b], msg);
                return 1;
            }
        }
        metastep_unset_backend();
    }

    /* the table: per backend, op / kernel / frontend (= op - kernel) in ns */
    printf("\nns per op: op = through the frontend, kernel = the raw table call (* = served\n"
           "by ref), front = op - kernel (medians), fmin = fastest op - fastest kernel\n\n%-10s",
           "");
    for (int b = 0; b < nb; b++)
        printf(" | %-32s", names[b]);
    printf("\n%-10s", "op");
    for (int b = 0; b < nb; b++)
        printf(" | %7s %8s %7s %7s", "op", "kernel", "front", "fmin");
    printf("\n");
    for (int op = 0; op < NOPS; op++) {
        printf("%-10s", op_names[op]);
        for (int b = 0; b < nb; b++)
            printf(" | %7.1f %7.1f%s %7.1f %7.1f", op_ns[b][op], k_ns[b][op],
                   via_ref[b][op] ? "*" : " ", op_ns[b][op] - k_ns[b][op], min_front[b][op]);
        printf("\n");
    }
    for (int b = 0; b < nb; b++)
        for (int op = 0; op < NOPS; op++)
            if (used[b][op] != iters)
                printf("(%s %s: %ld iterations per run)\n", names[b], op_names[op], used[b][op]);
    /* the frontend's code is the same for every backend; an overhead is only
     * meaningful where the kernel's own time is steady */
    printf("\nlargest frontend overhead (fmin), target < 150 ns:\n");
    for (int b = 0; b < nb; b++) {
        double worst = 0, spread = 1;
        for (int op = 0; op < NOPS; op++) {
            worst = min_front[b][op] > worst ? min_front[b][op] : worst;
            spread = k_spread[b][op] > spread ? k_spread[b][op] : spread;
        }
        printf("  %-9s %8.1f ns", names[b], worst);
        if (spread > 1.5)
            printf("  (unreliable: kernel times vary %.1fx between runs)", spread);
        printf("\n");
    }

    ms_release(in.a);
    ms_release(in.b);
    ms_release(in.m1);
    ms_release(in.m2);
    return 0;
}
