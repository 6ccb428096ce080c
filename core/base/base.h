/* core/base: the bottom layer of the frontend — the block allocator, the
 * per-thread first error, and names of kernels and ops.  It calls nothing else
 * in core/.  Private to core/: nothing here is installed, and a layer above
 * reaches this one only through this header (included by the header of the
 * layer directly above). */
#ifndef METASTEP_CORE_BASE_H
#define METASTEP_CORE_BASE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "metastep/metastep.h"
#include "metastep/backend.h"

#define MS_HIDDEN __attribute__((visibility("hidden")))
#define MS_UNUSED __attribute__((unused))
#define MS_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* --- allocator (alloc.c) --- */
MS_HIDDEN void *ms__block_alloc(size_t bytes, size_t *cls);
MS_HIDDEN void ms__block_free(void *p, size_t cls);
/* When set (by a recording kernel tape, core/runtime/tape.c), told of every
 * block this thread's allocator hands out (alloc true) or takes back, with
 * the block's full size. */
MS_HIDDEN extern _Thread_local void (*ms__alloc_observer)(void *p, size_t bytes, bool alloc);

/* --- errors (error.c) --- */
/* Record (st, message) as this thread's error unless one is already recorded.
 * Returns st so callers can `return ms__fail(...)`. */
MS_HIDDEN ms_status ms__fail(ms_status st, const char *fmt, ...) MS_PRINTF(2, 3);
/* Format a shape as "(3,4)" into buf. */
MS_HIDDEN const char *ms__shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);
#define MS_SHAPE_BUF 96

#endif
