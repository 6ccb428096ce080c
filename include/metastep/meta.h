/* metastep — the meta steps: second-order MAML, first-order MAML and
 * Reptile, with every option of Ivy's ivy.maml_step, ivy.fomaml_step and
 * ivy.reptile_step.
 *
 * Required arguments stay positional; every keyword option lives in an
 * options struct initialised with METASTEP_OPTIONS_DEFAULT (or pass NULL).
 * Callables receive the `user` pointer of the options.  Cost functions
 * return a one-element tensor (owned by the current scope, as every op
 * result); they never free intermediates: the meta steps open their own
 * scopes and return memory per task and per inner step.
 * The outer cost is evaluated at the intermediate inner steps only when
 * average_across_steps asks for it (Ivy evaluates and discards it), so a cost
 * function should not count on being called a fixed number of times.
 * The caller's batch and variables are never modified.  On failure the
 * result is left empty (all NULL) and the status says why, with a message
 * in ms_last_error().
 */
#ifndef METASTEP_META_H
#define METASTEP_META_H

#include <stdbool.h>

#include "metastep/container.h"
#include "metastep/optim.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Cost of variables v on a (sub-)batch: a one-element tensor, or NULL. */
typedef ms_tensor *(*metastep_cost_fn)(const ms_container *batch, const ms_container *v,
                                       void *user);
/* Transform a task's sub-batch: returns a new container the meta step
 * releases, or NULL on failure. */
typedef ms_container *(*metastep_batch_fn)(const ms_container *sub_batch, void *user);

/* Running one meta step's tasks over several processes (MPI ranks, say), with
 * results bit-identical to one process: each process computes the tasks
 * [first, first + count) of the num_tasks and writes each task's contribution
 * (its cost, its gradient contribution and, when return_inner_v asks for
 * them, its adapted variables, with its status and error message) into a
 * record of `record_bytes` bytes, record t for task t.  exchange() must then
 * fill every other record with the bytes the process owning that task wrote
 * (an all-gather: include/metastep/mpi.h does it with MPI_Allgatherv).  Every
 * process then combines all num_tasks records in task order with the same
 * code as one process, so cost, gradients and adapted variables equal one
 * process's bit for bit, on every process.  The records are opaque bytes of
 * one build of metastep (every process must run the same build and backend,
 * with the same batch, variables and options).  A task that fails still has
 * its record: the step fails on every process with the first failing task's
 * status and message, after the exchange.  exchange returns MS_OK, or
 * another status with a message recorded (ms_record_error), which the step
 * returns.  A process whose step fails before its exchange (invalid
 * arguments fail alike on every process; running out of memory does not)
 * never calls exchange: the caller must then stop the others (with MPI,
 * MPI_Abort, as metastep train does).  Only unbatched steps with
 * stop_gradients can be sharded (a
 * batched step computes all tasks as one batch, and sums over the task axis
 * in the backend's order: it cannot be split bit-identically). */
typedef ms_status (*metastep_exchange_fn)(void *ctx, void *records, size_t record_bytes,
                                          int num_tasks, int first, int count);

typedef struct metastep_shard {
    int first, count;              /* this process's tasks: [first, first + count) */
    metastep_exchange_fn exchange; /* fills the other processes' records */
    void *ctx;                     /* handed to exchange */
} metastep_shard;

typedef enum metastep_return_inner {
    METASTEP_RETURN_INNER_NONE = 0, /* Ivy's False */
    METASTEP_RETURN_INNER_FIRST,    /* 'first': the first task's adapted variables */
    METASTEP_RETURN_INNER_ALL       /* 'all' */
} metastep_return_inner;

typedef struct metastep_options {
    const metastep_optimizer *inner_optimization_step; /* NULL: gradient descent */
    metastep_batch_fn inner_batch_fn, outer_batch_fn;  /* NULL: none */
    bool average_across_steps;                         /* false */
    bool batched;                                      /* true */
    const char *const *inner_v;                        /* NULL-terminated key chains; NULL: all */
    bool keep_inner_v;                                 /* true */
    const char *const *outer_v;                        /* NULL-terminated key chains; NULL: all */
    bool keep_outer_v;                                 /* true */
    metastep_return_inner return_inner_v;              /* NONE */
    int num_tasks;                                     /* 0: the batch's leading dimension */
    bool stop_gradients;                               /* true */
    void *user;                                        /* handed to every callable */
    /* Threads running the tasks of an unbatched step: 0 or 1, one thread (the
     * caller's; the default).  N > 1: the caller and N - 1 workers of a pool
     * shared by the process (created on first use, reused, joined at exit or
     * by metastep_shutdown_threads).  Results are combined in task order, so
     * cost, gradients and adapted variables are bit-identical for every
     * count.  The callables (cost and batch functions, the optimizer) are
     * then called from several threads at once and must allow it; workers
     * compute on the caller's current backend, with the backend's internal
     * threads set to 1 meanwhile (ABI 1.2 set_num_threads).  Batched steps,
     * and second-order MAML unbatched with stop_gradients off (whose graph
     * spans every task), run on the caller's thread only. */
    int threads;                                       /* 0 */
    /* Checkpointed second-order MAML (metastep_maml_step only; the first-order
     * steps ignore it).  0: the whole inner loop's graph is kept until the
     * outer gradient is taken (memory grows with every inner step).  N > 0:
     * the inner loop runs without keeping its graph and stores the adapted
     * variables and the inner optimizer's state every N steps; the backward
     * pass recomputes one N-step segment at a time from its checkpoint and
     * carries the adjoint back through it, so memory holds ceil(k / N)
     * checkpoints and one segment's graph: O(sqrt(k)) for N near sqrt(k), at
     * the price of one more forward pass.  -1: N = ceil(sqrt(k)).  Results
     * equal the un-checkpointed step's to float rounding (docs/long-inner-loops.md
     * says when they are bit-identical).  Inner optimizers: gradient descent,
     * metastep_sgd, metastep_adam and any stateless user optimizer
     * (state_new NULL); a user optimizer with state is refused
     * (MS_ERR_INVALID_ARG), since its state cannot be stored. */
    int checkpoint_every;                              /* 0 */
    /* With checkpoint_every 0: > 0 chooses the segment length N from a
     * memory budget in MiB.  The step first runs a one-step segment on the
     * first task (the inner step with its graph and the backward sweep
     * through it) to measure its peak tensor bytes G, and the checkpoint
     * size S (the adapted variables and the optimizer state), then takes the
     * largest N with (ceil(k/N) - 1) * S + N * G <= the budget: N >= k is
     * the whole graph in one segment, without the extra forward pass.  The
     * budget covers what grows with k; the outer cost's own pass and the
     * caller's data come on top.  The measure reads the process's tensor
     * bytes (ms_peak_tensor_bytes, left as the caller would see it without
     * the probe), so no other thread should compute meanwhile.  No N fits:
     * MS_ERR_INVALID_ARG naming the least budget that would.  0: no budget.
     * Negative or NaN: MS_ERR_INVALID_ARG. */
    double checkpoint_budget_mib;                      /* 0 */
    /* ---- Beyond Ivy (docs/variants.md); the defaults keep Ivy's behaviour
     * bit for bit.  metastep_maml_step and metastep_fomaml_step only. ---- */
    /* Learned inner learning rates (Meta-SGD, MAML++ LSLR): NULL, the scalar
     * inner_learning_rate.  Otherwise one tensor per inner variable, keyed by
     * the variable's key chain (exactly the variables inner_v selects), of
     * the variables' dtype; inner_learning_rate is then ignored.  Without
     * inner_lr_per_step each tensor broadcasts against its variable (the
     * variable's own shape, without the task axis when batched: Meta-SGD; or
     * 0-d: one learned rate per variable) and is used at every inner step.
     * With inner_lr_per_step each tensor has a leading axis of length
     * inner_grad_steps, and its slice i (the rest of its shape, broadcasting
     * against the variable) is step i's rate: shape [inner_grad_steps] is
     * MAML++'s LSLR.  The update is w - rate * dcdw with plain gradient
     * descent (another inner_optimization_step is refused).  The rates are
     * differentiated too: result.grads holds their gradients under
     * "inner_lr/<key chain>" (METASTEP_INNER_LR_PREFIX), the rates' shapes,
     * alongside the variables' own.  Second order: the exact derivative of
     * the cost; first order: its derivative with every inner gradient held
     * constant (-sum_i dcost/dw_S * dcdw_i, reduced to the rate's shape).
     * MS_ERR_KEY (a rate naming no inner variable, an inner variable without
     * one, a variable under "inner_lr/"), MS_ERR_SHAPE, MS_ERR_DTYPE,
     * MS_ERR_NUMERIC (a non-finite rate), MS_ERR_INVALID_ARG (another inner
     * optimizer).  Borrowed for the call. */
    const ms_container *inner_learning_rates;           /* NULL */
    bool inner_lr_per_step;                             /* false */
    /* Multi-step loss (MAML++ MSL): NULL, Ivy's behaviour (the final cost, or
     * average_across_steps).  Otherwise inner_grad_steps + 1 finite weights:
     * the cost is sum_i step_weights[i] * cost_i, cost_i being the step cost
     * after i inner updates as average_across_steps defines it (i = 0: the
     * unadapted variables; i = inner_grad_steps: the final cost), and the
     * first-order gradient the same weighted sum of contributions.  Uniform
     * weights 1/(steps + 1) are average_across_steps (which stays exactly as
     * Ivy defines it, and cannot be combined with step_weights).  A step
     * whose weight is 0 (other than the last) is not evaluated. */
    const double *step_weights;                         /* NULL */
    /* NULL: every task runs here.  Otherwise this process runs the shard's
     * tasks only and exchanges the rest (metastep_shard).  Errors:
     * MS_ERR_INVALID_ARG for a batched step, stop_gradients off, or a range
     * outside [0, num_tasks]; MS_ERR_NULL_ARG without exchange. */
    const metastep_shard *shard;                       /* NULL */
} metastep_options;

#define METASTEP_OPTIONS_DEFAULT                                                            \
    ((metastep_options){.inner_optimization_step = NULL, .inner_batch_fn = NULL,           \
                        .outer_batch_fn = NULL, .average_across_steps = false,             \
                        .batched = true, .inner_v = NULL, .keep_inner_v = true,            \
                        .outer_v = NULL, .keep_outer_v = true,                             \
                        .return_inner_v = METASTEP_RETURN_INNER_NONE, .num_tasks = 0,      \
                        .stop_gradients = true, .user = NULL, .threads = 0,                \
                        .checkpoint_every = 0, .checkpoint_budget_mib = 0,                 \
                        .inner_learning_rates = NULL, .inner_lr_per_step = false,          \
                        .step_weights = NULL})

/* Only what Ivy's reptile_step takes. */
typedef struct metastep_reptile_options {
    const metastep_optimizer *inner_optimization_step; /* NULL: gradient descent */
    bool batched;                                      /* true */
    metastep_return_inner return_inner_v;              /* NONE */
    int num_tasks;                                     /* 0: the batch's leading dimension */
    bool stop_gradients;                               /* true */
    void *user;
    int threads; /* 0: one thread; as metastep_options.threads */
    const metastep_shard *shard; /* NULL; as metastep_options.shard */
} metastep_reptile_options;

#define METASTEP_REPTILE_OPTIONS_DEFAULT                                                     \
    ((metastep_reptile_options){.inner_optimization_step = NULL, .batched = true,            \
                                .return_inner_v = METASTEP_RETURN_INNER_NONE,                \
                                .num_tasks = 0, .stop_gradients = true, .user = NULL,   \
                                .threads = 0})

/* What a meta step gives back.  Every member is owned by the caller and
 * survives scope pops: release them with metastep_result_release. */
typedef struct metastep_result {
    ms_tensor *cost;       /* one element; detached when stop_gradients */
    ms_container *grads;   /* gradients with respect to the outer variables */
    ms_container *inner_v; /* adapted variables when return_inner_v, else NULL */
} metastep_result;

/* Release every member and set them to NULL.  NULL-safe. */
void metastep_result_release(metastep_result *r);

/* Stop and join the worker threads of the meta steps' pool (see
 * metastep_options.threads) and free what they hold.  Optional: the pool is
 * also joined at process exit.  Must not run while a step is running; a later
 * step with threads > 1 starts a new pool. */
void metastep_shutdown_threads(void);

/* One step of second-order MAML: the whole inner procedure is differentiated
 * with respect to the outer variables, through every inner update.
 * Batched, the gradient is summed over axis 0 (Ivy's grads.sum(axis=0));
 * unbatched, it keeps the variables' shapes.
 * Errors: MS_ERR_NULL_ARG (batch, inner_cost_fn, variables, out);
 * MS_ERR_INVALID_ARG (negative inner_grad_steps, non-finite learning rate,
 * num_tasks < 0 or larger than the batch, a cost that is NULL or not one
 * element); MS_ERR_SHAPE (batch leaves with different leading dimensions);
 * MS_ERR_KEY (an inner_v/outer_v chain that names no variable);
 * MS_ERR_NUMERIC (a NaN or infinite cost, or a NaN or infinite entry in an
 * inner or outer gradient; the message names the key chain, the inner step
 * and the task).  Unlike Ivy, which replaces non-finite gradient entries by
 * 0, metastep refuses them: a zeroed entry silently changes the algorithm
 * (that variable stops learning) and hides the bug that produced it.  The
 * fix belongs in the cost function, e.g. sqrt(x + eps) instead of sqrt(x)
 * where x reaches 0.  docs/semantics.md, "Non-finite values". */
ms_status metastep_maml_step(const ms_container *batch, metastep_cost_fn inner_cost_fn,
                             metastep_cost_fn outer_cost_fn, const ms_container *variables,
                             int inner_grad_steps, double inner_learning_rate,
                             const metastep_options *opts, metastep_result *out);

/* One step of first-order MAML: gradients at the adapted variables, not
 * through the adaptation.  Batched, the gradient is averaged over axis 0.
 * Errors as metastep_maml_step. */
ms_status metastep_fomaml_step(const ms_container *batch, metastep_cost_fn inner_cost_fn,
                               metastep_cost_fn outer_cost_fn, const ms_container *variables,
                               int inner_grad_steps, double inner_learning_rate,
                               const metastep_options *opts, metastep_result *out);

/* One step of Reptile: first order with cost_fn as the inner cost,
 * averaged across steps, the gradient divided by inner_learning_rate
 * (which must then be non-zero).  Errors as metastep_maml_step. */
ms_status metastep_reptile_step(const ms_container *batch, metastep_cost_fn cost_fn,
                                const ms_container *variables, int inner_grad_steps,
                                double inner_learning_rate,
                                const metastep_reptile_options *opts, metastep_result *out);

#ifdef __cplusplus
}
#endif
#endif
