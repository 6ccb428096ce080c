/* Neural-network layers (ms_conv2d, ms_max_pool2d, ms_batch_norm,
 * ms_softmax_cross_entropy): forward values against naive loops in double
 * written here, gradients and Hessian-vector products against central
 * finite differences in float64, float32 against float64, argument errors,
 * and the second-order meta-gradient of a tiny Conv4-like network.  Runs
 * once per backend (METASTEP_BACKEND). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "testutil.h"

/* As tests/test_autodiff.c: central differences in float64 with step EPS;
 * |analytic - numeric| <= ATOL + RTOL |numeric|. */
#define EPS 1e-6
#define ATOL 1e-6
#define RTOL 1e-5
#define F32_RTOL 1e-4

static void put(ms_tensor *t, int64_t i, double v)
{
    if (ms_tensor_dtype(t) == MS_F32)
        ((float *)ms_tensor_data(t))[i] = (float)v;
    else
        ((double *)ms_tensor_data(t))[i] = v;
}

static bool close_enough(double a, double n) { return fabs(a - n) <= ATOL + RTOL * fabs(n); }

static void assert_ok(ms_status st, const char *what)
{
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_msg(st == MS_OK, "%s failed: %s (%s)", what, ms_status_string(st),
                  msg ? msg : "no message");
}

static void assert_not_null(const void *p, const char *what)
{
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_msg(p != NULL, "%s returned NULL: %s", what, msg ? msg : "no message");
}

static ms_tensor *as_dtype(const ms_tensor *t, ms_dtype dt)
{
    ms_tensor *r = ms_zeros(dt, ms_tensor_ndim(t), ms_tensor_shape(t));
    for (int64_t i = 0; i < ms_tensor_numel(t); i++)
        put(r, i, at(t, i));
    return r;
}

/* ------------------------------------------------------------ the cases */

enum { OP_CONV, OP_POOL, OP_BN, OP_CE };

typedef struct ncase {
    const char *name;
    int op;
    int nd;            /* rank of x (BN: 2 or 4) */
    int64_t x[4];      /* x shape (CE: logits (N, K)) */
    int64_t w[4];      /* conv weights */
    bool bias;
    int stride, padding, kernel;
} ncase;

#define CONV(nm, X, W, B, S, P) \
    {.name = nm, .op = OP_CONV, .nd = 4, .x = X, .w = W, .bias = B, .stride = S, .padding = P}
#define POOL(nm, X, K, S) {.name = nm, .op = OP_POOL, .nd = 4, .x = X, .kernel = K, .stride = S}
#define SH(...) {__VA_ARGS__}

static const ncase cases[] = {
    CONV("conv 1x1x5x5 k3 s1 p0 bias", SH(1, 1, 5, 5), SH(1, 1, 3, 3), true, 1, 0),
    CONV("conv 2x3x6x5 k3x2 s1 p1", SH(2, 3, 6, 5), SH(4, 3, 3, 2), false, 1, 1),
    CONV("conv 2x2x7x7 k3 s2 p1 bias", SH(2, 2, 7, 7), SH(3, 2, 3, 3), true, 2, 1),
    CONV("conv 1x4x8x6 1x1 s1 p0 bias", SH(1, 4, 8, 6), SH(2, 4, 1, 1), true, 1, 0),
    CONV("conv 2x1x7x8 k2x3 s3 p2", SH(2, 1, 7, 8), SH(2, 1, 2, 3), false, 3, 2),
    CONV("conv 1x3x5x7 k5x2 s2 p0 bias", SH(1, 3, 5, 7), SH(1, 3, 5, 2), true, 2, 0),
    CONV("conv 3x2x4x4 k3 s1 p2 bias", SH(3, 2, 4, 4), SH(2, 2, 3, 3), true, 1, 2),
    CONV("conv 1x2x9x9 k4 s3 p1 (floor)", SH(1, 2, 9, 9), SH(3, 2, 4, 4), false, 3, 1),
    CONV("conv 2x1x3x3 1x1 s2 p0 bias", SH(2, 1, 3, 3), SH(1, 1, 1, 1), true, 2, 0),
    CONV("conv 1x1x2x2 k3 s1 p1 bias", SH(1, 1, 2, 2), SH(1, 1, 3, 3), true, 1, 1),
    CONV("conv 1x4x6x4 k2 s2 p0 bias", SH(1, 4, 6, 4), SH(4, 4, 2, 2), true, 2, 0),
    POOL("pool 1x1x4x4 k2 s2", SH(1, 1, 4, 4), 2, 2),
    POOL("pool 2x3x6x6 k3 s3", SH(2, 3, 6, 6), 3, 3),
    POOL("pool 1x2x7x7 k3 s2 (overlap)", SH(1, 2, 7, 7), 3, 2),
    POOL("pool 2x1x5x6 k2 s1 (overlap)", SH(2, 1, 5, 6), 2, 1),
    POOL("pool 1x2x8x5 k3 s1 (overlap)", SH(1, 2, 8, 5), 3, 1),
    POOL("pool 1x1x5x5 k2 s3 (gaps)", SH(1, 1, 5, 5), 2, 3),
    POOL("pool 2x2x4x6 k1 s1", SH(2, 2, 4, 6), 1, 1),
    POOL("pool 1x1x3x3 k3 s1 (one window)", SH(1, 1, 3, 3), 3, 1),
    POOL("pool 1x2x9x7 k4 s2 (overlap, floor)", SH(1, 2, 9, 7), 4, 2),
    POOL("pool 2x2x5x5 k2 s2 (floor)", SH(2, 2, 5, 5), 2, 2),
    {.name = "bn 5x3", .op = OP_BN, .nd = 2, .x = {5, 3}},
    {.name = "bn 4x2x3x3", .op = OP_BN, .nd = 4, .x = {4, 2, 3, 3}},
    {.name = "bn 2x4x1x1", .op = OP_BN, .nd = 4, .x = {2, 4, 1, 1}},
    {.name = "bn 3x1x2x5", .op = OP_BN, .nd = 4, .x = {3, 1, 2, 5}},
    {.name = "ce 4x5", .op = OP_CE, .nd = 2, .x = {4, 5}},
    {.name = "ce 1x3", .op = OP_CE, .nd = 2, .x = {1, 3}},
    {.name = "ce 3x7", .op = OP_CE, .nd = 2, .x = {3, 7}},
    {.name = "ce 2x1", .op = OP_CE, .nd = 2, .x = {2, 1}},
};
#define NCASES ((int)(sizeof cases / sizeof cases[0]))

#define BN_EPS 1e-3

static int nin_of(const ncase *c)
{
    switch (c->op) {
    case OP_CONV: return c->bias ? 3 : 2;
    case OP_POOL: return 1;
    case OP_BN: return 3;
    default: return 2;
    }
}

/* Shape of input i. */
static int in_shape(const ncase *c, int i, int64_t *s)
{
    if (i == 0 || (c->op == OP_CE)) {
        memcpy(s, c->x, sizeof c->x);
        return c->nd;
    }
    if (c->op == OP_CONV && i == 1) {
        memcpy(s, c->w, sizeof c->w);
        return 4;
    }
    s[0] = c->op == OP_CONV ? c->w[0] : c->x[1]; /* bias (O); gamma, beta (C) */
    return 1;
}

static ms_tensor *run(const ncase *c, ms_tensor *const *x)
{
    switch (c->op) {
    case OP_CONV: return ms_conv2d(x[0], x[1], c->bias ? x[2] : NULL, c->stride, c->padding);
    case OP_POOL: return ms_max_pool2d(x[0], c->kernel, c->stride);
    case OP_BN: return ms_batch_norm(x[0], x[1], x[2], BN_EPS);
    default: return ms_softmax_cross_entropy(x[0], x[1]);
    }
}

/* Input i of case ci in float64, deterministic; gamma around 1, soft labels
 * in [0, 1]. */
static ms_tensor *make_input(int ci, int i)
{
    const ncase *c = &cases[ci];
    int64_t s[4];
    int nd = in_shape(c, i, s);
    double lo = -1, hi = 1;
    if ((c->op == OP_BN && i == 1) || (c->op == OP_CE && i == 1)) {
        lo = c->op == OP_BN ? 0.5 : 0.0;
        hi = 1.5;
    }
    return ms_random_uniform(MS_F64, nd, s, lo, hi, 100u + 10u * (uint64_t)ci + (uint64_t)i);
}

/* ------------------------------------------------------ naive references */

static double xat(const double *x, const int64_t *s, int64_t a, int64_t b, int64_t c, int64_t d)
{
    return x[((a * s[1] + b) * s[2] + c) * s[3] + d];
}

/* The expected output of case c for float64 inputs in[] (row-major). */
static double *naive(const ncase *c, const double *const *in, int *nd, int64_t *os)
{
    const int64_t *xs = c->x;
    double *y = NULL;
    if (c->op == OP_CONV) {
        const int64_t *ws = c->w;
        int64_t s = c->stride, p = c->padding;
        int64_t oh = (xs[2] + 2 * p - ws[2]) / s + 1, ow = (xs[3] + 2 * p - ws[3]) / s + 1;
        int64_t sh[4] = {xs[0], ws[0], oh, ow};
        memcpy(os, sh, sizeof sh);
        *nd = 4;
        y = calloc((size_t)(xs[0] * ws[0] * oh * ow), sizeof *y);
        for (int64_t n = 0; n < xs[0]; n++)
            for (int64_t o = 0; o < ws[0]; o++)
                for (int64_t i = 0; i < oh; i++)
                    for (int64_t j = 0; j < ow; j++) {
                        double acc = c->bias ? in[2][o] : 0.0;
                        for (int64_t ch = 0; ch < xs[1]; ch++)
                            for (int64_t a = 0; a < ws[2]; a++)
                                for (int64_t b = 0; b < ws[3]; b++) {
                                    int64_t r = i * s + a - p, q = j * s + b - p;
                                    if (r >= 0 && r < xs[2] && q >= 0 && q < xs[3])
                                        acc += xat(in[0], xs, n, ch, r, q) *
                                               xat(in[1], ws, o, ch, a, b);
                                }
                        y[((n * ws[0] + o) * oh + i) * ow + j] = acc;
                    }
    } else if (c->op == OP_POOL) {
        int64_t k = c->kernel, s = c->stride;
        int64_t oh = (xs[2] - k) / s + 1, ow = (xs[3] - k) / s + 1;
        int64_t sh[4] = {xs[0], xs[1], oh, ow};
        memcpy(os, sh, sizeof sh);
        *nd = 4;
        y = calloc((size_t)(xs[0] * xs[1] * oh * ow), sizeof *y);
        for (int64_t n = 0; n < xs[0]; n++)
            for (int64_t ch = 0; ch < xs[1]; ch++)
                for (int64_t i = 0; i < oh; i++)
                    for (int64_t j = 0; j < ow; j++) {
                        double m = -INFINITY;
                        for (int64_t a = 0; a < k; a++)
                            for (int64_t b = 0; b < k; b++) {
                                double v = xat(in[0], xs, n, ch, i * s + a, j * s + b);
                                m = isnan(v) || isnan(m) ? NAN : fmax(m, v);
                            }
                        y[((n * xs[1] + ch) * oh + i) * ow + j] = m;
                    }
    } else if (c->op == OP_BN) {
        int64_t N = xs[0], C = xs[1], HW = c->nd == 4 ? xs[2] * xs[3] : 1;
        memcpy(os, xs, sizeof c->x);
        *nd = c->nd;
        y = calloc((size_t)(N * C * HW), sizeof *y);
        for (int64_t ch = 0; ch < C; ch++) {
            double mean = 0, var = 0;
            for (int64_t n = 0; n < N; n++)
                for (int64_t k = 0; k < HW; k++)
                    mean += in[0][(n * C + ch) * HW + k];
            mean /= (double)(N * HW);
            for (int64_t n = 0; n < N; n++)
                for (int64_t k = 0; k < HW; k++) {
                    double d = in[0][(n * C + ch) * HW + k] - mean;
                    var += d * d;
                }
            var /= (double)(N * HW);
            for (int64_t n = 0; n < N; n++)
                for (int64_t k = 0; k < HW; k++) {
                    int64_t e = (n * C + ch) * HW + k;
                    y[e] = (in[0][e] - mean) / sqrt(var + BN_EPS) * in[1][ch] + in[2][ch];
                }
        }
    } else {
        int64_t N = xs[0], K = xs[1];
        *nd = 0;
        y = calloc(1, sizeof *y);
        for (int64_t n = 0; n < N; n++) {
            double m = -INFINITY, z = 0;
            for (int64_t k = 0; k < K; k++)
                m = fmax(m, in[0][n * K + k]);
            for (int64_t k = 0; k < K; k++)
                z += exp(in[0][n * K + k] - m);
            for (int64_t k = 0; k < K; k++)
                y[0] -= in[1][n * K + k] * (in[0][n * K + k] - m - log(z));
        }
        y[0] /= (double)N;
    }
    return y;
}

/* ------------------------------------------------------------ forward */

static void check_forward(int ci, ms_dtype dt)
{
    const ncase *c = &cases[ci];
    int nin = nin_of(c);
    ms_tensor *x[3];
    const double *in[3];
    for (int i = 0; i < nin; i++) {
        ms_tensor *x64 = make_input(ci, i);
        in[i] = ms_tensor_data(x64);
        x[i] = dt == MS_F64 ? x64 : as_dtype(x64, dt);
    }
    ms_tensor *y = run(c, x);
    assert_not_null(y, c->name);
    ck_assert_int_eq(ms_tensor_dtype(y), dt);
    int nd;
    int64_t os[4];
    double *want = naive(c, in, &nd, os);
    ck_assert_int_eq(ms_tensor_ndim(y), nd);
    int64_t numel = 1;
    for (int i = 0; i < nd; i++) {
        ck_assert_int_eq(ms_tensor_shape(y)[i], os[i]);
        numel *= os[i];
    }
    ck_assert_int_eq(ms_tensor_numel(y), numel);
    double tol = dt == MS_F64 ? 1e-12 : 1e-5;
    for (int64_t j = 0; j < numel; j++)
        ck_assert_msg(fabs(at(y, j) - want[j]) <= tol * fmax(1.0, fabs(want[j])),
                      "%s (%s): y[%lld] = %.15g, expected %.15g", c->name,
                      dt == MS_F64 ? "float64" : "float32", (long long)j, at(y, j), want[j]);
    free(want);
}

START_TEST(forward)
{
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    check_forward(_i, MS_F64);
    check_forward(_i, MS_F32);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
}
END_TEST

/* ------------------------------------------------ gradients, as test_autodiff */

static const char *const xkeys[3] = {"x0", "x1", "x2"};

typedef struct prepared {
    ms_tensor *x[3], *w;
    ms_container *vars;
} prepared;

static ms_tensor *loss_of(const ncase *c, ms_tensor *const *x, const ms_tensor *w)
{
    return ms_sum(ms_mul(run(c, x), w), 0, NULL, false);
}

static void prepare(int ci, ms_dtype dt, prepared *p)
{
    const ncase *c = &cases[ci];
    for (int i = 0; i < nin_of(c); i++) {
        ms_tensor *x64 = make_input(ci, i);
        p->x[i] = dt == MS_F64 ? x64 : as_dtype(x64, dt);
        assert_not_null(p->x[i], c->name);
    }
    ms_no_grad_push();
    ms_tensor *y = run(c, p->x);
    ms_no_grad_pop();
    assert_not_null(y, c->name);
    ms_tensor *w64 = ms_random_uniform(MS_F64, ms_tensor_ndim(y), ms_tensor_shape(y), -1, 1,
                                       5000u + (uint64_t)ci);
    p->w = dt == MS_F64 ? w64 : as_dtype(w64, dt);
    p->vars = ms_container_new();
    for (int i = 0; i < nin_of(c); i++)
        assert_ok(ms_container_set(p->vars, xkeys[i], ms_variable(p->x[i])), "set");
}

static ms_container *grad_at(const ncase *c, const ms_container *vars, const ms_tensor *w,
                             bool create_graph)
{
    ms_tensor *xv[3];
    for (int i = 0; i < nin_of(c); i++)
        xv[i] = ms_container_at(vars, i);
    ms_tensor *l = loss_of(c, xv, w);
    assert_not_null(l, c->name);
    ms_container *g = NULL;
    assert_ok(ms_grad(l, vars, create_graph, &g), c->name);
    return g;
}

START_TEST(gradcheck)
{
    const ncase *c = &cases[_i];
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    prepared p;
    prepare(_i, MS_F64, &p);
    ms_container *g = grad_at(c, p.vars, p.w, false);
    for (int i = 0; i < nin_of(c); i++) {
        ms_tensor *gi = ms_container_get(g, xkeys[i]);
        ck_assert_int_eq(ms_tensor_numel(gi), ms_tensor_numel(p.x[i]));
        for (int64_t j = 0; j < ms_tensor_numel(p.x[i]); j++) {
            double x0 = at(p.x[i], j), lp, lm;
            ms_scope_push();
            put(p.x[i], j, x0 + EPS);
            lp = ms_tensor_item(loss_of(c, p.x, p.w));
            put(p.x[i], j, x0 - EPS);
            lm = ms_tensor_item(loss_of(c, p.x, p.w));
            put(p.x[i], j, x0);
            ms_scope_pop();
            double num = (lp - lm) / (2 * EPS), ana = at(gi, j);
            ck_assert_msg(close_enough(ana, num),
                          "%s: dL/dx%d[%lld]: analytic %.12g, numeric %.12g", c->name,
                          i, (long long)j, ana, num);
        }
    }
    ms_container_release(g);
    ms_container_release(p.vars);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
}
END_TEST

static ms_container *shifted_vars(const ncase *c, const prepared *p, const ms_container *dir,
                                  double h)
{
    ms_container *v = ms_container_new();
    for (int i = 0; i < nin_of(c); i++)
        ms_container_set(v, xkeys[i],
                         ms_variable(ms_add(p->x[i], ms_mul_scalar(ms_container_at(dir, i), h))));
    return v;
}

/* H v of L = sum(op(x) w) over all inputs jointly, against
 * (g(x + eps v) - g(x - eps v)) / 2 eps. */
START_TEST(gradgradcheck)
{
    const ncase *c = &cases[_i];
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    prepared p;
    prepare(_i, MS_F64, &p);
    ms_container *dir = ms_container_new();
    for (int i = 0; i < nin_of(c); i++)
        ms_container_set(dir, xkeys[i],
                         ms_random_uniform(MS_F64, ms_tensor_ndim(p.x[i]), ms_tensor_shape(p.x[i]),
                                           -1, 1, 9000u + 10u * (uint64_t)_i + (uint64_t)i));
    ms_container *g = grad_at(c, p.vars, p.w, true);
    ms_tensor *s = ms_scalar(MS_F64, 0.0);
    for (int i = 0; i < nin_of(c); i++)
        s = ms_add(s, ms_sum(ms_mul(ms_container_at(g, i), ms_container_at(dir, i)), 0, NULL,
                             false));
    assert_not_null(s, c->name);
    ms_container *hv = NULL;
    assert_ok(ms_grad(s, p.vars, false, &hv), c->name);
    ms_container *vp = shifted_vars(c, &p, dir, EPS), *vm = shifted_vars(c, &p, dir, -EPS);
    ms_container *gp = grad_at(c, vp, p.w, false), *gm = grad_at(c, vm, p.w, false);
    for (int i = 0; i < nin_of(c); i++) {
        ms_tensor *h = ms_container_get(hv, xkeys[i]);
        ck_assert_int_eq(ms_tensor_numel(h), ms_tensor_numel(p.x[i]));
        for (int64_t j = 0; j < ms_tensor_numel(p.x[i]); j++) {
            double num = (at(ms_container_at(gp, i), j) - at(ms_container_at(gm, i), j)) /
                         (2 * EPS);
            double ana = at(h, j);
            ck_assert_msg(close_enough(ana, num),
                          "%s: (Hv)_x%d[%lld]: analytic %.12g, numeric %.12g", c->name,
                          i, (long long)j, ana, num);
        }
    }
    ms_container_release(gp);
    ms_container_release(gm);
    ms_container_release(vp);
    ms_container_release(vm);
    ms_container_release(hv);
    ms_container_release(g);
    ms_container_release(dir);
    ms_container_release(p.vars);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
}
END_TEST

/* Gradients in float32 on the active backend against float64 on ref. */
START_TEST(f32_matches_f64)
{
    const ncase *c = &cases[_i];
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    assert_ok(metastep_set_backend("ref"), "metastep_set_backend(ref)");
    prepared p64;
    prepare(_i, MS_F64, &p64);
    ms_container *g64 = grad_at(c, p64.vars, p64.w, false);
    assert_ok(metastep_unset_backend(), "metastep_unset_backend");
    prepared p32;
    prepare(_i, MS_F32, &p32);
    ms_container *g32 = grad_at(c, p32.vars, p32.w, false);
    for (int i = 0; i < nin_of(c); i++) {
        const ms_tensor *a = ms_container_at(g32, i), *b = ms_container_at(g64, i);
        ck_assert_int_eq(ms_tensor_dtype(a), MS_F32);
        ck_assert_int_eq(ms_tensor_numel(a), ms_tensor_numel(b));
        double scale = 1.0, err = 0.0;
        for (int64_t j = 0; j < ms_tensor_numel(b); j++) {
            scale = fmax(scale, fabs(at(b, j)));
            err = fmax(err, fabs(at(a, j) - at(b, j)));
        }
        ck_assert_msg(err <= F32_RTOL * scale, "%s: x%d: float32 differs from float64 by %g "
                      "(scale %g)", c->name, i, err, scale);
    }
    ms_container_release(g32);
    ms_container_release(g64);
    ms_container_release(p32.vars);
    ms_container_release(p64.vars);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
}
END_TEST

/* ------------------------------------------------------------ max-pool edges */

static ms_tensor *from64(int nd, const int64_t *shape, const double *d)
{
    return ms_tensor_from_data(MS_F64, nd, shape, d);
}

START_TEST(pool_nonfinite_and_ties)
{
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    const int64_t s[4] = {1, 1, 2, 6};
    /* windows (k 2, s 2): {1, NaN, 0, 2}, {inf, 3, 4, 5}, {-inf, -inf, -inf, -inf} */
    const double d[12] = {1, NAN, INFINITY, 3, -INFINITY, -INFINITY,
                          0, 2, 4, 5, -INFINITY, -INFINITY};
    ms_dtype dts[2] = {MS_F64, MS_F32};
    for (int k = 0; k < 2; k++) {
        ms_tensor *x = as_dtype(from64(4, s, d), dts[k]);
        ms_tensor *y = ms_max_pool2d(x, 2, 2);
        assert_not_null(y, "pool");
        ck_assert_int_eq(ms_tensor_numel(y), 3);
        ck_assert_msg(isnan(at(y, 0)), "NaN window gives %g", at(y, 0));
        ck_assert_msg(at(y, 1) == INFINITY, "inf window gives %g", at(y, 1));
        ck_assert_msg(at(y, 2) == -INFINITY, "-inf window gives %g", at(y, 2));
    }
    /* ties: the gradient is split evenly, as ms_max; overlapping windows add */
    const int64_t s2[4] = {1, 1, 3, 3};
    const double t[9] = {1, 1, 0, 1, 1, 0, 0, 0, -1};
    ms_container *v = ms_container_new();
    ms_container_set(v, "x", ms_variable(from64(4, s2, t)));
    ms_tensor *y = ms_max_pool2d(ms_container_get(v, "x"), 2, 1); /* {1, 1, 1, 1} */
    ms_container *g = NULL;
    assert_ok(ms_grad(ms_sum(y, 0, NULL, false), v, false, &g), "grad");
    /* window (0,0): four ties of 1 -> 1/4 each; (0,1): x01, x11 tie -> 1/2; (1,0): x10, x11
     * -> 1/2; (1,1): x11 alone -> 1 */
    const double want[9] = {0.25, 0.75, 0, 0.75, 2.25, 0, 0, 0, 0};
    ms_tensor *gx = ms_container_get(g, "x");
    for (int i = 0; i < 9; i++)
        ck_assert_msg(fabs(at(gx, i) - want[i]) < 1e-15, "tie gradient [%d] = %g, expected %g",
                      i, at(gx, i), want[i]);
    ms_container_release(g);
    ms_container_release(v);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
}
END_TEST

/* A gradient with respect to w alone runs no backward-data kernel, and the
 * bias gradient is the sum of gy over N, H, W. */
START_TEST(conv_partial_wrt)
{
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    const int64_t xs[4] = {2, 1, 3, 3}, ws[4] = {2, 1, 2, 2}, bs[1] = {2};
    ms_tensor *x = ms_random_uniform(MS_F64, 4, xs, -1, 1, 1);
    ms_container *v = ms_container_new();
    ms_container_set(v, "w", ms_variable(ms_random_uniform(MS_F64, 4, ws, -1, 1, 2)));
    ms_container_set(v, "b", ms_variable(ms_zeros(MS_F64, 1, bs)));
    ms_tensor *y = ms_conv2d(x, ms_container_get(v, "w"), ms_container_get(v, "b"), 1, 0);
    ms_container *g = NULL;
    assert_ok(ms_grad(ms_sum(y, 0, NULL, false), v, false, &g), "grad");
    ms_tensor *gb = ms_container_get(g, "b");
    ck_assert_int_eq(ms_tensor_ndim(gb), 1);
    ck_assert(at(gb, 0) == 8.0 && at(gb, 1) == 8.0); /* N * OH * OW */
    ms_tensor *gw = ms_container_get(g, "w");
    /* d sum(y) / dw[o,0,p,q] = sum over n and the 2x2 windows of x[n,0,i+p,j+q] */
    for (int p = 0; p < 2; p++)
        for (int q = 0; q < 2; q++) {
            double want = 0;
            for (int n = 0; n < 2; n++)
                for (int i = 0; i < 2; i++)
                    for (int j = 0; j < 2; j++)
                        want += at(x, n * 9 + (i + p) * 3 + j + q);
            ck_assert(fabs(at(gw, p * 2 + q) - want) < 1e-12);
            ck_assert(fabs(at(gw, 4 + p * 2 + q) - want) < 1e-12);
        }
    ms_container_release(g);
    ms_container_release(v);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
}
END_TEST

/* ------------------------------------------------------------ errors */

static void expect_err(ms_tensor *y, ms_status st, const char *what)
{
    const char *msg = NULL;
    ms_status got = ms_last_error(&msg);
    ck_assert_msg(y == NULL, "%s: expected NULL", what);
    ck_assert_msg(got == st, "%s: expected %s, got %s (%s)", what, ms_status_string(st),
                  ms_status_string(got), msg ? msg : "no message");
    ck_assert_msg(st == MS_OK || (msg && *msg), "%s: no message", what);
    ms_clear_error();
}

START_TEST(errors)
{
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    const int64_t s4[4] = {2, 3, 5, 5}, sw[4] = {4, 3, 3, 3}, sw2[4] = {4, 2, 3, 3},
                  sbig[4] = {4, 3, 6, 2}, s3[3] = {3, 5, 5}, s1[1] = {4}, s1b[1] = {3},
                  s2[2] = {4, 3}, sp[4] = {1, 1, 3, 4};
    ms_tensor *x = ms_zeros(MS_F64, 4, s4), *w = ms_zeros(MS_F64, 4, sw);
    ms_tensor *x32 = ms_zeros(MS_F32, 4, s4), *b = ms_zeros(MS_F64, 1, s1);
    /* conv2d */
    expect_err(ms_conv2d(NULL, w, NULL, 1, 0), MS_ERR_NULL_ARG, "conv x NULL");
    expect_err(ms_conv2d(x, NULL, b, 1, 0), MS_ERR_NULL_ARG, "conv w NULL");
    expect_err(ms_conv2d(ms_zeros(MS_F64, 3, s3), w, NULL, 1, 0), MS_ERR_RANK, "conv x rank 3");
    expect_err(ms_conv2d(x, ms_zeros(MS_F64, 3, s3), NULL, 1, 0), MS_ERR_RANK, "conv w rank 3");
    expect_err(ms_conv2d(x, ms_zeros(MS_F64, 4, sw2), NULL, 1, 0), MS_ERR_SHAPE, "conv channels");
    expect_err(ms_conv2d(x, w, ms_zeros(MS_F64, 1, s1b), 1, 0), MS_ERR_SHAPE, "conv bias (3)");
    expect_err(ms_conv2d(x, w, ms_zeros(MS_F64, 2, s2), 1, 0), MS_ERR_SHAPE, "conv bias 2-D");
    expect_err(ms_conv2d(x, w, NULL, 0, 0), MS_ERR_INVALID_ARG, "conv stride 0");
    expect_err(ms_conv2d(x, w, NULL, -2, 0), MS_ERR_INVALID_ARG, "conv stride -2");
    expect_err(ms_conv2d(x, w, NULL, 1, -1), MS_ERR_INVALID_ARG, "conv padding -1");
    expect_err(ms_conv2d(x, ms_zeros(MS_F64, 4, sbig), NULL, 1, 0), MS_ERR_SHAPE,
               "conv window too tall");
    ck_assert_ptr_nonnull(ms_conv2d(x, ms_zeros(MS_F64, 4, sbig), NULL, 1, 1)); /* fits padded */
    expect_err(ms_conv2d(x32, w, NULL, 1, 0), MS_ERR_DTYPE, "conv dtype x");
    expect_err(ms_conv2d(x, w, ms_zeros(MS_F32, 1, s1), 1, 0), MS_ERR_DTYPE, "conv dtype bias");
    /* max_pool2d */
    expect_err(ms_max_pool2d(NULL, 2, 2), MS_ERR_NULL_ARG, "pool NULL");
    expect_err(ms_max_pool2d(ms_zeros(MS_F64, 3, s3), 2, 2), MS_ERR_RANK, "pool rank 3");
    expect_err(ms_max_pool2d(x, 0, 2), MS_ERR_INVALID_ARG, "pool kernel 0");
    expect_err(ms_max_pool2d(x, 2, 0), MS_ERR_INVALID_ARG, "pool stride 0");
    expect_err(ms_max_pool2d(ms_zeros(MS_F64, 4, sp), 4, 1), MS_ERR_SHAPE, "pool too big");
    ck_assert_ptr_nonnull(ms_max_pool2d(ms_zeros(MS_F64, 4, sp), 3, 5));
    /* batch_norm */
    ms_tensor *gm = ms_ones(MS_F64, 1, s1b), *bt = ms_zeros(MS_F64, 1, s1b);
    expect_err(ms_batch_norm(NULL, gm, bt, 1e-5), MS_ERR_NULL_ARG, "bn x NULL");
    expect_err(ms_batch_norm(x, NULL, bt, 1e-5), MS_ERR_NULL_ARG, "bn gamma NULL");
    expect_err(ms_batch_norm(x, gm, NULL, 1e-5), MS_ERR_NULL_ARG, "bn beta NULL");
    expect_err(ms_batch_norm(ms_zeros(MS_F64, 3, s3), gm, bt, 1e-5), MS_ERR_RANK, "bn rank 3");
    expect_err(ms_batch_norm(x, b, bt, 1e-5), MS_ERR_SHAPE, "bn gamma (4)");
    expect_err(ms_batch_norm(x, gm, b, 1e-5), MS_ERR_SHAPE, "bn beta (4)");
    expect_err(ms_batch_norm(x, gm, bt, 0.0), MS_ERR_INVALID_ARG, "bn eps 0");
    expect_err(ms_batch_norm(x, gm, bt, -1.0), MS_ERR_INVALID_ARG, "bn eps -1");
    expect_err(ms_batch_norm(x, gm, bt, NAN), MS_ERR_INVALID_ARG, "bn eps NaN");
    expect_err(ms_batch_norm(x32, gm, bt, 1e-5), MS_ERR_DTYPE, "bn dtype");
    ck_assert_ptr_nonnull(ms_batch_norm(ms_zeros(MS_F64, 2, s2), ms_ones(MS_F64, 1, s1b),
                                        ms_zeros(MS_F64, 1, s1b), 1e-5));
    /* softmax_cross_entropy */
    const int64_t e0[2] = {0, 3}, e1[2] = {4, 0}, s2b[2] = {4, 4};
    ms_tensor *lg = ms_zeros(MS_F64, 2, s2);
    expect_err(ms_softmax_cross_entropy(NULL, lg), MS_ERR_NULL_ARG, "ce logits NULL");
    expect_err(ms_softmax_cross_entropy(lg, NULL), MS_ERR_NULL_ARG, "ce onehot NULL");
    expect_err(ms_softmax_cross_entropy(x, x), MS_ERR_RANK, "ce rank 4");
    expect_err(ms_softmax_cross_entropy(b, b), MS_ERR_RANK, "ce rank 1");
    expect_err(ms_softmax_cross_entropy(lg, ms_zeros(MS_F64, 2, s2b)), MS_ERR_SHAPE, "ce shapes");
    expect_err(ms_softmax_cross_entropy(ms_zeros(MS_F64, 2, e0), ms_zeros(MS_F64, 2, e0)),
               MS_ERR_SHAPE, "ce N = 0");
    expect_err(ms_softmax_cross_entropy(ms_zeros(MS_F64, 2, e1), ms_zeros(MS_F64, 2, e1)),
               MS_ERR_SHAPE, "ce K = 0");
    expect_err(ms_softmax_cross_entropy(lg, ms_zeros(MS_F32, 2, s2)), MS_ERR_DTYPE, "ce dtype");
    ms_tensor *ce = ms_softmax_cross_entropy(lg, ms_ones(MS_F64, 2, s2));
    assert_not_null(ce, "ce");
    ck_assert_int_eq(ms_tensor_ndim(ce), 0);
    ck_assert(fabs(ms_tensor_item(ce) - 3 * log(3.0)) < 1e-12);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
}
END_TEST

/* ------------------------------------------------------------ Conv4-like MAML */

/* conv(3x3, pad 1)-bn-relu-pool(2) twice, a linear head, cross-entropy */
static const char *const pkeys[10] = {"w1", "b1", "g1", "be1", "w2", "b2", "g2", "be2", "W", "b"};
static const int64_t pshapes[10][4] = {{3, 2, 3, 3}, {3}, {3}, {3}, {3, 3, 3, 3}, {3},
                                       {3}, {3}, {12, 5}, {5}};
static const int pnd[10] = {4, 1, 1, 1, 4, 1, 1, 1, 2, 1};
#define NET_N 4
#define INNER_LR 0.3

typedef struct batch {
    ms_tensor *x, *y;
} batch;

static ms_tensor *net_loss(const ms_container *p, const batch *d)
{
#define P(k) ms_container_get(p, k)
    ms_tensor *h = ms_relu(ms_batch_norm(ms_conv2d(d->x, P("w1"), P("b1"), 1, 1), P("g1"),
                                         P("be1"), 1e-5));
    h = ms_max_pool2d(h, 2, 2);
    h = ms_relu(ms_batch_norm(ms_conv2d(h, P("w2"), P("b2"), 1, 1), P("g2"), P("be2"), 1e-5));
    h = ms_max_pool2d(h, 2, 2);
    const int64_t flat[2] = {NET_N, 12};
    ms_tensor *logits = ms_add(ms_matmul(ms_reshape(h, 2, flat), P("W")), P("b"));
    return ms_softmax_cross_entropy(logits, d->y);
#undef P
}

static batch net_batch(uint64_t seed)
{
    const int64_t xs[4] = {NET_N, 2, 8, 8}, ys[2] = {NET_N, 5};
    batch d = {ms_random_uniform(MS_F64, 4, xs, -1, 1, seed), ms_zeros(MS_F64, 2, ys)};
    for (int i = 0; i < NET_N; i++)
        put(d.y, i * 5 + (i * 3 + (int)seed) % 5, 1.0);
    return d;
}

/* The query loss after one SGD step on the support loss; with create_graph
 * the step is differentiable (second-order MAML). */
static ms_tensor *meta_loss(const ms_container *p, const batch *sup, const batch *qry,
                            bool create_graph)
{
    ms_container *g = NULL;
    assert_ok(ms_grad(net_loss(p, sup), p, create_graph, &g), "inner grad");
    ms_container *step = ms_container_mul_scalar(g, INNER_LR);
    ms_container *fast = ms_container_sub(p, step);
    ms_tensor *l = net_loss(fast, qry);
    ms_container_release(fast);
    ms_container_release(step);
    ms_container_release(g);
    return l;
}

static ms_container *net_params(const ms_container *dir, double h, uint64_t seed)
{
    ms_container *p = ms_container_new();
    for (int k = 0; k < 10; k++) {
        ms_tensor *t = ms_random_uniform(MS_F64, pnd[k], pshapes[k], -0.5, 0.5,
                                         seed + (uint64_t)k);
        if (k == 2 || k == 6)
            t = ms_add_scalar(t, 1.0); /* gamma around 1 */
        if (dir)
            t = ms_add(t, ms_mul_scalar(ms_container_at(dir, k), h));
        ms_container_set(p, pkeys[k], ms_variable(t));
    }
    return p;
}

START_TEST(conv4_second_order_maml)
{
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    batch sup = net_batch(11), qry = net_batch(12);
    ms_container *p = net_params(NULL, 0, 40);
    ms_container *mg = NULL, *fo = NULL;
    assert_ok(ms_grad(meta_loss(p, &sup, &qry, true), p, false, &mg), "meta grad");
    assert_ok(ms_grad(meta_loss(p, &sup, &qry, false), p, false, &fo), "first-order grad");
    double second_order_part = 0;
    /* per parameter: the directional derivative along a random direction
     * confined to it, against central differences of the meta loss */
    for (int k = 0; k < 10; k++) {
        ms_scope_push();
        ms_container *dir = ms_container_new();
        for (int j = 0; j < 10; j++) {
            uint64_t seed = 77u + (uint64_t)j;
            ms_container_set(dir, pkeys[j],
                             j == k ? ms_random_uniform(MS_F64, pnd[j], pshapes[j], -1, 1, seed)
                                    : ms_zeros(MS_F64, pnd[j], pshapes[j]));
        }
        ms_container *pp = net_params(dir, EPS, 40), *pm = net_params(dir, -EPS, 40);
        double lp = ms_tensor_item(meta_loss(pp, &sup, &qry, false));
        double lm = ms_tensor_item(meta_loss(pm, &sup, &qry, false));
        double num = (lp - lm) / (2 * EPS), ana = 0, fon = 0;
        const ms_tensor *v = ms_container_at(dir, k), *g = ms_container_get(mg, pkeys[k]),
                        *f = ms_container_get(fo, pkeys[k]);
        for (int64_t i = 0; i < ms_tensor_numel(v); i++) {
            ana += at(g, i) * at(v, i);
            fon += at(f, i) * at(v, i);
        }
        second_order_part = fmax(second_order_part, fabs(ana - fon));
        ck_assert_msg(close_enough(ana, num), "%s: meta-gradient along v %.12g, numeric %.12g",
                      pkeys[k], ana, num);
        ms_container_release(pp);
        ms_container_release(pm);
        ms_container_release(dir);
        ms_scope_pop();
    }
    /* the Hessian term matters: first-order MAML would not pass */
    ck_assert_msg(second_order_part > 1e-4, "second-order part only %g", second_order_part);
    ms_container_release(fo);
    ms_container_release(mg);
    ms_container_release(p);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("nn");
    TCase *tc = tcase_create("forward");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_add_loop_test(tc, forward, 0, NCASES);
    suite_add_tcase(s, tc);

    tc = tcase_create("gradcheck");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_add_loop_test(tc, gradcheck, 0, NCASES);
    suite_add_tcase(s, tc);

    tc = tcase_create("gradgradcheck");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_add_loop_test(tc, gradgradcheck, 0, NCASES);
    suite_add_tcase(s, tc);

    tc = tcase_create("float32");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_add_loop_test(tc, f32_matches_f64, 0, NCASES);
    suite_add_tcase(s, tc);

    tc = tcase_create("semantics");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_add_test(tc, pool_nonfinite_and_ties);
    tcase_add_test(tc, conv_partial_wrt);
    tcase_add_test(tc, errors);
    suite_add_tcase(s, tc);

    tc = tcase_create("maml");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, conv4_second_order_maml);
    suite_add_tcase(s, tc);

    return run_suite(s);
}
