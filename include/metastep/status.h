/* metastep — status codes and the per-thread last error.
 *
 * Entry points that are not expressions return an ms_status.  Expression ops
 * (ms_add, ms_matmul, ...) return NULL on failure instead; either way the first
 * failure since the last ms_clear_error() is kept per thread and read with
 * ms_last_error().
 */
#ifndef METASTEP_STATUS_H
#define METASTEP_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

/* Every code has a fixed value: it is part of the backend ABI. */
typedef enum ms_status {
    MS_OK = 0,
    MS_ERR_NULL_ARG = 1,     /* a required pointer was NULL (often a failed earlier op) */
    MS_ERR_INVALID_ARG = 2,  /* a value out of its documented range */
    MS_ERR_DTYPE = 3,        /* dtypes mixed or not supported by the op */
    MS_ERR_SHAPE = 4,        /* shapes that do not broadcast, align or match */
    MS_ERR_RANK = 5,         /* more than MS_MAX_DIMS dimensions, or an axis out of range */
    MS_ERR_OVERFLOW = 6,     /* an element count or byte size that overflows */
    MS_ERR_NOMEM = 7,        /* allocation failed */
    MS_ERR_UNSUPPORTED = 8,  /* a backend kernel declines this dtype/shape (served by ref) */
    MS_ERR_BACKEND = 9,      /* a backend could not be found, loaded or validated */
    MS_ERR_KEY = 10,         /* an unknown key chain, or mismatched container structures */
    MS_ERR_GRAPH = 11,       /* autodiff misuse: non-scalar without seed, released graph */
    MS_ERR_NUMERIC = 12,     /* a NaN or infinity where a finite value is required */
    MS_ERR_IO = 13,          /* a file could not be read or written */
    MS_ERR_FORMAT = 14,      /* a file's contents are malformed */
    MS_ERR_INTERNAL = 15     /* a bug in metastep: please report it */
} ms_status;

/* A short constant English name for a status ("shape mismatch").  Never NULL;
 * unknown codes give "unknown status". */
const char *ms_status_string(ms_status s);

/* The first failure on this thread since the last ms_clear_error().
 * Returns its code (MS_OK when none); when msg is non-NULL, *msg receives a
 * thread-owned string naming the function and the offending shapes or values,
 * valid until the next failure or ms_clear_error() on this thread. */
ms_status ms_last_error(const char **msg);

/* Record a failure from user code (a cost function, a task plugin) in the
 * same way metastep's own functions do: kept only when no failure is
 * recorded yet.  Returns st.  The message is formatted like printf. */
ms_status ms_record_error(ms_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Forget the recorded failure on this thread. */
void ms_clear_error(void);

#ifdef __cplusplus
}
#endif
#endif
