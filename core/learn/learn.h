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
