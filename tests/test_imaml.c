/* Implicit MAML (metastep_imaml_step).  Runs once per backend.
 *
 * 1. closed_form_*: linear regression inner and outer losses,
 *        inner(w, b) = 1/(2n) ||X w + b - y||^2  (support set)
 *        outer(w, b) = 1/(2m) ||Xq w + b - yq||^2 (query set).
 *    With phi = (w, b) and Xt = [X 1], A = Xt'Xt/n, c = Xt'y/n, the proximal
 *    inner problem inner(phi) + lambda/2 ||phi - theta||^2 has the solution
 *        phi* = (A + lambda I)^-1 (c + lambda theta),
 *    so d phi* / d theta = lambda (A + lambda I)^-1 (symmetric), and the exact
 *    meta-gradient is lambda (A + lambda I)^-1 (Aq phi* - cq) (Aq, cq from
 *    the query set), which is also (I + A/lambda)^-1 g: the implicit formula
 *    is exact here.  The test solves these systems in plain C (Gaussian
 *    elimination) and runs enough inner steps (gradient descent and SGD with
 *    momentum, both contracting) that phi_k = phi* to rounding: the cost,
 *    the adapted variables and the meta-gradient must match to 1e-8
 *    relative in float64, averaged over three tasks.
 * 2. sine_mlp_approaches_fd: on a 1-8-1 tanh network fitting sine waves,
 *    the implicit gradient's component along a pseudo-random direction is
 *    compared with the central difference of the returned cost (the outer
 *    cost at the k-step solution of the regularised problem) for k = 5, 40,
 *    400: the error falls as the inner loop converges, and at k = 400 it
 *    is below 1e-6 of the gradient's scale.
 * 3. negative_curvature_gives_first_order: where I + H/lambda is negative
 *    definite, CG stops at once and the gradient is g itself.
 * 4. refusals: lambda <= 0, cg_steps < 1, negative cg_tol, a NULL batch.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "tanh_net.h"
#include "testutil.h"

static void put(ms_container *c, const char *key, ms_tensor *t)
{
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(ms_container_set(c, key, t), MS_OK);
    if (ms_scope_depth() == 0)
        ms_release(t);
}

static void assert_ok(ms_status st)
{
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_msg(st == MS_OK, "status %d: %s", st, msg);
}

/* ------------------------------------------------ linear regression */

enum { T = 3, N = 7, M = 6, D = 3, Q = D + 1 };
static double X[T][N][D], Y[T][N], XQ[T][M][D], YQ[T][M];
static const double W0[D] = {0.3, -0.6, 0.2}, B0 = 0.15;

static void lr_data(void)
{
    for (int t = 0; t < T; t++) {
        for (int p = 0; p < N; p++) {
            for (int i = 0; i < D; i++)
                X[t][p][i] = sin(1.1 * t + 0.9 * p + 1.7 * i);
            Y[t][p] = cos(0.7 * t + 1.3 * p);
        }
        for (int p = 0; p < M; p++) {
            for (int i = 0; i < D; i++)
                XQ[t][p][i] = cos(0.4 * t - 1.2 * p + 0.8 * i);
            YQ[t][p] = sin(1.9 * t - 0.6 * p) + 0.3;
        }
    }
}

static ms_container *lr_batch(void)
{
    lr_data();
    ms_container *b = ms_container_new();
    put(b, "xs", ms_tensor_from_data(MS_F64, 3, (int64_t[]){T, N, D}, X));
    put(b, "ys", ms_tensor_from_data(MS_F64, 3, (int64_t[]){T, N, 1}, Y));
    put(b, "xq", ms_tensor_from_data(MS_F64, 3, (int64_t[]){T, M, D}, XQ));
    put(b, "yq", ms_tensor_from_data(MS_F64, 3, (int64_t[]){T, M, 1}, YQ));
    return b;
}

static ms_container *lr_vars(void)
{
    ms_container *v = ms_container_new();
    put(v, "w", ms_tensor_from_data(MS_F64, 2, (int64_t[]){D, 1}, W0));
    put(v, "b", ms_tensor_from_data(MS_F64, 2, (int64_t[]){1, 1}, &B0));
    return v;
}

static ms_tensor *lr_cost(const ms_container *b, const ms_container *v, const char *x,
                          const char *y)
{
    ms_tensor *e = ms_sub(ms_add(ms_matmul(ms_container_get(b, x), ms_container_get(v, "w")),
                                 ms_container_get(v, "b")),
                          ms_container_get(b, y));
    return ms_mul_scalar(ms_mean(ms_square(e), 0, NULL, false), 0.5);
}
static ms_tensor *lr_inner(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return lr_cost(b, v, "xs", "ys");
}
static ms_tensor *lr_outer(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return lr_cost(b, v, "xq", "yq");
}

/* Solve a x = rhs (Q x Q, partial pivoting); a and rhs are overwritten. */
static void solve(double a[Q][Q], double *rhs, double *x)
{
    for (int c = 0; c < Q; c++) {
        int piv = c;
        for (int r = c + 1; r < Q; r++)
            if (fabs(a[r][c]) > fabs(a[piv][c]))
                piv = r;
        for (int k = 0; k < Q; k++) {
            double t = a[c][k];
            a[c][k] = a[piv][k];
            a[piv][k] = t;
        }
        double t = rhs[c];
        rhs[c] = rhs[piv];
        rhs[piv] = t;
        for (int r = c + 1; r < Q; r++) {
            double f = a[r][c] / a[c][c];
            for (int k = c; k < Q; k++)
                a[r][k] -= f * a[c][k];
            rhs[r] -= f * rhs[c];
        }
    }
    for (int r = Q - 1; r >= 0; r--) {
        double s = rhs[r];
        for (int k = r + 1; k < Q; k++)
            s -= a[r][k] * x[k];
        x[r] = s / a[r][r];
    }
}

/* A = Xt'Xt/n and c = Xt'y/n for Xt = [x 1] */
static void normal_eq(int n, const double (*x)[D], const double *y, double a[Q][Q], double *c)
{
    memset(a, 0, sizeof(double) * Q * Q);
    memset(c, 0, sizeof(double) * Q);
    for (int p = 0; p < n; p++) {
        double xt[Q];
        for (int i = 0; i < D; i++)
            xt[i] = x[p][i];
        xt[D] = 1;
        for (int i = 0; i < Q; i++) {
            c[i] += xt[i] * y[p] / n;
            for (int j = 0; j < Q; j++)
                a[i][j] += xt[i] * xt[j] / n;
        }
    }
}

/* The exact cost, meta-gradient and adapted (w, b) per task, averaged. */
static double lr_exact(double lambda, double *grad, double (*phis)[Q])
{
    double cost = 0;
    memset(grad, 0, sizeof(double) * Q);
    double theta[Q] = {W0[0], W0[1], W0[2], B0};
    for (int t = 0; t < T; t++) {
        double a[Q][Q], c[Q], aq[Q][Q], cq[Q], phi[Q], g[Q], mg[Q];
        normal_eq(N, X[t], Y[t], a, c);
        normal_eq(M, XQ[t], YQ[t], aq, cq);
        double a2[Q][Q], rhs[Q];
        for (int i = 0; i < Q; i++) {
            rhs[i] = c[i] + lambda * theta[i];
            for (int j = 0; j < Q; j++)
                a2[i][j] = a[i][j] + (i == j ? lambda : 0);
        }
        solve(a2, rhs, phi);
        memcpy(phis[t], phi, sizeof phi);
        for (int i = 0; i < Q; i++) {
            g[i] = -cq[i];
            for (int j = 0; j < Q; j++)
                g[i] += aq[i][j] * phi[j];
        }
        for (int i = 0; i < Q; i++)
            for (int j = 0; j < Q; j++)
                a2[i][j] = a[i][j] + (i == j ? lambda : 0);
        memcpy(rhs, g, sizeof g);
        solve(a2, rhs, mg);
        for (int i = 0; i < Q; i++)
            grad[i] += lambda * mg[i] / T;
        double e2 = 0;
        for (int p = 0; p < M; p++) {
            double e = phi[D] - YQ[t][p];
            for (int i = 0; i < D; i++)
                e += XQ[t][p][i] * phi[i];
            e2 += e * e;
        }
        cost += e2 / (2.0 * M) / T;
    }
    return cost;
}

static void closed_form(const metastep_optimizer *opt, double lr, int steps, double lambda)
{
    ms_container *b = lr_batch(), *v = lr_vars();
    metastep_imaml_options o = METASTEP_IMAML_OPTIONS_DEFAULT;
    o.inner_optimization_step = opt;
    o.lambda = lambda;
    o.cg_steps = 20;
    o.cg_tol = 1e-15;
    o.return_inner_v = METASTEP_RETURN_INNER_ALL;
    metastep_result r;
    assert_ok(metastep_imaml_step(b, lr_inner, lr_outer, v, steps, lr, &o, &r));
    double grad[Q], phis[T][Q];
    double cost = lr_exact(lambda, grad, phis);
    double scale = 0;
    for (int i = 0; i < Q; i++)
        scale = fmax(scale, fabs(grad[i]));
    const ms_tensor *gw = ms_container_get(r.grads, "w"), *gb = ms_container_get(r.grads, "b");
    for (int i = 0; i < D; i++)
        ck_assert_msg(fabs(at(gw, i) - grad[i]) <= 1e-8 * scale, "lambda %g: dw[%d] %.15g, exact %.15g",
                      lambda, i, at(gw, i), grad[i]);
    ck_assert_msg(fabs(at(gb, 0) - grad[D]) <= 1e-8 * scale, "db %.15g, exact %.15g", at(gb, 0),
                  grad[D]);
    ck_assert_msg(fabs(ms_tensor_item(r.cost) - cost) <= 1e-8 * cost, "cost %.15g, exact %.15g",
                  ms_tensor_item(r.cost), cost);
    const ms_tensor *aw = ms_container_get(r.inner_v, "w"), *ab = ms_container_get(r.inner_v, "b");
    for (int t = 0; t < T; t++) {
        for (int i = 0; i < D; i++)
            ck_assert(fabs(at(aw, t * D + i) - phis[t][i]) <= 1e-10);
        ck_assert(fabs(at(ab, t) - phis[t][D]) <= 1e-10);
    }
    metastep_result_release(&r);
    ms_container_release(b);
    ms_container_release(v);
}

START_TEST(closed_form_gradient_descent)
{
    closed_form(NULL, 0.3, 300, 1.0);
    closed_form(NULL, 0.05, 300, 10.0);
    closed_form(NULL, 0.4, 1000, 0.1);
}
END_TEST

START_TEST(closed_form_momentum)
{
    metastep_optimizer m = metastep_sgd(0.5, false);
    closed_form(&m, 0.2, 300, 1.0);
}
END_TEST

/* ------------------------------------------------------------ sine MLP */

enum { ST = 2, SP = 10, HID = 8 };

static ms_container *sine_batch(void)
{
    double xs[ST][SP], ys[ST][SP], xq[ST][SP], yq[ST][SP];
    for (int t = 0; t < ST; t++) {
        double amp = 1.0 + 0.8 * t, ph = 0.5 + 1.1 * t;
        for (int p = 0; p < SP; p++) {
            xs[t][p] = -4.5 + 9.0 * p / (SP - 1) + 0.1 * t;
            xq[t][p] = -4.0 + 8.3 * p / (SP - 1) - 0.05 * t;
            ys[t][p] = amp * sin(xs[t][p] + ph);
            yq[t][p] = amp * sin(xq[t][p] + ph);
        }
    }
    ms_container *b = ms_container_new();
    put(b, "xs", ms_tensor_from_data(MS_F64, 3, (int64_t[]){ST, SP, 1}, xs));
    put(b, "ys", ms_tensor_from_data(MS_F64, 3, (int64_t[]){ST, SP, 1}, ys));
    put(b, "xq", ms_tensor_from_data(MS_F64, 3, (int64_t[]){ST, SP, 1}, xq));
    put(b, "yq", ms_tensor_from_data(MS_F64, 3, (int64_t[]){ST, SP, 1}, yq));
    return b;
}

static const char *const SK[4] = {"l0/w", "l0/b", "l1/w", "l1/b"};

static ms_container *sine_vars(void)
{
    const int64_t shapes[4][2] = {{1, HID}, {1, HID}, {HID, 1}, {1, 1}};
    ms_container *v = ms_container_new();
    for (int k = 0; k < 4; k++) {
        double x[HID];
        for (int i = 0; i < HID; i++)
            x[i] = 0.7 * sin(2.3 * k + 1.3 * i + 0.4);
        put(v, SK[k], ms_tensor_from_data(MS_F64, 2, shapes[k], x));
    }
    return v;
}

static ms_tensor *sine_inner(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return tanh_net_cost(b, v, SK, "xs", "ys");
}
static ms_tensor *sine_outer(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return tanh_net_cost(b, v, SK, "xq", "yq");
}

static double sine_cost(const ms_container *b, const ms_container *v, int steps,
                        const metastep_imaml_options *o, ms_container **grads)
{
    metastep_result r;
    assert_ok(metastep_imaml_step(b, sine_inner, sine_outer, v, steps, 0.05, o, &r));
    double c = ms_tensor_item(r.cost);
    if (grads)
        *grads = ms_container_copy(r.grads);
    metastep_result_release(&r);
    return c;
}

START_TEST(sine_mlp_approaches_fd)
{
    ms_container *b = sine_batch(), *v = sine_vars();
    metastep_imaml_options o = METASTEP_IMAML_OPTIONS_DEFAULT;
    o.lambda = 2.0;
    o.cg_steps = 4 * HID + 1;
    o.cg_tol = 1e-14;
    /* a direction */
    ms_container *d = ms_container_new();
    for (int k = 0; k < 4; k++) {
        const ms_tensor *x = ms_container_get(v, SK[k]);
        double u[HID];
        for (int i = 0; i < ms_tensor_numel(x); i++)
            u[i] = sin(5.1 * k + 2.9 * i + 0.2);
        put(d, SK[k], ms_tensor_from_data(MS_F64, 2, ms_tensor_shape(x), u));
    }
    const int ks[3] = {5, 40, 400};
    double errs[3];
    for (int n = 0; n < 3; n++) {
        ms_container *g = NULL;
        sine_cost(b, v, ks[n], &o, &g);
        double gd = 0, mag = 0;
        for (int k = 0; k < 4; k++) {
            const ms_tensor *gk = ms_container_get(g, SK[k]), *dk = ms_container_get(d, SK[k]);
            for (int i = 0; i < ms_tensor_numel(gk); i++) {
                gd += at(gk, i) * at(dk, i);
                mag += fabs(at(gk, i) * at(dk, i));
            }
        }
        const double eps = 1e-5;
        ms_container *e = ms_container_mul_scalar(d, eps), *vp = ms_container_add(v, e),
                     *vm = ms_container_sub(v, e);
        double fd = (sine_cost(b, vp, ks[n], &o, NULL) - sine_cost(b, vm, ks[n], &o, NULL)) / (2 * eps);
        errs[n] = fabs(fd - gd) / mag;
        fprintf(stderr, "iMAML sine k=%d: implicit %.10g, finite difference %.10g, error %.3g\n",
                ks[n], gd, fd, errs[n]);
        ms_container_release(e);
        ms_container_release(vp);
        ms_container_release(vm);
        ms_container_release(g);
    }
    ck_assert(errs[1] < errs[0]);
    ck_assert(errs[2] < errs[1]);
    ck_assert_msg(errs[2] < 1e-6, "error %g at k = 400", errs[2]);
    ms_container_release(d);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

/* Negative curvature: inner(w) = -3/2 ||w||^2 has H = -3 I, so with
 * lambda = 1, I + H/lambda = -2 I is negative definite: CG stops at its
 * first direction and returns g itself (the first-order answer), here
 * d outer/d phi at phi = theta (no inner steps) = theta - c. */
static ms_tensor *concave(const ms_container *b, const ms_container *v, void *u)
{
    (void)b, (void)u;
    return ms_mul_scalar(ms_sum(ms_square(ms_container_get(v, "w")), 0, NULL, false), -1.5);
}
static ms_tensor *to_c(const ms_container *b, const ms_container *v, void *u)
{
    (void)b, (void)u;
    ms_tensor *c = ms_tensor_from_data(MS_F64, 2, (int64_t[]){D, 1}, (double[]){1.0, 2.0, -1.0});
    ms_tensor *d = ms_sub(ms_container_get(v, "w"), c);
    if (ms_scope_depth() == 0)
        ms_release(c);
    return ms_mul_scalar(ms_sum(ms_square(d), 0, NULL, false), 0.5);
}

START_TEST(negative_curvature_gives_first_order)
{
    ms_container *b = lr_batch(), *v = lr_vars();
    metastep_imaml_options o = METASTEP_IMAML_OPTIONS_DEFAULT;
    o.num_tasks = 1;
    metastep_result r;
    assert_ok(metastep_imaml_step(b, concave, to_c, v, 0, 0.1, &o, &r));
    const double c[D] = {1.0, 2.0, -1.0};
    const ms_tensor *g = ms_container_get(r.grads, "w");
    for (int i = 0; i < D; i++)
        ck_assert_msg(at(g, i) == W0[i] - c[i], "dw[%d] = %g", i, at(g, i));
    ck_assert(at(ms_container_get(r.grads, "b"), 0) == 0);
    metastep_result_release(&r);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

START_TEST(refusals)
{
    ms_container *b = lr_batch(), *v = lr_vars();
    metastep_imaml_options o = METASTEP_IMAML_OPTIONS_DEFAULT;
    metastep_result r;
    o.lambda = 0;
    ck_assert_int_eq(metastep_imaml_step(b, lr_inner, NULL, v, 3, 0.1, &o, &r), MS_ERR_INVALID_ARG);
    o.lambda = NAN;
    ck_assert_int_eq(metastep_imaml_step(b, lr_inner, NULL, v, 3, 0.1, &o, &r), MS_ERR_INVALID_ARG);
    o = METASTEP_IMAML_OPTIONS_DEFAULT;
    o.cg_steps = 0;
    ck_assert_int_eq(metastep_imaml_step(b, lr_inner, NULL, v, 3, 0.1, &o, &r), MS_ERR_INVALID_ARG);
    o = METASTEP_IMAML_OPTIONS_DEFAULT;
    o.cg_tol = -1;
    ck_assert_int_eq(metastep_imaml_step(b, lr_inner, NULL, v, 3, 0.1, &o, &r), MS_ERR_INVALID_ARG);
    ck_assert_int_eq(metastep_imaml_step(NULL, lr_inner, NULL, v, 3, 0.1, NULL, &r), MS_ERR_NULL_ARG);
    o = METASTEP_IMAML_OPTIONS_DEFAULT;
    o.num_tasks = T + 1;
    ck_assert_int_eq(metastep_imaml_step(b, lr_inner, NULL, v, 3, 0.1, &o, &r), MS_ERR_INVALID_ARG);
    ck_assert_ptr_null(r.cost);
    /* defaults, outer cost = inner cost, one task: runs */
    o.num_tasks = 1;
    ms_clear_error();
    assert_ok(metastep_imaml_step(b, lr_inner, NULL, v, 3, 0.1, &o, &r));
    ck_assert(!ms_requires_grad(r.cost));
    metastep_result_release(&r);
    ms_clear_error();
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("imaml");
    TCase *tc = tcase_create("imaml");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, closed_form_gradient_descent);
    tcase_add_test(tc, closed_form_momentum);
    tcase_add_test(tc, sine_mlp_approaches_fd);
    tcase_add_test(tc, negative_curvature_gives_first_order);
    tcase_add_test(tc, refusals);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
