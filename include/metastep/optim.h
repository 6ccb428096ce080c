/* metastep — optimizers for the inner loop and for meta-gradients.
 *
 * An optimizer is a small value (a table of functions and its
 * hyper-parameters), so it can be declared on the stack and passed by
 * pointer.  Its state (momentum buffers, Adam moments, step count) lives in a
 * separate object made per use: the meta steps start a fresh state for every
 * task, and a training loop keeps one state for the meta-parameters.
 * With stop_gradients false every update is differentiable (MAML
 * differentiates through it, as `higher` does in PyTorch); with it true the
 * updated variables and the state are detached.
 * Users may write their own optimizer by filling the struct.
 */
#ifndef METASTEP_OPTIM_H
#define METASTEP_OPTIM_H

#include <stdbool.h>

#include "metastep/container.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct metastep_optimizer metastep_optimizer;

struct metastep_optimizer {
    const char *name;
    /* New per-use state, or NULL for a stateless optimizer (then state_free
     * may be NULL too).  The state is passed back to step. */
    void *(*state_new)(const metastep_optimizer *self);
    void (*state_free)(void *state);
    /* The updated variables w - update(dcdw) as a new container (caller
     * releases), or NULL with the error recorded.  w and dcdw have the same
     * key chains.  Must not modify w or dcdw. */
    ms_container *(*step)(const metastep_optimizer *self, void *state, const ms_container *w,
                          const ms_container *dcdw, double lr, bool stop_gradients);
    double hyper[4]; /* the optimizer's own hyper-parameters */
};

/* Plain gradient descent, w - lr * dcdw: Ivy's gradient_descent_update and
 * the meta steps' default inner step. */
extern const metastep_optimizer metastep_gradient_descent;

/* SGD with momentum mu: buf = mu * buf + g; w - lr * buf, or with Nesterov
 * w - lr * (g + mu * buf).  mu in [0, 1). */
metastep_optimizer metastep_sgd(double momentum, bool nesterov);

/* Adam (Kingma & Ba): bias-corrected moments, w - lr * m̂ / (sqrt(v̂) + eps).
 * Differentiable everywhere: where v̂ is 0 the square root's derivative is
 * taken as 0, so no NaN reaches a second-order gradient. */
metastep_optimizer metastep_adam(double beta1, double beta2, double eps);

/* Ivy's gradient_descent_update: w - lr * dcdw, detached when stop_gradients.
 * Returns a new container or NULL (MS_ERR_NULL_ARG, MS_ERR_KEY on
 * mismatched key chains). */
ms_container *metastep_gradient_descent_update(const ms_container *w, const ms_container *dcdw,
                                               double lr, bool stop_gradients);

/* Per-use state of an optimizer, for training loops. */
typedef struct metastep_optim_state metastep_optim_state;
/* A new state for opt; the state keeps its own copy of *opt, so opt may be
 * a temporary or a stack variable that goes out of scope before the state
 * (the functions opt points to, and anything its hyper-parameters name, must
 * outlive it).  Release with metastep_optim_state_release.  NULL with
 * MS_ERR_NULL_ARG (opt or opt->step NULL) or MS_ERR_NOMEM. */
metastep_optim_state *metastep_optim_state_new(const metastep_optimizer *opt);
/* Frees the state and what it holds; NULL-safe. */
void metastep_optim_state_release(metastep_optim_state *s);
/* One update with the state's optimizer; returns new variables (caller
 * releases) or NULL with the error recorded. */
ms_container *metastep_optim_step(metastep_optim_state *s, const ms_container *w,
                                  const ms_container *dcdw, double lr, bool stop_gradients);

/* The state of a built-in optimizer as a container, for checkpoints: leaves
 * "m/<key chain>" and "v/<key chain>" (momentum buffers, Adam moments) and
 * "t" (a 0-d float64 step count).  A new container (empty for gradient
 * descent), or NULL with MS_ERR_UNSUPPORTED for a user optimizer. */
ms_container *metastep_optim_state_save(const metastep_optim_state *s);
/* Restore a state saved by metastep_optim_state_save into s (made for the
 * same optimizer).  MS_ERR_FORMAT when the container is not such a state,
 * MS_ERR_UNSUPPORTED for a user optimizer. */
ms_status metastep_optim_state_restore(metastep_optim_state *s, const ms_container *saved);

#ifdef __cplusplus
}
#endif
#endif
