/* Autodiff: every differentiable op's gradient and second derivative against
 * central finite differences in float64, ms_grad's semantics, float32 against
 * float64, and memory stability of long training loops.  Runs once per
 * backend (METASTEP_BACKEND). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metastep/metastep.h"
#include "testutil.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* Central differences in float64 with step EPS.  The truncation error is
 * O(EPS^2 f''') ~ 1e-12 and the rounding error ~ 1e-16 |L| / EPS ~ 1e-9 for
 * the small losses used here, so an analytic value passes when
 *     |analytic - numeric| <= ATOL + RTOL * |numeric|
 * with ATOL = 1e-6 and RTOL = 1e-5 (first and second derivatives alike). */
#define EPS 1e-6
#define ATOL 1e-6
#define RTOL 1e-5
/* float32 against float64: ||g32 - g64||_inf <= F32_RTOL * max(||g64||_inf, 1). */
#define F32_RTOL 1e-4

/* ------------------------------------------------------------ helpers */

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

static ms_tensor *from64(int nd, const int64_t *shape, const double *d)
{
    return ms_tensor_from_data(MS_F64, nd, shape, d);
}

/* A copy of t converted to dtype dt. */
static ms_tensor *as_dtype(const ms_tensor *t, ms_dtype dt)
{
    ms_tensor *r = ms_zeros(dt, ms_tensor_ndim(t), ms_tensor_shape(t));
    for (int64_t i = 0; i < ms_tensor_numel(t); i++)
        put(r, i, at(t, i));
    return r;
}

static void setup(void) { ms_clear_error(); }
/* ------------------------------------------------------------ op cases */

typedef struct gcase gcase;
typedef ms_tensor *(*op_fn)(ms_tensor *const *x, const gcase *c);

struct gcase {
    const char *name;
    op_fn fn;
    int nin;
    int nd[3];
    int64_t sh[3][4];
    double lo[3], hi[3]; /* input range; [-1, 1] when both are 0 */
    int away;            /* bit i: input i gets random signs, magnitudes in [lo, hi] */
    double s;            /* scalar argument */
    int na;              /* axes / perm / other integer arguments */
    int ax[4];
    bool keep;
};

#define U1(op)                                                                             \
    static ms_tensor *f_##op(ms_tensor *const *x, const gcase *c)                          \
    {                                                                                      \
        (void)c;                                                                           \
        return ms_##op(x[0]);                                                              \
    }
#define B2(op)                                                                             \
    static ms_tensor *f_##op(ms_tensor *const *x, const gcase *c)                          \
    {                                                                                      \
        (void)c;                                                                           \
        return ms_##op(x[0], x[1]);                                                        \
    }
#define S1(op)                                                                             \
    static ms_tensor *f_##op(ms_tensor *const *x, const gcase *c) { return ms_##op(x[0], c->s); }
#define R1(op)                                                                             \
    static ms_tensor *f_##op(ms_tensor *const *x, const gcase *c)                          \
    {                                                                                      \
        return ms_##op(x[0], c->na, c->ax, c->keep);                                       \
    }

U1(neg) U1(abs) U1(exp) U1(log) U1(sqrt) U1(square) U1(reciprocal) U1(tanh) U1(sigmoid)
U1(relu) U1(sin) U1(cos) U1(transpose)
B2(add) B2(sub) B2(mul) B2(div) B2(pow) B2(maximum) B2(minimum) B2(matmul)
S1(add_scalar) S1(sub_scalar) S1(rsub_scalar) S1(mul_scalar) S1(div_scalar)
S1(rdiv_scalar) S1(pow_scalar) S1(maximum_scalar) S1(minimum_scalar)
R1(sum) R1(mean) R1(max) R1(min)

static ms_tensor *f_permute(ms_tensor *const *x, const gcase *c) { return ms_permute(x[0], c->ax); }
static ms_tensor *f_concat(ms_tensor *const *x, const gcase *c)
{
    return ms_concat(c->nin, x, c->ax[0]);
}
static ms_tensor *f_stack(ms_tensor *const *x, const gcase *c)
{
    return ms_stack(c->nin, x, c->ax[0]);
}
static ms_tensor *f_slice(ms_tensor *const *x, const gcase *c)
{
    return ms_slice(x[0], c->ax[0], c->ax[1], c->ax[2]);
}
static ms_tensor *f_repeat(ms_tensor *const *x, const gcase *c)
{
    return ms_repeat(x[0], c->ax[1], c->ax[0]);
}
static ms_tensor *f_broadcast_to(ms_tensor *const *x, const gcase *c)
{
    int64_t s[4];
    for (int i = 0; i < c->na; i++)
        s[i] = c->ax[i];
    return ms_broadcast_to(x[0], c->na, s);
}
static ms_tensor *f_where(ms_tensor *const *x, const gcase *c)
{
    (void)c;
    static const double cd[12] = {1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 0, 0};
    int64_t s[2] = {3, 4};
    ms_tensor *cond = as_dtype(from64(2, s, cd), ms_tensor_dtype(x[0]));
    return ms_where(cond, x[0], x[1]);
}
static ms_tensor *f_softmax(ms_tensor *const *x, const gcase *c) { return ms_softmax(x[0], c->ax[0]); }
static ms_tensor *f_log_softmax(ms_tensor *const *x, const gcase *c)
{
    return ms_log_softmax(x[0], c->ax[0]);
}
static ms_tensor *f_reshape(ms_tensor *const *x, const gcase *c)
{
    int64_t s[4];
    for (int i = 0; i < c->na; i++)
        s[i] = c->ax[i];
    return ms_reshape(x[0], c->na, s);
}
static ms_tensor *f_expand_dims(ms_tensor *const *x, const gcase *c)
{
    return ms_expand_dims(x[0], c->ax[0]);
}
static ms_tensor *f_squeeze(ms_tensor *const *x, const gcase *c)
{
    return ms_squeeze(x[0], c->ax[0]);
}

#define SH1(a) {1}, {{a}}
#define M34 2, {3, 4}
#define POS .lo = {0.5, 0.5, 0.5}, .hi = {2, 2, 2}

static const gcase cases[] = {
    /* unary (every one but sign) */
    {.name = "neg", .fn = f_neg, .nin = 1, .nd = {2}, .sh = {{3, 4}}},
    {.name = "neg 0-d", .fn = f_neg, .nin = 1, .nd = {0}, .sh = {{0}}},
    {.name = "abs", .fn = f_abs, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {0.1}, .hi = {1}, .away = 1},
    {.name = "exp", .fn = f_exp, .nin = 1, .nd = {3}, .sh = {{2, 3, 2}}},
    {.name = "log", .fn = f_log, .nin = 1, .nd = {2}, .sh = {{3, 4}}, POS},
    {.name = "sqrt", .fn = f_sqrt, .nin = 1, .nd = {2}, .sh = {{3, 4}}, POS},
    {.name = "square", .fn = f_square, .nin = 1, .nd = {2}, .sh = {{3, 4}}},
    {.name = "reciprocal", .fn = f_reciprocal, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {0.5}, .hi = {2}, .away = 1},
    {.name = "tanh", .fn = f_tanh, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {-2}, .hi = {2}},
    {.name = "tanh 1-d", .fn = f_tanh, .nin = 1, .nd = {1}, .sh = {{5}}},
    {.name = "sigmoid", .fn = f_sigmoid, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {-3}, .hi = {3}},
    {.name = "relu", .fn = f_relu, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {0.1}, .hi = {1}, .away = 1},
    {.name = "sin", .fn = f_sin, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {-3}, .hi = {3}},
    {.name = "cos", .fn = f_cos, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {-3}, .hi = {3}},
    /* binary with broadcasting */
    {.name = "add (3,1)+(1,4)", .fn = f_add, .nin = 2, .nd = {2, 2}, .sh = {{3, 1}, {1, 4}}},
    {.name = "add (2,3)+(3,)", .fn = f_add, .nin = 2, .nd = {2, 1}, .sh = {{2, 3}, {3}}},
    {.name = "add ()+(2,3)", .fn = f_add, .nin = 2, .nd = {0, 2}, .sh = {{0}, {2, 3}}},
    {.name = "sub (3,1)+(1,4)", .fn = f_sub, .nin = 2, .nd = {2, 2}, .sh = {{3, 1}, {1, 4}}},
    {.name = "sub (2,3)+(3,)", .fn = f_sub, .nin = 2, .nd = {2, 1}, .sh = {{2, 3}, {3}}},
    {.name = "mul (3,1)+(1,4)", .fn = f_mul, .nin = 2, .nd = {2, 2}, .sh = {{3, 1}, {1, 4}}},
    {.name = "mul (2,3)+(3,)", .fn = f_mul, .nin = 2, .nd = {2, 1}, .sh = {{2, 3}, {3}}},
    {.name = "mul (2,3,4)+(3,1)", .fn = f_mul, .nin = 2, .nd = {3, 2}, .sh = {{2, 3, 4}, {3, 1}}},
    {.name = "mul same", .fn = f_mul, .nin = 2, .nd = {2, 2}, .sh = {{3, 4}, {3, 4}}},
    {.name = "div (3,1)+(1,4)", .fn = f_div, .nin = 2, .nd = {2, 2}, .sh = {{3, 1}, {1, 4}}, .lo = {-1, 0.5}, .hi = {1, 2},
     .away = 2},
    {.name = "div (2,3)+(3,)", .fn = f_div, .nin = 2, .nd = {2, 1}, .sh = {{2, 3}, {3}}, .lo = {-1, 0.5}, .hi = {1, 2},
     .away = 2},
    {.name = "pow (3,1)+(1,4)", .fn = f_pow, .nin = 2, .nd = {2, 2}, .sh = {{3, 1}, {1, 4}}, .lo = {0.5, -1.5},
     .hi = {2, 1.5}},
    {.name = "pow (2,3)+(3,)", .fn = f_pow, .nin = 2, .nd = {2, 1}, .sh = {{2, 3}, {3}}, .lo = {0.5, -1.5}, .hi = {2, 1.5}},
    {.name = "maximum (3,1)+(1,4)", .fn = f_maximum, .nin = 2, .nd = {2, 2}, .sh = {{3, 1}, {1, 4}}},
    {.name = "maximum (2,3)+(3,)", .fn = f_maximum, .nin = 2, .nd = {2, 1}, .sh = {{2, 3}, {3}}},
    {.name = "minimum (3,1)+(1,4)", .fn = f_minimum, .nin = 2, .nd = {2, 2}, .sh = {{3, 1}, {1, 4}}},
    {.name = "minimum (2,3)+(3,)", .fn = f_minimum, .nin = 2, .nd = {2, 1}, .sh = {{2, 3}, {3}}},
    /* tensor-scalar */
    {.name = "add_scalar", .fn = f_add_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .s = 0.7},
    {.name = "sub_scalar", .fn = f_sub_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .s = 0.7},
    {.name = "rsub_scalar", .fn = f_rsub_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .s = 0.7},
    {.name = "mul_scalar", .fn = f_mul_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .s = -1.3},
    {.name = "div_scalar", .fn = f_div_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .s = 1.7},
    {.name = "rdiv_scalar", .fn = f_rdiv_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {0.5}, .hi = {2}, .away = 1,
     .s = 1.5},
    {.name = "pow_scalar 2.5", .fn = f_pow_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, POS, .s = 2.5},
    {.name = "pow_scalar -1.5", .fn = f_pow_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, POS, .s = -1.5},
    {.name = "pow_scalar 3", .fn = f_pow_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .s = 3},
    {.name = "maximum_scalar", .fn = f_maximum_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .s = 0.1},
    {.name = "minimum_scalar", .fn = f_minimum_scalar, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .s = -0.2},
    /* reductions */
    {.name = "sum all", .fn = f_sum, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}},
    {.name = "sum all keepdims", .fn = f_sum, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .keep = true},
    {.name = "sum axis 1 keepdims", .fn = f_sum, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 1, .ax = {1}, .keep = true},
    {.name = "sum axes (0,2)", .fn = f_sum, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 2, .ax = {0, 2}},
    {.name = "sum axis -1", .fn = f_sum, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 1, .ax = {-1}},
    {.name = "mean all", .fn = f_mean, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}},
    {.name = "mean axis 1 keepdims", .fn = f_mean, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 1, .ax = {1}, .keep = true},
    {.name = "mean axes (2,0)", .fn = f_mean, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 2, .ax = {2, 0}},
    {.name = "mean axis -2", .fn = f_mean, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .na = 1, .ax = {-2}},
    {.name = "max all", .fn = f_max, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}},
    {.name = "max axis 1 keepdims", .fn = f_max, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 1, .ax = {1}, .keep = true},
    {.name = "max axes (0,2)", .fn = f_max, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 2, .ax = {0, 2}},
    {.name = "max axis -1", .fn = f_max, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .na = 1, .ax = {-1}},
    {.name = "min all keepdims", .fn = f_min, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .keep = true},
    {.name = "min axis 0", .fn = f_min, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 1, .ax = {0}},
    {.name = "min axes (1,2) keepdims", .fn = f_min, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 2, .ax = {1, 2},
     .keep = true},
    /* matmul */
    {.name = "matmul (3,4)@(4,2)", .fn = f_matmul, .nin = 2, .nd = {2, 2}, .sh = {{3, 4}, {4, 2}}},
    {.name = "matmul (4,)@(4,2)", .fn = f_matmul, .nin = 2, .nd = {1, 2}, .sh = {{4}, {4, 2}}},
    {.name = "matmul (3,4)@(4,)", .fn = f_matmul, .nin = 2, .nd = {2, 1}, .sh = {{3, 4}, {4}}},
    {.name = "matmul (4,)@(4,)", .fn = f_matmul, .nin = 2, .nd = {1, 1}, .sh = {{4}, {4}}},
    {.name = "matmul (2,3,4)@(4,5)", .fn = f_matmul, .nin = 2, .nd = {3, 2}, .sh = {{2, 3, 4}, {4, 5}}},
    {.name = "matmul (2,3,4)@(2,4,2)", .fn = f_matmul, .nin = 2, .nd = {3, 3}, .sh = {{2, 3, 4}, {2, 4, 2}}},
    {.name = "matmul (2,1,3,4)@(3,4,2)", .fn = f_matmul, .nin = 2, .nd = {4, 3}, .sh = {{2, 1, 3, 4}, {3, 4, 2}}},
    {.name = "matmul (4,)@(2,4,3)", .fn = f_matmul, .nin = 2, .nd = {1, 3}, .sh = {{4}, {2, 4, 3}}},
    /* layout */
    {.name = "transpose 2-d", .fn = f_transpose, .nin = 1, .nd = {2}, .sh = {{3, 4}}},
    {.name = "transpose 3-d", .fn = f_transpose, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}},
    {.name = "permute (1,2,0)", .fn = f_permute, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .na = 3, .ax = {1, 2, 0}},
    {.name = "concat axis 1", .fn = f_concat, .nin = 3, .nd = {3, 3, 3}, .sh = {{2, 1, 3}, {2, 3, 3}, {2, 2, 3}}, .ax = {1}},
    {.name = "concat axis 0", .fn = f_concat, .nin = 2, .nd = {2, 2}, .sh = {{1, 4}, {2, 4}}, .ax = {0}},
    {.name = "stack axis 0", .fn = f_stack, .nin = 2, .nd = {2, 2}, .sh = {{3, 4}, {3, 4}}, .ax = {0}},
    {.name = "stack axis -1", .fn = f_stack, .nin = 3, .nd = {1, 1, 1}, .sh = {{4}, {4}, {4}}, .ax = {-1}},
    {.name = "slice axis 1 [1,3)", .fn = f_slice, .nin = 1, .nd = {2}, .sh = {{4, 5}}, .ax = {1, 1, 3}},
    {.name = "slice axis 0 [-3,100)", .fn = f_slice, .nin = 1, .nd = {2}, .sh = {{4, 5}}, .ax = {0, -3, 100}},
    {.name = "slice axis -1 [0,2)", .fn = f_slice, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .ax = {-1, 0, 2}},
    {.name = "repeat axis 1 x3", .fn = f_repeat, .nin = 1, .nd = {2}, .sh = {{2, 3}}, .ax = {1, 3}},
    {.name = "repeat axis 0 x0 (empty)", .fn = f_repeat, .nin = 1, .nd = {2}, .sh = {{2, 3}}, .ax = {0, 0}},
    {.name = "slice empty [3,1)", .fn = f_slice, .nin = 1, .nd = {2}, .sh = {{4, 5}}, .ax = {1, 3, 1}},
    {.name = "repeat axis 0 x2", .fn = f_repeat, .nin = 1, .nd = {3}, .sh = {{2, 3, 2}}, .ax = {0, 2}},
    {.name = "broadcast_to (3,1)->(2,3,4)", .fn = f_broadcast_to, .nin = 1, .nd = {2}, .sh = {{3, 1}}, .na = 3,
     .ax = {2, 3, 4}},
    {.name = "broadcast_to (4,)->(3,4)", .fn = f_broadcast_to, .nin = 1, .nd = {1}, .sh = {{4}}, .na = 2, .ax = {3, 4}},
    {.name = "where (3,4) ? (3,1) : (4,)", .fn = f_where, .nin = 2, .nd = {2, 1}, .sh = {{3, 1}, {4}}},
    {.name = "where (3,4) ? (3,4) : ()", .fn = f_where, .nin = 2, .nd = {2, 0}, .sh = {{3, 4}, {0}}},
    /* normalisation */
    {.name = "softmax axis -1", .fn = f_softmax, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {-2}, .hi = {2}, .ax = {-1}},
    {.name = "softmax axis 0", .fn = f_softmax, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {-2}, .hi = {2}, .ax = {0}},
    {.name = "softmax axis 1 of 3-d", .fn = f_softmax, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .ax = {1}},
    {.name = "log_softmax axis -1", .fn = f_log_softmax, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .lo = {-2}, .hi = {2},
     .ax = {-1}},
    {.name = "log_softmax axis 0", .fn = f_log_softmax, .nin = 1, .nd = {3}, .sh = {{2, 3, 4}}, .ax = {0}},
    /* shapes */
    {.name = "reshape (2,6)->(3,4)", .fn = f_reshape, .nin = 1, .nd = {2}, .sh = {{2, 6}}, .na = 2, .ax = {3, 4}},
    {.name = "reshape (2,3,2)->(-1,)", .fn = f_reshape, .nin = 1, .nd = {3}, .sh = {{2, 3, 2}}, .na = 1, .ax = {-1}},
    {.name = "expand_dims 1", .fn = f_expand_dims, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .ax = {1}},
    {.name = "expand_dims -1", .fn = f_expand_dims, .nin = 1, .nd = {2}, .sh = {{3, 4}}, .ax = {-1}},
    {.name = "squeeze 1", .fn = f_squeeze, .nin = 1, .nd = {3}, .sh = {{3, 1, 4}}, .ax = {1}},
    {.name = "squeeze all", .fn = f_squeeze, .nin = 1, .nd = {3}, .sh = {{1, 3, 1}}, .ax = {MS_ALL_AXES}},
};
#define NCASES ((int)(sizeof cases / sizeof cases[0]))

/* Input i of case c in float64, deterministic in (case index, i). */
static ms_tensor *make_input(int ci, int i)
{
    const gcase *c = &cases[ci];
    double lo = c->lo[i], hi = c->hi[i];
    if (lo == 0.0 && hi == 0.0) {
        lo = -1.0;
        hi = 1.0;
    }
    uint64_t seed = 1000u + 10u * (uint64_t)ci + (uint64_t)i;
    ms_tensor *x = ms_random_uniform(MS_F64, c->nd[i], c->sh[i], lo, hi, seed);
    if (x && (c->away & (1 << i))) {
        ms_tensor *sg = ms_random_uniform(MS_F64, c->nd[i], c->sh[i], 0, 1, seed + 7777);
        for (int64_t j = 0; j < ms_tensor_numel(x); j++)
            if (at(sg, j) < 0.5)
                put(x, j, -at(x, j));
    }
    return x;
}

/* The loss sum(op(x) * w). */
static ms_tensor *loss_of(const gcase *c, ms_tensor *const *x, const ms_tensor *w)
{
    return ms_sum(ms_mul(c->fn(x, c), w), 0, NULL, false);
}

static const char *const xkeys[3] = {"x0", "x1", "x2"};

/* Inputs, weights and variables of one case, in dtype dt (values rounded from
 * the float64 ones). */
typedef struct prepared {
    ms_tensor *x[3], *w;
    ms_container *vars;
} prepared;

static void prepare(int ci, ms_dtype dt, prepared *p)
{
    const gcase *c = &cases[ci];
    for (int i = 0; i < c->nin; i++) {
        ms_tensor *x64 = make_input(ci, i);
        p->x[i] = dt == MS_F64 ? x64 : as_dtype(x64, dt);
        assert_not_null(p->x[i], c->name);
    }
    ms_no_grad_push();
    ms_tensor *y = c->fn(p->x, c);
    ms_no_grad_pop();
    assert_not_null(y, c->name);
    ms_tensor *w64 = ms_random_uniform(MS_F64, ms_tensor_ndim(y), ms_tensor_shape(y), -1, 1,
                                       5000u + (uint64_t)ci);
    p->w = dt == MS_F64 ? w64 : as_dtype(w64, dt);
    p->vars = ms_container_new();
    for (int i = 0; i < c->nin; i++)
        assert_ok(ms_container_set(p->vars, xkeys[i], ms_variable(p->x[i])), "set");
}

/* Vars of p, re-made at x + h * dir (dir a container like p->vars). */
static ms_container *shifted_vars(const gcase *c, const prepared *p, const ms_container *dir,
                                  double h)
{
    ms_container *v = ms_container_new();
    for (int i = 0; i < c->nin; i++) {
        ms_tensor *xs = ms_add(p->x[i], ms_mul_scalar(ms_container_at(dir, i), h));
        ms_container_set(v, xkeys[i], ms_variable(xs));
    }
    return v;
}

static ms_container *grad_at(const gcase *c, const ms_container *vars, const ms_tensor *w,
                             bool create_graph)
{
    ms_tensor *xv[3];
    for (int i = 0; i < c->nin; i++)
        xv[i] = ms_container_at(vars, i);
    ms_tensor *l = loss_of(c, xv, w);
    assert_not_null(l, c->name);
    ms_container *g = NULL;
    assert_ok(ms_grad(l, vars, create_graph, &g), c->name);
    return g;
}

START_TEST(gradcheck)
{
    const gcase *c = &cases[_i];
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    prepared p;
    prepare(_i, MS_F64, &p);
    ms_container *g = grad_at(c, p.vars, p.w, false);
    ck_assert_int_eq(ms_container_size(g), c->nin);
    for (int i = 0; i < c->nin; i++) {
        ms_tensor *gi = ms_container_get(g, xkeys[i]);
        ck_assert_int_eq(ms_tensor_ndim(gi), ms_tensor_ndim(p.x[i]));
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
                          "%s: dL/dx%d[%lld]: analytic %.12g, numeric %.12g", c->name, i,
                          (long long)j, ana, num);
        }
    }
    ms_container_release(g);
    ms_container_release(p.vars);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
}
END_TEST

/* H v for the joint Hessian of L over all inputs, as ms_grad(sum_i <g_i, v_i>)
 * with g from ms_grad(create_graph), against (g(x + eps v) - g(x - eps v)) / 2eps. */
START_TEST(gradgradcheck)
{
    const gcase *c = &cases[_i];
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    prepared p;
    prepare(_i, MS_F64, &p);
    ms_container *dir = ms_container_new();
    for (int i = 0; i < c->nin; i++)
        ms_container_set(dir, xkeys[i],
                         ms_random_uniform(MS_F64, c->nd[i], c->sh[i], -1, 1,
                                           9000u + 10u * (uint64_t)_i + (uint64_t)i));
    ms_container *g = grad_at(c, p.vars, p.w, true);
    ms_tensor *s = ms_scalar(MS_F64, 0.0);
    for (int i = 0; i < c->nin; i++)
        s = ms_add(s, ms_sum(ms_mul(ms_container_at(g, i), ms_container_at(dir, i)), 0, NULL,
                             false));
    assert_not_null(s, c->name);
    ms_container *hv = NULL;
    assert_ok(ms_grad(s, p.vars, false, &hv), c->name);

    ms_container *vp = shifted_vars(c, &p, dir, EPS), *vm = shifted_vars(c, &p, dir, -EPS);
    ms_container *gp = grad_at(c, vp, p.w, false), *gm = grad_at(c, vm, p.w, false);
    for (int i = 0; i < c->nin; i++) {
        ms_tensor *h = ms_container_get(hv, xkeys[i]);
        ck_assert_int_eq(ms_tensor_numel(h), ms_tensor_numel(p.x[i]));
        for (int64_t j = 0; j < ms_tensor_numel(p.x[i]); j++) {
            double num = (at(ms_container_at(gp, i), j) - at(ms_container_at(gm, i), j)) /
                         (2 * EPS);
            double ana = at(h, j);
            ck_assert_msg(close_enough(ana, num),
                          "%s: (Hv)_x%d[%lld]: analytic %.12g, numeric %.12g", c->name, i,
                          (long long)j, ana, num);
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
    const gcase *c = &cases[_i];
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    assert_ok(metastep_set_backend("ref"), "metastep_set_backend(ref)");
    prepared p64;
    prepare(_i, MS_F64, &p64);
    ms_container *g64 = grad_at(c, p64.vars, p64.w, false);
    assert_ok(metastep_unset_backend(), "metastep_unset_backend");
    prepared p32;
    prepare(_i, MS_F32, &p32);
    ms_container *g32 = grad_at(c, p32.vars, p32.w, false);
    for (int i = 0; i < c->nin; i++) {
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

/* ------------------------------------------------------------ the MLP */

/* 3-8-1 tanh MLP on 10 points with an MSE loss. */
typedef struct mlp_data {
    ms_tensor *x, *y;
} mlp_data;

static ms_tensor *mlp_loss(const ms_container *v, void *user)
{
    const mlp_data *d = user;
    ms_tensor *h = ms_tanh(ms_add(ms_matmul(d->x, ms_container_get(v, "l1/w")),
                                  ms_container_get(v, "l1/b")));
    ms_tensor *out = ms_add(ms_matmul(h, ms_container_get(v, "l2/w")),
                            ms_container_get(v, "l2/b"));
    return ms_mean(ms_square(ms_sub(out, d->y)), 0, NULL, false);
}

static ms_container *mlp_params(ms_dtype dt, int hidden, bool variables, uint64_t seed)
{
    int64_t s1[2] = {3, hidden}, sb1[1] = {hidden}, s2[2] = {hidden, 1}, sb2[1] = {1};
    ms_tensor *t[4] = {
        ms_random_normal(dt, 2, s1, 0, 0.7, seed), ms_random_normal(dt, 1, sb1, 0, 0.3, seed + 1),
        ms_random_normal(dt, 2, s2, 0, 0.7, seed + 2),
        ms_random_normal(dt, 1, sb2, 0, 0.3, seed + 3)};
    const char *k[4] = {"l1/w", "l1/b", "l2/w", "l2/b"};
    ms_container *c = ms_container_new();
    for (int i = 0; i < 4; i++) {
        ms_tensor *v = variables ? ms_variable(t[i]) : t[i];
        ms_container_set(c, k[i], v);
        if (ms_scope_depth() == 0) {
            if (v != t[i])
                ms_release(v);
            ms_release(t[i]);
        }
    }
    return c;
}

static mlp_data mlp_batch(ms_dtype dt)
{
    int64_t sx[2] = {10, 3}, sy[2] = {10, 1};
    mlp_data d = {ms_random_uniform(dt, 2, sx, -1, 1, 42),
                  ms_random_uniform(dt, 2, sy, -1, 1, 43)};
    return d;
}

START_TEST(mlp_hessian_vector_product)
{
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    mlp_data d = mlp_batch(MS_F64);
    ms_container *w = mlp_params(MS_F64, 8, true, 7);
    ms_container *v = mlp_params(MS_F64, 8, false, 77); /* the direction */
    ms_container *g = NULL, *hv = NULL;
    assert_ok(ms_grad(mlp_loss(w, &d), w, true, &g), "grad");
    for (int i = 0; i < ms_container_size(g); i++)
        ck_assert_msg(ms_requires_grad(ms_container_at(g, i)), "%s", ms_container_key(g, i));
    ms_tensor *s = NULL;
    for (int i = 0; i < ms_container_size(g); i++) {
        ms_tensor *t = ms_sum(ms_mul(ms_container_at(g, i), ms_container_at(v, i)), 0, NULL,
                              false);
        s = s ? ms_add(s, t) : t;
    }
    assert_ok(ms_grad(s, w, false, &hv), "hvp");
    ms_container *wp = ms_container_new(), *wm = ms_container_new();
    for (int i = 0; i < ms_container_size(w); i++) {
        ms_tensor *wi = ms_container_at(w, i), *vi = ms_container_at(v, i);
        ms_container_set(wp, ms_container_key(w, i),
                         ms_variable(ms_add(wi, ms_mul_scalar(vi, EPS))));
        ms_container_set(wm, ms_container_key(w, i),
                         ms_variable(ms_sub(wi, ms_mul_scalar(vi, EPS))));
    }
    ms_container *gp = NULL, *gm = NULL;
    assert_ok(ms_grad(mlp_loss(wp, &d), wp, false, &gp), "grad +");
    assert_ok(ms_grad(mlp_loss(wm, &d), wm, false, &gm), "grad -");
    ms_container *diff = ms_container_sub(gp, gm);
    ms_container *num = ms_container_mul_scalar(diff, 0.5 / EPS);
    ck_assert_int_eq(ms_container_size(hv), 4);
    ck_assert_int_eq(ms_container_assert_identical_structure(hv, w), MS_OK);
    for (int i = 0; i < ms_container_size(hv); i++) {
        const char *k = ms_container_key(hv, i);
        ms_tensor *a = ms_container_at(hv, i), *n = ms_container_get(num, k);
        double nrm = 0;
        for (int64_t j = 0; j < ms_tensor_numel(a); j++) {
            ck_assert_msg(close_enough(at(a, j), at(n, j)), "Hv[%s][%lld]: %.12g vs %.12g", k,
                          (long long)j, at(a, j), at(n, j));
            nrm += fabs(at(a, j));
        }
        ck_assert_msg(nrm > 1e-6, "Hv[%s] is zero", k); /* a real check, not 0 == 0 */
    }
    ck_assert(ms_container_allclose(hv, num, RTOL, ATOL));
    ms_container *const rel[] = {g, hv, v, w, wp, wm, gp, gm, diff, num};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++)
        ms_container_release(rel[i]);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
}
END_TEST

/* ------------------------------------------------------------ semantics */

static ms_tensor *vec(int n, const double *d)
{
    int64_t s[1] = {n};
    return from64(1, s, d);
}

static void check_vals(const ms_tensor *t, int n, const double *want, const char *what)
{
    ck_assert_msg(t != NULL, "%s is NULL", what);
    ck_assert_int_eq(ms_tensor_numel(t), n);
    for (int i = 0; i < n; i++)
        ck_assert_msg(fabs(at(t, i) - want[i]) <= 1e-12 + 1e-9 * fabs(want[i]),
                      "%s[%d] = %.15g, want %.15g", what, i, at(t, i), want[i]);
}

START_TEST(unrelated_variable_gets_zeros)
{
    ms_scope_push();
    static const double xd[3] = {1, 2, 3}, zd[4] = {5, 6, 7, 8};
    int64_t zs[2] = {2, 2};
    ms_container *c = ms_container_new();
    ms_container_set(c, "x", ms_variable(vec(3, xd)));
    ms_container_set(c, "z", ms_variable(from64(2, zs, zd)));
    ms_tensor *y = ms_sum(ms_square(ms_container_get(c, "x")), 0, NULL, false);
    ms_container *g = NULL;
    assert_ok(ms_grad(y, c, false, &g), "ms_grad");
    static const double gx[3] = {2, 4, 6}, gz[4] = {0, 0, 0, 0};
    check_vals(ms_container_get(g, "x"), 3, gx, "dx");
    ms_tensor *dz = ms_container_get(g, "z");
    check_vals(dz, 4, gz, "dz");
    ck_assert_int_eq(ms_tensor_ndim(dz), 2);
    ck_assert_int_eq(ms_tensor_shape(dz)[0], 2);
    ck_assert_str_eq(ms_container_key(g, 0), "x");
    ck_assert_str_eq(ms_container_key(g, 1), "z");
    ms_container_release(g);
    /* a y that depends on no variable at all */
    ms_tensor *k = ms_scalar(MS_F64, 3.0);
    assert_ok(ms_grad(k, c, true, &g), "ms_grad of a constant");
    check_vals(ms_container_get(g, "x"), 3, gz, "dx of a constant");
    ms_container_release(g);
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

START_TEST(nonscalar_needs_seed)
{
    ms_scope_push();
    static const double xd[3] = {1, 2, 3};
    ms_container *c = ms_container_new();
    ms_container_set(c, "x", ms_variable(vec(3, xd)));
    ms_tensor *y = ms_mul(ms_container_get(c, "x"), ms_container_get(c, "x"));
    ms_container *g = (ms_container *)1;
    ck_assert_int_eq(ms_grad(y, c, false, &g), MS_ERR_GRAPH);
    ck_assert_ptr_null(g);
    const char *msg = NULL;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_GRAPH);
    ck_assert_ptr_nonnull(strstr(msg, "(3)"));
    ms_clear_error();
    /* the failed call did not consume the graph: seeded works */
    static const double sd[3] = {1, 10, 100}, want[3] = {2, 40, 600};
    assert_ok(ms_grad_seeded(y, vec(3, sd), c, false, &g), "ms_grad_seeded");
    check_vals(ms_container_get(g, "x"), 3, want, "seeded dx");
    ms_container_release(g);
    /* a seed of the wrong size */
    ms_tensor *y2 = ms_mul(ms_container_get(c, "x"), ms_container_get(c, "x"));
    ck_assert_int_eq(ms_grad_seeded(y2, vec(2, sd), c, false, &g), MS_ERR_SHAPE);
    ms_clear_error();
    /* NULL arguments */
    ck_assert_int_eq(ms_grad(NULL, c, false, &g), MS_ERR_NULL_ARG);
    ms_clear_error();
    ck_assert_int_eq(ms_grad(y2, NULL, false, &g), MS_ERR_NULL_ARG);
    ms_clear_error();
    ck_assert_int_eq(ms_grad(y2, c, false, NULL), MS_ERR_NULL_ARG);
    ms_clear_error();
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

START_TEST(seeded_vector_jacobian)
{
    ms_scope_push();
    /* y = W x (2x3 @ 3), seed s: grad_x = W^T s, grad_W = s x^T */
    static const double wd[6] = {1, 2, 3, 4, 5, 6}, xd[3] = {0.5, -1, 2}, sd[2] = {3, -2};
    int64_t ws[2] = {2, 3};
    ms_container *c = ms_container_new();
    ms_container_set(c, "w", ms_variable(from64(2, ws, wd)));
    ms_container_set(c, "x", ms_variable(vec(3, xd)));
    ms_tensor *y = ms_matmul(ms_container_get(c, "w"), ms_container_get(c, "x"));
    ms_container *g = NULL;
    assert_ok(ms_grad_seeded(y, vec(2, sd), c, true, &g), "ms_grad_seeded");
    static const double gx[3] = {3 - 8, 6 - 10, 9 - 12},
                        gw[6] = {1.5, -3, 6, -1, 2, -4};
    check_vals(ms_container_get(g, "x"), 3, gx, "dx");
    check_vals(ms_container_get(g, "w"), 6, gw, "dw");
    ms_container_release(g);
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

START_TEST(consumed_graph)
{
    ms_scope_push();
    static const double xd[3] = {1, 2, 3}, want[3] = {2, 4, 6};
    ms_container *c = ms_container_new();
    ms_container_set(c, "x", ms_variable(vec(3, xd)));
    ms_tensor *x = ms_container_get(c, "x");
    ms_tensor *y = ms_sum(ms_square(x), 0, NULL, false);
    ms_container *g = NULL;
    /* create_graph keeps the graph: twice is fine */
    assert_ok(ms_grad(y, c, true, &g), "first (create_graph)");
    ms_container_release(g);
    assert_ok(ms_grad(y, c, false, &g), "second (consumes)");
    check_vals(ms_container_get(g, "x"), 3, want, "dx");
    ms_container_release(g);
    g = (ms_container *)1;
    ck_assert_int_eq(ms_grad(y, c, false, &g), MS_ERR_GRAPH);
    ck_assert_ptr_null(g);
    ms_clear_error();
    ck_assert_int_eq(ms_grad(y, c, true, &g), MS_ERR_GRAPH);
    ms_clear_error();
    /* through a consumed intermediate: z's graph was consumed with y1's */
    ms_tensor *z = ms_square(x);
    ms_tensor *y1 = ms_sum(z, 0, NULL, false);
    assert_ok(ms_grad(y1, c, false, &g), "y1");
    ms_container_release(g);
    ms_tensor *y2 = ms_sum(ms_mul_scalar(z, 3.0), 0, NULL, false);
    g = (ms_container *)1;
    ck_assert_int_eq(ms_grad(y2, c, false, &g), MS_ERR_GRAPH); /* never a silent zero */
    ck_assert_ptr_null(g);
    ms_clear_error();
    /* ... but a consumed tensor reached only through a wrt tensor is harmless */
    ms_container *cz = ms_container_new();
    ms_container_set(cz, "z", z);
    assert_ok(ms_grad(ms_sum(ms_mul_scalar(z, 3.0), 0, NULL, false), cz, false, &g), "wrt z");
    static const double three[3] = {3, 3, 3};
    check_vals(ms_container_get(g, "z"), 3, three, "dy/dz");
    ms_container_release(g);
    ms_tensor *u = ms_add_scalar(z, 1.0); /* u = x^2 + 1, below it the consumed z */
    ms_container *cu = ms_container_new();
    ms_container_set(cu, "u", u);
    assert_ok(ms_grad(ms_sum(ms_square(u), 0, NULL, false), cu, false, &g), "wrt u");
    static const double two_u[3] = {4, 10, 20};
    check_vals(ms_container_get(g, "u"), 3, two_u, "dy/du");
    ms_container_release(g);
    ms_container_release(cu);
    ms_container_release(cz);
    ms_clear_error();
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

START_TEST(wrt_not_variable)
{
    ms_scope_push();
    static const double xd[3] = {1, 2, 3};
    ms_container *c = ms_container_new();
    ms_container_set(c, "enc/l1/w", ms_variable(vec(3, xd)));
    ms_container_set(c, "enc/l1/b", vec(3, xd)); /* a plain tensor */
    ms_tensor *y = ms_sum(ms_mul(ms_container_get(c, "enc/l1/w"),
                                 ms_container_get(c, "enc/l1/b")), 0, NULL, false);
    ms_container *g = (ms_container *)1;
    ck_assert_int_eq(ms_grad(y, c, false, &g), MS_ERR_GRAPH);
    ck_assert_ptr_null(g);
    const char *msg = NULL;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_GRAPH);
    ck_assert_msg(strstr(msg, "enc/l1/b") != NULL, "message does not name the chain: %s", msg);
    ms_clear_error();
    /* the failed call left y's graph intact */
    ms_container *only_w = ms_container_new();
    ms_container_set(only_w, "enc/l1/w", ms_container_get(c, "enc/l1/w"));
    assert_ok(ms_grad(y, only_w, false, &g), "grad wrt w only");
    check_vals(ms_container_get(g, "enc/l1/w"), 3, xd, "dw");
    ms_container_release(g);
    ms_container_release(only_w);
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

START_TEST(create_graph_grads_require_grad)
{
    ms_scope_push();
    static const double xd[3] = {1, 2, 3};
    ms_container *c = ms_container_new();
    ms_container_set(c, "x", ms_variable(vec(3, xd)));
    ms_tensor *x = ms_container_get(c, "x");
    ms_container *g = NULL, *g2 = NULL;
    /* y = sum(x^3): g = 3x^2, d/dx sum(g) = 6x */
    assert_ok(ms_grad(ms_sum(ms_pow_scalar(x, 3), 0, NULL, false), c, true, &g), "grad");
    ms_tensor *gx = ms_container_get(g, "x");
    ck_assert(ms_requires_grad(gx));
    static const double w1[3] = {3, 12, 27}, w2[3] = {6, 12, 18};
    check_vals(gx, 3, w1, "g");
    assert_ok(ms_grad(ms_sum(gx, 0, NULL, false), c, false, &g2), "grad of grad");
    check_vals(ms_container_get(g2, "x"), 3, w2, "g2");
    ck_assert(!ms_requires_grad(ms_container_get(g2, "x")));
    ms_container_release(g);
    ms_container_release(g2);
    /* without create_graph the gradient is a constant */
    assert_ok(ms_grad(ms_sum(ms_pow_scalar(x, 3), 0, NULL, false), c, false, &g), "grad");
    ck_assert(!ms_requires_grad(ms_container_get(g, "x")));
    ms_container_release(g);
    /* third order: d3/dx3 sum(x^4) . 1 = 24x */
    assert_ok(ms_grad(ms_sum(ms_pow_scalar(x, 4), 0, NULL, false), c, true, &g), "1st");
    assert_ok(ms_grad(ms_sum(ms_container_get(g, "x"), 0, NULL, false), c, true, &g2), "2nd");
    ms_container *g3 = NULL;
    assert_ok(ms_grad(ms_sum(ms_container_get(g2, "x"), 0, NULL, false), c, true, &g3), "3rd");
    static const double w3[3] = {24, 48, 72};
    check_vals(ms_container_get(g3, "x"), 3, w3, "g3");
    ms_container_release(g);
    ms_container_release(g2);
    ms_container_release(g3);
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

START_TEST(stop_gradient_cuts)
{
    ms_scope_push();
    static const double xd[3] = {1, 2, 3};
    ms_container *c = ms_container_new();
    ms_container_set(c, "x", ms_variable(vec(3, xd)));
    ms_tensor *x = ms_container_get(c, "x");
    ms_tensor *sx = ms_stop_gradient(ms_mul_scalar(x, 2.0));
    ck_assert(!ms_requires_grad(sx));
    ck_assert(ms_requires_grad(x));
    static const double dbl[3] = {2, 4, 6};
    check_vals(sx, 3, dbl, "stop_gradient values");
    /* y = sum(stop(2x) * x): dy/dx = 2x, not 4x */
    ms_container *g = NULL;
    assert_ok(ms_grad(ms_sum(ms_mul(sx, x), 0, NULL, false), c, false, &g), "grad");
    check_vals(ms_container_get(g, "x"), 3, dbl, "dx");
    ms_container_release(g);
    /* a loss made only of stopped tensors has zero gradient */
    assert_ok(ms_grad(ms_sum(ms_square(sx), 0, NULL, false), c, false, &g), "grad");
    static const double z[3] = {0, 0, 0};
    check_vals(ms_container_get(g, "x"), 3, z, "dx of stopped");
    ms_container_release(g);
    ck_assert_ptr_null(ms_stop_gradient(NULL));
    ck_assert_ptr_null(ms_variable(NULL));
    ms_clear_error();
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

START_TEST(no_grad_scopes)
{
    ms_scope_push();
    static const double xd[3] = {1, 2, 3};
    ms_tensor *x = ms_variable(vec(3, xd));
    ck_assert(ms_grad_enabled());
    ck_assert(ms_requires_grad(ms_square(x)));
    ms_no_grad_push();
    ck_assert(!ms_grad_enabled());
    ms_tensor *a = ms_square(x);
    ms_no_grad_push();
    ms_no_grad_pop();
    ck_assert(!ms_grad_enabled()); /* nested: still off */
    ms_tensor *b = ms_matmul(x, x);
    ms_no_grad_pop();
    ck_assert(ms_grad_enabled());
    ck_assert(!ms_requires_grad(a));
    ck_assert(!ms_requires_grad(b));
    ck_assert_double_eq_tol(ms_tensor_item(b), 14.0, 1e-12);
    ms_no_grad_pop(); /* unbalanced pop is harmless */
    ck_assert(ms_grad_enabled());
    /* ms_grad of a y recorded without grad: zeros */
    ms_container *c = ms_container_new(), *g = NULL;
    ms_container_set(c, "x", x);
    assert_ok(ms_grad(ms_sum(a, 0, NULL, false), c, false, &g), "grad");
    static const double z[3] = {0, 0, 0};
    check_vals(ms_container_get(g, "x"), 3, z, "dx");
    ms_container_release(g);
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

static ms_tensor *cost_3w2(const ms_container *xs, void *user)
{
    int *calls = user;
    (*calls)++;
    ms_tensor *s = NULL;
    for (int i = 0; i < ms_container_size(xs); i++) {
        ck_assert(ms_requires_grad(ms_container_at(xs, i)));
        ms_tensor *t = ms_sum(ms_mul_scalar(ms_square(ms_container_at(xs, i)), 3.0), 0, NULL,
                              false);
        s = s ? ms_add(s, t) : t;
    }
    return s; /* a new reference: owned, as usual, by the scope the helper opens */
}

static ms_tensor *cost_null(const ms_container *xs, void *user)
{
    (void)xs;
    (void)user;
    return NULL;
}

START_TEST(execute_with_gradients)
{
    int64_t live0 = ms_live_tensors();
    static const double wd[2] = {1, 2}, bd[1] = {3};
    ms_container *xs = ms_container_new();
    ms_tensor *w = vec(2, wd), *b = vec(1, bd);
    ms_container_set(xs, "a/w", w);
    ms_container_set(xs, "b", b);
    ms_release(w);
    ms_release(b);
    for (int retain = 0; retain < 2; retain++) {
        int calls = 0;
        ms_tensor *y = NULL;
        ms_container *g = NULL;
        assert_ok(ms_execute_with_gradients(cost_3w2, &calls, xs, retain, &y, &g), "ewg");
        ck_assert_int_eq(calls, 1);
        ck_assert_double_eq_tol(ms_tensor_item(y), 42.0, 1e-12);
        ck_assert_int_eq(ms_requires_grad(y), retain);
        static const double gw[2] = {6, 12}, gb[1] = {18};
        ck_assert_str_eq(ms_container_key(g, 0), "a/w");
        ck_assert_str_eq(ms_container_key(g, 1), "b");
        check_vals(ms_container_get(g, "a/w"), 2, gw, "grad a/w");
        check_vals(ms_container_get(g, "b"), 1, gb, "grad b");
        ck_assert_int_eq(ms_requires_grad(ms_container_get(g, "a/w")), retain);
        /* xs is untouched and still plain */
        ck_assert(!ms_requires_grad(ms_container_get(xs, "a/w")));
        ck_assert_double_eq(at(ms_container_get(xs, "a/w"), 1), 2.0);
        ms_release(y);
        ms_container_release(g);
    }
    /* inside a scope: y belongs to it */
    ms_scope_push();
    int calls = 0;
    ms_tensor *y = NULL;
    ms_container *g = NULL;
    assert_ok(ms_execute_with_gradients(cost_3w2, &calls, xs, false, &y, &g), "ewg scoped");
    ms_container_release(g);
    ms_scope_pop();
    /* fn failing */
    y = (ms_tensor *)1;
    g = (ms_container *)1;
    ck_assert_int_eq(ms_execute_with_gradients(cost_null, NULL, xs, false, &y, &g),
                     MS_ERR_INVALID_ARG);
    ck_assert_ptr_null(y);
    ck_assert_ptr_null(g);
    ms_clear_error();
    ck_assert_int_eq(ms_execute_with_gradients(NULL, NULL, xs, false, &y, &g), MS_ERR_NULL_ARG);
    ms_clear_error();
    ms_container_release(xs);
    ck_assert_int_eq(ms_live_tensors(), live0);
}
END_TEST

/* An error recorded earlier on the thread (and not cleared) must not make
 * an unrelated, valid ms_grad fail. */
START_TEST(grad_after_unrelated_error)
{
    ms_scope_push();
    int64_t s3[1] = {3}, s4[1] = {4};
    ck_assert_ptr_null(ms_add(ms_zeros(MS_F64, 1, s3), ms_zeros(MS_F64, 1, s4)));
    ck_assert_int_eq(ms_last_error(NULL), MS_ERR_SHAPE);
    static const double xd[3] = {1, 2, 3}, want[3] = {2, 4, 6};
    ms_container *c = ms_container_new(), *g = NULL;
    ms_container_set(c, "x", ms_variable(vec(3, xd)));
    ms_tensor *y = ms_sum(ms_square(ms_container_get(c, "x")), 0, NULL, false);
    assert_ok(ms_grad(y, c, false, &g), "ms_grad with an old error pending");
    check_vals(ms_container_get(g, "x"), 3, want, "dx");
    ms_container_release(g);
    ms_container_release(c);
    ck_assert_int_eq(ms_last_error(NULL), MS_ERR_SHAPE); /* still the first failure */
    ms_clear_error();
    ms_scope_pop();
}
END_TEST

/* The same tensor used several times and diamond-shaped graphs accumulate. */
START_TEST(accumulation)
{
    ms_scope_push();
    static const double xd[2] = {0.5, -1.5};
    ms_container *c = ms_container_new(), *g = NULL;
    ms_container_set(c, "x", ms_variable(vec(2, xd)));
    ms_tensor *x = ms_container_get(c, "x");
    /* y = sum(x*x + exp(x) * x + x) */
    ms_tensor *e = ms_exp(x);
    ms_tensor *y = ms_sum(ms_add(ms_add(ms_mul(x, x), ms_mul(e, x)), x), 0, NULL, false);
    assert_ok(ms_grad(y, c, false, &g), "grad");
    double want[2];
    for (int i = 0; i < 2; i++)
        want[i] = 2 * xd[i] + exp(xd[i]) * (1 + xd[i]) + 1;
    check_vals(ms_container_get(g, "x"), 2, want, "dx");
    ms_container_release(g);
    /* y itself as a wrt tensor */
    ms_tensor *s = ms_sum(ms_square(x), 0, NULL, false);
    ms_container *cs = ms_container_new();
    ms_container_set(cs, "s", s);
    ms_container_set(cs, "x", x);
    assert_ok(ms_grad(s, cs, false, &g), "grad wrt y");
    static const double one[1] = {1}, two_x[2] = {1, -3};
    check_vals(ms_container_get(g, "s"), 1, one, "ds/ds");
    check_vals(ms_container_get(g, "x"), 2, two_x, "ds/dx");
    ms_container_release(g);
    ms_container_release(cs);
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

/* Issue 9's reproducer: a wrt tensor deeper than an input of the graph.
 * ms_grad prunes its walk below the shallowest wrt tensor; the first call
 * must not leave dy/dh on h (not walked), or the second call adds to it
 * (24 instead of 12) after the first call's scope freed it. */
START_TEST(pruned_walk_leaves_no_state)
{
    ms_scope_push();
    ms_tensor *x = ms_variable(ms_scalar(MS_F64, 2.0)), *w = ms_variable(ms_scalar(MS_F64, 3.0));
    ms_tensor *h = ms_mul(x, x);                               /* depth 1 */
    ms_tensor *w2 = ms_mul_scalar(ms_mul_scalar(w, 1.0), 1.0); /* depth 2 */
    ms_tensor *y = ms_mul(h, w2);
    ms_container *c1 = ms_container_new(), *c2 = ms_container_new(), *g1 = NULL, *g2 = NULL;
    ms_container_set(c1, "w2", w2);
    ms_container_set(c2, "x", x);
    for (int rep = 0; rep < 3; rep++) { /* and again: nothing accumulates across calls */
        assert_ok(ms_grad(y, c1, true, &g1), "grad wrt w2");
        static const double dw2[1] = {4}, dx[1] = {12};
        check_vals(ms_container_get(g1, "w2"), 1, dw2, "dy/dw2 = h");
        ms_container_release(g1);
        assert_ok(ms_grad(y, c2, true, &g2), "grad wrt x");
        check_vals(ms_container_get(g2, "x"), 1, dx, "dy/dx = 2 x w2");
        ms_container_release(g2);
    }
    ms_container_release(c1);
    ms_container_release(c2);
    ms_scope_pop();
}
END_TEST

/* concat of more inputs than a node's fixed slots, some repeated */
START_TEST(concat_many_inputs)
{
    ms_scope_push();
    static const double xd[2] = {1, -2}, yd[1] = {5};
    ms_container *c = ms_container_new(), *g = NULL;
    ms_container_set(c, "x", ms_variable(vec(2, xd)));
    ms_container_set(c, "y", ms_variable(vec(1, yd)));
    ms_tensor *x = ms_container_get(c, "x"), *y = ms_container_get(c, "y");
    ms_tensor *parts[6] = {x, ms_mul_scalar(x, 2), y, x, ms_mul_scalar(x, 3), vec(2, xd)};
    ms_tensor *cat = ms_concat(6, parts, 0);
    ck_assert_int_eq(ms_tensor_numel(cat), 11);
    static const double sd[11] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    assert_ok(ms_grad_seeded(cat, vec(11, sd), c, true, &g), "grad");
    /* x: s[0:2] + 2 s[2:4] + s[5:7] + 3 s[7:9]; y: s[4] */
    static const double gx[2] = {1 + 6 + 6 + 24, 2 + 8 + 7 + 27}, gy[1] = {5};
    check_vals(ms_container_get(g, "x"), 2, gx, "dx");
    check_vals(ms_container_get(g, "y"), 1, gy, "dy");
    ms_container_release(g);
    ms_container_release(c);
    ms_scope_pop();
}
END_TEST

/* ------------------------------------------------------------ memory */

static int64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    if (!f)
        return -1;
    if (fscanf(f, "%ld %ld", &size, &res) != 2)
        res = -1;
    fclose(f);
    return res < 0 ? -1 : (int64_t)res * sysconf(_SC_PAGESIZE);
}

static bool under_valgrind(void)
{
    const char *p = getenv("LD_PRELOAD");
    return p && (strstr(p, "vgpreload") || strstr(p, "valgrind"));
}

static void train_steps(int n, const ms_container *w, mlp_data *d, bool second_order)
{
    for (int it = 0; it < n; it++) {
        ck_assert_int_eq(ms_scope_push(), MS_OK);
        ms_container *g = NULL;
        ms_tensor *l = mlp_loss(w, d);
        ms_status st = ms_grad(l, w, second_order, &g);
        if (st == MS_OK && second_order) {
            ms_tensor *s = NULL;
            for (int i = 0; i < ms_container_size(g); i++) {
                ms_tensor *t = ms_sum(ms_square(ms_container_at(g, i)), 0, NULL, false);
                s = s ? ms_add(s, t) : t;
            }
            ms_container *g2 = NULL;
            st = ms_grad(s, w, false, &g2);
            ms_container_release(g2);
        }
        ms_container_release(g);
        ck_assert_int_eq(ms_scope_pop(), MS_OK);
        if (st != MS_OK)
            assert_ok(st, "training step");
    }
}

START_TEST(memory_stable)
{
    int64_t live0 = ms_live_tensors();
    ms_container *w = NULL;
    mlp_data d;
    ms_scope_push();
    d = mlp_batch(MS_F32);
    ms_retain(d.x);
    ms_retain(d.y);
    w = mlp_params(MS_F32, 8, true, 3);
    ms_scope_pop();
    int64_t live1 = ms_live_tensors();
    ck_assert_int_eq(live1, live0 + 6);

    train_steps(500, w, &d, false); /* warm-up: caches and arenas settle */
    train_steps(100, w, &d, true);
    ck_assert_int_eq(ms_live_tensors(), live1);
    int64_t rss0 = rss_bytes();
    for (int k = 0; k < 10; k++) {
        train_steps(1000, w, &d, false);
        ck_assert_int_eq(ms_live_tensors(), live1);
    }
    train_steps(500, w, &d, true);
    ck_assert_int_eq(ms_live_tensors(), live1);
    int64_t rss1 = rss_bytes();
    /* RSS is only meaningful without a sanitizer's quarantine or valgrind */
    if (!UNDER_ASAN && !under_valgrind() && rss0 > 0 && rss1 > 0)
        ck_assert_msg(rss1 - rss0 <= (1 << 20), "RSS grew by %lld bytes over 10,500 steps",
                      (long long)(rss1 - rss0));
    ms_container_release(w);
    ms_release(d.x);
    ms_release(d.y);
    ck_assert_int_eq(ms_live_tensors(), live0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("autodiff");

    TCase *tc = tcase_create("gradcheck");
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

    tc = tcase_create("mlp");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_add_test(tc, mlp_hessian_vector_product);
    suite_add_tcase(s, tc);

    tc = tcase_create("semantics");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_add_test(tc, unrelated_variable_gets_zeros);
    tcase_add_test(tc, nonscalar_needs_seed);
    tcase_add_test(tc, seeded_vector_jacobian);
    tcase_add_test(tc, consumed_graph);
    tcase_add_test(tc, wrt_not_variable);
    tcase_add_test(tc, create_graph_grads_require_grad);
    tcase_add_test(tc, stop_gradient_cuts);
    tcase_add_test(tc, no_grad_scopes);
    tcase_add_test(tc, execute_with_gradients);
    tcase_add_test(tc, grad_after_unrelated_error);
    tcase_add_test(tc, accumulation);
    tcase_add_test(tc, concat_many_inputs);
    tcase_add_test(tc, pruned_walk_leaves_no_state);
    suite_add_tcase(s, tc);

    tc = tcase_create("memory");
    tcase_add_checked_fixture(tc, setup, NULL);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, memory_stable);
    suite_add_tcase(s, tc);

    return run_suite(s);
}
