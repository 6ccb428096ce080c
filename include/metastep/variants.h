/* metastep — helpers for the variants beyond Ivy: Meta-SGD and MAML++'s
 * learned inner learning rates, MAML++'s multi-step loss schedule and
 * derivative-order annealing.  The meta steps themselves take them as
 * options (metastep_options.inner_learning_rates, .inner_lr_per_step,
 * .step_weights in meta.h); docs/variants.md states the semantics exactly.
 * ANIL needs nothing new: inner_v naming the head's variables.
 */
#ifndef METASTEP_VARIANTS_H
#define METASTEP_VARIANTS_H

#include <stdbool.h>

#include "metastep/meta.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The key chains of the learned rates' gradients in metastep_result.grads
 * are this prefix followed by the variable's key chain ("inner_lr/l1/w"). */
#define METASTEP_INNER_LR_PREFIX "inner_lr/"

/* Initial learned rates for the inner variables of `variables` (those
 * inner_v / keep_inner_v select, as in metastep_options; inner_v NULL: all),
 * every element `value`, in the variables' dtype:
 *   per_step false: a tensor shaped like each variable (Meta-SGD);
 *   per_step true:  a tensor of shape [steps] per variable (MAML++ LSLR).
 * variables are one task's (no task axis).  A new container keyed by the
 * variables' key chains (caller releases), or NULL: MS_ERR_NULL_ARG,
 * MS_ERR_KEY (an inner_v chain naming no variable), MS_ERR_INVALID_ARG
 * (per_step with steps < 1, a value that is not finite). */
ms_container *metastep_inner_lr_init(const ms_container *variables, const char *const *inner_v,
                                     bool keep_inner_v, bool per_step, int steps, double value);

/* MAML++'s multi-step loss weights (Antoniou et al. 2019, "per-step loss
 * importance") for meta-step `meta_step` (0-based) of an annealing that lasts
 * `anneal_steps` meta-steps, into weights[0..steps] (steps + 1 values, the
 * layout of metastep_options.step_weights).  With S = steps and
 * d = 1 / (S * anneal_steps): weights[0] = 0 (the unadapted cost is not
 * part of MSL); for 1 <= i < S, weights[i] = max(1/S - meta_step * d,
 * 0.03/S); weights[S] = min(1/S + meta_step * (S - 1) * d,
 * 1 - (S - 1) * 0.03/S).  Returns true while meta_step < anneal_steps.  From
 * then on MAML++ uses the final cost alone: the function returns false and
 * writes weights[S] = 1, the others 0 (pass NULL as step_weights then: the
 * same cost without evaluating the intermediate steps).  False also when
 * steps < 1 or anneal_steps < 1 (then nothing is written) or weights is
 * NULL. */
bool metastep_msl_weights(int steps, long meta_step, long anneal_steps, double *weights);

/* Derivative-order annealing (MAML++): metastep_fomaml_step while
 * meta_step < first_order_until, metastep_maml_step from then on, with the
 * same arguments.  Both give the gradient of the same cost at the same scale
 * (batched and unbatched), so a training loop switches without a jump.
 * Errors as those functions. */
ms_status metastep_annealed_maml_step(long meta_step, long first_order_until,
                                      const ms_container *batch, metastep_cost_fn inner_cost_fn,
                                      metastep_cost_fn outer_cost_fn,
                                      const ms_container *variables, int inner_grad_steps,
                                      double inner_learning_rate, const metastep_options *opts,
                                      metastep_result *out);

#ifdef __cplusplus
}
#endif
#endif
