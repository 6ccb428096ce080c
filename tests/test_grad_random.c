/* Property tests of ms_grad on random expression DAGs.  Runs once per backend
 * (METASTEP_BACKEND).
 *
 * Each of NCASES cases is generated from its own seed (SEED_BASE + 1000003 *
 * case, through splitmix64) and is fully deterministic: the same DAG, values
 * and wrt sets on every run and every backend.  A DAG has 2-4 variables and
 * 1-2 constants (scalars, vectors of 3, 2x3 matrices, values in [-1.5, 1.5])
 * and 6-14 op nodes drawn from smooth ops: add, sub, mul (all with scalar and
 * row-vector broadcasting), a / (1.5 + b^2), tanh, sin, exp(tanh), square,
 * mul_scalar, matmul, sum over an axis, reshape, permute, concat and slice.
 * Operands are drawn from every earlier node (half the time from the last
 * three), so sub-expressions are shared and variables feed nodes at many
 * depths.  y is a sum of terms c * sum(n^2) or sum(n * w) over 1-3 late nodes.
 *
 * Properties checked, with wrt sets drawn among the variables AND the
 * intermediate nodes (deepest node alone, shallow sets, random mixes), which
 * exercises ms_grad's pruning of the walk below the shallowest wrt tensor:
 *   - create_graph false: the graph is consumed, so it is rebuilt from the same
 *     leaf tensors for each of 5 calls: deepest node, shallow, a node in the
 *     deeper half, shallow, random (deep then shallow: the pruning bug's
 *     pattern, where un-walked inputs kept stale gradients);
 *   - create_graph true: 7 calls on one graph with wrt sets in the same kind
 *     of order, each call made twice and compared bit for bit;
 *   - every gradient against central finite differences of y; for a wrt that
 *     is an intermediate node, the DAG is re-evaluated with that node's value
 *     replaced by a perturbed constant (an override in the evaluator);
 *   - on every other case, second order: g = ms_grad(y, {v}, create_graph)
 *     with v a variable or a node, s = sum(g * r) for a fixed random r, and
 *     ms_grad(s, {u}) (u a variable) against central differences of the
 *     analytic first gradient (as test_autodiff.c's gradgradcheck);
 *   - no tensor outlives its case (live-tensor count fixture; under ASan the
 *     suite is also leak- and use-after-free-checked).
 *
 * Tolerances, in float64 (as test_autodiff.c): step EPS = 1e-6, and
 *     |analytic - numeric| <= ATOL + RTOL * |numeric|, ATOL 1e-6, RTOL 1e-5.
 * The generator bounds every node's values by BOUND = 8 (interval propagation;
 * ops that would exceed it are not drawn), so |y| stays below ~1e3 and the
 * rounding error of a central difference, ~1e-16 |y| / EPS, below ~1e-7; the
 * truncation error, EPS^2 |f'''| / 6, is ~1e-12 for such smooth bounded
 * compositions.  The same holds for differences of the first gradient.
 * Failure messages name the case and its seed; the DAG is printed to stderr. */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "testutil.h"

#define NCASES 200
#define SEED_BASE 0x6d657461737465ULL

#define EPS 1e-6
#define ATOL 1e-6
#define RTOL 1e-5

#define MAXN 24  /* nodes (leaves + ops) */
#define MAXE 12  /* elements of a node */
#define MAXT 3   /* terms of y */
#define BOUND 8.0

/* ------------------------------------------------------------ PRNG */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
static int rnd_int(uint64_t *s, int n) { return (int)(splitmix64(s) % (uint64_t)n); }
static double rnd_unif(uint64_t *s, double lo, double hi)
{
    return lo + (hi - lo) * ((double)(splitmix64(s) >> 11) * 0x1.0p-53);
}

/* ------------------------------------------------------------ DAG description */

enum kind {
    K_VAR, K_CONST, /* leaves */
    K_ADD, K_SUB, K_MUL, K_DIV, K_TANH, K_SIN, K_EXPTANH, K_SQUARE, K_MULS, K_MATMUL,
    K_SUMAX, K_RESHAPE, K_PERMUTE, K_CONCAT, K_SLICE, K_NKINDS
};
static const char *const kind_name[K_NKINDS] = {
    "var", "const", "add", "sub", "mul", "div(a,1.5+b^2)", "tanh", "sin", "exp(tanh)",
    "square", "mul_scalar", "matmul", "sum_axis", "reshape", "permute", "concat", "slice"};

typedef struct shp {
    int nd;
    int64_t d[2];
} shp;

typedef struct dnode {
    int kind;
    int a, b;       /* operands (node indices), -1 when unused */
    shp sh;         /* result shape */
    double s;       /* mul_scalar factor */
    int ax;         /* axis: sum, concat, slice */
    int64_t lo, hi; /* slice bounds */
    double bound;   /* bound on |values| */
    int depth;      /* longest path from a leaf */
    bool rg;        /* depends on a variable */
    double val[MAXE]; /* leaves' values */
} dnode;

typedef struct yterm {
    int node;
    bool weighted;    /* sum(n * w) instead of c * sum(n^2) */
    double c;
    double w[MAXE];
} yterm;

typedef struct dag {
    int n, nleaves;
    dnode nd[MAXN];
    int nt;
    yterm t[MAXT];
    bool feeds_y[MAXN]; /* y depends on node i */
} dag;

static int64_t numel(shp s) { return s.nd == 0 ? 1 : s.nd == 1 ? s.d[0] : s.d[0] * s.d[1]; }
static bool shp_eq(shp a, shp b)
{
    if (a.nd != b.nd)
        return false;
    for (int i = 0; i < a.nd; i++)
        if (a.d[i] != b.d[i])
            return false;
    return true;
}
static shp mk(int nd, int64_t d0, int64_t d1)
{
    shp s = {nd, {d0, d1}};
    return s;
}

/* Elementwise broadcasting restricted to: equal shapes, a scalar operand, or
 * a row vector against a matrix. */
static bool bcast(shp a, shp b, shp *out)
{
    if (shp_eq(a, b) || b.nd == 0) {
        *out = a;
        return true;
    }
    if (a.nd == 0) {
        *out = b;
        return true;
    }
    if (a.nd == 2 && b.nd == 1 && b.d[0] == a.d[1]) {
        *out = a;
        return true;
    }
    if (a.nd == 1 && b.nd == 2 && a.d[0] == b.d[1]) {
        *out = b;
        return true;
    }
    return false;
}

static bool mm_shape(shp a, shp b, shp *out, int64_t *k)
{
    if (a.nd < 1 || b.nd < 1)
        return false;
    *k = a.d[a.nd - 1];
    if (b.d[0] != *k)
        return false;
    if (a.nd == 1 && b.nd == 1)
        *out = mk(0, 0, 0);
    else if (a.nd == 1)
        *out = mk(1, b.d[1], 0);
    else if (b.nd == 1)
        *out = mk(1, a.d[0], 0);
    else
        *out = mk(2, a.d[0], b.d[1]);
    return numel(*out) <= MAXE;
}

/* An operand: half the time one of the last three nodes, else any node;
 * mostly one that depends on a variable. */
static int pick(const dag *d, uint64_t *r)
{
    int n = d->n, i = 0;
    for (int tries = 0; tries < 4; tries++) {
        i = n > 3 && rnd_int(r, 2) ? n - 1 - rnd_int(r, 3) : rnd_int(r, n);
        if (d->nd[i].rg || rnd_int(r, 4) == 0)
            break;
    }
    return i;
}

/* Try to make node d->nd[d->n] of a random kind; false to retry. */
static bool try_op(dag *d, uint64_t *r)
{
    dnode x;
    memset(&x, 0, sizeof x);
    x.kind = K_ADD + rnd_int(r, K_NKINDS - K_ADD);
    x.a = pick(d, r);
    x.b = -1;
    const dnode *A = &d->nd[x.a];
    double ba = A->bound;
    int tries = 0;
    switch (x.kind) {
    case K_ADD:
    case K_SUB:
    case K_MUL:
    case K_DIV:
        for (tries = 0; tries < 12; tries++) {
            x.b = pick(d, r);
            if (bcast(A->sh, d->nd[x.b].sh, &x.sh))
                break;
        }
        if (tries == 12)
            return false;
        {
            double bb = d->nd[x.b].bound;
            x.bound = x.kind == K_MUL ? ba * bb : x.kind == K_DIV ? ba / 1.5 : ba + bb;
        }
        break;
    case K_TANH:
    case K_SIN:
        x.sh = A->sh;
        x.bound = fmin(ba, 1.0);
        break;
    case K_EXPTANH:
        x.sh = A->sh;
        x.bound = exp(fmin(ba, 1.0));
        break;
    case K_SQUARE:
        x.sh = A->sh;
        x.bound = ba * ba;
        break;
    case K_MULS:
        x.sh = A->sh;
        x.s = rnd_unif(r, -1.5, 1.5);
        x.bound = fabs(x.s) * ba;
        break;
    case K_MATMUL:
        for (tries = 0; tries < 12; tries++) {
            int64_t k;
            x.b = pick(d, r);
            if (mm_shape(A->sh, d->nd[x.b].sh, &x.sh, &k)) {
                x.bound = (double)k * ba * d->nd[x.b].bound;
                break;
            }
        }
        if (tries == 12)
            return false;
        break;
    case K_SUMAX:
        if (A->sh.nd == 0)
            return false;
        x.ax = rnd_int(r, A->sh.nd);
        x.sh = A->sh.nd == 1 ? mk(0, 0, 0) : mk(1, A->sh.d[1 - x.ax], 0);
        x.bound = (double)A->sh.d[x.ax] * ba;
        break;
    case K_RESHAPE: {
        int64_t m = numel(A->sh);
        if (A->sh.nd == 2)
            x.sh = rnd_int(r, 2) ? mk(1, m, 0) : mk(2, A->sh.d[1], A->sh.d[0]);
        else if (A->sh.nd == 1 && m % 2 == 0 && m > 2)
            x.sh = mk(2, 2, m / 2);
        else if (A->sh.nd == 1 && m % 3 == 0 && m > 3)
            x.sh = mk(2, m / 3, 3);
        else if (A->sh.nd == 0)
            x.sh = mk(1, 1, 0);
        else
            return false;
        if (shp_eq(x.sh, A->sh))
            return false;
        x.bound = ba;
        break;
    }
    case K_PERMUTE:
        if (A->sh.nd != 2)
            return false;
        x.sh = mk(2, A->sh.d[1], A->sh.d[0]);
        x.bound = ba;
        break;
    case K_CONCAT:
        if (A->sh.nd == 0)
            return false;
        for (tries = 0; tries < 12; tries++) {
            x.b = pick(d, r);
            shp B = d->nd[x.b].sh;
            if (B.nd != A->sh.nd)
                continue;
            x.ax = rnd_int(r, B.nd);
            bool ok = true;
            for (int i = 0; i < B.nd; i++)
                ok = ok && (i == x.ax || B.d[i] == A->sh.d[i]);
            x.sh = A->sh;
            x.sh.d[x.ax] += B.d[x.ax];
            if (ok && numel(x.sh) <= MAXE)
                break;
        }
        if (tries == 12)
            return false;
        x.bound = fmax(ba, d->nd[x.b].bound);
        break;
    case K_SLICE: {
        if (A->sh.nd == 0)
            return false;
        x.ax = rnd_int(r, A->sh.nd);
        int64_t n = A->sh.d[x.ax];
        if (n < 2)
            return false;
        x.lo = rnd_int(r, (int)n - 1);
        x.hi = x.lo + 1 + rnd_int(r, (int)(n - x.lo - 1)); /* a proper sub-range */
        x.sh = A->sh;
        x.sh.d[x.ax] = x.hi - x.lo;
        x.bound = ba;
        break;
    }
    default:
        return false;
    }
    if (x.bound > BOUND)
        return false;
    x.rg = A->rg || (x.b >= 0 && d->nd[x.b].rg);
    x.depth = 1 + (x.b >= 0 && d->nd[x.b].depth > A->depth ? d->nd[x.b].depth : A->depth);
    d->nd[d->n++] = x;
    return true;
}

static void gen_dag(dag *d, uint64_t seed)
{
    uint64_t r = seed;
    memset(d, 0, sizeof *d);
    static const shp leaf_shapes[3] = {{0, {0, 0}}, {1, {3, 0}}, {2, {2, 3}}};
    int nvar = 2 + rnd_int(&r, 3), ncon = 1 + rnd_int(&r, 2);
    for (int i = 0; i < nvar + ncon; i++) {
        dnode *x = &d->nd[d->n++];
        x->kind = i < nvar ? K_VAR : K_CONST;
        x->a = x->b = -1;
        x->sh = leaf_shapes[rnd_int(&r, 3)];
        x->bound = 1.5;
        x->rg = i < nvar;
        for (int64_t j = 0; j < numel(x->sh); j++)
            x->val[j] = rnd_unif(&r, -1.5, 1.5);
    }
    d->nleaves = d->n;
    int nops = 6 + rnd_int(&r, 9);
    for (int k = 0; k < nops && d->n < MAXN;) {
        if (try_op(d, &r))
            k++;
    }
    /* y: terms over distinct late nodes, preferring ones that depend on a variable */
    d->nt = 1 + rnd_int(&r, MAXT);
    for (int i = 0; i < d->nt; i++) {
        yterm *t = &d->t[i];
        for (int tries = 0; tries < 20; tries++) {
            t->node = d->n - 1 - rnd_int(&r, 4);
            bool dup = false;
            for (int j = 0; j < i; j++)
                dup = dup || d->t[j].node == t->node;
            if (!dup && (d->nd[t->node].rg || tries > 10))
                break;
        }
        t->weighted = rnd_int(&r, 2);
        t->c = rnd_unif(&r, 0.2, 1.0);
        for (int64_t j = 0; j < numel(d->nd[t->node].sh); j++)
            t->w[j] = rnd_unif(&r, -1, 1);
    }
    /* which nodes y depends on */
    for (int i = 0; i < d->nt; i++)
        d->feeds_y[d->t[i].node] = true;
    for (int i = d->n - 1; i >= 0; i--) {
        if (!d->feeds_y[i])
            continue;
        if (d->nd[i].a >= 0)
            d->feeds_y[d->nd[i].a] = true;
        if (d->nd[i].b >= 0)
            d->feeds_y[d->nd[i].b] = true;
    }
}

static void shp_str(char *buf, size_t n, shp s)
{
    if (s.nd == 0)
        snprintf(buf, n, "()");
    else if (s.nd == 1)
        snprintf(buf, n, "(%lld)", (long long)s.d[0]);
    else
        snprintf(buf, n, "(%lld,%lld)", (long long)s.d[0], (long long)s.d[1]);
}

static void dump_dag(const dag *d, FILE *f)
{
    for (int i = 0; i < d->n; i++) {
        const dnode *x = &d->nd[i];
        char sb[32];
        shp_str(sb, sizeof sb, x->sh);
        fprintf(f, "  n%d = %s", i, kind_name[x->kind]);
        if (x->a >= 0)
            fprintf(f, " n%d", x->a);
        if (x->b >= 0)
            fprintf(f, " n%d", x->b);
        if (x->kind == K_MULS)
            fprintf(f, " s=%g", x->s);
        if (x->kind == K_SUMAX || x->kind == K_CONCAT || x->kind == K_SLICE)
            fprintf(f, " axis=%d", x->ax);
        if (x->kind == K_SLICE)
            fprintf(f, " [%lld:%lld]", (long long)x->lo, (long long)x->hi);
        fprintf(f, "  shape %s depth %d%s%s\n", sb, x->depth, x->rg ? " rg" : "",
                d->feeds_y[i] ? " ->y" : "");
    }
    fprintf(f, "  y =");
    for (int i = 0; i < d->nt; i++)
        fprintf(f, " %s%s(n%d)", i ? "+ " : "", d->t[i].weighted ? "sum_w" : "c*sumsq",
                d->t[i].node);
    fprintf(f, "\n");
}

/* ------------------------------------------------------------ per-case state */

typedef struct gcase {
    int idx;
    uint64_t seed;
    dag d;
    ms_tensor *leaf[MAXN]; /* leaves' tensors (variables or constants), shared by every build */
    ms_tensor *w[MAXT];    /* weights of weighted terms */
    bool fd_done[MAXN];
    double fd[MAXN][MAXE]; /* dy/dnode by central differences, memoised */
    uint64_t r;            /* the case's PRNG after generation */
} gcase;

static gcase C; /* the running case (check forks per case) */

static void fail_dump(void)
{
    fprintf(stderr, "grad_random case %d (seed %#llx) DAG:\n", C.idx, (unsigned long long)C.seed);
    dump_dag(&C.d, stderr);
}

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fail_dump();                                                                   \
            char msg_[512];                                                                \
            snprintf(msg_, sizeof msg_, __VA_ARGS__);                                      \
            ck_abort_msg("case %d (seed %#llx): %s", C.idx, (unsigned long long)C.seed,    \
                         msg_);                                                            \
        }                                                                                  \
    } while (0)

static void check_ok(ms_status st, const char *what)
{
    const char *m = NULL;
    ms_last_error(&m);
    CHECK(st == MS_OK, "%s failed: %s (%s)", what, ms_status_string(st), m ? m : "no message");
}
static void check_nn(const void *p, const char *what)
{
    const char *m = NULL;
    ms_last_error(&m);
    CHECK(p != NULL, "%s returned NULL: %s", what, m ? m : "no message");
}

static void put(ms_tensor *t, int64_t i, double v) { ((double *)ms_tensor_data(t))[i] = v; }
static bool close_enough(double a, double n) { return fabs(a - n) <= ATOL + RTOL * fabs(n); }

static ms_tensor *tensor_of(shp s, const double *v)
{
    return ms_tensor_from_data(MS_F64, s.nd, s.d, v);
}

/* ------------------------------------------------------------ evaluator */

/* Evaluates the DAG into vals[] (tensors of the current scope) and returns y.
 * Node `ov` (-1 for none) takes the tensor ovv instead of its computed value
 * (then nodes only it depends on are never used). */
static ms_tensor *eval_dag(const dag *d, int ov, ms_tensor *ovv, ms_tensor **vals)
{
    for (int i = 0; i < d->n; i++) {
        const dnode *x = &d->nd[i];
        if (i == ov) {
            vals[i] = ovv;
            continue;
        }
        if (i < d->nleaves) {
            vals[i] = C.leaf[i];
            continue;
        }
        ms_tensor *a = vals[x->a], *b = x->b >= 0 ? vals[x->b] : NULL, *v = NULL;
        switch (x->kind) {
        case K_ADD: v = ms_add(a, b); break;
        case K_SUB: v = ms_sub(a, b); break;
        case K_MUL: v = ms_mul(a, b); break;
        case K_DIV: v = ms_div(a, ms_add_scalar(ms_square(b), 1.5)); break;
        case K_TANH: v = ms_tanh(a); break;
        case K_SIN: v = ms_sin(a); break;
        case K_EXPTANH: v = ms_exp(ms_tanh(a)); break;
        case K_SQUARE: v = ms_square(a); break;
        case K_MULS: v = ms_mul_scalar(a, x->s); break;
        case K_MATMUL: v = ms_matmul(a, b); break;
        case K_SUMAX: v = ms_sum(a, 1, &x->ax, false); break;
        case K_RESHAPE: v = ms_reshape(a, x->sh.nd, x->sh.d); break;
        case K_PERMUTE: {
            static const int perm[2] = {1, 0};
            v = ms_permute(a, perm);
            break;
        }
        case K_CONCAT: {
            ms_tensor *ts[2] = {a, b};
            v = ms_concat(2, ts, x->ax);
            break;
        }
        case K_SLICE: v = ms_slice(a, x->ax, x->lo, x->hi); break;
        default: break;
        }
        check_nn(v, kind_name[x->kind]);
        CHECK(ms_tensor_ndim(v) == x->sh.nd && ms_tensor_numel(v) == numel(x->sh),
              "n%d (%s) has an unexpected shape", i, kind_name[x->kind]);
        vals[i] = v;
    }
    ms_tensor *y = NULL;
    for (int i = 0; i < d->nt; i++) {
        const yterm *t = &d->t[i];
        ms_tensor *n = vals[t->node], *term;
        if (t->weighted)
            term = ms_sum(ms_mul(n, C.w[i]), 0, NULL, false);
        else
            term = ms_mul_scalar(ms_sum(ms_square(n), 0, NULL, false), t->c);
        y = y ? ms_add(y, term) : term;
    }
    check_nn(y, "y");
    return y;
}

/* y's value with node ov replaced by ovv, unrecorded. */
static double y_with(int ov, ms_tensor *ovv)
{
    ms_tensor *vals[MAXN];
    ms_scope_push();
    ms_no_grad_push();
    double v = ms_tensor_item(eval_dag(&C.d, ov, ovv, vals));
    ms_no_grad_pop();
    ms_scope_pop();
    return v;
}

/* Central differences of y with respect to node i's value (memoised). */
static const double *fd_of(int i)
{
    if (C.fd_done[i])
        return C.fd[i];
    ms_tensor *vals[MAXN];
    ms_scope_push();
    ms_no_grad_push();
    eval_dag(&C.d, -1, NULL, vals);
    ms_tensor *p = ms_copy(vals[i]);
    ms_no_grad_pop();
    check_nn(p, "ms_copy");
    for (int64_t j = 0; j < ms_tensor_numel(p); j++) {
        double x0 = at(p, j);
        put(p, j, x0 + EPS);
        double yp = y_with(i, p);
        put(p, j, x0 - EPS);
        double ym = y_with(i, p);
        put(p, j, x0);
        C.fd[i][j] = (yp - ym) / (2 * EPS);
    }
    ms_scope_pop();
    C.fd_done[i] = true;
    return C.fd[i];
}

static const char *key_of(char *buf, size_t n, int i)
{
    snprintf(buf, n, "n%d", i);
    return buf;
}

static ms_container *wrt_of(ms_tensor **vals, const int *set, int ns)
{
    ms_container *c = ms_container_new();
    char k[16];
    for (int i = 0; i < ns; i++)
        check_ok(ms_container_set(c, key_of(k, sizeof k, set[i]), vals[set[i]]), "container_set");
    return c;
}

static void check_against_fd(const ms_container *g, const int *set, int ns, const char *phase)
{
    char k[16];
    CHECK(ms_container_size(g) == ns, "%s: %d gradients for %d wrt tensors", phase,
          ms_container_size(g), ns);
    for (int s = 0; s < ns; s++) {
        int i = set[s];
        const ms_tensor *gi = ms_container_get(g, key_of(k, sizeof k, i));
        check_nn(gi, "gradient");
        CHECK(ms_tensor_dtype(gi) == MS_F64 && ms_tensor_ndim(gi) == C.d.nd[i].sh.nd &&
                  ms_tensor_numel(gi) == numel(C.d.nd[i].sh),
              "%s: gradient for n%d has the wrong dtype or shape", phase, i);
        const double *fd = fd_of(i);
        for (int64_t j = 0; j < numel(C.d.nd[i].sh); j++)
            CHECK(close_enough(at(gi, j), fd[j]),
                  "%s: dy/dn%d[%lld] (%s, depth %d%s): analytic %.12g, numeric %.12g", phase, i,
                  (long long)j, kind_name[C.d.nd[i].kind], C.d.nd[i].depth,
                  C.d.feeds_y[i] ? "" : ", y does not depend on it", at(gi, j), fd[j]);
    }
}

/* ------------------------------------------------------------ wrt sets */

/* Candidates for wrt: the nodes that depend on a variable (ms_grad refuses
 * the others). */
static int candidates(int *out)
{
    int n = 0;
    for (int i = 0; i < C.d.n; i++)
        if (C.d.nd[i].rg)
            out[n++] = i;
    return n;
}

/* The deepest node y depends on that is not a variable (else any). */
static int deepest(void)
{
    int best = -1;
    for (int i = C.d.nleaves; i < C.d.n; i++)
        if (C.d.nd[i].rg && C.d.feeds_y[i] && (best < 0 || C.d.nd[i].depth > C.d.nd[best].depth))
            best = i;
    if (best < 0)
        for (int i = 0; i < C.d.n; i++)
            if (C.d.nd[i].rg)
                best = i;
    return best;
}

/* A random intermediate node y depends on, in the deeper half: nodes above it
 * may still use variables directly, which a walk pruned at its level skips. */
static int mid_deep(void)
{
    int maxd = 0, cand[MAXN], nc = 0;
    for (int i = C.d.nleaves; i < C.d.n; i++)
        if (C.d.nd[i].rg && C.d.feeds_y[i] && C.d.nd[i].depth > maxd)
            maxd = C.d.nd[i].depth;
    for (int i = C.d.nleaves; i < C.d.n; i++)
        if (C.d.nd[i].rg && C.d.feeds_y[i] && 2 * C.d.nd[i].depth >= maxd)
            cand[nc++] = i;
    return nc ? cand[rnd_int(&C.r, nc)] : deepest();
}

/* Every variable, plus depth-1 nodes with probability 1/3. */
static int shallow_set(int *set)
{
    int n = 0;
    for (int i = 0; i < C.d.n; i++)
        if (C.d.nd[i].kind == K_VAR || (C.d.nd[i].rg && C.d.nd[i].depth == 1 && !rnd_int(&C.r, 3)))
            set[n++] = i;
    return n;
}

/* 1-4 distinct random candidates. */
static int random_set(int *set)
{
    int cand[MAXN], nc = candidates(cand), want = 1 + rnd_int(&C.r, 4), n = 0;
    for (int i = nc - 1; i > 0; i--) { /* shuffle */
        int j = rnd_int(&C.r, i + 1), t = cand[i];
        cand[i] = cand[j];
        cand[j] = t;
    }
    for (int i = 0; i < nc && n < want; i++) /* mostly nodes y depends on */
        if (C.d.feeds_y[cand[i]] || rnd_int(&C.r, 4) == 0)
            set[n++] = cand[i];
    if (n == 0)
        set[n++] = cand[0];
    return n;
}

/* ------------------------------------------------------------ the test */

static void setup_case(int idx)
{
    memset(&C, 0, sizeof C);
    C.idx = idx;
    C.seed = SEED_BASE + 1000003ULL * (uint64_t)idx;
    uint64_t r = C.seed;
    splitmix64(&r);
    gen_dag(&C.d, r);
    C.r = r ^ 0xa5a5a5a5a5a5a5a5ULL;
    for (int i = 0; i < C.d.nleaves; i++) {
        ms_tensor *t = tensor_of(C.d.nd[i].sh, C.d.nd[i].val);
        C.leaf[i] = C.d.nd[i].kind == K_VAR ? ms_variable(t) : t;
        check_nn(C.leaf[i], "leaf");
    }
    for (int i = 0; i < C.d.nt; i++) {
        C.w[i] = tensor_of(C.d.nd[C.d.t[i].node].sh, C.d.t[i].w);
        check_nn(C.w[i], "weights");
    }
}

/* create_graph false: each call on a freshly built graph from the same leaves. */
static void no_graph_calls(void)
{
    int set[MAXN], ns;
    for (int call = 0; call < 5; call++) {
        if (call == 0 || call == 2) {
            set[0] = call == 0 ? deepest() : mid_deep();
            ns = 1;
        } else if (call == 1 || call == 3) {
            ns = shallow_set(set);
        } else {
            ns = random_set(set);
        }
        ms_tensor *vals[MAXN];
        ms_scope_push();
        ms_tensor *y = eval_dag(&C.d, -1, NULL, vals);
        ms_container *wrt = wrt_of(vals, set, ns), *g = NULL;
        check_ok(ms_grad(y, wrt, false, &g), "ms_grad(create_graph false)");
        char phase[64];
        snprintf(phase, sizeof phase, "create_graph false, call %d", call);
        check_against_fd(g, set, ns, phase);
        ms_container_release(g);
        ms_container_release(wrt);
        ms_scope_pop();
    }
}

static bool same_bits(const ms_container *a, const ms_container *b)
{
    if (ms_container_size(a) != ms_container_size(b))
        return false;
    for (int i = 0; i < ms_container_size(a); i++) {
        const ms_tensor *x = ms_container_at(a, i), *y = ms_container_at(b, i);
        if (ms_tensor_numel(x) != ms_tensor_numel(y) ||
            memcmp(ms_tensor_data(x), ms_tensor_data(y),
                   (size_t)ms_tensor_numel(x) * sizeof(double)) != 0)
            return false;
    }
    return true;
}

/* create_graph true: several calls on one graph, deep wrt first, then shallow,
 * then random mixes; each call made twice. */
static void graph_calls(void)
{
    ms_tensor *vals[MAXN];
    ms_scope_push();
    ms_tensor *y = eval_dag(&C.d, -1, NULL, vals);
    int set[MAXN], ns;
    for (int call = 0; call < 7; call++) {
        if (call == 0 || call == 2) {
            set[0] = call == 0 ? mid_deep() : deepest();
            ns = 1;
        } else if (call == 1 || call == 3) {
            ns = shallow_set(set);
        } else {
            ns = random_set(set);
        }
        ms_container *wrt = wrt_of(vals, set, ns), *g1 = NULL, *g2 = NULL;
        char phase[64];
        snprintf(phase, sizeof phase, "create_graph true, call %d", call);
        ms_scope_push();
        check_ok(ms_grad(y, wrt, true, &g1), "ms_grad(create_graph true)");
        check_ok(ms_grad(y, wrt, true, &g2), "ms_grad(create_graph true), again");
        check_against_fd(g1, set, ns, phase);
        CHECK(same_bits(g1, g2), "%s: a second identical ms_grad gave different bits", phase);
        ms_container_release(g1);
        ms_container_release(g2);
        ms_scope_pop();
        ms_container_release(wrt);
    }
    ms_scope_pop();
}

/* sum(dy/dn_v * r) at the DAG with node u replaced by ovu (a variable), or at
 * the leaves when u < 0. */
static double first_grad_dot(int v, int u, ms_tensor *ovu, const ms_tensor *rr)
{
    ms_tensor *vals[MAXN];
    ms_scope_push();
    ms_tensor *y = eval_dag(&C.d, u, ovu, vals);
    ms_container *wrt = wrt_of(vals, &v, 1), *g = NULL;
    check_ok(ms_grad(y, wrt, false, &g), "ms_grad for the first gradient");
    double s = ms_tensor_item(ms_sum(ms_mul(ms_container_at(g, 0), rr), 0, NULL, false));
    ms_container_release(g);
    ms_container_release(wrt);
    ms_scope_pop();
    return s;
}

static void second_order(void)
{
    int cand[MAXN], nc = candidates(cand);
    int vars[MAXN], nv = 0;
    for (int i = 0; i < C.d.nleaves; i++)
        if (C.d.nd[i].kind == K_VAR)
            vars[nv++] = i;
    int v = rnd_int(&C.r, 2) ? vars[rnd_int(&C.r, nv)] : cand[rnd_int(&C.r, nc)];
    int u = rnd_int(&C.r, 2) && C.d.nd[v].kind == K_VAR ? v : vars[rnd_int(&C.r, nv)];
    double rv[MAXE];
    for (int64_t j = 0; j < numel(C.d.nd[v].sh); j++)
        rv[j] = rnd_unif(&C.r, -1, 1);
    ms_scope_push();
    ms_tensor *rr = tensor_of(C.d.nd[v].sh, rv);
    check_nn(rr, "r");

    ms_tensor *vals[MAXN];
    ms_tensor *y = eval_dag(&C.d, -1, NULL, vals);
    ms_container *wv = wrt_of(vals, &v, 1), *wu = wrt_of(vals, &u, 1), *g = NULL, *h = NULL;
    check_ok(ms_grad(y, wv, true, &g), "ms_grad(y, {v}, create_graph)");
    ms_tensor *s = ms_sum(ms_mul(ms_container_at(g, 0), rr), 0, NULL, false);
    check_nn(s, "s");
    check_ok(ms_grad(s, wu, false, &h), "ms_grad(s, {u})");
    const ms_tensor *hu = ms_container_at(h, 0);
    CHECK(ms_tensor_numel(hu) == numel(C.d.nd[u].sh), "second order: wrong gradient size");

    ms_tensor *p = ms_copy(C.leaf[u]);
    for (int64_t j = 0; j < numel(C.d.nd[u].sh); j++) {
        double x0 = at(p, j);
        put(p, j, x0 + EPS);
        double sp = first_grad_dot(v, u, ms_variable(p), rr);
        put(p, j, x0 - EPS);
        double sm = first_grad_dot(v, u, ms_variable(p), rr);
        put(p, j, x0);
        double num = (sp - sm) / (2 * EPS), ana = at(hu, j);
        CHECK(close_enough(ana, num),
              "second order: d/dn%d[%lld] sum(dy/dn%d * r) (n%d: %s, depth %d): analytic %.12g, "
              "numeric %.12g", u, (long long)j, v, v, kind_name[C.d.nd[v].kind],
              C.d.nd[v].depth, ana, num);
    }
    ms_container_release(h);
    ms_container_release(g);
    ms_container_release(wu);
    ms_container_release(wv);
    ms_scope_pop();
}

START_TEST(random_dag)
{
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    setup_case(_i);
    no_graph_calls();
    graph_calls();
    if (_i % 2 == 0)
        second_order();
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    const char *m = NULL;
    CHECK(ms_last_error(&m) == MS_OK, "an error was recorded: %s", m ? m : "no message");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("grad_random");
    TCase *tc = tcase_create("random_dags");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, random_dag, 0, NCASES);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
