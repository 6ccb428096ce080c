/* bench-meta: meta-steps per second of maml_step, fomaml_step and
 * reptile_step on the sine task (Finn et al.: MLP 1-40-40-1 ReLU, MSE,
 * 25 tasks, K = 10 support and 10 query points, inner lr 0.01), with 1 and
 * 5 inner steps, unbatched (a per-task loop: Ivy's batched=False) and
 * batched (variables replicated to a leading task axis: batched=True), on
 * every backend side by side.
 *
 * One timed meta-step is what `metastep train` does per step: the meta step
 * itself plus the outer Adam update (lr 1e-3) of the shared variables.  A
 * handful of meta-batches is sampled before timing and cycled through, so
 * task sampling is not timed.  For every configuration and backend the step
 * count N is calibrated so that one repeat takes about --target seconds
 * (0.5); then REPEATS repeats run with the backends interleaved (so drift on
 * a shared machine hits them alike) and the median is reported, in wall-clock
 * steps/s and in process-CPU steps/s (CPU time of all threads; on a loaded
 * machine it leaves out time spent waiting for a core, and a CPU/wall ratio
 * above 1 reveals a multi-threaded BLAS).
 *
 * Peak RSS of one process covers every configuration it ran; for the peak
 * of one configuration run it alone: --only ALGO:STEPS:MODE:BACKEND.
 *
 * usage: bench-meta [--backends ref,openblas,onednn] [--algos maml,fomaml,reptile]
 *                   [--steps 1,5] [--modes loop,batched] [--repeats N]
 *                   [--target SECONDS] [--n N] [--inner-v K,K] [--quick] [--json]
 *                   [--only ALGO:STEPS:MODE:BACKEND] [--dump DIR] [--threads N]
 *                   [--engine compiled|eager|both]
 *
 * --engine: compiled (the default) makes one plan per configuration and
 * backend (include/metastep/plan.h) and times its replays; eager times the
 * step functions; both runs the two side by side, interleaved.  A compiled
 * step runs on one thread whatever --threads says.
 *
 * --threads N (N > 1): every configuration and backend runs twice, with one
 * thread and with metastep_options.threads = N (the tasks of an unbatched
 * step on N threads; batched steps stay on one), interleaved, and the N-thread
 * row reports its speed-up over the one-thread row.  As metastep train
 * --threads N, each run sets the backend's kernel threads to its thread
 * count (metastep_set_backend_threads: OpenBLAS, oneDNN), which the worker
 * pool lowers to 1 while tasks run on several threads.
 *
 * --dump DIR does no timing: it writes the initial variables, the first
 * meta-batch and, per configuration and backend, the first meta-step's cost,
 * meta-gradient and Adam-updated variables as safetensors files, so that
 * another implementation (bench/compare-peers) can be checked against this one.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "benchutil.h"
#include "metastep/metastep.h"
#include "util.h" /* tools/util.c: JSON strings */

#define META_BATCH 25
#define K 10
#define INNER_LR 0.01
#define OUTER_LR 1e-3
#define NBATCHES 8
#define MAX_REPEATS 64
#define MAX_BACKENDS 8
#define MAX_LIST 8

typedef enum { ALGO_MAML, ALGO_FOMAML, ALGO_REPTILE, NALGOS } algo;
static const char *const algo_names[NALGOS] = {"maml", "fomaml", "reptile"};
static const char *const mode_names[2] = {"loop", "batched"};

typedef struct options {
    const char *backends[MAX_BACKENDS];
    int nbackends;
    int algos[MAX_LIST], nalgos;
    int steps[MAX_LIST], nsteps;
    int modes[2], nmodes;
    int repeats;
    double target;
    long fixed_n; /* --n: steps per repeat, no calibration (0: calibrate) */
    const char *dump; /* --dump DIR: write the first step's inputs and outputs, no timing */
    int threads;      /* --threads N: also run every configuration on N threads */
    bool quick, json, only;
    bool eager, both; /* --engine eager | both */
} options;

/* What one (configuration, backend) pair keeps across repeats. */
typedef struct run {
    const char *backend;
    int threads; /* metastep_options.threads */
    bool eager;  /* the step functions, not a compiled plan */
    metastep_plan *plan;
    bool ok;
    ms_container *vars;
    metastep_optim_state *opt;
    long n, done;
    double wall[MAX_REPEATS], cpu[MAX_REPEATS];
    double rate, cpu_rate, last_cost;
} run;

static const metastep_task *g_task;
static ms_container *g_batches[NBATCHES];

/* ------------------------------------------------------------- helpers */

static double median(const double *v, int n)
{
    double s[MAX_REPEATS];
    memcpy(s, v, (size_t)n * sizeof *v);
    qsort(s, (size_t)n, sizeof *s, bench_cmp_double);
    return n % 2 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
}

static void fail_ms(const char *what)
{
    const char *msg = NULL;
    ms_status st = ms_last_error(&msg);
    fprintf(stderr, "bench-meta: %s: %s\n", what, st != MS_OK && msg ? msg : "failed");
}

static void cpu_model(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            const char *p = strchr(line, ':');
            if (p) {
                p++;
                while (*p == ' ')
                    p++;
                snprintf(buf, cap, "%s", p);
                buf[strcspn(buf, "\n")] = '\0';
            }
            break;
        }
    }
    if (f)
        fclose(f);
}

static void loadavg(char *buf, size_t cap)
{
    snprintf(buf, cap, "?");
    FILE *f = fopen("/proc/loadavg", "r");
    double a, b, c;
    if (f && fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3)
        snprintf(buf, cap, "%.2f %.2f %.2f", a, b, c);
    if (f)
        fclose(f);
}

static const char *env_or(const char *name, const char *dflt)
{
    const char *v = getenv(name);
    return v && *v ? v : dflt;
}

static int index_of(const char *s, size_t len, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) == len && !strncmp(s, names[i], len))
            return i;
    return -1;
}

static int parse_mode(const char *s, size_t len)
{
    if (len == 9 && !strncmp(s, "unbatched", 9))
        return 0;
    return index_of(s, len, mode_names, 2);
}

/* ----------------------------------------------------------- the step */


/* --inner-v: the key chains that adapt in maml/fomaml (ANIL: l3/w,l3/b);
 * NULL-terminated, or NULL for all. */
static char g_inner_v_buf[256];
static int g_threads; /* the threads of the run being timed */
static const char *g_inner_v[8];
static bool g_has_inner_v;

/* The meta step alone (no outer update) of variables vars on batch: res
 * receives the cost and the meta-gradient.  With a plan slot, the step runs
 * compiled (the plan is made on first use); NULL: the step functions.  Call
 * inside a scope. */
static ms_status meta_step(const ms_container *vars, algo a, int steps, bool batched,
                           const ms_container *batch, metastep_result *res,
                           metastep_plan **plan)
{
    ms_container *v = batched ? ms_container_replicate(vars, META_BATCH) : ms_container_copy(vars);
    ms_status st = v ? MS_OK : ms_last_error(NULL);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = batched;
    o.inner_v = g_has_inner_v ? g_inner_v : NULL;
    o.threads = g_threads;
    metastep_reptile_options r = METASTEP_REPTILE_OPTIONS_DEFAULT;
    r.batched = batched;
    r.threads = g_threads;
    if (st == MS_OK && plan && !*plan)
        st = a == ALGO_REPTILE
                 ? metastep_plan_reptile(g_task->inner_cost, steps, INNER_LR, &r, plan)
                 : (a == ALGO_MAML ? metastep_plan_maml : metastep_plan_fomaml)(
                       g_task->inner_cost, g_task->outer_cost, steps, INNER_LR, &o, plan);
    if (st == MS_OK && plan)
        st = metastep_plan_run(*plan, batch, v, res);
    else if (st == MS_OK && a == ALGO_REPTILE)
        st = metastep_reptile_step(batch, g_task->inner_cost, v, steps, INNER_LR, &r, res);
    else if (st == MS_OK)
        st = (a == ALGO_MAML ? metastep_maml_step : metastep_fomaml_step)(
            batch, g_task->inner_cost, g_task->outer_cost, v, steps, INNER_LR, &o, res);
    ms_container_release(v);
    return st;
}

/* One meta-step as tools/cmd_train.c makes it: meta step, then Adam. */
static bool one_step(run *r, algo a, int steps, bool batched, const ms_container *batch)
{
    ms_scope_push();
    metastep_result res = {0};
    ms_status st = meta_step(r->vars, a, steps, batched, batch, &res, r->eager ? NULL : &r->plan);
    ms_container *next = st == MS_OK ? metastep_optim_step(r->opt, r->vars, res.grads, OUTER_LR, true)
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

static bool run_steps(run *r, algo a, int steps, bool batched, long n)
{
    for (long i = 0; i < n; i++, r->done++)
        if (!one_step(r, a, steps, batched, g_batches[r->done % NBATCHES]))
            return false;
    return true;
}

static bool push_backend(const char *name)
{
    if (metastep_set_backend(name) != MS_OK) {
        fail_ms(name);
        return false;
    }
    return true;
}

/* --dump DIR: what the first timed meta-step computes, for checking another
 * implementation against this one.  DIR/variables.safetensors holds the
 * initial variables and DIR/batch.safetensors the first meta-batch (both the
 * same for every configuration); DIR/step-ALGO-STEPS-MODE-BACKEND.safetensors
 * holds "cost", the meta-gradient under "grads/..." (before the outer
 * update) and the variables after the outer Adam update under "updated/...". */
static bool save_or_fail(const ms_container *c, const char *dir, const char *name)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) {
        fprintf(stderr, "bench-meta: --dump: path too long\n");
        return false;
    }
    if (ms_container_save(c, path) != MS_OK) {
        fail_ms(path);
        return false;
    }
    printf("wrote %s\n", path);
    return true;
}

static bool put_prefixed(ms_container *out, const char *prefix, const ms_container *c)
{
    char key[512];
    for (int i = 0; i < ms_container_size(c); i++) {
        snprintf(key, sizeof key, "%s/%s", prefix, ms_container_key(c, i));
        if (ms_container_set(out, key, ms_container_at(c, i)) != MS_OK)
            return false;
    }
    return true;
}

static bool dump_config(const char *dir, algo a, int steps, bool batched, const char *backend)
{
    if (!push_backend(backend))
        return false;
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    ms_container *vars = g_task->init_variables(0, MS_F32), *out = ms_container_new();
    metastep_optim_state *opt = metastep_optim_state_new(&adam);
    bool ok = vars && out && opt;
    ms_scope_push();
    metastep_result res = {0};
    ms_container *next = NULL;
    if (ok)
        ok = meta_step(vars, a, steps, batched, g_batches[0], &res, NULL) == MS_OK;
    if (ok)
        ok = (next = metastep_optim_step(opt, vars, res.grads, OUTER_LR, true)) != NULL;
    if (ok)
        ok = ms_container_set(out, "cost", res.cost) == MS_OK &&
             put_prefixed(out, "grads", res.grads) && put_prefixed(out, "updated", next);
    if (!ok)
        fail_ms("--dump: meta-step failed");
    char name[256];
    snprintf(name, sizeof name, "step-%s-%d-%s-%s.safetensors", algo_names[a], steps,
             mode_names[batched], backend);
    ok = ok && save_or_fail(out, dir, name);
    ms_container_release(next);
    metastep_result_release(&res);
    ms_scope_pop();
    ms_container_release(out);
    ms_container_release(vars);
    metastep_optim_state_release(opt);
    metastep_unset_backend();
    return ok;
}

static int dump_all(const char *dir, const options *o)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST) {
        fprintf(stderr, "bench-meta: --dump: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    ms_container *vars = g_task->init_variables(0, MS_F32);
    bool ok = vars && save_or_fail(vars, dir, "variables.safetensors") &&
              save_or_fail(g_batches[0], dir, "batch.safetensors");
    ms_container_release(vars);
    for (int ia = 0; ok && ia < o->nalgos; ia++)
        for (int is = 0; ok && is < o->nsteps; is++)
            for (int im = 0; ok && im < o->nmodes; im++)
                for (int b = 0; ok && b < o->nbackends; b++)
                    ok = dump_config(dir, (algo)o->algos[ia], o->steps[is], o->modes[im] == 1,
                                     o->backends[b]);
    return ok ? 0 : 1;
}

/* Fresh variables and Adam state, warm-up and calibration of N. */
static bool prepare(run *r, algo a, int steps, bool batched, const options *o)
{
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    r->vars = g_task->init_variables(0, MS_F32);
    r->opt = metastep_optim_state_new(&adam);
    if (!r->vars || !r->opt) {
        fail_ms("cannot initialise the variables");
        return false;
    }
    if (!run_steps(r, a, steps, batched, 2)) /* warm-up: caches, allocator, primitives */
        return false;
    if (o->fixed_n > 0) {
        r->n = o->fixed_n;
        return true;
    }
    long n = 1;
    for (;;) {
        double t0 = bench_clock(CLOCK_MONOTONIC);
        if (!run_steps(r, a, steps, batched, n))
            return false;
        double t = bench_clock(CLOCK_MONOTONIC) - t0;
        if (t >= 0.2 * o->target || n >= (1L << 20)) {
            double per = t / (double)n;
            r->n = (long)ceil(o->target / (per > 1e-9 ? per : 1e-9));
            if (r->n < 1)
                r->n = 1;
            return true;
        }
        n *= 4;
    }
}

static void release_run(run *r)
{
    ms_container_release(r->vars);
    metastep_optim_state_release(r->opt);
    metastep_plan_free(r->plan);
    r->vars = NULL;
    r->opt = NULL;
    r->plan = NULL;
}

static void finish_run(run *r, int repeats)
{
    double w = median(r->wall, repeats), c = median(r->cpu, repeats);
    r->rate = w > 0 ? (double)r->n / w : 0;
    r->cpu_rate = c > 0 ? (double)r->n / c : 0;
    release_run(r);
}

/* Runs per configuration: per backend, per engine (--engine both: compiled,
 * then eager), one thread (and N threads with --threads N). */
static int per_backend(const options *o) { return (o->threads > 1 ? 2 : 1) * (o->both ? 2 : 1); }
static int nruns(const options *o) { return o->nbackends * per_backend(o); }

/* One configuration on every backend: calibrate each, then interleave. */
static void bench_config(const options *o, algo a, int steps, bool batched, run *runs)
{
    const int per = per_backend(o), tpr = o->threads > 1 ? 2 : 1, nr = nruns(o);
    for (int b = 0; b < nr; b++) {
        runs[b] = (run){.backend = o->backends[b / per],
                        .threads = (b % per) % tpr ? o->threads : 1,
                        .eager = o->both ? (b % per) / tpr == 1 : o->eager};
        if (!push_backend(runs[b].backend))
            continue;
        g_threads = runs[b].threads;
        metastep_set_backend_threads(g_threads); /* as metastep train --threads N */
        runs[b].ok = prepare(&runs[b], a, steps, batched, o);
        if (!runs[b].ok)
            fail_ms("meta-step failed");
        metastep_unset_backend();
    }
    for (int rep = 0; rep < o->repeats; rep++) {
        for (int b = 0; b < nr; b++) {
            run *r = &runs[b];
            if (!r->ok || !push_backend(r->backend)) {
                r->ok = false;
                continue;
            }
            g_threads = r->threads;
            metastep_set_backend_threads(g_threads);
            double w0 = bench_clock(CLOCK_MONOTONIC), c0 = bench_clock(CLOCK_PROCESS_CPUTIME_ID);
            r->ok = run_steps(r, a, steps, batched, r->n);
            r->wall[rep] = bench_clock(CLOCK_MONOTONIC) - w0;
            r->cpu[rep] = bench_clock(CLOCK_PROCESS_CPUTIME_ID) - c0;
            if (!r->ok)
                fail_ms("meta-step failed");
            metastep_unset_backend();
        }
    }
    for (int b = 0; b < nr; b++)
        if (runs[b].ok)
            finish_run(&runs[b], o->repeats);
        else
            release_run(&runs[b]);
}

/* The speed-up of run r over the one-thread run of its backend (just before
 * it), or 0 when r is a one-thread run. */
static const char *engine_name(const run *r) { return r->eager ? "eager" : "compiled"; }

static double speedup(const run *runs, int b)
{
    const run *r = &runs[b];
    if (r->threads <= 1 || b == 0 || !runs[b - 1].ok || runs[b - 1].rate <= 0)
        return 0;
    return r->rate / runs[b - 1].rate;
}

/* ------------------------------------------------------------ options */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench-meta [options]\n"
            "Meta-steps/s of maml/fomaml/reptile on the sine task (25 tasks, K=10, MLP\n"
            "1-40-40-1), each step including the outer Adam update, per backend.\n"
            "  --backends A,B,..   backends side by side            [ref,openblas,onednn]\n"
            "  --algos A,B,..      maml,fomaml,reptile               [all]\n"
            "  --steps N,M,..      inner steps                       [1,5]\n"
            "  --modes A,B         loop (unbatched), batched          [loop,batched]\n"
            "  --repeats N         timed repeats; the median is reported  [5; --quick 3]\n"
            "  --target S          seconds per repeat                [0.5; --quick 0.15]\n"
            "  --quick             fewer and shorter repeats\n"
            "  --n N               N steps per repeat, no calibration (for instruction counts)\n"
            "  --inner-v K,K       maml/fomaml adapt only these key chains (ANIL: l3/w,l3/b)\n"
            "  --json              machine-readable output on stdout\n"
            "  --dump DIR          no timing: write the initial variables, the first meta-batch\n"
            "                      and each configuration's first meta-gradient (and Adam update)\n"
            "                      as safetensors files in DIR\n"
            "  --only ALGO:STEPS:MODE:BACKEND   one configuration (for its own peak RSS)\n"
            "  --engine E          compiled (metastep_plan_*), eager (the step functions),\n"
            "                      or both side by side, interleaved  [compiled]\n"
            "  --threads N         also run each configuration with N threads (options.threads)\n"
            "                      and report the speed-up over one thread\n");
}

/* Split a comma-separated list; each item goes through fn. */
static bool parse_list(const char *s, bool (*fn)(const char *, size_t, options *), options *o)
{
    while (*s) {
        size_t len = strcspn(s, ",");
        if (len && !fn(s, len, o))
            return false;
        s += len;
        if (*s == ',')
            s++;
    }
    return true;
}

static bool add_backend(const char *s, size_t len, options *o)
{
    if (o->nbackends >= MAX_BACKENDS)
        return false;
    char *name = malloc(len + 1); /* lives until exit */
    if (!name)
        return false;
    memcpy(name, s, len);
    name[len] = '\0';
    o->backends[o->nbackends++] = name;
    return true;
}

static bool add_algo(const char *s, size_t len, options *o)
{
    int k = index_of(s, len, algo_names, NALGOS);
    if (k < 0 || o->nalgos >= MAX_LIST)
        return false;
    o->algos[o->nalgos++] = k;
    return true;
}

static bool add_steps(const char *s, size_t len, options *o)
{
    char buf[32], *end;
    if (len >= sizeof buf || o->nsteps >= MAX_LIST)
        return false;
    memcpy(buf, s, len);
    buf[len] = '\0';
    long v = strtol(buf, &end, 10);
    if (*end || v < 0 || v > 1000)
        return false;
    o->steps[o->nsteps++] = (int)v;
    return true;
}

static bool add_mode(const char *s, size_t len, options *o)
{
    int k = parse_mode(s, len);
    if (k < 0 || o->nmodes >= 2)
        return false;
    o->modes[o->nmodes++] = k;
    return true;
}

/* ALGO:STEPS:MODE:BACKEND */
static bool parse_only(const char *s, options *o)
{
    const char *p[4];
    size_t len[4];
    for (int i = 0; i < 4; i++) {
        p[i] = s;
        len[i] = strcspn(s, ":");
        if (!len[i] || (i < 3 && s[len[i]] != ':') || (i == 3 && s[len[i]]))
            return false;
        s += len[i] + (i < 3);
    }
    o->nalgos = o->nsteps = o->nmodes = o->nbackends = 0;
    o->only = true;
    return add_algo(p[0], len[0], o) && add_steps(p[1], len[1], o) && add_mode(p[2], len[2], o) &&
           add_backend(p[3], len[3], o);
}

static int parse(int argc, char **argv, options *o)
{
    bool only = false;
    *o = (options){.repeats = 0, .target = 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--quick")) { o->quick = true; continue; }
        if (!strcmp(a, "--json")) { o->json = true; continue; }
        if (i + 1 >= argc) {
            fprintf(stderr, "bench-meta: missing value for %s\n", a);
            return 2;
        }
        const char *v = argv[++i];
        bool ok;
        if (!strcmp(a, "--backends")) { o->nbackends = 0; ok = parse_list(v, add_backend, o); }
        else if (!strcmp(a, "--algos")) { o->nalgos = 0; ok = parse_list(v, add_algo, o); }
        else if (!strcmp(a, "--steps")) { o->nsteps = 0; ok = parse_list(v, add_steps, o); }
        else if (!strcmp(a, "--modes")) { o->nmodes = 0; ok = parse_list(v, add_mode, o); }
        else if (!strcmp(a, "--repeats")) {
            o->repeats = atoi(v);
            ok = o->repeats >= 1 && o->repeats <= MAX_REPEATS;
        } else if (!strcmp(a, "--target")) {
            o->target = atof(v);
            ok = o->target > 0 && o->target < 3600;
        } else if (!strcmp(a, "--inner-v")) {
            ok = strlen(v) < sizeof g_inner_v_buf;
            if (ok) {
                strcpy(g_inner_v_buf, v);
                int k = 0;
                for (char *save = NULL, *t = strtok_r(g_inner_v_buf, ",", &save); ok && t;
                     t = strtok_r(NULL, ",", &save))
                    ok = k < 7 ? (g_inner_v[k++] = t, true) : false;
                g_inner_v[k] = NULL;
                g_has_inner_v = ok && k > 0;
            }
        } else if (!strcmp(a, "--n")) {
            o->fixed_n = atol(v);
            ok = o->fixed_n >= 1 && o->fixed_n <= (1L << 30);
        } else if (!strcmp(a, "--engine")) {
            ok = !strcmp(v, "compiled") || !strcmp(v, "eager") || !strcmp(v, "both");
            o->eager = !strcmp(v, "eager");
            o->both = !strcmp(v, "both");
        } else if (!strcmp(a, "--threads")) {
            char *end;
            long t = strtol(v, &end, 10);
            ok = *end == '\0' && t >= 1 && t <= 256;
            o->threads = (int)t;
        } else if (!strcmp(a, "--dump")) {
            o->dump = v;
            ok = *v != '\0';
        } else if (!strcmp(a, "--only")) {
            ok = only = parse_only(v, o);
        } else {
            fprintf(stderr, "bench-meta: unknown option '%s' (try --help)\n", a);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "bench-meta: invalid value '%s' for %s (try --help)\n", v, a);
            return 2;
        }
        if (only && strcmp(a, "--only") && (!strcmp(a, "--backends") || !strcmp(a, "--algos") ||
                                            !strcmp(a, "--steps") || !strcmp(a, "--modes"))) {
            fprintf(stderr, "bench-meta: --only names the whole configuration\n");
            return 2;
        }
    }
    if (!o->nbackends) {
        static const char *const dflt[] = {"ref", "openblas", "onednn"};
        for (int i = 0; i < 3; i++)
            o->backends[o->nbackends++] = dflt[i];
    }
    if (!o->nalgos)
        for (int i = 0; i < NALGOS; i++)
            o->algos[o->nalgos++] = i;
    if (!o->nsteps) {
        o->steps[o->nsteps++] = 1;
        o->steps[o->nsteps++] = 5;
    }
    if (!o->nmodes) {
        o->modes[o->nmodes++] = 0;
        o->modes[o->nmodes++] = 1;
    }
    if (!o->repeats)
        o->repeats = o->quick ? 3 : 5;
    if (o->target <= 0)
        o->target = o->quick ? 0.15 : 0.5;
    return -1;
}

/* ------------------------------------------------------------- output */

static void print_machine_text(const char *cpu, long cores, const char *load, const options *o)
{
    printf("machine: %s, %ld cores online; OPENBLAS_CORETYPE=%s OPENBLAS_NUM_THREADS=%s "
           "OMP_NUM_THREADS=%s; load average %s\n",
           cpu, cores, env_or("OPENBLAS_CORETYPE", "(unset)"),
           env_or("OPENBLAS_NUM_THREADS", "(unset)"), env_or("OMP_NUM_THREADS", "(unset)"), load);
    printf("setting: sine, %d tasks, K=%d, MLP 1-40-40-1 ReLU, float32, inner lr %g, Adam outer "
           "lr %g (included); %d pre-sampled batches cycled; median of %d repeats of ~%.2g s\n",
           META_BATCH, K, INNER_LR, OUTER_LR, NBATCHES, o->repeats, o->target);
    for (int b = 0; b < o->nbackends; b++) {
        const char *d = metastep_backend_description(o->backends[b]);
        printf("backend %-9s %s\n", o->backends[b], d ? d : "(not loaded)");
    }
}

int main(int argc, char **argv)
{
    options o;
    int rc = parse(argc, argv, &o);
    if (rc >= 0)
        return rc;
    if (metastep_load_task("sine", &g_task) != MS_OK) {
        fail_ms("cannot load the task plugin 'sine'");
        return 1;
    }
    for (int i = 0; i < NBATCHES; i++) {
        g_batches[i] = g_task->sample(META_BATCH, K, 1000 + (uint64_t)i, MS_F32);
        if (!g_batches[i]) {
            fail_ms("cannot sample a meta-batch");
            return 1;
        }
    }
    if (o.dump) {
        rc = dump_all(o.dump, &o);
        for (int i = 0; i < NBATCHES; i++)
            ms_container_release(g_batches[i]);
        return rc;
    }
    /* load every backend once up front, for the descriptions */
    for (int b = 0; b < o.nbackends; b++)
        if (push_backend(o.backends[b]))
            metastep_unset_backend();

    char cpu[256], load[64];
    cpu_model(cpu, sizeof cpu);
    loadavg(load, sizeof load);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (!o.json) {
        print_machine_text(cpu, cores, load, &o);
        printf("\n%-8s %5s %-8s %-9s %-8s %3s %10s %10s %8s %7s %10s %8s\n", "algo", "inner",
               "mode", "backend", "engine", "thr", "steps/s", "cpu-st/s", "cpu/wall", "N", "cost",
               "speed-up");
        fflush(stdout);
    }

    int ncfg = o.nalgos * o.nsteps * o.nmodes;
    const int nr = nruns(&o);
    run *all = calloc((size_t)ncfg * (size_t)nr, sizeof *all);
    if (!all)
        return 1;
    int c = 0;
    for (int ia = 0; ia < o.nalgos; ia++)
        for (int is = 0; is < o.nsteps; is++)
            for (int im = 0; im < o.nmodes; im++, c++) {
                algo a = (algo)o.algos[ia];
                int steps = o.steps[is];
                bool batched = o.modes[im] == 1;
                run *runs = all + (size_t)c * (size_t)nr;
                bench_config(&o, a, steps, batched, runs);
                if (o.json)
                    continue;
                for (int b = 0; b < nr; b++) {
                    run *r = &runs[b];
                    if (!r->ok) {
                        printf("%-8s %5d %-8s %-9s %-8s %3d %10s\n", algo_names[a], steps,
                               mode_names[batched], r->backend, engine_name(r), r->threads,
                               "failed");
                        continue;
                    }
                    printf("%-8s %5d %-8s %-9s %-8s %3d %10.1f %10.1f %8.2f %7ld %10.4g",
                           algo_names[a], steps, mode_names[batched], r->backend, engine_name(r),
                           r->threads, r->rate,
                           r->cpu_rate,
                           r->rate > 0 ? r->cpu_rate > 0 ? r->rate / r->cpu_rate : 0 : 0, r->n,
                           r->last_cost);
                    double su = speedup(runs, b);
                    if (su > 0)
                        printf(" %7.2fx", su);
                    printf("\n");
                }
                fflush(stdout);
            }
    long peak = bench_peak_rss_kib();
    loadavg(load, sizeof load);
    if (!o.json) {
        printf("\npeak RSS of this process (all configurations above): %.1f MiB "
               "(one configuration alone: --only ALGO:STEPS:MODE:BACKEND); load average now %s\n",
               (double)peak / 1024.0, load);
    } else {
        printf("{\n  \"program\": \"bench-meta\",\n  \"machine\": {\"cpu\": ");
        util_json_string(stdout, cpu);
        printf(", \"cores\": %ld, \"openblas_coretype\": ", cores);
        util_json_string(stdout, env_or("OPENBLAS_CORETYPE", ""));
        printf(", \"openblas_num_threads\": ");
        util_json_string(stdout, env_or("OPENBLAS_NUM_THREADS", ""));
        printf(", \"omp_num_threads\": ");
        util_json_string(stdout, env_or("OMP_NUM_THREADS", ""));
        printf(", \"loadavg_end\": ");
        util_json_string(stdout, load);
        printf("},\n  \"backends\": {");
        for (int b = 0; b < o.nbackends; b++) {
            printf("%s", b ? ", " : "");
            util_json_string(stdout, o.backends[b]);
            printf(": ");
            const char *d = metastep_backend_description(o.backends[b]);
            util_json_string(stdout, d ? d : "");
        }
        printf("},\n  \"setting\": {\"task\": \"sine\", \"meta_batch\": %d, \"k\": %d, "
               "\"inner_lr\": %g, \"outer_lr\": %g, \"outer_optim\": \"adam\", "
               "\"dtype\": \"float32\", \"repeats\": %d, \"target_seconds\": %g},\n",
               META_BATCH, K, INNER_LR, OUTER_LR, o.repeats, o.target);
        printf("  \"only\": %s,\n  \"peak_rss_mib\": %.2f,\n  \"results\": [", o.only ? "true" : "false",
               (double)peak / 1024.0);
        c = 0;
        bool first = true;
        for (int ia = 0; ia < o.nalgos; ia++)
            for (int is = 0; is < o.nsteps; is++)
                for (int im = 0; im < o.nmodes; im++, c++)
                    for (int b = 0; b < nr; b++) {
                        run *r = &all[(size_t)c * (size_t)nr + (size_t)b];
                        printf("%s\n    {\"algo\": \"%s\", \"inner_steps\": %d, \"mode\": \"%s\", "
                               "\"backend\": ",
                               first ? "" : ",", algo_names[o.algos[ia]], o.steps[is],
                               mode_names[o.modes[im]]);
                        first = false;
                        util_json_string(stdout, r->backend);
                        if (!r->ok) {
                            printf(", \"ok\": false}");
                            continue;
                        }
                        printf(", \"engine\": \"%s\", \"threads\": %d", engine_name(r), r->threads);
                        if (speedup(all + (size_t)c * (size_t)nr, b) > 0)
                            printf(", \"speedup\": %.3f", speedup(all + (size_t)c * (size_t)nr, b));
                        printf(", \"ok\": true, \"steps_per_s\": %.3f, \"cpu_steps_per_s\": %.3f, "
                               "\"n\": %ld, \"repeat_seconds\": [",
                               r->rate, r->cpu_rate, r->n);
                        for (int k = 0; k < o.repeats; k++)
                            printf("%s%.4f", k ? ", " : "", r->wall[k]);
                        printf("], \"last_cost\": %.6g}", r->last_cost);
                    }
        printf("\n  ]\n}\n");
    }
    bool any_failed = false;
    for (int i = 0; i < ncfg * nr; i++)
        any_failed |= !all[i].ok;
    free(all);
    for (int i = 0; i < NBATCHES; i++)
        ms_container_release(g_batches[i]);
    return any_failed ? 1 : 0;
}
