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

#endif
