/* metastep — compiled meta steps: trace once, replay.
 *
 * A plan is made from the same arguments as a step function, without the
 * batch and the variables.  Its first run calls the eager step while
 * recording every kernel the step dispatches (forward, inner gradients,
 * second-order backward, the inner optimizer), then plans the step's buffers
 * once: every temporary gets a place in one arena by its lifetime.  Later
 * runs with batches and variables of the same structure (key chains, dtypes,
 * shapes) on the same backend replay the recorded kernels on the new data:
 * no graph, no container look-ups, no allocation but the returned tensors.
 * Like jax.jit, a run whose structure or backend differs traces again (the
 * plan keeps the newest trace only).
 *
 * Results: a replay runs the eager step's kernels with the eager step's
 * arguments through the same dispatch, at addresses aligned as the eager
 * ones, so it returns the eager step's results bit for bit (tests/test_plan.c
 * checks this on every backend over random option combinations).  It makes
 * the eager step's finiteness checks at the same points; when one fails the
 * run repeats the step eagerly, which reports the error with its usual
 * message (MS_ERR_NUMERIC naming key chain, step and task).
 *
 * What a trace captures by value (as jax.jit does with closed-over arrays):
 * every scalar and every tensor the callables use that is neither in the
 * batch nor in the variables (tensors they hold in `user`, constants they
 * make, random draws with a fixed seed).  A callable whose kernels could
 * depend on the data cannot be compiled: a trace in which a callable reads or
 * writes tensor data on the host (ms_tensor_data, ms_tensor_item) is refused.
 * The options' pointers (inner_v, outer_v, the inner optimizer, user) are
 * borrowed and must stay valid, and unchanged, for the plan's life.
 *
 * Threads: a plan runs on the calling thread; opts->threads is ignored
 * (results are the same for every thread count anyway).  A plan must not be
 * run from two threads at once; separate plans may.
 */
#ifndef METASTEP_PLAN_H
#define METASTEP_PLAN_H

#include "metastep/meta.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct metastep_plan metastep_plan;

/* Plans for metastep_maml_step, metastep_fomaml_step and
 * metastep_reptile_step with these arguments (opts copied; NULL: defaults).
 * On success *out is a new plan the caller frees with metastep_plan_free.
 * Errors: MS_ERR_NULL_ARG (inner_cost_fn / cost_fn, out); MS_ERR_INVALID_ARG
 * (stop_gradients off: the cost would keep a graph, which a replay does not
 * build; inner_learning_rates or step_weights set: they change every
 * meta-step and a trace would keep their first values; a shard: its
 * exchange hook would not run in a replay; negative
 * inner_grad_steps; a non-finite learning rate, or 0 for Reptile);
 * MS_ERR_NOMEM.  Everything else is checked by the first run, as
 * the step function checks it. */
ms_status metastep_plan_maml(metastep_cost_fn inner_cost_fn, metastep_cost_fn outer_cost_fn,
                             int inner_grad_steps, double inner_learning_rate,
                             const metastep_options *opts, metastep_plan **out);
ms_status metastep_plan_fomaml(metastep_cost_fn inner_cost_fn, metastep_cost_fn outer_cost_fn,
                               int inner_grad_steps, double inner_learning_rate,
                               const metastep_options *opts, metastep_plan **out);
ms_status metastep_plan_reptile(metastep_cost_fn cost_fn, int inner_grad_steps,
                                double inner_learning_rate, const metastep_reptile_options *opts,
                                metastep_plan **out);

/* One meta step on batch and variables, as the plan's step function would
 * compute it (see above).  *out receives tensors and containers owned by the
 * caller (release with metastep_result_release); the caller's batch and
 * variables are never modified.  On failure *out is empty.
 * Errors: those of the step function; MS_ERR_NULL_ARG; MS_ERR_INVALID_ARG
 * when the trace cannot be compiled (the message says why; the eager step
 * still works). */
ms_status metastep_plan_run(metastep_plan *plan, const ms_container *batch,
                            const ms_container *variables, metastep_result *out);

/* What a plan did, for benchmarks and tests. */
typedef struct metastep_plan_info {
    int traces;          /* eager runs that recorded a trace */
    long long replays;   /* runs that replayed it */
    long long eager_reruns; /* replays that failed a finiteness check and ran eagerly */
    int kernels;         /* recorded operations (kernels, copies, checks) */
    size_t arena_bytes;  /* the temporaries' arena */
} metastep_plan_info;

/* Fill *info (zeros before the first trace).  Errors: MS_ERR_NULL_ARG. */
ms_status metastep_plan_get_info(const metastep_plan *plan, metastep_plan_info *info);

/* Free a plan and its arena.  NULL-safe. */
void metastep_plan_free(metastep_plan *plan);

#ifdef __cplusplus
}
#endif
#endif
