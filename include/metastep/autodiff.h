/* metastep — reverse-mode automatic differentiation on a dynamic graph.
 *
 * An op records a node when recording is on (outside ms_no_grad scopes) and
 * one of its inputs requires a gradient.  Every op's backward is written with
 * the public differentiable ops, so gradients can themselves be
 * differentiated (create_graph = true), which second-order MAML needs.
 * A tensor's graph lives as long as the tensor: nodes hold references to
 * their inputs.  ms_grad marks the tensors of the graph it walks while it
 * runs, so two ms_grad calls over graphs that share tensors must not run at
 * the same time on different threads; separate graphs may.
 */
#ifndef METASTEP_AUTODIFF_H
#define METASTEP_AUTODIFF_H

#include <stdbool.h>

#include "metastep/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ms_container ms_container;

/* A new leaf tensor with t's values that requires a gradient (Ivy's
 * _variable).  NULL-safe. */
ms_tensor *ms_variable(const ms_tensor *t);
/* A new leaf tensor with t's values and no gradient history. */
ms_tensor *ms_stop_gradient(const ms_tensor *t);
/* Whether t is a variable or was computed from one with recording on. */
bool ms_requires_grad(const ms_tensor *t);

/* Turn recording off on this thread until the matching ms_no_grad_pop
 * (nestable). */
void ms_no_grad_push(void);
void ms_no_grad_pop(void);
/* Whether recording is on for this thread. */
bool ms_grad_enabled(void);

/* Gradients of the scalar y with respect to every tensor of `wrt`.
 * *grads receives a new container (caller releases it) with the same key
 * chains; a tensor y does not depend on gets zeros of its shape.  With
 * create_graph the gradients carry their own graph and can be differentiated
 * again; without it backward runs unrecorded and y's graph is consumed (a
 * second ms_grad through it fails with MS_ERR_GRAPH).
 * Gradients are plain IEEE values: an infinite or NaN partial derivative
 * (d sqrt(w)/dw at w = 0 is inf) is returned as computed, never replaced by
 * 0 as Ivy does; the meta steps refuse such gradients (meta.h).
 * Errors: MS_ERR_NULL_ARG; MS_ERR_GRAPH for a y with more than one element,
 * or for a graph already consumed; MS_ERR_NOMEM. */
ms_status ms_grad(const ms_tensor *y, const ms_container *wrt, bool create_graph,
                  ms_container **grads);

/* As ms_grad, for a y of any shape with a seed tensor of y's shape (the
 * vector of a vector-Jacobian product). */
ms_status ms_grad_seeded(const ms_tensor *y, const ms_tensor *seed, const ms_container *wrt,
                         bool create_graph, ms_container **grads);

/* The function type for ms_execute_with_gradients: returns a scalar cost
 * (a new reference) from the variables, or NULL on failure. */
typedef ms_tensor *(*ms_grad_fn)(const ms_container *xs, void *user);

/* Mirrors ivy.execute_with_gradients: marks a copy of every tensor of xs as a
 * variable, calls fn, and returns the cost in *y (new reference, detached
 * unless retain_grads) and its gradients with respect to xs in *grads (new
 * container; with retain_grads they keep their graph).  Errors as ms_grad,
 * plus MS_ERR_INVALID_ARG when fn returns NULL. */
ms_status ms_execute_with_gradients(ms_grad_fn fn, void *user, const ms_container *xs,
                                    bool retain_grads, ms_tensor **y, ms_container **grads);

#ifdef __cplusplus
}
#endif
#endif
