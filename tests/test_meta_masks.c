/* The meta steps with inner_v / outer_v masks, checked against numbers the
 * library did not compute.  Runs once per backend (METASTEP_BACKEND).
 *
 * Why: against the real Ivy every failure was maml_step with inner_v
 * restricting the adapted variables and two or more inner steps (ANIL
 * style): the gradients of variables the inner loop does not adapt were
 * wrong (the fault was in ms_grad).  These tests would have caught it.
 *
 * 1. maml_fd_*: second-order MAML on a 2-layer tanh network with four
 *    variables ("layer0/w", "layer0/b", "head/w", "head/b") and three tasks,
 *    over inner_v x keep_inner_v x outer_v x keep_outer_v x steps 0..3 x
 *    batched x batch functions x outer_cost_fn x average_across_steps x
 *    stop_gradients: the whole product, 48 cells (inner_v x keep_inner_v x
 *    steps x batched) x 96 settings of the other options = 4608 steps
 *    (about 3 s per backend).  METASTEP_MASKS_QUICK=1 samples 16 settings
 *    per cell instead, by a fixed permutation under which every setting of
 *    the other options appears equally often.  For each outer
 *    variable the returned gradient's component along a fixed pseudo-random
 *    direction must equal the central difference of the returned cost
 *    along it (eps 1e-5).  Batched, the variables are per-task copies of
 *    one value and the gradient is summed over axis 0, so it is the
 *    derivative of the cost with respect to that shared value: the
 *    difference perturbs every copy.  Unbatched, the cost is the task mean
 *    and the gradient keeps the variable's shape.  The cost itself must
 *    equal a plain-C forward computation of the procedure, the gradient
 *    keys must be exactly the outer variables, and the batch functions must
 *    be called once per task (unbatched) or once on the whole batch
 *    (batched, as Ivy's _train_tasks_batched does).
 *    Tolerance: the cost is smooth (tanh, squares) with O(1) derivatives;
 *    the central difference's truncation error is ~eps^2 |f'''| ~ 1e-9 and
 *    its rounding error ~1e-16 / eps ~ 1e-11, so |fd - g.d| <= 1e-6 *
 *    sum|g_i d_i| + 1e-8 holds with a wide margin, while the wrong
 *    gradients the old ms_grad produced miss by O(1e-2) or more.
 * 2. fomaml_by_hand_* / reptile_by_hand: the same model's cost and
 *    gradient are written out in plain C doubles (forward and backward by
 *    hand), and the whole first-order procedure is re-run in C: the cost,
 *    the gradients and the adapted variables (return_inner_v) must agree to
 *    1e-10 relative (float64: only the summation order differs).  fomaml
 *    runs the same 4608-setting grid (return_inner_v cycling none, first,
 *    all); reptile (no masks) steps 0..3 x batched x stop_gradients x
 *    return_inner_v, 48 settings.
 * 3. ivy_*: Ivy's seven test_meta.py tests (fomaml/maml x unique, shared,
 *    overlapping variables; reptile) over their grids (steps extended to
 *    0..3, with_outer_cost_fn, average_across_steps, batched,
 *    stop_gradients, num_tasks 1..2, return_inner_v), with expected values
 *    from closed forms derived here for that tiny problem (see expect()),
 *    compared to 1e-10 in float64: 6 x 384 + 96 = 2400 steps.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "tanh_net.h"
#include "testutil.h"

/* ------------------------------------------------------------ helpers */

static ms_tensor *vec(int ndim, const int64_t *shape, const double *v)
{
    return ms_tensor_from_data(MS_F64, ndim, shape, v);
}

/* c[key] = t, the container owning the only reference outside scopes. */
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

static bool close_to(double got, double want, double rtol)
{
    return fabs(got - want) <= rtol * fabs(want) + 1e-13;
}

/* ------------------------------------------- the 2-layer network model */

enum { T = 3, P = 4, DIN = 2, H = 3, NV = 4, NP = DIN * H + H + H + 1 };

static const char *const KEYS[NV] = {"layer0/w", "layer0/b", "head/w", "head/b"};
static const int OFF[NV + 1] = {0, DIN * H, DIN * H + H, DIN * H + 2 * H, NP};
static const int64_t SHAPES[NV][2] = {{DIN, H}, {1, H}, {H, 1}, {1, 1}};

static const double THETA0[NP] = {0.6, -0.3, 0.8, 0.2, 0.9, -0.7, /* layer0/w */
                                  0.1, -0.2, 0.3,                 /* layer0/b */
                                  0.7, -0.5, 0.4,                 /* head/w */
                                  0.05};                          /* head/b */

/* The data: support (xs, ys) and query (xq, yq) sets per task. */
static double XS[T][P][DIN], YS[T][P], XQ[T][P][DIN], YQ[T][P];

static void make_data(void)
{
    for (int t = 0; t < T; t++)
        for (int p = 0; p < P; p++) {
            for (int i = 0; i < DIN; i++) {
                XS[t][p][i] = sin(1.3 * t + 0.7 * p + 2.1 * i);
                XQ[t][p][i] = cos(0.9 * t - 1.1 * p + 0.5 * i);
            }
            YS[t][p] = 0.5 * sin(2.0 * t + p) + 0.2;
            YQ[t][p] = 0.5 * cos(1.5 * t - p) - 0.1;
        }
}

static ms_container *model_batch(void)
{
    make_data();
    ms_container *b = ms_container_new();
    put(b, "xs", vec(3, (int64_t[]){T, P, DIN}, &XS[0][0][0]));
    put(b, "ys", vec(3, (int64_t[]){T, P, 1}, &YS[0][0]));
    put(b, "xq", vec(3, (int64_t[]){T, P, DIN}, &XQ[0][0][0]));
    put(b, "yq", vec(3, (int64_t[]){T, P, 1}, &YQ[0][0]));
    return b;
}

/* Variables from a flat parameter vector; batched: T copies of each. */
static ms_container *model_vars(const double *theta, bool batched)
{
    ms_container *v = ms_container_new();
    for (int k = 0; k < NV; k++)
        put(v, KEYS[k], vec(2, SHAPES[k], theta + OFF[k]));
    if (!batched)
        return v;
    ms_container *r = ms_container_replicate(v, T);
    ck_assert_ptr_nonnull(r);
    ms_container_release(v);
    return r;
}

/* mean((tanh(x @ W0 + b0) @ Wh + bh - y)^2): works on a task's sub-batch
 * (1,P,·) with plain variables and on the batch (T,P,·) with per-task
 * copies (T,·,·) alike. */

/* The batch functions: the inner one scales every input by 1.5, the outer
 * one shifts every target by -0.25.  They count their calls. */
typedef struct calls {
    int inner, outer;
} calls;

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
    ((calls *)u)->inner++;
    return map_batch(b, 'x', 1.5, 0.0);
}
static ms_container *outer_bfn(const ms_container *b, void *u)
{
    ((calls *)u)->outer++;
    return map_batch(b, 'y', 1.0, -0.25);
}

/* ---------------------------- the same model by hand, in plain doubles */

/* Cost of parameters th on P points, and its gradient in g (if non-NULL). */
static double net_by_hand(const double *th, const double (*x)[DIN], const double *y, double *g)
{
    const double *w0 = th + OFF[0], *b0 = th + OFF[1], *wh = th + OFF[2], bh = th[OFF[3]];
    double cost = 0;
    if (g)
        memset(g, 0, NP * sizeof *g);
    for (int p = 0; p < P; p++) {
        double h[H], pred = bh;
        for (int j = 0; j < H; j++) {
            double z = b0[j];
            for (int i = 0; i < DIN; i++)
                z += x[p][i] * w0[i * H + j];
            h[j] = tanh(z);
            pred += h[j] * wh[j];
        }
        double e = pred - y[p];
        cost += e * e / P;
        if (!g)
            continue;
        double r = 2 * e / P; /* dcost/dpred */
        g[OFF[3]] += r;
        for (int j = 0; j < H; j++) {
            g[OFF[2] + j] += r * h[j];
            double dz = r * wh[j] * (1 - h[j] * h[j]);
            g[OFF[1] + j] += dz;
            for (int i = 0; i < DIN; i++)
                g[OFF[0] + i * H + j] += x[p][i] * dz;
        }
    }
    return cost;
}

/* A mask over the four variables: bit k selects KEYS[k]. */
static unsigned mask_of(const char *const *chains, bool keep)
{
    if (!chains)
        return (1u << NV) - 1;
    unsigned m = 0;
    for (int c = 0; chains[c]; c++)
        for (int k = 0; k < NV; k++)
            if (!strcmp(chains[c], KEYS[k]))
                m |= 1u << k;
    return keep ? m : ((1u << NV) - 1) & ~m;
}

static bool in_mask(unsigned m, int param)
{
    for (int k = 0; k < NV; k++)
        if (param >= OFF[k] && param < OFF[k + 1])
            return m >> k & 1;
    return false;
}

/* One configuration of a meta step over the model. */
typedef struct mcfg {
    const char *const *inner_v, *const *outer_v;
    bool keep_inner, keep_outer;
    int steps;
    bool batched, bfns, outer_fn, avg, stop;
} mcfg;

static const double LR = 0.1;

/* The task's data as the inner or outer cost sees it (batch functions
 * applied); `query` picks xq/yq, else xs/ys. */
static void task_data(const mcfg *c, int t, bool outer, bool query, double (*x)[DIN], double *y)
{
    for (int p = 0; p < P; p++) {
        for (int i = 0; i < DIN; i++) {
            double v = query ? XQ[t][p][i] : XS[t][p][i];
            x[p][i] = c->bfns && !outer ? 1.5 * v : v;
        }
        double v = query ? YQ[t][p] : YS[t][p];
        y[p] = c->bfns && outer ? v - 0.25 : v;
    }
}

/* The first-order procedure (docs/semantics.md "The meta steps", Ivy's
 * _train_task) for one task, written out: cost, gradient (over all
 * parameters, zero outside the outer mask) and the adapted parameters. */
static double fomaml_task_by_hand(const mcfg *c, int t, double *grad, double *adapted)
{
    unsigned im = mask_of(c->inner_v, c->keep_inner), om = mask_of(c->outer_v, c->keep_outer);
    bool inner_is_outer = !c->outer_fn && !c->inner_v && !c->outer_v;
    double xi[P][DIN], yi[P], xo[P][DIN], yo[P];
    task_data(c, t, false, false, xi, yi);
    task_data(c, t, true, c->outer_fn, xo, yo);
    double th[NP], gi[NP], go[NP], csum = 0, gsum[NP] = {0};
    memcpy(th, THETA0, sizeof th);
    for (int s = 0; s < c->steps; s++) {
        double ci = net_by_hand(th, xi, yi, gi);
        if (c->avg) {
            if (inner_is_outer) { /* the inner cost and gradient are the step's */
                csum += ci;
                for (int q = 0; q < NP; q++)
                    gsum[q] += gi[q];
            } else {
                csum += net_by_hand(th, xo, yo, go);
                for (int q = 0; q < NP; q++)
                    gsum[q] += in_mask(om, q) ? go[q] : 0;
            }
        }
        for (int q = 0; q < NP; q++)
            if (in_mask(im, q))
                th[q] -= LR * gi[q];
    }
    double cost = net_by_hand(th, xo, yo, go);
    int n = c->avg ? c->steps + 1 : 1;
    for (int q = 0; q < NP; q++)
        grad[q] = ((c->avg ? gsum[q] : 0) + (in_mask(om, q) ? go[q] : 0)) / n;
    memcpy(adapted, th, sizeof th);
    return ((c->avg ? csum : 0) + cost) / n;
}

/* The task average; adapted[t] holds task t's adapted parameters. */
static double fomaml_by_hand(const mcfg *c, double *grad, double (*adapted)[NP])
{
    double cost = 0, g[NP];
    memset(grad, 0, NP * sizeof *grad);
    for (int t = 0; t < T; t++) {
        cost += fomaml_task_by_hand(c, t, g, adapted[t]) / T;
        for (int q = 0; q < NP; q++)
            grad[q] += g[q] / T;
    }
    return cost;
}

static metastep_options options_of(const mcfg *c, calls *n)
{
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.inner_v = c->inner_v;
    o.keep_inner_v = c->keep_inner;
    o.outer_v = c->outer_v;
    o.keep_outer_v = c->keep_outer;
    o.batched = c->batched;
    o.average_across_steps = c->avg;
    o.stop_gradients = c->stop;
    if (c->bfns) {
        o.inner_batch_fn = inner_bfn;
        o.outer_batch_fn = outer_bfn;
    }
    o.user = n;
    return o;
}

static void describe(const mcfg *c, char *buf, size_t size)
{
    char iv[64] = "NULL", ov[64] = "NULL";
    if (c->inner_v)
        snprintf(iv, sizeof iv, "%s%s", c->inner_v[0], c->inner_v[1] ? "+" : "");
    if (c->outer_v)
        snprintf(ov, sizeof ov, "%s%s", c->outer_v[0], c->outer_v[1] ? "+" : "");
    snprintf(buf, size,
             "inner_v %s keep %d, outer_v %s keep %d, steps %d, batched %d, batch fns %d, "
             "outer fn %d, avg %d, stop %d",
             iv, c->keep_inner, ov, c->keep_outer, c->steps, c->batched, c->bfns, c->outer_fn,
             c->avg, c->stop);
}

/* The grid's option values. */
static const char *const HEAD[] = {"head/w", "head/b", NULL};
static const char *const L0W[] = {"layer0/w", NULL};
static const char *const HEADW[] = {"head/w", NULL};
static const char *const BIASES[] = {"layer0/b", "head/b", NULL};
static const char *const *const INNER_VS[3] = {NULL, HEAD, L0W};
static const char *const *const OUTER_VS[3] = {NULL, HEADW, BIASES};

/* Cell `cell` (inner_v, keep_inner_v, steps, batched: 48 cells) and other
 * options from `other` (outer_v, keep_outer_v, batch fns, outer fn, avg,
 * stop: 96 settings). */
enum { CELLS = 3 * 2 * 4 * 2, OTHERS = 3 * 2 * 2 * 2 * 2 * 2 };

static mcfg config(int cell, int other)
{
    mcfg c;
    c.inner_v = INNER_VS[cell % 3];
    c.keep_inner = cell / 3 % 2;
    c.steps = cell / 6 % 4;
    c.batched = cell / 24 % 2;
    c.outer_v = OUTER_VS[other % 3];
    c.keep_outer = other / 3 % 2;
    c.bfns = other / 6 % 2;
    c.outer_fn = other / 12 % 2;
    c.avg = other / 24 % 2;
    c.stop = other / 48 % 2;
    return c;
}

/* How many settings of the other options each cell gets: all, or with
 * METASTEP_MASKS_QUICK=1 a fixed permutation of 0..CELLS*16-1 reduced mod
 * OTHERS, so each of the 96 appears CELLS*16/96 times. */
static int per_cell(void)
{
    const char *quick = getenv("METASTEP_MASKS_QUICK");
    return quick && quick[0] == '1' ? 16 : OTHERS;
}

static int other_of(int cell, int j, int per)
{
    if (per == OTHERS)
        return j;
    int n = CELLS * per; /* 768 = 2^8 * 3: 77 is coprime with it */
    return (int)(((long)(cell * per + j) * 77 + 13) % n) % OTHERS;
}

/* Fixed pseudo-random direction entries in [-1, 1]. */
static double direction(int q, int salt)
{
    unsigned long s = (unsigned long)(q + 1) * 2654435761ul + (unsigned long)salt * 40503ul;
    s ^= s >> 13;
    s *= 0x5bd1e995ul;
    s ^= s >> 15;
    return (double)(s % 2001) / 1000.0 - 1.0;
}

static double maml_cost_at(const mcfg *c, const ms_container *batch, const double *theta)
{
    ms_container *v = model_vars(theta, c->batched);
    calls n = {0, 0};
    metastep_options o = options_of(c, &n);
    metastep_result r;
    assert_ok(metastep_maml_step(batch, tanh_support_cost, c->outer_fn ? tanh_query_cost : NULL, v,
                                 c->steps, LR, &o, &r));
    double cost = ms_tensor_item(r.cost);
    metastep_result_release(&r);
    ms_container_release(v);
    return cost;
}

static void check_batch_fn_calls(const mcfg *c, const calls *n, const char *what)
{
    int want = c->bfns ? (c->batched ? 1 : T) : 0;
    ck_assert_msg(n->inner == want && n->outer == want,
                  "%s: batch functions called %d/%d times, want %d", what, n->inner, n->outer,
                  want);
}

static void check_maml(const mcfg *c, const ms_container *batch)
{
    char what[256];
    describe(c, what, sizeof what);
    ms_container *v = model_vars(THETA0, c->batched);
    calls n = {0, 0};
    metastep_options o = options_of(c, &n);
    metastep_result r;
    assert_ok(metastep_maml_step(batch, tanh_support_cost, c->outer_fn ? tanh_query_cost : NULL, v, c->steps,
                                 LR, &o, &r));
    check_batch_fn_calls(c, &n, what);
    /* the forward procedure is the first-order one */
    double want_g[NP], adapted[T][NP];
    double want_cost = fomaml_by_hand(c, want_g, adapted);
    ck_assert_msg(close_to(ms_tensor_item(r.cost), want_cost, 1e-10),
                  "maml cost %.15g, by hand %.15g (%s)", ms_tensor_item(r.cost), want_cost, what);
    ck_assert(ms_requires_grad(r.cost) == !c->stop);
    unsigned om = mask_of(c->outer_v, c->keep_outer);
    ck_assert_int_eq(ms_container_size(r.grads), __builtin_popcount(om));
    for (int k = 0; k < NV; k++) {
        if (!(om >> k & 1)) {
            ck_assert_msg(!ms_container_has(r.grads, KEYS[k]), "%s has a gradient (%s)", KEYS[k],
                          what);
            continue;
        }
        ms_tensor *g = ms_container_get(r.grads, KEYS[k]);
        ck_assert_ptr_nonnull(g);
        ck_assert(!ms_requires_grad(g));
        ck_assert_int_eq(ms_tensor_ndim(g), 2);
        ck_assert_int_eq(ms_tensor_shape(g)[0], SHAPES[k][0]);
        ck_assert_int_eq(ms_tensor_shape(g)[1], SHAPES[k][1]);
        /* directional central difference along d, over this variable only */
        double eps = 1e-5, plus[NP], minus[NP], gd = 0, scale = 0;
        memcpy(plus, THETA0, sizeof plus);
        memcpy(minus, THETA0, sizeof minus);
        for (int q = OFF[k]; q < OFF[k + 1]; q++) {
            double d = direction(q, c->steps + 7 * k);
            plus[q] += eps * d;
            minus[q] -= eps * d;
            gd += at(g, q - OFF[k]) * d;
            scale += fabs(at(g, q - OFF[k]) * d);
        }
        double fd = (maml_cost_at(c, batch, plus) - maml_cost_at(c, batch, minus)) / (2 * eps);
        ck_assert_msg(fabs(fd - gd) <= 1e-6 * scale + 1e-8,
                      "%s: gradient along d %.12g, finite difference %.12g (%s)", KEYS[k], gd, fd,
                      what);
    }
    metastep_result_release(&r);
    ms_container_release(v);
}

static void maml_fd_cells(bool batched)
{
    ms_container *batch = model_batch();
    int64_t live = ms_live_tensors();
    int per = per_cell();
    for (int cell = 0; cell < CELLS; cell++) {
        if ((cell / 24 % 2) != batched)
            continue;
        for (int j = 0; j < per; j++) {
            mcfg c = config(cell, other_of(cell, j, per));
            check_maml(&c, batch);
        }
    }
    ck_assert_int_eq(ms_live_tensors(), live);
    ms_container_release(batch);
}

START_TEST(maml_fd_unbatched)
{
    maml_fd_cells(false);
}
END_TEST

START_TEST(maml_fd_batched)
{
    maml_fd_cells(true);
}
END_TEST

/* The permutation covers every setting of the other options. */
START_TEST(grid_covers_every_option)
{
    int per = per_cell(), seen[OTHERS] = {0};
    for (int cell = 0; cell < CELLS; cell++)
        for (int j = 0; j < per; j++)
            seen[other_of(cell, j, per)]++;
    for (int i = 0; i < OTHERS; i++)
        ck_assert_int_eq(seen[i], CELLS * per / OTHERS);
}
END_TEST

/* ------------------------------------- first order against plain C */

static void check_fomaml(const mcfg *c, const ms_container *batch, metastep_return_inner ret)
{
    char what[256];
    describe(c, what, sizeof what);
    ms_container *v = model_vars(THETA0, c->batched);
    calls n = {0, 0};
    metastep_options o = options_of(c, &n);
    o.return_inner_v = ret;
    metastep_result r;
    assert_ok(metastep_fomaml_step(batch, tanh_support_cost, c->outer_fn ? tanh_query_cost : NULL, v,
                                   c->steps, LR, &o, &r));
    check_batch_fn_calls(c, &n, what);
    double want_g[NP], adapted[T][NP];
    double want_cost = fomaml_by_hand(c, want_g, adapted);
    ck_assert_msg(close_to(ms_tensor_item(r.cost), want_cost, 1e-10),
                  "fomaml cost %.15g, by hand %.15g (%s)", ms_tensor_item(r.cost), want_cost, what);
    ck_assert(ms_requires_grad(r.cost) == !c->stop);
    unsigned om = mask_of(c->outer_v, c->keep_outer);
    ck_assert_int_eq(ms_container_size(r.grads), __builtin_popcount(om));
    for (int k = 0; k < NV; k++) {
        if (!(om >> k & 1))
            continue;
        ms_tensor *g = ms_container_get(r.grads, KEYS[k]);
        ck_assert_ptr_nonnull(g);
        ck_assert_int_eq(ms_tensor_numel(g), OFF[k + 1] - OFF[k]);
        for (int q = OFF[k]; q < OFF[k + 1]; q++)
            ck_assert_msg(close_to(at(g, q - OFF[k]), want_g[q], 1e-10),
                          "%s[%d]: %.15g, by hand %.15g (%s)", KEYS[k], q - OFF[k],
                          at(g, q - OFF[k]), want_g[q], what);
    }
    if (ret == METASTEP_RETURN_INNER_NONE) {
        ck_assert_ptr_null(r.inner_v);
    } else {
        int tasks = ret == METASTEP_RETURN_INNER_ALL ? T : 1;
        ck_assert_int_eq(ms_container_size(r.inner_v), NV);
        for (int k = 0; k < NV; k++) {
            ms_tensor *a = ms_container_get(r.inner_v, KEYS[k]);
            ck_assert_ptr_nonnull(a);
            ck_assert_int_eq(ms_tensor_ndim(a), 3);
            ck_assert_int_eq(ms_tensor_shape(a)[0], tasks);
            int len = OFF[k + 1] - OFF[k];
            for (int t = 0; t < tasks; t++)
                for (int q = OFF[k]; q < OFF[k + 1]; q++)
                    ck_assert_msg(close_to(at(a, t * len + q - OFF[k]), adapted[t][q], 1e-10),
                                  "adapted %s of task %d: %.15g, by hand %.15g (%s)", KEYS[k], t,
                                  at(a, t * len + q - OFF[k]), adapted[t][q], what);
        }
    }
    metastep_result_release(&r);
    ms_container_release(v);
}

static void fomaml_cells(bool batched)
{
    ms_container *batch = model_batch();
    int64_t live = ms_live_tensors();
    int i = 0;
    for (int cell = 0; cell < CELLS; cell++) {
        if ((cell / 24 % 2) != batched)
            continue;
        for (int other = 0; other < OTHERS; other++, i++) {
            mcfg c = config(cell, other);
            check_fomaml(&c, batch, (metastep_return_inner)(i % 3));
        }
    }
    ck_assert_int_eq(ms_live_tensors(), live);
    ms_container_release(batch);
}

START_TEST(fomaml_by_hand_unbatched)
{
    fomaml_cells(false);
}
END_TEST

START_TEST(fomaml_by_hand_batched)
{
    fomaml_cells(true);
}
END_TEST

START_TEST(reptile_by_hand)
{
    ms_container *batch = model_batch();
    int64_t live = ms_live_tensors();
    for (int i = 0; i < 4 * 2 * 2 * 3; i++) {
        /* reptile is fomaml with the cost as the inner cost, no outer
         * cost, no masks, averaged across steps, the gradient over lr */
        mcfg c = {NULL, NULL, true, true, i % 4, i / 4 % 2, false, false, true, i / 8 % 2};
        metastep_return_inner ret = (metastep_return_inner)(i / 16);
        char what[256];
        describe(&c, what, sizeof what);
        ms_container *v = model_vars(THETA0, c.batched);
        metastep_reptile_options o = METASTEP_REPTILE_OPTIONS_DEFAULT;
        o.batched = c.batched;
        o.stop_gradients = c.stop;
        o.return_inner_v = ret;
        metastep_result r;
        assert_ok(metastep_reptile_step(batch, tanh_support_cost, v, c.steps, LR, &o, &r));
        double want_g[NP], adapted[T][NP];
        double want_cost = fomaml_by_hand(&c, want_g, adapted);
        ck_assert_msg(close_to(ms_tensor_item(r.cost), want_cost, 1e-10),
                      "reptile cost %.15g, by hand %.15g (%s)", ms_tensor_item(r.cost), want_cost,
                      what);
        ck_assert_int_eq(ms_container_size(r.grads), NV);
        for (int k = 0; k < NV; k++)
            for (int q = OFF[k]; q < OFF[k + 1]; q++)
                ck_assert_msg(close_to(at(ms_container_get(r.grads, KEYS[k]), q - OFF[k]),
                                       want_g[q] / LR, 1e-10),
                              "%s[%d]: %.15g, by hand %.15g (%s)", KEYS[k], q - OFF[k],
                              at(ms_container_get(r.grads, KEYS[k]), q - OFF[k]), want_g[q] / LR,
                              what);
        int tasks = ret == METASTEP_RETURN_INNER_ALL ? T : ret == METASTEP_RETURN_INNER_FIRST;
        if (!tasks)
            ck_assert_ptr_null(r.inner_v);
        for (int k = 0; tasks && k < NV; k++) {
            ms_tensor *a = ms_container_get(r.inner_v, KEYS[k]);
            ck_assert_int_eq(ms_tensor_shape(a)[0], tasks);
            int len = OFF[k + 1] - OFF[k];
            for (int t = 0; t < tasks; t++)
                for (int q = OFF[k]; q < OFF[k + 1]; q++)
                    ck_assert(close_to(at(a, t * len + q - OFF[k]), adapted[t][q], 1e-10));
        }
        metastep_result_release(&r);
        ms_container_release(v);
    }
    ck_assert_int_eq(ms_live_tensors(), live);
    ms_container_release(batch);
}
END_TEST

/* --------------------------------------------- Ivy's test_meta.py grids */

/* The problem of Ivy's tests: num_tasks tasks with x = 1..num_tasks, one
 * scalar per variable (shape (1,), or (num_tasks, 1) per-task copies when
 * batched), learning rate 0.01.
 *   unique / overlapping: latent l0 = 0, weight w = 1,
 *     inner cost -mean(l x w), outer cost +mean(l x w)
 *   shared / reptile:     latent l0 = 1,
 *     inner cost -mean(x l^2), outer cost +mean(x l^2)
 * Batched, a cost pairs task t's x with task t's copies and means over
 * tasks (Ivy's loop over unstacked sub-batches). */
static const double ILR = 0.01;

static ms_tensor *paired_x(const ms_container *b, const ms_container *v)
{
    const ms_tensor *l = ms_container_get(v, "latent");
    return ms_reshape(ms_container_get(b, "x"), ms_tensor_ndim(l), ms_tensor_shape(l));
}
static ms_tensor *lxw(const ms_container *b, const ms_container *v)
{
    return ms_mean(ms_mul(ms_mul(ms_container_get(v, "latent"), paired_x(b, v)),
                          ms_container_get(v, "weight")),
                   0, NULL, false);
}
static ms_tensor *xll(const ms_container *b, const ms_container *v)
{
    return ms_mean(ms_mul(paired_x(b, v), ms_square(ms_container_get(v, "latent"))), 0, NULL,
                   false);
}
static ms_tensor *lxw_inner(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return ms_neg(lxw(b, v));
}
static ms_tensor *lxw_outer(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return lxw(b, v);
}
static ms_tensor *xll_inner(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return ms_neg(xll(b, v));
}
static ms_tensor *xll_outer(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return xll(b, v);
}

typedef enum problem { UNIQUE, SHARED, OVERLAPPING } problem;
typedef enum algo { FOMAML, MAML, REPTILE } algo;

typedef struct icfg {
    problem prob;
    algo alg;
    int steps;
    bool outer_fn, avg, batched, stop;
    int tasks;
    metastep_return_inner ret;
} icfg;

/* What the step must return, derived by hand.  s = +1 with the outer cost
 * function, -1 without (the inner cost then serves as the outer one, on
 * the same data).  Per task with input x:
 *   unique (inner_v latent, outer_v weight): the inner gradient in l is
 *     -x w, so l_i = l0 + i lr x w (w never adapts).  Step cost s x w l_i.
 *     First order, d/dw at (l_i, w): s x l_i.  Second order, the cost
 *     s x w l_n with l_n = l0 + n lr x w depends on w twice:
 *     d/dw = s x (l0 + 2 n lr x w), and at step i likewise with i.
 *   overlapping (inner_v latent, outer: everything): weight as unique, and
 *     d/dl0 = s x w for both orders (l_i - l0 does not depend on l0).
 *   shared (no masks): the inner gradient is -2 x l, so
 *     l_i = (1 + 2 lr x)^i l0.  Step cost s x l_i^2; first order
 *     d/dl = 2 s x l_i; second order d/dl0 = 2 s x l_i (1 + 2 lr x)^i.
 *   reptile: shared without an outer function, averaged, over lr.
 * Averaging takes the mean over i = 0..n of the step values, else i = n;
 * then the mean over tasks (batched too: the per-task gradients are the
 * batched ones times num_tasks, and maml's sum over copies of
 * (1/num_tasks) dc_t/dw_t is the same mean). */
typedef struct iwant {
    double cost, latent_grad, weight_grad;
    double latent_adapted[2];
} iwant;

static iwant expect(const icfg *c)
{
    double s = c->outer_fn && c->alg != REPTILE ? 1 : -1, lr = ILR;
    bool avg = c->avg || c->alg == REPTILE;
    int n = c->steps;
    iwant w = {0, 0, 0, {0, 0}};
    for (int t = 0; t < c->tasks; t++) {
        double x = t + 1, cost = 0, gl = 0, gw = 0;
        for (int i = avg ? 0 : n; i <= n; i++) {
            if (c->prob == SHARED) {
                double l = pow(1 + 2 * lr * x, i);
                cost += s * x * l * l;
                gl += c->alg == MAML ? 2 * s * x * l * pow(1 + 2 * lr * x, i) : 2 * s * x * l;
            } else {
                double l0 = 0, wt = 1, l = l0 + i * lr * x * wt;
                cost += s * x * wt * l;
                gw += c->alg == MAML ? s * x * (l0 + 2 * i * lr * x * wt) : s * x * l;
                gl += s * x * wt;
            }
        }
        int m = avg ? n + 1 : 1;
        w.cost += cost / m / c->tasks;
        w.latent_grad += gl / m / c->tasks;
        w.weight_grad += gw / m / c->tasks;
        w.latent_adapted[t] = c->prob == SHARED ? pow(1 + 2 * lr * x, n) : n * lr * x;
    }
    if (c->alg == REPTILE)
        w.latent_grad /= lr;
    return w;
}

static ms_container *ivy_vars(const icfg *c)
{
    ms_container *v = ms_container_new();
    put(v, "latent", vec(1, (int64_t[]){1}, (double[]){c->prob == SHARED ? 1.0 : 0.0}));
    if (c->prob != SHARED)
        put(v, "weight", vec(1, (int64_t[]){1}, (double[]){1.0}));
    if (!c->batched)
        return v;
    ms_container *r = ms_container_replicate(v, c->tasks);
    ms_container_release(v);
    return r;
}

static void check_grad(const ms_container *grads, const char *key, double want, const char *what)
{
    ms_tensor *g = ms_container_get(grads, key);
    ck_assert_msg(g != NULL, "no gradient for %s (%s)", key, what);
    ck_assert(!ms_requires_grad(g));
    ck_assert_int_eq(ms_tensor_ndim(g), 1);
    ck_assert_int_eq(ms_tensor_shape(g)[0], 1);
    ck_assert_msg(close_to(at(g, 0), want, 1e-10), "%s gradient %.15g, want %.15g (%s)", key,
                  at(g, 0), want, what);
}

static void run_ivy(const icfg *c)
{
    static const char *const names[3][3] = {{"fomaml unique", "fomaml shared", "fomaml overlapping"},
                                            {"maml unique", "maml shared", "maml overlapping"},
                                            {"reptile", "reptile", "reptile"}};
    char what[256];
    snprintf(what, sizeof what,
             "%s: steps %d, outer fn %d, avg %d, batched %d, stop %d, tasks %d, return %d",
             names[c->alg][c->prob], c->steps, c->outer_fn, c->avg, c->batched, c->stop, c->tasks,
             c->ret);
    ms_container *batch = ms_container_new();
    put(batch, "x", ms_arange(MS_F64, 1, c->tasks + 1, 1));
    ms_container *v = ivy_vars(c);
    static const char *const latent[] = {"latent", NULL}, *const weight[] = {"weight", NULL};
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.average_across_steps = c->avg;
    o.batched = c->batched;
    o.stop_gradients = c->stop;
    o.return_inner_v = c->ret;
    if (c->prob != SHARED)
        o.inner_v = latent;
    if (c->prob == UNIQUE)
        o.outer_v = weight;
    metastep_cost_fn in = c->prob == SHARED ? xll_inner : lxw_inner;
    metastep_cost_fn out = c->outer_fn ? (c->prob == SHARED ? xll_outer : lxw_outer) : NULL;
    metastep_result r;
    if (c->alg == REPTILE) {
        metastep_reptile_options ro = METASTEP_REPTILE_OPTIONS_DEFAULT;
        ro.batched = c->batched;
        ro.stop_gradients = c->stop;
        ro.return_inner_v = c->ret;
        assert_ok(metastep_reptile_step(batch, xll_inner, v, c->steps, ILR, &ro, &r));
    } else if (c->alg == MAML) {
        assert_ok(metastep_maml_step(batch, in, out, v, c->steps, ILR, &o, &r));
    } else {
        assert_ok(metastep_fomaml_step(batch, in, out, v, c->steps, ILR, &o, &r));
    }
    iwant w = expect(c);
    ck_assert_msg(close_to(ms_tensor_item(r.cost), w.cost, 1e-10), "cost %.15g, want %.15g (%s)",
                  ms_tensor_item(r.cost), w.cost, what);
    ck_assert(ms_requires_grad(r.cost) == !c->stop);
    ck_assert_int_eq(ms_container_size(r.grads), c->prob == OVERLAPPING ? 2 : 1);
    if (c->prob != UNIQUE)
        check_grad(r.grads, "latent", w.latent_grad, what);
    if (c->prob != SHARED)
        check_grad(r.grads, "weight", w.weight_grad, what);
    if (c->ret == METASTEP_RETURN_INNER_NONE) {
        ck_assert_ptr_null(r.inner_v);
    } else {
        int tasks = c->ret == METASTEP_RETURN_INNER_ALL ? c->tasks : 1;
        ck_assert_int_eq(ms_container_size(r.inner_v), c->prob == SHARED ? 1 : 2);
        for (int k = 0; k < ms_container_size(r.inner_v); k++) {
            ms_tensor *a = ms_container_at(r.inner_v, k);
            bool is_latent = !strcmp(ms_container_key(r.inner_v, k), "latent");
            ck_assert_int_eq(ms_tensor_ndim(a), 2); /* Ivy's cont_shape [tasks, 1] */
            ck_assert_int_eq(ms_tensor_shape(a)[0], tasks);
            ck_assert_int_eq(ms_tensor_shape(a)[1], 1);
            for (int t = 0; t < tasks; t++)
                ck_assert_msg(close_to(at(a, t), is_latent ? w.latent_adapted[t] : 1.0, 1e-10),
                              "adapted %s of task %d: %.15g (%s)", ms_container_key(r.inner_v, k),
                              t, at(a, t), what);
        }
    }
    metastep_result_release(&r);
    ms_container_release(v);
    ms_container_release(batch);
}

/* Every combination of Ivy's parameters (inner_grad_steps extended to 0). */
static int ivy_grid(problem prob, algo alg)
{
    int count = 0;
    int64_t live = ms_live_tensors();
    for (int steps = 0; steps <= 3; steps++)
        for (int ofn = 0; ofn < 2; ofn++)
            for (int avg = 0; avg < 2; avg++)
                for (int batched = 0; batched < 2; batched++)
                    for (int stop = 0; stop < 2; stop++)
                        for (int tasks = 1; tasks <= 2; tasks++)
                            for (int ret = 0; ret < 3; ret++) {
                                if (alg == REPTILE && (ofn || avg))
                                    continue; /* reptile takes neither */
                                icfg c = {prob, alg, steps, ofn, avg, batched, stop, tasks,
                                          (metastep_return_inner)ret};
                                run_ivy(&c);
                                count++;
                            }
    ck_assert_int_eq(ms_live_tensors(), live);
    return count;
}

START_TEST(ivy_fomaml_unique_vars) { ck_assert_int_eq(ivy_grid(UNIQUE, FOMAML), 384); }
END_TEST
START_TEST(ivy_fomaml_shared_vars) { ck_assert_int_eq(ivy_grid(SHARED, FOMAML), 384); }
END_TEST
START_TEST(ivy_fomaml_overlapping_vars) { ck_assert_int_eq(ivy_grid(OVERLAPPING, FOMAML), 384); }
END_TEST
START_TEST(ivy_reptile) { ck_assert_int_eq(ivy_grid(SHARED, REPTILE), 96); }
END_TEST
START_TEST(ivy_maml_unique_vars) { ck_assert_int_eq(ivy_grid(UNIQUE, MAML), 384); }
END_TEST
START_TEST(ivy_maml_shared_vars) { ck_assert_int_eq(ivy_grid(SHARED, MAML), 384); }
END_TEST
START_TEST(ivy_maml_overlapping_vars) { ck_assert_int_eq(ivy_grid(OVERLAPPING, MAML), 384); }
END_TEST

/* Ivy's own cost table for a few entries (rounded as Ivy prints them): the
 * closed forms above reproduce it. */
START_TEST(ivy_cost_table)
{
    icfg c = {SHARED, FOMAML, 3, true, false, false, true, 2, METASTEP_RETURN_INNER_NONE};
    ck_assert(fabs(expect(&c).cost - 1.8284001) < 1e-6); /* Ivy ran in float32 */
    c = (icfg){SHARED, FOMAML, 2, true, true, false, true, 1, METASTEP_RETURN_INNER_NONE};
    ck_assert(fabs(expect(&c).cost - 1.0409441) < 1e-6); /* Ivy ran in float32 */
    c = (icfg){UNIQUE, MAML, 3, false, true, false, true, 2, METASTEP_RETURN_INNER_NONE};
    ck_assert(fabs(expect(&c).cost - -0.0375) < 1e-12);
    c = (icfg){SHARED, REPTILE, 3, false, false, false, true, 2, METASTEP_RETURN_INNER_NONE};
    ck_assert(fabs(expect(&c).cost - -1.6603187) < 1e-6); /* Ivy ran in float32 */
}
END_TEST

int main(void)
{
    Suite *s = suite_create("meta_masks");
    TCase *fd = tcase_create("maml finite differences");
    tcase_set_timeout(fd, 600);
    tcase_add_test(fd, grid_covers_every_option);
    tcase_add_test(fd, maml_fd_unbatched);
    tcase_add_test(fd, maml_fd_batched);
    suite_add_tcase(s, fd);
    TCase *hand = tcase_create("first order by hand");
    tcase_set_timeout(hand, 600);
    tcase_add_test(hand, fomaml_by_hand_unbatched);
    tcase_add_test(hand, fomaml_by_hand_batched);
    tcase_add_test(hand, reptile_by_hand);
    suite_add_tcase(s, hand);
    TCase *ivy = tcase_create("ivy test_meta.py grids");
    tcase_set_timeout(ivy, 600);
    tcase_add_test(ivy, ivy_cost_table);
    tcase_add_test(ivy, ivy_fomaml_unique_vars);
    tcase_add_test(ivy, ivy_fomaml_shared_vars);
    tcase_add_test(ivy, ivy_fomaml_overlapping_vars);
    tcase_add_test(ivy, ivy_reptile);
    tcase_add_test(ivy, ivy_maml_unique_vars);
    tcase_add_test(ivy, ivy_maml_shared_vars);
    tcase_add_test(ivy, ivy_maml_overlapping_vars);
    suite_add_tcase(s, ivy);
    return run_suite(s);
}
