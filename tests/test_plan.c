/* Compiled meta steps (metastep_plan_*) against the eager step functions.
 * Runs once per backend (METASTEP_BACKEND).
 *
 * 1. plan_equals_eager: 600 random configurations of the three steps: MAML,
 *    FOMAML, Reptile x 0..3 inner steps x batched x inner_v/outer_v masks
 *    and their keep flags x average_across_steps x outer cost on/off x batch
 *    functions x gradient descent, SGD with momentum or Adam as the inner
 *    optimizer x num_tasks x return_inner_v x float32/float64 x tanh or
 *    relu networks x checkpointed second-order MAML (checkpoint_every).  Each plan is run on three different batches and
 *    variable sets of the same structure (the first run traces, the others
 *    replay) and once on a batch with a different number of tasks or points
 *    (a second trace); every result must equal the eager step's on the same
 *    inputs bit for bit: same key chains, same bytes.  A replay runs the
 *    same kernels with the same arguments, so nothing looser is acceptable.
 * 2. The plan's own behaviour: a callable that reads data on the host is
 *    refused with MS_ERR_INVALID_ARG; a NaN in the data gives the eager
 *    step's MS_ERR_NUMERIC and message; stop_gradients off is refused; a
 *    tensor the cost function captures is captured by value; a changed
 *    backend traces again; no tensor leaks.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "testutil.h"

enum { DIN = 3, H = 5, NV = 4 };
static const char *const KEYS[NV] = {"layer0/w", "layer0/b", "head/w", "head/b"};
static const int64_t SHAPES[NV][2] = {{DIN, H}, {1, H}, {H, 1}, {1, 1}};

static uint64_t rng_state;
static double urand(void) /* [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static int irand(int n) { return (int)(urand() * n); }

static void assert_ok(ms_status st)
{
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_msg(st == MS_OK, "status %d: %s", st, msg);
}

static ms_tensor *rand_tensor(ms_dtype dt, int ndim, const int64_t *shape, double scale)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    double *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++)
        v[i] = scale * (2 * urand() - 1);
    ms_tensor *t;
    if (dt == MS_F64) {
        t = ms_tensor_from_data(dt, ndim, shape, v);
    } else {
        float *f = malloc((size_t)n * sizeof *f);
        for (int64_t i = 0; i < n; i++)
            f[i] = (float)v[i];
        t = ms_tensor_from_data(dt, ndim, shape, f);
        free(f);
    }
    free(v);
    ck_assert_ptr_nonnull(t);
    return t;
}

static void put(ms_container *c, const char *key, ms_tensor *t)
{
    ck_assert_int_eq(ms_container_set(c, key, t), MS_OK);
    ms_release(t);
}

static ms_container *make_batch(ms_dtype dt, int tasks, int points)
{
    ms_container *b = ms_container_new();
    put(b, "xs", rand_tensor(dt, 3, (int64_t[]){tasks, points, DIN}, 1.0));
    put(b, "ys", rand_tensor(dt, 3, (int64_t[]){tasks, points, 1}, 1.0));
    put(b, "xq", rand_tensor(dt, 3, (int64_t[]){tasks, points, DIN}, 1.0));
    put(b, "yq", rand_tensor(dt, 3, (int64_t[]){tasks, points, 1}, 1.0));
    return b;
}

static ms_container *make_vars(ms_dtype dt, bool batched, int tasks)
{
    ms_container *v = ms_container_new();
    for (int k = 0; k < NV; k++)
        put(v, KEYS[k], rand_tensor(dt, 2, SHAPES[k], 0.8));
    if (!batched)
        return v;
    ms_container *r = ms_container_replicate(v, tasks);
    ck_assert_ptr_nonnull(r);
    ms_container_release(v);
    return r;
}

typedef struct model {
    bool relu;
    const ms_tensor *captured; /* multiplies the prediction when set */
    bool host_read;            /* the cost reads a value on the host */
} model;

static ms_tensor *net_cost(const ms_container *b, const ms_container *v, const char *x,
                           const char *y, const model *m)
{
    ms_tensor *z = ms_add(ms_matmul(ms_container_get(b, x), ms_container_get(v, KEYS[0])),
                          ms_container_get(v, KEYS[1]));
    ms_tensor *h = m->relu ? ms_relu(z) : ms_tanh(z);
    ms_tensor *pred = ms_add(ms_matmul(h, ms_container_get(v, KEYS[2])), ms_container_get(v, KEYS[3]));
    if (m->captured)
        pred = ms_mul(pred, m->captured);
    if (m->host_read && ms_tensor_item(ms_mean(pred, 0, NULL, false)) > 1e300)
        pred = ms_neg(pred);
    return ms_mean(ms_square(ms_sub(pred, ms_container_get(b, y))), 0, NULL, false);
}
static ms_tensor *support_cost(const ms_container *b, const ms_container *v, void *u)
{
    return net_cost(b, v, "xs", "ys", u);
}
static ms_tensor *query_cost(const ms_container *b, const ms_container *v, void *u)
{
    /* plus a constant made inside the callable (written on the host) */
    ms_tensor *c = net_cost(b, v, "xq", "yq", u);
    double half = 0.5;
    float halff = 0.5f;
    ms_tensor *k = ms_tensor_dtype(c) == MS_F32 ? ms_tensor_from_data(MS_F32, 0, NULL, &halff)
                                                : ms_tensor_from_data(MS_F64, 0, NULL, &half);
    return ms_add(c, ms_mul(k, ms_mean(ms_square(ms_container_get(v, KEYS[2])), 0, NULL, false)));
}
static ms_container *scale_x(const ms_container *b, void *u)
{
    (void)u;
    ms_container *r = ms_container_new();
    for (int i = 0; i < ms_container_size(b); i++) {
        ms_tensor *t = ms_container_at(b, i);
        const char *k = ms_container_key(b, i);
        ms_container_set(r, k, k[0] == 'x' ? ms_mul_scalar(t, 1.25) : t);
    }
    return r;
}

static void assert_same_tensor(const ms_tensor *a, const ms_tensor *b, const char *what)
{
    ck_assert_msg(a && b, "%s: missing", what);
    ck_assert_int_eq(ms_tensor_dtype(a), ms_tensor_dtype(b));
    ck_assert_int_eq(ms_tensor_ndim(a), ms_tensor_ndim(b));
    for (int d = 0; d < ms_tensor_ndim(a); d++)
        ck_assert_int_eq(ms_tensor_shape(a)[d], ms_tensor_shape(b)[d]);
    size_t bytes = (size_t)ms_tensor_numel(a) * ms_dtype_size(ms_tensor_dtype(a));
    if (memcmp(ms_tensor_data(a), ms_tensor_data(b), bytes) != 0) {
        for (int64_t i = 0; i < ms_tensor_numel(a); i++)
            if (at(a, i) != at(b, i))
                ck_abort_msg("%s: element %lld is %.17g compiled, %.17g eager", what,
                             (long long)i, at(a, i), at(b, i));
    }
}

static void assert_same_container(const ms_container *a, const ms_container *b,
                                  const char *what)
{
    ck_assert_msg((a == NULL) == (b == NULL), "%s: present in one result only", what);
    if (!a)
        return;
    ck_assert_int_eq(ms_container_size(a), ms_container_size(b));
    for (int i = 0; i < ms_container_size(a); i++) {
        ck_assert_str_eq(ms_container_key(a, i), ms_container_key(b, i));
        char w[160];
        snprintf(w, sizeof w, "%s %s", what, ms_container_key(a, i));
        assert_same_tensor(ms_container_at(a, i), ms_container_at(b, i), w);
    }
}

typedef struct config {
    int algo; /* 0 maml, 1 fomaml, 2 reptile */
    int steps, tasks, points, num_tasks;
    double lr;
    ms_dtype dt;
    metastep_options o;
    metastep_optimizer opt;
    bool use_opt;
    metastep_cost_fn outer;
    model m;
    char desc[256];
} config;

static const char *const HEAD[] = {"head/w", "head/b", NULL};
static const char *const LAYER0_W[] = {"layer0/w", NULL};

static config random_config(void)
{
    config c;
    memset(&c, 0, sizeof c);
    c.algo = irand(3);
    c.steps = irand(4);
    c.tasks = 1 + irand(4);
    c.points = 2 + irand(4);
    c.lr = 0.05 + 0.2 * urand();
    c.dt = irand(2) ? MS_F32 : MS_F64;
    c.o = METASTEP_OPTIONS_DEFAULT;
    c.o.batched = irand(2);
    int iv = irand(3), ov = irand(3);
    c.o.inner_v = iv == 0 ? NULL : iv == 1 ? HEAD : LAYER0_W;
    c.o.keep_inner_v = irand(2);
    c.o.outer_v = ov == 0 ? NULL : ov == 1 ? HEAD : LAYER0_W;
    c.o.keep_outer_v = irand(2);
    c.o.average_across_steps = irand(2);
    c.o.return_inner_v = (metastep_return_inner)irand(3);
    c.num_tasks = irand(3) == 0 ? 1 + irand(c.tasks) : 0;
    c.o.num_tasks = c.num_tasks;
    if (irand(3) == 0) {
        c.o.inner_batch_fn = scale_x;
        c.o.outer_batch_fn = irand(2) ? scale_x : NULL;
    }
    int opt = irand(3);
    if (opt == 1)
        c.opt = metastep_sgd(0.9, irand(2));
    else if (opt == 2)
        c.opt = metastep_adam(0.9, 0.999, 1e-8);
    c.use_opt = opt != 0;
    c.o.inner_optimization_step = c.use_opt ? &c.opt : NULL;
    c.m.relu = irand(2);
    c.o.user = &c.m;
    c.outer = c.algo != 2 && irand(2) ? query_cost : NULL;
    /* checkpointed second-order MAML (recomputed segments) traces too */
    int ck = c.algo == 0 && irand(4) == 0 ? (irand(3) == 0 ? -1 : 1 + irand(3)) : 0;
    c.o.checkpoint_every = ck;
    snprintf(c.desc, sizeof c.desc,
             "algo %d steps %d tasks %d points %d %s batched %d inner_v %d/%d outer_v %d/%d avg %d "
             "ret %d num_tasks %d bfn %d opt %d relu %d ckpt %d",
             c.algo, c.steps, c.tasks, c.points, ms_dtype_name(c.dt), c.o.batched, iv,
             c.o.keep_inner_v, ov, c.o.keep_outer_v, c.o.average_across_steps,
             c.o.return_inner_v, c.num_tasks, c.o.inner_batch_fn != NULL, opt, c.m.relu, ck);
    return c;
}

static metastep_plan *plan_of(config *c)
{
    c->o.inner_optimization_step = c->use_opt ? &c->opt : NULL;
    c->o.user = &c->m;
    metastep_plan *p = NULL;
    ms_status st;
    if (c->algo == 2) {
        metastep_reptile_options r = METASTEP_REPTILE_OPTIONS_DEFAULT;
        r.inner_optimization_step = c->o.inner_optimization_step;
        r.batched = c->o.batched;
        r.return_inner_v = c->o.return_inner_v;
        r.num_tasks = c->o.num_tasks;
        r.user = c->o.user;
        st = metastep_plan_reptile(support_cost, c->steps, c->lr, &r, &p);
    } else {
        st = (c->algo == 0 ? metastep_plan_maml : metastep_plan_fomaml)(
            support_cost, c->outer, c->steps, c->lr, &c->o, &p);
    }
    assert_ok(st);
    return p;
}

/* The eager step with the plan's arguments. */
static ms_status eager_of(const config *c, const ms_container *b, const ms_container *v,
                          metastep_result *out)
{
    if (c->algo == 2) {
        metastep_reptile_options r = METASTEP_REPTILE_OPTIONS_DEFAULT;
        r.inner_optimization_step = c->o.inner_optimization_step;
        r.batched = c->o.batched;
        r.return_inner_v = c->o.return_inner_v;
        r.num_tasks = c->o.num_tasks;
        r.user = c->o.user;
        return metastep_reptile_step(b, support_cost, v, c->steps, c->lr, &r, out);
    }
    return (c->algo == 0 ? metastep_maml_step : metastep_fomaml_step)(
        b, support_cost, c->outer, v, c->steps, c->lr, &c->o, out);
}

static void compare_run(config *c, metastep_plan *p, int tasks, int points, const char *phase)
{
    ms_container *b = make_batch(c->dt, tasks, points);
    ms_container *v = make_vars(c->dt, c->o.batched, tasks);
    metastep_result got, want;
    ms_status sg = metastep_plan_run(p, b, v, &got);
    const char *msg = NULL;
    ms_last_error(&msg);
    char why[300];
    snprintf(why, sizeof why, "%s", msg ? msg : "");
    ms_clear_error();
    ms_status sw = eager_of(c, b, v, &want);
    ck_assert_msg(sg == sw, "%s (%s): status %d compiled (%s), %d eager", c->desc, phase, sg,
                  why, sw);
    if (sg == MS_OK) {
        char w[400];
        snprintf(w, sizeof w, "%s (%s) cost", c->desc, phase);
        assert_same_tensor(got.cost, want.cost, w);
        snprintf(w, sizeof w, "%s (%s) grads", c->desc, phase);
        assert_same_container(got.grads, want.grads, w);
        snprintf(w, sizeof w, "%s (%s) inner_v", c->desc, phase);
        assert_same_container(got.inner_v, want.inner_v, w);
    }
    metastep_result_release(&got);
    metastep_result_release(&want);
    ms_container_release(b);
    ms_container_release(v);
}

START_TEST(plan_equals_eager)
{
    rng_state = 0x9e3779b97f4a7c15ull;
    int n = getenv("METASTEP_PLAN_QUICK") ? 100 : 600;
    for (int i = 0; i < n; i++) {
        config c = random_config();
        metastep_plan *p = plan_of(&c);
        compare_run(&c, p, c.tasks, c.points, "trace");
        compare_run(&c, p, c.tasks, c.points, "replay 1");
        compare_run(&c, p, c.tasks, c.points, "replay 2");
        compare_run(&c, p, c.tasks + 1, c.points + 1, "new shapes");
        compare_run(&c, p, c.tasks + 1, c.points + 1, "replay of new shapes");
        metastep_plan_info info;
        assert_ok(metastep_plan_get_info(p, &info));
        ck_assert_msg(info.traces == 2 && info.replays == 3, "%s: %d traces, %lld replays",
                      c.desc, info.traces, info.replays);
        metastep_plan_free(p);
    }
}
END_TEST

static metastep_plan *simple_plan(model *m)
{
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.user = m;
    metastep_plan *p = NULL;
    assert_ok(metastep_plan_maml(support_cost, NULL, 2, 0.1, &o, &p));
    return p;
}

START_TEST(plan_refuses_host_reads)
{
    rng_state = 7;
    model m = {.relu = false, .host_read = true};
    metastep_plan *p = simple_plan(&m);
    ms_container *b = make_batch(MS_F64, 2, 3), *v = make_vars(MS_F64, true, 2);
    metastep_result r;
    ms_status st = metastep_plan_run(p, b, v, &r);
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_int_eq(st, MS_ERR_INVALID_ARG);
    ck_assert_msg(msg && strstr(msg, "ms_tensor_item"), "message: %s", msg);
    ck_assert_ptr_null(r.cost);
    ms_clear_error();
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.user = &m;
    assert_ok(metastep_maml_step(b, support_cost, NULL, v, 2, 0.1, &o, &r));
    metastep_result_release(&r);
    metastep_plan_free(p);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

START_TEST(plan_nan_gives_eager_error)
{
    rng_state = 11;
    model m = {.relu = false};
    metastep_plan *p = simple_plan(&m);
    ms_container *b = make_batch(MS_F64, 2, 3), *v = make_vars(MS_F64, true, 2);
    metastep_result r;
    assert_ok(metastep_plan_run(p, b, v, &r)); /* trace */
    metastep_result_release(&r);
    ms_container *b2 = make_batch(MS_F64, 2, 3);
    ((double *)ms_tensor_data(ms_container_get(b2, "ys")))[4] = NAN;
    ms_status st = metastep_plan_run(p, b2, v, &r);
    const char *got = NULL;
    ms_last_error(&got);
    char *gotc = strdup(got ? got : "");
    ms_clear_error();
    metastep_result r2;
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.user = &m;
    ms_status sw = metastep_maml_step(b2, support_cost, NULL, v, 2, 0.1, &o, &r2);
    const char *want = NULL;
    ms_last_error(&want);
    ck_assert_int_eq(st, MS_ERR_NUMERIC);
    ck_assert_int_eq(sw, MS_ERR_NUMERIC);
    ck_assert_str_eq(gotc, want);
    ck_assert_ptr_null(r.cost);
    free(gotc);
    ms_clear_error();
    metastep_plan_info info;
    metastep_plan_get_info(p, &info);
    ck_assert_int_eq(info.eager_reruns, 1);
    metastep_plan_free(p);
    ms_container_release(b);
    ms_container_release(b2);
    ms_container_release(v);
}
END_TEST

START_TEST(plan_refuses_graph_results)
{
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.stop_gradients = false;
    metastep_plan *p = (metastep_plan *)1;
    ck_assert_int_eq(metastep_plan_maml(support_cost, NULL, 1, 0.1, &o, &p), MS_ERR_INVALID_ARG);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(metastep_plan_reptile(support_cost, 1, 0.0, NULL, &p), MS_ERR_INVALID_ARG);
    const double w[2] = {0.5, 0.5};
    o = METASTEP_OPTIONS_DEFAULT;
    o.step_weights = w;
    ck_assert_int_eq(metastep_plan_maml(support_cost, NULL, 1, 0.1, &o, &p), MS_ERR_INVALID_ARG);
    ck_assert_int_eq(metastep_plan_fomaml(NULL, NULL, 1, 0.1, NULL, &p), MS_ERR_NULL_ARG);
    ck_assert_int_eq(metastep_plan_run(NULL, NULL, NULL, NULL), MS_ERR_NULL_ARG);
    ms_clear_error();
}
END_TEST

/* A tensor the cost function holds is read when traced and kept: changing
 * it later does not change a replay (as jax.jit with a closed-over array). */
START_TEST(plan_captures_by_value)
{
    rng_state = 13;
    ms_tensor *k = ms_scalar(MS_F64, 2.0);
    model m = {.relu = true, .captured = k};
    metastep_plan *p = simple_plan(&m);
    ms_container *b = make_batch(MS_F64, 2, 3), *v = make_vars(MS_F64, true, 2);
    metastep_result r, want;
    assert_ok(metastep_plan_run(p, b, v, &r));
    metastep_result_release(&r);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.user = &m;
    assert_ok(metastep_maml_step(b, support_cost, NULL, v, 2, 0.1, &o, &want));
    *(double *)ms_tensor_data(k) = 3.0;
    assert_ok(metastep_plan_run(p, b, v, &r));
    assert_same_tensor(r.cost, want.cost, "cost");
    assert_same_container(r.grads, want.grads, "grads");
    metastep_result_release(&r);
    metastep_result_release(&want);
    metastep_plan_free(p);
    ms_container_release(b);
    ms_container_release(v);
    ms_release(k);
}
END_TEST

/* Another backend on the same thread traces again. */
START_TEST(plan_retraces_on_backend_change)
{
    rng_state = 17;
    model m = {.relu = false};
    metastep_plan *p = simple_plan(&m);
    ms_container *b = make_batch(MS_F32, 2, 3), *v = make_vars(MS_F32, true, 2);
    metastep_result r;
    assert_ok(metastep_plan_run(p, b, v, &r));
    metastep_result_release(&r);
    const char *other = strcmp(metastep_current_backend(), "ref") ? "ref" : "openblas";
    assert_ok(metastep_set_backend(other));
    assert_ok(metastep_plan_run(p, b, v, &r));
    metastep_result_release(&r);
    assert_ok(metastep_unset_backend());
    metastep_plan_info info;
    metastep_plan_get_info(p, &info);
    ck_assert_int_eq(info.traces, 2);
    metastep_plan_free(p);
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

int main(void)
{
    /* results do not depend on kernel threads; one keeps oneDNN's OpenMP
     * threads from spinning against the other suites of a parallel run */
    metastep_set_backend_threads(1);
    Suite *s = suite_create("plan");
    TCase *tc = tcase_create("plan");
    tcase_set_timeout(tc, 600);
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_add_test(tc, plan_equals_eager);
    tcase_add_test(tc, plan_refuses_host_reads);
    tcase_add_test(tc, plan_nan_gives_eager_error);
    tcase_add_test(tc, plan_refuses_graph_results);
    tcase_add_test(tc, plan_captures_by_value);
    tcase_add_test(tc, plan_retraces_on_backend_change);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
