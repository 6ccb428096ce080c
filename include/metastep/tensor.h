/* metastep — tensors, scopes and printing.
 *
 * An ms_tensor is a reference-counted, contiguous, host-memory array of
 * float32 or float64 with at most MS_MAX_DIMS dimensions.  Ownership:
 *   - every function returning ms_tensor * gives the caller one reference;
 *   - when a scope is open (ms_scope_push), that reference belongs to the
 *     innermost scope and is dropped by ms_scope_pop; call ms_retain to keep a
 *     tensor past the pop (and ms_release it later);
 *   - with no scope open, the caller releases it with ms_release.
 * Every function accepts NULL tensor arguments and then returns NULL (or an
 * error status) without a new error message, so an expression is checked once
 * at the end; the first failure is kept per thread (ms_last_error).
 * Tensors made under one backend are valid under every other.
 */
#ifndef METASTEP_TENSOR_H
#define METASTEP_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "metastep/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define MS_MAX_DIMS 8

typedef enum ms_dtype { MS_F32 = 0, MS_F64 = 1 } ms_dtype;

typedef struct ms_tensor ms_tensor;

/* Size in bytes of one element (4 or 8); 0 for an invalid dtype. */
size_t ms_dtype_size(ms_dtype dt);
/* "float32" / "float64"; "invalid" otherwise. */
const char *ms_dtype_name(ms_dtype dt);

/* --- creation (each returns a new reference, or NULL with the error set) --- */

/* Copies numel elements of `dt` from data (data may be NULL only if numel is 0).
 * Errors: MS_ERR_DTYPE, MS_ERR_RANK (ndim > MS_MAX_DIMS or < 0),
 * MS_ERR_INVALID_ARG (negative dim), MS_ERR_OVERFLOW, MS_ERR_NOMEM, MS_ERR_NULL_ARG. */
ms_tensor *ms_tensor_from_data(ms_dtype dt, int ndim, const int64_t *shape, const void *data);
ms_tensor *ms_zeros(ms_dtype dt, int ndim, const int64_t *shape);
ms_tensor *ms_ones(ms_dtype dt, int ndim, const int64_t *shape);
ms_tensor *ms_full(ms_dtype dt, int ndim, const int64_t *shape, double value);
/* A 0-d tensor holding value. */
ms_tensor *ms_scalar(ms_dtype dt, double value);
/* NumPy's arange: ceil((stop - start) / step) elements start + i*step.
 * MS_ERR_INVALID_ARG for step 0 or non-finite bounds. */
ms_tensor *ms_arange(ms_dtype dt, double start, double stop, double step);
/* num evenly spaced values from start to stop inclusive (num >= 0). */
ms_tensor *ms_linspace(ms_dtype dt, double start, double stop, int64_t num);
/* n×m identity-like matrix (m = n when m < 0). */
ms_tensor *ms_eye(ms_dtype dt, int64_t n, int64_t m);
/* Seeded random tensors from a counter-based generator (Philox-style):
 * the same (seed, shape, dtype) gives the same values on every backend and
 * every run.  normal: mean + std * N(0,1); uniform: [low, high). */
ms_tensor *ms_random_normal(ms_dtype dt, int ndim, const int64_t *shape, double mean,
                            double std, uint64_t seed);
ms_tensor *ms_random_uniform(ms_dtype dt, int ndim, const int64_t *shape, double low,
                             double high, uint64_t seed);
/* A new tensor with the same dtype, shape and values (not a view). */
ms_tensor *ms_copy(const ms_tensor *t);

/* --- inspection (NULL-safe: NULL/0 for a NULL tensor) --- */

/* Pointer to the contiguous elements; owned by the tensor, valid while it lives.
 * Writing through it bypasses autodiff. */
void *ms_tensor_data(const ms_tensor *t);
int ms_tensor_ndim(const ms_tensor *t);
/* Pointer to ndim sizes, owned by the tensor. */
const int64_t *ms_tensor_shape(const ms_tensor *t);
int64_t ms_tensor_numel(const ms_tensor *t);
ms_dtype ms_tensor_dtype(const ms_tensor *t);
/* The single value of a one-element tensor as double; NaN with
 * MS_ERR_SHAPE recorded when numel != 1. */
double ms_tensor_item(const ms_tensor *t);

/* --- views and shapes (new tensors; values copied, differentiable) --- */

/* One dim may be -1 (inferred).  MS_ERR_SHAPE when counts differ. */
ms_tensor *ms_reshape(const ms_tensor *t, int ndim, const int64_t *shape);
/* Insert a size-1 dim at axis (negative counts from the end, -1 = last). */
ms_tensor *ms_expand_dims(const ms_tensor *t, int axis);
/* Remove size-1 dim `axis`; axis = MS_ALL_AXES removes every size-1 dim. */
#define MS_ALL_AXES (-1000)
ms_tensor *ms_squeeze(const ms_tensor *t, int axis);

/* --- lifetime --- */

/* Adds a reference (returns t).  NULL-safe. */
ms_tensor *ms_retain(ms_tensor *t);
/* Drops a reference; frees at zero.  NULL-safe. */
void ms_release(ms_tensor *t);
/* Open a scope on this thread: tensors created until the matching pop belong
 * to it.  Returns MS_ERR_INVALID_ARG beyond 1024 nested scopes. */
ms_status ms_scope_push(void);
/* Close the innermost scope, dropping the reference each tensor created in it
 * holds.  MS_ERR_INVALID_ARG when no scope is open. */
ms_status ms_scope_pop(void);
/* Number of open scopes on this thread. */
int ms_scope_depth(void);
/* Number of live tensors in this process (for leak tests). */
int64_t ms_live_tensors(void);
/* Bytes held by the live tensors (each tensor's allocator block: header and
 * data, rounded up to a power of two), and the most held at once since the
 * last ms_reset_peak_tensor_bytes (which sets it to the live bytes now).
 * Process-wide; graph nodes and containers are not counted.  A memory
 * measure that does not depend on the allocator's caching or on timing. */
int64_t ms_live_tensor_bytes(void);
int64_t ms_peak_tensor_bytes(void);
void ms_reset_peak_tensor_bytes(void);

/* --- printing in Ivy's layout: ivy.array([1.5 , 2.25]) --- */

/* Like Ivy's ivy.set_array_significant_figures / set_array_decimal_values:
 * before printing, each value is rounded to `sig_figs` significant figures
 * in float64 (Ivy's vec_sig_fig) and then printed as NumPy prints float64,
 * with at most `decimals` fractional digits.  The defaults are Ivy's, 10 and
 * 8.  sig_figs 0 turns the rounding off: values then print exactly as NumPy
 * prints an array of the tensor's own dtype (float32 values in their
 * shortest float32 form).  Process-wide.  MS_ERR_INVALID_ARG outside [0, 17]. */
ms_status ms_set_print_options(int sig_figs, int decimals);
/* The current settings (either pointer may be NULL). */
void ms_get_print_options(int *sig_figs, int *decimals);

/* Writes the tensor followed by nothing (no newline).  Values as NumPy prints
 * them (at most 8 fractional digits, shortest round-trip for the dtype,
 * aligned columns).  Returns MS_ERR_NULL_ARG for NULL arguments. */
ms_status ms_tensor_fprint(FILE *f, const ms_tensor *t);
/* Same text into a new malloc'd string the caller frees; NULL on error. */
char *ms_tensor_to_string(const ms_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
