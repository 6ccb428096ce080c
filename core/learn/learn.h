/* core/learn: the top layer — optimizers and the meta steps (MAML, FOMAML,
 * Reptile), and where new algorithms go (Meta-SGD, MAML++, iMAML,
 * checkpointed MAML), each in a file of its own. */
#ifndef METASTEP_CORE_LEARN_H
#define METASTEP_CORE_LEARN_H

#include "autodiff/autodiff.h"

/* The worker pool (pool.c): fn(ctx, i) for every i < n, on the caller and up
 * to threads - 1 workers, in no particular order; returns when all are done.
 * Workers compute on the caller's backend with its kernels' internal threads
 * set to 1, and mirror the caller's no-grad state.  threads <= 1, a busy
 * pool or a call from a worker: every i in order on the caller. */
typedef void (*ms__pool_fn)(void *ctx, int i);
MS_HIDDEN void ms__pool_run(int threads, int n, ms__pool_fn fn, void *ctx);

/* ---- helpers the steps share (meta.c defines them, but ms__inner_product,
 * which checkpointed.c defines; checkpointed.c and imaml.c use them) ---- */

/* The variables a mask selects: all when mask is NULL, the chains when keep,
 * the rest otherwise (a new container). */
MS_HIDDEN ms_container *ms__select_vars(const ms_container *vars, const char *const *mask,
                                        bool keep);
/* The tensors of c, those that do not require a gradient replaced by new
 * variables with their values (a new container). */
MS_HIDDEN ms_container *ms__as_variables(const ms_container *c);
/* A cost must be one finite element; `which` names it ("inner", "outer"). */
MS_HIDDEN ms_status ms__check_cost(const char *fn, const ms_tensor *cost, const char *which,
                                   int step, int task);
/* Every entry of every gradient must be finite (task < 0: the mean over the
 * tasks). */
MS_HIDDEN ms_status ms__check_grads(const char *fn, const ms_container *g, const char *which,
                                    int step, int task);
/* fn(b, user), or a copy of b when fn is NULL; NULL with the error recorded. */
MS_HIDDEN ms_container *ms__apply_batch_fn(metastep_batch_fn fn, const ms_container *b,
                                           void *user, const char *name);
/* Sum over every leaf of sum(a[key] * b[key]) for the keys of a (b must
 * hold them): the inner product that turns a vector-Jacobian product into
 * the gradient of a scalar.  A new tensor of the current scope, or NULL. */
MS_HIDDEN ms_tensor *ms__inner_product(const ms_container *a, const ms_container *b);

/* Checkpointed second-order MAML (checkpointed.c): metastep_maml_step with
 * o->checkpoint_every != 0, after meta.c validated the arguments (num_tasks
 * resolved, opt the inner optimizer, never NULL). */
MS_HIDDEN ms_status ms__maml_checkpointed(const char *fn, const ms_container *batch,
                                          metastep_cost_fn inner_fn, metastep_cost_fn outer_fn,
                                          const ms_container *variables, int steps, double lr,
                                          const metastep_options *o,
                                          const metastep_optimizer *opt, int num_tasks,
                                          metastep_result *out);

#endif
