/* Forward ops against hand-computed values in float32 and float64:
 * unary, binary with NumPy broadcasting, tensor-scalar, comparisons,
 * reductions, matmul, layout ops, where and softmax. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "testutil.h"

/* ------------------------------------------------------------ helpers */

static const ms_dtype dtypes[2] = {MS_F32, MS_F64};

static void setup(void)
{
    ms_clear_error();
    ck_assert_int_eq(ms_scope_push(), MS_OK);
}

static void teardown(void)
{
    while (ms_scope_depth() > 0)
        ms_scope_pop();
    ms_clear_error();
}

static int64_t count(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    return n;
}

/* A tensor of dtype dt from doubles (rounded to float for MS_F32). */
static ms_tensor *mk(ms_dtype dt, int ndim, const int64_t *shape, const double *v)
{
    int64_t n = count(ndim, shape);
    void *buf = malloc((size_t)(n ? n : 1) * 8);
    for (int64_t i = 0; i < n; i++) {
        if (dt == MS_F32)
            ((float *)buf)[i] = (float)v[i];
        else
            ((double *)buf)[i] = v[i];
    }
    ms_tensor *t = ms_tensor_from_data(dt, ndim, shape, buf);
    free(buf);
    ck_assert_ptr_nonnull(t);
    return t;
}

/* Values that the test reads back: v rounded to the dtype. */
static double rd(ms_dtype dt, double v) { return dt == MS_F32 ? (double)(float)v : v; }

static void check_shape(const ms_tensor *t, int ndim, const int64_t *shape)
{
    if (!t) {
        const char *msg;
        ms_last_error(&msg);
        ck_abort_msg("NULL result: %s", msg);
    }
    ck_assert_int_eq(ms_tensor_ndim(t), ndim);
    for (int i = 0; i < ndim; i++)
        ck_assert_msg(ms_tensor_shape(t)[i] == shape[i], "dim %d is %lld, expected %lld", i,
                      (long long)ms_tensor_shape(t)[i], (long long)shape[i]);
    ck_assert_int_eq(ms_tensor_numel(t), count(ndim, shape));
}

static bool close_to(double got, double want, ms_dtype dt)
{
    if (isnan(want))
        return isnan(got);
    if (isinf(want))
        return got == want;
    double tol = dt == MS_F32 ? 1e-6 : 1e-12;
    return fabs(got - want) <= tol * fabs(want) + 1e-300;
}

/* Every element close to want (relative 1e-6 for float32, 1e-12 for float64). */
static void check_close(const ms_tensor *t, int64_t n, const double *want)
{
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(ms_tensor_numel(t), n);
    ms_dtype dt = ms_tensor_dtype(t);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(close_to(at(t, i), want[i], dt), "%s element %lld is %.17g, expected %.17g",
                      ms_dtype_name(dt), (long long)i, at(t, i), want[i]);
}

/* Every element exactly want (rounded to the dtype). */
static void check_exact(const ms_tensor *t, int64_t n, const double *want)
{
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(ms_tensor_numel(t), n);
    ms_dtype dt = ms_tensor_dtype(t);
    for (int64_t i = 0; i < n; i++) {
        double w = rd(dt, want[i]);
        ck_assert_msg(at(t, i) == w || (isnan(w) && isnan(at(t, i))),
                      "%s element %lld is %.17g, expected %.17g", ms_dtype_name(dt),
                      (long long)i, at(t, i), w);
    }
}

static void check_error(ms_status want, const char *fn)
{
    const char *msg = NULL;
    ms_status st = ms_last_error(&msg);
    ck_assert_msg(st == want, "status %d (%s), expected %d; message: %s", (int)st,
                  ms_status_string(st), (int)want, msg ? msg : "(null)");
    if (fn)
        ck_assert_msg(strstr(msg, fn) != NULL, "message '%s' does not name %s", msg, fn);
    ms_clear_error();
}

static void check_no_error(void)
{
    const char *msg;
    ms_status st = ms_last_error(&msg);
    ck_assert_msg(st == MS_OK, "unexpected error %d: %s", (int)st, msg);
}

/* Flat index of a broadcast operand for output multi-index idx. */
static int64_t bindex(int nout, const int64_t *idx, int nd, const int64_t *shape)
{
    int64_t off = 0;
    for (int i = 0; i < nd; i++) {
        int64_t j = idx[nout - nd + i];
        off = off * shape[i] + (shape[i] == 1 ? 0 : j);
    }
    return off;
}

static void unravel(int64_t flat, int nd, const int64_t *shape, int64_t *idx)
{
    for (int i = nd - 1; i >= 0; i--) {
        idx[i] = shape[i] ? flat % shape[i] : 0;
        flat = shape[i] ? flat / shape[i] : 0;
    }
}

/* ------------------------------------------------------------- unary */

typedef double (*dfn)(double);
static double d_neg(double x) { return -x; }
static double d_sign(double x) { return x > 0 ? 1 : x < 0 ? -1 : 0; }
static double d_square(double x) { return x * x; }
static double d_recip(double x) { return 1 / x; }
static double d_sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double d_relu(double x) { return x > 0 ? x : 0; }

START_TEST(unary_values)
{
    ms_dtype dt = dtypes[_i];
    const double x[6] = {-2, -0.5, 0, 0.75, 3, -0.0};
    const double pos[5] = {0.25, 0.5, 1, 2, 4.5};
    const double nz[5] = {-2, -0.5, 0.75, 3, 4};
    int64_t s6[2] = {2, 3}, s5[1] = {5};
    ms_tensor *tx = mk(dt, 2, s6, x), *tp = mk(dt, 1, s5, pos), *tn = mk(dt, 1, s5, nz);
    struct {
        ms_tensor *(*op)(const ms_tensor *);
        dfn ref;
        int input; /* 0: x, 1: pos, 2: nz */
    } cases[] = {
        {ms_neg, d_neg, 0},         {ms_abs, fabs, 0},       {ms_sign, d_sign, 0},
        {ms_exp, exp, 0},           {ms_log, log, 1},        {ms_sqrt, sqrt, 1},
        {ms_square, d_square, 0},   {ms_reciprocal, d_recip, 2},
        {ms_tanh, tanh, 0},         {ms_sigmoid, d_sigmoid, 0},
        {ms_relu, d_relu, 0},       {ms_sin, sin, 0},        {ms_cos, cos, 0},
        {ms_exp, exp, 1},           {ms_sin, sin, 2},        {ms_tanh, tanh, 2},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        const double *in = cases[c].input == 0 ? x : cases[c].input == 1 ? pos : nz;
        ms_tensor *t = cases[c].input == 0 ? tx : cases[c].input == 1 ? tp : tn;
        int64_t n = ms_tensor_numel(t);
        ms_tensor *y = cases[c].op(t);
        check_shape(y, ms_tensor_ndim(t), ms_tensor_shape(t));
        ck_assert_int_eq(ms_tensor_dtype(y), dt);
        double want[6];
        for (int64_t i = 0; i < n; i++)
            want[i] = cases[c].ref(rd(dt, in[i]));
        check_close(y, n, want);
    }
    /* exact special values */
    ms_tensor *sg = ms_sign(tx);
    check_exact(sg, 6, (double[]){-1, -1, 0, 1, 1, 0});
    ck_assert(!signbit(at(sg, 2)));
    check_exact(ms_relu(tx), 6, (double[]){0, 0, 0, 0.75, 3, 0});
    check_exact(ms_abs(tx), 6, (double[]){2, 0.5, 0, 0.75, 3, 0});
    check_exact(ms_neg(tx), 6, (double[]){2, 0.5, -0.0, -0.75, -3, 0});
    ms_tensor *z = mk(dt, 1, (int64_t[]){2}, (double[]){0, -1});
    ck_assert(at(ms_log(z), 0) == -INFINITY);
    ck_assert(isnan(at(ms_log(z), 1)));
    ck_assert(isnan(at(ms_sqrt(z), 1)));
    check_exact(ms_reciprocal(z), 2, (double[]){INFINITY, -1});
    /* sigmoid is stable at large |x| */
    const double big[6] = {-1000, -100, -30, 30, 100, 1000};
    ms_tensor *sb = ms_sigmoid(mk(dt, 1, (int64_t[]){6}, big));
    for (int i = 0; i < 6; i++)
        ck_assert_msg(isfinite(at(sb, i)), "sigmoid(%g) = %g", big[i], at(sb, i));
    ck_assert(at(sb, 0) == 0.0);
    ck_assert(at(sb, 5) == 1.0);
    ck_assert(at(sb, 4) == 1.0);
    ck_assert(close_to(at(sb, 2), 1 / (1 + exp(30.0)), dt));
    ck_assert(close_to(at(sb, 1), exp(-100.0) / (1 + exp(-100.0)), dt) || dt == MS_F32);
    ck_assert(at(sb, 1) >= 0 && at(sb, 1) < 1e-40);
    ck_assert(close_to(at(sb, 3), 1 / (1 + exp(-30.0)), dt));
    /* 0-d and empty inputs keep their shape */
    ms_tensor *s0 = ms_exp(ms_scalar(dt, 1));
    check_shape(s0, 0, NULL);
    check_close(s0, 1, (double[]){exp(1.0)});
    check_shape(ms_tanh(ms_zeros(dt, 2, (int64_t[]){0, 3})), 2, (int64_t[]){0, 3});
    check_no_error();
}
END_TEST

/* ------------------------------------------------------------ binary */

typedef ms_tensor *(*bop)(const ms_tensor *, const ms_tensor *);
static double d_add(double a, double b) { return a + b; }
static double d_sub(double a, double b) { return a - b; }
static double d_mul(double a, double b) { return a * b; }
static double d_div(double a, double b) { return a / b; }
static double d_max(double a, double b) { return a > b ? a : b; }
static double d_min(double a, double b) { return a < b ? a : b; }

START_TEST(binary_same_shape)
{
    ms_dtype dt = dtypes[_i];
    int64_t s[2] = {2, 2};
    ms_tensor *a = mk(dt, 2, s, (double[]){1.5, -2, 3, 0.5});
    ms_tensor *b = mk(dt, 2, s, (double[]){0.5, 4, -1.5, 2});
    check_shape(ms_add(a, b), 2, s);
    check_exact(ms_add(a, b), 4, (double[]){2, 2, 1.5, 2.5});
    check_exact(ms_sub(a, b), 4, (double[]){1, -6, 4.5, -1.5});
    check_exact(ms_mul(a, b), 4, (double[]){0.75, -8, -4.5, 1});
    check_exact(ms_div(a, b), 4, (double[]){3, -0.5, -2, 0.25});
    check_exact(ms_maximum(a, b), 4, (double[]){1.5, 4, 3, 2});
    check_exact(ms_minimum(a, b), 4, (double[]){0.5, -2, -1.5, 0.5});
    ms_tensor *pa = mk(dt, 2, s, (double[]){1.5, 2, 3, 0.5});
    ms_tensor *pb = mk(dt, 2, s, (double[]){2, -1, 0.5, 3});
    check_close(ms_pow(pa, pb), 4, (double[]){2.25, 0.5, sqrt(3.0), 0.125});
    check_close(ms_div(a, mk(dt, 2, s, (double[]){3, 7, 3, 7})), 4,
                (double[]){rd(dt, 1.5) / 3, -2.0 / 7, 1, 0.5 / 7});
    check_exact(ms_div(a, ms_zeros(dt, 2, s)), 4, (double[]){INFINITY, -INFINITY, INFINITY,
                                                              INFINITY});
    ck_assert_int_eq(ms_tensor_dtype(ms_add(a, b)), dt);
    check_no_error();
}
END_TEST

START_TEST(comparisons)
{
    ms_dtype dt = dtypes[_i];
    int64_t s[1] = {5};
    ms_tensor *a = mk(dt, 1, s, (double[]){1, 2, 3, 4, -0.5});
    ms_tensor *b = mk(dt, 1, s, (double[]){1, 3, 2, 4, 0.5});
    check_exact(ms_equal(a, b), 5, (double[]){1, 0, 0, 1, 0});
    check_exact(ms_not_equal(a, b), 5, (double[]){0, 1, 1, 0, 1});
    check_exact(ms_less(a, b), 5, (double[]){0, 1, 0, 0, 1});
    check_exact(ms_less_equal(a, b), 5, (double[]){1, 1, 0, 1, 1});
    check_exact(ms_greater(a, b), 5, (double[]){0, 0, 1, 0, 0});
    check_exact(ms_greater_equal(a, b), 5, (double[]){1, 0, 1, 1, 0});
    ck_assert_int_eq(ms_tensor_dtype(ms_equal(a, b)), dt);
    /* broadcast against a 0-d threshold */
    ms_tensor *th = ms_scalar(dt, 2);
    check_exact(ms_greater(a, th), 5, (double[]){0, 0, 1, 1, 0});
    check_exact(ms_less_equal(th, a), 5, (double[]){0, 1, 1, 1, 0});
    /* NaN compares unequal to everything */
    ms_tensor *n = mk(dt, 1, (int64_t[]){2}, (double[]){NAN, 1});
    check_exact(ms_equal(n, n), 2, (double[]){0, 1});
    check_exact(ms_not_equal(n, n), 2, (double[]){1, 0});
    check_exact(ms_less(n, n), 2, (double[]){0, 0});
    check_exact(ms_greater_equal(n, n), 2, (double[]){0, 1});
    check_no_error();
}
END_TEST

/* out = op(a, b) checked element by element against a naive broadcast loop */
static void check_broadcast(ms_dtype dt, bop op, double (*ref)(double, double), int na,
                            const int64_t *sa, int nb, const int64_t *sb, int nout,
                            const int64_t *sout)
{
    int64_t ca = count(na, sa), cb = count(nb, sb);
    double *va = malloc(sizeof(double) * (size_t)(ca + 1));
    double *vb = malloc(sizeof(double) * (size_t)(cb + 1));
    for (int64_t i = 0; i < ca; i++)
        va[i] = (double)(i % 13) - 4.5;
    for (int64_t i = 0; i < cb; i++)
        vb[i] = (double)((i * 5) % 7) * 0.25 + 1;
    ms_tensor *a = mk(dt, na, sa, va), *b = mk(dt, nb, sb, vb);
    ms_tensor *y = op(a, b);
    check_shape(y, nout, sout);
    int64_t n = count(nout, sout), idx[MS_MAX_DIMS];
    for (int64_t i = 0; i < n; i++) {
        unravel(i, nout, sout, idx);
        double want = ref(rd(dt, va[bindex(nout, idx, na, sa)]), rd(dt, vb[bindex(nout, idx, nb, sb)]));
        ck_assert_msg(close_to(at(y, i), want, dt), "element %lld: %.17g, expected %.17g",
                      (long long)i, at(y, i), want);
    }
    free(va);
    free(vb);
}

START_TEST(broadcasting)
{
    ms_dtype dt = dtypes[_i];
    /* a 0-d scalar with a matrix, both orders */
    ms_tensor *m = mk(dt, 2, (int64_t[]){2, 3}, (double[]){1, 2, 3, 4, 5, 6});
    ms_tensor *s = ms_scalar(dt, 10);
    ms_tensor *y = ms_sub(m, s);
    check_shape(y, 2, (int64_t[]){2, 3});
    check_exact(y, 6, (double[]){-9, -8, -7, -6, -5, -4});
    y = ms_sub(s, m);
    check_shape(y, 2, (int64_t[]){2, 3});
    check_exact(y, 6, (double[]){9, 8, 7, 6, 5, 4});
    check_shape(ms_add(s, s), 0, NULL);
    /* (3,1) + (1,4) */
    ms_tensor *c = mk(dt, 2, (int64_t[]){3, 1}, (double[]){10, 20, 30});
    ms_tensor *r = mk(dt, 2, (int64_t[]){1, 4}, (double[]){1, 2, 3, 4});
    y = ms_add(c, r);
    check_shape(y, 2, (int64_t[]){3, 4});
    check_exact(y, 12, (double[]){11, 12, 13, 14, 21, 22, 23, 24, 31, 32, 33, 34});
    y = ms_sub(r, c);
    check_exact(y, 12, (double[]){-9, -8, -7, -6, -19, -18, -17, -16, -29, -28, -27, -26});
    /* a row vector against a matrix */
    y = ms_mul(m, mk(dt, 1, (int64_t[]){3}, (double[]){1, 0.5, -1}));
    check_exact(y, 6, (double[]){1, 1, -3, 4, 2.5, -6});
    /* size-0 dims */
    check_shape(ms_add(ms_zeros(dt, 2, (int64_t[]){0, 3}), ms_ones(dt, 2, (int64_t[]){1, 3})),
                2, (int64_t[]){0, 3});
    check_shape(ms_mul(ms_ones(dt, 1, (int64_t[]){3}), ms_zeros(dt, 2, (int64_t[]){0, 3})), 2,
                (int64_t[]){0, 3});
    check_shape(ms_add(ms_zeros(dt, 2, (int64_t[]){2, 0}), ms_ones(dt, 2, (int64_t[]){2, 1})),
                2, (int64_t[]){2, 0});
    check_shape(ms_add(ms_zeros(dt, 1, (int64_t[]){0}), ms_scalar(dt, 1)), 1, (int64_t[]){0});
    check_shape(ms_greater(ms_zeros(dt, 3, (int64_t[]){1, 0, 2}),
                           ms_zeros(dt, 3, (int64_t[]){4, 1, 1})),
                3, (int64_t[]){4, 0, 2});
    /* size-1 dims and rank promotion, checked against a naive loop */
    check_broadcast(dt, ms_add, d_add, 1, (int64_t[]){1}, 1, (int64_t[]){5}, 1, (int64_t[]){5});
    check_broadcast(dt, ms_mul, d_mul, 3, (int64_t[]){2, 1, 3}, 3, (int64_t[]){1, 4, 1}, 3,
                    (int64_t[]){2, 4, 3});
    check_broadcast(dt, ms_sub, d_sub, 2, (int64_t[]){4, 1}, 3, (int64_t[]){2, 1, 5}, 3,
                    (int64_t[]){2, 4, 5});
    check_broadcast(dt, ms_div, d_div, 4, (int64_t[]){3, 1, 2, 1}, 2, (int64_t[]){1, 1}, 4,
                    (int64_t[]){3, 1, 2, 1});
    check_broadcast(dt, ms_maximum, d_max, 2, (int64_t[]){1, 6}, 3, (int64_t[]){2, 3, 1}, 3,
                    (int64_t[]){2, 3, 6});
    /* rank 8, each operand broadcast on every other axis */
    int64_t s8a[8] = {2, 1, 2, 1, 2, 1, 2, 1}, s8b[8] = {1, 2, 1, 2, 1, 2, 1, 2},
            s8[8] = {2, 2, 2, 2, 2, 2, 2, 2};
    check_broadcast(dt, ms_add, d_add, 8, s8a, 8, s8b, 8, s8);
    check_broadcast(dt, ms_minimum, d_min, 8, s8b, 8, s8a, 8, s8);
    int64_t s8c[8] = {3, 1, 1, 2, 1, 1, 1, 3}, s8d[8] = {1, 2, 3, 1, 2, 1, 2, 1},
            s8e[8] = {3, 2, 3, 2, 2, 1, 2, 3};
    check_broadcast(dt, ms_sub, d_sub, 8, s8c, 8, s8d, 8, s8e);
    check_broadcast(dt, ms_mul, d_mul, 8, s8c, 3, (int64_t[]){1, 2, 1}, 8,
                    (int64_t[]){3, 1, 1, 2, 1, 1, 2, 3});
    check_no_error();
    /* shapes that do not broadcast */
    ck_assert_ptr_null(ms_add(m, mk(dt, 2, (int64_t[]){3, 2}, (double[]){1, 2, 3, 4, 5, 6})));
    const char *msg;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "ms_add") && strstr(msg, "(2,3)") && strstr(msg, "(3,2)"),
                  "message: %s", msg);
    ms_clear_error();
    ck_assert_ptr_null(ms_mul(ms_ones(dt, 1, (int64_t[]){3}), ms_ones(dt, 1, (int64_t[]){4})));
    check_error(MS_ERR_SHAPE, "ms_mul");
    ck_assert_ptr_null(ms_less(ms_ones(dt, 2, (int64_t[]){0, 3}),
                               ms_ones(dt, 2, (int64_t[]){2, 3})));
    check_error(MS_ERR_SHAPE, "ms_less");
    ck_assert_ptr_null(ms_pow(ms_ones(dt, 3, (int64_t[]){2, 1, 3}),
                              ms_ones(dt, 3, (int64_t[]){1, 4, 2})));
    check_error(MS_ERR_SHAPE, "ms_pow");
}
END_TEST

/* ------------------------------------------------------ tensor-scalar */

START_TEST(tensor_scalar)
{
    ms_dtype dt = dtypes[_i];
    int64_t s[2] = {2, 2};
    ms_tensor *x = mk(dt, 2, s, (double[]){-2, 0.5, 3, 4});
    check_shape(ms_add_scalar(x, 1.5), 2, s);
    check_exact(ms_add_scalar(x, 1.5), 4, (double[]){-0.5, 2, 4.5, 5.5});
    check_exact(ms_sub_scalar(x, 1.5), 4, (double[]){-3.5, -1, 1.5, 2.5});
    check_exact(ms_rsub_scalar(x, 1.5), 4, (double[]){3.5, 1, -1.5, -2.5});
    check_exact(ms_mul_scalar(x, -2), 4, (double[]){4, -1, -6, -8});
    check_exact(ms_div_scalar(x, 4), 4, (double[]){-0.5, 0.125, 0.75, 1});
    check_exact(ms_rdiv_scalar(x, 3), 4, (double[]){-1.5, 6, 1, 0.75});
    check_exact(ms_pow_scalar(x, 2), 4, (double[]){4, 0.25, 9, 16});
    check_exact(ms_pow_scalar(x, 3), 4, (double[]){-8, 0.125, 27, 64});
    check_exact(ms_pow_scalar(x, 0), 4, (double[]){1, 1, 1, 1});
    check_close(ms_pow_scalar(ms_abs(x), 0.5), 4, (double[]){sqrt(2.0), sqrt(0.5), sqrt(3.0), 2});
    check_exact(ms_pow_scalar(x, -1), 4, (double[]){-0.5, 2, 1.0 / 3.0, 0.25});
    check_exact(ms_maximum_scalar(x, 0.5), 4, (double[]){0.5, 0.5, 3, 4});
    check_exact(ms_minimum_scalar(x, 0.5), 4, (double[]){-2, 0.5, 0.5, 0.5});
    check_exact(ms_maximum_scalar(x, 3.5), 4, (double[]){3.5, 3.5, 3.5, 4});
    /* the scalar is rounded to the dtype the way an element would be */
    check_exact(ms_add_scalar(ms_zeros(dt, 1, (int64_t[]){1}), 0.1), 1, (double[]){0.1});
    check_close(ms_mul_scalar(mk(dt, 1, (int64_t[]){2}, (double[]){3, -1}), 1.0 / 3.0), 2,
                (double[]){dt == MS_F32 ? (double)(3.0f * (float)(1.0 / 3.0)) : 1.0,
                           -rd(dt, 1.0 / 3.0)});
    check_close(ms_rdiv_scalar(mk(dt, 1, (int64_t[]){2}, (double[]){3, -7}), 1), 2,
                (double[]){1.0 / 3.0, -1.0 / 7.0});
    /* 0-d and empty */
    ms_tensor *s0 = ms_rsub_scalar(ms_scalar(dt, 2), 5);
    check_shape(s0, 0, NULL);
    check_exact(s0, 1, (double[]){3});
    check_shape(ms_rdiv_scalar(ms_zeros(dt, 2, (int64_t[]){3, 0}), 1), 2, (int64_t[]){3, 0});
    check_no_error();
}
END_TEST

/* ---------------------------------------------------------- reductions */

typedef ms_tensor *(*rop)(const ms_tensor *, int, const int *, bool);

/* naive reduction of (2,3,4) data over the axes in mask; op 0 sum 1 mean 2 max 3 min */
static void naive_reduce(int op, const double *v, const int64_t *shape, unsigned mask,
                         double *out, int64_t *nout)
{
    int64_t oshape[3];
    for (int d = 0; d < 3; d++)
        oshape[d] = (mask & (1u << d)) ? 1 : shape[d];
    int64_t on = count(3, oshape);
    int64_t cnt = count(3, shape) / on;
    for (int64_t o = 0; o < on; o++)
        out[o] = op == 2 ? -INFINITY : op == 3 ? INFINITY : 0;
    for (int64_t i = 0; i < count(3, shape); i++) {
        int64_t idx[3];
        unravel(i, 3, shape, idx);
        int64_t o = 0;
        for (int d = 0; d < 3; d++)
            o = o * oshape[d] + ((mask & (1u << d)) ? 0 : idx[d]);
        if (op <= 1)
            out[o] += v[i];
        else if (op == 2)
            out[o] = fmax(out[o], v[i]);
        else
            out[o] = fmin(out[o], v[i]);
    }
    if (op == 1)
        for (int64_t o = 0; o < on; o++)
            out[o] /= (double)cnt;
    *nout = on;
}

START_TEST(reductions)
{
    ms_dtype dt = dtypes[_i];
    int64_t shape[3] = {2, 3, 4};
    double v[24];
    for (int i = 0; i < 24; i++)
        v[i] = (double)((i * 7) % 11) - 5 + (i % 3) * 0.25;
    ms_tensor *t = mk(dt, 3, shape, v);
    rop ops[4] = {ms_sum, ms_mean, ms_max, ms_min};
    struct {
        int n;
        int axes[3];
    } sets[] = {{1, {0}},     {1, {1}},     {1, {2}},      {1, {-1}},        {1, {-3}},
                {2, {0, 2}},  {2, {-1, 0}}, {2, {1, 2}},   {2, {-2, -3}},    {3, {0, 1, 2}},
                {3, {2, 0, 1}}, {0, {0}}};
    for (int op = 0; op < 4; op++) {
        for (size_t k = 0; k < sizeof sets / sizeof *sets; k++) {
            unsigned mask = 0;
            for (int j = 0; j < sets[k].n; j++)
                mask |= 1u << ((sets[k].axes[j] + 3) % 3);
            if (sets[k].n == 0)
                mask = 7;
            double want[24];
            int64_t nw;
            naive_reduce(op, v, shape, mask, want, &nw);
            for (int i = 0; i < 24 && op >= 2; i++)
                (void)0;
            for (int keep = 0; keep < 2; keep++) {
                ms_tensor *y = ops[op](t, sets[k].n, sets[k].axes, keep);
                int64_t ws[3];
                int wn = 0;
                for (int d = 0; d < 3; d++) {
                    if (!(mask & (1u << d)))
                        ws[wn++] = shape[d];
                    else if (keep)
                        ws[wn++] = 1;
                }
                check_shape(y, wn, ws);
                double wr[24];
                for (int64_t i = 0; i < nw; i++) /* the inputs as the dtype holds them */
                    wr[i] = want[i];
                if (dt == MS_F32) {
                    double vf[24];
                    for (int i = 0; i < 24; i++)
                        vf[i] = rd(dt, v[i]);
                    naive_reduce(op, vf, shape, mask, wr, &nw);
                }
                check_close(y, nw, wr);
            }
        }
    }
    /* hand-computed cases */
    ms_tensor *m = mk(dt, 2, (int64_t[]){2, 3}, (double[]){1, -2, 3, 4, 5, -6});
    check_exact(ms_sum(m, 1, (int[]){0}, false), 3, (double[]){5, 3, -3});
    check_exact(ms_sum(m, 1, (int[]){1}, false), 2, (double[]){2, 3});
    check_exact(ms_mean(m, 1, (int[]){-1}, true), 2, (double[]){2.0 / 3.0, 1});
    check_shape(ms_mean(m, 1, (int[]){-1}, true), 2, (int64_t[]){2, 1});
    check_exact(ms_max(m, 1, (int[]){1}, false), 2, (double[]){3, 5});
    check_exact(ms_min(m, 1, (int[]){0}, true), 3, (double[]){1, -2, -6});
    ms_tensor *all = ms_sum(m, 0, NULL, false);
    check_shape(all, 0, NULL);
    check_exact(all, 1, (double[]){5});
    ms_tensor *allk = ms_max(m, 0, NULL, true);
    check_shape(allk, 2, (int64_t[]){1, 1});
    check_exact(allk, 1, (double[]){5});
    check_exact(ms_min(m, 2, (int[]){1, 0}, false), 1, (double[]){-6});
    check_exact(ms_mean(m, 0, NULL, false), 1, (double[]){5.0 / 6.0});
    /* a 0-d tensor reduces to itself */
    ms_tensor *s0 = ms_sum(ms_scalar(dt, 2.5), 0, NULL, false);
    check_shape(s0, 0, NULL);
    check_exact(s0, 1, (double[]){2.5});
    check_exact(ms_max(ms_scalar(dt, -1), 0, NULL, true), 1, (double[]){-1});
    /* empty selections: sum is 0, max/min are errors */
    ms_tensor *e = ms_zeros(dt, 2, (int64_t[]){0, 3});
    ms_tensor *se = ms_sum(e, 0, NULL, false);
    check_shape(se, 0, NULL);
    check_exact(se, 1, (double[]){0});
    se = ms_sum(e, 1, (int[]){0}, false);
    check_shape(se, 1, (int64_t[]){3});
    check_exact(se, 3, (double[]){0, 0, 0});
    se = ms_sum(e, 1, (int[]){1}, true);
    check_shape(se, 2, (int64_t[]){0, 1});
    check_shape(ms_max(e, 1, (int[]){1}, false), 1, (int64_t[]){0}); /* nothing to reduce */
    check_no_error();
    ck_assert_ptr_null(ms_max(e, 1, (int[]){0}, false));
    check_error(MS_ERR_SHAPE, "ms_max");
    ck_assert_ptr_null(ms_min(e, 0, NULL, false));
    check_error(MS_ERR_SHAPE, "ms_min");
    ck_assert_ptr_null(ms_max(ms_zeros(dt, 1, (int64_t[]){0}), 0, NULL, true));
    check_error(MS_ERR_SHAPE, "ms_max");
    /* bad axes */
    ck_assert_ptr_null(ms_sum(t, 2, (int[]){1, 1}, false));
    check_error(MS_ERR_RANK, "ms_sum");
    ck_assert_ptr_null(ms_mean(t, 2, (int[]){2, -1}, false));
    check_error(MS_ERR_RANK, "ms_mean");
    ck_assert_ptr_null(ms_max(t, 1, (int[]){3}, false));
    check_error(MS_ERR_RANK, "ms_max");
    ck_assert_ptr_null(ms_min(t, 1, (int[]){-4}, false));
    check_error(MS_ERR_RANK, "ms_min");
    ck_assert_ptr_null(ms_sum(ms_scalar(dt, 1), 1, (int[]){0}, false));
    check_error(MS_ERR_RANK, "ms_sum");
    ck_assert_ptr_null(ms_sum(t, 1, NULL, false));
    check_error(MS_ERR_INVALID_ARG, "ms_sum");
}
END_TEST

/* ------------------------------------------- random cases, bit for bit */

/* The reference backend's elementwise and reduction kernels take faster
 * paths by shape (flat operands, rows, columns with register accumulators,
 * in place); every path must give the bits of the plain definition: each
 * element by the one IEEE operation in the dtype, each reduction accumulated
 * in double over its elements in row-major order.  Random shapes (1-4 dims,
 * sizes 1-40, many of 1, at most 4,096 elements), operands broadcast along
 * random dims or permuted, random axes. */
static uint64_t bw_rng = 88172645463325252ull;
static int bw_rnd(int n)
{
    bw_rng ^= bw_rng << 13, bw_rng ^= bw_rng >> 7, bw_rng ^= bw_rng << 17;
    return (int)(bw_rng % (uint64_t)n);
}

static void bw_shape(int *nd, int64_t *shape)
{
    static const int64_t sizes[] = {1, 1, 2, 3, 5, 8, 10, 16, 17, 25, 33, 37, 40};
    do { /* at most 4,096 elements: quick under the sanitizers too */
        *nd = 1 + bw_rnd(4);
        for (int d = 0; d < *nd; d++)
            shape[d] = sizes[bw_rnd((int)(sizeof sizes / sizeof *sizes))];
    } while (count(*nd, shape) > 4096);
}

/* Equal values, or both NaN (0/0 among the random divisions). */
static bool same(double x, double w) { return x == w || (x != x && w != w); }

/* x as dtype dt, at flat index i (of a contiguous tensor) */
static double bw_val(ms_dtype dt, int64_t i) { return rd(dt, (double)((i * 7919) % 2003 - 1001) / 97.0); }

START_TEST(random_bitwise)
{
    const int ops = 6; /* add sub mul div maximum minimum */
    bop fns[6] = {ms_add, ms_sub, ms_mul, ms_div, ms_maximum, ms_minimum};
    rop rfns[4] = {ms_sum, ms_mean, ms_max, ms_min};
    for (int rep = 0; rep < 400; rep++) {
        ms_dtype dt = dtypes[rep % 2];
        int nd;
        int64_t shape[4], sa[4], sb[4];
        bw_shape(&nd, shape);
        /* operands: each dim kept or 1 (broadcast); b sometimes permuted */
        for (int d = 0; d < nd; d++) {
            sa[d] = bw_rnd(4) ? shape[d] : 1;
            sb[d] = bw_rnd(4) ? shape[d] : 1;
            shape[d] = sa[d] > sb[d] ? sa[d] : sb[d]; /* the broadcast shape */
        }
        int64_t na = count(nd, sa), nb = count(nd, sb), n = count(nd, shape);
        double *va = malloc(sizeof(double) * (size_t)na), *vb = malloc(sizeof(double) * (size_t)nb);
        for (int64_t i = 0; i < na; i++)
            va[i] = bw_val(dt, i);
        for (int64_t i = 0; i < nb; i++)
            vb[i] = bw_val(dt, i + 5) + (bw_val(dt, i) == 0 ? 0.5 : 0);
        ms_tensor *a = mk(dt, nd, sa, va), *b = NULL;
        const bool perm = nd >= 2 && bw_rnd(3) == 0;
        if (perm) { /* b built transposed, then permuted back: a strided view */
            int64_t tb[4];
            int p[4];
            for (int d = 0; d < nd; d++)
                tb[d] = sb[nd - 1 - d], p[d] = nd - 1 - d;
            /* vb in b's logical order, stored transposed */
            double *vt = malloc(sizeof(double) * (size_t)nb);
            int64_t idx[4];
            for (int64_t i = 0; i < nb; i++) {
                unravel(i, nd, sb, idx);
                int64_t o = 0;
                for (int d = 0; d < nd; d++)
                    o = o * tb[d] + idx[nd - 1 - d];
                vt[o] = vb[i];
            }
            b = ms_permute(mk(dt, nd, tb, vt), p);
            free(vt);
        } else {
            b = mk(dt, nd, sb, vb);
        }
        ck_assert_ptr_nonnull(b);
        const int op = bw_rnd(ops);
        ms_tensor *y = fns[op](a, b);
        ck_assert_ptr_nonnull(y);
        int64_t idx[4];
        for (int64_t i = 0; i < n; i++) {
            unravel(i, nd, shape, idx);
            double u = va[bindex(nd, idx, nd, sa)], v = vb[bindex(nd, idx, nd, sb)], w;
            if (dt == MS_F32) {
                float fu = (float)u, fv = (float)v;
                w = op == 0 ? fu + fv : op == 1 ? fu - fv : op == 2 ? fu * fv : op == 3 ? fu / fv
                    : op == 4 ? (fu > fv ? fu : fv) : (fu < fv ? fu : fv);
            } else {
                w = op == 0 ? u + v : op == 1 ? u - v : op == 2 ? u * v : op == 3 ? u / v
                    : op == 4 ? (u > v ? u : v) : (u < v ? u : v);
            }
            ck_assert_msg(same(at(y, i), w),
                          "rep %d op %d%s shape (%lld,%lld,%lld,%lld) a (%lld,%lld,%lld,%lld) b "
                          "(%lld,%lld,%lld,%lld) element %lld: %.17g, expected %.17g",
                          rep, op, perm ? " (b permuted)" : "", (long long)shape[0],
                          (long long)(nd > 1 ? shape[1] : 0), (long long)(nd > 2 ? shape[2] : 0),
                          (long long)(nd > 3 ? shape[3] : 0), (long long)sa[0],
                          (long long)(nd > 1 ? sa[1] : 0), (long long)(nd > 2 ? sa[2] : 0),
                          (long long)(nd > 3 ? sa[3] : 0), (long long)sb[0],
                          (long long)(nd > 1 ? sb[1] : 0), (long long)(nd > 2 ? sb[2] : 0),
                          (long long)(nd > 3 ? sb[3] : 0), (long long)i, at(y, i), w);
        }
        /* a reduction of y over random axes, accumulated in double in order */
        int axes[4], nax = 0;
        unsigned mask = 0;
        for (int d = 0; d < nd; d++)
            if (bw_rnd(2))
                axes[nax++] = d, mask |= 1u << d;
        if (!nax)
            axes[nax++] = nd - 1, mask |= 1u << (nd - 1);
        const int rop_i = bw_rnd(4);
        ms_tensor *r = rfns[rop_i](y, nax, axes, false);
        ck_assert_ptr_nonnull(r);
        int64_t oshape[4], on = 1, cnt = 1;
        for (int d = 0; d < nd; d++) {
            oshape[d] = (mask >> d) & 1 ? 1 : shape[d];
            on *= oshape[d];
            cnt *= (mask >> d) & 1 ? shape[d] : 1;
        }
        double *acc = malloc(sizeof(double) * (size_t)on);
        for (int64_t o = 0; o < on; o++)
            acc[o] = rop_i == 2 ? -INFINITY : rop_i == 3 ? INFINITY : 0;
        for (int64_t i = 0; i < n; i++) { /* row-major: each output's terms in order */
            unravel(i, nd, shape, idx);
            int64_t o = 0;
            for (int d = 0; d < nd; d++)
                o = o * oshape[d] + ((mask >> d) & 1 ? 0 : idx[d]);
            double v = at(y, i);
            acc[o] = rop_i <= 1 ? acc[o] + v : rop_i == 2 ? (v > acc[o] ? v : acc[o])
                                                          : (v < acc[o] ? v : acc[o]);
        }
        for (int64_t o = 0; o < on; o++) {
            double w = rop_i == 1 ? acc[o] / (double)cnt : acc[o];
            w = rd(dt, w);
            ck_assert_msg(same(at(r, o), w), "rep %d reduce %d mask %u output %lld: %.17g, expected %.17g",
                          rep, rop_i, mask, (long long)o, at(r, o), w);
        }
        free(acc);
        free(va);
        free(vb);
    }
}
END_TEST

/* --------------------------------------------------------------- matmul */

/* naive C = A @ B with NumPy's batch broadcasting, both operands rank >= 2 */
static void check_matmul(ms_dtype dt, int na, const int64_t *sa, int nb, const int64_t *sb,
                         int nout, const int64_t *sout)
{
    int64_t ca = count(na, sa), cb = count(nb, sb);
    double *va = malloc(sizeof(double) * (size_t)(ca + 1));
    double *vb = malloc(sizeof(double) * (size_t)(cb + 1));
    for (int64_t i = 0; i < ca; i++)
        va[i] = (double)((i * 3) % 7) - 3 + 0.5 * (double)(i % 2);
    for (int64_t i = 0; i < cb; i++)
        vb[i] = (double)((i * 5) % 9) * 0.25 - 1;
    ms_tensor *a = mk(dt, na, sa, va), *b = mk(dt, nb, sb, vb);
    ms_tensor *y = ms_matmul(a, b);
    check_shape(y, nout, sout);
    int64_t m = sa[na - 2], k = sa[na - 1], n = sb[nb - 1];
    int nbatch = nout - 2;
    int64_t ntot = count(nout, sout), idx[MS_MAX_DIMS];
    for (int64_t f = 0; f < ntot; f++) {
        unravel(f, nout, sout, idx);
        /* batch offsets of a and b */
        int64_t oa = bindex(nbatch, idx, na - 2, sa), ob = bindex(nbatch, idx, nb - 2, sb);
        int64_t i = idx[nout - 2], j = idx[nout - 1];
        double want = 0;
        for (int64_t p = 0; p < k; p++)
            want += va[(oa * m + i) * k + p] * vb[(ob * k + p) * n + j];
        ck_assert_msg(fabs(at(y, f) - want) <= (dt == MS_F32 ? 1e-5 : 1e-12) * (1 + fabs(want)),
                      "matmul element %lld: %.17g, expected %.17g", (long long)f, at(y, f), want);
    }
    free(va);
    free(vb);
}

START_TEST(matmul_cases)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *a = mk(dt, 2, (int64_t[]){2, 3}, (double[]){1, 2, 3, 4, 5, 6});
    ms_tensor *b = mk(dt, 2, (int64_t[]){3, 2}, (double[]){7, 8, 9, 10, 11, 12});
    ms_tensor *y = ms_matmul(a, b);
    check_shape(y, 2, (int64_t[]){2, 2});
    check_exact(y, 4, (double[]){58, 64, 139, 154});
    y = ms_matmul(b, a);
    check_shape(y, 2, (int64_t[]){3, 3});
    check_exact(y, 9, (double[]){39, 54, 69, 49, 68, 87, 59, 82, 105});
    /* 1-d @ 2-d, 2-d @ 1-d, 1-d @ 1-d */
    ms_tensor *v3 = mk(dt, 1, (int64_t[]){3}, (double[]){1, -1, 2});
    y = ms_matmul(v3, b);
    check_shape(y, 1, (int64_t[]){2});
    check_exact(y, 2, (double[]){20, 22});
    y = ms_matmul(a, v3);
    check_shape(y, 1, (int64_t[]){2});
    check_exact(y, 2, (double[]){5, 11});
    y = ms_matmul(v3, mk(dt, 1, (int64_t[]){3}, (double[]){0.5, 2, -0.25}));
    check_shape(y, 0, NULL);
    check_exact(y, 1, (double[]){-2});
    /* 1-d with batched */
    ms_tensor *b3 = mk(dt, 3, (int64_t[]){2, 3, 2},
                       (double[]){1, 0, 0, 1, 1, 1, 2, 0, 0, 2, 1, -1});
    y = ms_matmul(v3, b3);
    check_shape(y, 2, (int64_t[]){2, 2});
    check_exact(y, 4, (double[]){3, 1, 4, -4});
    y = ms_matmul(b3, mk(dt, 1, (int64_t[]){2}, (double[]){1, 2}));
    check_shape(y, 2, (int64_t[]){2, 3});
    check_exact(y, 6, (double[]){1, 2, 3, 2, 4, -1});
    /* batched and broadcast batches, against a naive loop */
    check_matmul(dt, 3, (int64_t[]){2, 3, 4}, 3, (int64_t[]){2, 4, 5}, 3, (int64_t[]){2, 3, 5});
    check_matmul(dt, 4, (int64_t[]){2, 1, 3, 4}, 3, (int64_t[]){5, 4, 2}, 4,
                 (int64_t[]){2, 5, 3, 2});
    check_matmul(dt, 2, (int64_t[]){3, 4}, 3, (int64_t[]){2, 4, 5}, 3, (int64_t[]){2, 3, 5});
    check_matmul(dt, 3, (int64_t[]){2, 3, 4}, 2, (int64_t[]){4, 5}, 3, (int64_t[]){2, 3, 5});
    check_matmul(dt, 3, (int64_t[]){1, 3, 4}, 3, (int64_t[]){3, 4, 2}, 3, (int64_t[]){3, 3, 2});
    check_matmul(dt, 4, (int64_t[]){3, 1, 2, 2}, 4, (int64_t[]){1, 2, 2, 3}, 4,
                 (int64_t[]){3, 2, 2, 3});
    check_matmul(dt, 2, (int64_t[]){17, 33}, 2, (int64_t[]){33, 19}, 2, (int64_t[]){17, 19});
    /* empty operands: (0,3)@(3,2) is (0,2); (2,0)@(0,3) is zeros */
    check_shape(ms_matmul(ms_ones(dt, 2, (int64_t[]){0, 3}), ms_ones(dt, 2, (int64_t[]){3, 2})),
                2, (int64_t[]){0, 2});
    y = ms_matmul(ms_ones(dt, 2, (int64_t[]){2, 0}), ms_ones(dt, 2, (int64_t[]){0, 3}));
    check_shape(y, 2, (int64_t[]){2, 3});
    check_exact(y, 6, (double[]){0, 0, 0, 0, 0, 0});
    check_no_error();
    /* errors */
    ck_assert_ptr_null(ms_matmul(ms_ones(dt, 2, (int64_t[]){3, 4}), ms_ones(dt, 2, (int64_t[]){5, 2})));
    const char *msg;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "ms_matmul") && strstr(msg, "(3,4)") && strstr(msg, "(5,2)"),
                  "message: %s", msg);
    ms_clear_error();
    ck_assert_ptr_null(ms_matmul(v3, ms_ones(dt, 1, (int64_t[]){4})));
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "ms_matmul") && strstr(msg, "(3)") && strstr(msg, "(4)"),
                  "message: %s", msg);
    ms_clear_error();
    ck_assert_ptr_null(ms_matmul(a, ms_ones(dt, 1, (int64_t[]){2})));
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "ms_matmul") && strstr(msg, "(2,3)") && strstr(msg, "(2)"),
                  "message: %s", msg);
    ms_clear_error();
    ck_assert_ptr_null(ms_matmul(ms_ones(dt, 3, (int64_t[]){2, 3, 4}),
                                 ms_ones(dt, 3, (int64_t[]){3, 4, 5})));
    check_error(MS_ERR_SHAPE, "ms_matmul");
    ck_assert_ptr_null(ms_matmul(ms_scalar(dt, 2), a));
    check_error(MS_ERR_RANK, "ms_matmul");
}
END_TEST

/* --------------------------------------------------------------- layout */

START_TEST(transpose_permute)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *m = mk(dt, 2, (int64_t[]){2, 3}, (double[]){1, 2, 3, 4, 5, 6});
    ms_tensor *t = ms_transpose(m);
    check_shape(t, 2, (int64_t[]){3, 2});
    check_exact(t, 6, (double[]){1, 4, 2, 5, 3, 6});
    check_exact(ms_transpose(t), 6, (double[]){1, 2, 3, 4, 5, 6});
    double v[24];
    for (int i = 0; i < 24; i++)
        v[i] = i;
    ms_tensor *x = mk(dt, 3, (int64_t[]){2, 3, 4}, v);
    ms_tensor *xt = ms_transpose(x);
    check_shape(xt, 3, (int64_t[]){4, 3, 2});
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 2; k++)
                ck_assert(at(xt, (i * 3 + j) * 2 + k) == k * 12 + j * 4 + i);
    ms_tensor *p = ms_permute(x, (int[]){1, 2, 0});
    check_shape(p, 3, (int64_t[]){3, 4, 2});
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < 2; k++)
                ck_assert(at(p, (i * 4 + j) * 2 + k) == k * 12 + i * 4 + j);
    check_exact(ms_permute(x, (int[]){0, 1, 2}), 24, v);
    check_shape(ms_transpose(ms_scalar(dt, 3)), 0, NULL);
    check_exact(ms_transpose(mk(dt, 1, (int64_t[]){3}, (double[]){1, 2, 3})), 3,
                (double[]){1, 2, 3});
    check_shape(ms_transpose(ms_zeros(dt, 2, (int64_t[]){0, 4})), 2, (int64_t[]){4, 0});
    check_no_error();
    ck_assert_ptr_null(ms_permute(x, (int[]){0, 0, 1}));
    check_error(MS_ERR_RANK, "ms_permute");
    ck_assert_ptr_null(ms_permute(x, (int[]){0, 1, 3}));
    check_error(MS_ERR_RANK, "ms_permute");
    ck_assert_ptr_null(ms_permute(x, (int[]){-1, 0, 1}));
    check_error(MS_ERR_RANK, "ms_permute");
    ck_assert_ptr_null(ms_permute(x, NULL));
    check_error(MS_ERR_NULL_ARG, "ms_permute");
}
END_TEST

START_TEST(concat_stack)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *a = mk(dt, 2, (int64_t[]){2, 2}, (double[]){1, 2, 3, 4});
    ms_tensor *b = mk(dt, 2, (int64_t[]){2, 3}, (double[]){5, 6, 7, 8, 9, 10});
    ms_tensor *ab[2] = {a, b};
    ms_tensor *y = ms_concat(2, ab, 1);
    check_shape(y, 2, (int64_t[]){2, 5});
    check_exact(y, 10, (double[]){1, 2, 5, 6, 7, 3, 4, 8, 9, 10});
    y = ms_concat(2, ab, -1);
    check_exact(y, 10, (double[]){1, 2, 5, 6, 7, 3, 4, 8, 9, 10});
    ms_tensor *c = mk(dt, 2, (int64_t[]){1, 2}, (double[]){-1, -2});
    ms_tensor *e = ms_zeros(dt, 2, (int64_t[]){0, 2});
    ms_tensor *ace[4] = {a, c, e, a};
    y = ms_concat(4, ace, 0);
    check_shape(y, 2, (int64_t[]){5, 2});
    check_exact(y, 10, (double[]){1, 2, 3, 4, -1, -2, 1, 2, 3, 4});
    y = ms_concat(1, &b, 0);
    check_shape(y, 2, (int64_t[]){2, 3});
    check_exact(y, 6, (double[]){5, 6, 7, 8, 9, 10});
    ms_tensor *ee[2] = {e, e};
    check_shape(ms_concat(2, ee, 0), 2, (int64_t[]){0, 2});
    check_no_error();
    ck_assert_ptr_null(ms_concat(2, ab, 0)); /* (2,2) and (2,3) on axis 0 */
    const char *msg;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "ms_concat") && strstr(msg, "(2,3)") && strstr(msg, "(2,2)"),
                  "message: %s", msg);
    ms_clear_error();
    ms_tensor *ac[2] = {a, c};
    ck_assert_ptr_null(ms_concat(2, ac, 1));
    check_error(MS_ERR_SHAPE, "ms_concat");
    ms_tensor *av[2] = {a, ms_ones(dt, 1, (int64_t[]){2})};
    ck_assert_ptr_null(ms_concat(2, av, 0));
    check_error(MS_ERR_SHAPE, "ms_concat");
    ck_assert_ptr_null(ms_concat(2, ab, 2));
    check_error(MS_ERR_RANK, "ms_concat");
    ck_assert_ptr_null(ms_concat(0, ab, 0));
    check_error(MS_ERR_INVALID_ARG, "ms_concat");
    ms_tensor *s0[1] = {ms_scalar(dt, 1)};
    ck_assert_ptr_null(ms_concat(1, s0, 0));
    check_error(MS_ERR_RANK, "ms_concat");

    /* stack */
    ms_tensor *p = mk(dt, 2, (int64_t[]){2, 3}, (double[]){1, 2, 3, 4, 5, 6});
    ms_tensor *q = mk(dt, 2, (int64_t[]){2, 3}, (double[]){-1, -2, -3, -4, -5, -6});
    ms_tensor *r = mk(dt, 2, (int64_t[]){2, 3}, (double[]){10, 20, 30, 40, 50, 60});
    ms_tensor *pqr[3] = {p, q, r};
    y = ms_stack(3, pqr, 0);
    check_shape(y, 3, (int64_t[]){3, 2, 3});
    check_exact(y, 18, (double[]){1, 2, 3, 4, 5, 6, -1, -2, -3, -4, -5, -6, 10, 20, 30, 40,
                                  50, 60});
    y = ms_stack(3, pqr, 2);
    check_shape(y, 3, (int64_t[]){2, 3, 3});
    check_exact(y, 18, (double[]){1, -1, 10, 2, -2, 20, 3, -3, 30, 4, -4, 40, 5, -5, 50, 6,
                                  -6, 60});
    y = ms_stack(3, pqr, -1);
    check_shape(y, 3, (int64_t[]){2, 3, 3});
    check_exact(y, 18, (double[]){1, -1, 10, 2, -2, 20, 3, -3, 30, 4, -4, 40, 5, -5, 50, 6,
                                  -6, 60});
    y = ms_stack(2, pqr, 1);
    check_shape(y, 3, (int64_t[]){2, 2, 3});
    check_exact(y, 12, (double[]){1, 2, 3, -1, -2, -3, 4, 5, 6, -4, -5, -6});
    ms_tensor *sc[2] = {ms_scalar(dt, 1), ms_scalar(dt, 2)};
    y = ms_stack(2, sc, 0);
    check_shape(y, 1, (int64_t[]){2});
    check_exact(y, 2, (double[]){1, 2});
    check_no_error();
    ms_tensor *pa[2] = {p, a};
    ck_assert_ptr_null(ms_stack(2, pa, 0));
    check_error(MS_ERR_SHAPE, "ms_stack");
    ck_assert_ptr_null(ms_stack(2, pqr, 3));
    check_error(MS_ERR_RANK, "ms_stack");
    ck_assert_ptr_null(ms_stack(2, pqr, -4));
    check_error(MS_ERR_RANK, "ms_stack");
}
END_TEST

START_TEST(slice_cases)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *x = ms_arange(dt, 0, 10, 1);
    ms_tensor *y = ms_slice(x, 0, 2, 5);
    check_shape(y, 1, (int64_t[]){3});
    check_exact(y, 3, (double[]){2, 3, 4});
    check_exact(ms_slice(x, 0, -3, 10), 3, (double[]){7, 8, 9});
    check_exact(ms_slice(x, -1, -3, -1), 2, (double[]){7, 8});
    check_exact(ms_slice(x, 0, 5, 100), 5, (double[]){5, 6, 7, 8, 9});
    check_exact(ms_slice(x, 0, -100, 2), 2, (double[]){0, 1});
    check_exact(ms_slice(x, 0, 0, 10), 10, (double[]){0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
    check_shape(ms_slice(x, 0, 5, 2), 1, (int64_t[]){0});
    check_shape(ms_slice(x, 0, 10, 12), 1, (int64_t[]){0});
    check_shape(ms_slice(x, 0, 4, 4), 1, (int64_t[]){0});
    check_shape(ms_slice(x, 0, -2, -5), 1, (int64_t[]){0});
    ms_tensor *m = ms_reshape(ms_arange(dt, 0, 12, 1), 2, (int64_t[]){3, 4});
    y = ms_slice(m, 1, 1, 3);
    check_shape(y, 2, (int64_t[]){3, 2});
    check_exact(y, 6, (double[]){1, 2, 5, 6, 9, 10});
    y = ms_slice(m, -1, -1, 100);
    check_shape(y, 2, (int64_t[]){3, 1});
    check_exact(y, 3, (double[]){3, 7, 11});
    y = ms_slice(m, 0, 1, -1);
    check_shape(y, 2, (int64_t[]){1, 4});
    check_exact(y, 4, (double[]){4, 5, 6, 7});
    check_shape(ms_slice(m, 0, 2, 1), 2, (int64_t[]){0, 4});
    check_no_error();
    ck_assert_ptr_null(ms_slice(m, 2, 0, 1));
    check_error(MS_ERR_RANK, "ms_slice");
    ck_assert_ptr_null(ms_slice(m, -3, 0, 1));
    check_error(MS_ERR_RANK, "ms_slice");
}
END_TEST

START_TEST(repeat_cases)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *m = mk(dt, 2, (int64_t[]){2, 2}, (double[]){1, 2, 3, 4});
    ms_tensor *y = ms_repeat(m, 2, 0);
    check_shape(y, 2, (int64_t[]){4, 2});
    check_exact(y, 8, (double[]){1, 2, 1, 2, 3, 4, 3, 4});
    y = ms_repeat(m, 2, 1);
    check_shape(y, 2, (int64_t[]){2, 4});
    check_exact(y, 8, (double[]){1, 1, 2, 2, 3, 3, 4, 4});
    y = ms_repeat(m, 3, -1);
    check_shape(y, 2, (int64_t[]){2, 6});
    check_exact(y, 12, (double[]){1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4});
    y = ms_repeat(m, 1, 0);
    check_shape(y, 2, (int64_t[]){2, 2});
    check_exact(y, 4, (double[]){1, 2, 3, 4});
    check_shape(ms_repeat(m, 0, 1), 2, (int64_t[]){2, 0});
    y = ms_repeat(mk(dt, 1, (int64_t[]){3}, (double[]){7, 8, 9}), 2, 0);
    check_shape(y, 1, (int64_t[]){6});
    check_exact(y, 6, (double[]){7, 7, 8, 8, 9, 9});
    ms_tensor *t3 = ms_reshape(ms_arange(dt, 0, 8, 1), 3, (int64_t[]){2, 2, 2});
    y = ms_repeat(t3, 2, 1);
    check_shape(y, 3, (int64_t[]){2, 4, 2});
    check_exact(y, 16, (double[]){0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 4, 5, 6, 7, 6, 7});
    /* the result is an ordinary tensor: ops on it see its shape */
    ms_tensor *s = ms_sum(ms_repeat(m, 2, 0), 1, (int[]){0}, false);
    check_shape(s, 1, (int64_t[]){2});
    check_exact(s, 2, (double[]){8, 12});
    check_shape(ms_repeat(ms_zeros(dt, 2, (int64_t[]){0, 2}), 3, 1), 2, (int64_t[]){0, 6});
    check_no_error();
    ck_assert_ptr_null(ms_repeat(m, -1, 0));
    check_error(MS_ERR_INVALID_ARG, "ms_repeat");
    ck_assert_ptr_null(ms_repeat(m, 2, 2));
    check_error(MS_ERR_RANK, "ms_repeat");
}
END_TEST

START_TEST(broadcast_to_cases)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *v = mk(dt, 1, (int64_t[]){3}, (double[]){1, 2, 3});
    ms_tensor *y = ms_broadcast_to(v, 2, (int64_t[]){2, 3});
    check_shape(y, 2, (int64_t[]){2, 3});
    check_exact(y, 6, (double[]){1, 2, 3, 1, 2, 3});
    ms_tensor *c = mk(dt, 2, (int64_t[]){3, 1}, (double[]){1, 2, 3});
    y = ms_broadcast_to(c, 2, (int64_t[]){3, 4});
    check_exact(y, 12, (double[]){1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3});
    y = ms_broadcast_to(c, 3, (int64_t[]){2, 3, 2});
    check_shape(y, 3, (int64_t[]){2, 3, 2});
    check_exact(y, 12, (double[]){1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3});
    y = ms_broadcast_to(ms_scalar(dt, 4.5), 2, (int64_t[]){2, 2});
    check_exact(y, 4, (double[]){4.5, 4.5, 4.5, 4.5});
    y = ms_broadcast_to(v, 1, (int64_t[]){3});
    check_exact(y, 3, (double[]){1, 2, 3});
    ck_assert_ptr_ne(ms_tensor_data(y), ms_tensor_data(v));
    check_shape(ms_broadcast_to(ms_ones(dt, 2, (int64_t[]){1, 3}), 2, (int64_t[]){0, 3}), 2,
                (int64_t[]){0, 3});
    check_no_error();
    ck_assert_ptr_null(ms_broadcast_to(v, 1, (int64_t[]){2}));
    const char *msg;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "ms_broadcast_to") && strstr(msg, "(3)") && strstr(msg, "(2)"),
                  "message: %s", msg);
    ms_clear_error();
    ck_assert_ptr_null(ms_broadcast_to(c, 1, (int64_t[]){3}));
    check_error(MS_ERR_SHAPE, "ms_broadcast_to");
    ck_assert_ptr_null(ms_broadcast_to(v, 2, (int64_t[]){3, 2}));
    check_error(MS_ERR_SHAPE, "ms_broadcast_to");
}
END_TEST

START_TEST(where_cases)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *cond = mk(dt, 2, (int64_t[]){3, 1}, (double[]){1, 0, -2});
    ms_tensor *a = mk(dt, 2, (int64_t[]){3, 2}, (double[]){1, 2, 3, 4, 5, 6});
    ms_tensor *b = ms_scalar(dt, -1);
    ms_tensor *y = ms_where(cond, a, b);
    check_shape(y, 2, (int64_t[]){3, 2});
    check_exact(y, 6, (double[]){1, 2, -1, -1, 5, 6});
    /* cond along the rows, a and b broadcast against each other */
    ms_tensor *c2 = mk(dt, 1, (int64_t[]){2}, (double[]){0, 1});
    ms_tensor *ar = mk(dt, 2, (int64_t[]){3, 1}, (double[]){10, 20, 30});
    ms_tensor *br = mk(dt, 1, (int64_t[]){2}, (double[]){-7, -8});
    y = ms_where(c2, ar, br);
    check_shape(y, 2, (int64_t[]){3, 2});
    check_exact(y, 6, (double[]){-7, 10, -7, 20, -7, 30});
    /* NaN is not zero */
    y = ms_where(mk(dt, 1, (int64_t[]){3}, (double[]){NAN, 0, 0.5}), ms_ones(dt, 1, (int64_t[]){3}),
                 ms_zeros(dt, 1, (int64_t[]){3}));
    check_exact(y, 3, (double[]){1, 0, 1});
    /* cond with more dims than a and b */
    y = ms_where(mk(dt, 3, (int64_t[]){2, 1, 1}, (double[]){1, 0}), ms_scalar(dt, 3),
                 ms_scalar(dt, 4));
    check_shape(y, 3, (int64_t[]){2, 1, 1});
    check_exact(y, 2, (double[]){3, 4});
    check_shape(ms_where(ms_zeros(dt, 3, (int64_t[]){0, 1, 1}), b, a), 3, (int64_t[]){0, 3, 2});
    check_no_error();
    ck_assert_ptr_null(ms_where(mk(dt, 1, (int64_t[]){4}, (double[]){1, 0, 1, 0}), a, b));
    check_error(MS_ERR_SHAPE, "ms_where");
}
END_TEST

/* ------------------------------------------------------------- softmax */

START_TEST(softmax_cases)
{
    ms_dtype dt = dtypes[_i];
    const double xv[6] = {1, 2, 3, -1, 0, 4};
    ms_tensor *x = mk(dt, 2, (int64_t[]){2, 3}, xv);
    for (int axis = -2; axis < 2; axis++) {
        int ax = (axis + 2) % 2;
        ms_tensor *s = ms_softmax(x, axis), *l = ms_log_softmax(x, axis);
        check_shape(s, 2, (int64_t[]){2, 3});
        check_shape(l, 2, (int64_t[]){2, 3});
        double want[6], lwant[6];
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++) {
                double mx = -INFINITY, z = 0;
                int n = ax == 1 ? 3 : 2;
                for (int k = 0; k < n; k++)
                    mx = fmax(mx, ax == 1 ? xv[i * 3 + k] : xv[k * 3 + j]);
                for (int k = 0; k < n; k++)
                    z += exp((ax == 1 ? xv[i * 3 + k] : xv[k * 3 + j]) - mx);
                want[i * 3 + j] = exp(xv[i * 3 + j] - mx) / z;
                lwant[i * 3 + j] = xv[i * 3 + j] - mx - log(z);
            }
        check_close(s, 6, want);
        check_close(l, 6, lwant);
        /* rows (or columns) sum to 1, and log_softmax is log(softmax) */
        ms_tensor *tot = ms_sum(s, 1, &ax, false);
        for (int64_t i = 0; i < ms_tensor_numel(tot); i++)
            ck_assert(fabs(at(tot, i) - 1) < (dt == MS_F32 ? 1e-6 : 1e-12));
        ms_tensor *ls = ms_log(s);
        for (int i = 0; i < 6; i++)
            ck_assert(fabs(at(ls, i) - at(l, i)) <= (dt == MS_F32 ? 1e-6 : 1e-12) * (1 + fabs(at(l, i))));
    }
    /* stable for large inputs */
    ms_tensor *big = mk(dt, 1, (int64_t[]){3}, (double[]){1000, 1001, 1002});
    double z = 1 + exp(1.0) + exp(2.0);
    check_close(ms_softmax(big, 0), 3, (double[]){1 / z, exp(1.0) / z, exp(2.0) / z});
    check_close(ms_log_softmax(big, -1), 3, (double[]){-log(z), 1 - log(z), 2 - log(z)});
    ms_tensor *neg = mk(dt, 1, (int64_t[]){2}, (double[]){-1000, 0});
    ms_tensor *sn = ms_softmax(neg, 0);
    ck_assert(at(sn, 0) == 0 && at(sn, 1) == 1);
    check_close(ms_log_softmax(neg, 0), 2, (double[]){-1000, 0});
    /* along the middle axis of a 3-d tensor */
    ms_tensor *t3 = ms_reshape(ms_arange(dt, 0, 12, 1), 3, (int64_t[]){2, 3, 2});
    ms_tensor *s3 = ms_softmax(t3, 1);
    double e0 = exp(0.0), e2 = exp(2.0), e4 = exp(4.0), zz = e0 + e2 + e4;
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++) {
            ck_assert(close_to(at(s3, (i * 3 + 0) * 2 + k), e0 / zz, dt));
            ck_assert(close_to(at(s3, (i * 3 + 1) * 2 + k), e2 / zz, dt));
            ck_assert(close_to(at(s3, (i * 3 + 2) * 2 + k), e4 / zz, dt));
        }
    /* one-element axis */
    check_exact(ms_softmax(mk(dt, 2, (int64_t[]){2, 1}, (double[]){5, -3}), 1), 2,
                (double[]){1, 1});
    check_exact(ms_log_softmax(mk(dt, 2, (int64_t[]){2, 1}, (double[]){5, -3}), 1), 2,
                (double[]){0, 0});
    check_no_error();
    ck_assert_ptr_null(ms_softmax(x, 2));
    check_error(MS_ERR_RANK, "ms_softmax");
    ck_assert_ptr_null(ms_log_softmax(x, -3));
    check_error(MS_ERR_RANK, "ms_log_softmax");
    ck_assert_ptr_null(ms_softmax(ms_scalar(dt, 1), 0));
    check_error(MS_ERR_RANK, "ms_softmax");
}
END_TEST

/* ------------------------------------------------------------ lifetime */

/* With no scope open, releasing an op's result frees everything the op made:
 * composite ops (stack, 1-d matmul, ...) must not leave intermediates behind,
 * on success or failure. */
START_TEST(no_scope_no_leak)
{
    ms_dtype dt = dtypes[_i];
    while (ms_scope_depth() > 0)
        ms_scope_pop();
    ms_tensor *m = ms_ones(dt, 2, (int64_t[]){2, 3});
    ms_tensor *v = ms_ones(dt, 1, (int64_t[]){3});
    ms_tensor *w = ms_ones(dt, 1, (int64_t[]){2});
    ms_tensor *mt = ms_transpose(m);
    ms_tensor *mm[2] = {m, m}, *mv[2] = {m, v};
    int64_t start = ms_live_tensors();
    ms_tensor *ys[] = {
        ms_stack(2, mm, 0),     ms_stack(2, mm, -1),         ms_concat(2, mm, 1),
        ms_matmul(m, v),        ms_matmul(w, m),             ms_matmul(v, v),
        ms_matmul(m, mt),       ms_repeat(m, 2, 1),          ms_expand_dims(m, 1),
        ms_squeeze(m, MS_ALL_AXES), ms_broadcast_to(v, 2, (int64_t[]){2, 3}),
        ms_where(m, m, v),      ms_softmax(m, 1),            ms_log_softmax(m, 0),
        ms_sum(m, 0, NULL, true), ms_max(m, 1, (int[]){1}, false), ms_slice(m, 1, 1, 3),
        ms_permute(m, (int[]){1, 0}), ms_add(m, v),          ms_rdiv_scalar(m, 2),
        ms_sigmoid(m),          ms_reshape(m, 1, (int64_t[]){-1}),
    };
    size_t n = sizeof ys / sizeof *ys;
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(ys[i] != NULL, "op %zu failed", i);
    ck_assert_int_eq(ms_live_tensors(), start + (int64_t)n);
    for (size_t i = 0; i < n; i++)
        ms_release(ys[i]);
    ck_assert_int_eq(ms_live_tensors(), start);
    check_no_error();
    /* failures leave nothing behind either */
    ck_assert_ptr_null(ms_stack(2, mv, 0));
    ck_assert_ptr_null(ms_stack(2, mm, 5));
    ck_assert_ptr_null(ms_matmul(v, w));
    ck_assert_ptr_null(ms_matmul(m, w));
    ck_assert_ptr_null(ms_concat(2, mv, 0));
    ms_tensor *empty = ms_slice(m, 0, 0, 0);
    ck_assert_ptr_null(ms_max(empty, 0, NULL, false));
    ck_assert_ptr_null(ms_reshape(m, 1, (int64_t[]){4}));
    ck_assert_int_eq(ms_live_tensors(), start + 1); /* only the caller's slice */
    ms_release(empty);
    ck_assert_int_eq(ms_live_tensors(), start);
    ms_clear_error();
    ms_release(m);
    ms_release(v);
    ms_release(w);
    ms_release(mt);
}
END_TEST

/* ---------------------------------------------------------- non-finite */

/* docs/semantics.md, "Non-finite values": NaN propagates through every
 * elementwise op, maximum/minimum and max/min reductions (NumPy, PyTorch);
 * a softmax row with a NaN or a +inf, or with nothing but -inf, is NaN.
 * Checked on every backend that loads, small (served by ref on oneDNN) and
 * large (above oneDNN's default threshold of 16384 elements, so that its
 * primitives, or its decision to decline, see the non-finite values). */

#define NF_TILES 8192 /* 4 * NF_TILES elements: above oneDNN's threshold */

/* A (rows, plen) tensor whose every row is `pattern` (plen values);
 * rows == 1 gives a 1-d tensor. */
static ms_tensor *tiled(ms_dtype dt, int64_t rows, const double *pattern, int64_t plen)
{
    double *v = malloc(sizeof(double) * (size_t)(rows * plen));
    for (int64_t i = 0; i < rows * plen; i++)
        v[i] = pattern[i % plen];
    ms_tensor *t = rows == 1 ? mk(dt, 1, (int64_t[]){plen}, v)
                             : mk(dt, 2, (int64_t[]){rows, plen}, v);
    free(v);
    return t;
}

/* Each element of t, tiled, close to want (NaN where want is NaN, infinities
 * equal). */
static void check_tiled(const ms_tensor *t, const double *want, int64_t plen, const char *what,
                        const char *backend)
{
    ck_assert_msg(t != NULL, "%s on %s: NULL", what, backend);
    ms_dtype dt = ms_tensor_dtype(t);
    int64_t i = 0; /* one assertion per tensor: check marks a point per call */
    while (i < ms_tensor_numel(t) && close_to(at(t, i), want[i % plen], dt))
        i++;
    ck_assert_msg(i == ms_tensor_numel(t),
                  "%s on %s (%s, %lld elements): element %lld is %.9g, expected %.9g", what,
                  backend, ms_dtype_name(dt), (long long)ms_tensor_numel(t), (long long)i,
                  at(t, i), want[i % plen]);
}

START_TEST(nonfinite_values)
{
    ms_dtype dt = dtypes[_i];
    static const char *const backends[] = {"ref", "openblas", "onednn"};
    const double nan = NAN, inf = INFINITY;
    int ran = 0;
    for (size_t b = 0; b < sizeof backends / sizeof *backends; b++) {
        const char *be = backends[b];
        if (metastep_set_backend(be) != MS_OK) { /* not built here */
            ms_clear_error();
            continue;
        }
        ran++;
        for (int big = 0; big < 2; big++) {
            const int64_t rows = big ? NF_TILES : 1;
            ms_scope_push();
            /* unary: NaN in, NaN out; infinities as libm */
            const double x[8] = {nan, -inf, inf, -1, -0.0, 0.5, 2, nan};
            ms_tensor *tx = tiled(dt, rows, x, 8);
            check_tiled(ms_relu(tx), (double[]){nan, 0, inf, 0, 0, 0.5, 2, nan}, 8, "relu", be);
            check_tiled(ms_sign(tx), (double[]){nan, -1, 1, -1, 0, 1, 1, nan}, 8, "sign", be);
            check_tiled(ms_abs(tx), (double[]){nan, inf, inf, 1, 0, 0.5, 2, nan}, 8, "abs", be);
            check_tiled(ms_neg(tx), (double[]){nan, inf, -inf, 1, 0, -0.5, -2, nan}, 8, "neg", be);
            check_tiled(ms_exp(tx), (double[]){nan, 0, inf, exp(-1.0), 1, exp(0.5), exp(2.0), nan},
                        8, "exp", be);
            check_tiled(ms_square(tx), (double[]){nan, inf, inf, 1, 0, 0.25, 4, nan}, 8, "square",
                        be);
            check_tiled(ms_sqrt(tx), (double[]){nan, nan, inf, nan, 0, sqrt(0.5), sqrt(2.0), nan},
                        8, "sqrt", be);
            check_tiled(ms_reciprocal(tx), (double[]){nan, 0, 0, -1, -inf, 2, 0.5, nan}, 8,
                        "reciprocal", be);
            check_tiled(ms_tanh(tx), (double[]){nan, -1, 1, tanh(-1.0), 0, tanh(0.5), tanh(2.0),
                                                nan}, 8, "tanh", be);
            check_tiled(ms_sigmoid(tx), (double[]){nan, 0, 1, 1 / (1 + exp(1.0)), 0.5,
                                                   1 / (1 + exp(-0.5)), 1 / (1 + exp(-2.0)), nan},
                        8, "sigmoid", be);
            check_tiled(ms_log(tx), (double[]){nan, nan, inf, nan, -inf, log(0.5), log(2.0), nan},
                        8, "log", be);
            /* maximum/minimum propagate NaN from either side (NumPy) */
            check_tiled(ms_maximum_scalar(tx, 0), (double[]){nan, 0, inf, 0, 0, 0.5, 2, nan}, 8,
                        "maximum_scalar(x, 0)", be);
            check_tiled(ms_minimum_scalar(tx, 0), (double[]){nan, -inf, 0, -1, 0, 0, 0, nan}, 8,
                        "minimum_scalar(x, 0)", be);
            check_tiled(ms_maximum_scalar(tx, nan), (double[]){nan, nan, nan, nan, nan, nan, nan,
                                                               nan}, 8, "maximum_scalar(x, NaN)",
                        be);
            const double y[8] = {1, nan, -inf, inf, nan, 0.5, -3, 7};
            ms_tensor *ty = tiled(dt, rows, y, 8);
            check_tiled(ms_maximum(tx, ty), (double[]){nan, nan, inf, inf, nan, 0.5, 2, nan}, 8,
                        "maximum", be);
            check_tiled(ms_minimum(tx, ty), (double[]){nan, nan, -inf, -1, nan, 0.5, -3, nan}, 8,
                        "minimum", be);
            check_tiled(ms_add(tx, ty), (double[]){nan, nan, nan, inf, nan, 1, -1, nan}, 8, "add",
                        be);
            check_tiled(ms_mul(tx, ty), (double[]){nan, nan, -inf, -inf, nan, 0.25, -6, nan}, 8,
                        "mul", be);
            /* ordered comparisons with NaN are false, != is true */
            check_tiled(ms_greater(tx, ty), (double[]){0, 0, 1, 0, 0, 0, 1, 0}, 8, "greater", be);
            check_tiled(ms_less_equal(tx, ty), (double[]){0, 0, 0, 1, 0, 1, 0, 0}, 8,
                        "less_equal", be);
            check_tiled(ms_not_equal(tx, ty), (double[]){1, 1, 1, 1, 1, 0, 1, 1}, 8, "not_equal",
                        be);
            /* where: a NaN condition is true; values pass unchanged */
            check_tiled(ms_where(tx, ty, tx), (double[]){1, nan, -inf, inf, -0.0, 0.5, -3, 7}, 8,
                        "where", be);

            /* rows of 4: reductions along them and softmax over them */
            const double r[16] = {1, nan, 2, 3,          /* NaN */
                                  1, inf, 2, -inf,       /* +inf and -inf */
                                  -inf, -inf, -inf, -inf, /* only -inf */
                                  0, -inf, 0.5, 0};      /* some -inf */
            ms_tensor *tr = ms_reshape(tiled(dt, rows, r, 16), 2, (int64_t[]){-1, 4});
            const int last[1] = {-1};
            check_tiled(ms_max(tr, 1, last, false), (double[]){nan, inf, -inf, 0.5}, 4, "max", be);
            check_tiled(ms_min(tr, 1, last, false), (double[]){nan, -inf, -inf, -inf}, 4, "min",
                        be);
            check_tiled(ms_sum(tr, 1, last, false), (double[]){nan, nan, -inf, -inf}, 4, "sum", be);
            check_tiled(ms_mean(tr, 1, last, false), (double[]){nan, nan, -inf, -inf}, 4, "mean",
                        be);
            const double e0 = 1 / (2 + exp(0.5)), e5 = exp(0.5) / (2 + exp(0.5));
            check_tiled(ms_softmax(tr, -1),
                        (double[]){nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan,
                                   e0, 0, e5, e0}, 16, "softmax", be);
            check_tiled(ms_log_softmax(tr, -1),
                        (double[]){nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan,
                                   log(e0), -inf, log(e5), log(e0)}, 16, "log_softmax", be);
            /* the same rows as columns: softmax along axis 0 */
            if (!big) {
                ms_tensor *tc = ms_transpose(tr);
                ms_tensor *sc = ms_transpose(ms_softmax(tc, 0));
                check_tiled(sc, (double[]){nan, nan, nan, nan, nan, nan, nan, nan, nan, nan, nan,
                                           nan, e0, 0, e5, e0}, 16, "softmax axis 0", be);
                check_tiled(ms_max(tc, 1, (int[]){0}, false), (double[]){nan, inf, -inf, 0.5}, 4,
                            "max axis 0", be);
            }
            check_no_error();
            ms_scope_pop();
        }
        ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    }
    ck_assert_int_ge(ran, 1);
}
END_TEST

/* ---------------------------------------------------------------- main */

static TCase *tcase(Suite *s, const char *name)
{
    TCase *tc = tcase_create(name);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    suite_add_tcase(s, tc);
    return tc;
}

int main(void)
{
    Suite *s = suite_create("ops");
    TCase *tc = tcase(s, "elementwise");
    tcase_add_loop_test(tc, unary_values, 0, 2);
    tcase_add_loop_test(tc, binary_same_shape, 0, 2);
    tcase_add_loop_test(tc, comparisons, 0, 2);
    tcase_add_loop_test(tc, broadcasting, 0, 2);
    tcase_add_test(tc, random_bitwise);
    tcase_add_loop_test(tc, tensor_scalar, 0, 2);
    tc = tcase(s, "reductions");
    tcase_add_loop_test(tc, reductions, 0, 2);
    tc = tcase(s, "linalg");
    tcase_add_loop_test(tc, matmul_cases, 0, 2);
    tc = tcase(s, "layout");
    tcase_add_loop_test(tc, transpose_permute, 0, 2);
    tcase_add_loop_test(tc, concat_stack, 0, 2);
    tcase_add_loop_test(tc, slice_cases, 0, 2);
    tcase_add_loop_test(tc, repeat_cases, 0, 2);
    tcase_add_loop_test(tc, broadcast_to_cases, 0, 2);
    tcase_add_loop_test(tc, where_cases, 0, 2);
    tc = tcase(s, "softmax");
    tcase_add_loop_test(tc, softmax_cases, 0, 2);
    tc = tcase(s, "nonfinite");
    tcase_add_loop_test(tc, nonfinite_values, 0, 2);
    tc = tcase(s, "lifetime");
    tcase_add_loop_test(tc, no_scope_no_leak, 0, 2);
    return run_suite(s);
}
