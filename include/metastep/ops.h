/* metastep — differentiable forward ops.
 *
 * Every op returns a new tensor reference (owned as described in tensor.h),
 * or NULL: with a message in ms_last_error() when an argument is invalid, or
 * silently when an argument is NULL (an earlier op already failed).
 * Operands must share a dtype (MS_ERR_DTYPE otherwise).  Binary ops broadcast
 * like NumPy.  Axes may be negative (counted from the end).  Every op records
 * its backward when gradient recording is on and an input requires a
 * gradient (see autodiff.h).
 */
#ifndef METASTEP_OPS_H
#define METASTEP_OPS_H

#include <stdbool.h>
#include <stdint.h>

#include "metastep/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- unary --- */
ms_tensor *ms_neg(const ms_tensor *x);
ms_tensor *ms_abs(const ms_tensor *x);
ms_tensor *ms_sign(const ms_tensor *x);
ms_tensor *ms_exp(const ms_tensor *x);
ms_tensor *ms_log(const ms_tensor *x);
ms_tensor *ms_sqrt(const ms_tensor *x);
ms_tensor *ms_square(const ms_tensor *x);
ms_tensor *ms_reciprocal(const ms_tensor *x);
ms_tensor *ms_tanh(const ms_tensor *x);
ms_tensor *ms_sigmoid(const ms_tensor *x);
ms_tensor *ms_relu(const ms_tensor *x);
ms_tensor *ms_sin(const ms_tensor *x);
ms_tensor *ms_cos(const ms_tensor *x);

/* --- binary, NumPy broadcasting (MS_ERR_SHAPE when shapes do not broadcast) --- */
ms_tensor *ms_add(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_sub(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_mul(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_div(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_pow(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_maximum(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_minimum(const ms_tensor *a, const ms_tensor *b);
/* Comparisons give 1 or 0 in the operands' dtype; not differentiable. */
ms_tensor *ms_equal(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_not_equal(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_less(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_less_equal(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_greater(const ms_tensor *a, const ms_tensor *b);
ms_tensor *ms_greater_equal(const ms_tensor *a, const ms_tensor *b);

/* --- tensor-scalar: x op s, and s op x for the _r variants --- */
ms_tensor *ms_add_scalar(const ms_tensor *x, double s);
ms_tensor *ms_sub_scalar(const ms_tensor *x, double s);
ms_tensor *ms_rsub_scalar(const ms_tensor *x, double s); /* s - x */
ms_tensor *ms_mul_scalar(const ms_tensor *x, double s);
ms_tensor *ms_div_scalar(const ms_tensor *x, double s);
ms_tensor *ms_rdiv_scalar(const ms_tensor *x, double s); /* s / x */
ms_tensor *ms_pow_scalar(const ms_tensor *x, double s);  /* x ** s */
ms_tensor *ms_maximum_scalar(const ms_tensor *x, double s);
ms_tensor *ms_minimum_scalar(const ms_tensor *x, double s);

/* --- reductions over a set of axes; naxes == 0 means every axis.
 * Duplicate or out-of-range axes: MS_ERR_RANK.  max/min of an empty
 * selection: MS_ERR_SHAPE.  Gradients of max/min are split evenly among ties. */
ms_tensor *ms_sum(const ms_tensor *t, int naxes, const int *axes, bool keepdims);
ms_tensor *ms_mean(const ms_tensor *t, int naxes, const int *axes, bool keepdims);
ms_tensor *ms_max(const ms_tensor *t, int naxes, const int *axes, bool keepdims);
ms_tensor *ms_min(const ms_tensor *t, int naxes, const int *axes, bool keepdims);

/* --- linear algebra --- */
/* NumPy matmul: 1-d operands are promoted (and the added dim removed), leading
 * dims broadcast.  MS_ERR_SHAPE when inner dims differ, naming both shapes. */
ms_tensor *ms_matmul(const ms_tensor *a, const ms_tensor *b);

/* --- layout --- */
/* Reverse the axes. */
ms_tensor *ms_transpose(const ms_tensor *t);
/* Output axis i is input axis perm[i]; perm must be a permutation of 0..ndim-1. */
ms_tensor *ms_permute(const ms_tensor *t, const int *perm);
/* Join n tensors (n >= 1) along an existing axis; other dims must match. */
ms_tensor *ms_concat(int n, ms_tensor *const *ts, int axis);
/* Join n same-shaped tensors along a new axis. */
ms_tensor *ms_stack(int n, ms_tensor *const *ts, int axis);
/* Elements start..stop-1 along axis, Python-style: negative indices count from
 * the end, bounds are clamped, stop <= start gives an empty axis. */
ms_tensor *ms_slice(const ms_tensor *t, int axis, int64_t start, int64_t stop);
/* Repeat each element `repeats` times along axis (NumPy repeat; repeats >= 0). */
ms_tensor *ms_repeat(const ms_tensor *t, int64_t repeats, int axis);
/* Materialise t broadcast to `shape` (NumPy broadcast_to). */
ms_tensor *ms_broadcast_to(const ms_tensor *t, int ndim, const int64_t *shape);
/* cond != 0 ? a : b, all three broadcast together; differentiable in a and b. */
ms_tensor *ms_where(const ms_tensor *cond, const ms_tensor *a, const ms_tensor *b);

/* --- normalisation --- */
ms_tensor *ms_softmax(const ms_tensor *t, int axis);
ms_tensor *ms_log_softmax(const ms_tensor *t, int axis);

/* --- neural-network layers (NCHW, as PyTorch).  Every one is differentiable
 * to any order (its backward is written with differentiable ops), so
 * second-order MAML runs through a convolutional network.  float32 and
 * float64; inputs must share one dtype (MS_ERR_DTYPE). --- */

/* 2-D cross-correlation: x (N, C, H, W), w (O, C, KH, KW), bias (O) or NULL;
 * the same stride (>= 1) and zero padding (>= 0) on both spatial dims.
 * Returns (N, O, OH, OW) with OH = (H + 2 padding - KH) / stride + 1
 * (floored), likewise OW.  MS_ERR_RANK for a non-4-D x or w; MS_ERR_SHAPE
 * when channels differ, bias is not (O), or the window does not fit;
 * MS_ERR_INVALID_ARG for stride < 1 or padding < 0.  Runs on the backend's
 * conv2d kernels (ABI 1.1). */
ms_tensor *ms_conv2d(const ms_tensor *x, const ms_tensor *w, const ms_tensor *bias, int stride,
                     int padding);
/* Max over kernel × kernel windows of x (N, C, H, W) at the given stride, no
 * padding: (N, C, (H - kernel) / stride + 1, likewise W), floored.  The
 * gradient goes to the maximum of each window (split evenly among ties, as
 * ms_max).  NaN propagates.  MS_ERR_INVALID_ARG for kernel or stride < 1;
 * MS_ERR_SHAPE when the window does not fit. */
ms_tensor *ms_max_pool2d(const ms_tensor *x, int kernel, int stride);
/* Training-mode batch normalisation of x (N, C) or (N, C, H, W) over every
 * axis except axis 1: (x - mean) / sqrt(var + eps) * gamma + beta, with the
 * biased variance of the batch and no running statistics (MAML's
 * transductive setting); gamma, beta: (C).  eps > 0 (MS_ERR_INVALID_ARG). */
ms_tensor *ms_batch_norm(const ms_tensor *x, const ms_tensor *gamma, const ms_tensor *beta,
                         double eps);
/* Mean over rows i of -sum_j onehot[i,j] * log_softmax(logits)[i,j];
 * logits and onehot (N, K), N, K >= 1.  One element (shape ()). */
ms_tensor *ms_softmax_cross_entropy(const ms_tensor *logits, const ms_tensor *onehot);

#ifdef __cplusplus
}
#endif
#endif
