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
/* Learned inner learning rates and the multi-step loss (learned_lr.c; the
 * options are metastep_options.inner_learning_rates, .inner_lr_per_step and
 * .step_weights; docs/variants.md).  Rate gradients are keyed
 * METASTEP_INNER_LR_PREFIX + the variable's key chain. */
/* Whether key is a rate gradient's key ("inner_lr/..."). */
MS_HIDDEN bool ms__llr_is_rate_key(const char *key);
/* Check the rates and step weights of o against the variables (with the
 * task axis when batched), the inner steps and the inner optimizer. */
MS_HIDDEN ms_status ms__llr_validate(const char *fn, const metastep_options *o,
                                     const ms_container *variables, int steps,
                                     const metastep_optimizer *opt, bool batched);
/* A fresh leaf variable for every rate (second order differentiates them). */
MS_HIDDEN ms_container *ms__llr_leaves(const ms_container *rates);
/* vars plus every rate under its "inner_lr/" key. */
MS_HIDDEN ms_container *ms__llr_join(const ms_container *vars, const ms_container *rates);
/* For every key of like: rates[key without the prefix] for a rate key, else
 * vars[key]. */
MS_HIDDEN ms_container *ms__llr_same_keys(const ms_container *vars, const ms_container *rates,
                                          const ms_container *like);
/* Inner step `step`: w - rate_step * g for every variable of w (detached
 * when stop). */
MS_HIDDEN ms_container *ms__llr_update(const ms_container *rates, bool per_step, int step,
                                       const ms_container *w, const ms_container *g, bool stop);
/* First order: the rates' gradient contribution of a cost whose gradient
 * with respect to the variables after j inner steps is G (every rate's key
 * present), the inner gradients of steps 0..j-1 being hist[0..j-1]:
 * -scale * sum_{i<j} G * hist[i], reduced to each rate's (slice) shape.
 * Keys "inner_lr/<key>". */
MS_HIDDEN ms_container *ms__llr_fo_grads(const ms_container *rates, bool per_step,
                                         const ms_container *G, ms_container *const *hist,
                                         int j, double scale);
/* Batched: every variable's gradient summed (or averaged) over the task
 * axis; the rates' gradients (no task axis) unchanged. */
MS_HIDDEN ms_container *ms__llr_reduce_tasks(const ms_container *g, bool mean);
/* Sharded steps (shard.c, metastep_options.shard): a task's contribution as
 * a record of bytes.  The layout is the keys, dtypes and shapes of a gradient
 * contribution (grads_like) and, when adapted variables are returned, of the
 * variables (vars_like; a record holds them with a leading dimension of 1). */
typedef struct ms__shard_layout {
    ms_container *grads, *vars;
    size_t bytes; /* of one record */
} ms__shard_layout;
MS_HIDDEN ms_status ms__shard_validate(const char *fn, const metastep_shard *s, int num_tasks,
                                       bool batched, bool stop);
MS_HIDDEN ms_status ms__shard_layout_init(ms__shard_layout *l, const ms_container *grads_like,
                                          const ms_container *vars_like);
MS_HIDDEN void ms__shard_layout_free(ms__shard_layout *l);
/* Write task's results (or, when st is not MS_OK, its status and message)
 * into rec (l->bytes); results that do not fit the layout become an
 * MS_ERR_INTERNAL record. */
MS_HIDDEN void ms__shard_pack(const ms__shard_layout *l, const char *fn, int task, ms_status st,
                              const char *msg, const ms_tensor *cost, const ms_container *grads,
                              const ms_container *vars, void *rec);
/* A record back into a retained cost, gradients and (when the layout has
 * them) adapted variables; a failed task's record gives its status with its
 * message recorded. */
MS_HIDDEN ms_status ms__shard_unpack(const ms__shard_layout *l, const char *fn, const void *rec,
                                     ms_tensor **cost, ms_container **grads, ms_container **vars);

#endif
