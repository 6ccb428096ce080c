/* metastep — the meta steps over an MPI communicator (libmetastep-mpi, built
 * when MPI is found: meson option `mpi`; link with -lmetastep-mpi).
 *
 * Every rank of `comm` calls the same function with the same batch,
 * variables, options and backend (for example each draws the same
 * meta-batch from one seed).  Rank r runs its contiguous share of the tasks
 * (metastep_mpi_share), the ranks exchange every task's contribution (an
 * MPI_Allgatherv of per-task records: cost, gradient contribution, adapted
 * variables when returned, status), and every rank combines all tasks in
 * task order: cost, gradients and adapted variables equal a one-process
 * call's bit for bit, on every rank, so every rank can apply the same outer
 * update.  opts->threads still runs a rank's tasks on that many threads.
 *
 * Restrictions, as metastep_options.shard: unbatched steps only (batched is
 * refused with MS_ERR_INVALID_ARG on every rank: a batched step sums over
 * the task axis in the backend's order, which no split reproduces bit for
 * bit) and stop_gradients on.  opts->shard must be NULL (it is set here).
 *
 * The price of bit-identity: a rank receives every task's gradient
 * contribution, num_tasks x P values for P parameters, where an
 * MPI_Allreduce of per-rank sums would move about 2 P values per rank
 * whatever num_tasks is (and sum in an order that depends on the rank
 * count).  docs/scaling.md measures both and models the cost at scale.
 *
 * Errors: those of the step (a task's failure is reported on every rank,
 * with the first failing task's status and message, as one process would);
 * MS_ERR_INVALID_ARG when the ranks disagree on the number of tasks or on
 * the size of a task's record (different batches, variables or options);
 * MS_ERR_OVERFLOW for a record over 2 GiB; MS_ERR_IO when an MPI call fails
 * (only seen when comm's error handler returns errors: by default MPI aborts
 * the job, which is what a rank that dies causes).  A rank that fails before
 * the exchange (out of memory) leaves the others waiting in it: call
 * MPI_Abort when a step fails on one rank only. */
#ifndef METASTEP_MPI_H
#define METASTEP_MPI_H

#include <mpi.h>

#include "metastep/meta.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A rank's shard of a step over comm, for callers that set
 * metastep_options.shard themselves (metastep train does): init it, then
 * pass &s->shard.  It refers to s, which must outlive the step. */
typedef struct metastep_mpi_shard {
    metastep_shard shard; /* this rank's tasks and the MPI exchange */
    MPI_Comm comm;
    int size, rank;
} metastep_mpi_shard;

/* Fill s for rank comm's share of num_tasks tasks.  MS_ERR_INVALID_ARG for
 * num_tasks < 1, MS_ERR_IO when comm cannot be asked its size or rank. */
ms_status metastep_mpi_shard_init(metastep_mpi_shard *s, MPI_Comm comm, int num_tasks);

/* The tasks rank `rank` of `size` runs of num_tasks: [*first, *first +
 * *count), contiguous and in rank order; the first num_tasks % size ranks
 * take one more.  A rank may get none (size > num_tasks). */
void metastep_mpi_share(int num_tasks, int size, int rank, int *first, int *count);

/* metastep_maml_step, metastep_fomaml_step and metastep_reptile_step with
 * the tasks shared among the ranks of comm (see above). */
ms_status metastep_mpi_maml_step(MPI_Comm comm, const ms_container *batch,
                                 metastep_cost_fn inner_cost_fn, metastep_cost_fn outer_cost_fn,
                                 const ms_container *variables, int inner_grad_steps,
                                 double inner_learning_rate, const metastep_options *opts,
                                 metastep_result *out);
ms_status metastep_mpi_fomaml_step(MPI_Comm comm, const ms_container *batch,
                                   metastep_cost_fn inner_cost_fn, metastep_cost_fn outer_cost_fn,
                                   const ms_container *variables, int inner_grad_steps,
                                   double inner_learning_rate, const metastep_options *opts,
                                   metastep_result *out);
ms_status metastep_mpi_reptile_step(MPI_Comm comm, const ms_container *batch,
                                    metastep_cost_fn cost_fn, const ms_container *variables,
                                    int inner_grad_steps, double inner_learning_rate,
                                    const metastep_reptile_options *opts, metastep_result *out);

/* The bytes of one task's record in the last step this thread ran through
 * these functions (0 before any): a step's all-gather delivers num_tasks
 * records to every rank.  For measurements (docs/scaling.md). */
size_t metastep_mpi_last_record_bytes(void);

#ifdef __cplusplus
}
#endif
#endif
