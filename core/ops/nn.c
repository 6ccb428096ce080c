/* Neural-network layers (metastep/ops.h): conv2d, max_pool2d, batch_norm,
 * softmax_cross_entropy.
 *
 * conv2d runs on three internal ops that form a closed system under
 * differentiation, all bilinear in their two tensor inputs:
 *     FWD(x, w)      = conv(x, w)                          (N, O, OH, OW)
 *     DATA(g, w)     = d sum(g · conv(x, w)) / dx          (N, C, H, W)
 *     WEIGHTS(x, g)  = d sum(g · conv(x, w)) / dw          (O, C, KH, KW)
 * Each is the adjoint of the others in one argument (sum(G · DATA(g, w)) =
 * sum(g · FWD(G, w)) = sum(w · WEIGHTS(G, g))), so every backward is again
 * one of the three and gradients of any order run on the backend's conv2d
 * kernels.
 *
 * max_pool2d gathers the kernel × kernel shifted strided views of x with an
 * internal op WINDOW (a strided copy), and takes ms_max over the window
 * axes, which gives ms_max's tie splitting and NaN propagation.  WINDOW's
 * backward is its adjoint SCATTER (each element of the gradient added back
 * where it was read, overlapping windows accumulated), and SCATTER's backward
 * is WINDOW.
 *
 * batch_norm and softmax_cross_entropy are compositions of public ops. */
#include <string.h>

#include "ops/ops.h"

#define BW(name)                                                                           \
    static ms_status name(const ms_node *n, const bool *want, const ms_tensor *y MS_UNUSED, \
                          const ms_tensor *gy, ms_tensor **gin)

static bool rank_is(const char *fn, const ms_tensor *t, const char *name, int rank)
{
    if (t->ndim == rank)
        return true;
    char b[MS_SHAPE_BUF];
    ms__fail(MS_ERR_RANK, "%s: %s must have %d dims, got shape %s", fn, name, rank,
             ms__shape_str(b, sizeof b, t->ndim, t->shape));
    return false;
}

/* ---------------------------------------------------------------- conv2d */

enum { CONV_FWD, CONV_DATA, CONV_WEIGHTS };
static const char *const conv_names[] = {"ms_conv2d", "ms_conv2d (backward data)",
                                         "ms_conv2d (backward weights)"};

static ms_tensor *conv_op(int kind, const ms_tensor *a, const ms_tensor *b,
                          const ms_tensor *bias, int stride, int padding, int64_t e0, int64_t e1);

/* node: iarg = {kind, stride, padding}; larg = {e0, e1} (DATA: the input's
 * H, W, which the floored output size does not determine; WEIGHTS: KH, KW) */
BW(bw_conv)
{
    int kind = n->iarg[0], s = n->iarg[1], p = n->iarg[2];
    const ms_tensor *a = n->in[0], *b = n->in[1];
    switch (kind) {
    case CONV_FWD: /* a = x, b = w */
        if (want[0])
            gin[0] = conv_op(CONV_DATA, gy, b, NULL, s, p, a->shape[2], a->shape[3]);
        if (want[1])
            gin[1] = conv_op(CONV_WEIGHTS, a, gy, NULL, s, p, b->shape[2], b->shape[3]);
        if (n->nin > 2 && want[2]) {
            int axes[3] = {0, 2, 3};
            gin[2] = ms_sum(gy, 3, axes, false);
        }
        break;
    case CONV_DATA: /* a = g, b = w; gy has x's shape */
        if (want[0])
            gin[0] = conv_op(CONV_FWD, gy, b, NULL, s, p, 0, 0);
        if (want[1])
            gin[1] = conv_op(CONV_WEIGHTS, gy, a, NULL, s, p, b->shape[2], b->shape[3]);
        break;
    default: /* CONV_WEIGHTS: a = x, b = g; gy has w's shape */
        if (want[0])
            gin[0] = conv_op(CONV_DATA, b, gy, NULL, s, p, a->shape[2], a->shape[3]);
        if (want[1])
            gin[1] = conv_op(CONV_FWD, a, gy, NULL, s, p, 0, 0);
        break;
    }
    return MS_OK;
}

static ms_tensor *conv_op(int kind, const ms_tensor *a, const ms_tensor *b,
                          const ms_tensor *bias, int stride, int padding, int64_t e0, int64_t e1)
{
    const char *fn = conv_names[kind];
    if (!a || !b) /* an earlier op of a backward failed (its error is recorded) */
        return NULL;
    if (!ms__same_dtype(fn, a, b))
        return NULL;
    ms_conv2d_desc d;
    const int64_t *as = a->shape, *bs = b->shape;
    int64_t shape[4];
    switch (kind) {
    case CONV_FWD:
        d = (ms_conv2d_desc){.n = as[0], .c = as[1], .h = as[2], .w = as[3],
                             .o = bs[0], .kh = bs[2], .kw = bs[3]};
        break;
    case CONV_DATA:
        d = (ms_conv2d_desc){.n = as[0], .c = bs[1], .h = e0, .w = e1,
                             .o = bs[0], .kh = bs[2], .kw = bs[3]};
        break;
    default:
        d = (ms_conv2d_desc){.n = as[0], .c = as[1], .h = as[2], .w = as[3],
                             .o = bs[1], .kh = e0, .kw = e1};
        break;
    }
    d.stride = stride;
    d.padding = padding;
    d.oh = (d.h + 2 * d.padding - d.kh) / d.stride + 1;
    d.ow = (d.w + 2 * d.padding - d.kw) / d.stride + 1;
    /* the public op validated the geometry; the internal ones only ever see
     * gradients of matching shapes, but check rather than read out of bounds */
    const int64_t want_x[4] = {d.n, d.c, d.h, d.w}, want_w[4] = {d.o, d.c, d.kh, d.kw},
                  want_y[4] = {d.n, d.o, d.oh, d.ow};
    const int64_t *wa = kind == CONV_DATA ? want_y : want_x;
    const int64_t *wb = kind == CONV_WEIGHTS ? want_y : want_w;
    if (a->ndim != 4 || b->ndim != 4 || memcmp(as, wa, sizeof want_x) ||
        memcmp(bs, wb, sizeof want_x)) {
        char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
        ms__fail(MS_ERR_SHAPE, "%s: inconsistent shapes %s and %s", fn,
                 ms__shape_str(b1, sizeof b1, a->ndim, as),
                 ms__shape_str(b2, sizeof b2, b->ndim, bs));
        return NULL;
    }
    memcpy(shape, kind == CONV_FWD ? want_y : kind == CONV_DATA ? want_x : want_w, sizeof shape);
    ms_tensor *y = ms__tensor_new(fn, a->dtype, 4, shape);
    if (!y)
        return NULL;
    if (y->numel) {
        ms_status st = kind == CONV_FWD
                           ? msk_conv2d(a->dtype, &d, a->data, b->data, bias ? bias->data : NULL,
                                        y->data)
                       : kind == CONV_DATA
                           ? msk_conv2d_backward_data(a->dtype, &d, a->data, b->data, y->data)
                           : msk_conv2d_backward_weights(a->dtype, &d, a->data, b->data, y->data);
        if (st != MS_OK)
            return ms__kernel_failed(fn, st, y);
    }
    if (ms__needs_grad(a, b, bias)) {
        int iarg[3] = {kind, stride, padding};
        y = ms__record(y, fn, bw_conv, a, b, bias, 0.0, iarg, 3);
        if (y) {
            y->node->larg[0] = e0;
            y->node->larg[1] = e1;
        }
    }
    return y;
}

ms_tensor *ms_conv2d(const ms_tensor *x, const ms_tensor *w, const ms_tensor *bias, int stride,
                     int padding)
{
    const char *fn = "ms_conv2d";
    if (!ms__check(fn, x, "x") || !ms__check(fn, w, "w") || !ms__same_dtype(fn, x, w))
        return NULL;
    if (bias && (!ms__check(fn, bias, "bias") || !ms__same_dtype(fn, x, bias)))
        return NULL;
    if (!rank_is(fn, x, "x (N, C, H, W)", 4) || !rank_is(fn, w, "w (O, C, KH, KW)", 4))
        return NULL;
    if (stride < 1 || padding < 0) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: stride %d must be >= 1 and padding %d >= 0", fn,
                 stride, padding);
        return NULL;
    }
    char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
    if (x->shape[1] != w->shape[1]) {
        ms__fail(MS_ERR_SHAPE, "%s: x %s has %lld channels, w %s expects %lld", fn,
                 ms__shape_str(b1, sizeof b1, x->ndim, x->shape), (long long)x->shape[1],
                 ms__shape_str(b2, sizeof b2, w->ndim, w->shape), (long long)w->shape[1]);
        return NULL;
    }
    if (bias && (bias->ndim != 1 || bias->shape[0] != w->shape[0])) {
        ms__fail(MS_ERR_SHAPE, "%s: bias has shape %s, expected (%lld) for w %s", fn,
                 ms__shape_str(b1, sizeof b1, bias->ndim, bias->shape), (long long)w->shape[0],
                 ms__shape_str(b2, sizeof b2, w->ndim, w->shape));
        return NULL;
    }
    int64_t ph = x->shape[2] + 2 * (int64_t)padding, pw = x->shape[3] + 2 * (int64_t)padding;
    if (w->shape[2] < 1 || w->shape[3] < 1 || w->shape[2] > ph || w->shape[3] > pw) {
        ms__fail(MS_ERR_SHAPE,
                 "%s: the %lldx%lld window does not fit x %s with padding %d (%lldx%lld)", fn,
                 (long long)w->shape[2], (long long)w->shape[3],
                 ms__shape_str(b1, sizeof b1, x->ndim, x->shape), padding, (long long)ph,
                 (long long)pw);
        return NULL;
    }
    return conv_op(CONV_FWD, x, w, bias, stride, padding, 0, 0);
}

/* ------------------------------------------------------------ max_pool2d */

/* WINDOW:  x (N, C, H, W) -> (N, C, K, K, OH, OW), [n,c,p,q,i,j] = x[n,c,iS+p,jS+q]
 * SCATTER: g (N, C, K, K, OH, OW) -> (N, C, H, W), its adjoint
 * node: iarg = {kind, K, S}, larg = {H, W} */
enum { WIN_GATHER, WIN_SCATTER };

static ms_tensor *window_op(int kind, const ms_tensor *t, int k, int s, int64_t h, int64_t w);

BW(bw_window)
{
    (void)want;
    const ms_tensor *a = n->in[0];
    if (n->iarg[0] == WIN_GATHER)
        gin[0] = window_op(WIN_SCATTER, gy, n->iarg[1], n->iarg[2], a->shape[2], a->shape[3]);
    else
        gin[0] = window_op(WIN_GATHER, gy, n->iarg[1], n->iarg[2], n->larg[0], n->larg[1]);
    return MS_OK;
}

/* Element strides in x (N, C, H, W) of the window layout (N, C, K, K, OH, OW). */
static void window_strides(int64_t c, int64_t h, int64_t w, int s, int64_t *st)
{
    st[0] = c * h * w;
    st[1] = h * w;
    st[2] = w;
    st[3] = 1;
    st[4] = s * w;
    st[5] = s;
}

static ms_tensor *scatter(const char *fn, const ms_tensor *g, int k, int s, int64_t h,
                          int64_t w)
{
    const int64_t *gs = g->shape;
    int64_t shape[4] = {gs[0], gs[1], h, w}, ys[4], xs[6], src[6];
    ms_tensor *y = ms__tensor_new(fn, g->dtype, 4, shape);
    if (!y || !y->numel)
        return y;
    ms__strides(4, shape, ys);
    ms_status st = msk_fill(g->dtype, 4, shape, ys, 0.0, y->data);
    if (st != MS_OK || !g->numel)
        return st != MS_OK ? ms__kernel_failed(fn, st, y) : y;
    window_strides(gs[1], h, w, s, xs);
    ms__strides(6, gs, src);
    size_t es = ms_dtype_size(g->dtype);
    /* offsets p, p' collide (land on one element) only when p - p' is a
     * nonzero multiple of s, so the offsets of each s × s block of the
     * window are copied without collisions; blocks after the first are
     * copied to zeros and added */
    ms_tensor *tmp = NULL, *sum = NULL;
    int nb = (k + s - 1) / s;
    for (int bp = 0; bp < nb && st == MS_OK; bp++) {
        for (int bq = 0; bq < nb && st == MS_OK; bq++) {
            int p0 = bp * s, q0 = bq * s;
            int64_t sub[6] = {gs[0], gs[1], k - p0 < s ? k - p0 : s, k - q0 < s ? k - q0 : s,
                              gs[4], gs[5]};
            const char *from = (const char *)g->data + (size_t)(p0 * src[2] + q0 * src[3]) * es;
            size_t to = (size_t)(p0 * w + q0) * es;
            if (bp == 0 && bq == 0) {
                st = msk_copy(g->dtype, 6, sub, from, src, (char *)y->data + to, xs);
                continue;
            }
            if (!tmp) {
                tmp = ms__tensor_tmp(fn, g->dtype, 4, shape);
                sum = ms__tensor_tmp(fn, g->dtype, 4, shape);
                if (!tmp || !sum) {
                    st = MS_ERR_NOMEM;
                    break;
                }
            }
            st = msk_fill(g->dtype, 4, shape, ys, 0.0, tmp->data);
            if (st == MS_OK)
                st = msk_copy(g->dtype, 6, sub, from, src, (char *)tmp->data + to, xs);
            static const int64_t unit = 1;
            if (st == MS_OK)
                st = msk_binary(MS_BINARY_ADD, g->dtype, 1, &y->numel, y->data, &unit, tmp->data,
                                &unit, sum->data);
            if (st == MS_OK)
                ms__host_copy(y->data, sum->data, (size_t)y->numel * es);
        }
    }
    ms_release(tmp);
    ms_release(sum);
    if (st != MS_OK)
        return ms__kernel_failed(fn, st, y);
    return y;
}

static ms_tensor *window_op(int kind, const ms_tensor *t, int k, int s, int64_t h, int64_t w)
{
    const char *fn = "ms_max_pool2d";
    if (!t)
        return NULL;
    ms_tensor *y;
    if (kind == WIN_GATHER) {
        int64_t c = t->shape[1];
        int64_t shape[6] = {t->shape[0], c, k, k, (h - k) / s + 1, (w - k) / s + 1}, st[6];
        window_strides(c, h, w, s, st);
        y = ms__strided_copy(fn, t, 6, shape, st, 0);
    } else {
        y = scatter(fn, t, k, s, h, w);
    }
    if (y && ms__needs_grad(t, NULL, NULL)) {
        int iarg[3] = {kind, k, s};
        y = ms__record(y, fn, bw_window, t, NULL, NULL, 0.0, iarg, 3);
        if (y) {
            y->node->larg[0] = h;
            y->node->larg[1] = w;
        }
    }
    return y;
}

ms_tensor *ms_max_pool2d(const ms_tensor *x, int kernel, int stride)
{
    const char *fn = "ms_max_pool2d";
    if (!ms__check(fn, x, "x") || !rank_is(fn, x, "x (N, C, H, W)", 4))
        return NULL;
    if (kernel < 1 || stride < 1) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: kernel %d and stride %d must be >= 1", fn, kernel,
                 stride);
        return NULL;
    }
    if (kernel > x->shape[2] || kernel > x->shape[3]) {
        char b[MS_SHAPE_BUF];
        ms__fail(MS_ERR_SHAPE, "%s: the %dx%d window does not fit x %s", fn, kernel, kernel,
                 ms__shape_str(b, sizeof b, x->ndim, x->shape));
        return NULL;
    }
    /* the windows are an intermediate: an internal scope frees them (the
     * graph, if any, keeps its own reference) */
    if (ms_scope_push() != MS_OK)
        return NULL;
    int axes[2] = {2, 3};
    ms_tensor *win = window_op(WIN_GATHER, x, kernel, stride, x->shape[2], x->shape[3]);
    ms_tensor *y = ms_retain(ms_max(win, 2, axes, false));
    ms_scope_pop();
    ms__scope_adopt(y);
    return y;
}

/* ------------------------------------------------------------ batch_norm */

ms_tensor *ms_batch_norm(const ms_tensor *x, const ms_tensor *gamma, const ms_tensor *beta,
                         double eps)
{
    const char *fn = "ms_batch_norm";
    if (!ms__check(fn, x, "x") || !ms__check(fn, gamma, "gamma") ||
        !ms__check(fn, beta, "beta") || !ms__same_dtype(fn, x, gamma) ||
        !ms__same_dtype(fn, x, beta))
        return NULL;
    char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
    if (x->ndim != 2 && x->ndim != 4) {
        ms__fail(MS_ERR_RANK, "%s: x must be (N, C) or (N, C, H, W), got shape %s", fn,
                 ms__shape_str(b1, sizeof b1, x->ndim, x->shape));
        return NULL;
    }
    const ms_tensor *gb[2] = {gamma, beta};
    for (int i = 0; i < 2; i++) {
        if (gb[i]->ndim != 1 || gb[i]->shape[0] != x->shape[1]) {
            ms__fail(MS_ERR_SHAPE, "%s: %s has shape %s, expected (%lld) for x %s", fn,
                     i ? "beta" : "gamma", ms__shape_str(b1, sizeof b1, gb[i]->ndim, gb[i]->shape),
                     (long long)x->shape[1], ms__shape_str(b2, sizeof b2, x->ndim, x->shape));
            return NULL;
        }
    }
    if (!(eps > 0.0)) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: eps %g must be > 0", fn, eps);
        return NULL;
    }
    if (ms_scope_push() != MS_OK)
        return NULL;
    int axes[3] = {0, 2, 3}, na = x->ndim == 4 ? 3 : 1;
    int64_t cshape[4] = {1, x->shape[1], 1, 1};
    ms_tensor *xc = ms_sub(x, ms_mean(x, na, axes, true));
    ms_tensor *var = ms_mean(ms_square(xc), na, axes, true);
    ms_tensor *xhat = ms_div(xc, ms_sqrt(ms_add_scalar(var, eps)));
    ms_tensor *y = ms_add(ms_mul(xhat, ms_reshape(gamma, x->ndim, cshape)),
                          ms_reshape(beta, x->ndim, cshape));
    ms_retain(y);
    ms_scope_pop();
    ms__scope_adopt(y);
    return y;
}

/* ------------------------------------------------- softmax_cross_entropy */

ms_tensor *ms_softmax_cross_entropy(const ms_tensor *logits, const ms_tensor *onehot)
{
    const char *fn = "ms_softmax_cross_entropy";
    if (!ms__check(fn, logits, "logits") || !ms__check(fn, onehot, "onehot") ||
        !ms__same_dtype(fn, logits, onehot))
        return NULL;
    if (!rank_is(fn, logits, "logits (N, K)", 2) || !rank_is(fn, onehot, "onehot (N, K)", 2))
        return NULL;
    if (logits->shape[0] != onehot->shape[0] || logits->shape[1] != onehot->shape[1] ||
        logits->shape[0] < 1 || logits->shape[1] < 1) {
        char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
        ms__fail(MS_ERR_SHAPE, "%s: logits %s and onehot %s must have one shape (N, K), N, K >= 1",
                 fn, ms__shape_str(b1, sizeof b1, 2, logits->shape),
                 ms__shape_str(b2, sizeof b2, 2, onehot->shape));
        return NULL;
    }
    if (ms_scope_push() != MS_OK)
        return NULL;
    ms_tensor *nll = ms_neg(ms_sum(ms_mul(onehot, ms_log_softmax(logits, 1)), 0, NULL, false));
    ms_tensor *y = ms_retain(ms_div_scalar(nll, (double)logits->shape[0]));
    ms_scope_pop();
    ms__scope_adopt(y);
    return y;
}
