/* Tensors: creation, inspection, shapes, lifetime and scopes, errors and
 * printing in Ivy's (NumPy's) layout. */
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

static void put(ms_tensor *t, int64_t i, double v)
{
    if (ms_tensor_dtype(t) == MS_F32)
        ((float *)ms_tensor_data(t))[i] = (float)v;
    else
        ((double *)ms_tensor_data(t))[i] = v;
}

/* A tensor of dtype dt from doubles (rounded to float for MS_F32). */
static ms_tensor *mk(ms_dtype dt, int ndim, const int64_t *shape, const double *v)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    void *buf = malloc((size_t)(n ? n : 1) * 8);
    for (int64_t i = 0; i < n; i++) {
        if (dt == MS_F32)
            ((float *)buf)[i] = (float)v[i];
        else
            ((double *)buf)[i] = v[i];
    }
    ms_tensor *t = ms_tensor_from_data(dt, ndim, shape, buf);
    free(buf);
    return t;
}

static void check_shape(const ms_tensor *t, int ndim, const int64_t *shape)
{
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(ms_tensor_ndim(t), ndim);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        ck_assert_msg(ms_tensor_shape(t)[i] == shape[i], "dim %d is %lld, expected %lld", i,
                      (long long)ms_tensor_shape(t)[i], (long long)shape[i]);
        n *= shape[i];
    }
    ck_assert_int_eq(ms_tensor_numel(t), n);
}

/* Values equal to `want` (rounded to the tensor's dtype) exactly. */
static void check_exact(const ms_tensor *t, int64_t n, const double *want)
{
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(ms_tensor_numel(t), n);
    for (int64_t i = 0; i < n; i++) {
        double w = ms_tensor_dtype(t) == MS_F32 ? (double)(float)want[i] : want[i];
        ck_assert_msg(at(t, i) == w || (isnan(w) && isnan(at(t, i))),
                      "element %lld is %.17g, expected %.17g", (long long)i, at(t, i), w);
    }
}

static void check_error(ms_status want, const char *fn)
{
    const char *msg = NULL;
    ms_status st = ms_last_error(&msg);
    ck_assert_msg(st == want, "status %d (%s), expected %d; message: %s", (int)st,
                  ms_status_string(st), (int)want, msg ? msg : "(null)");
    ck_assert_ptr_nonnull(msg);
    if (fn)
        ck_assert_msg(strstr(msg, fn) != NULL, "message '%s' does not name %s", msg, fn);
    ms_clear_error();
}

/* ----------------------------------------------------------- creation */

START_TEST(from_data_copies)
{
    ms_dtype dt = dtypes[_i];
    double src64[6] = {1, 2, 3, 4, 5, 6};
    float src32[6] = {1, 2, 3, 4, 5, 6};
    int64_t shape[2] = {2, 3};
    void *src = dt == MS_F32 ? (void *)src32 : (void *)src64;
    ms_tensor *t = ms_tensor_from_data(dt, 2, shape, src);
    check_shape(t, 2, shape);
    ck_assert_int_eq(ms_tensor_dtype(t), dt);
    src64[0] = 100;
    src32[0] = 100;
    shape[0] = 7; /* the shape is copied too */
    const double want[6] = {1, 2, 3, 4, 5, 6};
    check_exact(t, 6, want);
    ck_assert_int_eq(ms_tensor_shape(t)[0], 2);
    ck_assert_ptr_ne(ms_tensor_data(t), src);
    /* data may be NULL only for zero elements */
    int64_t zero[1] = {0};
    ms_tensor *e = ms_tensor_from_data(dt, 1, zero, NULL);
    check_shape(e, 1, zero);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    ck_assert_ptr_null(ms_tensor_from_data(dt, 2, (int64_t[]){2, 3}, NULL));
    check_error(MS_ERR_NULL_ARG, "ms_tensor_from_data");
    /* 0-d */
    ms_tensor *s = ms_tensor_from_data(dt, 0, NULL, src);
    check_shape(s, 0, NULL);
    ck_assert(ms_tensor_item(s) == 100.0);
}
END_TEST

START_TEST(zeros_ones_full_scalar)
{
    ms_dtype dt = dtypes[_i];
    int64_t shape[3] = {2, 1, 3};
    ms_tensor *z = ms_zeros(dt, 3, shape), *o = ms_ones(dt, 3, shape),
              *f = ms_full(dt, 3, shape, -2.5);
    check_shape(z, 3, shape);
    check_shape(o, 3, shape);
    check_shape(f, 3, shape);
    for (int i = 0; i < 6; i++) {
        ck_assert(at(z, i) == 0.0 && !signbit(at(z, i)));
        ck_assert(at(o, i) == 1.0);
        ck_assert(at(f, i) == -2.5);
    }
    ck_assert_int_eq(ms_tensor_dtype(z), dt);
    ms_tensor *s = ms_scalar(dt, 0.1);
    check_shape(s, 0, NULL);
    ck_assert_int_eq(ms_tensor_numel(s), 1);
    ck_assert(ms_tensor_item(s) == (dt == MS_F32 ? (double)0.1f : 0.1));
    /* size-0 dims */
    int64_t e[2] = {3, 0};
    ms_tensor *fe = ms_full(dt, 2, e, 7.0);
    check_shape(fe, 2, e);
    ck_assert_int_eq(ms_tensor_numel(fe), 0);
    /* rank 0 zeros */
    ms_tensor *z0 = ms_zeros(dt, 0, NULL);
    check_shape(z0, 0, NULL);
    ck_assert(ms_tensor_item(z0) == 0.0);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
}
END_TEST

START_TEST(arange_numpy)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *t = ms_arange(dt, 0, 5, 1);
    check_shape(t, 1, (int64_t[]){5});
    check_exact(t, 5, (double[]){0, 1, 2, 3, 4});
    t = ms_arange(dt, 5, 0, -1);
    check_exact(t, 5, (double[]){5, 4, 3, 2, 1});
    t = ms_arange(dt, 10, 0, -3);
    check_exact(t, 4, (double[]){10, 7, 4, 1});
    t = ms_arange(dt, -1, -2.5, -0.5);
    check_exact(t, 3, (double[]){-1, -1.5, -2});
    t = ms_arange(dt, 0, 1, 0.25);
    check_exact(t, 4, (double[]){0, 0.25, 0.5, 0.75});
    t = ms_arange(dt, 0, 1, 0.3); /* ceil(3.33) = 4 */
    ck_assert_int_eq(ms_tensor_numel(t), 4);
    const double w3[4] = {0, 0.3, 0.6, 0.3 * 3};
    for (int i = 0; i < 4; i++)
        ck_assert(fabs(at(t, i) - w3[i]) < 1e-6);
    t = ms_arange(dt, 1.5, 4, 1); /* fractional start */
    check_exact(t, 3, (double[]){1.5, 2.5, 3.5});
    /* empty: stop before start with a positive step, and the reverse */
    t = ms_arange(dt, 1, 0, 1);
    check_shape(t, 1, (int64_t[]){0});
    t = ms_arange(dt, 0, 3, -1);
    check_shape(t, 1, (int64_t[]){0});
    t = ms_arange(dt, 2, 2, 1);
    check_shape(t, 1, (int64_t[]){0});
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    ck_assert_ptr_null(ms_arange(dt, 0, 5, 0));
    check_error(MS_ERR_INVALID_ARG, "ms_arange");
    ck_assert_ptr_null(ms_arange(dt, 0, INFINITY, 1));
    check_error(MS_ERR_INVALID_ARG, "ms_arange");
    ck_assert_ptr_null(ms_arange(dt, NAN, 5, 1));
    check_error(MS_ERR_INVALID_ARG, "ms_arange");
}
END_TEST

START_TEST(linspace_numpy)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *t = ms_linspace(dt, 0, 1, 5);
    check_shape(t, 1, (int64_t[]){5});
    check_exact(t, 5, (double[]){0, 0.25, 0.5, 0.75, 1});
    t = ms_linspace(dt, 2, -2, 3);
    check_exact(t, 3, (double[]){2, 0, -2});
    /* endpoint exact even when the step does not divide evenly */
    t = ms_linspace(dt, 0.1, 0.7, 7);
    ck_assert_int_eq(ms_tensor_numel(t), 7);
    ck_assert(at(t, 6) == (dt == MS_F32 ? (double)0.7f : 0.7));
    ck_assert(at(t, 0) == (dt == MS_F32 ? (double)0.1f : 0.1));
    for (int i = 0; i < 7; i++)
        ck_assert(fabs(at(t, i) - (0.1 + 0.1 * i)) < 1e-6);
    t = ms_linspace(dt, 0, 1.0 / 3.0, 4);
    ck_assert(at(t, 3) == (dt == MS_F32 ? (double)(float)(1.0 / 3.0) : 1.0 / 3.0));
    t = ms_linspace(dt, 3, 9, 0);
    check_shape(t, 1, (int64_t[]){0});
    t = ms_linspace(dt, 3, 9, 1); /* NumPy: [start] */
    check_shape(t, 1, (int64_t[]){1});
    check_exact(t, 1, (double[]){3});
    t = ms_linspace(dt, 3, 9, 2);
    check_exact(t, 2, (double[]){3, 9});
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    ck_assert_ptr_null(ms_linspace(dt, 0, 1, -1));
    check_error(MS_ERR_INVALID_ARG, "ms_linspace");
    ck_assert_ptr_null(ms_linspace(dt, 0, NAN, 3));
    check_error(MS_ERR_INVALID_ARG, "ms_linspace");
}
END_TEST

START_TEST(eye_shapes)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *t = ms_eye(dt, 2, 3);
    check_shape(t, 2, (int64_t[]){2, 3});
    check_exact(t, 6, (double[]){1, 0, 0, 0, 1, 0});
    t = ms_eye(dt, 3, 2);
    check_shape(t, 2, (int64_t[]){3, 2});
    check_exact(t, 6, (double[]){1, 0, 0, 1, 0, 0});
    t = ms_eye(dt, 3, -1);
    check_shape(t, 2, (int64_t[]){3, 3});
    check_exact(t, 9, (double[]){1, 0, 0, 0, 1, 0, 0, 0, 1});
    t = ms_eye(dt, 1, -1);
    check_exact(t, 1, (double[]){1});
    t = ms_eye(dt, 0, 4);
    check_shape(t, 2, (int64_t[]){0, 4});
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    ck_assert_ptr_null(ms_eye(dt, -2, 3));
    check_error(MS_ERR_INVALID_ARG, "ms_eye");
}
END_TEST

START_TEST(copy_independent)
{
    ms_dtype dt = dtypes[_i];
    int64_t shape[2] = {2, 2};
    ms_tensor *a = mk(dt, 2, shape, (double[]){1, -2, 3.5, 4});
    ms_tensor *c = ms_copy(a);
    check_shape(c, 2, shape);
    ck_assert_int_eq(ms_tensor_dtype(c), dt);
    check_exact(c, 4, (double[]){1, -2, 3.5, 4});
    ck_assert_ptr_ne(ms_tensor_data(c), ms_tensor_data(a));
    put(c, 0, 9);
    check_exact(a, 4, (double[]){1, -2, 3.5, 4});
    put(a, 1, 8);
    check_exact(c, 4, (double[]){9, -2, 3.5, 4});
    ms_tensor *e = ms_copy(ms_zeros(dt, 2, (int64_t[]){0, 5}));
    check_shape(e, 2, (int64_t[]){0, 5});
    ck_assert_ptr_null(ms_copy(NULL));
}
END_TEST

START_TEST(random_tensors)
{
    ms_dtype dt = dtypes[_i];
    int64_t shape[2] = {100, 100};
    ms_tensor *u1 = ms_random_uniform(dt, 2, shape, -2, 3, 42);
    ms_tensor *u2 = ms_random_uniform(dt, 2, shape, -2, 3, 42);
    ms_tensor *u3 = ms_random_uniform(dt, 2, shape, -2, 3, 43);
    check_shape(u1, 2, shape);
    ck_assert_int_eq(ms_tensor_dtype(u1), dt);
    size_t bytes = 10000 * ms_dtype_size(dt);
    ck_assert_int_eq(memcmp(ms_tensor_data(u1), ms_tensor_data(u2), bytes), 0);
    ck_assert_int_ne(memcmp(ms_tensor_data(u1), ms_tensor_data(u3), bytes), 0);
    int differ = 0;
    double sum = 0, lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < 10000; i++) {
        double v = at(u1, i);
        ck_assert_msg(v >= -2 && v < 3, "uniform value %g outside [-2, 3)", v);
        differ += v != at(u3, i);
        sum += v;
        lo = fmin(lo, v);
        hi = fmax(hi, v);
    }
    ck_assert_int_gt(differ, 9900);
    ck_assert(fabs(sum / 10000 - 0.5) < 0.05 * 5);
    ck_assert(lo < -1.9 && hi > 2.9); /* covers the range */
    /* a degenerate interval */
    ms_tensor *uc = ms_random_uniform(dt, 1, (int64_t[]){5}, 1.5, 1.5, 1);
    check_exact(uc, 5, (double[]){1.5, 1.5, 1.5, 1.5, 1.5});

    ms_tensor *n1 = ms_random_normal(dt, 2, shape, 0, 1, 7);
    ms_tensor *n2 = ms_random_normal(dt, 2, shape, 0, 1, 7);
    ms_tensor *n3 = ms_random_normal(dt, 2, shape, 0, 1, 8);
    ck_assert_int_eq(memcmp(ms_tensor_data(n1), ms_tensor_data(n2), bytes), 0);
    ck_assert_int_ne(memcmp(ms_tensor_data(n1), ms_tensor_data(n3), bytes), 0);
    double m = 0, m2 = 0;
    for (int i = 0; i < 10000; i++) {
        ck_assert(isfinite(at(n1, i)));
        m += at(n1, i);
    }
    m /= 10000;
    for (int i = 0; i < 10000; i++)
        m2 += (at(n1, i) - m) * (at(n1, i) - m);
    double sd = sqrt(m2 / 9999);
    ck_assert_msg(fabs(m) < 0.05, "normal mean %g", m);
    ck_assert_msg(fabs(sd - 1) < 0.05, "normal std %g", sd);
    /* mean and std are applied */
    ms_tensor *n4 = ms_random_normal(dt, 2, shape, 2.0, 3.0, 99);
    m = 0;
    m2 = 0;
    for (int i = 0; i < 10000; i++)
        m += at(n4, i);
    m /= 10000;
    for (int i = 0; i < 10000; i++)
        m2 += (at(n4, i) - m) * (at(n4, i) - m);
    sd = sqrt(m2 / 9999);
    ck_assert_msg(fabs(m - 2.0) < 0.05 * 3, "normal mean %g", m);
    ck_assert_msg(fabs(sd / 3.0 - 1) < 0.05, "normal std %g", sd);
    ms_tensor *n0 = ms_random_normal(dt, 1, (int64_t[]){4}, -1.25, 0.0, 3);
    check_exact(n0, 4, (double[]){-1.25, -1.25, -1.25, -1.25});
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);

    ck_assert_ptr_null(ms_random_uniform(dt, 2, shape, 3, -2, 1));
    check_error(MS_ERR_INVALID_ARG, "ms_random_uniform");
    ck_assert_ptr_null(ms_random_normal(dt, 2, shape, 0, -1, 1));
    check_error(MS_ERR_INVALID_ARG, "ms_random_normal");
    ck_assert_ptr_null(ms_random_normal(dt, 2, shape, NAN, 1, 1));
    check_error(MS_ERR_INVALID_ARG, "ms_random_normal");
}
END_TEST

/* --------------------------------------------------------- inspection */

START_TEST(inspection)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *t = ms_zeros(dt, 3, (int64_t[]){2, 3, 4});
    ck_assert_int_eq(ms_tensor_ndim(t), 3);
    ck_assert_int_eq(ms_tensor_numel(t), 24);
    ck_assert_int_eq(ms_tensor_dtype(t), dt);
    ck_assert_int_eq(ms_tensor_shape(t)[2], 4);
    ck_assert_uint_eq(ms_dtype_size(dt), dt == MS_F32 ? 4 : 8);
    ck_assert_str_eq(ms_dtype_name(dt), dt == MS_F32 ? "float32" : "float64");
    ck_assert_uint_eq(ms_dtype_size((ms_dtype)7), 0);
    ck_assert_str_eq(ms_dtype_name((ms_dtype)7), "invalid");
    /* item on 0-d and on a one-element tensor of any rank */
    ck_assert(ms_tensor_item(ms_scalar(dt, -3.5)) == -3.5);
    ck_assert(ms_tensor_item(ms_full(dt, 2, (int64_t[]){1, 1}, 4.25)) == 4.25);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    ck_assert(isnan(ms_tensor_item(t)));
    check_error(MS_ERR_SHAPE, "ms_tensor_item");
    ck_assert(isnan(ms_tensor_item(ms_zeros(dt, 1, (int64_t[]){0}))));
    check_error(MS_ERR_SHAPE, "ms_tensor_item");
    /* NULL-safe */
    ck_assert_int_eq(ms_tensor_ndim(NULL), 0);
    ck_assert_int_eq(ms_tensor_numel(NULL), 0);
    ck_assert_ptr_null(ms_tensor_shape(NULL));
    ck_assert_ptr_null(ms_tensor_data(NULL));
    ck_assert(isnan(ms_tensor_item(NULL)));
}
END_TEST

/* ------------------------------------------------------------- shapes */

START_TEST(reshape_infer)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *t = ms_arange(dt, 0, 24, 1);
    ms_tensor *r = ms_reshape(t, 3, (int64_t[]){2, 3, 4});
    check_shape(r, 3, (int64_t[]){2, 3, 4});
    for (int i = 0; i < 24; i++)
        ck_assert(at(r, i) == i);
    r = ms_reshape(r, 2, (int64_t[]){4, -1});
    check_shape(r, 2, (int64_t[]){4, 6});
    r = ms_reshape(r, 3, (int64_t[]){-1, 2, 3});
    check_shape(r, 3, (int64_t[]){4, 2, 3});
    r = ms_reshape(r, 1, (int64_t[]){-1});
    check_shape(r, 1, (int64_t[]){24});
    for (int i = 0; i < 24; i++)
        ck_assert(at(r, i) == i);
    /* the result is a copy */
    put(r, 0, 100);
    ck_assert(at(t, 0) == 0);
    /* one-element to 0-d and back */
    ms_tensor *s = ms_reshape(ms_full(dt, 2, (int64_t[]){1, 1}, 5), 0, NULL);
    check_shape(s, 0, NULL);
    s = ms_reshape(s, 3, (int64_t[]){1, -1, 1});
    check_shape(s, 3, (int64_t[]){1, 1, 1});
    /* zero elements */
    ms_tensor *e = ms_reshape(ms_zeros(dt, 2, (int64_t[]){0, 3}), 2, (int64_t[]){-1, 3});
    check_shape(e, 2, (int64_t[]){0, 3});
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);

    ms_tensor *m = ms_zeros(dt, 2, (int64_t[]){2, 3});
    ck_assert_ptr_null(ms_reshape(m, 2, (int64_t[]){4, 2}));
    const char *msg;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(msg, "ms_reshape"));
    ck_assert_ptr_nonnull(strstr(msg, "(2,3)"));
    ck_assert_ptr_nonnull(strstr(msg, "(4,2)"));
    ms_clear_error();
    ck_assert_ptr_null(ms_reshape(m, 2, (int64_t[]){4, -1}));
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(msg, "(2,3)"));
    ck_assert_ptr_nonnull(strstr(msg, "(4,-1)"));
    ms_clear_error();
    ck_assert_ptr_null(ms_reshape(m, 2, (int64_t[]){-1, -1}));
    check_error(MS_ERR_SHAPE, "ms_reshape");
    ck_assert_ptr_null(ms_reshape(m, 2, (int64_t[]){-2, -3}));
    check_error(MS_ERR_SHAPE, "ms_reshape");
    ck_assert_ptr_null(ms_reshape(m, 0, NULL));
    check_error(MS_ERR_SHAPE, "ms_reshape");
    ck_assert_ptr_null(ms_reshape(m, 9, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 2, 3}));
    check_error(MS_ERR_RANK, "ms_reshape");
    ck_assert_ptr_null(ms_reshape(ms_zeros(dt, 2, (int64_t[]){0, 3}), 2, (int64_t[]){-1, 0}));
    check_error(MS_ERR_SHAPE, "ms_reshape");
}
END_TEST

START_TEST(expand_squeeze)
{
    ms_dtype dt = dtypes[_i];
    ms_tensor *t = ms_arange(dt, 0, 6, 1);
    t = ms_reshape(t, 2, (int64_t[]){2, 3});
    check_shape(ms_expand_dims(t, 0), 3, (int64_t[]){1, 2, 3});
    check_shape(ms_expand_dims(t, 1), 3, (int64_t[]){2, 1, 3});
    check_shape(ms_expand_dims(t, 2), 3, (int64_t[]){2, 3, 1});
    check_shape(ms_expand_dims(t, -1), 3, (int64_t[]){2, 3, 1});
    check_shape(ms_expand_dims(t, -2), 3, (int64_t[]){2, 1, 3});
    check_shape(ms_expand_dims(t, -3), 3, (int64_t[]){1, 2, 3});
    check_shape(ms_expand_dims(ms_scalar(dt, 1), 0), 1, (int64_t[]){1});
    ms_tensor *e = ms_expand_dims(t, -1);
    for (int i = 0; i < 6; i++)
        ck_assert(at(e, i) == i);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    ck_assert_ptr_null(ms_expand_dims(t, 3));
    check_error(MS_ERR_RANK, "ms_expand_dims");
    ck_assert_ptr_null(ms_expand_dims(t, -4));
    check_error(MS_ERR_RANK, "ms_expand_dims");
    ms_tensor *r8 = ms_zeros(dt, 8, (int64_t[]){1, 1, 1, 1, 1, 1, 1, 1});
    ck_assert_ptr_null(ms_expand_dims(r8, 0));
    check_error(MS_ERR_RANK, "ms_expand_dims");

    ms_tensor *s = ms_reshape(t, 4, (int64_t[]){1, 2, 1, 3});
    check_shape(ms_squeeze(s, 0), 3, (int64_t[]){2, 1, 3});
    check_shape(ms_squeeze(s, 2), 3, (int64_t[]){1, 2, 3});
    check_shape(ms_squeeze(s, -2), 3, (int64_t[]){1, 2, 3});
    check_shape(ms_squeeze(s, -4), 3, (int64_t[]){2, 1, 3});
    ms_tensor *all = ms_squeeze(s, MS_ALL_AXES);
    check_shape(all, 2, (int64_t[]){2, 3});
    for (int i = 0; i < 6; i++)
        ck_assert(at(all, i) == i);
    check_shape(ms_squeeze(ms_ones(dt, 2, (int64_t[]){1, 1}), MS_ALL_AXES), 0, NULL);
    check_shape(ms_squeeze(t, MS_ALL_AXES), 2, (int64_t[]){2, 3});
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    ck_assert_ptr_null(ms_squeeze(s, 1));
    check_error(MS_ERR_SHAPE, "ms_squeeze");
    ck_assert_ptr_null(ms_squeeze(s, 4));
    check_error(MS_ERR_RANK, "ms_squeeze");
    ck_assert_ptr_null(ms_squeeze(ms_scalar(dt, 1), 0));
    check_error(MS_ERR_RANK, "ms_squeeze");
}
END_TEST

/* ---------------------------------------------------- lifetime & scopes */

START_TEST(scope_frees)
{
    int64_t start = ms_live_tensors();
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    int depth = ms_scope_depth();
    ms_tensor *a = ms_ones(MS_F32, 1, (int64_t[]){3});
    ms_tensor *b = ms_add(a, a);
    ms_tensor *c = ms_mul(b, a);
    (void)c;
    ck_assert_int_eq(ms_live_tensors(), start + 3);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_scope_depth(), depth - 1);
    ck_assert_int_eq(ms_live_tensors(), start);
}
END_TEST

START_TEST(retain_survives_pop)
{
    int64_t start = ms_live_tensors();
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    ms_tensor *a = ms_full(MS_F64, 1, (int64_t[]){4}, 2.5);
    ms_tensor *b = ms_mul_scalar(a, 2);
    ck_assert_ptr_eq(ms_retain(b), b);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_live_tensors(), start + 1);
    check_exact(b, 4, (double[]){5, 5, 5, 5});
    /* usable in the enclosing scope */
    ms_tensor *c = ms_add(b, b);
    check_exact(c, 4, (double[]){10, 10, 10, 10});
    ck_assert_int_eq(ms_live_tensors(), start + 2);
    ms_release(b);
    ck_assert_int_eq(ms_live_tensors(), start + 1);
    ck_assert_ptr_null(ms_retain(NULL));
    ms_release(NULL);
}
END_TEST

START_TEST(no_scope_release)
{
    while (ms_scope_depth() > 0)
        ms_scope_pop();
    int64_t start = ms_live_tensors();
    ms_tensor *a = ms_zeros(MS_F32, 2, (int64_t[]){2, 2});
    ms_tensor *b = ms_add_scalar(a, 1);
    ck_assert_int_eq(ms_live_tensors(), start + 2);
    ms_retain(a);
    ms_release(a);
    ck_assert_int_eq(ms_live_tensors(), start + 2);
    ms_release(a);
    ck_assert_int_eq(ms_live_tensors(), start + 1);
    check_exact(b, 4, (double[]){1, 1, 1, 1});
    ms_release(b);
    ck_assert_int_eq(ms_live_tensors(), start);
}
END_TEST

START_TEST(nested_scopes)
{
    int64_t start = ms_live_tensors();
    int d0 = ms_scope_depth();
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    ms_tensor *a = ms_ones(MS_F32, 1, (int64_t[]){2});
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    ck_assert_int_eq(ms_scope_depth(), d0 + 2);
    ms_tensor *b = ms_add(a, a);
    ms_tensor *c = ms_neg(b);
    ck_assert_int_eq(ms_live_tensors(), start + 3);
    ms_retain(c);
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    ms_tensor *d = ms_mul(c, a);
    check_exact(d, 2, (double[]){-2, -2});
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_live_tensors(), start + 3);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_live_tensors(), start + 2); /* a and retained c */
    check_exact(a, 2, (double[]){1, 1});
    check_exact(c, 2, (double[]){-2, -2});
    ms_release(c);
    ck_assert_int_eq(ms_live_tensors(), start + 1);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_scope_depth(), d0);
    ck_assert_int_eq(ms_live_tensors(), start);
}
END_TEST

START_TEST(pop_without_scope)
{
    while (ms_scope_depth() > 0)
        ms_scope_pop();
    ck_assert_int_eq(ms_scope_depth(), 0);
    ms_clear_error();
    ck_assert_int_eq(ms_scope_pop(), MS_ERR_INVALID_ARG);
    check_error(MS_ERR_INVALID_ARG, "ms_scope_pop");
    ck_assert_int_eq(ms_scope_depth(), 0);
    /* the scopes still work afterwards */
    int64_t start = ms_live_tensors();
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    ms_zeros(MS_F64, 1, (int64_t[]){3});
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_live_tensors(), start);
}
END_TEST

START_TEST(scope_depth_limit)
{
    int d0 = ms_scope_depth();
    for (int i = d0; i < 1024; i++)
        ck_assert_int_eq(ms_scope_push(), MS_OK);
    ck_assert_int_eq(ms_scope_depth(), 1024);
    ck_assert_int_eq(ms_scope_push(), MS_ERR_INVALID_ARG);
    check_error(MS_ERR_INVALID_ARG, "ms_scope_push");
    ck_assert_int_eq(ms_scope_depth(), 1024);
    int64_t start = ms_live_tensors();
    ms_ones(MS_F32, 1, (int64_t[]){2});
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_live_tensors(), start);
    while (ms_scope_depth() > d0)
        ck_assert_int_eq(ms_scope_pop(), MS_OK);
}
END_TEST

START_TEST(loop_does_not_grow)
{
    int64_t start = ms_live_tensors();
    ms_tensor *w = ms_retain(ms_random_normal(MS_F32, 2, (int64_t[]){4, 4}, 0, 1, 5));
    ms_tensor *x = ms_retain(ms_ones(MS_F32, 2, (int64_t[]){4, 1}));
    int64_t base = ms_live_tensors();
    for (int i = 0; i < 10000; i++) {
        ck_assert_int_eq(ms_scope_push(), MS_OK);
        ms_tensor *y = ms_tanh(ms_add_scalar(ms_matmul(w, x), 0.5));
        ms_tensor *s = ms_sum(ms_square(y), 0, NULL, false);
        ck_assert_ptr_nonnull(s);
        ck_assert_int_eq(ms_scope_pop(), MS_OK);
        if (i % 1000 == 0)
            ck_assert_int_eq(ms_live_tensors(), base);
    }
    ck_assert_int_eq(ms_live_tensors(), base);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    ck_assert_int_eq(ms_scope_pop(), MS_OK); /* the fixture's scope */
    ck_assert_int_eq(ms_live_tensors(), start + 2);
    ms_release(w);
    ms_release(x);
    ck_assert_int_eq(ms_live_tensors(), start);
}
END_TEST

/* ------------------------------------------------------------- errors */

START_TEST(null_everywhere)
{
    ms_tensor *x = ms_ones(MS_F32, 1, (int64_t[]){2});
    int64_t shape[1] = {2};
    int ax = 0;
    int perm[1] = {0};
    ms_tensor *nulls[2] = {NULL, NULL};
    ms_tensor *mixed[2] = {x, NULL};
    ck_assert_ptr_null(ms_copy(NULL));
    ck_assert_ptr_null(ms_reshape(NULL, 1, shape));
    ck_assert_ptr_null(ms_expand_dims(NULL, 0));
    ck_assert_ptr_null(ms_squeeze(NULL, MS_ALL_AXES));
    ck_assert_ptr_null(ms_tensor_to_string(NULL));
    ck_assert_int_eq(ms_tensor_fprint(stderr, NULL), MS_ERR_NULL_ARG);
    ms_tensor *(*un[])(const ms_tensor *) = {ms_neg,  ms_abs,        ms_sign, ms_exp,
                                             ms_log,  ms_sqrt,       ms_square,
                                             ms_reciprocal,           ms_tanh, ms_sigmoid,
                                             ms_relu, ms_sin,        ms_cos,  ms_transpose};
    for (size_t i = 0; i < sizeof un / sizeof *un; i++)
        ck_assert_ptr_null(un[i](NULL));
    ms_tensor *(*bin[])(const ms_tensor *, const ms_tensor *) = {
        ms_add,   ms_sub,       ms_mul,  ms_div,        ms_pow,     ms_maximum,
        ms_minimum, ms_equal,   ms_not_equal, ms_less, ms_less_equal, ms_greater,
        ms_greater_equal, ms_matmul};
    for (size_t i = 0; i < sizeof bin / sizeof *bin; i++) {
        ck_assert_ptr_null(bin[i](NULL, x));
        ck_assert_ptr_null(bin[i](x, NULL));
        ck_assert_ptr_null(bin[i](NULL, NULL));
    }
    ms_tensor *(*sc[])(const ms_tensor *, double) = {
        ms_add_scalar, ms_sub_scalar, ms_rsub_scalar, ms_mul_scalar, ms_div_scalar,
        ms_rdiv_scalar, ms_pow_scalar, ms_maximum_scalar, ms_minimum_scalar};
    for (size_t i = 0; i < sizeof sc / sizeof *sc; i++)
        ck_assert_ptr_null(sc[i](NULL, 2.0));
    ms_tensor *(*red[])(const ms_tensor *, int, const int *, bool) = {ms_sum, ms_mean, ms_max,
                                                                       ms_min};
    for (size_t i = 0; i < sizeof red / sizeof *red; i++) {
        ck_assert_ptr_null(red[i](NULL, 0, NULL, false));
        ck_assert_ptr_null(red[i](NULL, 1, &ax, true));
    }
    ck_assert_ptr_null(ms_permute(NULL, perm));
    ck_assert_ptr_null(ms_concat(2, nulls, 0));
    ck_assert_ptr_null(ms_concat(2, mixed, 0));
    ck_assert_ptr_null(ms_stack(2, nulls, 0));
    ck_assert_ptr_null(ms_stack(2, mixed, 0));
    ck_assert_ptr_null(ms_slice(NULL, 0, 0, 1));
    ck_assert_ptr_null(ms_repeat(NULL, 2, 0));
    ck_assert_ptr_null(ms_broadcast_to(NULL, 1, shape));
    ck_assert_ptr_null(ms_where(NULL, x, x));
    ck_assert_ptr_null(ms_where(x, NULL, x));
    ck_assert_ptr_null(ms_where(x, x, NULL));
    ck_assert_ptr_null(ms_softmax(NULL, 0));
    ck_assert_ptr_null(ms_log_softmax(NULL, 0));
    ck_assert_int_eq(ms_last_error(NULL), MS_ERR_NULL_ARG);
    /* a chain is checked once at the end */
    ms_clear_error();
    ms_tensor *bad = ms_exp(ms_add(ms_matmul(x, ms_ones(MS_F32, 1, (int64_t[]){3})), x));
    ck_assert_ptr_null(bad);
    check_error(MS_ERR_SHAPE, "ms_matmul");
}
END_TEST

START_TEST(first_error_kept)
{
    ms_tensor *a = ms_zeros(MS_F32, 2, (int64_t[]){3, 4});
    ms_tensor *b = ms_zeros(MS_F32, 2, (int64_t[]){5, 2});
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_ptr_nonnull(msg);
    ck_assert_ptr_null(ms_matmul(a, b));
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_msg(strstr(msg, "ms_matmul") && strstr(msg, "(3,4)") && strstr(msg, "(5,2)"),
                  "message: %s", msg);
    /* later failures do not replace the first */
    ms_tensor *d = ms_zeros(MS_F64, 2, (int64_t[]){3, 4});
    ck_assert_ptr_null(ms_add(a, d));
    ck_assert_ptr_null(ms_add(NULL, a));
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(msg, "ms_matmul"));
    ms_clear_error();
    ck_assert_int_eq(ms_last_error(&msg), MS_OK);
    ck_assert_str_eq(msg, "");
    /* now the dtype error is the first */
    ck_assert_ptr_null(ms_add(a, d));
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_DTYPE);
    ck_assert_ptr_nonnull(strstr(msg, "ms_add"));
    ck_assert_ptr_nonnull(strstr(msg, "float32"));
    ck_assert_ptr_nonnull(strstr(msg, "float64"));
    ms_clear_error();
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    /* successful ops do not clear */
    ck_assert_ptr_null(ms_matmul(b, a));
    ck_assert_ptr_nonnull(ms_add(a, a));
    ck_assert_int_eq(ms_last_error(NULL), MS_ERR_SHAPE);
}
END_TEST

START_TEST(creation_errors)
{
    ms_dtype dt = dtypes[_i];
    int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    ck_assert_ptr_null(ms_zeros(dt, 9, nine));
    check_error(MS_ERR_RANK, "ms_zeros");
    ck_assert_ptr_null(ms_ones(dt, -1, nine));
    check_error(MS_ERR_RANK, "ms_ones");
    double buf[1] = {0};
    ck_assert_ptr_null(ms_tensor_from_data(dt, 9, nine, buf));
    check_error(MS_ERR_RANK, "ms_tensor_from_data");
    ck_assert_ptr_nonnull(ms_zeros(dt, 8, nine)); /* 8 is fine */
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    int64_t huge[2] = {(int64_t)1 << 40, (int64_t)1 << 40};
    ck_assert_ptr_null(ms_zeros(dt, 2, huge));
    check_error(MS_ERR_OVERFLOW, "ms_zeros");
    ck_assert_ptr_null(ms_full(dt, 2, huge, 1.0));
    check_error(MS_ERR_OVERFLOW, "ms_full");
    int64_t h3[3] = {(int64_t)1 << 30, (int64_t)1 << 30, (int64_t)1 << 30};
    ck_assert_ptr_null(ms_random_uniform(dt, 3, h3, 0, 1, 1));
    check_error(MS_ERR_OVERFLOW, "ms_random_uniform");
    int64_t neg[2] = {2, -3};
    ck_assert_ptr_null(ms_zeros(dt, 2, neg));
    const char *msg;
    ck_assert_int_eq(ms_last_error(&msg), MS_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(msg, "ms_zeros"));
    ck_assert_ptr_nonnull(strstr(msg, "(2,-3)"));
    ms_clear_error();
    ck_assert_ptr_null(ms_tensor_from_data(dt, 2, neg, buf));
    check_error(MS_ERR_INVALID_ARG, "ms_tensor_from_data");
    ck_assert_ptr_null(ms_zeros((ms_dtype)5, 1, (int64_t[]){2}));
    check_error(MS_ERR_DTYPE, "ms_zeros");
    ck_assert_ptr_null(ms_zeros(dt, 2, NULL));
    check_error(MS_ERR_NULL_ARG, "ms_zeros");
    /* ops reject mixed dtypes */
    ms_tensor *a = ms_ones(MS_F32, 1, (int64_t[]){2});
    ms_tensor *b = ms_ones(MS_F64, 1, (int64_t[]){2});
    ck_assert_ptr_null(ms_mul(a, b));
    check_error(MS_ERR_DTYPE, "ms_mul");
    ck_assert_ptr_null(ms_matmul(a, b));
    check_error(MS_ERR_DTYPE, "ms_matmul");
    ck_assert_ptr_null(ms_where(a, a, b));
    check_error(MS_ERR_DTYPE, "ms_where");
    ms_tensor *ab[2] = {a, b};
    ck_assert_ptr_null(ms_concat(2, ab, 0));
    check_error(MS_ERR_DTYPE, "ms_concat");
    ck_assert_ptr_null(ms_stack(2, ab, 0));
    check_error(MS_ERR_DTYPE, "ms_stack");
    /* rank > 8 through broadcasting is impossible; through expand_dims it is checked */
    ck_assert_ptr_null(ms_broadcast_to(a, 9, nine));
    ck_assert_int_ne(ms_last_error(NULL), MS_OK);
    ms_clear_error();
}
END_TEST

START_TEST(status_strings)
{
    const char *seen[16];
    for (int s = 0; s <= MS_ERR_INTERNAL; s++) {
        const char *str = ms_status_string((ms_status)s);
        ck_assert_ptr_nonnull(str);
        ck_assert_int_gt(strlen(str), 0);
        ck_assert_str_ne(str, "unknown status");
        for (int j = 0; j < s; j++)
            ck_assert_str_ne(str, seen[j]);
        seen[s] = str;
    }
    ck_assert_str_eq(ms_status_string((ms_status)16), "unknown status");
    ck_assert_str_eq(ms_status_string((ms_status)-1), "unknown status");
    ck_assert_str_eq(ms_status_string((ms_status)1000), "unknown status");
    /* fixed ABI values */
    ck_assert_int_eq(MS_ERR_SHAPE, 4);
    ck_assert_int_eq(MS_ERR_INTERNAL, 15);
}
END_TEST

/* ----------------------------------------------------------- printing */

typedef struct print_case {
    ms_dtype dt;
    int ndim;
    int64_t shape[4];
    double v[30];
    const char *want;
} print_case;

/* Expected texts are NumPy 2's np.array2string(a, separator=', ',
 * prefix='ivy.array(', suffix=')') wrapped in "ivy.array(...)": what
 * metastep prints with significant-figure rounding off. */
static const print_case print_cases[] = {
    {MS_F64, 0, {0}, {1.40069818}, "ivy.array(1.40069818)"},
    {MS_F32, 0, {0}, {0.9880483150482178f}, "ivy.array(0.9880483)"},
    {MS_F64, 1, {1}, {-1.13723135}, "ivy.array([-1.13723135])"},
    {MS_F64, 2, {1, 2}, {1.02197957, 2.02197981}, "ivy.array([[1.02197957, 2.02197981]])"},
    {MS_F64, 1, {2}, {1.5, 2.25}, "ivy.array([1.5 , 2.25])"},
    {MS_F32, 1, {3}, {1.0f, 2.0f, 3.0f}, "ivy.array([1., 2., 3.])"},
    {MS_F64, 2, {2, 2}, {7.5, 2.5, 18.0, 3.25}, "ivy.array([[ 7.5 ,  2.5 ],\n           [18.  ,  3.25]])"},
    {MS_F64, 3, {2, 2, 2}, {0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0}, "ivy.array([[[0., 1.],\n            [2., 3.]],\n\n           [[4., 5.],\n            [6., 7.]]])"},
    {MS_F64, 1, {0}, {0}, "ivy.array([])"},
    {MS_F32, 2, {2, 0}, {0}, "ivy.array([])"},
    {MS_F64, 1, {4}, {NAN, 1.5, -INFINITY, INFINITY}, "ivy.array([ nan,  1.5, -inf,  inf])"},
    {MS_F64, 1, {3}, {NAN, 1.0, -INFINITY}, "ivy.array([ nan,   1., -inf])"},
    {MS_F64, 1, {2}, {1.5, NAN}, "ivy.array([1.5, nan])"},
    {MS_F64, 1, {2}, {1e-05, 1.0}, "ivy.array([1.e-05, 1.e+00])"},
    {MS_F32, 1, {2}, {9.999999747378752e-06f, 1.0f}, "ivy.array([1.e-05, 1.e+00])"},
    {MS_F64, 1, {2}, {-1e-05, 1.0}, "ivy.array([-1.e-05,  1.e+00])"},
    {MS_F64, 1, {3}, {1000000000.0, -2.5, 3.0}, "ivy.array([ 1.0e+09, -2.5e+00,  3.0e+00])"},
    {MS_F64, 1, {2}, {1e-100, 1.0}, "ivy.array([1.e-100, 1.e+000])"},
    {MS_F64, 1, {2}, {100000000.0, 1.0}, "ivy.array([1.e+08, 1.e+00])"},
    {MS_F64, 1, {2}, {10000000.0, 1.0}, "ivy.array([1.e+07, 1.e+00])"},
    {MS_F64, 1, {2}, {100.0, 0.5}, "ivy.array([100. ,   0.5])"},
    {MS_F64, 1, {30}, {-3.3, -2.05, -0.7999999999999998, 0.4500000000000002, 1.7000000000000002, 2.95, 4.2, 5.45, 6.7, 7.95, 9.2, 10.45, 11.7, 12.95, 14.2, 15.45, 16.7, 17.95, 19.2, 20.45, 21.7, 22.95, 24.2, 25.45, 26.7, 27.95, 29.2, 30.45, 31.7, 32.95}, "ivy.array([-3.3 , -2.05, -0.8 ,  0.45,  1.7 ,  2.95,  4.2 ,  5.45,  6.7 ,\n            7.95,  9.2 , 10.45, 11.7 , 12.95, 14.2 , 15.45, 16.7 , 17.95,\n           19.2 , 20.45, 21.7 , 22.95, 24.2 , 25.45, 26.7 , 27.95, 29.2 ,\n           30.45, 31.7 , 32.95])"},
    {MS_F32, 1, {30}, {-2.0999999046325684f, -1.7299998998641968f, -1.3599998950958252f, -0.9899998903274536f, -0.619999885559082f, -0.24999988079071045f, 0.12000012397766113f, 0.49000024795532227f, 0.8600001335144043f, 1.2300000190734863f, 1.6000001430511475f, 1.9700002670288086f, 2.3400001525878906f, 2.7100000381469727f, 3.080000400543213f, 3.450000286102295f, 3.820000171661377f, 4.190000057220459f, 4.559999942779541f, 4.930000305175781f, 5.300000190734863f, 5.670000076293945f, 6.0400004386901855f, 6.410000324249268f, 6.78000020980835f, 7.150000095367432f, 7.519999980926514f, 7.889999866485596f, 8.260000228881836f, 8.630001068115234f}, "ivy.array([-2.1       , -1.7299999 , -1.3599999 , -0.9899999 ,\n           -0.6199999 , -0.24999988,  0.12000012,  0.49000025,\n            0.86000013,  1.23      ,  1.6000001 ,  1.9700003 ,\n            2.3400002 ,  2.71      ,  3.0800004 ,  3.4500003 ,\n            3.8200002 ,  4.19      ,  4.56      ,  4.9300003 ,\n            5.3       ,  5.67      ,  6.0400004 ,  6.4100003 ,\n            6.78      ,  7.15      ,  7.52      ,  7.89      ,\n            8.26      ,  8.630001  ])"},
    {MS_F64, 1, {30}, {1.5000000000000001e-15, 1.5e-14, 1.5000000000000002e-13, 1.5e-12, 1.5e-11, 1.5e-10, 1.5000000000000002e-09, 1.5000000000000002e-08, 1.5e-07, 1.5e-06, 1.5000000000000002e-05, 0.00015000000000000001, 0.0015, 0.015, 0.15000000000000002, 1.5, 15.0, 150.0, 1500.0, 15000.0, 150000.0, 1500000.0, 15000000.0, 150000000.0, 1500000000.0, 15000000000.0, 150000000000.0, 1500000000000.0, 15000000000000.0, 150000000000000.0}, "ivy.array([1.5e-15, 1.5e-14, 1.5e-13, 1.5e-12, 1.5e-11, 1.5e-10, 1.5e-09,\n           1.5e-08, 1.5e-07, 1.5e-06, 1.5e-05, 1.5e-04, 1.5e-03, 1.5e-02,\n           1.5e-01, 1.5e+00, 1.5e+01, 1.5e+02, 1.5e+03, 1.5e+04, 1.5e+05,\n           1.5e+06, 1.5e+07, 1.5e+08, 1.5e+09, 1.5e+10, 1.5e+11, 1.5e+12,\n           1.5e+13, 1.5e+14])"},
    {MS_F64, 1, {2}, {-0.0, 1.0}, "ivy.array([-0.,  1.])"},
    {MS_F64, 1, {2}, {123456.0, 1.0}, "ivy.array([1.23456e+05, 1.00000e+00])"},
    {MS_F64, 1, {2}, {0.3333333333333333, 0.6666666666666666}, "ivy.array([0.33333333, 0.66666667])"},
    {MS_F32, 1, {2}, {0.3333333432674408f, 0.6666666865348816f}, "ivy.array([0.33333334, 0.6666667 ])"},
    {MS_F64, 1, {3}, {0.1, 0.2, 0.30000000000000004}, "ivy.array([0.1, 0.2, 0.3])"},
    {MS_F64, 2, {2, 2}, {1e-05, 2.0, 35000.0, -1.0}, "ivy.array([[ 1.0e-05,  2.0e+00],\n           [ 3.5e+04, -1.0e+00]])"},
    {MS_F64, 2, {2, 2}, {-1.5, 2.0, 3.0, -4.25}, "ivy.array([[-1.5 ,  2.  ],\n           [ 3.  , -4.25]])"},
    {MS_F64, 0, {0}, {0.0}, "ivy.array(0.)"},
    {MS_F64, 0, {0}, {-2.5}, "ivy.array(-2.5)"},
    {MS_F64, 0, {0}, {NAN}, "ivy.array(nan)"},
    {MS_F64, 0, {0}, {-INFINITY}, "ivy.array(-inf)"},
    {MS_F64, 0, {0}, {1e-05}, "ivy.array(1.e-05)"},
    {MS_F32, 0, {0}, {0.10000000149011612f}, "ivy.array(0.1)"},
    {MS_F64, 2, {3, 1}, {1.0, 2.0, 3.0}, "ivy.array([[1.],\n           [2.],\n           [3.]])"},
    {MS_F64, 3, {2, 3, 4}, {0.0, 0.14285714285714285, 0.2857142857142857, 0.42857142857142855, 0.5714285714285714, 0.7142857142857143, 0.8571428571428571, 1.0, 1.1428571428571428, 1.2857142857142858, 1.4285714285714286, 1.5714285714285714, 1.7142857142857142, 1.8571428571428572, 2.0, 2.142857142857143, 2.2857142857142856, 2.4285714285714284, 2.5714285714285716, 2.7142857142857144, 2.857142857142857, 3.0, 3.142857142857143, 3.2857142857142856}, "ivy.array([[[0.        , 0.14285714, 0.28571429, 0.42857143],\n            [0.57142857, 0.71428571, 0.85714286, 1.        ],\n            [1.14285714, 1.28571429, 1.42857143, 1.57142857]],\n\n           [[1.71428571, 1.85714286, 2.        , 2.14285714],\n            [2.28571429, 2.42857143, 2.57142857, 2.71428571],\n            [2.85714286, 3.        , 3.14285714, 3.28571429]]])"},
    {MS_F64, 4, {2, 1, 1, 2}, {1.0, -2.0, 3.5, 4.0}, "ivy.array([[[[ 1. , -2. ]]],\n\n\n           [[[ 3.5,  4. ]]]])"},
    {MS_F32, 1, {2}, {5000000.0f, 10000.0f}, "ivy.array([5.e+06, 1.e+04])"},
    {MS_F64, 1, {2}, {5000000.0, 10000.0}, "ivy.array([5000000.,   10000.])"},
    {MS_F64, 1, {2}, {1e-05, NAN}, "ivy.array([1.e-05,    nan])"},
    {MS_F64, 1, {2}, {NAN, INFINITY}, "ivy.array([nan, inf])"},
    {MS_F64, 1, {4}, {1e-05, 1.5, NAN, -INFINITY}, "ivy.array([1.0e-05, 1.5e+00,     nan,    -inf])"},
    {MS_F32, 1, {2}, {0.10000000149011612f, 1.234499995916849e-05f}, "ivy.array([1.0000e-01, 1.2345e-05])"},
    {MS_F64, 1, {2}, {1e+100, 1e-100}, "ivy.array([1.e+100, 1.e-100])"},
    {MS_F64, 2, {2, 12}, {-2.3333333333333335, -1.9666666666666668, -1.5999999999999999, -1.2333333333333332, -0.8666666666666666, -0.5, -0.13333333333333316, 0.2333333333333337, 0.6000000000000002, 0.9666666666666668, 1.3333333333333333, 1.7000000000000004, 2.066666666666667, 2.4333333333333336, 2.8000000000000007, 3.1666666666666665, 3.5333333333333337, 3.900000000000001, 4.266666666666667, 4.633333333333334, 5.0, 5.366666666666667, 5.733333333333334, 6.1000000000000005}, "ivy.array([[-2.33333333, -1.96666667, -1.6       , -1.23333333,\n            -0.86666667, -0.5       , -0.13333333,  0.23333333,\n             0.6       ,  0.96666667,  1.33333333,  1.7       ],\n           [ 2.06666667,  2.43333333,  2.8       ,  3.16666667,\n             3.53333333,  3.9       ,  4.26666667,  4.63333333,\n             5.        ,  5.36666667,  5.73333333,  6.1       ]])"},
    {MS_F64, 1, {2}, {NAN, NAN}, "ivy.array([nan, nan])"},
    {MS_F64, 0, {0}, {INFINITY}, "ivy.array(inf)"},
};

/* Ivy's own repr: values rounded to 10 significant figures in float64
 * (ivy.vec_sig_fig), then NumPy's float64 printing at 8 decimals.  Expected
 * texts from that procedure run with NumPy 1.26 (the documentation's era);
 * the first five are the documented meta-step outputs, from the float32
 * values metastep computes for them. */
static const print_case ivy_cases[] = {
    {MS_F32, 0, {0}, {1.400698184967041f}, "ivy.array(1.40069818)"},
    {MS_F32, 1, {1}, {-1.1372313499450684f}, "ivy.array([-1.13723135])"},
    {MS_F32, 1, {1}, {-139.9569854736328f}, "ivy.array([-139.9569855])"},
    {MS_F32, 1, {2}, {-13.017669677734375f, -13.017669677734375f}, "ivy.array([-13.01766968, -13.01766968])"},
    {MS_F32, 2, {1, 2}, {1.021979570388794f, 2.021979808807373f}, "ivy.array([[1.02197957, 2.02197981]])"},
    {MS_F32, 0, {0}, {0.9880483150482178f}, "ivy.array(0.98804832)"},
    {MS_F32, 1, {3}, {1.0f, 2.0f, 3.0f}, "ivy.array([1., 2., 3.])"},
    {MS_F32, 1, {2}, {0.10000000149011612f, 0.3333333432674408f}, "ivy.array([0.1       , 0.33333334])"},
    {MS_F64, 1, {2}, {1.5, 2.25}, "ivy.array([1.5 , 2.25])"},
    {MS_F64, 1, {3}, {1.23456789012345, 1e-05, NAN}, "ivy.array([1.23456789e+00, 1.00000000e-05,            nan])"},
    {MS_F64, 2, {2, 2}, {7.5, 2.5, 18.0, 3.25}, "ivy.array([[ 7.5 ,  2.5 ],\n           [18.  ,  3.25]])"},
    {MS_F32, 1, {4}, {-0.8557081818580627f, -2.4879496097564697f, 9.999999717180685e-10f, 0.0f}, "ivy.array([-8.55708182e-01, -2.48794961e+00,  9.99999972e-10,\n            0.00000000e+00])"},
};

static void check_print(const print_case *c, int i)
{
    ms_tensor *t = mk(c->dt, c->ndim, c->shape, c->v);
    ck_assert_ptr_nonnull(t);
    char *s = ms_tensor_to_string(t);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(strcmp(s, c->want) == 0, "case %d:\n got: %s\nwant: %s", i, s, c->want);
    /* fprint writes the same text */
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    ck_assert_int_eq(ms_tensor_fprint(f, t), MS_OK);
    fclose(f);
    ck_assert_str_eq(buf, c->want);
    free(buf);
    free(s);
}

START_TEST(print_like_ivy)
{
    int sf, dec;
    ms_get_print_options(&sf, &dec);
    ck_assert_int_eq(sf, 10); /* Ivy's defaults */
    ck_assert_int_eq(dec, 8);
    check_print(&ivy_cases[_i], _i);
}
END_TEST

START_TEST(print_options)
{
    ms_tensor *t = ms_scalar(MS_F64, 3.14159265358979);
    ck_assert_int_eq(ms_set_print_options(3, 8), MS_OK);
    char *s = ms_tensor_to_string(t);
    ck_assert_str_eq(s, "ivy.array(3.14)");
    free(s);
    ck_assert_int_eq(ms_set_print_options(0, 2), MS_OK);
    s = ms_tensor_to_string(t);
    ck_assert_str_eq(s, "ivy.array(3.14)");
    free(s);
    ck_assert_int_eq(ms_set_print_options(-1, 8), MS_ERR_INVALID_ARG);
    ck_assert_int_eq(ms_set_print_options(10, 18), MS_ERR_INVALID_ARG);
}
END_TEST

START_TEST(print_like_numpy)
{
    /* significant figures off: NumPy's own printing of the tensor's dtype */
    ck_assert_int_eq(ms_set_print_options(0, 8), MS_OK);
    check_print(&print_cases[_i], _i);
}
END_TEST

START_TEST(print_errors)
{
    ck_assert_ptr_null(ms_tensor_to_string(NULL));
    ck_assert_int_eq(ms_tensor_fprint(stdout, NULL), MS_ERR_NULL_ARG);
    ms_clear_error();
    ms_tensor *t = ms_scalar(MS_F32, 1);
    ck_assert_int_eq(ms_tensor_fprint(NULL, t), MS_ERR_NULL_ARG);
    check_error(MS_ERR_NULL_ARG, "ms_tensor_fprint");
    /* NULL returns MS_ERR_NULL_ARG even when an earlier failure is recorded */
    ck_assert_ptr_null(ms_reshape(t, 1, (int64_t[]){2}));
    ck_assert_int_eq(ms_tensor_fprint(stdout, NULL), MS_ERR_NULL_ARG);
    ck_assert_int_eq(ms_last_error(NULL), MS_ERR_SHAPE);
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
    Suite *s = suite_create("tensor");
    TCase *tc = tcase(s, "creation");
    tcase_add_loop_test(tc, from_data_copies, 0, 2);
    tcase_add_loop_test(tc, zeros_ones_full_scalar, 0, 2);
    tcase_add_loop_test(tc, arange_numpy, 0, 2);
    tcase_add_loop_test(tc, linspace_numpy, 0, 2);
    tcase_add_loop_test(tc, eye_shapes, 0, 2);
    tcase_add_loop_test(tc, copy_independent, 0, 2);
    tcase_add_loop_test(tc, random_tensors, 0, 2);
    tc = tcase(s, "inspection");
    tcase_add_loop_test(tc, inspection, 0, 2);
    tc = tcase(s, "shapes");
    tcase_add_loop_test(tc, reshape_infer, 0, 2);
    tcase_add_loop_test(tc, expand_squeeze, 0, 2);
    tc = tcase(s, "lifetime");
    tcase_add_test(tc, scope_frees);
    tcase_add_test(tc, retain_survives_pop);
    tcase_add_test(tc, no_scope_release);
    tcase_add_test(tc, nested_scopes);
    tcase_add_test(tc, pop_without_scope);
    tcase_add_test(tc, scope_depth_limit);
    tcase_add_test(tc, loop_does_not_grow);
    tc = tcase(s, "errors");
    tcase_add_test(tc, null_everywhere);
    tcase_add_test(tc, first_error_kept);
    tcase_add_loop_test(tc, creation_errors, 0, 2);
    tcase_add_test(tc, status_strings);
    tc = tcase(s, "printing");
    tcase_add_loop_test(tc, print_like_numpy, 0,
                        (int)(sizeof print_cases / sizeof *print_cases));
    tcase_add_loop_test(tc, print_like_ivy, 0, (int)(sizeof ivy_cases / sizeof *ivy_cases));
    tcase_add_test(tc, print_options);
    tcase_add_test(tc, print_errors);
    return run_suite(s);
}
