/* libmetastep-mpi: the meta steps over an MPI communicator
 * (include/metastep/mpi.h).  The core knows nothing of MPI: it runs a range
 * of tasks and hands their records to the exchange below (metastep_shard),
 * an MPI_Allgatherv, then combines every task in task order. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "metastep/metastep.h"
#include "metastep/mpi.h"

static _Thread_local size_t last_record_bytes;

size_t metastep_mpi_last_record_bytes(void) { return last_record_bytes; }

void metastep_mpi_share(int num_tasks, int size, int rank, int *first, int *count)
{
    if (size < 1 || num_tasks < 0 || rank < 0 || rank >= size) {
        *first = *count = 0;
        return;
    }
    int base = num_tasks / size, extra = num_tasks % size;
    *first = rank * base + (rank < extra ? rank : extra);
    *count = base + (rank < extra ? 1 : 0);
}

static ms_status mpi_failed(const metastep_mpi_shard *m, const char *call, int rc)
{
    char text[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(rc, text, &len);
    return ms_record_error(MS_ERR_IO, "metastep mpi: %s failed on rank %d of %d: %s", call,
                           m->rank, m->size, text);
}

/* Fill the other ranks' records: every rank sends its own (contiguous, in
 * rank order) and receives all. */
static ms_status allgather(void *ctx, void *records, size_t bytes, int n, int first, int count)
{
    metastep_mpi_shard *m = ctx;
    last_record_bytes = bytes;
    /* the ranks must agree on the layout, or the gather would mix records */
    long long mine[4] = {(long long)bytes, n, -(long long)bytes, -n}, agg[4];
    int rc = MPI_Allreduce(mine, agg, 4, MPI_LONG_LONG, MPI_MAX, m->comm);
    if (rc != MPI_SUCCESS)
        return mpi_failed(m, "MPI_Allreduce", rc);
    if (agg[0] != -agg[2] || agg[1] != -agg[3])
        return ms_record_error(MS_ERR_INVALID_ARG, "metastep mpi: the ranks disagree: task "
                               "records of %lld to %lld bytes, %lld to %lld tasks (every rank "
                               "must call with the same batch, variables and options)", -agg[2], agg[0],
                               -agg[3], agg[1]);
    if (bytes > INT_MAX)
        return ms_record_error(MS_ERR_OVERFLOW, "metastep mpi: a task's record is %zu bytes, "
                               "over the 2 GiB an MPI count can describe", bytes);
    (void)first, (void)count;
    int *counts = malloc(sizeof(int) * 2 * (size_t)m->size);
    if (!counts)
        return ms_record_error(MS_ERR_NOMEM, "metastep mpi: out of memory");
    int *displs = counts + m->size;
    for (int r = 0; r < m->size; r++)
        metastep_mpi_share(n, m->size, r, &displs[r], &counts[r]);
    MPI_Datatype rec;
    rc = MPI_Type_contiguous((int)bytes, MPI_BYTE, &rec);
    if (rc == MPI_SUCCESS)
        rc = MPI_Type_commit(&rec);
    ms_status st = MS_OK;
    if (rc != MPI_SUCCESS) {
        st = mpi_failed(m, "MPI_Type_contiguous", rc);
    } else {
        rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, records, counts, displs, rec,
                            m->comm);
        if (rc != MPI_SUCCESS)
            st = mpi_failed(m, "MPI_Allgatherv", rc);
        MPI_Type_free(&rec);
    }
    free(counts);
    return st;
}

/* The tasks of a step: num_tasks, else the batch's leading dimension; 0 when
 * there is none to tell (the step then refuses the batch itself). */
static int tasks_of(const ms_container *batch, int num_tasks)
{
    if (num_tasks > 0)
        return num_tasks;
    if (!batch || ms_container_size(batch) == 0)
        return 0;
    const ms_tensor *t = ms_container_at(batch, 0);
    return ms_tensor_ndim(t) > 0 && ms_tensor_shape(t)[0] <= INT_MAX ? (int)ms_tensor_shape(t)[0]
                                                                     : 0;
}

ms_status metastep_mpi_shard_init(metastep_mpi_shard *s, MPI_Comm comm, int num_tasks)
{
    *s = (metastep_mpi_shard){.comm = comm};
    if (num_tasks < 1)
        return ms_record_error(MS_ERR_INVALID_ARG, "metastep_mpi_shard_init: %d tasks",
                               num_tasks);
    int rc = MPI_Comm_size(comm, &s->size);
    if (rc == MPI_SUCCESS)
        rc = MPI_Comm_rank(comm, &s->rank);
    if (rc != MPI_SUCCESS)
        return mpi_failed(s, "MPI_Comm_size", rc);
    s->shard.exchange = allgather;
    s->shard.ctx = s;
    metastep_mpi_share(num_tasks, s->size, s->rank, &s->shard.first, &s->shard.count);
    return MS_OK;
}

/* This rank's shard; false (error recorded) when it cannot be had.  With no
 * task count to tell (a malformed batch), no shard: the step then refuses
 * the batch itself, on every rank alike. */
static bool setup(MPI_Comm comm, const char *fn, const metastep_shard *given, int n,
                  metastep_mpi_shard *m, const metastep_shard **sh)
{
    *sh = NULL;
    if (given) {
        ms_record_error(MS_ERR_INVALID_ARG, "%s: opts->shard must be NULL (the MPI step sets it)",
                        fn);
        return false;
    }
    if (n < 1)
        return true;
    if (metastep_mpi_shard_init(m, comm, n) != MS_OK)
        return false;
    *sh = &m->shard;
    return true;
}

typedef ms_status (*step_fn)(const ms_container *, metastep_cost_fn, metastep_cost_fn,
                             const ms_container *, int, double, const metastep_options *,
                             metastep_result *);

static ms_status two_cost_step(step_fn step, const char *fn, MPI_Comm comm,
                               const ms_container *batch, metastep_cost_fn inner,
                               metastep_cost_fn outer, const ms_container *variables, int steps,
                               double lr, const metastep_options *opts, metastep_result *out)
{
    metastep_options o = opts ? *opts : METASTEP_OPTIONS_DEFAULT;
    metastep_mpi_shard m;
    if (!setup(comm, fn, o.shard, tasks_of(batch, o.num_tasks), &m, &o.shard)) {
        if (out)
            *out = (metastep_result){0};
        return ms_last_error(NULL);
    }
    return step(batch, inner, outer, variables, steps, lr, &o, out);
}

ms_status metastep_mpi_maml_step(MPI_Comm comm, const ms_container *batch,
                                 metastep_cost_fn inner_cost_fn, metastep_cost_fn outer_cost_fn,
                                 const ms_container *variables, int inner_grad_steps,
                                 double inner_learning_rate, const metastep_options *opts,
                                 metastep_result *out)
{
    return two_cost_step(metastep_maml_step, "metastep_mpi_maml_step", comm, batch, inner_cost_fn,
                         outer_cost_fn, variables, inner_grad_steps, inner_learning_rate, opts,
                         out);
}

ms_status metastep_mpi_fomaml_step(MPI_Comm comm, const ms_container *batch,
                                   metastep_cost_fn inner_cost_fn, metastep_cost_fn outer_cost_fn,
                                   const ms_container *variables, int inner_grad_steps,
                                   double inner_learning_rate, const metastep_options *opts,
                                   metastep_result *out)
{
    return two_cost_step(metastep_fomaml_step, "metastep_mpi_fomaml_step", comm, batch,
                         inner_cost_fn, outer_cost_fn, variables, inner_grad_steps,
                         inner_learning_rate, opts, out);
}

ms_status metastep_mpi_reptile_step(MPI_Comm comm, const ms_container *batch,
                                    metastep_cost_fn cost_fn, const ms_container *variables,
                                    int inner_grad_steps, double inner_learning_rate,
                                    const metastep_reptile_options *opts, metastep_result *out)
{
    metastep_reptile_options o = opts ? *opts : METASTEP_REPTILE_OPTIONS_DEFAULT;
    metastep_mpi_shard m;
    if (!setup(comm, "metastep_mpi_reptile_step", o.shard, tasks_of(batch, o.num_tasks), &m,
               &o.shard)) {
        if (out)
            *out = (metastep_result){0};
        return ms_last_error(NULL);
    }
    return metastep_reptile_step(batch, cost_fn, variables, inner_grad_steps, inner_learning_rate,
                                 &o, out);
}
