/* Checkpointed second-order MAML (metastep_options.checkpoint_every) against
 * the un-checkpointed step.  Runs once per backend (METASTEP_BACKEND).
 *
 * 1. random_vs_unrolled: 400 random settings (fixed seed) of the options the
 *    plain step takes (inner_v/outer_v masks and their keep flags, batched,
 *    num_tasks, average_across_steps, outer cost function, batch functions,
 *    return_inner_v, stop_gradients, threads, the inner optimizer: gradient
 *    descent, SGD with momentum, Nesterov, Adam), inner steps 1..12 and
 *    checkpoint_every 1..13 or -1 (sqrt), on a 2-layer tanh network in
 *    float64.  Cost, gradients and adapted variables must equal the plain
 *    step's to 1e-11 relative: the two compute the same float operations,
 *    and differ only in the order ms_grad adds contributions that meet at
 *    one tensor (docs/long-inner-loops.md); a wrong adjoint misses by O(1e-2).
 * 2. single_segment_bit_identical: checkpoint_every >= k is one segment,
 *    the same graph as the plain step: bit-identical results.
 * 3. fd_*: the checkpointed gradient's component along a pseudo-random
 *    direction equals the central difference of the returned cost (eps
 *    1e-5; tolerance as test_meta_masks.c) for a few settings, Adam among
 *    them.
 * 4. memory_*: peak tensor bytes (ms_peak_tensor_bytes: a count, no clock)
 *    of one step with k = 64 inner steps on a network whose graph dominates:
 *    unrolled grows about linearly in k, checkpointed with every = 8 stays
 *    several times lower, and with -1 (sqrt) lower still than with every = 1
 *    or every = k.
 *    checkpoint_budget_mib: within the budget (plus the outer pass), equal
 *    to the unrolled step, the unrolled graph when it fits, refused when
 *    nothing fits.
 * 5. refusals: a user optimizer with a state, checkpoint_every < -1.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "tanh_net.h"
#include "testutil.h"

static ms_tensor *vec(int ndim, const int64_t *shape, const double *v)
{
    return ms_tensor_from_data(MS_F64, ndim, shape, v);
}

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

/* ------------------------------------------------------------ the model */

enum { T = 3, P = 5, DIN = 2, NV = 4 };
static int H = 4; /* hidden width (the memory test widens it) */

static const char *const KEYS[NV] = {"layer0/w", "layer0/b", "head/w", "head/b"};

static uint64_t rng_state;
static double urand(void) /* [0, 1) */
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static int irand(int n) { return (int)(urand() * n); }

static ms_container *model_batch(int tasks, int points)
{
    ms_container *b = ms_container_new();
    double *xs = malloc(sizeof(double) * tasks * points * DIN), *xq = malloc(sizeof(double) * tasks * points * DIN);
    double *ys = malloc(sizeof(double) * tasks * points), *yq = malloc(sizeof(double) * tasks * points);
    for (int t = 0; t < tasks; t++)
        for (int p = 0; p < points; p++) {
            for (int i = 0; i < DIN; i++) {
                xs[(t * points + p) * DIN + i] = sin(1.3 * t + 0.7 * p + 2.1 * i);
                xq[(t * points + p) * DIN + i] = cos(0.9 * t - 1.1 * p + 0.5 * i);
            }
            ys[t * points + p] = 0.5 * sin(2.0 * t + p) + 0.2;
            yq[t * points + p] = 0.5 * cos(1.5 * t - p) - 0.1;
        }
    put(b, "xs", vec(3, (int64_t[]){tasks, points, DIN}, xs));
    put(b, "ys", vec(3, (int64_t[]){tasks, points, 1}, ys));
    put(b, "xq", vec(3, (int64_t[]){tasks, points, DIN}, xq));
    put(b, "yq", vec(3, (int64_t[]){tasks, points, 1}, yq));
    free(xs), free(xq), free(ys), free(yq);
    return b;
}

static ms_container *model_vars(bool batched, int tasks)
{
    ms_container *v = ms_container_new();
    int64_t shapes[NV][2] = {{DIN, H}, {1, H}, {H, 1}, {1, 1}};
    for (int k = 0; k < NV; k++) {
        int n = (int)(shapes[k][0] * shapes[k][1]);
        double *x = malloc(sizeof(double) * n);
        for (int i = 0; i < n; i++)
            x[i] = 0.8 * sin(1.7 * k + 0.9 * i + 0.3);
        put(v, KEYS[k], vec(2, shapes[k], x));
        free(x);
    }
    if (!batched)
        return v;
    ms_container *r = ms_container_replicate(v, tasks);
    ms_container_release(v);
    return r;
}


static ms_container *map_batch(const ms_container *b, char which, double scale, double shift)
{
    ms_container *r = ms_container_new();
    for (int i = 0; i < ms_container_size(b); i++) {
        ms_tensor *t = ms_container_at(b, i);
        const char *k = ms_container_key(b, i);
        ms_tensor *n = k[0] == which ? ms_add_scalar(ms_mul_scalar(t, scale), shift) : ms_retain(t);
        ms_container_set(r, k, n);
        if (ms_scope_depth() == 0 || k[0] != which)
            ms_release(n);
    }
    return r;
}
static ms_container *inner_bfn(const ms_container *b, void *u)
{
    (void)u;
    return map_batch(b, 'x', 1.5, 0.0);
}
static ms_container *outer_bfn(const ms_container *b, void *u)
{
    (void)u;
    return map_batch(b, 'y', 1.0, -0.25);
}

/* ------------------------------------------------------ random settings */

static const char *const MASKS[][3] = {
    {"head", NULL, NULL}, {"layer0/w", NULL, NULL}, {"head/w", "layer0/b", NULL}};

typedef struct setting {
    metastep_options o;
    metastep_optimizer opt;
    int optk; /* 0 gd, 1 momentum, 2 nesterov, 3 adam */
    int steps;
    bool outer_fn;
    double lr;
} setting;

static setting random_setting(void)
{
    setting s;
    memset(&s, 0, sizeof s);
    s.o = METASTEP_OPTIONS_DEFAULT;
    int m = irand(4);
    s.o.inner_v = m < 3 ? (const char *const *)MASKS[m] : NULL;
    s.o.keep_inner_v = irand(2);
    m = irand(5);
    s.o.outer_v = m < 3 ? (const char *const *)MASKS[m] : NULL;
    s.o.keep_outer_v = irand(2);
    s.o.batched = irand(2);
    s.o.num_tasks = irand(3) == 0 ? 1 + irand(T) : 0;
    s.o.average_across_steps = irand(2);
    if (irand(3) == 0) {
        s.o.inner_batch_fn = inner_bfn;
        s.o.outer_batch_fn = outer_bfn;
    }
    s.o.return_inner_v = (metastep_return_inner)irand(3);
    s.o.stop_gradients = irand(4) != 0;
    s.o.threads = irand(3) == 0 ? 2 : 0;
    s.outer_fn = irand(2);
    s.optk = irand(4);
    s.opt = s.optk == 0   ? metastep_gradient_descent
            : s.optk == 1 ? metastep_sgd(0.9, false)
            : s.optk == 2 ? metastep_sgd(0.5, true)
                          : metastep_adam(0.9, 0.99, 1e-8);
    s.lr = s.optk == 3 ? 0.02 : 0.1;
    s.steps = 1 + irand(12);
    int e = irand(15);
    s.o.checkpoint_every = e == 14 ? -1 : 1 + e;
    return s;
}

static void describe(const setting *s, char *buf, size_t n)
{
    snprintf(buf, n,
             "steps %d every %d opt %d inner_v %s keep %d outer_v %s keep %d batched %d "
             "num_tasks %d avg %d bfns %d ret %d stop %d threads %d outer_fn %d",
             s->steps, s->o.checkpoint_every, s->optk, s->o.inner_v ? s->o.inner_v[0] : "-",
             s->o.keep_inner_v, s->o.outer_v ? s->o.outer_v[0] : "-", s->o.keep_outer_v,
             s->o.batched, s->o.num_tasks, s->o.average_across_steps,
             s->o.inner_batch_fn != NULL, s->o.return_inner_v, s->o.stop_gradients,
             s->o.threads, s->outer_fn);
}

/* max |a - b| over max |b|, leaf by leaf (the worst leaf) */
static double max_rel(const ms_container *a, const ms_container *b)
{
    ck_assert_int_eq(ms_container_size(a), ms_container_size(b));
    double worst = 0;
    for (int i = 0; i < ms_container_size(b); i++) {
        ck_assert_str_eq(ms_container_key(a, i), ms_container_key(b, i));
        const ms_tensor *x = ms_container_at(a, i), *y = ms_container_at(b, i);
        ck_assert_int_eq(ms_tensor_numel(x), ms_tensor_numel(y));
        double diff = 0, scale = 1e-300;
        for (int64_t j = 0; j < ms_tensor_numel(y); j++) {
            diff = fmax(diff, fabs(at(x, j) - at(y, j)));
            scale = fmax(scale, fabs(at(y, j)));
        }
        worst = fmax(worst, diff / scale);
    }
    return worst;
}

static bool bit_equal(const ms_container *a, const ms_container *b)
{
    if (ms_container_size(a) != ms_container_size(b))
        return false;
    for (int i = 0; i < ms_container_size(b); i++) {
        const ms_tensor *x = ms_container_at(a, i), *y = ms_container_at(b, i);
        if (ms_tensor_numel(x) != ms_tensor_numel(y) ||
            memcmp(ms_tensor_data(x), ms_tensor_data(y), (size_t)ms_tensor_numel(x) * 8) != 0)
            return false;
    }
    return true;
}

static void run_pair(const setting *s, metastep_result *plain, metastep_result *ck)
{
    ms_container *b = model_batch(T, P), *v = model_vars(s->o.batched, T);
    metastep_options o = s->o;
    o.inner_optimization_step = &s->opt;
    metastep_cost_fn ofn = s->outer_fn ? tanh_query_cost : NULL;
    o.checkpoint_every = 0;
    assert_ok(metastep_maml_step(b, tanh_support_cost, ofn, v, s->steps, s->lr, &o, plain));
    o.checkpoint_every = s->o.checkpoint_every;
    assert_ok(metastep_maml_step(b, tanh_support_cost, ofn, v, s->steps, s->lr, &o, ck));
    ms_container_release(b);
    ms_container_release(v);
}

START_TEST(random_vs_unrolled)
{
    rng_state = 12345;
    double worst = 0;
    int bitsame = 0;
    for (int n = 0; n < 400; n++) {
        setting s = random_setting();
        char what[400];
        describe(&s, what, sizeof what);
        metastep_result p, c;
        run_pair(&s, &p, &c);
        double dc = fabs(ms_tensor_item(p.cost) - ms_tensor_item(c.cost)) /
                    (fabs(ms_tensor_item(p.cost)) + 1e-300);
        double dg = max_rel(c.grads, p.grads);
        ck_assert_msg(dc <= 1e-12 && dg <= 1e-12, "%s: cost differs by %g, gradients by %g", what,
                      dc, dg);
        ck_assert_int_eq(ms_requires_grad(c.cost), ms_requires_grad(p.cost));
        ck_assert_int_eq(p.inner_v == NULL, c.inner_v == NULL);
        if (p.inner_v) {
            ck_assert_msg(max_rel(c.inner_v, p.inner_v) <= 1e-12, "%s: adapted variables", what);
            ck_assert(!ms_requires_grad(ms_container_at(c.inner_v, 0)));
        }
        worst = dg > worst ? dg : worst;
        bitsame += bit_equal(c.grads, p.grads);
        metastep_result_release(&p);
        metastep_result_release(&c);
    }
    fprintf(stderr, "checkpointed vs unrolled: worst relative gradient difference %.3g; "
                    "bit-identical gradients in %d of 400 settings\n", worst, bitsame);
}
END_TEST

START_TEST(single_segment_bit_identical)
{
    rng_state = 777;
    for (int n = 0; n < 60; n++) {
        setting s = random_setting();
        s.o.checkpoint_every = s.steps + irand(3);
        /* unbatched with stop_gradients off, the plain step differentiates
         * the task mean at once and the checkpointed one each task (the mean
         * of the gradients): the same up to rounding, not bit for bit */
        if (!s.o.batched)
            s.o.stop_gradients = true;
        char what[400];
        describe(&s, what, sizeof what);
        metastep_result p, c;
        run_pair(&s, &p, &c);
        ck_assert_msg(ms_tensor_item(p.cost) == ms_tensor_item(c.cost), "%s: cost", what);
        ck_assert_msg(bit_equal(c.grads, p.grads), "%s: gradients differ by %g", what,
                      max_rel(c.grads, p.grads));
        if (p.inner_v)
            ck_assert_msg(bit_equal(c.inner_v, p.inner_v), "%s: adapted variables", what);
        metastep_result_release(&p);
        metastep_result_release(&c);
    }
}
END_TEST

/* ---------------------------------------------- finite differences */

static double cost_at(const setting *s, const ms_container *b, const ms_container *v)
{
    metastep_options o = s->o;
    o.inner_optimization_step = &s->opt;
    metastep_result r;
    assert_ok(metastep_maml_step(b, tanh_support_cost, s->outer_fn ? tanh_query_cost : NULL, v, s->steps,
                                 s->lr, &o, &r));
    double c = ms_tensor_item(r.cost);
    metastep_result_release(&r);
    return c;
}

/* v + eps * d on every leaf (d from the rng, fixed per call) */
static ms_container *shifted(const ms_container *v, const ms_container *d, double eps)
{
    ms_container *e = ms_container_mul_scalar(d, eps);
    ms_container *r = ms_container_add(v, e);
    ms_container_release(e);
    return r;
}

static void fd_check(setting s)
{
    char what[400];
    describe(&s, what, sizeof what);
    ms_container *b = model_batch(T, P), *v = model_vars(s.o.batched, T);
    metastep_options o = s.o;
    o.inner_optimization_step = &s.opt;
    metastep_result r;
    assert_ok(metastep_maml_step(b, tanh_support_cost, s.outer_fn ? tanh_query_cost : NULL, v, s.steps,
                                 s.lr, &o, &r));
    /* a direction on the outer variables only (the others: 0) */
    ms_container *d = ms_container_new();
    double gd = 0, mag = 0;
    for (int i = 0; i < ms_container_size(v); i++) {
        const ms_tensor *x = ms_container_at(v, i);
        const char *key = ms_container_key(v, i);
        int64_t n = ms_tensor_numel(x);
        double *dv = calloc((size_t)n, sizeof *dv);
        bool outer = ms_container_has(r.grads, key);
        const ms_tensor *g = outer ? ms_container_get(r.grads, key) : NULL;
        /* batched: the gradient is summed over axis 0, so move every copy alike */
        int64_t per = g ? ms_tensor_numel(g) : n;
        for (int64_t j = 0; j < per && outer; j++) {
            double u = urand() - 0.5;
            for (int64_t c = j; c < n; c += per)
                dv[c] = u;
            gd += at(g, j) * u;
            mag += fabs(at(g, j) * u);
        }
        put(d, key, ms_tensor_from_data(MS_F64, ms_tensor_ndim(x), ms_tensor_shape(x), dv));
        free(dv);
    }
    const double eps = 1e-5;
    ms_container *vp = shifted(v, d, eps), *vm = shifted(v, d, -eps);
    double fd = (cost_at(&s, b, vp) - cost_at(&s, b, vm)) / (2 * eps);
    ck_assert_msg(fabs(fd - gd) <= 1e-6 * mag + 1e-8, "%s: fd %.12g, gradient %.12g", what, fd, gd);
    ms_container_release(vp);
    ms_container_release(vm);
    ms_container_release(d);
    metastep_result_release(&r);
    ms_container_release(b);
    ms_container_release(v);
}

START_TEST(fd_random)
{
    rng_state = 99;
    for (int n = 0; n < 24; n++) {
        setting s = random_setting();
        s.steps = 4 + irand(9);
        s.o.checkpoint_every = 1 + irand(5);
        fd_check(s);
    }
}
END_TEST

START_TEST(fd_adam_anil)
{
    setting s;
    memset(&s, 0, sizeof s);
    s.o = METASTEP_OPTIONS_DEFAULT;
    s.o.batched = false;
    s.o.inner_v = (const char *const *)MASKS[0]; /* only the head adapts */
    s.o.average_across_steps = true;
    s.opt = metastep_adam(0.9, 0.99, 1e-8);
    s.optk = 3;
    s.lr = 0.02;
    s.steps = 11;
    s.o.checkpoint_every = 3;
    s.outer_fn = true;
    rng_state = 5;
    fd_check(s);
}
END_TEST

/* -------------------------------------------------------------- memory */

static int64_t peak_of(int steps, int every, bool batched)
{
    ms_container *b = model_batch(2, 64), *v = model_vars(batched, 2);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = batched;
    o.checkpoint_every = every;
    metastep_result r;
    int64_t base = ms_live_tensor_bytes();
    ms_reset_peak_tensor_bytes();
    assert_ok(metastep_maml_step(b, tanh_support_cost, tanh_query_cost, v, steps, 0.05, &o, &r));
    int64_t peak = ms_peak_tensor_bytes() - base;
    metastep_result_release(&r);
    ms_container_release(b);
    ms_container_release(v);
    return peak;
}

START_TEST(memory_grows_like_sqrt)
{
    H = 64; /* a graph of (64 points x 64 hidden) activations per step */
    for (int batched = 0; batched < 2; batched++) {
        int64_t un16 = peak_of(16, 0, batched), un64 = peak_of(64, 0, batched);
        int64_t ck64 = peak_of(64, 8, batched), sq64 = peak_of(64, -1, batched);
        int64_t e1 = peak_of(64, 1, batched), ek = peak_of(64, 64, batched);
        fprintf(stderr, "peak tensor bytes (%s): unrolled k=16 %lld, k=64 %lld; checkpointed "
                        "k=64 every 8 %lld, sqrt %lld, every 1 %lld, every 64 %lld\n",
                batched ? "batched" : "unbatched", (long long)un16, (long long)un64,
                (long long)ck64, (long long)sq64, (long long)e1, (long long)ek);
        /* unrolled: about linear in k */
        ck_assert(un64 > 3 * un16);
        /* checkpointed: several times below, and sqrt k is the sweet spot */
        ck_assert(ck64 * 4 < un64);
        ck_assert(sq64 == ck64);
        /* sqrt: 4 times the steps, about twice the memory (unrolled: 4 times) */
        int64_t ck16 = peak_of(16, -1, batched);
        fprintf(stderr, "  checkpointed k=16 sqrt %lld\n", (long long)ck16);
        ck_assert(sq64 < 3 * ck16);
        /* every step a checkpoint: the checkpoints (variables only) are small
         * next to a step's graph (activations), so this is the least memory
         * here; one segment holds the whole graph, as unrolled */
        ck_assert(e1 < sq64);
        ck_assert(ek * 10 > un64 * 9);
    }
    H = 4;
}
END_TEST

static int64_t peak_budget(int steps, double mib, metastep_result *r)
{
    ms_container *b = model_batch(2, 64), *v = model_vars(false, 2);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    o.checkpoint_budget_mib = mib;
    int64_t base = ms_live_tensor_bytes();
    ms_reset_peak_tensor_bytes();
    assert_ok(metastep_maml_step(b, tanh_support_cost, tanh_query_cost, v, steps, 0.05, &o, r));
    int64_t peak = ms_peak_tensor_bytes() - base;
    ms_container_release(b);
    ms_container_release(v);
    return peak;
}

/* checkpoint_budget_mib: the step stays within the budget (plus the fixed
 * part: the outer pass, measured at k = 0), gives the unrolled step's
 * results, is the unrolled step itself when the budget allows, and refuses
 * a budget nothing fits. */
START_TEST(memory_budget)
{
    H = 64;
    metastep_result fixed, un, r;
    int64_t f = peak_of(0, 0, false);
    (void)fixed;
    ms_container *b = model_batch(2, 64), *v = model_vars(false, 2);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    assert_ok(metastep_maml_step(b, tanh_support_cost, tanh_query_cost, v, 64, 0.05, &o, &un));
    const double budgets[3] = {4.0, 10.0, 30.0};
    for (int i = 0; i < 3; i++) {
        int64_t p = peak_budget(64, budgets[i], &r);
        fprintf(stderr, "budget %.0f MiB: peak %.2f MiB (fixed part %.2f MiB)\n", budgets[i],
                p / 1048576.0, f / 1048576.0);
        ck_assert_msg(p <= budgets[i] * 1048576.0 + f, "budget %g: peak %lld", budgets[i],
                      (long long)p);
        ck_assert(max_rel(r.grads, un.grads) <= 1e-12);
        metastep_result_release(&r);
    }
    /* room for the whole graph: the unrolled graph, bit for bit */
    peak_budget(64, 1e6, &r);
    ck_assert(bit_equal(r.grads, un.grads));
    metastep_result_release(&r);
    /* too small */
    o.checkpoint_budget_mib = 0.01;
    ck_assert_int_eq(metastep_maml_step(b, tanh_support_cost, tanh_query_cost, v, 64, 0.05, &o, &r),
                     MS_ERR_INVALID_ARG);
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_ptr_nonnull(strstr(msg, "least budget"));
    o.checkpoint_budget_mib = NAN;
    ck_assert_int_eq(metastep_maml_step(b, tanh_support_cost, tanh_query_cost, v, 64, 0.05, &o, &r),
                     MS_ERR_INVALID_ARG);
    ms_clear_error();
    metastep_result_release(&un);
    ms_container_release(b);
    ms_container_release(v);
    H = 4;
}
END_TEST

/* ------------------------------------------------------------- refusals */

static void *user_state_new(const metastep_optimizer *self)
{
    (void)self;
    return calloc(1, 8);
}
static ms_container *user_step(const metastep_optimizer *self, void *state, const ms_container *w,
                               const ms_container *g, double lr, bool stop)
{
    (void)self, (void)state;
    return metastep_gradient_descent_update(w, g, lr, stop);
}
static ms_container *user_stateless_step(const metastep_optimizer *self, void *state,
                                         const ms_container *w, const ms_container *g, double lr,
                                         bool stop)
{
    (void)self, (void)state;
    ms_container *h = ms_container_mul_scalar(g, 0.5);
    ms_container *r = metastep_gradient_descent_update(w, h, lr, stop);
    ms_container_release(h);
    return r;
}

START_TEST(refusals)
{
    ms_container *b = model_batch(T, P), *v = model_vars(false, T);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    metastep_optimizer u = {.name = "mine", .state_new = user_state_new, .state_free = free,
                            .step = user_step};
    o.inner_optimization_step = &u;
    o.checkpoint_every = 2;
    metastep_result r;
    ck_assert_int_eq(metastep_maml_step(b, tanh_support_cost, NULL, v, 4, 0.1, &o, &r),
                     MS_ERR_INVALID_ARG);
    const char *msg = NULL;
    ms_last_error(&msg);
    ck_assert_ptr_nonnull(strstr(msg, "mine"));
    ck_assert_ptr_null(r.cost);
    o.inner_optimization_step = NULL;
    o.checkpoint_every = -2;
    ck_assert_int_eq(metastep_maml_step(b, tanh_support_cost, NULL, v, 4, 0.1, &o, &r),
                     MS_ERR_INVALID_ARG);
    /* a stateless user optimizer is fine */
    ms_clear_error();
    metastep_optimizer half = {.name = "half", .step = user_stateless_step};
    o.inner_optimization_step = &half;
    metastep_result p, c;
    o.checkpoint_every = 0;
    assert_ok(metastep_maml_step(b, tanh_support_cost, NULL, v, 5, 0.1, &o, &p));
    o.checkpoint_every = 2;
    assert_ok(metastep_maml_step(b, tanh_support_cost, NULL, v, 5, 0.1, &o, &c));
    ck_assert(max_rel(c.grads, p.grads) < 1e-12);
    metastep_result_release(&p);
    metastep_result_release(&c);
    /* no inner steps: one segment, the outer cost only */
    o.inner_optimization_step = NULL;
    o.checkpoint_every = 0;
    assert_ok(metastep_maml_step(b, tanh_support_cost, tanh_query_cost, v, 0, 0.1, &o, &p));
    o.checkpoint_every = -1;
    assert_ok(metastep_maml_step(b, tanh_support_cost, tanh_query_cost, v, 0, 0.1, &o, &c));
    ck_assert(bit_equal(c.grads, p.grads));
    metastep_result_release(&p);
    metastep_result_release(&c);
    ms_clear_error();
    ms_container_release(b);
    ms_container_release(v);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("meta_checkpointed");
    TCase *tc = tcase_create("checkpointed");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, random_vs_unrolled);
    tcase_add_test(tc, single_segment_bit_identical);
    tcase_add_test(tc, fd_random);
    tcase_add_test(tc, fd_adam_anil);
    tcase_add_test(tc, memory_grows_like_sqrt);
    tcase_add_test(tc, memory_budget);
    tcase_add_test(tc, refusals);
    suite_add_tcase(s, tc);
    int rc = run_suite(s);
    metastep_shutdown_threads();
    return rc;
}
