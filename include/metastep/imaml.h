/* metastep — implicit MAML (iMAML; Rajeswaran, Finn, Kakade and Levine,
 * "Meta-Learning with Implicit Gradients", 2019).
 *
 * Each task adapts by approximately solving the proximal inner problem
 *     phi* = argmin_phi  inner_cost(phi) + lambda/2 * ||phi - theta||^2
 * with the inner optimizer for inner_grad_steps steps from phi = theta.  The
 * meta-gradient of the outer cost at phi* follows from the implicit function
 * theorem, with H the Hessian of the inner cost at the adapted variables:
 *     d outer(phi*(theta)) / d theta = (I + H / lambda)^-1  g,
 *     g = d outer / d phi at phi*,
 * solved by conjugate gradient with Hessian-vector products (the gradient
 * of <d inner / d phi, v>).  No inner step's graph is kept, so memory does
 * not depend on inner_grad_steps.  The formula is exact at the exact inner
 * solution; with an unconverged inner loop it is an approximation
 * (docs/long-inner-loops.md).
 */
#ifndef METASTEP_IMAML_H
#define METASTEP_IMAML_H

#include "metastep/meta.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct metastep_imaml_options {
    const metastep_optimizer *inner_optimization_step; /* NULL: gradient descent */
    metastep_batch_fn inner_batch_fn, outer_batch_fn;  /* NULL: none; per task */
    double lambda;   /* proximal strength, > 0 and finite (1.0) */
    int cg_steps;    /* most conjugate-gradient iterations, >= 1 (5) */
    double cg_tol;   /* stop when ||residual|| <= cg_tol * ||g||, >= 0 (1e-10) */
    metastep_return_inner return_inner_v; /* NONE */
    int num_tasks;   /* 0: the batch's leading dimension */
    void *user;      /* handed to every callable */
} metastep_imaml_options;

#define METASTEP_IMAML_OPTIONS_DEFAULT                                                       \
    ((metastep_imaml_options){.inner_optimization_step = NULL, .inner_batch_fn = NULL,      \
                              .outer_batch_fn = NULL, .lambda = 1.0, .cg_steps = 5,         \
                              .cg_tol = 1e-10, .return_inner_v = METASTEP_RETURN_INNER_NONE, \
                              .num_tasks = 0, .user = NULL})

/* One step of iMAML over the tasks of batch, one task at a time (the batch
 * is split along axis 0 as an unbatched metastep_maml_step does).  Every
 * variable adapts and every variable is an outer variable.  outer_cost_fn
 * NULL: the inner cost is also the outer one.  The inner optimizer minimises
 * inner_cost + lambda/2 ||phi - theta||^2 (theta detached); its updates are
 * detached.  out->cost: the mean over the tasks of the outer cost at the
 * adapted variables (detached); out->grads: the mean of the implicit
 * meta-gradients, shaped as the variables; out->inner_v as return_inner_v
 * (each task's adapted variables with a leading axis, concatenated).
 * Errors: as metastep_maml_step (MS_ERR_NULL_ARG, MS_ERR_INVALID_ARG for
 * negative steps, a non-finite learning rate, lambda <= 0 or not finite,
 * cg_steps < 1, cg_tol < 0 or NaN, num_tasks out of range; MS_ERR_SHAPE;
 * MS_ERR_NUMERIC for a non-finite cost, gradient or Hessian-vector product).
 * Where I + H/lambda is not positive definite along a conjugate-gradient
 * direction (H has an eigenvalue below -lambda there: the inner loop is far
 * from a minimum of the proximal problem), CG stops, as truncated Newton-CG
 * does, and returns its iterate so far; at the first iteration, g itself
 * (the first-order answer).  A larger lambda or more inner steps avoid it. */
ms_status metastep_imaml_step(const ms_container *batch, metastep_cost_fn inner_cost_fn,
                              metastep_cost_fn outer_cost_fn, const ms_container *variables,
                              int inner_grad_steps, double inner_learning_rate,
                              const metastep_imaml_options *opts, metastep_result *out);

#ifdef __cplusplus
}
#endif
#endif
