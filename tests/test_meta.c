/* The meta steps: the documented examples, finite-difference checks of the
 * whole procedure, hand-derived results for every option, bad input and
 * memory.  Runs once per backend (METASTEP_BACKEND). */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "testutil.h"

/* ------------------------------------------------------------ helpers */

static ms_tensor *vec(ms_dtype dt, int ndim, const int64_t *shape, const double *v)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        n *= shape[i];
    ms_tensor *t = ms_zeros(dt, ndim, shape);
    for (int64_t i = 0; i < n; i++) {
        if (dt == MS_F32)
            ((float *)ms_tensor_data(t))[i] = (float)v[i];
        else
            ((double *)ms_tensor_data(t))[i] = v[i];
    }
    return t;
}

/* c[key] = t, the container owning the only reference (no scope is open in
 * these tests unless stated). */
static void put(ms_container *c, const char *key, ms_tensor *t)
{
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(ms_container_set(c, key, t), MS_OK);
    if (ms_scope_depth() == 0)
        ms_release(t);
}

static void assert_close(double got, double want, double rtol, const char *what)
{
    ck_assert_msg(fabs(got - want) <= rtol * fabs(want) + 1e-12, "%s: got %.10g, want %.10g",
                  what, got, want);
}

static void assert_ok(ms_status st)
{
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_msg(st == MS_OK, "status %d: %s", st, msg);
}

static char *str_c(const ms_container *c) { return ms_container_to_string(c); }

static void assert_prints(const ms_container *c, const char *want)
{
    char *s = str_c(c);
    ck_assert_ptr_nonnull(s);
    ck_assert_str_eq(s, want);
    free(s);
}

/* ------------------------------------------- the documented examples */

/* inner_cost_fn(sub_batch, v) = sub_batch.mean().x / v.mean().latent */
static ms_tensor *doc_cost(const ms_container *b, const ms_container *v, void *user)
{
    (void)user;
    return ms_div(ms_mean(ms_container_get(b, "x"), 0, NULL, false),
                  ms_mean(ms_container_get(v, "latent"), 0, NULL, false));
}

static void doc_setup(ms_container **batch, ms_container **vars, int ntasks)
{
    *batch = ms_container_new();
    *vars = ms_container_new();
    put(*batch, "x", ms_arange(MS_F32, 1, ntasks + 1, 1));
    put(*vars, "latent", ms_ones(MS_F32, 2, (int64_t[]){ntasks, 1}));
}

START_TEST(doc_maml_step)
{
    ms_container *batch, *vars;
    doc_setup(&batch, &vars, 2);
    metastep_result r;
    assert_ok(metastep_maml_step(batch, doc_cost, doc_cost, vars, 5, 0.01, NULL, &r));
    assert_close(ms_tensor_item(r.cost), 1.40069818, 1e-6, "cost");
    assert_close(at(ms_container_get(r.grads, "latent"), 0), -1.13723135, 1e-6, "grad");
    char *s = ms_tensor_to_string(r.cost);
    ck_assert_str_eq(s, "ivy.array(1.40069818)");
    free(s);
    assert_prints(r.grads, "{\n    latent: ivy.array([-1.13723135])\n}");
    ck_assert_ptr_null(r.inner_v);
    ck_assert(!ms_requires_grad(r.cost));
    metastep_result_release(&r);
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

/* The result belongs to the caller, not to the scope the step ran in. */
START_TEST(results_survive_scope_pop)
{
    ms_container *batch, *vars;
    doc_setup(&batch, &vars, 2);
    int64_t live = ms_live_tensors();
    metastep_result r;
    ms_scope_push();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.return_inner_v = METASTEP_RETURN_INNER_ALL;
    assert_ok(metastep_maml_step(batch, doc_cost, doc_cost, vars, 5, 0.01, &o, &r));
    ms_scope_pop();
    assert_close(ms_tensor_item(r.cost), 1.40069818, 1e-6, "cost");
    assert_close(at(ms_container_get(r.grads, "latent"), 0), -1.13723135, 1e-6, "grad");
    ck_assert_int_eq(ms_tensor_shape(ms_container_get(r.inner_v, "latent"))[0], 2);
    metastep_result_release(&r);
    ck_assert_ptr_null(r.cost);
    ck_assert_int_eq(ms_live_tensors(), live);
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

START_TEST(doc_reptile_batched)
{
    ms_container *batch, *vars;
    doc_setup(&batch, &vars, 2);
    metastep_reptile_options o = METASTEP_REPTILE_OPTIONS_DEFAULT;
    o.num_tasks = 2;
    metastep_result r;
    assert_ok(metastep_reptile_step(batch, doc_cost, vars, 5, 0.01, &o, &r));
    assert_close(ms_tensor_item(r.cost), 1.4485182, 1e-6, "cost");
    /* the documentation prints this cost as NumPy's float32 repr: our float32
     * is the very float that repr names */
    ck_assert_float_eq((float)ms_tensor_item(r.cost), 1.4485182f);
    assert_close(at(ms_container_get(r.grads, "latent"), 0), -139.9569855, 1e-6, "grad");
    assert_prints(r.grads, "{\n    latent: ivy.array([-139.9569855])\n}");
    metastep_result_release(&r);
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

START_TEST(doc_reptile_unbatched)
{
    ms_container *batch = ms_container_new(), *vars = ms_container_new();
    put(batch, "x", ms_arange(MS_F32, 1, 4, 1));
    put(vars, "latent", vec(MS_F32, 1, (int64_t[]){2}, (double[]){1, 2}));
    metastep_reptile_options o = METASTEP_REPTILE_OPTIONS_DEFAULT;
    o.batched = false;
    o.num_tasks = 2;
    o.return_inner_v = METASTEP_RETURN_INNER_FIRST;
    metastep_result r;
    assert_ok(metastep_reptile_step(batch, doc_cost, vars, 4, 0.025, &o, &r));
    assert_close(ms_tensor_item(r.cost), 0.9880483, 1e-6, "cost");
    ck_assert_float_eq((float)ms_tensor_item(r.cost), 0.9880483f);
    assert_prints(r.grads, "{\n    latent: ivy.array([-13.01766968, -13.01766968])\n}");
    assert_prints(r.inner_v, "{\n    latent: ivy.array([[1.02197957, 2.02197981]])\n}");
    metastep_result_release(&r);
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

/* ------------------------------- a small nonlinear model, float64 */

/* pred = tanh(x * w1) * w2 (elementwise, broadcast over tasks/points);
 * cost = mean((pred - y)^2).  Support under "xs"/"ys", query "xq"/"yq". */
static ms_tensor *model_cost(const ms_container *b, const ms_container *v, const char *x,
                             const char *y)
{
    ms_tensor *pred = ms_mul(ms_tanh(ms_mul(ms_container_get(b, x), ms_container_get(v, "w1"))),
                             ms_container_get(v, "w2"));
    return ms_mean(ms_square(ms_sub(pred, ms_container_get(b, y))), 0, NULL, false);
}
static ms_tensor *support_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return model_cost(b, v, "xs", "ys");
}
static ms_tensor *query_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return model_cost(b, v, "xq", "yq");
}

enum { T = 3, D = 4 };

static ms_container *model_batch(void)
{
    ms_container *b = ms_container_new();
    int64_t s[2] = {T, D};
    put(b, "xs", ms_random_uniform(MS_F64, 2, s, -1, 1, 1));
    put(b, "ys", ms_random_uniform(MS_F64, 2, s, -1, 1, 2));
    put(b, "xq", ms_random_uniform(MS_F64, 2, s, -1, 1, 3));
    put(b, "yq", ms_random_uniform(MS_F64, 2, s, -1, 1, 4));
    return b;
}

/* shared variables (D,), or per-task copies (T, D) when batched */
static ms_container *model_vars(const double *w1, const double *w2, bool batched)
{
    ms_container *v = ms_container_new();
    ms_tensor *a = vec(MS_F64, 1, (int64_t[]){D}, w1), *b = vec(MS_F64, 1, (int64_t[]){D}, w2);
    if (batched) {
        int64_t s[2] = {T, D};
        put(v, "w1", ms_broadcast_to(a, 2, s));
        put(v, "w2", ms_broadcast_to(b, 2, s));
        ms_release(a);
        ms_release(b);
    } else {
        put(v, "w1", a);
        put(v, "w2", b);
    }
    return v;
}

typedef struct fd_case {
    bool batched;
    int steps;
    const metastep_optimizer *opt;
    bool avg;
} fd_case;

static double maml_cost_at(const fd_case *fc, const ms_container *batch, const double *w1,
                           const double *w2)
{
    ms_container *v = model_vars(w1, w2, fc->batched);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = fc->batched;
    o.inner_optimization_step = fc->opt;
    o.average_across_steps = fc->avg;
    metastep_result r;
    assert_ok(metastep_maml_step(batch, support_cost, query_cost, v, fc->steps, 0.1, &o, &r));
    double c = ms_tensor_item(r.cost);
    metastep_result_release(&r);
    ms_container_release(v);
    return c;
}

/* maml_step's gradient against the central difference of the procedure's
 * cost, perturbing each shared weight (tolerance 1e-6 relative + 1e-8). */
static void check_maml_fd(const fd_case *fc)
{
    ms_container *batch = model_batch();
    double w[2][D] = {{0.7, -0.4, 1.1, 0.3}, {0.5, 0.9, -0.8, 1.2}};
    ms_container *v = model_vars(w[0], w[1], fc->batched);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = fc->batched;
    o.inner_optimization_step = fc->opt;
    o.average_across_steps = fc->avg;
    metastep_result r;
    assert_ok(metastep_maml_step(batch, support_cost, query_cost, v, fc->steps, 0.1, &o, &r));
    const char *keys[2] = {"w1", "w2"};
    for (int k = 0; k < 2; k++) {
        ms_tensor *g = ms_container_get(r.grads, keys[k]);
        ck_assert_int_eq(ms_tensor_ndim(g), 1);
        ck_assert_int_eq(ms_tensor_shape(g)[0], D);
        for (int i = 0; i < D; i++) {
            double eps = 1e-6, keep = w[k][i];
            w[k][i] = keep + eps;
            double cp = maml_cost_at(fc, batch, w[0], w[1]);
            w[k][i] = keep - eps;
            double cm = maml_cost_at(fc, batch, w[0], w[1]);
            w[k][i] = keep;
            double fd = (cp - cm) / (2 * eps);
            ck_assert_msg(fabs(at(g, i) - fd) <= 1e-6 * fabs(fd) + 1e-8,
                          "%s[%d]: analytic %.12g, finite difference %.12g (batched %d, steps %d)",
                          keys[k], i, at(g, i), fd, fc->batched, fc->steps);
        }
    }
    metastep_result_release(&r);
    ms_container_release(v);
    ms_container_release(batch);
}

START_TEST(maml_fd_unbatched)
{
    for (int steps = 1; steps <= 3; steps++)
        check_maml_fd(&(fd_case){false, steps, NULL, false});
}
END_TEST

START_TEST(maml_fd_batched)
{
    for (int steps = 1; steps <= 3; steps++)
        check_maml_fd(&(fd_case){true, steps, NULL, false});
    check_maml_fd(&(fd_case){true, 2, NULL, true});
}
END_TEST

START_TEST(maml_fd_through_optimizers)
{
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    metastep_optimizer mom = metastep_sgd(0.9, false), nes = metastep_sgd(0.5, true);
    check_maml_fd(&(fd_case){false, 3, &adam, false});
    check_maml_fd(&(fd_case){true, 2, &adam, false});
    check_maml_fd(&(fd_case){false, 3, &mom, false});
    check_maml_fd(&(fd_case){false, 2, &nes, true});
}
END_TEST

/* Adam through a zero gradient: sqrt(0) must not put NaN in the meta-gradient. */
static ms_tensor *only_w1_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return ms_mean(ms_square(ms_sub(ms_container_get(v, "w1"), ms_container_get(b, "xs"))), 0,
                   NULL, false);
}

START_TEST(maml_adam_zero_gradient_is_finite)
{
    ms_container *batch = model_batch();
    double w[2][D] = {{0.7, -0.4, 1.1, 0.3}, {0.5, 0.9, -0.8, 1.2}};
    ms_container *v = model_vars(w[0], w[1], false); /* w2 gets zero inner gradients */
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    o.inner_optimization_step = &adam;
    metastep_result r;
    assert_ok(metastep_maml_step(batch, only_w1_cost, only_w1_cost, v, 2, 0.1, &o, &r));
    for (int k = 0; k < 2; k++) {
        ms_tensor *g = ms_container_at(r.grads, k);
        for (int i = 0; i < D; i++)
            ck_assert_msg(isfinite(at(g, i)), "%s[%d] is %g", ms_container_key(r.grads, k), i,
                          at(g, i));
    }
    for (int i = 0; i < D; i++) /* w2 does not enter the cost */
        ck_assert(at(ms_container_get(r.grads, "w2"), i) == 0.0);
    metastep_result_release(&r);
    ms_container_release(v);
    ms_container_release(batch);
}
END_TEST

/* ------------------------------------- closed forms on a quadratic */

/* c(w) = mean((w - x)^2) over the D entries of one task (x has shape (1,D)
 * unbatched); the outer cost is k times it. */
static ms_tensor *quad(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return ms_mean(ms_square(ms_sub(ms_container_get(v, "w"), ms_container_get(b, "x"))), 0,
                   NULL, false);
}
static ms_tensor *quad3(const ms_container *b, const ms_container *v, void *u)
{
    return ms_mul_scalar(quad(b, v, u), 3.0);
}

static const double W0[D] = {0.5, -1.0, 2.0, 0.0};

static ms_container *quad_batch(int tasks)
{
    ms_container *b = ms_container_new();
    double x[5 * D];
    for (int i = 0; i < tasks * D; i++)
        x[i] = 0.25 * (i % 7) - 0.5 * (i / D);
    put(b, "x", vec(MS_F64, 2, (int64_t[]){tasks, D}, x));
    return b;
}

static double xval(int task, int i) { return 0.25 * ((task * D + i) % 7) - 0.5 * task; }

static ms_container *quad_vars(void)
{
    ms_container *v = ms_container_new();
    put(v, "w", vec(MS_F64, 1, (int64_t[]){D}, W0));
    return v;
}

START_TEST(maml_one_step_quadratic_closed_form)
{
    /* unbatched, one step with lr a: w1 = w - a*2(w-x)/D; the meta-gradient
     * of c(w1) is (1 - 2a/D) * 2(w1-x)/D, averaged over tasks */
    double a = 0.3;
    ms_container *b = quad_batch(2), *v = quad_vars();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    metastep_result r;
    assert_ok(metastep_maml_step(b, quad, NULL, v, 1, a, &o, &r));
    double want_cost = 0, want[D] = {0};
    for (int t = 0; t < 2; t++) {
        for (int i = 0; i < D; i++) {
            double x = xval(t, i), w1 = W0[i] - a * 2 * (W0[i] - x) / D;
            want_cost += (w1 - x) * (w1 - x) / D / 2;
            want[i] += (1 - 2 * a / D) * 2 * (w1 - x) / D / 2;
        }
    }
    assert_close(ms_tensor_item(r.cost), want_cost, 1e-12, "cost");
    for (int i = 0; i < D; i++)
        assert_close(at(ms_container_get(r.grads, "w"), i), want[i], 1e-12, "grad");
    metastep_result_release(&r);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

/* first-order by hand: the gradient of the outer cost at the adapted
 * variables, ignoring how they depend on w */
static void fomaml_by_hand(int steps, double a, double k, bool avg, double *cost, double *grad)
{
    *cost = 0;
    for (int i = 0; i < D; i++)
        grad[i] = 0;
    for (int t = 0; t < 2; t++) {
        double w[D];
        memcpy(w, W0, sizeof w);
        double csum = 0, gsum[D] = {0};
        for (int s = 0; s <= steps; s++) {
            double c = 0;
            for (int i = 0; i < D; i++)
                c += k * (w[i] - xval(t, i)) * (w[i] - xval(t, i)) / D;
            if (avg || s == steps) {
                csum += c;
                for (int i = 0; i < D; i++)
                    gsum[i] += k * 2 * (w[i] - xval(t, i)) / D;
            }
            for (int i = 0; s < steps && i < D; i++)
                w[i] -= a * 2 * (w[i] - xval(t, i)) / D;
        }
        int n = avg ? steps + 1 : 1;
        *cost += csum / n / 2;
        for (int i = 0; i < D; i++)
            grad[i] += gsum[i] / n / 2;
    }
}

static void check_fomaml(metastep_cost_fn outer, double k, bool avg, int steps)
{
    double a = 0.2, want_cost, want[D];
    fomaml_by_hand(steps, a, k, avg, &want_cost, want);
    ms_container *b = quad_batch(2), *v = quad_vars();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    o.average_across_steps = avg;
    metastep_result r;
    assert_ok(metastep_fomaml_step(b, quad, outer, v, steps, a, &o, &r));
    assert_close(ms_tensor_item(r.cost), want_cost, 1e-12, "cost");
    for (int i = 0; i < D; i++)
        assert_close(at(ms_container_get(r.grads, "w"), i), want[i], 1e-12, "grad");
    ck_assert(!ms_requires_grad(r.cost));
    metastep_result_release(&r);
    ms_container_release(b);
    ms_container_release(v);
}

START_TEST(fomaml_first_order_by_hand)
{
    check_fomaml(NULL, 1.0, false, 1);
    check_fomaml(NULL, 1.0, false, 3);
}
END_TEST

START_TEST(option_outer_cost_fn)
{
    check_fomaml(quad3, 3.0, false, 2); /* the outer function's cost and gradient */
}
END_TEST

START_TEST(option_average_across_steps)
{
    check_fomaml(NULL, 1.0, true, 2);  /* inner grads of each step and the final one */
    check_fomaml(quad3, 3.0, true, 3); /* the outer costs/grads of every step */
}
END_TEST

static ms_container *double_x(const ms_container *b, void *u)
{
    int *calls = u;
    (*calls)++;
    ms_container *r = ms_container_new();
    ms_tensor *x = ms_mul_scalar(ms_container_get(b, "x"), 2.0);
    ms_container_set(r, "x", x);
    if (ms_scope_depth() == 0)
        ms_release(x);
    return r;
}

START_TEST(option_batch_fns)
{
    /* inner_batch_fn doubles x for the inner loop only: one step from w with
     * targets 2x, then the outer cost against x */
    int calls = 0;
    double a = 0.2;
    ms_container *b = quad_batch(2), *v = quad_vars();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    o.inner_batch_fn = double_x;
    o.user = &calls;
    metastep_result r;
    assert_ok(metastep_fomaml_step(b, quad, NULL, v, 1, a, &o, &r));
    ck_assert_int_eq(calls, 2); /* once per task */
    double want[D] = {0};
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < D; i++) {
            double w1 = W0[i] - a * 2 * (W0[i] - 2 * xval(t, i)) / D;
            want[i] += 2 * (w1 - xval(t, i)) / D / 2;
        }
    for (int i = 0; i < D; i++)
        assert_close(at(ms_container_get(r.grads, "w"), i), want[i], 1e-12, "grad");
    metastep_result_release(&r);
    /* outer_batch_fn: the outer cost sees 2x */
    calls = 0;
    o.inner_batch_fn = NULL;
    o.outer_batch_fn = double_x;
    assert_ok(metastep_fomaml_step(b, quad, NULL, v, 1, a, &o, &r));
    ck_assert_int_eq(calls, 2);
    for (int i = 0; i < D; i++)
        want[i] = 0;
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < D; i++) {
            double w1 = W0[i] - a * 2 * (W0[i] - xval(t, i)) / D;
            want[i] += 2 * (w1 - 2 * xval(t, i)) / D / 2;
        }
    for (int i = 0; i < D; i++)
        assert_close(at(ms_container_get(r.grads, "w"), i), want[i], 1e-12, "grad");
    metastep_result_release(&r);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

START_TEST(option_batched_equals_unbatched)
{
    /* per-task copies (T, D) batched give the same cost, and their mean
     * gradient over axis 0 equals the unbatched task average */
    ms_container *b = quad_batch(3), *v = quad_vars(), *vb = ms_container_new();
    put(vb, "w", ms_broadcast_to(ms_container_get(v, "w"), 2, (int64_t[]){3, D}));
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    metastep_result rb, ru;
    o.return_inner_v = METASTEP_RETURN_INNER_ALL;
    assert_ok(metastep_fomaml_step(b, quad, NULL, vb, 2, 0.1, &o, &rb));
    o.batched = false;
    assert_ok(metastep_fomaml_step(b, quad, NULL, v, 2, 0.1, &o, &ru));
    assert_close(ms_tensor_item(rb.cost), ms_tensor_item(ru.cost), 1e-12, "cost");
    ck_assert(ms_container_allclose(rb.grads, ru.grads, 1e-12, 1e-14));
    ck_assert(ms_container_allclose(rb.inner_v, ru.inner_v, 1e-12, 1e-14));
    ck_assert_int_eq(ms_tensor_shape(ms_container_get(ru.inner_v, "w"))[0], 3);
    metastep_result_release(&rb);
    metastep_result_release(&ru);
    ms_container_release(b);
    ms_container_release(v);
    ms_container_release(vb);
}
END_TEST

/* ANIL-style: a body and a head; the cost uses both. */
static ms_tensor *two_part(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    ms_tensor *h = ms_mul(ms_container_get(v, "body"), ms_container_get(b, "x"));
    return ms_mean(ms_square(ms_sub(ms_mul(h, ms_container_get(v, "head")), ms_container_get(b, "x"))),
                   0, NULL, false);
}

static ms_container *two_part_vars(void)
{
    ms_container *v = ms_container_new();
    put(v, "body", vec(MS_F64, 1, (int64_t[]){D}, (double[]){1.5, -0.5, 0.25, 2.0}));
    put(v, "head", vec(MS_F64, 1, (int64_t[]){D}, (double[]){0.5, 1.0, -1.0, 0.75}));
    return v;
}

START_TEST(option_inner_v_anil)
{
    ms_container *b = quad_batch(2), *v = two_part_vars();
    const char *head[] = {"head", NULL};
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    o.inner_v = head;
    o.return_inner_v = METASTEP_RETURN_INNER_ALL;
    metastep_result r;
    assert_ok(metastep_fomaml_step(b, two_part, NULL, v, 2, 0.5, &o, &r));
    /* only the head adapted: the body of every task equals the original */
    ms_tensor *body = ms_container_get(r.inner_v, "body"), *h = ms_container_get(r.inner_v, "head");
    ms_tensor *body0 = ms_container_get(v, "body"), *h0 = ms_container_get(v, "head");
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < D; i++) {
            ck_assert(at(body, t * D + i) == at(body0, i));
            if (xval(t, i) != 0) /* where x is 0 the cost ignores the head */
                ck_assert(at(h, t * D + i) != at(h0, i));
        }
    /* outer gradients cover every variable (outer_v absent) */
    ck_assert_int_eq(ms_container_size(r.grads), 2);
    metastep_result_release(&r);
    /* keep_inner_v false: everything but the head adapts */
    o.keep_inner_v = false;
    assert_ok(metastep_fomaml_step(b, two_part, NULL, v, 2, 0.5, &o, &r));
    body = ms_container_get(r.inner_v, "body");
    h = ms_container_get(r.inner_v, "head");
    for (int i = 0; i < D; i++) {
        ck_assert(at(h, i) == at(h0, i));
        if (xval(0, i) != 0)
            ck_assert(at(body, i) != at(body0, i));
    }
    metastep_result_release(&r);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

/* An error left on the thread by an earlier, unrelated call does not make a
 * valid meta step fail (metastep_maml_step used to read it back as its own
 * status after selecting the outer variables). */
START_TEST(stale_error_ignored)
{
    ms_container *b = quad_batch(2), *v = two_part_vars();
    const char *body[] = {"body", NULL};
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.outer_v = body;
    metastep_result r;
    for (int batched = 0; batched < 2; batched++) {
        o.batched = batched;
        ck_assert(isnan(ms_tensor_item(NULL))); /* leaves MS_ERR_NULL_ARG recorded */
        ck_assert_int_ne(ms_last_error(NULL), MS_OK);
        ck_assert_int_eq(metastep_maml_step(b, two_part, NULL, v, 1, 0.5, &o, &r), MS_OK);
        ck_assert_int_eq(ms_container_size(r.grads), 1);
        metastep_result_release(&r);
        ms_clear_error();
    }
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

START_TEST(option_outer_v)
{
    ms_container *b = quad_batch(2), *v = two_part_vars();
    const char *body[] = {"body", NULL};
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    o.outer_v = body;
    metastep_result r, all;
    assert_ok(metastep_fomaml_step(b, two_part, NULL, v, 1, 0.5, &o, &r));
    ck_assert_int_eq(ms_container_size(r.grads), 1);
    ck_assert(ms_container_has(r.grads, "body"));
    /* the body's gradient equals the body part of the all-variables one */
    o.outer_v = NULL;
    assert_ok(metastep_fomaml_step(b, two_part, NULL, v, 1, 0.5, &o, &all));
    for (int i = 0; i < D; i++)
        assert_close(at(ms_container_get(r.grads, "body"), i),
                     at(ms_container_get(all.grads, "body"), i), 1e-12, "body grad");
    metastep_result_release(&r);
    /* keep_outer_v false: the gradient with respect to the rest */
    o.outer_v = body;
    o.keep_outer_v = false;
    assert_ok(metastep_fomaml_step(b, two_part, NULL, v, 1, 0.5, &o, &r));
    ck_assert_int_eq(ms_container_size(r.grads), 1);
    for (int i = 0; i < D; i++)
        assert_close(at(ms_container_get(r.grads, "head"), i),
                     at(ms_container_get(all.grads, "head"), i), 1e-12, "head grad");
    metastep_result_release(&r);
    /* second order with outer_v: only the body is differentiated */
    o.keep_outer_v = true;
    assert_ok(metastep_maml_step(b, two_part, NULL, v, 1, 0.5, &o, &r));
    ck_assert_int_eq(ms_container_size(r.grads), 1);
    ck_assert(ms_container_has(r.grads, "body"));
    metastep_result_release(&r);
    metastep_result_release(&all);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

START_TEST(option_return_inner_v)
{
    ms_container *b = quad_batch(3), *v = quad_vars();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    metastep_result first, all;
    o.return_inner_v = METASTEP_RETURN_INNER_FIRST;
    assert_ok(metastep_fomaml_step(b, quad, NULL, v, 1, 0.2, &o, &first));
    o.return_inner_v = METASTEP_RETURN_INNER_ALL;
    assert_ok(metastep_fomaml_step(b, quad, NULL, v, 1, 0.2, &o, &all));
    ms_tensor *f = ms_container_get(first.inner_v, "w"), *a = ms_container_get(all.inner_v, "w");
    ck_assert_int_eq(ms_tensor_ndim(f), 2);
    ck_assert_int_eq(ms_tensor_shape(f)[0], 1);
    ck_assert_int_eq(ms_tensor_shape(a)[0], 3);
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < D; i++) {
            double w1 = W0[i] - 0.2 * 2 * (W0[i] - xval(t, i)) / D;
            assert_close(at(a, t * D + i), w1, 1e-12, "adapted");
            if (t == 0)
                ck_assert(at(f, i) == at(a, i));
        }
    metastep_result_release(&first);
    metastep_result_release(&all);
    /* none: NULL */
    o.return_inner_v = METASTEP_RETURN_INNER_NONE;
    assert_ok(metastep_maml_step(b, quad, NULL, v, 1, 0.2, &o, &first));
    ck_assert_ptr_null(first.inner_v);
    metastep_result_release(&first);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

START_TEST(option_num_tasks_smaller_than_batch)
{
    ms_container *b3 = quad_batch(3), *b2 = quad_batch(2), *v = quad_vars();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    o.num_tasks = 2;
    metastep_result r3, r2;
    assert_ok(metastep_maml_step(b3, quad, NULL, v, 2, 0.2, &o, &r3));
    o.num_tasks = 0;
    assert_ok(metastep_maml_step(b2, quad, NULL, v, 2, 0.2, &o, &r2));
    ck_assert(ms_tensor_item(r3.cost) == ms_tensor_item(r2.cost));
    ck_assert(ms_container_allclose(r3.grads, r2.grads, 0, 0));
    metastep_result_release(&r3);
    metastep_result_release(&r2);
    ms_container_release(b3);
    ms_container_release(b2);
    ms_container_release(v);
}
END_TEST

START_TEST(option_stop_gradients)
{
    ms_container *b = quad_batch(2), *v = quad_vars();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    o.return_inner_v = METASTEP_RETURN_INNER_ALL;
    metastep_result on, off;
    assert_ok(metastep_fomaml_step(b, quad, NULL, v, 2, 0.2, &o, &on));
    o.stop_gradients = false;
    assert_ok(metastep_fomaml_step(b, quad, NULL, v, 2, 0.2, &o, &off));
    ck_assert(!ms_requires_grad(on.cost)); /* detached */
    ck_assert(ms_requires_grad(off.cost)); /* still differentiable */
    /* the same numbers either way for plain gradient descent */
    assert_close(ms_tensor_item(on.cost), ms_tensor_item(off.cost), 1e-12, "cost");
    ck_assert(ms_container_allclose(on.grads, off.grads, 1e-12, 1e-14));
    metastep_result_release(&on);
    metastep_result_release(&off);
    /* maml: the cost is detached only when asked */
    o.stop_gradients = true;
    assert_ok(metastep_maml_step(b, quad, NULL, v, 1, 0.2, &o, &on));
    ck_assert(!ms_requires_grad(on.cost));
    metastep_result_release(&on);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

START_TEST(gradient_descent_update_like_ivy)
{
    ms_container *w = quad_vars(), *g = ms_container_new();
    put(g, "w", vec(MS_F64, 1, (int64_t[]){D}, (double[]){1, 2, 3, 4}));
    ms_container *n = metastep_gradient_descent_update(w, g, 0.5, true);
    ck_assert_ptr_nonnull(n);
    for (int i = 0; i < D; i++)
        assert_close(at(ms_container_get(n, "w"), i), W0[i] - 0.5 * (i + 1), 1e-15, "w");
    ms_container_release(n);
    ms_container_release(g);
    ms_container_release(w);
}
END_TEST

START_TEST(optimizer_states_by_hand)
{
    /* two updates with g = 1 everywhere, lr 0.1 */
    ms_container *w = quad_vars(), *g = ms_container_new();
    put(g, "w", ms_ones(MS_F64, 1, (int64_t[]){D}));
    metastep_optimizer mom = metastep_sgd(0.9, false), nes = metastep_sgd(0.9, true);
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    const metastep_optimizer *opts[3] = {&mom, &nes, &adam};
    /* momentum: bufs 1, 1.9 -> w - 0.1*(1 + 1.9); nesterov: steps g + 0.9*buf
     * = 1.9, 2.71; adam with constant gradients steps lr each time */
    double delta[3] = {0.1 * 2.9, 0.1 * (1.9 + 2.71), 0.2};
    for (int k = 0; k < 3; k++) {
        /* the state copies the optimizer: clobbering the caller's value
         * afterwards (a stack temporary going out of scope) changes nothing */
        metastep_optimizer tmp = *opts[k];
        metastep_optim_state *s = metastep_optim_state_new(&tmp);
        memset(&tmp, 0xff, sizeof tmp);
        ms_container *w1 = metastep_optim_step(s, w, g, 0.1, true);
        ms_container *w2 = metastep_optim_step(s, w1, g, 0.1, true);
        for (int i = 0; i < D; i++)
            assert_close(at(ms_container_get(w2, "w"), i), W0[i] - delta[k], 1e-7, opts[k]->name);
        ms_container_release(w1);
        ms_container_release(w2);
        metastep_optim_state_release(s);
    }
    ms_container_release(g);
    ms_container_release(w);
}
END_TEST

/* Adam with stop_gradients on runs its kernels on plain buffers (the outer
 * update of every meta-step); with it off, through differentiable ops.  Both
 * must give the same bits, step after step, on every backend: leaves of
 * several shapes (one empty), both dtypes, gradients with zeros (a second
 * moment of 0: sqrt against safe_sqrt) and signs that change. */
START_TEST(adam_stopped_equals_differentiable)
{
    for (int dti = 0; dti < 2; dti++) {
        const ms_dtype dt = dti ? MS_F64 : MS_F32;
        static const int64_t shapes[4][2] = {{7, 5}, {1, 33}, {0, 3}, {2, 1}};
        ms_container *w[2] = {ms_container_new(), ms_container_new()};
        metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
        metastep_optim_state *s[2] = {metastep_optim_state_new(&adam),
                                      metastep_optim_state_new(&adam)};
        char key[8];
        for (int l = 0; l < 4; l++) {
            double v[64];
            for (int i = 0; i < 64; i++)
                v[i] = sin(0.37 * i + l);
            snprintf(key, sizeof key, "l%d", l);
            for (int c = 0; c < 2; c++)
                put(w[c], key, vec(dt, 2, shapes[l], v));
        }
        for (int step = 0; step < 6; step++) {
            ms_container *g = ms_container_new();
            for (int l = 0; l < 4; l++) {
                double v[64];
                for (int i = 0; i < 64; i++)
                    v[i] = (i + step) % 4 == 0 ? 0.0 : cos(1.3 * i * (step + 1) + l) * (l + 1);
                snprintf(key, sizeof key, "l%d", l);
                put(g, key, vec(dt, 2, shapes[l], v));
            }
            for (int c = 0; c < 2; c++) {
                ms_container *next = metastep_optim_step(s[c], w[c], g, 0.01 * (step + 1), c == 0);
                ck_assert_ptr_nonnull(next);
                ms_container_release(w[c]);
                w[c] = next;
            }
            for (int l = 0; l < 4; l++) {
                const ms_tensor *a = ms_container_at(w[0], l), *b = ms_container_at(w[1], l);
                ck_assert_mem_eq(ms_tensor_data((ms_tensor *)a), ms_tensor_data((ms_tensor *)b),
                                 (size_t)ms_tensor_numel(a) * ms_dtype_size(dt));
            }
            ms_container_release(g);
        }
        for (int c = 0; c < 2; c++) {
            ms_container_release(w[c]);
            metastep_optim_state_release(s[c]);
        }
    }
}
END_TEST

/* Issue 12: a restored optimizer state with a misshapen, missing or extra
 * leaf was accepted (and trained to NaN); the next step refuses it. */
START_TEST(optimizer_state_must_match_variables)
{
    ms_container *w = quad_vars(), *g = ms_container_new();
    put(w, "x", vec(MS_F64, 1, (int64_t[]){D}, W0));
    put(g, "w", ms_ones(MS_F64, 1, (int64_t[]){D}));
    put(g, "x", ms_ones(MS_F64, 1, (int64_t[]){D}));
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    /* every case starts from a state that matches, then spoils one leaf */
    struct { const char *key; int64_t n; bool drop; ms_status want; const char *needle; } bad[] = {
        {"m/w", D + 1, false, MS_ERR_SHAPE, "first buffer (m) 'w' is float64 ("},
        {"m/other", D, false, MS_ERR_KEY, "'other', which is not a variable"},
        {"m/x", D, true, MS_ERR_KEY, "has no 'x'"},
    };
    for (int k = 0; k < 3; k++) {
        metastep_optim_state *s = metastep_optim_state_new(&adam);
        ms_container *saved = ms_container_new();
        put(saved, "t", ms_scalar(MS_F64, 3));
        const char *keys[4] = {"m/w", "m/x", "v/w", "v/x"};
        for (int i = 0; i < 4; i++)
            if (!(bad[k].drop && !strcmp(keys[i], bad[k].key)) && strcmp(keys[i], bad[k].key))
                put(saved, keys[i], ms_ones(MS_F64, 1, (int64_t[]){D}));
        if (!bad[k].drop)
            put(saved, bad[k].key, ms_ones(MS_F64, 1, (int64_t[]){bad[k].n}));
        ck_assert_int_eq(metastep_optim_state_restore(s, saved), MS_OK);
        ms_container *next = metastep_optim_step(s, w, g, 0.1, true);
        const char *msg = NULL;
        ck_assert_ptr_null(next);
        ck_assert_int_eq(ms_last_error(&msg), bad[k].want);
        ck_assert_msg(strstr(msg, bad[k].needle), "case %d: '%s' lacks '%s'", k, msg,
                      bad[k].needle);
        ms_clear_error();
        ms_container_release(saved);
        metastep_optim_state_release(s);
    }
    ms_container_release(g);
    ms_container_release(w);
}
END_TEST

/* ------------------------------------------------------- bad input */

static ms_tensor *null_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)b, (void)v, (void)u;
    return NULL;
}
static ms_tensor *vector_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)b, (void)u;
    return ms_mul_scalar(ms_container_get(v, "w"), 1.0);
}
static ms_tensor *nan_cost(const ms_container *b, const ms_container *v, void *u)
{
    return ms_mul_scalar(quad(b, v, u), NAN);
}

static void expect_error(ms_status st, ms_status want, const char *needle, metastep_result *r)
{
    const char *msg = NULL;
    ms_status last = ms_last_error(&msg);
    ck_assert_msg(st == want, "status %d, want %d (%s)", st, want, msg);
    ck_assert_int_eq(last, want);
    ck_assert_msg(strstr(msg, needle), "message '%s' lacks '%s'", msg, needle);
    ck_assert_ptr_null(r->cost);
    ck_assert_ptr_null(r->grads);
    ck_assert_ptr_null(r->inner_v);
    ms_clear_error();
}

START_TEST(bad_input)
{
    ms_container *b = quad_batch(2), *v = quad_vars();
    ms_tensor *w = ms_container_get(v, "w");
    double before[D];
    for (int i = 0; i < D; i++)
        before[i] = at(w, i);
    int64_t live = ms_live_tensors();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    metastep_result r;
    const char *nope[] = {"nope", NULL};
    o.inner_v = nope;
    expect_error(metastep_maml_step(b, quad, NULL, v, 1, 0.1, &o, &r), MS_ERR_KEY, "nope", &r);
    o.inner_v = NULL;
    o.outer_v = nope;
    expect_error(metastep_fomaml_step(b, quad, NULL, v, 1, 0.1, &o, &r), MS_ERR_KEY, "nope", &r);
    o.outer_v = NULL;
    o.num_tasks = 5;
    expect_error(metastep_maml_step(b, quad, NULL, v, 1, 0.1, &o, &r), MS_ERR_INVALID_ARG,
                 "num_tasks 5", &r);
    o.num_tasks = 0;
    expect_error(metastep_maml_step(b, quad, NULL, v, -1, 0.1, &o, &r), MS_ERR_INVALID_ARG,
                 "inner_grad_steps", &r);
    expect_error(metastep_maml_step(b, null_cost, NULL, v, 1, 0.1, &o, &r), MS_ERR_INVALID_ARG,
                 "returned NULL", &r);
    expect_error(metastep_fomaml_step(b, vector_cost, NULL, v, 1, 0.1, &o, &r),
                 MS_ERR_INVALID_ARG, "not one", &r);
    expect_error(metastep_maml_step(b, nan_cost, NULL, v, 1, 0.1, &o, &r), MS_ERR_NUMERIC, "nan",
                 &r);
    expect_error(metastep_reptile_step(b, quad, v, 1, 0.0, NULL, &r), MS_ERR_INVALID_ARG,
                 "inner_learning_rate", &r);
    ms_container *bad = ms_container_new();
    put(bad, "x", ms_zeros(MS_F64, 2, (int64_t[]){2, D}));
    put(bad, "y", ms_zeros(MS_F64, 2, (int64_t[]){3, D}));
    expect_error(metastep_fomaml_step(bad, quad, NULL, v, 1, 0.1, &o, &r), MS_ERR_SHAPE,
                 "leading dimensions", &r);
    expect_error(metastep_maml_step(NULL, quad, NULL, v, 1, 0.1, &o, &r), MS_ERR_NULL_ARG,
                 "batch", &r);
    ms_container_release(bad);
    /* the caller's variables are untouched, and nothing leaked */
    ck_assert_ptr_eq(ms_container_get(v, "w"), w);
    for (int i = 0; i < D; i++)
        ck_assert(at(w, i) == before[i]);
    ck_assert(!ms_requires_grad(w));
    ck_assert_int_eq(ms_live_tensors(), live);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

/* ------------------------------------------------- non-finite gradients */

/* sum(sqrt(w)) at w = [0, 1]: the cost is finite (1) but d/dw = 0.5/sqrt(w)
 * is [inf, 0.5].  Ivy replaces the inf by 0; metastep returns it from
 * ms_grad and the meta steps refuse it (meta.h, "Errors"). */
static ms_tensor *sqrt_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)b, (void)u;
    return ms_sum(ms_sqrt(ms_container_get(v, "net/w")), 0, NULL, false);
}

static ms_tensor *sq_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)b, (void)u;
    return ms_sum(ms_square(ms_container_get(v, "net/w")), 0, NULL, false);
}

static void expect_numeric(ms_status st, const char *fn, const char *which, const char *value,
                           const char *where, metastep_result *r)
{
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_msg(st == MS_ERR_NUMERIC, "%s: status %d, want MS_ERR_NUMERIC (%s)", fn, st, msg);
    const char *needles[] = {fn, which, "'net/w' is ", where, value};
    for (size_t i = 0; i < sizeof needles / sizeof *needles && needles[i]; i++)
        ck_assert_msg(strstr(msg, needles[i]), "message '%s' lacks '%s'", msg, needles[i]);
    ck_assert_ptr_null(r->cost);
    ck_assert_ptr_null(r->grads);
    ck_assert_ptr_null(r->inner_v);
    ms_clear_error();
}

START_TEST(non_finite_gradient_refused)
{
    ms_container *v = ms_container_new();
    put(v, "net/w", vec(MS_F64, 1, (int64_t[]){2}, (double[]){0, 1}));
    /* ms_grad gives the IEEE values */
    ms_scope_push();
    ms_container *wv = ms_container_new();
    ck_assert_int_eq(ms_container_set(wv, "net/w", ms_variable(ms_container_get(v, "net/w"))),
                     MS_OK);
    ms_container *g = NULL;
    assert_ok(ms_grad(sqrt_cost(NULL, wv, NULL), wv, false, &g));
    ck_assert(at(ms_container_get(g, "net/w"), 0) == INFINITY);
    ck_assert(at(ms_container_get(g, "net/w"), 1) == 0.5);
    ms_container_release(g);
    ms_container_release(wv);
    ms_scope_pop();

    ms_container *b = quad_batch(2);
    const int64_t live = ms_live_tensors();
    metastep_result r;
    for (int batched = 0; batched < 2; batched++) {
        /* one inner step: its gradient is refused; no inner step: the outer
         * gradient (at the unchanged variables) is */
        for (int steps = 1; steps >= 0; steps--) {
            const char *which = steps ? "inner gradient" : "outer gradient";
            metastep_options o = METASTEP_OPTIONS_DEFAULT;
            o.batched = batched;
            expect_numeric(metastep_maml_step(b, sqrt_cost, NULL, v, steps, 0.1, &o, &r),
                           "metastep_maml_step", which, "inf", "step 0 of task 0", &r);
            expect_numeric(metastep_fomaml_step(b, sqrt_cost, NULL, v, steps, 0.1, &o, &r),
                           "metastep_fomaml_step", which, "inf", "step 0 of task 0", &r);
            metastep_reptile_options ro = METASTEP_REPTILE_OPTIONS_DEFAULT;
            ro.batched = batched;
            expect_numeric(metastep_reptile_step(b, sqrt_cost, v, steps, 0.1, &ro, &r),
                           "metastep_reptile_step", which, "inf", "step 0 of task 0", &r);
            /* second order differentiated as a whole (stop_gradients off) */
            o.stop_gradients = false;
            expect_numeric(metastep_maml_step(b, sqrt_cost, NULL, v, steps, 0.1, &o, &r),
                           "metastep_maml_step", which, "inf",
                           steps || batched ? "step 0 of task 0" : "mean over the tasks", &r);
            /* an outer cost with the singularity, after a finite inner step
             * (w = [0, 1] becomes [0, 0.8]) */
            o.stop_gradients = true;
            expect_numeric(metastep_fomaml_step(b, sq_cost, sqrt_cost, v, 1, 0.1, &o, &r),
                           "metastep_fomaml_step", "outer gradient", "inf", "step 1 of task 0",
                           &r);
            /* second order: the inf goes back through the inner update's
             * graph, where it may meet a zero (NaN): either is refused */
            expect_numeric(metastep_maml_step(b, sq_cost, sqrt_cost, v, 1, 0.1, &o, &r),
                           "metastep_maml_step", "outer gradient", NULL, "step 1 of task 0",
                           &r);
        }
    }
    /* the variables are untouched, and nothing leaked */
    ck_assert(at(ms_container_get(v, "net/w"), 0) == 0.0);
    ck_assert(at(ms_container_get(v, "net/w"), 1) == 1.0);
    ck_assert_int_eq(ms_live_tensors(), live);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

/* ------------------------------------------------------------ memory */

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * 4;
}

START_TEST(memory_thousand_meta_steps)
{
    ms_container *b = model_batch();
    double w[2][D] = {{0.7, -0.4, 1.1, 0.3}, {0.5, 0.9, -0.8, 1.2}};
    ms_container *v = model_vars(w[0], w[1], false);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    int64_t live = ms_live_tensors();
    long rss0 = 0;
    for (int i = 0; i < 1000; i++) {
        if (i == 100)
            rss0 = rss_kib(); /* after the allocator's caches have warmed up */
        metastep_result r;
        ms_status st = i % 2 ? metastep_maml_step(b, support_cost, query_cost, v, 2, 0.1, &o, &r)
                             : metastep_fomaml_step(b, support_cost, query_cost, v, 2, 0.1, &o, &r);
        assert_ok(st);
        metastep_result_release(&r);
        ck_assert_int_eq(ms_live_tensors(), live);
    }
    long grown = rss_kib() - rss0;
#ifndef __SANITIZE_ADDRESS__ /* ASan's quarantine keeps freed memory resident */
    ck_assert_msg(grown < 1024, "RSS grew by %ld KiB over 900 meta steps", grown);
#else
    (void)grown;
#endif
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("meta");
    TCase *doc = tcase_create("documented examples");
    tcase_add_test(doc, doc_maml_step);
    tcase_add_test(doc, doc_reptile_batched);
    tcase_add_test(doc, doc_reptile_unbatched);
    tcase_add_test(doc, results_survive_scope_pop);
    suite_add_tcase(s, doc);
    TCase *fd = tcase_create("finite differences");
    tcase_set_timeout(fd, 300);
    tcase_add_test(fd, maml_fd_unbatched);
    tcase_add_test(fd, maml_fd_batched);
    tcase_add_test(fd, maml_fd_through_optimizers);
    tcase_add_test(fd, maml_adam_zero_gradient_is_finite);
    suite_add_tcase(s, fd);
    TCase *opt = tcase_create("options");
    tcase_add_test(opt, maml_one_step_quadratic_closed_form);
    tcase_add_test(opt, fomaml_first_order_by_hand);
    tcase_add_test(opt, option_outer_cost_fn);
    tcase_add_test(opt, option_average_across_steps);
    tcase_add_test(opt, option_batch_fns);
    tcase_add_test(opt, option_batched_equals_unbatched);
    tcase_add_test(opt, option_inner_v_anil);
    tcase_add_test(opt, option_outer_v);
    tcase_add_test(opt, stale_error_ignored);
    tcase_add_test(opt, option_return_inner_v);
    tcase_add_test(opt, option_num_tasks_smaller_than_batch);
    tcase_add_test(opt, option_stop_gradients);
    tcase_add_test(opt, gradient_descent_update_like_ivy);
    tcase_add_test(opt, optimizer_states_by_hand);
    tcase_add_test(opt, adam_stopped_equals_differentiable);
    tcase_add_test(opt, optimizer_state_must_match_variables);
    suite_add_tcase(s, opt);
    TCase *bad = tcase_create("bad input");
    tcase_add_test(bad, bad_input);
    tcase_add_test(bad, non_finite_gradient_refused);
    suite_add_tcase(s, bad);
    TCase *mem = tcase_create("memory");
    tcase_set_timeout(mem, 600);
    tcase_add_test(mem, memory_thousand_meta_steps);
    suite_add_tcase(s, mem);
    return run_suite(s);
}
