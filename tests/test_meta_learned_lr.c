/* Learned inner learning rates (Meta-SGD, MAML++ LSLR), step weights
 * (MAML++ MSL) and ANIL, checked against numbers the library did not
 * compute.  Runs once per backend (METASTEP_BACKEND).  docs/variants.md
 * states what is checked here.
 *
 * The model: the 2-layer tanh network of test_meta_masks.c (variables
 * "layer0/w" (2,3), "layer0/b" (1,3), "head/w" (3,1), "head/b" (1,1)), three
 * tasks of four support and four query points, float64.
 *
 * 1. maml_fd_*: second-order MAML over rate layout (Meta-SGD: shaped like
 *    the variable; LSLR: [steps]; per-step per-element: [steps, shape];
 *    one 0-d rate per variable) x inner steps 1..3 x masks (none; ANIL:
 *    inner_v = "head"; inner_v = layer0/w with outer_v = the biases) x
 *    weights (none; MAML++ MSL weights; uniform step_weights; Ivy's
 *    average_across_steps) x stop_gradients, batched and unbatched.  Every
 *    returned gradient, of the outer variables and of every learned rate,
 *    projected on a fixed pseudo-random direction, must equal the central
 *    difference of the returned cost along it (eps 1e-5; |fd - g.d| <=
 *    1e-6 sum|g_i d_i| + 1e-8, the tolerance and its reasoning of
 *    test_meta_masks.c: truncation ~1e-9, rounding ~1e-11).  The gradient
 *    keys must be exactly the outer variables and "inner_lr/<inner
 *    variable>", each of its tensor's shape.
 * 2. fomaml_*: first-order MAML over the same grid.  The procedure and its
 *    first-order gradient are re-run in plain C doubles (network forward and
 *    backward by hand): the cost, the variables' gradients and the rates'
 *    gradients must agree to 1e-10 relative.  The rates' first-order
 *    gradient is defined (docs/variants.md) as the derivative of the cost
 *    with every inner gradient held constant; that definition is checked
 *    too, by central differences of the by-hand cost with the inner
 *    gradients frozen at their values.
 * 3. Ivy's scalar path is bit-identical whether the new fields are left to
 *    METASTEP_OPTIONS_DEFAULT or zeroed by hand; 0-d rates equal to the
 *    scalar rate give the scalar path's numbers (1e-12); uniform
 *    step_weights give average_across_steps' numbers (1e-12); threads 1 and
 *    3 give bit-identical results with learned rates.
 * 4. anil_sine_mlp: the --adapt head preset for the sine task (inner_v =
 *    "l3", the last layer of an MLP 1-8-8-1 named like plugins/sine):
 *    second-order MAML's gradient equals central differences, 1-3 steps,
 *    batched and unbatched, with and without Meta-SGD rates.
 * 5. Errors: a rate naming no inner variable, an inner variable without
 *    rate, a rate that does not broadcast, per-step rates of the wrong
 *    length, another inner optimizer, step weights with
 *    average_across_steps, non-finite weights or rates.
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

static bool close_to(double got, double want, double rtol)
{
    return fabs(got - want) <= rtol * fabs(want) + 1e-13;
}

/* Fixed pseudo-random entries in [-1, 1]. */
static double direction(int q, int salt)
{
    unsigned long s = (unsigned long)(q + 1) * 2654435761ul + (unsigned long)salt * 40503ul;
    s ^= s >> 13;
    s *= 0x5bd1e995ul;
    s ^= s >> 15;
    return (double)(s % 2001) / 1000.0 - 1.0;
}

/* ------------------------------------------- the 2-layer network model */

enum { T = 3, P = 4, DIN = 2, H = 3, NV = 4, NP = DIN * H + H + H + 1, MAXS = 3 };

static const char *const KEYS[NV] = {"layer0/w", "layer0/b", "head/w", "head/b"};
static const int OFF[NV + 1] = {0, DIN * H, DIN * H + H, DIN * H + 2 * H, NP};
static const int64_t SHAPES[NV][2] = {{DIN, H}, {1, H}, {H, 1}, {1, 1}};
static const double THETA0[NP] = {0.6, -0.3, 0.8, 0.2, 0.9, -0.7, 0.1, -0.2, 0.3,
                                  0.7, -0.5, 0.4, 0.05};
static double XS[T][P][DIN], YS[T][P], XQ[T][P][DIN], YQ[T][P];

static ms_container *model_batch(void)
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
    ms_container *b = ms_container_new();
    put(b, "xs", vec(3, (int64_t[]){T, P, DIN}, &XS[0][0][0]));
    put(b, "ys", vec(3, (int64_t[]){T, P, 1}, &YS[0][0]));
    put(b, "xq", vec(3, (int64_t[]){T, P, DIN}, &XQ[0][0][0]));
    put(b, "yq", vec(3, (int64_t[]){T, P, 1}, &YQ[0][0]));
    return b;
}

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


/* Cost of th on P points and its gradient in g (if non-NULL), by hand. */
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
        double r = 2 * e / P;
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

/* ------------------------------------------------ the configurations */

typedef enum { L_METASGD, L_LSLR, L_STEP_ELEM, L_SCALAR, NLAYOUTS } layout;
static const char *const LAYOUT_NAMES[NLAYOUTS] = {"meta-sgd", "lslr", "per-step-element",
                                                   "0-d"};
typedef enum { W_NONE, W_MSL, W_UNIFORM, W_AVG, NWEIGHTS } weighting;
static const char *const WEIGHT_NAMES[NWEIGHTS] = {"final", "msl", "uniform", "average"};

static const char *const HEAD[] = {"head", NULL};
static const char *const L0W[] = {"layer0/w", NULL};
static const char *const BIASES[] = {"layer0/b", "head/b", NULL};
enum { NMASKS = 3 };
static const char *const *const INNER_VS[NMASKS] = {NULL, HEAD, L0W};
static const char *const *const OUTER_VS[NMASKS] = {NULL, NULL, BIASES};
static const unsigned INNER_M[NMASKS] = {15, 12, 1}, OUTER_M[NMASKS] = {15, 15, 10};

typedef struct cfg {
    layout lay;
    int steps, mask;
    weighting wt;
    bool batched, stop, outer_fn;
    int threads;
} cfg;

static void describe(const cfg *c, char *b, size_t n)
{
    snprintf(b, n, "%s, %d steps, mask %d, weights %s, %s, stop %d, outer_fn %d, threads %d",
             LAYOUT_NAMES[c->lay], c->steps, c->mask, WEIGHT_NAMES[c->wt],
             c->batched ? "batched" : "unbatched", c->stop, c->outer_fn, c->threads);
}

/* Number of rate elements of variable k, and the element for (step i,
 * parameter q of k). */
static int rate_len(const cfg *c, int k)
{
    int n = OFF[k + 1] - OFF[k];
    switch (c->lay) {
    case L_METASGD: return n;
    case L_LSLR: return c->steps;
    case L_STEP_ELEM: return c->steps * n;
    default: return 1;
    }
}
static int rate_index(const cfg *c, int k, int i, int q)
{
    int n = OFF[k + 1] - OFF[k];
    switch (c->lay) {
    case L_METASGD: return q - OFF[k];
    case L_LSLR: return i;
    case L_STEP_ELEM: return i * n + q - OFF[k];
    default: return 0;
    }
}

enum { RMAX = MAXS * NP };
typedef struct rates {
    double v[NV][RMAX];
} rates;

static void rates_init(const cfg *c, rates *r)
{
    for (int k = 0; k < NV; k++)
        for (int e = 0; e < rate_len(c, k); e++)
            r->v[k][e] = 0.1 + 0.04 * direction(e + 31 * k, 99);
}

static ms_container *rates_container(const cfg *c, const rates *r)
{
    ms_container *out = ms_container_new();
    for (int k = 0; k < NV; k++) {
        if (!(INNER_M[c->mask] >> k & 1))
            continue;
        switch (c->lay) {
        case L_METASGD: put(out, KEYS[k], vec(2, SHAPES[k], r->v[k])); break;
        case L_LSLR: put(out, KEYS[k], vec(1, (int64_t[]){c->steps}, r->v[k])); break;
        case L_STEP_ELEM:
            put(out, KEYS[k], vec(3, (int64_t[]){c->steps, SHAPES[k][0], SHAPES[k][1]}, r->v[k]));
            break;
        default: put(out, KEYS[k], vec(0, NULL, r->v[k])); break;
        }
    }
    return out;
}

static void weights_of(const cfg *c, double *w)
{
    for (int i = 0; i <= c->steps; i++)
        w[i] = c->wt == W_UNIFORM || c->wt == W_AVG ? 1.0 / (c->steps + 1) : 0;
    if (c->wt == W_NONE)
        w[c->steps] = 1;
    if (c->wt == W_MSL) /* an annealed MAML++ schedule halfway through */
        ck_assert(metastep_msl_weights(c->steps, 5, 10, w));
}

static metastep_options options_of(const cfg *c, const ms_container *rc, double *w)
{
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = c->batched;
    o.inner_v = INNER_VS[c->mask];
    o.outer_v = OUTER_VS[c->mask];
    o.stop_gradients = c->stop;
    o.threads = c->threads;
    o.inner_learning_rates = rc;
    o.inner_lr_per_step = c->lay == L_LSLR || c->lay == L_STEP_ELEM;
    weights_of(c, w);
    o.average_across_steps = c->wt == W_AVG;
    o.step_weights = c->wt == W_MSL || c->wt == W_UNIFORM ? w : NULL;
    return o;
}

static double cost_at(const cfg *c, bool second, const ms_container *batch, const double *theta,
                      const rates *r)
{
    ms_container *v = model_vars(theta, c->batched), *rc = rates_container(c, r);
    double w[MAXS + 1];
    metastep_options o = options_of(c, rc, w);
    metastep_result res;
    assert_ok((second ? metastep_maml_step : metastep_fomaml_step)(
        batch, tanh_support_cost, c->outer_fn ? tanh_query_cost : NULL, v, c->steps, 0.1, &o, &res));
    double cost = ms_tensor_item(res.cost);
    metastep_result_release(&res);
    ms_container_release(rc);
    ms_container_release(v);
    return cost;
}

static const char *rate_key(int k)
{
    static char buf[NV][64];
    snprintf(buf[k], sizeof buf[k], "%s%s", METASTEP_INNER_LR_PREFIX, KEYS[k]);
    return buf[k];
}

/* The gradient keys are exactly the outer variables and the rates. */
static void check_keys(const cfg *c, const ms_container *g, const char *what)
{
    int want = __builtin_popcount(OUTER_M[c->mask]) + __builtin_popcount(INNER_M[c->mask]);
    ck_assert_msg(ms_container_size(g) == want, "%d gradients, want %d (%s)",
                  ms_container_size(g), want, what);
    for (int k = 0; k < NV; k++) {
        ck_assert_msg(ms_container_has(g, KEYS[k]) == (bool)(OUTER_M[c->mask] >> k & 1),
                      "%s (%s)", KEYS[k], what);
        ck_assert_msg(ms_container_has(g, rate_key(k)) == (bool)(INNER_M[c->mask] >> k & 1),
                      "%s (%s)", rate_key(k), what);
        if (ms_container_has(g, rate_key(k)))
            ck_assert_int_eq(ms_tensor_numel(ms_container_get(g, rate_key(k))), rate_len(c, k));
        if (ms_container_has(g, KEYS[k]))
            ck_assert_int_eq(ms_tensor_numel(ms_container_get(g, KEYS[k])), OFF[k + 1] - OFF[k]);
    }
}

/* -------------------------------------- 1. second order: finite differences */

static double fomaml_task(const cfg *c, int t, const double *theta, const rates *r,
                          double gth[NP], rates *grt, double (*frozen)[NP], bool use_frozen);

static void check_maml(const cfg *c, const ms_container *batch)
{
    char what[256];
    describe(c, what, sizeof what);
    rates r;
    rates_init(c, &r);
    ms_container *v = model_vars(THETA0, c->batched), *rc = rates_container(c, &r);
    double w[MAXS + 1];
    metastep_options o = options_of(c, rc, w);
    metastep_result res;
    assert_ok(metastep_maml_step(batch, tanh_support_cost, c->outer_fn ? tanh_query_cost : NULL, v,
                                 c->steps, 0.1, &o, &res));
    check_keys(c, res.grads, what);
    /* the forward procedure is the first-order one, by hand */
    double want = 0, gt[NP];
    rates gr;
    for (int t = 0; t < T; t++)
        want += fomaml_task(c, t, THETA0, &r, gt, &gr, NULL, false) / T;
    ck_assert_msg(close_to(ms_tensor_item(res.cost), want, 1e-10), "cost %.15g, by hand %.15g (%s)",
                  ms_tensor_item(res.cost), want, what);
    const double eps = 1e-5;
    for (int k = 0; k < NV; k++) {
        if (!(OUTER_M[c->mask] >> k & 1))
            continue;
        ms_tensor *g = ms_container_get(res.grads, KEYS[k]);
        double plus[NP], minus[NP], gd = 0, scale = 0;
        memcpy(plus, THETA0, sizeof plus);
        memcpy(minus, THETA0, sizeof minus);
        for (int q = OFF[k]; q < OFF[k + 1]; q++) {
            double d = direction(q, c->steps + 7 * k);
            plus[q] += eps * d;
            minus[q] -= eps * d;
            gd += at(g, q - OFF[k]) * d;
            scale += fabs(at(g, q - OFF[k]) * d);
        }
        double fd = (cost_at(c, true, batch, plus, &r) - cost_at(c, true, batch, minus, &r)) /
                    (2 * eps);
        ck_assert_msg(fabs(fd - gd) <= 1e-6 * scale + 1e-8,
                      "%s: gradient along d %.12g, finite difference %.12g (%s)", KEYS[k], gd, fd,
                      what);
    }
    for (int k = 0; k < NV; k++) {
        if (!(INNER_M[c->mask] >> k & 1))
            continue;
        ms_tensor *g = ms_container_get(res.grads, rate_key(k));
        rates rp = r, rm = r;
        double gd = 0, scale = 0;
        for (int e = 0; e < rate_len(c, k); e++) {
            double d = direction(e, 3 * c->steps + 11 * k + 5);
            rp.v[k][e] += eps * d;
            rm.v[k][e] -= eps * d;
            gd += at(g, e) * d;
            scale += fabs(at(g, e) * d);
        }
        double fd = (cost_at(c, true, batch, THETA0, &rp) - cost_at(c, true, batch, THETA0, &rm)) /
                    (2 * eps);
        ck_assert_msg(fabs(fd - gd) <= 1e-6 * scale + 1e-8,
                      "%s: gradient along d %.12g, finite difference %.12g (%s)", rate_key(k), gd,
                      fd, what);
    }
    metastep_result_release(&res);
    ms_container_release(rc);
    ms_container_release(v);
}

/* Every configuration of one kind: calls fn(cfg) for the grid. */
static int grid(bool batched, void (*fn)(const cfg *, const ms_container *))
{
    ms_container *batch = model_batch();
    int64_t live = ms_live_tensors();
    int n = 0;
    for (int lay = 0; lay < NLAYOUTS; lay++)
        for (int steps = 1; steps <= MAXS; steps++)
            for (int mask = 0; mask < NMASKS; mask++)
                for (int wt = 0; wt < NWEIGHTS; wt++) {
                    /* stop_gradients and the outer function alternate */
                    int salt = lay + steps + mask + wt;
                    cfg c = {.lay = (layout)lay, .steps = steps, .mask = mask,
                             .wt = (weighting)wt, .batched = batched, .stop = salt % 2 == 0,
                             .outer_fn = mask != 0 || salt % 3 != 0,
                             .threads = batched ? 0 : salt % 3};
                    fn(&c, batch);
                    n++;
                }
    ck_assert_int_eq(ms_live_tensors(), live);
    ms_container_release(batch);
    return n;
}

START_TEST(maml_fd_unbatched) { ck_assert_int_eq(grid(false, check_maml), 144); }
END_TEST
START_TEST(maml_fd_batched) { ck_assert_int_eq(grid(true, check_maml), 144); }
END_TEST

/* ------------------------------------------ 2. first order, by hand */

/* The first-order procedure of one task by hand: its cost, the gradient of
 * the outer variables (gth, NP) and of the rates (grt).  frozen: when
 * non-NULL, the inner gradients to use instead of computing them (and
 * where they are stored when computing). */
static double fomaml_task(const cfg *c, int t, const double *theta, const rates *r,
                          double gth[NP], rates *grt, double (*frozen)[NP], bool use_frozen)
{
    double w[MAXS + 1];
    weights_of(c, w);
    const double (*xo)[DIN] = c->outer_fn ? XQ[t] : XS[t];
    const double *yo = c->outer_fn ? YQ[t] : YS[t];
    double th[NP], hist[MAXS][NP], G[NP], cost = 0;
    memcpy(th, theta, sizeof th);
    memset(gth, 0, NP * sizeof *gth);
    memset(grt, 0, sizeof *grt);
    unsigned im = INNER_M[c->mask], om = OUTER_M[c->mask];
    for (int j = 0; j <= c->steps; j++) {
        if (w[j] != 0 || j == c->steps) {
            cost += w[j] * net_by_hand(th, xo, yo, G);
            for (int k = 0; k < NV; k++)
                for (int q = OFF[k]; q < OFF[k + 1]; q++) {
                    if (om >> k & 1)
                        gth[q] += w[j] * G[q];
                    if (im >> k & 1)
                        for (int i = 0; i < j; i++)
                            grt->v[k][rate_index(c, k, i, q)] -= w[j] * G[q] * hist[i][q];
                }
        }
        if (j == c->steps)
            break;
        if (use_frozen)
            memcpy(hist[j], frozen[j], sizeof hist[j]);
        else
            net_by_hand(th, XS[t], YS[t], hist[j]);
        if (frozen && !use_frozen)
            memcpy(frozen[j], hist[j], sizeof hist[j]);
        for (int k = 0; k < NV; k++)
            if (im >> k & 1)
                for (int q = OFF[k]; q < OFF[k + 1]; q++)
                    th[q] -= r->v[k][rate_index(c, k, j, q)] * hist[j][q];
    }
    return cost;
}

static void check_fomaml(const cfg *c, const ms_container *batch)
{
    char what[256];
    describe(c, what, sizeof what);
    rates r;
    rates_init(c, &r);
    ms_container *v = model_vars(THETA0, c->batched), *rc = rates_container(c, &r);
    double w[MAXS + 1];
    metastep_options o = options_of(c, rc, w);
    metastep_result res;
    assert_ok(metastep_fomaml_step(batch, tanh_support_cost, c->outer_fn ? tanh_query_cost : NULL, v,
                                   c->steps, 0.1, &o, &res));
    check_keys(c, res.grads, what);
    /* by hand: the mean over the tasks */
    double cost = 0, gth[NP] = {0}, gt[NP];
    rates grt = {{{0}}}, gr;
    static double frozen[T][MAXS][NP];
    for (int t = 0; t < T; t++) {
        cost += fomaml_task(c, t, THETA0, &r, gt, &gr, frozen[t], false) / T;
        for (int q = 0; q < NP; q++)
            gth[q] += gt[q] / T;
        for (int k = 0; k < NV; k++)
            for (int e = 0; e < rate_len(c, k); e++)
                grt.v[k][e] += gr.v[k][e] / T;
    }
    ck_assert_msg(close_to(ms_tensor_item(res.cost), cost, 1e-10), "cost %.15g, by hand %.15g (%s)",
                  ms_tensor_item(res.cost), cost, what);
    for (int k = 0; k < NV; k++) {
        if (OUTER_M[c->mask] >> k & 1) {
            ms_tensor *g = ms_container_get(res.grads, KEYS[k]);
            for (int q = OFF[k]; q < OFF[k + 1]; q++)
                ck_assert_msg(close_to(at(g, q - OFF[k]), gth[q], 1e-10),
                              "%s[%d] %.15g, by hand %.15g (%s)", KEYS[k], q - OFF[k],
                              at(g, q - OFF[k]), gth[q], what);
        }
        if (INNER_M[c->mask] >> k & 1) {
            ms_tensor *g = ms_container_get(res.grads, rate_key(k));
            for (int e = 0; e < rate_len(c, k); e++)
                ck_assert_msg(close_to(at(g, e), grt.v[k][e], 1e-10),
                              "%s[%d] %.15g, by hand %.15g (%s)", rate_key(k), e, at(g, e),
                              grt.v[k][e], what);
            /* the definition: the derivative with the inner gradients frozen */
            rates rp = r, rm = r, dummy;
            double gd = 0, scale = 0, eps = 1e-5, fp = 0, fm = 0, scratch[NP];
            for (int e = 0; e < rate_len(c, k); e++) {
                double d = direction(e, 5 * c->steps + k);
                rp.v[k][e] += eps * d;
                rm.v[k][e] -= eps * d;
                gd += grt.v[k][e] * d;
                scale += fabs(grt.v[k][e] * d);
            }
            for (int t = 0; t < T; t++) {
                fp += fomaml_task(c, t, THETA0, &rp, scratch, &dummy, frozen[t], true) / T;
                fm += fomaml_task(c, t, THETA0, &rm, scratch, &dummy, frozen[t], true) / T;
            }
            double fd = (fp - fm) / (2 * eps);
            ck_assert_msg(fabs(fd - gd) <= 1e-6 * scale + 1e-8,
                          "%s: frozen-gradient derivative %.12g, finite difference %.12g (%s)",
                          rate_key(k), gd, fd, what);
        }
    }
    metastep_result_release(&res);
    ms_container_release(rc);
    ms_container_release(v);
}

START_TEST(fomaml_by_hand_unbatched) { ck_assert_int_eq(grid(false, check_fomaml), 144); }
END_TEST
START_TEST(fomaml_by_hand_batched) { ck_assert_int_eq(grid(true, check_fomaml), 144); }
END_TEST

/* ------------------------------------- 3. consistency with the scalar path */

static bool bit_identical(const metastep_result *a, const metastep_result *b)
{
    if (ms_tensor_item(a->cost) != ms_tensor_item(b->cost) ||
        ms_container_size(a->grads) != ms_container_size(b->grads))
        return false;
    for (int i = 0; i < ms_container_size(a->grads); i++) {
        const ms_tensor *x = ms_container_at(a->grads, i);
        const ms_tensor *y = ms_container_get(b->grads, ms_container_key(a->grads, i));
        if (!y || ms_tensor_numel(x) != ms_tensor_numel(y) ||
            memcmp(ms_tensor_data(x), ms_tensor_data(y),
                   (size_t)ms_tensor_numel(x) * ms_dtype_size(ms_tensor_dtype(x))))
            return false;
    }
    return true;
}

START_TEST(ivy_path_unchanged)
{
    ms_container *batch = model_batch();
    for (int algo = 0; algo < 2; algo++)
        for (int batched = 0; batched < 2; batched++)
            for (int avg = 0; avg < 2; avg++) {
                ms_container *v = model_vars(THETA0, batched);
                metastep_options a = METASTEP_OPTIONS_DEFAULT;
                /* the options an Ivy-era caller writes: the new fields zeroed */
                metastep_options b;
                memset(&b, 0, sizeof b);
                b.batched = batched;
                b.keep_inner_v = b.keep_outer_v = true;
                b.stop_gradients = true;
                a.batched = batched;
                a.average_across_steps = b.average_across_steps = avg;
                metastep_result ra, rb;
                ms_status (*step)(const ms_container *, metastep_cost_fn, metastep_cost_fn,
                                  const ms_container *, int, double, const metastep_options *,
                                  metastep_result *) =
                    algo ? metastep_maml_step : metastep_fomaml_step;
                assert_ok(step(batch, tanh_support_cost, tanh_query_cost, v, 2, 0.1, &a, &ra));
                assert_ok(step(batch, tanh_support_cost, tanh_query_cost, v, 2, 0.1, &b, &rb));
                ck_assert(bit_identical(&ra, &rb));
                metastep_result_release(&ra);
                metastep_result_release(&rb);
                ms_container_release(v);
            }
    ms_container_release(batch);
}
END_TEST

static bool close_results(const metastep_result *a, const metastep_result *b, double tol)
{
    if (!close_to(ms_tensor_item(a->cost), ms_tensor_item(b->cost), tol))
        return false;
    for (int i = 0; i < ms_container_size(a->grads); i++) {
        const ms_tensor *x = ms_container_at(a->grads, i);
        const ms_tensor *y = ms_container_get(b->grads, ms_container_key(a->grads, i));
        if (!y)
            return false;
        for (int64_t j = 0; j < ms_tensor_numel(x); j++)
            if (!close_to(at(x, j), at(y, j), tol))
                return false;
    }
    return true;
}

START_TEST(scalar_rates_and_uniform_weights)
{
    ms_container *batch = model_batch();
    for (int algo = 0; algo < 2; algo++)
        for (int batched = 0; batched < 2; batched++)
            for (int steps = 1; steps <= MAXS; steps++) {
                ms_status (*step)(const ms_container *, metastep_cost_fn, metastep_cost_fn,
                                  const ms_container *, int, double, const metastep_options *,
                                  metastep_result *) =
                    algo ? metastep_maml_step : metastep_fomaml_step;
                ms_container *v = model_vars(THETA0, batched);
                ms_container *one = model_vars(THETA0, false);
                ms_container *rc = metastep_inner_lr_init(one, NULL, true, false, 0, 0.1);
                ck_assert_ptr_nonnull(rc);
                metastep_options a = METASTEP_OPTIONS_DEFAULT, b = a;
                a.batched = b.batched = batched;
                b.inner_learning_rates = rc;
                metastep_result ra, rb;
                assert_ok(step(batch, tanh_support_cost, tanh_query_cost, v, steps, 0.1, &a, &ra));
                assert_ok(step(batch, tanh_support_cost, tanh_query_cost, v, steps, 0.1, &b, &rb));
                ck_assert(close_results(&ra, &rb, 1e-12));
                ck_assert_int_eq(ms_container_size(rb.grads), 2 * NV);
                metastep_result_release(&ra);
                metastep_result_release(&rb);
                /* uniform step weights are average_across_steps */
                double w[MAXS + 1];
                for (int i = 0; i <= steps; i++)
                    w[i] = 1.0 / (steps + 1);
                metastep_options c = a, d = a;
                c.average_across_steps = true;
                d.step_weights = w;
                assert_ok(step(batch, tanh_support_cost, tanh_query_cost, v, steps, 0.1, &c, &ra));
                assert_ok(step(batch, tanh_support_cost, tanh_query_cost, v, steps, 0.1, &d, &rb));
                ck_assert(close_results(&ra, &rb, 1e-12));
                metastep_result_release(&ra);
                metastep_result_release(&rb);
                ms_container_release(rc);
                ms_container_release(one);
                ms_container_release(v);
            }
    ms_container_release(batch);
}
END_TEST

START_TEST(threads_bit_identical)
{
    ms_container *batch = model_batch();
    for (int algo = 0; algo < 2; algo++)
        for (int lay = 0; lay < NLAYOUTS; lay++) {
            cfg c = {.lay = (layout)lay, .steps = 2, .mask = lay % NMASKS, .wt = W_MSL,
                     .stop = true, .outer_fn = true};
            rates r;
            rates_init(&c, &r);
            ms_container *v = model_vars(THETA0, false), *rc = rates_container(&c, &r);
            double w[MAXS + 1];
            metastep_result res[2];
            for (int n = 0; n < 2; n++) {
                c.threads = n ? 3 : 1;
                metastep_options o = options_of(&c, rc, w);
                assert_ok((algo ? metastep_maml_step : metastep_fomaml_step)(
                    batch, tanh_support_cost, tanh_query_cost, v, c.steps, 0.1, &o, &res[n]));
            }
            ck_assert(bit_identical(&res[0], &res[1]));
            metastep_result_release(&res[0]);
            metastep_result_release(&res[1]);
            ms_container_release(rc);
            ms_container_release(v);
        }
    ms_container_release(batch);
}
END_TEST

START_TEST(msl_schedule)
{
    double w[4];
    /* MAML++'s per-step loss importance, 3 steps, annealed over 10 */
    ck_assert(metastep_msl_weights(3, 0, 10, w));
    ck_assert(w[0] == 0 && close_to(w[1], 1.0 / 3, 1e-15) && close_to(w[3], 1.0 / 3, 1e-15));
    ck_assert(metastep_msl_weights(3, 5, 10, w));
    ck_assert(close_to(w[1], 1.0 / 3 - 5.0 / 30, 1e-15) && close_to(w[2], w[1], 0));
    ck_assert(close_to(w[3], 1.0 / 3 + 5.0 * 2 / 30, 1e-15));
    ck_assert(metastep_msl_weights(3, 9, 10, w));
    ck_assert(close_to(w[1], 1.0 / 3 - 0.3, 1e-14) && close_to(w[3], 1.0 / 3 + 0.6, 1e-15));
    ck_assert(metastep_msl_weights(3, 99, 100, w)); /* the floors */
    ck_assert(close_to(w[1], 0.01, 1e-15) && close_to(w[3], 1 - 0.02, 1e-15));
    ck_assert(!metastep_msl_weights(3, 10, 10, w));
    ck_assert(w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == 1);
    ck_assert(!metastep_msl_weights(0, 0, 10, w));
}
END_TEST

/* --------------------------------------------- 4. ANIL on a sine MLP */

enum { SH = 8, SK = 5 };
static const char *const SKEYS[6] = {"l1/w", "l1/b", "l2/w", "l2/b", "l3/w", "l3/b"};
static const int64_t SSHAPES[6][2] = {{1, SH}, {1, SH}, {SH, SH}, {1, SH}, {SH, 1}, {1, 1}};
static const char *const SINE_HEAD[] = {"l3", NULL}; /* the --adapt head preset for sine */

static ms_container *sine_vars(const double *th, bool batched)
{
    ms_container *v = ms_container_new();
    int off = 0;
    for (int k = 0; k < 6; k++) {
        put(v, SKEYS[k], vec(2, SSHAPES[k], th + off));
        off += (int)(SSHAPES[k][0] * SSHAPES[k][1]);
    }
    if (!batched)
        return v;
    ms_container *r = ms_container_replicate(v, T);
    ms_container_release(v);
    return r;
}
static int sine_np(void)
{
    int n = 0;
    for (int k = 0; k < 6; k++)
        n += (int)(SSHAPES[k][0] * SSHAPES[k][1]);
    return n;
}

static ms_tensor *sine_mlp(const ms_container *b, const ms_container *v, const char *x,
                           const char *y)
{
    ms_tensor *h = ms_container_get(b, x);
    for (int l = 0; l < 3; l++) {
        h = ms_add(ms_matmul(h, ms_container_get(v, SKEYS[2 * l])), ms_container_get(v, SKEYS[2 * l + 1]));
        if (l < 2)
            h = ms_tanh(h);
    }
    return ms_mean(ms_square(ms_sub(h, ms_container_get(b, y))), 0, NULL, false);
}
static ms_tensor *sine_support(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return sine_mlp(b, v, "support/x", "support/y");
}
static ms_tensor *sine_query(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return sine_mlp(b, v, "query/x", "query/y");
}

static double anil_cost(const ms_container *batch, const double *th, bool batched, int steps,
                        const ms_container *rc, metastep_result *keep)
{
    ms_container *v = sine_vars(th, batched);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = batched;
    o.inner_v = SINE_HEAD;
    o.inner_learning_rates = rc;
    metastep_result r;
    assert_ok(metastep_maml_step(batch, sine_support, sine_query, v, steps, 0.3, &o, &r));
    double cost = ms_tensor_item(r.cost);
    if (keep)
        *keep = r;
    else
        metastep_result_release(&r);
    ms_container_release(v);
    return cost;
}

START_TEST(anil_sine_mlp)
{
    double xs[T][SK], ys[T][SK], xq[T][SK], yq[T][SK];
    for (int t = 0; t < T; t++)
        for (int p = 0; p < SK; p++) {
            double amp = 1 + t, ph = 0.4 * t;
            xs[t][p] = -4 + 2.0 * p + 0.3 * t;
            xq[t][p] = -3.5 + 1.7 * p - 0.2 * t;
            ys[t][p] = amp * sin(xs[t][p] - ph);
            yq[t][p] = amp * sin(xq[t][p] - ph);
        }
    ms_container *batch = ms_container_new();
    int64_t bs[3] = {T, SK, 1};
    put(batch, "support/x", vec(3, bs, &xs[0][0]));
    put(batch, "support/y", vec(3, bs, &ys[0][0]));
    put(batch, "query/x", vec(3, bs, &xq[0][0]));
    put(batch, "query/y", vec(3, bs, &yq[0][0]));
    const int np = sine_np();
    double th[256];
    for (int q = 0; q < np; q++)
        th[q] = 0.5 * direction(q, 1234);
    ms_container *one = sine_vars(th, false);
    for (int batched = 0; batched < 2; batched++)
        for (int steps = 1; steps <= 3; steps++)
            for (int learned = 0; learned < 2; learned++) {
                ms_container *rc =
                    learned ? metastep_inner_lr_init(one, SINE_HEAD, true, false, 0, 0.3) : NULL;
                if (learned)
                    ck_assert_int_eq(ms_container_size(rc), 2);
                metastep_result r;
                anil_cost(batch, th, batched, steps, rc, &r);
                ck_assert_int_eq(ms_container_size(r.grads), 6 + (learned ? 2 : 0));
                int off = 0;
                for (int k = 0; k < 6; k++) {
                    int n = (int)(SSHAPES[k][0] * SSHAPES[k][1]);
                    ms_tensor *g = ms_container_get(r.grads, SKEYS[k]);
                    double plus[256], minus[256], gd = 0, scale = 0, eps = 1e-5;
                    memcpy(plus, th, sizeof plus);
                    memcpy(minus, th, sizeof minus);
                    for (int q = 0; q < n; q++) {
                        double d = direction(off + q, steps + 3 * k);
                        plus[off + q] += eps * d;
                        minus[off + q] -= eps * d;
                        gd += at(g, q) * d;
                        scale += fabs(at(g, q) * d);
                    }
                    double fd = (anil_cost(batch, plus, batched, steps, rc, NULL) -
                                 anil_cost(batch, minus, batched, steps, rc, NULL)) / (2 * eps);
                    ck_assert_msg(fabs(fd - gd) <= 1e-6 * scale + 1e-8,
                                  "ANIL %s, %d steps, batched %d, learned %d: %.12g vs fd %.12g",
                                  SKEYS[k], steps, batched, learned, gd, fd);
                    off += n;
                }
                metastep_result_release(&r);
                ms_container_release(rc);
            }
    ms_container_release(one);
    ms_container_release(batch);
}
END_TEST

/* --------------------------------------------------------- 5. errors */

static ms_status try_step(const ms_container *rc, bool per_step, int steps,
                          const metastep_optimizer *opt, const double *w, bool avg)
{
    ms_container *batch = model_batch(), *v = model_vars(THETA0, false);
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = false;
    o.inner_learning_rates = rc;
    o.inner_lr_per_step = per_step;
    o.inner_optimization_step = opt;
    o.step_weights = w;
    o.average_across_steps = avg;
    metastep_result r;
    ms_status st = metastep_maml_step(batch, tanh_support_cost, tanh_query_cost, v, steps, 0.1, &o, &r);
    if (st == MS_OK)
        metastep_result_release(&r);
    else
        ck_assert_ptr_null(r.grads);
    ms_status st2 = metastep_fomaml_step(batch, tanh_support_cost, tanh_query_cost, v, steps, 0.1, &o, &r);
    ck_assert_int_eq(st, st2);
    if (st2 == MS_OK)
        metastep_result_release(&r);
    ms_container_release(v);
    ms_container_release(batch);
    ms_clear_error();
    return st;
}

START_TEST(errors)
{
    ms_container *one = model_vars(THETA0, false);
    ms_container *good = metastep_inner_lr_init(one, NULL, true, false, 0, 0.1);
    ck_assert_int_eq(try_step(good, false, 2, NULL, NULL, false), MS_OK);
    /* an inner variable without a rate; a rate naming no inner variable */
    const char *const one_key[] = {"head/b", NULL};
    ms_container *partial = ms_container_prune_key_chains(good, one_key);
    ck_assert_int_eq(try_step(partial, false, 2, NULL, NULL, false), MS_ERR_KEY);
    ms_container *extra = ms_container_copy(good);
    put(extra, "nope", ms_scalar(MS_F64, 0.1));
    ck_assert_int_eq(try_step(extra, false, 2, NULL, NULL, false), MS_ERR_KEY);
    /* shapes */
    ms_container *bad = ms_container_copy(good);
    put(bad, "layer0/w", ms_full(MS_F64, 2, (int64_t[]){3, 3}, 0.1));
    ck_assert_int_eq(try_step(bad, false, 2, NULL, NULL, false), MS_ERR_SHAPE);
    ms_container *lslr = metastep_inner_lr_init(one, NULL, true, true, 2, 0.1);
    ck_assert_int_eq(try_step(lslr, true, 2, NULL, NULL, false), MS_OK);
    ck_assert_int_eq(try_step(lslr, true, 3, NULL, NULL, false), MS_ERR_SHAPE);
    ck_assert_int_eq(try_step(NULL, true, 2, NULL, NULL, false), MS_ERR_INVALID_ARG);
    /* another inner optimizer */
    metastep_optimizer sgd = metastep_sgd(0.9, false);
    ck_assert_int_eq(try_step(good, false, 2, &sgd, NULL, false), MS_ERR_INVALID_ARG);
    /* weights */
    double w[3] = {0.2, 0.3, 0.5}, wn[3] = {0.2, NAN, 0.5};
    ck_assert_int_eq(try_step(NULL, false, 2, NULL, w, false), MS_OK);
    ck_assert_int_eq(try_step(NULL, false, 2, NULL, w, true), MS_ERR_INVALID_ARG);
    ck_assert_int_eq(try_step(NULL, false, 2, NULL, wn, false), MS_ERR_INVALID_ARG);
    /* non-finite rates */
    ms_container *nanr = ms_container_copy(good);
    put(nanr, "head/b", ms_full(MS_F64, 2, (int64_t[]){1, 1}, NAN));
    ck_assert_int_eq(try_step(nanr, false, 2, NULL, NULL, false), MS_ERR_NUMERIC);
    ck_assert_ptr_null(metastep_inner_lr_init(one, NULL, true, true, 0, 0.1));
    ms_clear_error();
    ms_container_release(nanr);
    ms_container_release(lslr);
    ms_container_release(bad);
    ms_container_release(extra);
    ms_container_release(partial);
    ms_container_release(good);
    ms_container_release(one);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("meta_learned_lr");
    TCase *fd = tcase_create("second order: finite differences");
    tcase_set_timeout(fd, 900);
    tcase_add_checked_fixture(fd, setup_live, teardown_live);
    tcase_add_test(fd, maml_fd_unbatched);
    tcase_add_test(fd, maml_fd_batched);
    tcase_add_test(fd, anil_sine_mlp);
    suite_add_tcase(s, fd);
    TCase *fo = tcase_create("first order: by hand");
    tcase_set_timeout(fo, 900);
    tcase_add_checked_fixture(fo, setup_live, teardown_live);
    tcase_add_test(fo, fomaml_by_hand_unbatched);
    tcase_add_test(fo, fomaml_by_hand_batched);
    suite_add_tcase(s, fo);
    TCase *misc = tcase_create("consistency and errors");
    tcase_set_timeout(misc, 600);
    tcase_add_checked_fixture(misc, setup_live, teardown_live);
    tcase_add_test(misc, ivy_path_unchanged);
    tcase_add_test(misc, scalar_rates_and_uniform_weights);
    tcase_add_test(misc, threads_bit_identical);
    tcase_add_test(misc, msl_schedule);
    tcase_add_test(misc, errors);
    suite_add_tcase(s, misc);
    return run_suite(s);
}
