/* core/runtime: loading run-time plugins (one loader for backends and task
 * plugins), the backend stack (metastep_set_backend) and kernel dispatch with
 * fallback to ref.  Above base; below tensors, which fill and arange through
 * it.  It knows nothing of tensors: kernels take raw buffers. */
#ifndef METASTEP_CORE_RUNTIME_H
#define METASTEP_CORE_RUNTIME_H

#include <stdio.h>

#include "base/base.h"

/* --- dispatch (runtime.c): the active backend, with fallback to ref --- */
typedef struct ms_loaded ms_loaded;
MS_HIDDEN const ms_backend *ms__ref(void);
/* The calling thread's active backend (an opaque handle), and pushing that
 * very backend as another thread's override (popped with
 * metastep_unset_thread_backend): a worker computes on its caller's backend. */
MS_HIDDEN void *ms__backend_handle(void);
MS_HIDDEN ms_status ms__thread_backend_push(void *handle);
/* The ABI 1.2 set_num_threads of the calling thread's backend: the previous
 * count, or 0 when the backend does not thread internally (no slot). */
MS_HIDDEN int ms__backend_set_threads(int n);
/* The calling thread's active backend's table (NULL when none loads), and
 * adding n[k] calls of kernel k that fell back from it to ref: what a tape
 * replay dispatches through, once per replay rather than once per kernel. */
MS_HIDDEN const ms_backend *ms__active_table(void);
MS_HIDDEN void ms__count_fallbacks(const uint64_t *n);
MS_HIDDEN ms_status msk_unary(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y);
MS_HIDDEN ms_status msk_binary(ms_binary_op op, ms_dtype dt, int ndim, const int64_t *shape,
                               const void *a, const int64_t *sa, const void *b,
                               const int64_t *sb, void *y);
MS_HIDDEN ms_status msk_reduce(ms_reduce_op op, ms_dtype dt, int ndim, const int64_t *shape,
                               uint32_t axes, const void *x, void *y);
MS_HIDDEN ms_status msk_gemm(ms_dtype dt, bool ta, bool tb, int64_t batch, int64_t m, int64_t n,
                             int64_t k, double alpha, const void *a, int64_t lda, int64_t sa,
                             const void *b, int64_t ldb, int64_t sb, double beta, void *c,
                             int64_t ldc, int64_t sc);
MS_HIDDEN ms_status msk_copy(ms_dtype dt, int ndim, const int64_t *shape, const void *src,
                             const int64_t *ss, void *dst, const int64_t *ds);
MS_HIDDEN ms_status msk_softmax(ms_dtype dt, bool log, int64_t outer, int64_t len, int64_t inner,
                                const void *x, void *y);
MS_HIDDEN ms_status msk_fill(ms_dtype dt, int ndim, const int64_t *shape, const int64_t *ds,
                             double value, void *dst);
MS_HIDDEN ms_status msk_arange(ms_dtype dt, int64_t n, double start, double step, void *y);
MS_HIDDEN ms_status msk_conv2d(ms_dtype dt, const ms_conv2d_desc *d, const void *x,
                               const void *w, const void *bias, void *y);
MS_HIDDEN ms_status msk_conv2d_backward_data(ms_dtype dt, const ms_conv2d_desc *d,
                                             const void *gy, const void *w, void *gx);
MS_HIDDEN ms_status msk_conv2d_backward_weights(ms_dtype dt, const ms_conv2d_desc *d,
                                                const void *x, const void *gy, void *gw);
MS_HIDDEN ms_status msk_where(ms_dtype dt, int ndim, const int64_t *shape, const void *c,
                              const int64_t *sc, const void *a, const int64_t *sa, const void *b,
                              const int64_t *sb, void *y);

/* --- the kernel tape (tape.c): recording the kernels one eager meta step
 * dispatches on this thread, planning their buffers, replaying them --- */
typedef struct ms_tape ms_tape;
MS_HIDDEN ms_tape *ms__tape_new(void);
MS_HIDDEN void ms__tape_free(ms_tape *t);
/* Start recording t on this thread (one tape per thread at a time). */
MS_HIDDEN ms_status ms__tape_begin(ms_tape *t);
MS_HIDDEN void ms__tape_end(void);
/* The tape recording on this thread, or NULL.  Inline: every kernel call asks. */
MS_HIDDEN extern _Thread_local ms_tape *ms__tape_cur;
static inline bool ms__taping(void) { return ms__tape_cur != NULL; }
/* Register a caller's block (a tensor's whole block) as input `slot`;
 * returns its buffer id (the same id for a block registered twice). */
MS_HIDDEN int ms__tape_input(ms_tape *t, const void *block, size_t bytes, int slot);
/* Mark the recording as not replayable, with the reason (the first wins). */
MS_HIDDEN void ms__tape_refuse(const char *why);
MS_HIDDEN const char *ms__tape_why(const ms_tape *t);
/* Where an output's bytes are after a replay (call after recording, while
 * the output's block is alive): buffer id and offset. */
MS_HIDDEN ms_status ms__tape_locate(ms_tape *t, const void *ptr, size_t bytes, int *id,
                                    int64_t *off);
/* Plan the arena; after this the tape can be replayed. */
MS_HIDDEN ms_status ms__tape_finish(ms_tape *t);
MS_HIDDEN void ms__tape_set_input(ms_tape *t, int id, const void *block);
MS_HIDDEN ms_status ms__tape_replay(ms_tape *t);
MS_HIDDEN void *ms__tape_addr(const ms_tape *t, int id, int64_t off);
MS_HIDDEN size_t ms__tape_arena_bytes(const ms_tape *t);
MS_HIDDEN int ms__tape_ops(const ms_tape *t);
/* One line per recorded operation (METASTEP_PLAN_DUMP, for profiling). */
MS_HIDDEN void ms__tape_dump(const ms_tape *t, FILE *f);
/* A finiteness check of n values the eager step makes: a replay makes it at
 * the same point and stops with MS_ERR_NUMERIC (no message) when it fails. */
MS_HIDDEN void ms__tape_check(const void *data, int64_t n, ms_dtype dt);
/* memcpy between tensors' data, recorded when a tape records. */
MS_HIDDEN void ms__host_copy(void *dst, const void *src, size_t bytes);
/* Recorders, called by the msk_* dispatchers while a tape records. */
MS_HIDDEN ms_status ms__tape_unary(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y);
MS_HIDDEN ms_status ms__tape_binary(ms_binary_op op, ms_dtype dt, int ndim, const int64_t *shape,
                                    const void *a, const int64_t *sa, const void *b,
                                    const int64_t *sb, void *y);
MS_HIDDEN ms_status ms__tape_reduce(ms_reduce_op op, ms_dtype dt, int ndim, const int64_t *shape,
                                    uint32_t axes, const void *x, void *y);
MS_HIDDEN ms_status ms__tape_gemm(ms_dtype dt, bool ta, bool tb, int64_t batch, int64_t m,
                                  int64_t n, int64_t k, double alpha, const void *a, int64_t lda,
                                  int64_t sa, const void *b, int64_t ldb, int64_t sb, double beta,
                                  void *c, int64_t ldc, int64_t sc);
MS_HIDDEN ms_status ms__tape_copy(ms_dtype dt, int ndim, const int64_t *shape, const void *src,
                                  const int64_t *ss, void *dst, const int64_t *ds);
MS_HIDDEN ms_status ms__tape_softmax(ms_dtype dt, bool log, int64_t outer, int64_t len,
                                     int64_t inner, const void *x, void *y);
MS_HIDDEN ms_status ms__tape_fill(ms_dtype dt, int ndim, const int64_t *shape, const int64_t *ds,
                                  double value, void *dst);
MS_HIDDEN ms_status ms__tape_arange(ms_dtype dt, int64_t n, double start, double step, void *y);
MS_HIDDEN ms_status ms__tape_where(ms_dtype dt, int ndim, const int64_t *shape, const void *c,
                                   const int64_t *sc, const void *a, const int64_t *sa,
                                   const void *b, const int64_t *sb, void *y);
MS_HIDDEN ms_status ms__tape_conv2d(ms_dtype dt, const ms_conv2d_desc *d, const void *x,
                                    const void *w, const void *bias, void *y);
MS_HIDDEN ms_status ms__tape_conv2d_backward_data(ms_dtype dt, const ms_conv2d_desc *d,
                                                  const void *gy, const void *w, void *gx);
MS_HIDDEN ms_status ms__tape_conv2d_backward_weights(ms_dtype dt, const ms_conv2d_desc *d,
                                                     const void *x, const void *gy, void *gw);

/* --- plugin loader (loader.c), shared by backends and task plugins --- */
typedef struct ms_plugin_kind {
    const char *kind;         /* "backend", "task" */
    const char *prefix;       /* file name prefix, e.g. "libmetastep-backend-" */
    const char *entry_symbol; /* exported entry function */
    const char *path_env;     /* colon-separated search path variable */
    const char *build_dir;    /* build-tree directory */
    const char *install_dir;  /* install directory */
    uint32_t abi_major;
    size_t min_size;          /* smallest acceptable table size */
} ms_plugin_kind;

/* Find (by name or path) and open a plugin, check its header.  On success
 * *table is the header of its table, *path a malloc'd resolved path and
 * *handle the dlopen handle.  On failure returns MS_ERR_BACKEND with the
 * message recorded. */
MS_HIDDEN ms_status ms__plugin_open(const ms_plugin_kind *k, const char *name, void **handle,
                                    const ms_plugin_header **table, char **path);
MS_HIDDEN int ms__plugin_list(const ms_plugin_kind *k,
                              void (*fn)(const char *name, const char *path, void *user),
                              void *user);
MS_HIDDEN size_t ms__plugin_search_path(const ms_plugin_kind *k, char *buf, size_t cap);

#endif
