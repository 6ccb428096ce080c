/* bench-mpi: what metastep's MPI exchange costs (docs/scaling.md).
 *
 *   mpirun -np R build-rel/bench/bench-mpi [--params 1761,28485] [--tasks 25]
 *          [--iters 200] [--repeats 5] [--steps 40] [--task sine|images]
 *          [--meta-batch 25] [--json]
 *
 * Part 1, the collectives alone, for each parameter count P (defaults: the
 * sine MLP 1-40-40-1 and the images task's Conv4 with F=32, 5 ways):
 *   latency    MPI_Allreduce of one int (the model's alpha term);
 *   allreduce  MPI_Allreduce of P floats (MPI_SUM): what an order-free sum of
 *              per-rank gradients would move;
 *   allgather  metastep's exchange: MPI_Allreduce of 4 long longs (the ranks'
 *              agreement on the layout) + MPI_Allgatherv of --tasks records
 *              of 256 + 4 P bytes, shared out as metastep_mpi_share does.
 * Each is timed --iters times after a warm-up; a repeat's figure is the
 * slowest rank's mean per call; the median and min-max of --repeats are
 * printed.
 *
 * Part 2, in situ (--steps > 0): --steps meta-steps of MAML (1 inner step)
 * on --task with --meta-batch tasks through metastep_options.shard with
 * libmetastep-mpi's exchange wrapped by a timer: seconds per meta-step and
 * the part spent in the exchange (waiting for the slowest rank included),
 * median of --repeats, and the bytes a rank receives per meta-step.  On one
 * rank the step runs unsharded (no exchange).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "benchutil.h"
#include "metastep/metastep.h"
#include "metastep/mpi.h"

static int rank, size;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The slowest rank's value. */
static double slowest(double t)
{
    double m = t;
    MPI_Allreduce(&t, &m, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return m;
}

typedef enum { LATENCY, ALLREDUCE, ALLGATHER } op;
static const char *op_names[] = {"latency", "allreduce", "allgather"};

static double time_op(op which, long p, int tasks, int iters)
{
    size_t rec = 256 + 4 * (size_t)p;
    float *g = calloc((size_t)p, sizeof *g), *sum = calloc((size_t)p, sizeof *sum);
    char *recs = calloc((size_t)tasks, rec);
    int *counts = malloc(sizeof(int) * (size_t)size), *displs = malloc(sizeof(int) * (size_t)size);
    for (int r = 0; r < size; r++)
        metastep_mpi_share(tasks, size, r, &displs[r], &counts[r]);
    MPI_Datatype type;
    MPI_Type_contiguous((int)rec, MPI_BYTE, &type);
    MPI_Type_commit(&type);
    double t = 0;
    for (int pass = 0; pass < 2; pass++) { /* a warm-up pass, then the timed one */
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = now();
        for (int i = 0; i < iters; i++) {
            if (which == LATENCY) {
                int one = i, out = 0;
                MPI_Allreduce(&one, &out, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
            } else if (which == ALLREDUCE) {
                MPI_Allreduce(g, sum, (int)p, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            } else {
                long long mine[4] = {(long long)rec, tasks, -(long long)rec, -tasks}, agg[4];
                MPI_Allreduce(mine, agg, 4, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
                MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, recs, counts, displs, type,
                               MPI_COMM_WORLD);
            }
        }
        t = (now() - t0) / iters;
    }
    MPI_Type_free(&type);
    free(g);
    free(sum);
    free(recs);
    free(counts);
    free(displs);
    return slowest(t);
}

/* ---- part 2: the exchange timed inside real meta-steps ---- */

static metastep_mpi_shard g_inner;
static double g_exchange_s;
static size_t g_record;

static ms_status timed_exchange(void *ctx, void *records, size_t bytes, int n, int first, int count)
{
    (void)ctx;
    double t0 = now();
    ms_status st = g_inner.shard.exchange(g_inner.shard.ctx, records, bytes, n, first, count);
    g_exchange_s += now() - t0;
    g_record = bytes;
    return st;
}

static const metastep_task *g_task;

static double run_steps(int steps, int meta_batch, ms_container *vars, double *exchange)
{
    metastep_shard sh = {0, 0, timed_exchange, NULL};
    if (size > 1) {
        if (metastep_mpi_shard_init(&g_inner, MPI_COMM_WORLD, meta_batch) != MS_OK)
            return -1;
        sh.first = g_inner.shard.first;
        sh.count = g_inner.shard.count;
    }
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    metastep_optim_state *opt = metastep_optim_state_new(&adam);
    ms_container *v = ms_container_copy(vars);
    g_exchange_s = 0;
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = now();
    for (int s = 0; s < steps && v; s++) {
        ms_scope_push();
        ms_container *batch = g_task->sample(meta_batch, 10, 1000 + (uint64_t)s, MS_F32);
        metastep_options o = METASTEP_OPTIONS_DEFAULT;
        o.batched = false;
        o.threads = 1;
        o.shard = size > 1 ? &sh : NULL;
        metastep_result r = {0};
        ms_status st = batch ? metastep_maml_step(batch, g_task->inner_cost, g_task->outer_cost,
                                                  v, 1, 0.01, &o, &r)
                             : MS_ERR_INTERNAL;
        ms_container *next = st == MS_OK ? metastep_optim_step(opt, v, r.grads, 1e-3, true) : NULL;
        ms_container_release(v);
        v = next;
        metastep_result_release(&r);
        ms_container_release(batch);
        ms_scope_pop();
    }
    double t = (now() - t0) / steps;
    if (!v) {
        const char *m = NULL;
        ms_last_error(&m);
        fprintf(stderr, "bench-mpi: rank %d: meta-step failed: %s\n", rank, m);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    ms_container_release(v);
    metastep_optim_state_release(opt);
    *exchange = slowest(g_exchange_s / steps);
    return slowest(t);
}

static void stats(double *v, int n, double *med, double *lo, double *hi)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    *med = v[n / 2];
    *lo = v[0];
    *hi = v[n - 1];
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    long params[8] = {1761, 28485};
    int np = 2, tasks = 25, iters = 200, repeats = 5, steps = 40, meta_batch = 25;
    const char *task = "sine";
    bool json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(a, "--params")) {
            np = 0;
            for (char *s = strtok(argv[++i], ","); s && np < 8; s = strtok(NULL, ","))
                params[np++] = atol(s);
        } else if (!strcmp(a, "--tasks")) {
            tasks = atoi(v), i++;
        } else if (!strcmp(a, "--iters")) {
            iters = atoi(v), i++;
        } else if (!strcmp(a, "--repeats")) {
            repeats = atoi(v), i++;
        } else if (!strcmp(a, "--steps")) {
            steps = atoi(v), i++;
        } else if (!strcmp(a, "--meta-batch")) {
            meta_batch = atoi(v), i++;
        } else if (!strcmp(a, "--task")) {
            task = v, i++;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else {
            if (rank == 0)
                fprintf(stderr, "bench-mpi: unknown option %s (see bench/mpi.c)\n", a);
            MPI_Finalize();
            return 2;
        }
    }
    if (repeats < 1 || repeats > 50 || iters < 1 || tasks < 1 || meta_batch < 1) {
        MPI_Finalize();
        return 2;
    }
    double v[50], med, lo, hi;
    if (rank == 0)
        printf(json ? "{\"program\": \"bench-mpi\", \"ranks\": %d, \"tasks\": %d, \"collectives\": ["
                    : "bench-mpi: %d ranks, %d tasks per exchange; seconds per call, median "
                      "(min-max) of the slowest rank over repeats\n",
               size, tasks);
    int first = 1;
    for (int k = 0; k < np; k++)
        for (int w = 0; w < 3; w++) {
            if (w == LATENCY && k > 0)
                continue;
            for (int r = 0; r < repeats; r++)
                v[r] = time_op((op)w, params[k], tasks, w == ALLGATHER && params[k] > 100000
                                                           ? (iters + 9) / 10 : iters);
            stats(v, repeats, &med, &lo, &hi);
            double bytes = w == LATENCY ? 4 : w == ALLREDUCE ? 4.0 * (double)params[k]
                                                             : (double)tasks * (256 + 4.0 * (double)params[k]);
            if (rank == 0 && json)
                printf("%s\n  {\"op\": \"%s\", \"params\": %ld, \"bytes\": %.0f, \"seconds\": %.4g, "
                       "\"min\": %.4g, \"max\": %.4g}", first ? "" : ",", op_names[w],
                       w == LATENCY ? 0 : params[k], bytes, med, lo, hi);
            else if (rank == 0)
                printf("  %-9s P=%-8ld %10.0f bytes  %9.2f us (%.2f-%.2f)\n", op_names[w],
                       w == LATENCY ? 0 : params[k], bytes, med * 1e6, lo * 1e6, hi * 1e6);
            first = 0;
        }
    if (steps > 0) {
        if (metastep_load_task(task, &g_task) != MS_OK) {
            const char *m = NULL;
            ms_last_error(&m);
            fprintf(stderr, "bench-mpi: %s\n", m);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        ms_container *vars = g_task->init_variables(0, MS_F32);
        double ex[50], exm, exlo, exhi, dummy;
        run_steps(2, meta_batch, vars, &dummy); /* warm-up */
        for (int r = 0; r < repeats; r++)
            v[r] = run_steps(steps, meta_batch, vars, &ex[r]);
        stats(v, repeats, &med, &lo, &hi);
        stats(ex, repeats, &exm, &exlo, &exhi);
        double received = size > 1 ? (double)meta_batch * (double)g_record : 0;
        if (rank == 0 && json)
            printf("],\n \"steps\": {\"task\": \"%s\", \"meta_batch\": %d, \"algo\": \"maml\", "
                   "\"seconds_per_step\": %.5g, \"min\": %.5g, \"max\": %.5g, "
                   "\"exchange_seconds\": %.5g, \"exchange_min\": %.5g, \"exchange_max\": %.5g, "
                   "\"record_bytes\": %zu, \"bytes_received_per_step\": %.0f}}\n",
                   task, meta_batch, med, lo, hi, exm, exlo, exhi, g_record, received);
        else if (rank == 0)
            printf("meta-steps (MAML, 1 inner step, %s, meta-batch %d) on %d rank%s: %.3f ms/step "
                   "(%.3f-%.3f), exchange %.3f ms (%.3f-%.3f), record %zu bytes, %.0f bytes "
                   "received per step\n", task, meta_batch, size, size > 1 ? "s" : "", med * 1e3,
                   lo * 1e3, hi * 1e3, exm * 1e3, exlo * 1e3, exhi * 1e3, g_record, received);
        ms_container_release(vars);
    } else if (rank == 0 && json) {
        printf("]}\n");
    }
    MPI_Finalize();
    return 0;
}
