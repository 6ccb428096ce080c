/* Forward ops and, beside each, its backward written with the public
 * differentiable ops (so gradients can be differentiated again).
 *
 * A backward receives the node, the op's output y and the incoming gradient
 * gy, and stores in gin[i] a tensor for each input that needs a gradient (or
 * leaves NULL for "zero").  Backwards run inside ms_grad's scope, so what they
 * create is owned by that scope. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops.h"

/* ---------------------------------------------------------------- helpers */

ms_tensor *ms__kernel_failed(const char *fn, ms_status st, ms_tensor *y)
{
    const char *b = metastep_current_backend();
    ms__fail(st, "%s: the %s backend's kernel failed: %s", fn, b ? b : "(no)",
             ms_status_string(st));
    ms__discard(y);
    return NULL;
}

/* NumPy broadcasting of two shapes. */
static bool broadcast_shapes(const char *fn, int na, const int64_t *sa, int nb,
                             const int64_t *sb, int *nout, int64_t *out)
{
    int n = na > nb ? na : nb;
    for (int i = 0; i < n; i++) {
        int64_t da = i < n - na ? 1 : sa[i - (n - na)];
        int64_t db = i < n - nb ? 1 : sb[i - (n - nb)];
        if (da != db && da != 1 && db != 1) {
            char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
            ms__fail(MS_ERR_SHAPE, "%s: shapes %s and %s do not broadcast", fn,
                     ms__shape_str(b1, sizeof b1, na, sa), ms__shape_str(b2, sizeof b2, nb, sb));
            return false;
        }
        out[i] = da == 1 ? db : da;
    }
    *nout = n;
    return true;
}

/* Strides of t read as broadcast to n dims: 0 on its size-1 and missing dims. */
static void broadcast_strides(const ms_tensor *t, int n, int64_t *st)
{
    int64_t own[MS_MAX_DIMS];
    ms__strides(t->ndim, t->shape, own);
    for (int i = 0; i < n; i++) {
        int j = i - (n - t->ndim);
        st[i] = (j < 0 || t->shape[j] == 1) ? 0 : own[j];
    }
}

/* Merge adjacent dims that every operand walks contiguously, so kernels run
 * long inner loops: (25,10,1) + (25,10,1) becomes one dim of 250. */
static int coalesce(int n, int64_t *shape, int nops, int64_t **strides)
{
    if (n <= 1)
        return n;
    int out = 0;
    for (int i = 1; i < n; i++) {
        bool merge = true;
        for (int o = 0; o < nops; o++)
            merge = merge && strides[o][out] == strides[o][i] * shape[i];
        if (merge) {
            shape[out] *= shape[i];
            for (int o = 0; o < nops; o++)
                strides[o][out] = strides[o][i];
        } else {
            out++;
            shape[out] = shape[i];
            for (int o = 0; o < nops; o++)
                strides[o][out] = strides[o][i];
        }
    }
    return out + 1;
}

static bool same_shape(const ms_tensor *a, int ndim, const int64_t *shape)
{
    if (a->ndim != ndim)
        return false;
    for (int i = 0; i < ndim; i++)
        if (a->shape[i] != shape[i])
            return false;
    return true;
}

/* Sum g down to `shape` (undoing broadcasting); returns g itself when the
 * shapes already agree. */
static ms_tensor *sum_to(const ms_tensor *g, int ndim, const int64_t *shape)
{
    if (!g)
        return NULL;
    if (same_shape(g, ndim, shape))
        return (ms_tensor *)g;
    int axes[MS_MAX_DIMS], na = 0, lead = g->ndim - ndim;
    for (int i = 0; i < g->ndim; i++) {
        int j = i - lead;
        if (j < 0 || (shape[j] == 1 && g->shape[i] != 1))
            axes[na++] = i;
    }
    ms_tensor *s = na ? ms_sum(g, na, axes, true) : (ms_tensor *)g;
    return ms_reshape(s, ndim, shape);
}

static ms_tensor *scalar_like(const ms_tensor *t, double v) { return ms_scalar(t->dtype, v); }

/* --------------------------------------------------------------- unary */

static ms_tensor *unary(const char *fn, ms_unary_op op, const ms_tensor *x, ms_backward_fn bw)
{
    if (!ms__check(fn, x, "x"))
        return NULL;
    ms_tensor *y = ms__tensor_new(fn, x->dtype, x->ndim, x->shape);
    if (!y)
        return NULL;
    ms_status st = msk_unary(op, x->dtype, x->numel, x->data, y->data);
    if (st != MS_OK)
        return ms__kernel_failed(fn, st, y);
    if (bw && ms__needs_grad(x, NULL, NULL))
        return ms__record(y, fn, bw, x, NULL, NULL, 0.0, NULL, 0);
    return y;
}

/* Comparison of x with a scalar, as a constant mask (not differentiable). */
static ms_tensor *binary_scalar_raw(const char *fn, ms_binary_op op, const ms_tensor *x,
                                    double s, bool reversed);

/* Single-input backwards run only when their input is wanted, so they
 * ignore `want`; multi-input ones test it per input. */
#define BW(name) static ms_status name(const ms_node *n, const bool *want MS_UNUSED, const ms_tensor *y, \
                                       const ms_tensor *gy, ms_tensor **gin)

BW(bw_neg) { (void)n; (void)y; gin[0] = ms_neg(gy); return MS_OK; }
BW(bw_abs) { (void)y; gin[0] = ms_mul(gy, ms_sign(n->in[0])); return MS_OK; }
BW(bw_exp) { (void)n; gin[0] = ms_mul(gy, y); return MS_OK; }
BW(bw_log) { (void)y; gin[0] = ms_div(gy, n->in[0]); return MS_OK; }
BW(bw_sqrt) { (void)n; gin[0] = ms_div(gy, ms_mul_scalar(y, 2.0)); return MS_OK; }
BW(bw_square) { (void)y; gin[0] = ms_mul(gy, ms_mul_scalar(n->in[0], 2.0)); return MS_OK; }
BW(bw_reciprocal) { (void)n; gin[0] = ms_neg(ms_mul(gy, ms_square(y))); return MS_OK; }
BW(bw_tanh) { (void)n; gin[0] = ms_mul(gy, ms_rsub_scalar(ms_square(y), 1.0)); return MS_OK; }
BW(bw_sigmoid)
{
    (void)n;
    gin[0] = ms_mul(gy, ms_mul(y, ms_rsub_scalar(y, 1.0)));
    return MS_OK;
}
BW(bw_relu)
{
    (void)y;
    gin[0] = ms_mul(gy, binary_scalar_raw("ms_relu", MS_BINARY_GT, n->in[0], 0.0, false));
    return MS_OK;
}
BW(bw_sin) { (void)y; gin[0] = ms_mul(gy, ms_cos(n->in[0])); return MS_OK; }
BW(bw_cos) { (void)y; gin[0] = ms_neg(ms_mul(gy, ms_sin(n->in[0]))); return MS_OK; }

ms_tensor *ms_neg(const ms_tensor *x) { return unary("ms_neg", MS_UNARY_NEG, x, bw_neg); }
ms_tensor *ms_abs(const ms_tensor *x) { return unary("ms_abs", MS_UNARY_ABS, x, bw_abs); }
ms_tensor *ms_sign(const ms_tensor *x) { return unary("ms_sign", MS_UNARY_SIGN, x, NULL); }
ms_tensor *ms_exp(const ms_tensor *x) { return unary("ms_exp", MS_UNARY_EXP, x, bw_exp); }
ms_tensor *ms_log(const ms_tensor *x) { return unary("ms_log", MS_UNARY_LOG, x, bw_log); }
ms_tensor *ms_sqrt(const ms_tensor *x) { return unary("ms_sqrt", MS_UNARY_SQRT, x, bw_sqrt); }
ms_tensor *ms_square(const ms_tensor *x)
{
    return unary("ms_square", MS_UNARY_SQUARE, x, bw_square);
}
ms_tensor *ms_reciprocal(const ms_tensor *x)
{
    return unary("ms_reciprocal", MS_UNARY_RECIPROCAL, x, bw_reciprocal);
}
ms_tensor *ms_tanh(const ms_tensor *x) { return unary("ms_tanh", MS_UNARY_TANH, x, bw_tanh); }
ms_tensor *ms_sigmoid(const ms_tensor *x)
{
    return unary("ms_sigmoid", MS_UNARY_SIGMOID, x, bw_sigmoid);
}
ms_tensor *ms_relu(const ms_tensor *x) { return unary("ms_relu", MS_UNARY_RELU, x, bw_relu); }
ms_tensor *ms_sin(const ms_tensor *x) { return unary("ms_sin", MS_UNARY_SIN, x, bw_sin); }
ms_tensor *ms_cos(const ms_tensor *x) { return unary("ms_cos", MS_UNARY_COS, x, bw_cos); }

/* -------------------------------------------------------------- binary */

static ms_tensor *binary(const char *fn, ms_binary_op op, const ms_tensor *a, const ms_tensor *b,
                         ms_backward_fn bw)
{
    if (!ms__check(fn, a, "a") || !ms__check(fn, b, "b") || !ms__same_dtype(fn, a, b))
        return NULL;
    int n;
    int64_t shape[MS_MAX_DIMS];
    if (!broadcast_shapes(fn, a->ndim, a->shape, b->ndim, b->shape, &n, shape))
        return NULL;
    ms_tensor *y = ms__tensor_new(fn, a->dtype, n, shape);
    if (!y)
        return NULL;
    if (y->numel && a->numel == y->numel && b->numel == y->numel) {
        /* no broadcasting (the common case): one contiguous run */
        static const int64_t unit = 1;
        ms_status st = msk_binary(op, a->dtype, 1, &y->numel, a->data, &unit, b->data, &unit,
                                  y->data);
        if (st != MS_OK)
            return ms__kernel_failed(fn, st, y);
    } else if (y->numel) {
        int64_t sa[MS_MAX_DIMS], sb[MS_MAX_DIMS], sy[MS_MAX_DIMS], ks[MS_MAX_DIMS];
        broadcast_strides(a, n, sa);
        broadcast_strides(b, n, sb);
        ms__strides(n, shape, sy);
        memcpy(ks, shape, sizeof(int64_t) * (size_t)n);
        int64_t *strides[3] = {sa, sb, sy};
        int kn = coalesce(n, ks, 3, strides);
        ms_status st = msk_binary(op, a->dtype, kn, ks, a->data, sa, b->data, sb, y->data);
        if (st != MS_OK)
            return ms__kernel_failed(fn, st, y);
    }
    if (bw && ms__needs_grad(a, b, NULL))
        return ms__record(y, fn, bw, a, b, NULL, 0.0, NULL, 0);
    return y;
}

#define A (n->in[0])
#define B (n->in[1])
#define GIN_A(expr) do { if (want[0]) gin[0] = sum_to((expr), A->ndim, A->shape); } while (0)
#define GIN_B(expr) do { if (want[1]) gin[1] = sum_to((expr), B->ndim, B->shape); } while (0)

BW(bw_add) { (void)y; GIN_A(gy); GIN_B(gy); return MS_OK; }
BW(bw_sub) { (void)y; GIN_A(gy); GIN_B(ms_neg(gy)); return MS_OK; }
BW(bw_mul) { (void)y; GIN_A(ms_mul(gy, B)); GIN_B(ms_mul(gy, A)); return MS_OK; }
BW(bw_div)
{
    GIN_A(ms_div(gy, B));
    GIN_B(ms_neg(ms_div(ms_mul(gy, y), B)));
    return MS_OK;
}
BW(bw_pow)
{
    GIN_A(ms_mul(gy, ms_mul(B, ms_pow(A, ms_sub_scalar(B, 1.0)))));
    if (want[1]) {
        /* d/db a^b = a^b log a; taken as 0 where a == 0 (as PyTorch does) */
        ms_tensor *zero = scalar_like(A, 0.0);
        ms_tensor *is0 = binary_scalar_raw("ms_pow", MS_BINARY_EQ, A, 0.0, false);
        ms_tensor *safe = ms_where(is0, ms_ones(A->dtype, 0, NULL), A);
        GIN_B(ms_where(is0, zero, ms_mul(gy, ms_mul(y, ms_log(safe)))));
    }
    return MS_OK;
}

/* Gradient share of `x` in max/min(x, other): 1 where it wins, 1/2 on ties. */
static ms_tensor *win_mask(const char *fn, const ms_tensor *x, const ms_tensor *other, bool max)
{
    ms_tensor *w = binary(fn, max ? MS_BINARY_GT : MS_BINARY_LT, x, other, NULL);
    ms_tensor *tie = binary(fn, MS_BINARY_EQ, x, other, NULL);
    return ms_add(w, ms_mul_scalar(tie, 0.5));
}

BW(bw_maximum)
{
    (void)y;
    GIN_A(ms_mul(gy, win_mask("ms_maximum", A, B, true)));
    GIN_B(ms_mul(gy, win_mask("ms_maximum", B, A, true)));
    return MS_OK;
}
BW(bw_minimum)
{
    (void)y;
    GIN_A(ms_mul(gy, win_mask("ms_minimum", A, B, false)));
    GIN_B(ms_mul(gy, win_mask("ms_minimum", B, A, false)));
    return MS_OK;
}

ms_tensor *ms_add(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_add", MS_BINARY_ADD, a, b, bw_add);
}
ms_tensor *ms_sub(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_sub", MS_BINARY_SUB, a, b, bw_sub);
}
ms_tensor *ms_mul(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_mul", MS_BINARY_MUL, a, b, bw_mul);
}
ms_tensor *ms_div(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_div", MS_BINARY_DIV, a, b, bw_div);
}
ms_tensor *ms_pow(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_pow", MS_BINARY_POW, a, b, bw_pow);
}
ms_tensor *ms_maximum(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_maximum", MS_BINARY_MAXIMUM, a, b, bw_maximum);
}
ms_tensor *ms_minimum(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_minimum", MS_BINARY_MINIMUM, a, b, bw_minimum);
}
ms_tensor *ms_equal(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_equal", MS_BINARY_EQ, a, b, NULL);
}
ms_tensor *ms_not_equal(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_not_equal", MS_BINARY_NE, a, b, NULL);
}
ms_tensor *ms_less(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_less", MS_BINARY_LT, a, b, NULL);
}
ms_tensor *ms_less_equal(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_less_equal", MS_BINARY_LE, a, b, NULL);
}
ms_tensor *ms_greater(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_greater", MS_BINARY_GT, a, b, NULL);
}
ms_tensor *ms_greater_equal(const ms_tensor *a, const ms_tensor *b)
{
    return binary("ms_greater_equal", MS_BINARY_GE, a, b, NULL);
}

/* ------------------------------------------------------- tensor-scalar */

/* x op s (or s op x when reversed) without allocating a tensor for s: the
 * scalar is read through stride 0. */
static ms_tensor *binary_scalar_raw(const char *fn, ms_binary_op op, const ms_tensor *x,
                                    double s, bool reversed)
{
    if (!ms__check(fn, x, "x"))
        return NULL;
    ms_tensor *y = ms__tensor_new(fn, x->dtype, x->ndim, x->shape);
    if (!y)
        return NULL;
    if (!y->numel)
        return y;
    float sf = (float)s;
    const void *sp = x->dtype == MS_F32 ? (const void *)&sf : (const void *)&s;
    int64_t one = 1, zero = 0;
    const void *a = reversed ? sp : x->data, *b = reversed ? x->data : sp;
    ms_status st = msk_binary(op, x->dtype, 1, &y->numel, a, reversed ? &zero : &one, b,
                              reversed ? &one : &zero, y->data);
    if (st != MS_OK)
        return ms__kernel_failed(fn, st, y);
    return y;
}

static ms_tensor *binary_scalar(const char *fn, ms_binary_op op, const ms_tensor *x, double s,
                                bool reversed, ms_backward_fn bw)
{
    ms_tensor *y = binary_scalar_raw(fn, op, x, s, reversed);
    if (y && bw && ms__needs_grad(x, NULL, NULL))
        return ms__record(y, fn, bw, x, NULL, NULL, s, NULL, 0);
    return y;
}

BW(bw_same) { (void)n; (void)y; gin[0] = (ms_tensor *)gy; return MS_OK; }
BW(bw_mul_s) { (void)y; gin[0] = ms_mul_scalar(gy, n->s); return MS_OK; }
BW(bw_div_s) { (void)y; gin[0] = ms_div_scalar(gy, n->s); return MS_OK; }
BW(bw_rdiv_s) { gin[0] = ms_neg(ms_div(ms_mul(gy, y), A)); return MS_OK; }
BW(bw_pow_s)
{
    (void)y;
    gin[0] = ms_mul(gy, ms_mul_scalar(ms_pow_scalar(A, n->s - 1.0), n->s));
    return MS_OK;
}
static ms_tensor *win_mask_s(const ms_tensor *x, double s, bool max)
{
    ms_tensor *w = binary_scalar_raw("ms_maximum_scalar", max ? MS_BINARY_GT : MS_BINARY_LT, x,
                                     s, false);
    ms_tensor *tie = binary_scalar_raw("ms_maximum_scalar", MS_BINARY_EQ, x, s, false);
    return ms_add(w, ms_mul_scalar(tie, 0.5));
}
BW(bw_max_s) { (void)y; gin[0] = ms_mul(gy, win_mask_s(A, n->s, true)); return MS_OK; }
BW(bw_min_s) { (void)y; gin[0] = ms_mul(gy, win_mask_s(A, n->s, false)); return MS_OK; }

ms_tensor *ms_add_scalar(const ms_tensor *x, double s)
{
    return binary_scalar("ms_add_scalar", MS_BINARY_ADD, x, s, false, bw_same);
}
ms_tensor *ms_sub_scalar(const ms_tensor *x, double s)
{
    return binary_scalar("ms_sub_scalar", MS_BINARY_SUB, x, s, false, bw_same);
}
ms_tensor *ms_rsub_scalar(const ms_tensor *x, double s)
{
    return binary_scalar("ms_rsub_scalar", MS_BINARY_SUB, x, s, true, bw_neg);
}
ms_tensor *ms_mul_scalar(const ms_tensor *x, double s)
{
    return binary_scalar("ms_mul_scalar", MS_BINARY_MUL, x, s, false, bw_mul_s);
}
ms_tensor *ms_div_scalar(const ms_tensor *x, double s)
{
    return binary_scalar("ms_div_scalar", MS_BINARY_DIV, x, s, false, bw_div_s);
}
ms_tensor *ms_rdiv_scalar(const ms_tensor *x, double s)
{
    return binary_scalar("ms_rdiv_scalar", MS_BINARY_DIV, x, s, true, bw_rdiv_s);
}
ms_tensor *ms_pow_scalar(const ms_tensor *x, double s)
{
    return binary_scalar("ms_pow_scalar", MS_BINARY_POW, x, s, false, bw_pow_s);
}
ms_tensor *ms_maximum_scalar(const ms_tensor *x, double s)
{
    return binary_scalar("ms_maximum_scalar", MS_BINARY_MAXIMUM, x, s, false, bw_max_s);
}
ms_tensor *ms_minimum_scalar(const ms_tensor *x, double s)
{
    return binary_scalar("ms_minimum_scalar", MS_BINARY_MINIMUM, x, s, false, bw_min_s);
}

/* ---------------------------------------------------------- reductions */

/* The reduced axes as a bit mask; naxes == 0 selects all. */
static bool axes_mask(const char *fn, const ms_tensor *t, int naxes, const int *axes,
                      uint32_t *mask)
{
    *mask = 0;
    if (naxes < 0 || (naxes > 0 && !axes)) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: %d axes given with axes %s", fn, naxes,
                 axes ? "set" : "NULL");
        return false;
    }
    if (naxes == 0) {
        *mask = t->ndim ? (1u << t->ndim) - 1 : 0;
        return true;
    }
    for (int i = 0; i < naxes; i++) {
        int ax = ms__axis(fn, axes[i], t->ndim);
        if (ax < 0)
            return false;
        if (*mask & (1u << ax)) {
            ms__fail(MS_ERR_RANK, "%s: axis %d is repeated", fn, axes[i]);
            return false;
        }
        *mask |= 1u << ax;
    }
    return true;
}

static void reduced_shape(const ms_tensor *t, uint32_t mask, bool keepdims, int *nd,
                          int64_t *shape)
{
    int n = 0;
    for (int i = 0; i < t->ndim; i++) {
        if (mask & (1u << i)) {
            if (keepdims)
                shape[n++] = 1;
        } else {
            shape[n++] = t->shape[i];
        }
    }
    *nd = n;
}

static ms_tensor *reduce(const char *fn, ms_reduce_op op, const ms_tensor *t, int naxes,
                         const int *axes, bool keepdims, ms_backward_fn bw)
{
    if (!ms__check(fn, t, "t"))
        return NULL;
    uint32_t mask;
    if (!axes_mask(fn, t, naxes, axes, &mask))
        return NULL;
    int nd;
    int64_t shape[MS_MAX_DIMS];
    reduced_shape(t, mask, keepdims, &nd, shape);
    int64_t count = 1;
    for (int i = 0; i < t->ndim; i++)
        if (mask & (1u << i))
            count *= t->shape[i];
    ms_tensor *y = ms__tensor_new(fn, t->dtype, nd, shape);
    if (!y)
        return NULL;
    if ((op == MS_REDUCE_MAX || op == MS_REDUCE_MIN) && count == 0 && y->numel) {
        char b[MS_SHAPE_BUF];
        ms__fail(MS_ERR_SHAPE, "%s: reducing an empty selection of a tensor of shape %s", fn,
                 ms__shape_str(b, sizeof b, t->ndim, t->shape));
        ms__discard(y);
        return NULL;
    }
    if (y->numel) {
        ms_status st = msk_reduce(op, t->dtype, t->ndim, t->shape, mask, t->data, y->data);
        if (st != MS_OK)
            return ms__kernel_failed(fn, st, y);
    }
    if (bw && ms__needs_grad(t, NULL, NULL)) {
        int iarg[2] = {(int)mask, (int)count};
        return ms__record(y, fn, bw, t, NULL, NULL, 0.0, iarg, 2);
    }
    return y;
}

/* gy reshaped to keep the reduced dims of the input as size 1 */
static ms_tensor *keep_shape(const ms_node *n, const ms_tensor *g)
{
    int nd;
    int64_t shape[MS_MAX_DIMS];
    reduced_shape(A, (uint32_t)n->iarg[0], true, &nd, shape);
    return ms_reshape(g, nd, shape);
}

BW(bw_sum)
{
    (void)y;
    gin[0] = ms_broadcast_to(keep_shape(n, gy), A->ndim, A->shape);
    return MS_OK;
}
BW(bw_mean)
{
    (void)y;
    gin[0] = ms_broadcast_to(ms_div_scalar(keep_shape(n, gy), (double)n->iarg[1]), A->ndim,
                             A->shape);
    return MS_OK;
}
BW(bw_maxmin)
{
    /* split evenly among the elements equal to the extreme */
    ms_tensor *hit = binary("ms_max", MS_BINARY_EQ, A, keep_shape(n, y), NULL);
    int naxes = 0, axes[MS_MAX_DIMS];
    for (int i = 0; i < A->ndim; i++)
        if (n->iarg[0] & (1 << i))
            axes[naxes++] = i;
    ms_tensor *share = ms_div(hit, ms_sum(hit, naxes, axes, true));
    gin[0] = ms_mul(keep_shape(n, gy), share);
    return MS_OK;
}

ms_tensor *ms_sum(const ms_tensor *t, int naxes, const int *axes, bool keepdims)
{
    return reduce("ms_sum", MS_REDUCE_SUM, t, naxes, axes, keepdims, bw_sum);
}
ms_tensor *ms_mean(const ms_tensor *t, int naxes, const int *axes, bool keepdims)
{
    return reduce("ms_mean", MS_REDUCE_MEAN, t, naxes, axes, keepdims, bw_mean);
}
ms_tensor *ms_max(const ms_tensor *t, int naxes, const int *axes, bool keepdims)
{
    return reduce("ms_max", MS_REDUCE_MAX, t, naxes, axes, keepdims, bw_maxmin);
}
ms_tensor *ms_min(const ms_tensor *t, int naxes, const int *axes, bool keepdims)
{
    return reduce("ms_min", MS_REDUCE_MIN, t, naxes, axes, keepdims, bw_maxmin);
}

/* -------------------------------------------------------------- layout */

/* Copy src (shape, strides) into a new contiguous tensor of that shape. */
ms_tensor *ms__strided_copy(const char *fn, const ms_tensor *src, int nd,
                        const int64_t *shape, const int64_t *ss, int64_t offset)
{
    ms_tensor *y = ms__tensor_new(fn, src->dtype, nd, shape);
    if (!y || !y->numel)
        return y;
    int64_t ds[MS_MAX_DIMS], ks[MS_MAX_DIMS], s2[MS_MAX_DIMS];
    ms__strides(nd, shape, ds);
    memcpy(ks, shape, sizeof(int64_t) * (size_t)nd);
    memcpy(s2, ss, sizeof(int64_t) * (size_t)nd);
    int64_t *strides[2] = {s2, ds};
    int kn = coalesce(nd, ks, 2, strides);
    const char *p = (const char *)src->data + (size_t)offset * ms_dtype_size(src->dtype);
    ms_status st = msk_copy(src->dtype, kn, ks, p, s2, y->data, ds);
    if (st != MS_OK)
        return ms__kernel_failed(fn, st, y);
    return y;
}

BW(bw_reshape) { (void)y; gin[0] = ms_reshape(gy, A->ndim, A->shape); return MS_OK; }

ms_tensor *ms_reshape(const ms_tensor *t, int ndim, const int64_t *shape)
{
    const char *fn = "ms_reshape";
    if (!ms__check(fn, t, "t"))
        return NULL;
    if (ndim < 0 || ndim > MS_MAX_DIMS) {
        ms__fail(MS_ERR_RANK, "%s: rank %d is outside [0, %d]", fn, ndim, MS_MAX_DIMS);
        return NULL;
    }
    if (ndim && !shape) {
        ms__fail(MS_ERR_NULL_ARG, "%s: shape is NULL", fn);
        return NULL;
    }
    int64_t s[MS_MAX_DIMS], known = 1;
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        s[i] = shape[i];
        if (s[i] == -1 && infer < 0)
            infer = i;
        else if (s[i] < 0)
            infer = -2;
        else
            known *= s[i];
    }
    if (infer >= 0 && known > 0 && t->numel % known == 0)
        s[infer] = t->numel / known;
    int64_t total = 1;
    for (int i = 0; i < ndim; i++)
        total *= s[i];
    if (infer == -2 || (infer >= 0 && (known == 0 || t->numel % known)) || total != t->numel) {
        char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
        ms__fail(MS_ERR_SHAPE, "%s: cannot reshape %s (%lld elements) to %s", fn,
                 ms__shape_str(b1, sizeof b1, t->ndim, t->shape), (long long)t->numel,
                 ms__shape_str(b2, sizeof b2, ndim, shape));
        return NULL;
    }
    ms_tensor *y = ms__tensor_new(fn, t->dtype, ndim, s);
    if (!y)
        return NULL;
    if (y->numel)
        ms__host_copy(y->data, t->data, (size_t)y->numel * ms_dtype_size(t->dtype));
    if (ms__needs_grad(t, NULL, NULL))
        return ms__record(y, fn, bw_reshape, t, NULL, NULL, 0.0, NULL, 0);
    return y;
}

ms_tensor *ms_expand_dims(const ms_tensor *t, int axis)
{
    if (!ms__check("ms_expand_dims", t, "t"))
        return NULL;
    if (t->ndim == MS_MAX_DIMS) {
        ms__fail(MS_ERR_RANK, "ms_expand_dims: tensor already has %d dims", MS_MAX_DIMS);
        return NULL;
    }
    int ax = ms__axis("ms_expand_dims", axis, t->ndim + 1);
    if (ax < 0)
        return NULL;
    int64_t s[MS_MAX_DIMS];
    for (int i = 0, j = 0; i <= t->ndim; i++)
        s[i] = i == ax ? 1 : t->shape[j++];
    return ms_reshape(t, t->ndim + 1, s);
}

ms_tensor *ms_squeeze(const ms_tensor *t, int axis)
{
    if (!ms__check("ms_squeeze", t, "t"))
        return NULL;
    int64_t s[MS_MAX_DIMS];
    int n = 0;
    if (axis == MS_ALL_AXES) {
        for (int i = 0; i < t->ndim; i++)
            if (t->shape[i] != 1)
                s[n++] = t->shape[i];
    } else {
        int ax = ms__axis("ms_squeeze", axis, t->ndim);
        if (ax < 0)
            return NULL;
        if (t->shape[ax] != 1) {
            ms__fail(MS_ERR_SHAPE, "ms_squeeze: axis %d has size %lld, not 1", axis,
                     (long long)t->shape[ax]);
            return NULL;
        }
        for (int i = 0; i < t->ndim; i++)
            if (i != ax)
                s[n++] = t->shape[i];
    }
    return ms_reshape(t, n, s);
}

BW(bw_permute)
{
    (void)y;
    int inv[MS_MAX_DIMS];
    for (int i = 0; i < A->ndim; i++)
        inv[n->iarg[i]] = i;
    gin[0] = ms_permute(gy, inv);
    return MS_OK;
}

ms_tensor *ms_permute(const ms_tensor *t, const int *perm)
{
    const char *fn = "ms_permute";
    if (!ms__check(fn, t, "t"))
        return NULL;
    if (t->ndim && !perm) {
        ms__fail(MS_ERR_NULL_ARG, "%s: perm is NULL", fn);
        return NULL;
    }
    int64_t own[MS_MAX_DIMS], ss[MS_MAX_DIMS], shape[MS_MAX_DIMS];
    unsigned seen = 0;
    ms__strides(t->ndim, t->shape, own);
    for (int i = 0; i < t->ndim; i++) {
        if (perm[i] < 0 || perm[i] >= t->ndim || (seen & (1u << perm[i]))) {
            ms__fail(MS_ERR_RANK, "%s: perm is not a permutation of 0..%d (entry %d is %d)", fn,
                     t->ndim - 1, i, perm[i]);
            return NULL;
        }
        seen |= 1u << perm[i];
        shape[i] = t->shape[perm[i]];
        ss[i] = own[perm[i]];
    }
    ms_tensor *y = ms__strided_copy(fn, t, t->ndim, shape, ss, 0);
    if (y && ms__needs_grad(t, NULL, NULL))
        return ms__record(y, fn, bw_permute, t, NULL, NULL, 0.0, perm, t->ndim);
    return y;
}

ms_tensor *ms_transpose(const ms_tensor *t)
{
    if (!ms__check("ms_transpose", t, "t"))
        return NULL;
    int perm[MS_MAX_DIMS];
    for (int i = 0; i < t->ndim; i++)
        perm[i] = t->ndim - 1 - i;
    return ms_permute(t, perm);
}

BW(bw_broadcast) { (void)y; gin[0] = sum_to(gy, A->ndim, A->shape); return MS_OK; }

ms_tensor *ms_broadcast_to(const ms_tensor *t, int ndim, const int64_t *shape)
{
    const char *fn = "ms_broadcast_to";
    if (!ms__check(fn, t, "t"))
        return NULL;
    bool ok = ndim >= t->ndim && ndim <= MS_MAX_DIMS && (shape || !ndim);
    for (int i = 0; ok && i < t->ndim; i++) {
        int64_t d = t->shape[t->ndim - 1 - i];
        ok = d == 1 || d == shape[ndim - 1 - i];
    }
    if (!ok) {
        char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
        ms__fail(MS_ERR_SHAPE, "%s: cannot broadcast %s to %s", fn,
                 ms__shape_str(b1, sizeof b1, t->ndim, t->shape),
                 shape ? ms__shape_str(b2, sizeof b2, ndim, shape) : "NULL");
        return NULL;
    }
    if (same_shape(t, ndim, shape))
        return ms_reshape(t, ndim, shape);
    int64_t ss[MS_MAX_DIMS];
    broadcast_strides(t, ndim, ss);
    ms_tensor *y = ms__strided_copy(fn, t, ndim, shape, ss, 0);
    if (y && ms__needs_grad(t, NULL, NULL))
        return ms__record(y, fn, bw_broadcast, t, NULL, NULL, 0.0, NULL, 0);
    return y;
}

/* slice's backward pads the gradient back with zeros through concat, so the
 * padding is itself differentiable */
BW(bw_slice)
{
    (void)y;
    int axis = n->iarg[0];
    int64_t start = n->larg[0], len = gy->shape[axis], total = A->shape[axis];
    ms_tensor *parts[3];
    int np = 0;
    int64_t s[MS_MAX_DIMS];
    memcpy(s, A->shape, sizeof s);
    if (start > 0) {
        s[axis] = start;
        parts[np++] = ms_zeros(A->dtype, A->ndim, s);
    }
    parts[np++] = (ms_tensor *)gy;
    if (start + len < total) {
        s[axis] = total - start - len;
        parts[np++] = ms_zeros(A->dtype, A->ndim, s);
    }
    gin[0] = np == 1 ? (ms_tensor *)gy : ms_concat(np, parts, axis);
    return MS_OK;
}

ms_tensor *ms_slice(const ms_tensor *t, int axis, int64_t start, int64_t stop)
{
    const char *fn = "ms_slice";
    if (!ms__check(fn, t, "t"))
        return NULL;
    int ax = ms__axis(fn, axis, t->ndim);
    if (ax < 0)
        return NULL;
    int64_t len = t->shape[ax];
    if (start < 0)
        start += len;
    if (stop < 0)
        stop += len;
    start = start < 0 ? 0 : start > len ? len : start;
    stop = stop < start ? start : stop > len ? len : stop;
    int64_t shape[MS_MAX_DIMS], ss[MS_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    shape[ax] = stop - start;
    ms__strides(t->ndim, t->shape, ss);
    ms_tensor *y = ms__strided_copy(fn, t, t->ndim, shape, ss, start * ss[ax]);
    if (y && ms__needs_grad(t, NULL, NULL)) {
        int iarg[1] = {ax};
        y = ms__record(y, fn, bw_slice, t, NULL, NULL, 0.0, iarg, 1);
        if (y)
            y->node->larg[0] = start;
    }
    return y;
}

BW(bw_concat)
{
    (void)y;
    int axis = n->iarg[0];
    int64_t off = 0;
    for (int i = 0; i < n->nmany; i++) {
        int64_t len = n->many[i]->shape[axis];
        if (want[i])
            gin[i] = ms_slice(gy, axis, off, off + len);
        off += len;
    }
    return MS_OK;
}

ms_tensor *ms_concat(int n, ms_tensor *const *ts, int axis)
{
    const char *fn = "ms_concat";
    if (n < 1 || !ts) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: need at least one tensor (got %d)", fn, n);
        return NULL;
    }
    for (int i = 0; i < n; i++)
        if (!ms__check(fn, ts[i], "a tensor") || !ms__same_dtype(fn, ts[0], ts[i]))
            return NULL;
    const ms_tensor *t0 = ts[0];
    int ax = ms__axis(fn, axis, t0->ndim);
    if (ax < 0)
        return NULL;
    int64_t shape[MS_MAX_DIMS];
    memcpy(shape, t0->shape, sizeof shape);
    shape[ax] = 0;
    bool grad = false;
    for (int i = 0; i < n; i++) {
        bool ok = ts[i]->ndim == t0->ndim;
        for (int d = 0; ok && d < t0->ndim; d++)
            ok = d == ax || ts[i]->shape[d] == t0->shape[d];
        if (!ok) {
            char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
            ms__fail(MS_ERR_SHAPE, "%s: tensor %d has shape %s, incompatible with %s on axis %d",
                     fn, i, ms__shape_str(b1, sizeof b1, ts[i]->ndim, ts[i]->shape),
                     ms__shape_str(b2, sizeof b2, t0->ndim, t0->shape), axis);
            return NULL;
        }
        shape[ax] += ts[i]->shape[ax];
        grad = grad || ms__needs_grad(ts[i], NULL, NULL);
    }
    ms_tensor *y = ms__tensor_new(fn, t0->dtype, t0->ndim, shape);
    if (!y)
        return NULL;
    int64_t ys[MS_MAX_DIMS], off = 0;
    ms__strides(t0->ndim, shape, ys);
    size_t es = ms_dtype_size(t0->dtype);
    for (int i = 0; i < n; i++) {
        const ms_tensor *t = ts[i];
        if (t->numel) {
            int64_t ss[MS_MAX_DIMS], ds[MS_MAX_DIMS], ks[MS_MAX_DIMS];
            ms__strides(t->ndim, t->shape, ss);
            memcpy(ds, ys, sizeof ds);
            memcpy(ks, t->shape, sizeof ks);
            int64_t *strides[2] = {ss, ds};
            int kn = coalesce(t->ndim, ks, 2, strides);
            ms_status st = msk_copy(t->dtype, kn, ks, t->data, ss,
                                    (char *)y->data + (size_t)(off * ys[ax]) * es, ds);
            if (st != MS_OK)
                return ms__kernel_failed(fn, st, y);
        }
        off += t->shape[ax];
    }
    if (!grad)
        return y;
    int iarg[1] = {ax};
    y = ms__record(y, fn, bw_concat, NULL, NULL, NULL, 0.0, iarg, 1);
    if (!y)
        return NULL;
    ms_node *node = y->node;
    node->many = malloc(sizeof(ms_tensor *) * (size_t)n);
    if (!node->many) {
        ms__fail(MS_ERR_NOMEM, "%s: cannot record the graph", fn);
        ms__discard(y);
        return NULL;
    }
    node->nmany = n;
    for (int i = 0; i < n; i++) {
        node->many[i] = ms_retain(ts[i]);
        if (ts[i]->level >= y->level)
            y->level = ts[i]->level + 1;
    }
    return y;
}

ms_tensor *ms_stack(int n, ms_tensor *const *ts, int axis)
{
    const char *fn = "ms_stack";
    if (n < 1 || !ts) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: need at least one tensor (got %d)", fn, n);
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        if (!ms__check(fn, ts[i], "a tensor") || !ms__same_dtype(fn, ts[0], ts[i]))
            return NULL;
        if (!same_shape(ts[i], ts[0]->ndim, ts[0]->shape)) {
            char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
            ms__fail(MS_ERR_SHAPE, "%s: tensor %d has shape %s, tensor 0 has %s", fn, i,
                     ms__shape_str(b1, sizeof b1, ts[i]->ndim, ts[i]->shape),
                     ms__shape_str(b2, sizeof b2, ts[0]->ndim, ts[0]->shape));
            return NULL;
        }
    }
    if (ms__axis(fn, axis, ts[0]->ndim + 1) < 0) /* the new axis, named as ms_stack's */
        return NULL;
    ms_tensor *small[16];
    ms_tensor **parts = n <= 16 ? small : malloc(sizeof(ms_tensor *) * (size_t)n);
    if (!parts) {
        ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
        return NULL;
    }
    /* the expanded parts are intermediates: an internal scope frees them
     * (the graph, if any, keeps its own references) */
    if (ms_scope_push() != MS_OK) {
        if (parts != small)
            free(parts);
        return NULL;
    }
    int ok = 1;
    for (int i = 0; i < n; i++)
        ok = ok && (parts[i] = ms_expand_dims(ts[i], axis)) != NULL;
    ms_tensor *y = ok ? ms_retain(ms_concat(n, parts, axis)) : NULL;
    ms_scope_pop();
    ms__scope_adopt(y);
    if (parts != small)
        free(parts);
    return y;
}

BW(bw_repeat)
{
    (void)y;
    int ax = n->iarg[0];
    int64_t r = n->larg[0], pre = 1, post = 1;
    for (int i = 0; i < ax; i++)
        pre *= A->shape[i];
    for (int i = ax + 1; i < A->ndim; i++)
        post *= A->shape[i];
    int64_t s4[4] = {pre, A->shape[ax], r, post};
    int two = 2;
    gin[0] = ms_reshape(ms_sum(ms_reshape(gy, 4, s4), 1, &two, false), A->ndim, A->shape);
    return MS_OK;
}

ms_tensor *ms_repeat(const ms_tensor *t, int64_t repeats, int axis)
{
    const char *fn = "ms_repeat";
    if (!ms__check(fn, t, "t"))
        return NULL;
    if (repeats < 0) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: repeats %lld is negative", fn, (long long)repeats);
        return NULL;
    }
    int ax = ms__axis(fn, axis, t->ndim);
    if (ax < 0)
        return NULL;
    int64_t pre = 1, post = 1;
    for (int i = 0; i < ax; i++)
        pre *= t->shape[i];
    for (int i = ax + 1; i < t->ndim; i++)
        post *= t->shape[i];
    int64_t s4[4] = {pre, t->shape[ax], repeats, post}, ss[4] = {t->shape[ax] * post, post, 0, 1};
    int64_t shape[MS_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    if (repeats && shape[ax] > INT64_MAX / repeats) {
        ms__fail(MS_ERR_OVERFLOW, "%s: %lld repeats overflow", fn, (long long)repeats);
        return NULL;
    }
    shape[ax] *= repeats;
    ms_tensor *flat = ms__strided_copy(fn, t, 4, s4, ss, 0);
    if (!flat)
        return NULL;
    /* flat has the right values; give it the right shape without a node */
    flat->ndim = t->ndim;
    memcpy(flat->shape, shape, sizeof shape);
    if (ms__needs_grad(t, NULL, NULL)) {
        int iarg[1] = {ax};
        flat = ms__record(flat, fn, bw_repeat, t, NULL, NULL, 0.0, iarg, 1);
        if (flat)
            flat->node->larg[0] = repeats;
    }
    return flat;
}

BW(bw_where)
{
    (void)y;
    const ms_tensor *c = n->in[2];
    ms_tensor *zero = ms_scalar(gy->dtype, 0.0);
    GIN_A(ms_where(c, gy, zero));
    GIN_B(ms_where(c, zero, gy));
    return MS_OK;
}

ms_tensor *ms_where(const ms_tensor *cond, const ms_tensor *a, const ms_tensor *b)
{
    const char *fn = "ms_where";
    if (!ms__check(fn, cond, "cond") || !ms__check(fn, a, "a") || !ms__check(fn, b, "b") ||
        !ms__same_dtype(fn, a, b) || !ms__same_dtype(fn, cond, a))
        return NULL;
    int n1, n;
    int64_t s1[MS_MAX_DIMS], shape[MS_MAX_DIMS];
    if (!broadcast_shapes(fn, a->ndim, a->shape, b->ndim, b->shape, &n1, s1) ||
        !broadcast_shapes(fn, cond->ndim, cond->shape, n1, s1, &n, shape))
        return NULL;
    ms_tensor *y = ms__tensor_new(fn, a->dtype, n, shape);
    if (!y)
        return NULL;
    if (y->numel) {
        int64_t sc[MS_MAX_DIMS], sa[MS_MAX_DIMS], sb[MS_MAX_DIMS], sy[MS_MAX_DIMS],
            ks[MS_MAX_DIMS];
        broadcast_strides(cond, n, sc);
        broadcast_strides(a, n, sa);
        broadcast_strides(b, n, sb);
        ms__strides(n, shape, sy);
        memcpy(ks, shape, sizeof(int64_t) * (size_t)n);
        int64_t *strides[4] = {sc, sa, sb, sy};
        int kn = coalesce(n, ks, 4, strides);
        ms_status st = msk_where(a->dtype, kn, ks, cond->data, sc, a->data, sa, b->data, sb,
                                 y->data);
        if (st != MS_OK)
            return ms__kernel_failed(fn, st, y);
    }
    if (ms__needs_grad(a, b, NULL)) {
        y = ms__record(y, fn, bw_where, a, b, cond, 0.0, NULL, 0);
        if (y)
            y->node->need[2] = false;
    }
    return y;
}

/* -------------------------------------------------------------- softmax */

static ms_tensor *softmax(const char *fn, bool log, const ms_tensor *t, int axis,
                          ms_backward_fn bw)
{
    if (!ms__check(fn, t, "t"))
        return NULL;
    int ax = ms__axis(fn, axis, t->ndim);
    if (ax < 0)
        return NULL;
    ms_tensor *y = ms__tensor_new(fn, t->dtype, t->ndim, t->shape);
    if (!y)
        return NULL;
    int64_t outer = 1, inner = 1, len = t->shape[ax];
    for (int i = 0; i < ax; i++)
        outer *= t->shape[i];
    for (int i = ax + 1; i < t->ndim; i++)
        inner *= t->shape[i];
    if (y->numel) {
        ms_status st = msk_softmax(t->dtype, log, outer, len, inner, t->data, y->data);
        if (st != MS_OK)
            return ms__kernel_failed(fn, st, y);
    }
    if (ms__needs_grad(t, NULL, NULL)) {
        int iarg[1] = {ax};
        return ms__record(y, fn, bw, t, NULL, NULL, 0.0, iarg, 1);
    }
    return y;
}

BW(bw_softmax)
{
    int ax = n->iarg[0];
    gin[0] = ms_mul(y, ms_sub(gy, ms_sum(ms_mul(gy, y), 1, &ax, true)));
    return MS_OK;
}
BW(bw_log_softmax)
{
    int ax = n->iarg[0];
    gin[0] = ms_sub(gy, ms_mul(ms_exp(y), ms_sum(gy, 1, &ax, true)));
    return MS_OK;
}

ms_tensor *ms_softmax(const ms_tensor *t, int axis)
{
    return softmax("ms_softmax", false, t, axis, bw_softmax);
}
ms_tensor *ms_log_softmax(const ms_tensor *t, int axis)
{
    return softmax("ms_log_softmax", true, t, axis, bw_log_softmax);
}

/* --------------------------------------------------------------- matmul */

/* C = op(A) op(B) over broadcast batch dims; both operands have rank >= 2. */
static ms_tensor *matmul_t(const ms_tensor *a, const ms_tensor *b, bool ta, bool tb);

BW(bw_matmul)
{
    (void)y;
    bool ta = n->iarg[0], tb = n->iarg[1];
    if (want[0])
        GIN_A(ta ? matmul_t(B, gy, tb, true) : matmul_t(gy, B, false, !tb));
    if (want[1])
        GIN_B(tb ? matmul_t(gy, A, true, ta) : matmul_t(A, gy, !ta, false));
    return MS_OK;
}

static ms_tensor *matmul_t(const ms_tensor *a, const ms_tensor *b, bool ta, bool tb)
{
    const char *fn = "ms_matmul";
    if (!a || !b)
        return NULL;
    int na = a->ndim, nb = b->ndim;
    int64_t m = ta ? a->shape[na - 1] : a->shape[na - 2];
    int64_t k = ta ? a->shape[na - 2] : a->shape[na - 1];
    int64_t kb = tb ? b->shape[nb - 1] : b->shape[nb - 2];
    int64_t nn = tb ? b->shape[nb - 2] : b->shape[nb - 1];
    char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
    if (k != kb) {
        ms__fail(MS_ERR_SHAPE, "%s: shapes %s and %s do not align (%lld != %lld)", fn,
                 ms__shape_str(b1, sizeof b1, na, a->shape), ms__shape_str(b2, sizeof b2, nb, b->shape),
                 (long long)k, (long long)kb);
        return NULL;
    }
    int nbatch;
    int64_t shape[MS_MAX_DIMS];
    if (!broadcast_shapes(fn, na - 2, a->shape, nb - 2, b->shape, &nbatch, shape))
        return NULL;
    shape[nbatch] = m;
    shape[nbatch + 1] = nn;
    ms_tensor *y = ms__tensor_new(fn, a->dtype, nbatch + 2, shape);
    if (!y)
        return NULL;
    int64_t batch = 1, ba = 1, bb = 1;
    for (int i = 0; i < nbatch; i++)
        batch *= shape[i];
    for (int i = 0; i < na - 2; i++)
        ba *= a->shape[i];
    for (int i = 0; i < nb - 2; i++)
        bb *= b->shape[i];
    /* one batched GEMM needs each operand to be either shared (stride 0) or
     * laid out over the full batch; otherwise materialise it broadcast */
    ms_tensor *tmp[2] = {NULL, NULL};
    const ms_tensor *ops[2] = {a, b};
    int64_t bn[2] = {ba, bb};
    for (int o = 0; o < 2 && y->numel; o++) {
        if (bn[o] == 1 || bn[o] == batch)
            continue;
        const ms_tensor *t = ops[o];
        int64_t s[MS_MAX_DIMS], ss[MS_MAX_DIMS], ds[MS_MAX_DIMS];
        memcpy(s, shape, sizeof(int64_t) * (size_t)nbatch);
        s[nbatch] = t->shape[t->ndim - 2];
        s[nbatch + 1] = t->shape[t->ndim - 1];
        broadcast_strides(t, nbatch + 2, ss);
        tmp[o] = ms__tensor_tmp(fn, t->dtype, nbatch + 2, s);
        if (!tmp[o])
            break;
        ms__strides(nbatch + 2, s, ds);
        msk_copy(t->dtype, nbatch + 2, s, t->data, ss, tmp[o]->data, ds);
        ops[o] = tmp[o];
        bn[o] = batch;
    }
    ms_status st = MS_OK;
    if ((bn[0] == 1 || bn[0] == batch) && (bn[1] == 1 || bn[1] == batch)) {
        if (y->numel)
            st = msk_gemm(a->dtype, ta, tb, batch, m, nn, k, 1.0, ops[0]->data,
                          a->shape[na - 1], bn[0] == 1 ? 0 : m * k, ops[1]->data,
                          b->shape[nb - 1], bn[1] == 1 ? 0 : k * nn, 0.0, y->data, nn, m * nn);
    } else {
        st = MS_ERR_NOMEM;
    }
    ms_release(tmp[0]);
    ms_release(tmp[1]);
    if (st != MS_OK)
        return ms__kernel_failed(fn, st, y);
    if (ms__needs_grad(a, b, NULL)) {
        int iarg[2] = {ta, tb};
        return ms__record(y, fn, bw_matmul, a, b, NULL, 0.0, iarg, 2);
    }
    return y;
}

ms_tensor *ms_matmul(const ms_tensor *a, const ms_tensor *b)
{
    const char *fn = "ms_matmul";
    if (!ms__check(fn, a, "a") || !ms__check(fn, b, "b") || !ms__same_dtype(fn, a, b))
        return NULL;
    if (a->ndim == 0 || b->ndim == 0) {
        ms__fail(MS_ERR_RANK, "%s: operands must have at least one dimension (got ranks %d and %d)",
                 fn, a->ndim, b->ndim);
        return NULL;
    }
    if (a->ndim > 1 && b->ndim > 1)
        return matmul_t(a, b, false, false);
    /* NumPy: a 1-d operand is promoted to a matrix and the added dim dropped;
     * the promoted operands and the unreduced product are intermediates that
     * an internal scope frees */
    if (ms_scope_push() != MS_OK)
        return NULL;
    ms_tensor *r = NULL;
    const ms_tensor *a2 = a, *b2 = b;
    if (a->ndim == 1) {
        int64_t s[2] = {1, a->shape[0]};
        a2 = ms_reshape(a, 2, s);
    }
    if (b->ndim == 1) {
        int64_t s[2] = {b->shape[0], 1};
        b2 = ms_reshape(b, 2, s);
    }
    if ((a->ndim == 1 || b->ndim == 1) && a2 && b2 &&
        a2->shape[a2->ndim - 1] != b2->shape[b2->ndim - 2]) { /* name the shapes given */
        char b1[MS_SHAPE_BUF], bb[MS_SHAPE_BUF];
        ms__fail(MS_ERR_SHAPE, "%s: shapes %s and %s do not align", fn,
                 ms__shape_str(b1, sizeof b1, a->ndim, a->shape),
                 ms__shape_str(bb, sizeof bb, b->ndim, b->shape));
        goto done;
    }
    ms_tensor *y = matmul_t(a2, b2, false, false);
    if (!y)
        goto done;
    int64_t s[MS_MAX_DIMS];
    int nd = 0;
    for (int i = 0; i < y->ndim; i++) {
        if (a->ndim == 1 && i == y->ndim - 2)
            continue;
        if (b->ndim == 1 && i == y->ndim - 1)
            continue;
        s[nd++] = y->shape[i];
    }
    r = ms_retain(ms_reshape(y, nd, s));
done:
    ms_scope_pop();
    ms__scope_adopt(r);
    return r;
}
