/* metastep — the backend conformance engine (see conformance.h).
 *
 * Every case allocates its buffers with a guard zone after them, fills inputs
 * from the seeded generator (ms_random_uniform gives the same values on every
 * backend), initialises the two outputs identically (a sentinel, or the same
 * data where the kernel reads or must preserve them), runs the reference and
 * the candidate kernel, and compares the whole allocation: an element the
 * candidate forgot to write, or one written past the end, differs.
 */
#include "conformance.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/backend.h"
#include "metastep/metastep.h"

#define GUARD 8
#define SENTINEL (-777.25)
#define GUARD_VALUE 777.0
#define BIG_N 1048583 /* elementwise cases larger than L2 (about 1M, odd) */
#define NF_BIG_N 20011 /* non-finite cases above oneDNN's default threshold (16384) */

/* ------------------------------------------------------------------------ */
/* tolerances: the one table                                                  */
/* ------------------------------------------------------------------------ */

/* How an error is measured.  For an element, err = |cand - ref| / max(|ref|,
 * floor): relative, with an absolute floor so values near zero are not held
 * to a relative bound they cannot meet.  A case passes when every element's
 * err <= rtol; NaN must meet NaN and infinities must be equal. */
typedef enum tol_mode {
    TOL_EXACT,  /* equal values (NaN matches NaN): rtol 0 */
    TOL_ELEM,   /* floor = atol */
    TOL_SQRT,   /* rtol * sqrt(n) for an n-term accumulation; floor = max(atol, case scale) */
    TOL_LINEAR, /* rtol * n; floor = max(atol, case scale) */
    TOL_RMS     /* floor = max(atol, rms of the reference output) */
} tol_mode;

typedef struct tol_rule {
    const char *family; /* "*" for every family that does not have its own rule */
    const char *op;     /* "*" for every op */
    tol_mode mode[2];   /* float32, float64 */
    double rtol[2], atol[2];
} tol_rule;

/* First match wins.  `op` names are the kernel op names of backend.h (the
 * end-to-end ops of ops.h use the key of the kernel that computes them). */
static const tol_rule TOLERANCES[] = {
    /* family      op              f32 mode,  f64 mode         f32 rtol, f64 rtol   f32 atol, f64 atol */
    {"grad",      "*",          {TOL_RMS, TOL_RMS},       {1e-4, 1e-10},   {1e-6, 1e-14}},
    {"gradcheck", "*",          {TOL_RMS, TOL_RMS},       {1e-3, 1e-6},    {1e-5, 1e-9}},
    /* sign, magnitude and data movement: no rounding at all */
    {"*", "neg",                {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "abs",                {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "sign",               {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "relu",               {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "square",             {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "copy",               {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "fill",               {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "where",              {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    /* one correctly rounded IEEE operation */
    {"*", "add",                {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "sub",                {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "mul",                {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "maximum",            {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "minimum",            {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "equal",              {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "not_equal",          {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "less",               {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "less_equal",         {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "greater",            {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "greater_equal",      {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "max",                {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    {"*", "min",                {TOL_EXACT, TOL_EXACT},   {0, 0},          {0, 0}},
    /* division, reciprocal and sqrt may be computed as a few operations */
    {"*", "div",                {TOL_ELEM, TOL_ELEM},     {1e-6, 1e-15},   {1e-30, 1e-300}},
    {"*", "reciprocal",         {TOL_ELEM, TOL_ELEM},     {1e-6, 1e-15},   {1e-30, 1e-300}},
    {"*", "sqrt",               {TOL_ELEM, TOL_ELEM},     {1e-6, 1e-15},   {1e-30, 1e-300}},
    /* transcendental: libm versus vectorised polynomials */
    {"*", "exp",                {TOL_ELEM, TOL_ELEM},     {1e-5, 1e-13},   {1e-6, 1e-15}},
    {"*", "log",                {TOL_ELEM, TOL_ELEM},     {1e-5, 1e-13},   {1e-6, 1e-15}},
    {"*", "tanh",               {TOL_ELEM, TOL_ELEM},     {1e-5, 1e-13},   {1e-6, 1e-15}},
    {"*", "sigmoid",            {TOL_ELEM, TOL_ELEM},     {1e-5, 1e-13},   {1e-6, 1e-15}},
    {"*", "sin",                {TOL_ELEM, TOL_ELEM},     {1e-5, 1e-13},   {1e-6, 1e-15}},
    {"*", "cos",                {TOL_ELEM, TOL_ELEM},     {1e-5, 1e-13},   {1e-6, 1e-15}},
    {"*", "pow",                {TOL_ELEM, TOL_ELEM},     {1e-5, 1e-13},   {1e-6, 1e-15}},
    /* arange: start + i*step, rounded once from double (float arithmetic differs by an ulp) */
    {"*", "arange",             {TOL_ELEM, TOL_ELEM},     {3e-7, 1e-15},   {1e-6, 1e-13}},
    /* accumulations: n = terms per output (k for gemm, reduced count, softmax length) */
    {"*", "sum",                {TOL_SQRT, TOL_SQRT},     {5e-7, 1e-14},   {1e-7, 1e-15}},
    {"*", "mean",               {TOL_SQRT, TOL_SQRT},     {5e-7, 1e-14},   {1e-7, 1e-15}},
    {"*", "gemm",               {TOL_SQRT, TOL_LINEAR},   {1e-5, 1e-12},   {1e-6, 1e-14}},
    {"*", "softmax",            {TOL_SQRT, TOL_SQRT},     {2e-6, 1e-14},   {1e-6, 1e-15}},
    /* convolutions: gemm's rule, n = terms per output element (c·kh·kw
     * forward, o·kh·kw for the data gradient, n·oh·ow for the weights) */
    {"*", "conv2d",             {TOL_SQRT, TOL_LINEAR},   {1e-5, 1e-12},   {1e-6, 1e-14}},
    {"*", "conv2d_bwd_data",    {TOL_SQRT, TOL_LINEAR},   {1e-5, 1e-12},   {1e-6, 1e-14}},
    {"*", "conv2d_bwd_weights", {TOL_SQRT, TOL_LINEAR},   {1e-5, 1e-12},   {1e-6, 1e-14}},
    {"*", "log_softmax",        {TOL_SQRT, TOL_SQRT},     {2e-6, 1e-14},   {1e-6, 1e-15}},
    /* batch_norm: mean and variance over n = N*H*W terms, then a division by the deviation */
    {"*", "batch_norm",         {TOL_SQRT, TOL_SQRT},     {5e-6, 1e-14},   {1e-6, 1e-15}},
};

typedef struct tol {
    tol_mode mode;
    double rtol;  /* after scaling by n */
    double floor; /* absolute floor of the relative error's denominator */
} tol;

static tol tol_for(const char *family, const char *op, ms_dtype dt, double n, double scale)
{
    const int d = dt == MS_F64;
    const tol_rule *r = NULL;
    for (size_t i = 0; i < sizeof TOLERANCES / sizeof *TOLERANCES && !r; i++) {
        const tol_rule *t = &TOLERANCES[i];
        if ((strcmp(t->family, "*") == 0 || strcmp(t->family, family) == 0) &&
            (strcmp(t->op, "*") == 0 || strcmp(t->op, op) == 0))
            r = t;
    }
    tol out = {TOL_EXACT, 0.0, 0.0};
    if (!r)
        return out; /* unknown op: exact */
    out.mode = r->mode[d];
    out.rtol = r->rtol[d];
    out.floor = r->atol[d];
    if (n < 1)
        n = 1;
    if (out.mode == TOL_SQRT)
        out.rtol *= sqrt(n);
    else if (out.mode == TOL_LINEAR)
        out.rtol *= n;
    if ((out.mode == TOL_SQRT || out.mode == TOL_LINEAR || out.mode == TOL_RMS) &&
        scale > out.floor)
        out.floor = scale;
    return out;
}

/* ------------------------------------------------------------------------ */
/* report                                                                     */
/* ------------------------------------------------------------------------ */

const char *const conf_families[] = {"unary", "binary",  "reduce", "gemm", "copy",
                                     "softmax", "fill",  "arange", "where", "ops",
                                     "grad",  "gradcheck", "threads", "conv"};
const int conf_family_count = (int)(sizeof conf_families / sizeof *conf_families);

typedef struct ctx {
    conf_report *rep;
    const ms_backend *cand, *ref;
    const char *cand_name; /* as given, for metastep_set_backend */
    uint64_t seed;
    /* allocations of the current case */
    void **allocs;
    int nallocs, capallocs;
    bool oom;
} ctx;

static conf_row *row_get(ctx *c, const char *family, const char *op, ms_dtype dt)
{
    char name[64];
    if (op)
        snprintf(name, sizeof name, "%s/%s/%s", family, op, ms_dtype_name(dt));
    else
        snprintf(name, sizeof name, "%s/%s", family, ms_dtype_name(dt));
    conf_report *r = c->rep;
    for (int i = r->nrows - 1; i >= 0; i--)
        if (strcmp(r->rows[i].kernel, name) == 0)
            return &r->rows[i];
    if (r->nrows == r->cap) {
        int cap = r->cap ? 2 * r->cap : 128;
        conf_row *rows = realloc(r->rows, (size_t)cap * sizeof *rows);
        if (!rows) {
            c->oom = true;
            return NULL;
        }
        r->rows = rows;
        r->cap = cap;
    }
    conf_row *row = &r->rows[r->nrows++];
    memset(row, 0, sizeof *row);
    snprintf(row->kernel, sizeof row->kernel, "%s", name);
    snprintf(row->family, sizeof row->family, "%s", family);
    return row;
}

static void row_fail(conf_row *row, const char *fmt, ...)
{
    if (!row)
        return;
    if (row->failed++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(row->first_failure, sizeof row->first_failure, fmt, ap);
        va_end(ap);
    }
}

/* Record a compared case's error against its tolerance. */
static void row_error(conf_row *row, double err, tol t)
{
    double ratio = t.rtol > 0 ? err / t.rtol : err > 0 ? INFINITY : 0;
    if (row->native == 1 || ratio > row->worst_ratio ||
        (ratio == row->worst_ratio && err > row->worst)) {
        row->worst = err;
        row->worst_tol = t.mode == TOL_EXACT ? 0 : t.rtol;
        row->worst_ratio = ratio;
    }
}

/* ------------------------------------------------------------------------ */
/* buffers                                                                    */
/* ------------------------------------------------------------------------ */

static void *case_alloc(ctx *c, size_t bytes)
{
    if (c->nallocs == c->capallocs) {
        int cap = c->capallocs ? 2 * c->capallocs : 32;
        void **a = realloc(c->allocs, (size_t)cap * sizeof *a);
        if (!a) {
            c->oom = true;
            return NULL;
        }
        c->allocs = a;
        c->capallocs = cap;
    }
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        c->oom = true;
        return NULL;
    }
    c->allocs[c->nallocs++] = p;
    return p;
}

static void case_end(ctx *c)
{
    for (int i = 0; i < c->nallocs; i++)
        free(c->allocs[i]);
    c->nallocs = 0;
}

static inline double get(ms_dtype dt, const void *p, int64_t i)
{
    return dt == MS_F32 ? (double)((const float *)p)[i] : ((const double *)p)[i];
}

static inline void put(ms_dtype dt, void *p, int64_t i, double v)
{
    if (dt == MS_F32)
        ((float *)p)[i] = (float)v;
    else
        ((double *)p)[i] = v;
}

/* Input domains. */
typedef enum dom {
    DOM_ANY,     /* [-2, 2) */
    DOM_WIDE,    /* [-5, 5) */
    DOM_EXP,     /* [-10, 10) */
    DOM_POS,     /* [0.1, 4): log, sqrt, pow bases */
    DOM_NONZERO, /* [-2.1, -0.1] U [0.1, 2.1]: denominators, kinks avoided */
    DOM_QUANT,   /* multiples of 0.5 in [-2, 2]: ties for comparisons */
    DOM_COND,    /* 0, -0, 1, 2.5: where's condition */
    DOM_UNIT,    /* [-1, 1) */
    DOM_EXPONENT, /* [-2, 2): pow exponents */
    DOM_HUGE      /* [-100, 100): exp overflows unless the max is subtracted */
} dom;

/* A buffer of n elements plus the guard, filled from the seeded generator. */
static void *rand_buf(ctx *c, ms_dtype dt, int64_t n, dom d)
{
    const size_t es = ms_dtype_size(dt);
    void *p = case_alloc(c, (size_t)(n + GUARD) * es);
    if (!p)
        return NULL;
    if (n > 0) {
        double lo = -2, hi = 2;
        switch (d) {
        case DOM_WIDE: lo = -5, hi = 5; break;
        case DOM_EXP: lo = -10, hi = 10; break;
        case DOM_POS: lo = 0.1, hi = 4; break;
        case DOM_COND: lo = 0, hi = 1; break;
        case DOM_UNIT: lo = -1, hi = 1; break;
        case DOM_HUGE: lo = -100, hi = 100; break;
        default: break;
        }
        ms_tensor *t = ms_random_uniform(dt, 1, &n, lo, hi, c->seed++);
        if (!t) {
            c->oom = true;
            return p;
        }
        memcpy(p, ms_tensor_data(t), (size_t)n * es);
        ms_release(t);
        for (int64_t i = 0; i < n; i++) {
            double v = get(dt, p, i);
            switch (d) {
            case DOM_NONZERO: v = v < 0 ? v - 0.1 : v + 0.1; break;
            case DOM_QUANT: v = round(v * 2) / 2; break;
            case DOM_COND: v = v < 0.4 ? 0.0 : v < 0.5 ? -0.0 : v < 0.9 ? 1.0 : 2.5; break;
            default: continue;
            }
            put(dt, p, i, v);
        }
    }
    for (int64_t i = 0; i < GUARD; i++)
        put(dt, p, n + i, GUARD_VALUE);
    return p;
}

/* Two identical output buffers of n elements plus the guard: `init` copied
 * when given, else the sentinel (or NaN when nan_init). */
static bool out_pair(ctx *c, ms_dtype dt, int64_t n, const void *init, bool nan_init,
                     void **yr, void **yc)
{
    const size_t es = ms_dtype_size(dt);
    *yr = case_alloc(c, (size_t)(n + GUARD) * es);
    *yc = case_alloc(c, (size_t)(n + GUARD) * es);
    if (!*yr || !*yc)
        return false;
    if (init) {
        memcpy(*yr, init, (size_t)(n + GUARD) * es);
    } else {
        for (int64_t i = 0; i < n; i++)
            put(dt, *yr, i, nan_init ? (double)NAN : SENTINEL);
        for (int64_t i = 0; i < GUARD; i++)
            put(dt, *yr, n + i, GUARD_VALUE);
    }
    memcpy(*yc, *yr, (size_t)(n + GUARD) * es);
    return true;
}

static double rms(ms_dtype dt, const void *p, int64_t n)
{
    double s = 0;
    int64_t cnt = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = get(dt, p, i);
        if (isfinite(v)) {
            s += v * v;
            cnt++;
        }
    }
    return cnt ? sqrt(s / (double)cnt) : 0.0;
}

/* The worst element error of cand against ref over n elements; *at receives
 * its index.  Infinite when NaN-ness or an infinity differs. */
static double compare(ms_dtype dt, const void *ref, const void *cand, int64_t n, tol t,
                      int64_t *at)
{
    double worst = 0;
    *at = 0;
    for (int64_t i = 0; i < n; i++) {
        const double r = get(dt, ref, i), v = get(dt, cand, i);
        double e;
        if (isnan(r) || isnan(v))
            e = isnan(r) && isnan(v) ? 0 : INFINITY;
        else if (isinf(r) || isinf(v))
            e = r == v ? 0 : INFINITY;
        else if (r == v)
            e = 0;
        else {
            double denom = fabs(r);
            if (t.mode != TOL_EXACT && denom < t.floor)
                denom = t.floor;
            if (denom < DBL_MIN)
                denom = DBL_MIN;
            e = fabs(v - r) / denom;
        }
        if (e > worst) {
            worst = e;
            *at = i;
        }
    }
    return worst;
}

static bool within(double err, tol t) { return t.mode == TOL_EXACT ? err == 0 : err <= t.rtol; }

/* The common end of a kernel case: statuses, then the comparison. */
static void finish(ctx *c, conf_row *row, ms_status sr, ms_status sc, bool have_slot, ms_dtype dt,
                   const void *yr, const void *yc, int64_t len, tol t, const char *desc)
{
    if (!row)
        return;
    row->cases++;
    if (c->oom) {
        row_fail(row, "out of memory (%s)", desc);
        return;
    }
    if (!have_slot || sc == MS_ERR_UNSUPPORTED) {
        row->fallback++;
        return;
    }
    row->native++;
    if (sr != MS_OK) {
        row_fail(row, "the reference kernel returned '%s' (%s)", ms_status_string(sr), desc);
        return;
    }
    if (sc != MS_OK) {
        row_fail(row, "returned '%s' (%s)", ms_status_string(sc), desc);
        return;
    }
    int64_t at;
    double err = compare(dt, yr, yc, len, t, &at);
    row_error(row, err, t);
    if (!within(err, t)) {
        if (at >= len - GUARD && len >= GUARD)
            row_fail(row, "wrote past the end of its output: element %lld of %lld (%s)",
                     (long long)at, (long long)(len - GUARD), desc);
        else
            row_fail(row, "error %.3g > tol %.3g at element %lld: got %.9g, ref %.9g (%s)", err,
                     t.rtol, (long long)at, get(dt, yc, at), get(dt, yr, at), desc);
    }
}

/* ------------------------------------------------------------------------ */
/* layouts for the strided kernels (binary, where, copy, fill)                */
/* ------------------------------------------------------------------------ */

typedef struct layout {
    int nd;
    int64_t shape[MS_MAX_DIMS];
    int64_t st[3][MS_MAX_DIMS];
    int64_t span[3]; /* elements the operand's buffer needs */
    bool big;        /* larger than L2: float32 only, to keep the suite quick */
} layout;

typedef enum okind { K_CONTIG, K_BCAST, K_TRANS, K_PITCH } okind;

static void set_operand(layout *L, int k, okind kind, uint32_t bmask)
{
    int64_t s = 1;
    if (kind == K_TRANS) {
        for (int d = 0; d < L->nd; d++) {
            L->st[k][d] = s;
            s *= L->shape[d];
        }
    } else {
        for (int d = L->nd - 1; d >= 0; d--) {
            if (kind == K_BCAST && (bmask & (1u << d))) {
                L->st[k][d] = 0;
                continue;
            }
            L->st[k][d] = s;
            s *= (kind == K_PITCH && d == L->nd - 1) ? L->shape[d] + 3 : L->shape[d];
        }
    }
    int64_t span = 1;
    for (int d = 0; d < L->nd; d++) {
        if (L->shape[d] == 0) {
            span = 0;
            break;
        }
        span += (L->shape[d] - 1) * L->st[k][d];
    }
    L->span[k] = span;
}

static layout mk(int nd, const int64_t *shape)
{
    layout L;
    memset(&L, 0, sizeof L);
    L.nd = nd;
    for (int d = 0; d < nd; d++)
        L.shape[d] = shape[d];
    for (int k = 0; k < 3; k++)
        set_operand(&L, k, K_CONTIG, 0);
    return L;
}

static int64_t numel_of(int nd, const int64_t *shape)
{
    int64_t n = 1;
    for (int d = 0; d < nd; d++)
        n *= shape[d];
    return n;
}

static void fmt_dims(char *buf, size_t cap, int nd, const int64_t *v)
{
    size_t o = (size_t)snprintf(buf, cap, "(");
    for (int d = 0; d < nd && o < cap; d++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", d ? "," : "", (long long)v[d]);
    if (o < cap)
        snprintf(buf + o, cap - o, ")");
}

static void describe(char *buf, size_t cap, const layout *L, int nops, const char *const *names)
{
    char s[96];
    fmt_dims(s, sizeof s, L->nd, L->shape);
    size_t o = (size_t)snprintf(buf, cap, "shape %s", s);
    for (int k = 0; k < nops && o < cap; k++) {
        fmt_dims(s, sizeof s, L->nd, L->st[k]);
        o += (size_t)snprintf(buf + o, cap - o, " %s strides %s", names[k], s);
    }
}

/* The sweep: sizes 0 and 1, odd sizes, broadcasting on every axis of every
 * operand that may broadcast, transposed and pitched operands, rank 0 and
 * MS_MAX_DIMS, and two cases larger than L2.  no_bcast has bit k set for
 * operands that must not broadcast (outputs). */
static int build_layouts(layout *out, int cap, int nops, unsigned no_bcast)
{
    int n = 0;
#define ADD(L)                                                                                  \
    do {                                                                                        \
        if (n < cap)                                                                            \
            out[n++] = (L);                                                                     \
    } while (0)
    static const int64_t sizes[] = {0, 1, 7, 13, 33, 1000};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        ADD(mk(1, &sizes[i]));
    ADD(mk(0, NULL));
    const int64_t s2[2] = {7, 13}, s3[3] = {5, 6, 7};
    ADD(mk(2, s2));
    for (int k = 0; k < nops; k++) {
        if (no_bcast & (1u << k))
            continue;
        for (int d = 0; d < 3; d++) {
            layout L = mk(3, s3);
            set_operand(&L, k, K_BCAST, 1u << d);
            ADD(L);
        }
        layout L = mk(3, s3); /* a scalar broadcast to everything */
        set_operand(&L, k, K_BCAST, 7u);
        ADD(L);
    }
    if (nops >= 2 && !(no_bcast & 3u)) {
        layout L = mk(3, s3); /* outer-product style: each operand varies on other axes */
        set_operand(&L, 0, K_BCAST, 6u);
        set_operand(&L, 1, K_BCAST, 1u);
        if (nops == 3 && !(no_bcast & 4u))
            set_operand(&L, 2, K_BCAST, 5u);
        ADD(L);
    }
    for (int k = 0; k < nops; k++) {
        layout L = mk(3, s3);
        set_operand(&L, k, K_TRANS, 0);
        ADD(L);
        L = mk(2, s2);
        set_operand(&L, k, K_PITCH, 0);
        ADD(L);
    }
    {
        layout L = mk(3, s3); /* every operand strided differently */
        for (int k = 0; k < nops; k++)
            set_operand(&L, k, k % 2 ? K_PITCH : K_TRANS, 0);
        ADD(L);
    }
    const int64_t z3[3] = {3, 0, 4}, o3[3] = {1, 13, 1}, o2[2] = {13, 1};
    ADD(mk(3, z3));
    ADD(mk(3, o3));
    {
        layout L = mk(2, o2); /* stride 0 on a size-1 dim */
        if (!(no_bcast & 1u))
            set_operand(&L, 0, K_BCAST, 2u);
        ADD(L);
    }
    const int64_t s8[8] = {2, 1, 3, 1, 2, 3, 1, 2};
    ADD(mk(8, s8));
    for (int k = 0; k < nops; k++) {
        if (no_bcast & (1u << k))
            continue;
        layout L = mk(8, s8);
        set_operand(&L, k, K_BCAST, 0x11u | (k == 0 ? 0x20u : 0x04u));
        ADD(L);
    }
    const int64_t big1 = BIG_N, big2[2] = {1021, 1027};
    {
        layout L = mk(1, &big1);
        L.big = true;
        ADD(L);
        L = mk(2, big2);
        L.big = true;
        if (nops >= 2 && !(no_bcast & 2u))
            set_operand(&L, 1, K_BCAST, 1u);
        else
            set_operand(&L, 0, K_TRANS, 0);
        ADD(L);
    }
#undef ADD
    return n;
}

#define MAX_LAYOUTS 64

/* ------------------------------------------------------------------------ */
/* unary                                                                      */
/* ------------------------------------------------------------------------ */

static dom unary_dom(ms_unary_op op)
{
    switch (op) {
    case MS_UNARY_EXP: return DOM_EXP;
    case MS_UNARY_LOG:
    case MS_UNARY_SQRT: return DOM_POS;
    case MS_UNARY_RECIPROCAL: return DOM_NONZERO;
    default: return DOM_WIDE;
    }
}

/* IEEE special values every kernel must treat as the reference does. */
static const double SPECIALS[] = {0.0, -0.0, 1.0, -1.0, 0.5, -2.0, INFINITY, -INFINITY, NAN,
                                  100.0, -100.0, 1e-3, -1e-3};
#define NSPECIALS ((int64_t)(sizeof SPECIALS / sizeof *SPECIALS))

/* Non-finite values for the scattered cases: NaN and both infinities, or the
 * infinities alone (so that a kernel that declines NaN inputs still runs on
 * infinities). */
static const double NONFINITE[] = {NAN, INFINITY, -INFINITY};
static const double INFINITIES[] = {INFINITY, -INFINITY};
/* NF_NEG_INF (softmax only): rows with some -inf and a finite maximum. */
typedef enum nf_kind { NF_NONE = 0, NF_ALL, NF_INF, NF_NEG_INF } nf_kind;

/* Overwrite about one element in `every` of a buffer of n with a non-finite
 * value, at positions picked by a hash of the index (salted, so that two
 * operands differ): they land in every vector lane, in loop tails and in
 * different rows. */
static void scatter_nonfinite(ms_dtype dt, void *p, int64_t n, int64_t every, nf_kind kind,
                              uint64_t salt)
{
    if (!p || kind == NF_NONE || every <= 0)
        return;
    const double *vals = kind == NF_INF ? INFINITIES : NONFINITE;
    const uint64_t nv = kind == NF_INF ? 2 : 3;
    for (int64_t i = 0; i < n; i++) {
        uint64_t h = ((uint64_t)i + salt * 0x632BE59BD9B4E019ull) * 0x9E3779B97F4A7C15ull;
        h ^= h >> 31;
        h *= 0xBF58476D1CE4E5B9ull;
        h ^= h >> 29;
        if (h % (uint64_t)every == 0)
            put(dt, p, i, vals[(h / (uint64_t)every) % nv]);
    }
}

static const char *nf_label(nf_kind kind)
{
    return kind == NF_ALL ? ", NaN/+inf/-inf scattered"
           : kind == NF_INF ? ", +inf/-inf scattered" : "";
}

static void case_unary(ctx *c, ms_unary_op op, ms_dtype dt, int64_t n, bool inplace,
                       bool specials, nf_kind nf)
{
    const char *name = ms_unary_op_name(op);
    conf_row *row = row_get(c, "unary", name, dt);
    void *x = rand_buf(c, dt, n, unary_dom(op)), *yr = NULL, *yc = NULL;
    scatter_nonfinite(dt, x, n, 5, nf, 1);
    if (x && specials)
        for (int64_t i = 0; i < n && i < NSPECIALS; i++)
            put(dt, x, i, SPECIALS[i]);
    char desc[128];
    snprintf(desc, sizeof desc, "n %lld%s%s%s", (long long)n, inplace ? ", in place" : "",
             specials ? ", IEEE specials" : "", nf_label(nf));
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    if (x && out_pair(c, dt, n, inplace ? x : NULL, false, &yr, &yc)) {
        sr = c->ref->unary(op, dt, n, inplace ? yr : x, yr);
        if (c->cand->unary)
            sc = c->cand->unary(op, dt, n, inplace ? yc : x, yc);
    }
    finish(c, row, sr, sc, c->cand->unary != NULL, dt, yr, yc, n + GUARD,
           tol_for("unary", name, dt, 1, 0), desc);
    case_end(c);
}

static void family_unary(ctx *c)
{
    static const int64_t sizes[] = {0, 1, 7, 13, 33, 1000, BIG_N};
    for (int dti = 0; dti < 2; dti++) {
        ms_dtype dt = (ms_dtype)dti;
        for (int op = 0; op < MS_UNARY_COUNT; op++) {
            for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
                case_unary(c, (ms_unary_op)op, dt, sizes[i], false, false, NF_NONE);
            case_unary(c, (ms_unary_op)op, dt, 33, true, false, NF_NONE);
            case_unary(c, (ms_unary_op)op, dt, 37, false, true, NF_NONE);
            /* Non-finite inputs everywhere; the large ones exceed oneDNN's
             * default size threshold, so its primitives see them too. */
            case_unary(c, (ms_unary_op)op, dt, 1000, false, false, NF_ALL);
            case_unary(c, (ms_unary_op)op, dt, 1000, true, false, NF_ALL);
            case_unary(c, (ms_unary_op)op, dt, 1000, false, false, NF_INF);
            case_unary(c, (ms_unary_op)op, dt, NF_BIG_N, false, true, NF_ALL);
            case_unary(c, (ms_unary_op)op, dt, NF_BIG_N, true, false, NF_INF);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* binary                                                                     */
/* ------------------------------------------------------------------------ */

static void binary_doms(ms_binary_op op, dom *da, dom *db)
{
    *da = *db = DOM_ANY;
    if (op == MS_BINARY_DIV)
        *db = DOM_NONZERO;
    else if (op == MS_BINARY_POW)
        *da = DOM_POS, *db = DOM_EXPONENT;
    else if (op >= MS_BINARY_MAXIMUM)
        *da = *db = DOM_QUANT;
}

static void case_binary(ctx *c, ms_binary_op op, ms_dtype dt, const layout *L, bool specials,
                        nf_kind nf)
{
    const char *name = ms_binary_op_name(op);
    conf_row *row = row_get(c, "binary", name, dt);
    dom da, db;
    binary_doms(op, &da, &db);
    const int64_t n = numel_of(L->nd, L->shape);
    void *a = rand_buf(c, dt, L->span[0], da), *b = rand_buf(c, dt, L->span[1], db);
    void *yr = NULL, *yc = NULL;
    scatter_nonfinite(dt, a, L->span[0], 6, nf, 2);
    scatter_nonfinite(dt, b, L->span[1], 7, nf, 3);
    if (a && b && specials) {
        for (int64_t i = 0; i < L->span[0] && i < NSPECIALS; i++)
            put(dt, a, i, SPECIALS[i]);
        for (int64_t i = 0; i < L->span[1] && i < NSPECIALS; i++)
            put(dt, b, i, SPECIALS[NSPECIALS - 1 - i]);
    }
    char desc[200];
    static const char *const names[] = {"a", "b"};
    describe(desc, sizeof desc, L, 2, names);
    if (specials)
        strncat(desc, ", IEEE specials", sizeof desc - strlen(desc) - 1);
    strncat(desc, nf_label(nf), sizeof desc - strlen(desc) - 1);
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    if (a && b && out_pair(c, dt, n, NULL, false, &yr, &yc)) {
        sr = c->ref->binary(op, dt, L->nd, L->shape, a, L->st[0], b, L->st[1], yr);
        if (c->cand->binary)
            sc = c->cand->binary(op, dt, L->nd, L->shape, a, L->st[0], b, L->st[1], yc);
    }
    finish(c, row, sr, sc, c->cand->binary != NULL, dt, yr, yc, n + GUARD,
           tol_for("binary", name, dt, 1, 0), desc);
    case_end(c);
}

/* Layouts for the non-finite binary cases: contiguous, either operand
 * broadcast along rows (oneDNN swaps a broadcast first operand), transposed,
 * and the large ones above oneDNN's default threshold. */
static int nonfinite_layouts(layout *out)
{
    int n = 0;
    const int64_t s1 = 1000, big = NF_BIG_N, s2[2] = {163, 131}, s3[3] = {5, 6, 7};
    out[n++] = mk(1, &s1);
    out[n++] = mk(1, &big);
    out[n] = mk(2, s2);
    set_operand(&out[n++], 1, K_BCAST, 1u);
    out[n] = mk(2, s2);
    set_operand(&out[n++], 0, K_BCAST, 1u);
    out[n] = mk(2, s2);
    set_operand(&out[n++], 1, K_BCAST, 2u);
    out[n] = mk(3, s3);
    set_operand(&out[n++], 0, K_TRANS, 0);
    return n;
}

static void family_binary(ctx *c)
{
    layout Ls[MAX_LAYOUTS], Nf[8];
    int nl = build_layouts(Ls, MAX_LAYOUTS, 2, 0);
    int nnf = nonfinite_layouts(Nf);
    for (int dti = 0; dti < 2; dti++) {
        ms_dtype dt = (ms_dtype)dti;
        for (int op = 0; op < MS_BINARY_COUNT; op++) {
            for (int i = 0; i < nl; i++)
                if (!Ls[i].big || dt == MS_F32)
                    case_binary(c, (ms_binary_op)op, dt, &Ls[i], false, NF_NONE);
            const int64_t ns = NSPECIALS;
            layout L = mk(1, &ns);
            case_binary(c, (ms_binary_op)op, dt, &L, true, NF_NONE);
            for (int i = 0; i < nnf; i++) {
                case_binary(c, (ms_binary_op)op, dt, &Nf[i], false, NF_ALL);
                case_binary(c, (ms_binary_op)op, dt, &Nf[i], false, NF_INF);
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* reduce                                                                     */
/* ------------------------------------------------------------------------ */

static void case_reduce(ctx *c, ms_reduce_op op, ms_dtype dt, int nd, const int64_t *shape,
                        uint32_t axes, bool with_nan, nf_kind nf, int64_t every)
{
    int64_t n = numel_of(nd, shape), nout = 1, count = 1;
    for (int d = 0; d < nd; d++) {
        if (axes & (1u << d))
            count *= shape[d];
        else
            nout *= shape[d];
    }
    if (count == 0 && (op == MS_REDUCE_MAX || op == MS_REDUCE_MIN))
        return; /* refused by the frontend before any kernel runs */
    const char *name = ms_reduce_op_name(op);
    conf_row *row = row_get(c, "reduce", name, dt);
    void *x = rand_buf(c, dt, n, DOM_UNIT), *yr = NULL, *yc = NULL;
    if (x && with_nan && n > 3)
        put(dt, x, n / 3, (double)NAN);
    scatter_nonfinite(dt, x, n, every, nf, 4);
    char desc[200], s[96];
    fmt_dims(s, sizeof s, nd, shape);
    snprintf(desc, sizeof desc, "shape %s axes mask 0x%x%s%s", s, (unsigned)axes,
             with_nan ? ", one NaN" : "", nf_label(nf));
    if (nf != NF_NONE) {
        size_t o = strlen(desc);
        snprintf(desc + o, sizeof desc - o, " (1 in %lld)", (long long)every);
    }
    double scale = 0;
    if (x) {
        double rx = rms(dt, x, n);
        scale = op == MS_REDUCE_SUM ? rx * sqrt((double)count)
                : op == MS_REDUCE_MEAN ? rx / sqrt((double)(count ? count : 1))
                                       : 0;
    }
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    if (x && out_pair(c, dt, nout, NULL, false, &yr, &yc)) {
        sr = c->ref->reduce(op, dt, nd, shape, axes, x, yr);
        if (c->cand->reduce)
            sc = c->cand->reduce(op, dt, nd, shape, axes, x, yc);
    }
    finish(c, row, sr, sc, c->cand->reduce != NULL, dt, yr, yc, nout + GUARD,
           tol_for("reduce", name, dt, (double)count, scale), desc);
    case_end(c);
}

static void family_reduce(ctx *c)
{
    static const struct {
        int nd;
        int64_t shape[8];
        uint32_t axes[4];
        int naxes;
        bool big;
    } cases[] = {
        {1, {0}, {1}, 1, false},
        {1, {1}, {1}, 1, false},
        {1, {7}, {1}, 1, false},
        {1, {33}, {1}, 1, false},
        {1, {1000}, {1}, 1, false},
        {1, {BIG_N}, {1}, 1, true},
        {2, {7, 13}, {1, 2, 3, 0}, 4, false},
        {3, {5, 6, 7}, {2, 5, 1, 4}, 4, false},
        {3, {5, 6, 7}, {7, 3, 6, 0}, 4, false},
        {3, {3, 0, 4}, {2, 1, 7}, 3, false},
        {3, {1, 13, 1}, {1, 2, 7}, 3, false},
        {4, {4, 1, 5, 3}, {0xa, 0x5, 0x8}, 3, false},
        {8, {2, 1, 3, 1, 2, 3, 1, 2}, {0xa5, 0xff, 0x5a}, 3, false},
        {2, {64, 300}, {1, 2}, 2, false},
        {2, {1021, 1027}, {1, 2}, 2, true},
    };
    for (int dti = 0; dti < 2; dti++) {
        ms_dtype dt = (ms_dtype)dti;
        for (int op = 0; op < MS_REDUCE_COUNT; op++) {
            for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
                if (cases[i].big && dt == MS_F64)
                    continue;
                for (int a = 0; a < cases[i].naxes; a++)
                    case_reduce(c, (ms_reduce_op)op, dt, cases[i].nd, cases[i].shape,
                                cases[i].axes[a], false, NF_NONE, 0);
            }
            const int64_t s3[3] = {5, 6, 7};
            case_reduce(c, (ms_reduce_op)op, dt, 3, s3, 4, true, NF_NONE, 0);
            case_reduce(c, (ms_reduce_op)op, dt, 3, s3, 7, true, NF_NONE, 0);
            /* Scattered NaN and infinities, sparse enough that some outputs
             * see none, one or several (+inf with -inf: NaN sums); the
             * (64,300) cases exceed oneDNN's default threshold. */
            for (int k = NF_ALL; k <= NF_INF; k++) {
                const nf_kind nf = (nf_kind)k;
                static const uint32_t ax3[] = {1, 2, 4, 5, 7};
                for (size_t a = 0; a < sizeof ax3 / sizeof *ax3; a++)
                    case_reduce(c, (ms_reduce_op)op, dt, 3, s3, ax3[a], false, nf, 13);
                const int64_t s2[2] = {64, 300}, s1 = 1000;
                for (uint32_t a = 1; a <= 3; a++)
                    case_reduce(c, (ms_reduce_op)op, dt, 2, s2, a, false, nf, 257);
                case_reduce(c, (ms_reduce_op)op, dt, 2, s2, 2, false, nf, 40);
                case_reduce(c, (ms_reduce_op)op, dt, 1, &s1, 1, false, nf, 5);
            }
        }
    }
}

/* ------------------------------------------------------------------------ */
/* gemm                                                                       */
/* ------------------------------------------------------------------------ */

typedef struct gemm_case {
    bool ta, tb;
    int64_t batch, m, n, k;
    double alpha, beta;
    int64_t pad_a, pad_b, pad_c; /* leading dimensions beyond the minimum */
    int sa, sb;                  /* batch strides: 0 shared (stride 0), 1 packed, 2 padded */
    bool big;
} gemm_case;

/* With nf, about one element in `every` of A and B (and of C when beta is
 * not 0) is non-finite: the result must hold NaN and infinities exactly where
 * the reference backend's IEEE GEMM puts them (no 0·NaN = 0 shortcuts). */
static void case_gemm_nf(ctx *c, ms_dtype dt, const gemm_case *g, nf_kind nf, int64_t every)
{
    conf_row *row = row_get(c, "gemm", NULL, dt);
    const int64_t arows = g->ta ? g->k : g->m, acols = g->ta ? g->m : g->k;
    const int64_t brows = g->tb ? g->n : g->k, bcols = g->tb ? g->k : g->n;
    const int64_t lda = acols + g->pad_a, ldb = bcols + g->pad_b, ldc = g->n + g->pad_c;
    const int64_t amat = arows * lda, bmat = brows * ldb, cmat = g->m * ldc;
    const int64_t stra = g->sa == 0 ? 0 : amat + (g->sa == 2 ? 5 : 0);
    const int64_t strb = g->sb == 0 ? 0 : bmat + (g->sb == 2 ? 3 : 0);
    const int64_t strc = cmat + (g->pad_c ? 2 : 0) + (cmat == 0);
    const int64_t na = (g->batch - 1) * stra + amat, nb = (g->batch - 1) * strb + bmat;
    const int64_t nc = (g->batch - 1) * strc + cmat;
    void *a = rand_buf(c, dt, na, DOM_UNIT), *b = rand_buf(c, dt, nb, DOM_UNIT);
    void *c0 = g->beta != 0 ? rand_buf(c, dt, nc, DOM_UNIT) : NULL, *yr = NULL, *yc = NULL;
    char desc[200];
    snprintf(desc, sizeof desc,
             "%s%s batch %lld m %lld n %lld k %lld alpha %g beta %g lda %lld ldb %lld ldc %lld "
             "strides %lld/%lld/%lld%s",
             g->ta ? "T" : "N", g->tb ? "T" : "N", (long long)g->batch, (long long)g->m,
             (long long)g->n, (long long)g->k, g->alpha, g->beta, (long long)lda, (long long)ldb,
             (long long)ldc, (long long)stra, (long long)strb, (long long)strc, nf_label(nf));
    double scale = 0;
    if (a && b) {
        scale = fabs(g->alpha) * sqrt((double)(g->k ? g->k : 1)) * rms(dt, a, na) * rms(dt, b, nb);
        if (c0)
            scale += fabs(g->beta) * rms(dt, c0, nc);
    }
    scatter_nonfinite(dt, a, na, every, nf, 1);
    scatter_nonfinite(dt, b, nb, every, nf, 2);
    scatter_nonfinite(dt, c0, nc, every, nf, 3);
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    /* beta 0: C starts as NaN, which must not leak into the result. */
    if (a && b && (g->beta == 0 || c0) && out_pair(c, dt, nc, c0, g->beta == 0, &yr, &yc)) {
        sr = c->ref->gemm(dt, g->ta, g->tb, g->batch, g->m, g->n, g->k, g->alpha, a, lda, stra,
                          b, ldb, strb, g->beta, yr, ldc, strc);
        if (c->cand->gemm)
            sc = c->cand->gemm(dt, g->ta, g->tb, g->batch, g->m, g->n, g->k, g->alpha, a, lda,
                               stra, b, ldb, strb, g->beta, yc, ldc, strc);
    }
    finish(c, row, sr, sc, c->cand->gemm != NULL, dt, yr, yc, nc + GUARD,
           tol_for("gemm", "gemm", dt, (double)g->k, scale), desc);
    case_end(c);
}

static void case_gemm(ctx *c, ms_dtype dt, const gemm_case *g)
{
    case_gemm_nf(c, dt, g, NF_NONE, 0);
}

static void family_gemm(ctx *c)
{
    static const int64_t shapes[][3] = {{1, 1, 1},  {7, 13, 5}, {13, 7, 33}, {33, 33, 33},
                                        {1, 17, 9}, {17, 1, 9}, {1, 1, 19},  {64, 64, 64},
                                        {5, 8, 0},  {0, 5, 3},  {5, 0, 3},
                                        /* thin: MAML's last layer, outer products */
                                        {40, 1, 10}, {10, 40, 1}, {9, 17, 1}, {10, 1, 40}};
    for (int dti = 0; dti < 2; dti++) {
        ms_dtype dt = (ms_dtype)dti;
        for (int t = 0; t < 4; t++) {
            const bool ta = t & 1, tb = (t >> 1) & 1;
            for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
                gemm_case g = {ta, tb, 1, shapes[i][0], shapes[i][1], shapes[i][2],
                               1.0, 0.0, 0, 0, 0, 1, 1, false};
                case_gemm(c, dt, &g);
            }
            /* alpha and beta, padded leading dimensions */
            gemm_case g1 = {ta, tb, 1, 7, 13, 5, 0.5, -1.5, 3, 2, 4, 1, 1, false};
            case_gemm(c, dt, &g1);
            gemm_case g2 = {ta, tb, 1, 13, 7, 9, -2.0, 1.0, 0, 5, 0, 1, 1, false};
            case_gemm(c, dt, &g2);
            gemm_case g3 = {ta, tb, 1, 5, 8, 0, 1.0, 0.5, 0, 0, 1, 1, 1, false};
            case_gemm(c, dt, &g3);
            gemm_case g4 = {ta, tb, 1, 9, 6, 4, 0.0, 2.0, 0, 0, 0, 1, 1, false};
            case_gemm(c, dt, &g4);
            /* batched: packed, padded, and stride-0 (shared) operands */
            gemm_case b1 = {ta, tb, 4, 7, 13, 5, 1.0, 0.0, 0, 0, 0, 1, 1, false};
            case_gemm(c, dt, &b1);
            gemm_case b2 = {ta, tb, 5, 6, 11, 7, 1.0, 1.0, 1, 2, 3, 0, 2, false};
            case_gemm(c, dt, &b2);
            gemm_case b3 = {ta, tb, 5, 9, 4, 17, 0.5, 0.0, 0, 0, 2, 2, 0, false};
            case_gemm(c, dt, &b3);
            gemm_case b4 = {ta, tb, 3, 8, 8, 8, 1.0, 0.0, 0, 0, 0, 0, 0, false};
            case_gemm(c, dt, &b4);
            gemm_case b5 = {ta, tb, 3, 1, 7, 5, 1.0, 0.0, 0, 0, 0, 1, 0, false};
            case_gemm(c, dt, &b5);
            gemm_case b6 = {ta, tb, 3, 7, 1, 5, 1.0, 0.0, 2, 1, 0, 0, 1, false};
            case_gemm(c, dt, &b6);
            /* thin, accumulating into C: one column, an outer product */
            gemm_case b7 = {ta, tb, 4, 11, 1, 6, 1.0, 1.0, 0, 0, 0, 1, 1, false};
            case_gemm(c, dt, &b7);
            gemm_case b8 = {ta, tb, 4, 6, 11, 1, 1.0, 1.0, 0, 0, 0, 1, 1, false};
            case_gemm(c, dt, &b8);
            /* one column over a long k (whole vectors and a tail), padded */
            gemm_case b9 = {ta, tb, 3, 5, 1, 37, 1.0, 0.0, 3, 0, 2, 2, 2, false};
            case_gemm(c, dt, &b9);
            gemm_case b10 = {ta, tb, 3, 5, 1, 37, 1.0, 1.0, 0, 0, 0, 1, 0, false};
            case_gemm(c, dt, &b10);
        }
        /* What MAML does: 25 tasks of (10x40)(40x40) with shared weights, and
         * the weight gradient A^T G summed over the batch's rows. */
        gemm_case maml1 = {false, false, 25, 10, 40, 40, 1.0, 0.0, 0, 0, 0, 1, 0, false};
        case_gemm(c, dt, &maml1);
        gemm_case maml2 = {true, false, 25, 40, 40, 10, 1.0, 0.0, 0, 0, 0, 1, 1, false};
        case_gemm(c, dt, &maml2);
        gemm_case maml3 = {false, true, 25, 10, 40, 40, 1.0, 0.0, 0, 0, 0, 1, 0, false};
        case_gemm(c, dt, &maml3);
        /* Scattered NaN and infinities (one element in 97 or 331): whole rows
         * and columns of C turn non-finite, others stay finite; with beta
         * 1.5 through C too; the MAML shape and one beyond a 64-wide tile. */
        for (int k = NF_ALL; k <= NF_INF; k++) {
            for (int t = 0; t < 4; t++) {
                const bool ta = t & 1, tb = (t >> 1) & 1;
                gemm_case n1 = {ta, tb, 3, 10, 40, 40, 1.0, 0.0, 0, 0, 0, 1, 0, false};
                case_gemm_nf(c, dt, &n1, (nf_kind)k, 331);
                gemm_case n2 = {ta, tb, 2, 13, 7, 9, 0.5, 1.5, 1, 2, 3, 1, 1, false};
                case_gemm_nf(c, dt, &n2, (nf_kind)k, 97);
                gemm_case n3 = {ta, tb, 1, 70, 67, 300, 1.0, 0.0, 0, 0, 0, 1, 1, false};
                case_gemm_nf(c, dt, &n3, (nf_kind)k, 20011);
            }
        }
        /* sizes that are not multiples of any vector width, and one beyond L2 */
        gemm_case odd = {true, true, 1, 257, 129, 333, 1.0, 0.0, 0, 0, 0, 1, 1, false};
        case_gemm(c, dt, &odd);
        if (dt == MS_F32) {
            gemm_case big = {false, false, 1, 1024, 1024, 1024, 1.0, 0.0, 0, 0, 0, 1, 1, true};
            case_gemm(c, dt, &big);
        } else {
            gemm_case big = {false, true, 1, 300, 300, 300, 1.0, 0.0, 0, 0, 0, 1, 1, true};
            case_gemm(c, dt, &big);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* copy, fill, arange, where                                                  */
/* ------------------------------------------------------------------------ */

static void case_copy(ctx *c, ms_dtype dt, const layout *L)
{
    conf_row *row = row_get(c, "copy", NULL, dt);
    void *src = rand_buf(c, dt, L->span[0], DOM_ANY), *yr = NULL, *yc = NULL;
    void *dst0 = rand_buf(c, dt, L->span[1], DOM_ANY); /* gaps must be kept */
    char desc[200];
    static const char *const names[] = {"src", "dst"};
    describe(desc, sizeof desc, L, 2, names);
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    if (src && dst0 && out_pair(c, dt, L->span[1], dst0, false, &yr, &yc)) {
        sr = c->ref->copy(dt, L->nd, L->shape, src, L->st[0], yr, L->st[1]);
        if (c->cand->copy)
            sc = c->cand->copy(dt, L->nd, L->shape, src, L->st[0], yc, L->st[1]);
    }
    finish(c, row, sr, sc, c->cand->copy != NULL, dt, yr, yc, L->span[1] + GUARD,
           tol_for("copy", "copy", dt, 1, 0), desc);
    case_end(c);
}

static void case_fill(ctx *c, ms_dtype dt, const layout *L, double value)
{
    conf_row *row = row_get(c, "fill", NULL, dt);
    void *dst0 = rand_buf(c, dt, L->span[0], DOM_ANY), *yr = NULL, *yc = NULL;
    char desc[200];
    static const char *const names[] = {"dst"};
    describe(desc, sizeof desc, L, 1, names);
    size_t o = strlen(desc);
    snprintf(desc + o, sizeof desc - o, " value %g", value);
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    if (dst0 && out_pair(c, dt, L->span[0], dst0, false, &yr, &yc)) {
        sr = c->ref->fill(dt, L->nd, L->shape, L->st[0], value, yr);
        if (c->cand->fill)
            sc = c->cand->fill(dt, L->nd, L->shape, L->st[0], value, yc);
    }
    finish(c, row, sr, sc, c->cand->fill != NULL, dt, yr, yc, L->span[0] + GUARD,
           tol_for("fill", "fill", dt, 1, 0), desc);
    case_end(c);
}

static void case_arange(ctx *c, ms_dtype dt, int64_t n, double start, double step)
{
    conf_row *row = row_get(c, "arange", NULL, dt);
    void *yr = NULL, *yc = NULL;
    char desc[120];
    snprintf(desc, sizeof desc, "n %lld start %g step %g", (long long)n, start, step);
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    if (out_pair(c, dt, n, NULL, false, &yr, &yc)) {
        sr = c->ref->arange(dt, n, start, step, yr);
        if (c->cand->arange)
            sc = c->cand->arange(dt, n, start, step, yc);
    }
    finish(c, row, sr, sc, c->cand->arange != NULL, dt, yr, yc, n + GUARD,
           tol_for("arange", "arange", dt, 1, 0), desc);
    case_end(c);
}

static void case_where(ctx *c, ms_dtype dt, const layout *L, nf_kind nf)
{
    conf_row *row = row_get(c, "where", NULL, dt);
    const int64_t n = numel_of(L->nd, L->shape);
    void *cd = rand_buf(c, dt, L->span[0], DOM_COND), *a = rand_buf(c, dt, L->span[1], DOM_ANY);
    void *b = rand_buf(c, dt, L->span[2], DOM_ANY), *yr = NULL, *yc = NULL;
    if (cd && L->span[0] > 2)
        put(dt, cd, 1, (double)NAN); /* NaN != 0: selects a */
    /* non-finite conditions select a; non-finite values pass through */
    scatter_nonfinite(dt, cd, L->span[0], 9, nf, 5);
    scatter_nonfinite(dt, a, L->span[1], 4, nf, 6);
    scatter_nonfinite(dt, b, L->span[2], 5, nf, 7);
    char desc[260];
    static const char *const names[] = {"c", "a", "b"};
    describe(desc, sizeof desc, L, 3, names);
    strncat(desc, nf_label(nf), sizeof desc - strlen(desc) - 1);
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    if (cd && a && b && out_pair(c, dt, n, NULL, false, &yr, &yc)) {
        sr = c->ref->where(dt, L->nd, L->shape, cd, L->st[0], a, L->st[1], b, L->st[2], yr);
        if (c->cand->where)
            sc = c->cand->where(dt, L->nd, L->shape, cd, L->st[0], a, L->st[1], b, L->st[2],
                                yc);
    }
    finish(c, row, sr, sc, c->cand->where != NULL, dt, yr, yc, n + GUARD,
           tol_for("where", "where", dt, 1, 0), desc);
    case_end(c);
}

static void family_copy(ctx *c)
{
    layout Ls[MAX_LAYOUTS];
    int nl = build_layouts(Ls, MAX_LAYOUTS, 2, 2u);
    for (int dti = 0; dti < 2; dti++)
        for (int i = 0; i < nl; i++)
            if (!Ls[i].big || dti == MS_F32)
                case_copy(c, (ms_dtype)dti, &Ls[i]);
}

static void family_fill(ctx *c)
{
    layout Ls[MAX_LAYOUTS];
    int nl = build_layouts(Ls, MAX_LAYOUTS, 1, 1u);
    static const double values[] = {0.0, -1.5, 1.0 / 3.0};
    for (int dti = 0; dti < 2; dti++) {
        for (int i = 0; i < nl; i++)
            if (!Ls[i].big || dti == MS_F32)
                case_fill(c, (ms_dtype)dti, &Ls[i], values[i % 3]);
        const int64_t s = 7;
        layout L = mk(1, &s);
        case_fill(c, (ms_dtype)dti, &L, (double)NAN);
        case_fill(c, (ms_dtype)dti, &L, -INFINITY);
        case_fill(c, (ms_dtype)dti, &L, -0.0);
    }
}

static void family_arange(ctx *c)
{
    static const int64_t sizes[] = {0, 1, 7, 33, 1000, BIG_N};
    static const double ss[][2] = {{0, 1}, {-3.5, 0.25}, {2, -0.3}, {1e6, 0.1}};
    for (int dti = 0; dti < 2; dti++)
        for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
            for (size_t j = 0; j < sizeof ss / sizeof *ss; j++)
                case_arange(c, (ms_dtype)dti, sizes[i], ss[j][0], ss[j][1]);
}

static void family_where(ctx *c)
{
    layout Ls[MAX_LAYOUTS];
    int nl = build_layouts(Ls, MAX_LAYOUTS, 3, 0);
    for (int dti = 0; dti < 2; dti++)
        for (int i = 0; i < nl; i++)
            if (!Ls[i].big || dti == MS_F32)
                case_where(c, (ms_dtype)dti, &Ls[i], NF_NONE);
    layout Nf[8];
    int nnf = nonfinite_layouts(Nf);
    for (int dti = 0; dti < 2; dti++)
        for (int i = 0; i < nnf; i++)
            case_where(c, (ms_dtype)dti, &Nf[i], NF_ALL);
}

/* ------------------------------------------------------------------------ */
/* conv: conv2d, its data gradient and its weight gradient (ABI 1.1)          */
/* ------------------------------------------------------------------------ */

/* A candidate's 1.1 slot, or NULL when its table (ABI 1.0) ends before it. */
#define CONV_SLOT(b, slot) (MS_BACKEND_HAS_SLOT((b), slot) ? (b)->slot : NULL)

typedef struct conv_case {
    int64_t n, c, h, w, o, kh, kw, stride, padding;
    bool bias;
    nf_kind nf;   /* non-finite values scattered into ... */
    unsigned nf_ops; /* ... bit 0: the first operand, bit 1: the second (see case_conv) */
    bool nan_out;    /* outputs start as NaN instead of the sentinel */
} conv_case;

enum { CONV_FWD, CONV_BWD_DATA, CONV_BWD_WEIGHTS };

static ms_status conv_call(const ms_backend *b, int kind, ms_dtype dt, const ms_conv2d_desc *d,
                           const void *a0, const void *a1, const void *bias, void *out,
                           bool *have)
{
    switch (kind) {
    case CONV_FWD: {
        ms_status (*fn)(ms_dtype, const ms_conv2d_desc *, const void *, const void *,
                        const void *, void *) = CONV_SLOT(b, conv2d);
        *have = fn != NULL;
        return fn ? fn(dt, d, a0, a1, bias, out) : MS_ERR_UNSUPPORTED;
    }
    case CONV_BWD_DATA: {
        ms_status (*fn)(ms_dtype, const ms_conv2d_desc *, const void *, const void *, void *) =
            CONV_SLOT(b, conv2d_backward_data);
        *have = fn != NULL;
        return fn ? fn(dt, d, a0, a1, out) : MS_ERR_UNSUPPORTED;
    }
    default: {
        ms_status (*fn)(ms_dtype, const ms_conv2d_desc *, const void *, const void *, void *) =
            CONV_SLOT(b, conv2d_backward_weights);
        *have = fn != NULL;
        return fn ? fn(dt, d, a0, a1, out) : MS_ERR_UNSUPPORTED;
    }
    }
}

static ms_conv2d_desc conv_desc(const conv_case *k)
{
    ms_conv2d_desc d = {k->n, k->c, k->h, k->w, k->o, k->kh, k->kw, 0, 0, k->stride, k->padding};
    d.oh = (k->h + 2 * k->padding - k->kh) / k->stride + 1;
    d.ow = (k->w + 2 * k->padding - k->kw) / k->stride + 1;
    return d;
}

/* One kernel of one case.  Operands (a0, a1): forward (x, w), data gradient
 * (gy, w), weight gradient (x, gy).  The output has a guard zone on both
 * sides: GUARD elements before it and GUARD after, all GUARD_VALUE. */
static void case_conv_kernel(ctx *c, ms_dtype dt, const conv_case *k, int kind)
{
    static const char *const ops[] = {"conv2d", "conv2d_bwd_data", "conv2d_bwd_weights"};
    const ms_conv2d_desc d = conv_desc(k);
    conf_row *row = row_get(c, "conv", ops[kind], dt);
    const int64_t nx = d.n * d.c * d.h * d.w, nw = d.o * d.c * d.kh * d.kw;
    const int64_t ny = d.n * d.o * d.oh * d.ow;
    const int64_t n0 = kind == CONV_BWD_DATA ? ny : nx, n1 = kind == CONV_BWD_WEIGHTS ? ny : nw;
    const int64_t nout = kind == CONV_FWD ? ny : kind == CONV_BWD_DATA ? nx : nw;
    void *a0 = rand_buf(c, dt, n0, DOM_UNIT), *a1 = rand_buf(c, dt, n1, DOM_UNIT);
    void *bias = kind == CONV_FWD && k->bias ? rand_buf(c, dt, d.o, DOM_UNIT) : NULL;
    /* A few non-finite values per operand (about 4), so that most outputs
     * stay finite and the NaN positions say something. */
    if (k->nf_ops & 1u)
        scatter_nonfinite(dt, a0, n0, n0 / 4 > 11 ? n0 / 4 : 11, k->nf, 11);
    if (k->nf_ops & 2u)
        scatter_nonfinite(dt, a1, n1, n1 / 4 > 11 ? n1 / 4 : 11, k->nf, 12);
    /* Terms per output element. */
    const int64_t terms = kind == CONV_FWD ? d.c * d.kh * d.kw + (k->bias ? 1 : 0)
                          : kind == CONV_BWD_DATA ? d.o * d.kh * d.kw
                                                  : d.n * d.oh * d.ow;
    char desc[256];
    snprintf(desc, sizeof desc,
             "x (%lld,%lld,%lld,%lld) w (%lld,%lld,%lld,%lld) stride %lld padding %lld -> "
             "(%lld,%lld)%s%s%s%s%s", (long long)d.n, (long long)d.c, (long long)d.h,
             (long long)d.w, (long long)d.o, (long long)d.c, (long long)d.kh, (long long)d.kw,
             (long long)d.stride, (long long)d.padding, (long long)d.oh, (long long)d.ow,
             kind == CONV_FWD ? (k->bias ? ", bias" : ", no bias") : "", nf_label(k->nf),
             k->nf == NF_NONE ? "" : (k->nf_ops == 3 ? " (both operands)"
                                      : k->nf_ops == 1 ? (kind == CONV_BWD_DATA ? " (gy)" : " (x)")
                                      : (kind == CONV_BWD_WEIGHTS ? " (gy)" : " (w)")),
             k->nan_out ? ", output starts NaN" : "", "");
    double scale = 0;
    if (a0 && a1)
        scale = sqrt((double)terms) * rms(dt, a0, n0) * rms(dt, a1, n1);
    void *yr = NULL, *yc = NULL;
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    bool have = false;
    const size_t es = ms_dtype_size(dt);
    if (a0 && a1 && (bias || !(kind == CONV_FWD && k->bias)) &&
        out_pair(c, dt, nout + GUARD, NULL, k->nan_out, &yr, &yc)) {
        for (int64_t i = 0; i < GUARD; i++) {
            put(dt, yr, i, GUARD_VALUE);
            put(dt, yc, i, GUARD_VALUE);
        }
        bool ref_have;
        sr = conv_call(c->ref, kind, dt, &d, a0, a1, bias, (char *)yr + GUARD * es, &ref_have);
        sc = conv_call(c->cand, kind, dt, &d, a0, a1, bias, (char *)yc + GUARD * es, &have);
    } else {
        have = kind == CONV_FWD ? CONV_SLOT(c->cand, conv2d) != NULL
               : kind == CONV_BWD_DATA ? CONV_SLOT(c->cand, conv2d_backward_data) != NULL
                                       : CONV_SLOT(c->cand, conv2d_backward_weights) != NULL;
    }
    /* A write before the output's start is reported as such; the rest
     * (including the guard after the end) by the common comparison. */
    if (row && !c->oom && have && sc == MS_OK && sr == MS_OK && yc &&
        memcmp(yr, yc, GUARD * es) != 0) {
        row->cases++;
        row->native++;
        row_fail(row, "wrote before the start of its output (%s)", desc);
    } else {
        finish(c, row, sr, sc, have, dt, yr, yc, nout + 2 * GUARD,
               tol_for("conv", ops[kind], dt, (double)terms, scale), desc);
    }
    case_end(c);
}

static void case_conv(ctx *c, ms_dtype dt, const conv_case *k)
{
    const ms_conv2d_desc d = conv_desc(k);
    if (d.oh < 1 || d.ow < 1)
        return; /* the frontend refuses these */
    for (int kind = CONV_FWD; kind <= CONV_BWD_WEIGHTS; kind++)
        case_conv_kernel(c, dt, k, kind);
}

static void family_conv(ctx *c)
{
    static const int64_t kernels[][2] = {{1, 1}, {3, 3}, {2, 3}, {5, 5}};
    static const int64_t images[][2] = {{5, 5}, {7, 7}, {6, 9}, {9, 6}, {8, 8}, {11, 4}, {1, 1}};
    for (int dti = 0; dti < 2; dti++) {
        const ms_dtype dt = (ms_dtype)dti;
        /* The sweep: every kernel shape, stride and padding, with batch,
         * channels, filters and the image size cycling through their
         * ranges (the image sizes include odd, non-square and a window
         * that floors the output). */
        int idx = 0;
        for (size_t kk = 0; kk < sizeof kernels / sizeof *kernels; kk++)
            for (int64_t s = 1; s <= 3; s++)
                for (int64_t p = 0; p <= 2; p++) {
                    for (int rep = 0; rep < 2; rep++, idx++) {
                        const int64_t *im = images[(idx * 3 + rep) % 7];
                        conv_case k = {1 + idx % 3, 1 + (idx / 3) % 5, im[0], im[1],
                                       1 + (idx * 5 / 2) % 6, kernels[kk][0], kernels[kk][1],
                                       s, p, (idx % 2) == 0, NF_NONE, 0, (idx % 4) == 1};
                        case_conv(c, dt, &k);
                    }
                }
        /* Edge cases: the window exactly fits the image (1x1 output); a
         * kernel wider than the image, covered by padding; a stride whose
         * output floors (rows and columns no window reads: their data
         * gradient is 0); padding larger than half the kernel; 1x1 images. */
        const conv_case edges[] = {
            {2, 3, 5, 5, 4, 5, 5, 1, 0, true, NF_NONE, 0, false},
            {1, 2, 3, 4, 3, 3, 4, 1, 0, false, NF_NONE, 0, true},
            {2, 2, 3, 3, 3, 5, 5, 1, 1, true, NF_NONE, 0, false},
            {2, 3, 8, 8, 2, 3, 3, 3, 0, true, NF_NONE, 0, false},
            {1, 2, 10, 7, 3, 2, 2, 3, 0, false, NF_NONE, 0, true},
            {3, 1, 9, 11, 2, 3, 2, 2, 1, true, NF_NONE, 0, false},
            {2, 2, 4, 4, 2, 1, 1, 1, 2, true, NF_NONE, 0, false},
            {2, 2, 4, 4, 2, 3, 3, 2, 2, false, NF_NONE, 0, false},
            {3, 4, 1, 1, 5, 1, 1, 1, 0, true, NF_NONE, 0, false},
            {1, 1, 1, 1, 1, 3, 3, 1, 1, true, NF_NONE, 0, false},
        };
        for (size_t i = 0; i < sizeof edges / sizeof *edges; i++)
            case_conv(c, dt, &edges[i]);
        /* Large enough for oneDNN's default threshold (16384 x 16
         * multiply-adds): Conv4 layers, a strided 5x5 and a flooring one. */
        const conv_case big[] = {
            {5, 1, 28, 28, 32, 3, 3, 1, 1, true, NF_NONE, 0, false},
            {5, 32, 14, 14, 32, 3, 3, 1, 1, true, NF_NONE, 0, true},
            {3, 3, 28, 28, 8, 5, 5, 2, 2, false, NF_NONE, 0, false},
            {2, 8, 23, 17, 16, 3, 3, 3, 0, true, NF_NONE, 0, false},
            {4, 16, 7, 7, 24, 3, 3, 1, 1, false, NF_NONE, 0, false},
        };
        for (size_t i = 0; i < sizeof big / sizeof *big; i++)
            case_conv(c, dt, &big[i]);
        /* Non-finite values in either operand or both, with and without
         * padding, small and above oneDNN's default threshold.  A NaN or an
         * infinity reaches every output whose window covers it, and a
         * padded tap contributes nothing (0 times inf is not computed). */
        const conv_case nfs[] = {
            {2, 3, 7, 7, 4, 3, 3, 1, 0, true, NF_ALL, 0, false},
            {2, 3, 7, 7, 4, 3, 3, 1, 1, true, NF_ALL, 0, false},
            {2, 3, 9, 8, 4, 3, 2, 2, 2, false, NF_ALL, 0, false},
            {4, 8, 14, 14, 16, 3, 3, 1, 1, true, NF_ALL, 0, false},
            {4, 8, 15, 15, 16, 3, 3, 2, 0, true, NF_ALL, 0, false},
        };
        for (size_t i = 0; i < sizeof nfs / sizeof *nfs; i++)
            for (unsigned ops = 1; ops <= 3; ops++)
                for (int kind = 0; kind < 2; kind++) {
                    conv_case k = nfs[i];
                    k.nf_ops = ops;
                    k.nf = kind ? NF_INF : NF_ALL;
                    case_conv(c, dt, &k);
                }
    }
}

/* ------------------------------------------------------------------------ */
/* softmax                                                                    */
/* ------------------------------------------------------------------------ */

/* Non-finite softmax rows: row r (of outer*inner) gets pattern r % 8, or
 * with NF_NEG_INF one of the patterns without NaN or +inf that keep a finite
 * maximum (0, 4, 7). */
static void softmax_nonfinite_rows(ms_dtype dt, void *x, int64_t outer, int64_t len,
                                   int64_t inner, nf_kind nf)
{
    static const int neg_inf_only[3] = {0, 4, 7};
    const bool no_nan = nf != NF_ALL;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < inner; j++) {
            const int64_t r = o * inner + j, base = o * len * inner + j;
            const int64_t at = (r * 7 + 3) % len, at2 = (r * 3 + 1) % len;
            const int pattern = nf == NF_NEG_INF ? neg_inf_only[r % 3] : (int)(r % 8);
#define X(i) (base + (i) * inner)
            switch (pattern) {
            case 0: break; /* finite */
            case 1: /* a NaN: the row is NaN */
                put(dt, x, X(at), no_nan ? -INFINITY : (double)NAN);
                break;
            case 2: /* one +inf: the row is NaN (inf - inf) */
                put(dt, x, X(at), INFINITY);
                break;
            case 3: /* every entry -inf: NaN (-inf - -inf) */
                for (int64_t i = 0; i < len; i++)
                    put(dt, x, X(i), -INFINITY);
                break;
            case 4: /* some -inf: probability 0, log-probability -inf */
                for (int64_t i = at % 3; i < len; i += 3)
                    put(dt, x, X(i), -INFINITY);
                break;
            case 5: /* +inf and -inf */
                put(dt, x, X(at2), -INFINITY);
                put(dt, x, X(at), INFINITY);
                break;
            case 6: /* NaN among -inf */
                for (int64_t i = 0; i < len; i++)
                    put(dt, x, X(i), -INFINITY);
                if (!no_nan)
                    put(dt, x, X(at), (double)NAN);
                break;
            default: /* all but one -inf: that one gets probability 1 */
                for (int64_t i = 0; i < len; i++)
                    if (i != at)
                        put(dt, x, X(i), -INFINITY);
                break;
            }
#undef X
        }
}

static void case_softmax(ctx *c, ms_dtype dt, bool lg, int64_t outer, int64_t len,
                         int64_t inner, dom d, bool neg_inf, nf_kind nf)
{
    const char *name = lg ? "log_softmax" : "softmax";
    conf_row *row = row_get(c, "softmax", name, dt);
    const int64_t n = outer * len * inner;
    void *x = rand_buf(c, dt, n, d), *yr = NULL, *yc = NULL;
    if (x && neg_inf)
        for (int64_t i = 0; i < n; i += 5)
            put(dt, x, i, -INFINITY);
    if (x && nf != NF_NONE)
        softmax_nonfinite_rows(dt, x, outer, len, inner, nf);
    char desc[160];
    snprintf(desc, sizeof desc, "outer %lld len %lld inner %lld%s%s%s", (long long)outer,
             (long long)len, (long long)inner, d == DOM_HUGE ? ", inputs in [-100,100)" : "",
             neg_inf ? ", some -inf" : "",
             nf == NF_ALL       ? ", rows with NaN, +inf, -inf"
             : nf == NF_INF     ? ", rows with +inf, -inf"
             : nf == NF_NEG_INF ? ", rows with some -inf"
                                : "");
    ms_status sr = MS_ERR_NOMEM, sc = MS_ERR_NOMEM;
    if (x && out_pair(c, dt, n, NULL, false, &yr, &yc)) {
        sr = c->ref->softmax(dt, lg, outer, len, inner, x, yr);
        if (c->cand->softmax)
            sc = c->cand->softmax(dt, lg, outer, len, inner, x, yc);
    }
    finish(c, row, sr, sc, c->cand->softmax != NULL, dt, yr, yc, n + GUARD,
           tol_for("softmax", name, dt, (double)len, 0), desc);
    case_end(c);
}

static void family_softmax(ctx *c)
{
    static const int64_t shapes[][3] = {{1, 1, 1},  {1, 7, 1},  {5, 13, 1}, {3, 33, 4},
                                        {2, 1, 7},  {4, 10, 300}, {7, 3, 1}, {2, 1000, 1},
                                        {25, 5, 1}, {0, 4, 3}};
    for (int dti = 0; dti < 2; dti++) {
        for (int lg = 0; lg < 2; lg++) {
            ms_dtype dt = (ms_dtype)dti;
            for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
                case_softmax(c, dt, lg, shapes[i][0], shapes[i][1], shapes[i][2], DOM_WIDE,
                             false, NF_NONE);
            case_softmax(c, dt, lg, 5, 13, 1, DOM_HUGE, false, NF_NONE);
            case_softmax(c, dt, lg, 2, 6, 9, DOM_HUGE, false, NF_NONE);
            case_softmax(c, dt, lg, 3, 13, 4, DOM_WIDE, true, NF_NONE);
            case_softmax(c, dt, lg, 6, 11, 1, DOM_WIDE, true, NF_NONE);
            if (dt == MS_F32)
                case_softmax(c, dt, lg, 256, 4099, 1, DOM_WIDE, false, NF_NONE);
            /* Rows holding NaN, +inf, only -inf...; the last two cases
             * exceed oneDNN's default threshold. */
            static const int64_t nfs[][3] = {{16, 13, 1}, {1, 6, 1}, {3, 9, 5}, {2, 7, 300},
                                             {300, 61, 1}, {40, 50, 10}};
            for (int k = NF_ALL; k <= NF_NEG_INF; k++)
                for (size_t i = 0; i < sizeof nfs / sizeof *nfs; i++)
                    case_softmax(c, dt, lg, nfs[i][0], nfs[i][1], nfs[i][2], DOM_WIDE, false,
                                 (nf_kind)k);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* end to end: the ops of ops.h under each backend                           */
/* ------------------------------------------------------------------------ */

typedef ms_tensor *(*op_fn)(ms_tensor *const *x, ms_dtype dt);

#define U1(fn)                                                                                  \
    static ms_tensor *op_##fn(ms_tensor *const *x, ms_dtype dt)                                 \
    {                                                                                           \
        (void)dt;                                                                               \
        return ms_##fn(x[0]);                                                                   \
    }
#define B2(fn)                                                                                  \
    static ms_tensor *op_##fn(ms_tensor *const *x, ms_dtype dt)                                 \
    {                                                                                           \
        (void)dt;                                                                               \
        return ms_##fn(x[0], x[1]);                                                             \
    }
#define S1(fn, s)                                                                               \
    static ms_tensor *op_##fn##_s(ms_tensor *const *x, ms_dtype dt)                             \
    {                                                                                           \
        (void)dt;                                                                               \
        return ms_##fn(x[0], s);                                                                \
    }

U1(neg) U1(abs) U1(sign) U1(exp) U1(log) U1(sqrt) U1(square) U1(reciprocal) U1(tanh)
U1(sigmoid) U1(relu) U1(sin) U1(cos) U1(transpose)
B2(add) B2(sub) B2(mul) B2(div) B2(pow) B2(maximum) B2(minimum) B2(equal) B2(not_equal)
B2(less) B2(less_equal) B2(greater) B2(greater_equal) B2(matmul)
S1(add_scalar, 1.5) S1(sub_scalar, 0.25) S1(rsub_scalar, 2.0) S1(mul_scalar, -2.5)
S1(div_scalar, 3.0) S1(rdiv_scalar, 2.0) S1(pow_scalar, 2.5) S1(maximum_scalar, 0.1)
S1(minimum_scalar, 0.1)

static ms_tensor *op_pow_scalar2(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_pow_scalar(x[0], 2.0);
}

/* Reductions: all axes; axis 1; axes {0, 2} keeping dims; axis -1. */
#define RED4(fn)                                                                                \
    static ms_tensor *op_##fn##_all(ms_tensor *const *x, ms_dtype dt)                           \
    {                                                                                           \
        (void)dt;                                                                               \
        return ms_##fn(x[0], 0, NULL, false);                                                   \
    }                                                                                           \
    static ms_tensor *op_##fn##_1(ms_tensor *const *x, ms_dtype dt)                             \
    {                                                                                           \
        (void)dt;                                                                               \
        const int ax[] = {1};                                                                   \
        return ms_##fn(x[0], 1, ax, false);                                                     \
    }                                                                                           \
    static ms_tensor *op_##fn##_02k(ms_tensor *const *x, ms_dtype dt)                           \
    {                                                                                           \
        (void)dt;                                                                               \
        const int ax[] = {0, 2};                                                                \
        return ms_##fn(x[0], 2, ax, true);                                                      \
    }                                                                                           \
    static ms_tensor *op_##fn##_m1(ms_tensor *const *x, ms_dtype dt)                            \
    {                                                                                           \
        (void)dt;                                                                               \
        const int ax[] = {-1};                                                                  \
        return ms_##fn(x[0], 1, ax, false);                                                     \
    }
RED4(sum) RED4(mean) RED4(max) RED4(min)

static ms_tensor *op_permute(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    const int perm[] = {2, 0, 1};
    return ms_permute(x[0], perm);
}
static ms_tensor *op_concat(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_concat(2, x, 1);
}
static ms_tensor *op_stack(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_stack(2, x, 0);
}
static ms_tensor *op_slice(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_slice(x[0], 1, 1, 3);
}
static ms_tensor *op_slice_neg(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_slice(x[0], -1, -4, 100);
}
static ms_tensor *op_repeat(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_repeat(x[0], 2, 0);
}
static ms_tensor *op_broadcast_to(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    const int64_t shape[] = {2, 3, 4, 5};
    return ms_broadcast_to(x[0], 4, shape);
}
static ms_tensor *op_where(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_where(x[0], x[1], x[2]);
}
static ms_tensor *op_softmax_m1(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_softmax(x[0], -1);
}
static ms_tensor *op_softmax_0(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_softmax(x[0], 0);
}
static ms_tensor *op_log_softmax_m1(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_log_softmax(x[0], -1);
}
static ms_tensor *op_log_softmax_1(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_log_softmax(x[0], 1);
}
static ms_tensor *op_reshape(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    const int64_t shape[] = {12, -1};
    return ms_reshape(x[0], 2, shape);
}
static ms_tensor *op_expand_dims(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_expand_dims(x[0], 1);
}
static ms_tensor *op_squeeze(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_squeeze(x[0], MS_ALL_AXES);
}
static ms_tensor *op_full(ms_tensor *const *x, ms_dtype dt)
{
    (void)x;
    const int64_t shape[] = {3, 5};
    return ms_full(dt, 2, shape, -0.75);
}
static ms_tensor *op_arange(ms_tensor *const *x, ms_dtype dt)
{
    (void)x;
    return ms_arange(dt, -2.0, 3.3, 0.1);
}
static ms_tensor *op_linspace(ms_tensor *const *x, ms_dtype dt)
{
    (void)x;
    return ms_linspace(dt, -1.0, 2.0, 31);
}
static ms_tensor *op_eye(ms_tensor *const *x, ms_dtype dt)
{
    (void)x;
    return ms_eye(dt, 4, 6);
}
static ms_tensor *op_conv2d_s1p1(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_conv2d(x[0], x[1], x[2], 1, 1);
}
static ms_tensor *op_conv2d_s2p0(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_conv2d(x[0], x[1], NULL, 2, 0);
}
static ms_tensor *op_max_pool2d_k2s2(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_max_pool2d(x[0], 2, 2);
}
static ms_tensor *op_max_pool2d_k3s2(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_max_pool2d(x[0], 3, 2);
}
static ms_tensor *op_batch_norm(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_batch_norm(x[0], x[1], x[2], 1e-5);
}
static ms_tensor *op_softmax_cross_entropy(ms_tensor *const *x, ms_dtype dt)
{
    (void)dt;
    return ms_softmax_cross_entropy(x[0], x[1]);
}

#define SH(...) {__VA_ARGS__}
typedef struct op_spec {
    const char *name;  /* row name: ops/<name>, grad/<name> */
    const char *tol;   /* key in TOLERANCES */
    const char *label; /* the variant, for messages */
    op_fn fn;
    int nin;
    dom d[3];
    int nd[3];
    int64_t shape[3][4];
    unsigned diff;     /* differentiable inputs (bit i for input i); 0: not differentiable */
    int64_t accum;     /* terms per output, for accumulating ops */
} op_spec;

#define UN(n, tolk, dm, df) {#n, tolk, "(4,7)", op_##n, 1, {dm}, {2}, {SH(4, 7)}, df, 1}
#define BI(n, tolk, da, db, df)                                                                 \
    {#n, tolk, "(3,1,5) with (4,5)", op_##n, 2, {da, db}, {3, 2}, {SH(3, 1, 5), SH(4, 5)}, df, 1}
#define SC(n, tolk, dm) {#n, tolk, "(4,7)", op_##n##_s, 1, {dm}, {2}, {SH(4, 7)}, 1, 1}
#define RD(n, v, lab, acc)                                                                      \
    {#n, #n, lab, op_##n##_##v, 1, {DOM_ANY}, {3}, {SH(3, 4, 5)}, 1, acc}
#define MM(lab, nda, sa, ndb, sb, k)                                                            \
    {"matmul", "gemm", lab, op_matmul, 2, {DOM_ANY, DOM_ANY}, {nda, ndb}, {sa, sb}, 3, k}
#define L1(n, lab, ndx, sx, df) {#n, "copy", lab, op_##n, 1, {DOM_ANY}, {ndx}, {sx}, df, 1}

static const op_spec OPS[] = {
    UN(neg, "neg", DOM_ANY, 1), UN(abs, "abs", DOM_NONZERO, 1), UN(sign, "sign", DOM_NONZERO, 1),
    UN(exp, "exp", DOM_ANY, 1), UN(log, "log", DOM_POS, 1), UN(sqrt, "sqrt", DOM_POS, 1),
    UN(square, "square", DOM_ANY, 1), UN(reciprocal, "reciprocal", DOM_NONZERO, 1),
    UN(tanh, "tanh", DOM_ANY, 1), UN(sigmoid, "sigmoid", DOM_WIDE, 1),
    UN(relu, "relu", DOM_NONZERO, 1), UN(sin, "sin", DOM_WIDE, 1), UN(cos, "cos", DOM_WIDE, 1),
    BI(add, "add", DOM_ANY, DOM_ANY, 3), BI(sub, "sub", DOM_ANY, DOM_ANY, 3),
    BI(mul, "mul", DOM_ANY, DOM_ANY, 3), BI(div, "div", DOM_ANY, DOM_NONZERO, 3),
    BI(pow, "pow", DOM_POS, DOM_EXPONENT, 3), BI(maximum, "maximum", DOM_ANY, DOM_ANY, 3),
    BI(minimum, "minimum", DOM_ANY, DOM_ANY, 3), BI(equal, "equal", DOM_QUANT, DOM_QUANT, 0),
    BI(not_equal, "not_equal", DOM_QUANT, DOM_QUANT, 0),
    BI(less, "less", DOM_QUANT, DOM_QUANT, 0), BI(less_equal, "less_equal", DOM_QUANT, DOM_QUANT, 0),
    BI(greater, "greater", DOM_QUANT, DOM_QUANT, 0),
    BI(greater_equal, "greater_equal", DOM_QUANT, DOM_QUANT, 0),
    /* The scalar ops compose kernels; their keys are the tightest kernel they may use. */
    SC(add_scalar, "add", DOM_ANY), SC(sub_scalar, "sub", DOM_ANY),
    SC(rsub_scalar, "sub", DOM_ANY), SC(mul_scalar, "mul", DOM_ANY),
    SC(div_scalar, "div", DOM_ANY), SC(rdiv_scalar, "div", DOM_NONZERO),
    SC(pow_scalar, "pow", DOM_POS), SC(maximum_scalar, "maximum", DOM_NONZERO),
    SC(minimum_scalar, "minimum", DOM_NONZERO),
    {"pow_scalar", "pow", "(4,7) ** 2, negative bases", op_pow_scalar2, 1, {DOM_ANY}, {2},
     {SH(4, 7)}, 1, 1},
    RD(sum, all, "(3,4,5) all axes", 60), RD(sum, 1, "(3,4,5) axis 1", 4),
    RD(sum, 02k, "(3,4,5) axes 0,2 keepdims", 15), RD(sum, m1, "(3,4,5) axis -1", 5),
    RD(mean, all, "(3,4,5) all axes", 60), RD(mean, 1, "(3,4,5) axis 1", 4),
    RD(mean, 02k, "(3,4,5) axes 0,2 keepdims", 15), RD(mean, m1, "(3,4,5) axis -1", 5),
    RD(max, all, "(3,4,5) all axes", 60), RD(max, 1, "(3,4,5) axis 1", 4),
    RD(max, 02k, "(3,4,5) axes 0,2 keepdims", 15), RD(max, m1, "(3,4,5) axis -1", 5),
    RD(min, all, "(3,4,5) all axes", 60), RD(min, 1, "(3,4,5) axis 1", 4),
    RD(min, 02k, "(3,4,5) axes 0,2 keepdims", 15), RD(min, m1, "(3,4,5) axis -1", 5),
    MM("(3,4)@(4,5)", 2, SH(3, 4), 2, SH(4, 5), 4),
    MM("(2,3,4)@(4,5)", 3, SH(2, 3, 4), 2, SH(4, 5), 4),
    MM("(2,1,3,4)@(3,4,5)", 4, SH(2, 1, 3, 4), 3, SH(3, 4, 5), 4),
    MM("(4)@(4,5)", 1, SH(4), 2, SH(4, 5), 4), MM("(3,4)@(4)", 2, SH(3, 4), 1, SH(4), 4),
    MM("(7)@(7)", 1, SH(7), 1, SH(7), 7),
    MM("(10,40)@(40,40)", 2, SH(10, 40), 2, SH(40, 40), 40),
    L1(transpose, "(3,4,5)", 3, SH(3, 4, 5), 1), L1(permute, "(3,4,5) perm 2,0,1", 3, SH(3, 4, 5), 1),
    {"concat", "copy", "(3,4),(3,4) axis 1", op_concat, 2, {DOM_ANY, DOM_ANY}, {2, 2},
     {SH(3, 4), SH(3, 4)}, 3, 1},
    {"stack", "copy", "(3,4),(3,4) axis 0", op_stack, 2, {DOM_ANY, DOM_ANY}, {2, 2},
     {SH(3, 4), SH(3, 4)}, 3, 1},
    L1(slice, "(3,6) axis 1 [1,3)", 2, SH(3, 6), 1),
    {"slice", "copy", "(3,6) axis -1 [-4,100)", op_slice_neg, 1, {DOM_ANY}, {2}, {SH(3, 6)}, 1, 1},
    L1(repeat, "(3,4) x2 axis 0", 2, SH(3, 4), 1),
    L1(broadcast_to, "(3,1,5) to (2,3,4,5)", 3, SH(3, 1, 5), 1),
    L1(reshape, "(3,4,5) to (12,-1)", 3, SH(3, 4, 5), 1),
    L1(expand_dims, "(3,4) axis 1", 2, SH(3, 4), 1),
    L1(squeeze, "(3,1,4,1)", 4, SH(3, 1, 4, 1), 1),
    {"where", "where", "c (3,1,5) a (4,5) b (3,4,1)", op_where, 3,
     {DOM_COND, DOM_ANY, DOM_ANY}, {3, 2, 3}, {SH(3, 1, 5), SH(4, 5), SH(3, 4, 1)}, 6, 1},
    {"softmax", "softmax", "(3,4,5) axis -1", op_softmax_m1, 1, {DOM_WIDE}, {3},
     {SH(3, 4, 5)}, 1, 5},
    {"softmax", "softmax", "(3,4,5) axis 0", op_softmax_0, 1, {DOM_WIDE}, {3}, {SH(3, 4, 5)}, 1, 3},
    {"log_softmax", "log_softmax", "(3,4,5) axis -1", op_log_softmax_m1, 1, {DOM_WIDE}, {3},
     {SH(3, 4, 5)}, 1, 5},
    {"log_softmax", "log_softmax", "(3,4,5) axis 1", op_log_softmax_1, 1, {DOM_WIDE}, {3},
     {SH(3, 4, 5)}, 1, 4},
    {"full", "fill", "(3,5)", op_full, 0, {DOM_ANY}, {0}, {SH(0)}, 0, 1},
    {"arange", "arange", "[-2, 3.3) step 0.1", op_arange, 0, {DOM_ANY}, {0}, {SH(0)}, 0, 1},
    {"linspace", "arange", "-1..2 31 points", op_linspace, 0, {DOM_ANY}, {0}, {SH(0)}, 0, 1},
    {"eye", "fill", "4x6", op_eye, 0, {DOM_ANY}, {0}, {SH(0)}, 0, 1},
    /* the network layers (ABI 1.1 kernels underneath); the last field: terms per output */
    {"conv2d", "conv2d", "x (2,3,6,5) w (4,3,3,3) bias, stride 1 padding 1", op_conv2d_s1p1, 3,
     {DOM_ANY, DOM_ANY, DOM_ANY}, {4, 4, 1}, {SH(2, 3, 6, 5), SH(4, 3, 3, 3), SH(4)}, 7, 28},
    {"conv2d", "conv2d", "x (2,2,7,7) w (3,2,3,2), stride 2", op_conv2d_s2p0, 2,
     {DOM_ANY, DOM_ANY}, {4, 4}, {SH(2, 2, 7, 7), SH(3, 2, 3, 2)}, 3, 12},
    {"max_pool2d", "max", "(2,3,6,6) kernel 2 stride 2", op_max_pool2d_k2s2, 1, {DOM_ANY}, {4},
     {SH(2, 3, 6, 6)}, 1, 4},
    {"max_pool2d", "max", "(2,2,7,7) kernel 3 stride 2", op_max_pool2d_k3s2, 1, {DOM_ANY}, {4},
     {SH(2, 2, 7, 7)}, 1, 9},
    {"batch_norm", "batch_norm", "x (4,3,5,5)", op_batch_norm, 3, {DOM_ANY, DOM_POS, DOM_ANY},
     {4, 1, 1}, {SH(4, 3, 5, 5), SH(3), SH(3)}, 7, 100},
    {"batch_norm", "batch_norm", "x (6,4)", op_batch_norm, 3, {DOM_ANY, DOM_POS, DOM_ANY},
     {2, 1, 1}, {SH(6, 4), SH(4), SH(4)}, 7, 6},
    {"softmax_cross_entropy", "log_softmax", "(5,7), one-hot-like 0/1 targets",
     op_softmax_cross_entropy, 2, {DOM_WIDE, DOM_COND}, {2, 2}, {SH(5, 7), SH(5, 7)}, 3, 35},
};
#define NOPS ((int)(sizeof OPS / sizeof *OPS))

/* The result of one evaluation, copied out of its tensors. */
typedef struct result {
    int n;                       /* tensors */
    int nd[3];
    int64_t shape[3][MS_MAX_DIMS];
    int64_t numel[3];
    void *data[3];
    char error[256];
} result;

static void result_free(result *r)
{
    for (int i = 0; i < 3; i++)
        free(r->data[i]);
    memset(r, 0, sizeof *r);
}

static bool result_take(result *r, const ms_tensor *t)
{
    int i = r->n;
    if (!t || i >= 3)
        return false;
    r->nd[i] = ms_tensor_ndim(t);
    memcpy(r->shape[i], ms_tensor_shape(t), (size_t)r->nd[i] * sizeof(int64_t));
    r->numel[i] = ms_tensor_numel(t);
    size_t bytes = (size_t)r->numel[i] * ms_dtype_size(ms_tensor_dtype(t));
    r->data[i] = malloc(bytes ? bytes : 1);
    if (!r->data[i])
        return false;
    memcpy(r->data[i], ms_tensor_data(t), bytes);
    r->n++;
    return true;
}

static void result_error(result *r, const char *what)
{
    const char *msg = NULL;
    ms_status st = ms_last_error(&msg);
    snprintf(r->error, sizeof r->error, "%s: %s%s%s", what, ms_status_string(st),
             msg ? ": " : "", msg ? msg : "");
    ms_clear_error();
}

static void make_inputs(const op_spec *s, ms_dtype dt, uint64_t seed, ms_tensor **in)
{
    for (int i = 0; i < s->nin; i++) {
        int64_t n = numel_of(s->nd[i], s->shape[i]);
        dom d = s->d[i];
        double lo = d == DOM_POS ? 0.1 : d == DOM_WIDE ? -5 : d == DOM_COND ? 0 : -2;
        double hi = d == DOM_POS ? 4 : d == DOM_WIDE ? 5 : d == DOM_COND ? 1 : 2;
        in[i] = ms_random_uniform(dt, s->nd[i], s->shape[i], lo, hi, seed + (uint64_t)i);
        if (!in[i])
            continue;
        for (int64_t j = 0; j < n; j++) {
            double v = get(dt, ms_tensor_data(in[i]), j);
            if (d == DOM_NONZERO)
                v = v < 0 ? v - 0.1 : v + 0.1;
            else if (d == DOM_QUANT)
                v = round(v * 2) / 2;
            else if (d == DOM_COND)
                v = v < 0.5 ? 0.0 : 1.0;
            else
                continue;
            put(dt, ms_tensor_data(in[i]), j, v);
        }
    }
}

/* Forward on `backend`. */
static void run_forward(const char *backend, const op_spec *s, ms_dtype dt, ms_tensor *const *in,
                        result *r)
{
    memset(r, 0, sizeof *r);
    ms_clear_error();
    if (metastep_set_backend(backend) != MS_OK) {
        result_error(r, "metastep_set_backend");
        return;
    }
    ms_scope_push();
    ms_tensor *y = s->fn(in, dt);
    if (!y)
        result_error(r, "forward");
    else if (!result_take(r, y))
        snprintf(r->error, sizeof r->error, "out of memory");
    ms_scope_pop();
    metastep_unset_backend();
}

/* sum(op(x) * w): the scalar loss whose gradient is w pulled back through op. */
static ms_tensor *loss_of(const op_spec *s, ms_tensor *const *x, ms_tensor *w, ms_dtype dt)
{
    ms_tensor *y = s->fn(x, dt);
    return ms_sum(ms_mul(y, w), 0, NULL, false);
}

/* Gradients of the loss with respect to the differentiable inputs, on `backend`. */
static void run_grad(const char *backend, const op_spec *s, ms_dtype dt, ms_tensor *const *in,
                     ms_tensor *w, result *r)
{
    memset(r, 0, sizeof *r);
    ms_clear_error();
    if (metastep_set_backend(backend) != MS_OK) {
        result_error(r, "metastep_set_backend");
        return;
    }
    ms_scope_push();
    ms_tensor *x[3] = {NULL, NULL, NULL};
    ms_container *wrt = ms_container_new(), *grads = NULL;
    for (int i = 0; i < s->nin; i++) {
        x[i] = (s->diff & (1u << i)) ? ms_variable(in[i]) : in[i];
        if (s->diff & (1u << i)) {
            char key[16];
            snprintf(key, sizeof key, "x%d", i);
            ms_container_set(wrt, key, x[i]);
        }
    }
    ms_tensor *loss = loss_of(s, x, w, dt);
    if (!loss) {
        result_error(r, "forward");
    } else if (ms_grad(loss, wrt, false, &grads) != MS_OK) {
        result_error(r, "ms_grad");
    } else {
        for (int i = 0; i < ms_container_size(grads); i++)
            if (!result_take(r, ms_container_at(grads, i))) {
                result_error(r, "gradient");
                break;
            }
    }
    ms_container_release(grads);
    ms_container_release(wrt);
    ms_scope_pop();
    metastep_unset_backend();
}

/* Central differences of the loss on `backend` (float64), shaped like run_grad's. */
static void run_fd(const char *backend, const op_spec *s, ms_dtype dt, ms_tensor *const *in,
                   ms_tensor *w, result *r)
{
    memset(r, 0, sizeof *r);
    ms_clear_error();
    if (metastep_set_backend(backend) != MS_OK) {
        result_error(r, "metastep_set_backend");
        return;
    }
    ms_no_grad_push();
    for (int i = 0; i < s->nin && !r->error[0]; i++) {
        if (!(s->diff & (1u << i)))
            continue;
        ms_scope_push();
        ms_tensor *x[3] = {in[0], in[1], in[2]};
        x[i] = ms_copy(in[i]);
        ms_tensor *g = ms_zeros(dt, ms_tensor_ndim(in[i]), ms_tensor_shape(in[i]));
        if (!x[i] || !g) {
            result_error(r, "ms_copy");
        } else {
            double *xv = ms_tensor_data(x[i]), *gv = ms_tensor_data(g);
            for (int64_t j = 0; j < ms_tensor_numel(x[i]) && !r->error[0]; j++) {
                const double x0 = xv[j], h = 1e-6 * (fabs(x0) > 1 ? fabs(x0) : 1);
                double l[2];
                for (int k = 0; k < 2; k++) {
                    xv[j] = x0 + (k ? -h : h);
                    ms_scope_push();
                    ms_tensor *loss = loss_of(s, x, w, dt);
                    l[k] = loss ? ms_tensor_item(loss) : NAN;
                    if (!loss)
                        result_error(r, "forward");
                    ms_scope_pop();
                }
                xv[j] = x0;
                gv[j] = (l[0] - l[1]) / (2 * h);
            }
            if (!r->error[0])
                result_take(r, g);
        }
        ms_scope_pop();
    }
    ms_no_grad_pop();
    metastep_unset_backend();
}

/* Compare two results tensor by tensor into row. */
static void compare_results(conf_row *row, const result *rr, const result *rc, ms_dtype dt,
                            const char *family, const op_spec *s)
{
    row->cases++;
    row->native++;
    if (rr->error[0]) {
        row_fail(row, "on the reference backend: %s (%s)", rr->error, s->label);
        return;
    }
    if (rc->error[0]) {
        row_fail(row, "%s (%s)", rc->error, s->label);
        return;
    }
    if (rr->n != rc->n) {
        row_fail(row, "%d results, reference %d (%s)", rc->n, rr->n, s->label);
        return;
    }
    for (int i = 0; i < rr->n; i++) {
        char a[96], b[96];
        fmt_dims(a, sizeof a, rc->nd[i], rc->shape[i]);
        fmt_dims(b, sizeof b, rr->nd[i], rr->shape[i]);
        if (strcmp(a, b) != 0) {
            row_fail(row, "shape %s, reference %s (%s)", a, b, s->label);
            return;
        }
        double scale = rms(dt, rr->data[i], rr->numel[i]);
        tol t = tol_for(family, s->tol, dt, (double)s->accum, scale);
        int64_t at;
        double err = compare(dt, rr->data[i], rc->data[i], rr->numel[i], t, &at);
        row_error(row, err, t);
        if (!within(err, t)) {
            row_fail(row, "%serror %.3g > tol %.3g at element %lld: got %.9g, ref %.9g (%s)",
                     rr->n > 1 ? (i ? "input 1: " : "input 0: ") : "", err, t.rtol,
                     (long long)at, get(dt, rc->data[i], at), get(dt, rr->data[i], at), s->label);
            return;
        }
    }
}

static void family_ops(ctx *c, const char *family)
{
    const bool fwd = strcmp(family, "ops") == 0, fd = strcmp(family, "gradcheck") == 0;
    for (int dti = 0; dti < 2; dti++) {
        ms_dtype dt = (ms_dtype)dti;
        if (!fwd && dt != (fd ? MS_F64 : MS_F32))
            continue; /* grad: float32 candidate vs ref; gradcheck: float64 vs differences */
        for (int i = 0; i < NOPS; i++) {
            const op_spec *s = &OPS[i];
            if (!fwd && !s->diff)
                continue;
            conf_row *row = row_get(c, family, s->name, dt);
            if (!row)
                return;
            ms_tensor *in[3] = {NULL, NULL, NULL};
            make_inputs(s, dt, 1000 + 10 * (uint64_t)i, in);
            result rr, rc;
            if (fwd) {
                run_forward("ref", s, dt, in, &rr);
                run_forward(c->cand_name, s, dt, in, &rc);
            } else {
                /* w: fixed random weights of the output's shape */
                result shape;
                run_forward("ref", s, dt, in, &shape);
                ms_tensor *w = shape.error[0] ? NULL
                                              : ms_random_normal(dt, shape.nd[0], shape.shape[0],
                                                                 0, 1, 77 + (uint64_t)i);
                result_free(&shape);
                if (fd) {
                    run_grad(c->cand_name, s, dt, in, w, &rc);
                    run_fd(c->cand_name, s, dt, in, w, &rr);
                } else {
                    run_grad("ref", s, dt, in, w, &rr);
                    run_grad(c->cand_name, s, dt, in, w, &rc);
                }
                ms_release(w);
            }
            compare_results(row, &rr, &rc, dt, family, s);
            result_free(&rr);
            result_free(&rc);
            for (int k = 0; k < 3; k++)
                ms_release(in[k]);
            ms_clear_error();
        }
    }
}


/* ------------------------------------------------------------------------ */
/* threads: kernels must be safe to call from several threads at once        */
/* ------------------------------------------------------------------------ */

#define NTHREADS 4
#define THREAD_ITERS 8

typedef enum tkind {
    TK_TANH, TK_ADD, TK_GEMM, TK_SUM, TK_SOFTMAX,
    TK_CONV, TK_CONV_BWD_DATA, TK_CONV_BWD_WEIGHTS, /* ABI 1.1 slots, through CONV_SLOT */
    TK_COUNT
} tkind;
static const char *const TK_NAMES[] = {"tanh", "add", "gemm", "sum", "softmax",
                                       "conv2d", "conv2d_bwd_data", "conv2d_bwd_weights"};

/* The threads family's convolution of size parameter s (3..6): above
 * oneDNN's default threshold, stride 1 or 2, padding 1. */
static ms_conv2d_desc tjob_conv_desc(int64_t s)
{
    conv_case k = {2, 8, 12 + s, 11 + s, 16, 3, 3, 1 + s % 2, 1, true, NF_NONE, 0, false};
    return conv_desc(&k);
}

/* One kernel call with its inputs and the reference's output; each thread
 * has its own jobs, with shapes that differ between threads so that a
 * backend's caches of per-shape state are created concurrently too. */
typedef struct tjob {
    tkind kind;
    ms_dtype dt;
    int64_t s; /* the size parameter */
    void *a, *b, *bias, *ref, *out;
    int64_t nout;
    tol t;
    /* results */
    bool fallback;
    ms_status st;
    double worst;
    int64_t at;
} tjob;

typedef struct tthread {
    const ms_backend *cand;
    tjob jobs[TK_COUNT];
} tthread;

static ms_status tjob_call(const ms_backend *b, tjob *j, void *out, bool *have)
{
    const int64_t s = j->s;
    switch (j->kind) {
    case TK_TANH:
        *have = b->unary != NULL;
        return *have ? b->unary(MS_UNARY_TANH, j->dt, 37 * s, j->a, out) : MS_ERR_UNSUPPORTED;
    case TK_ADD: {
        const int64_t shape[3] = {s, 6, 7}, sa[3] = {42, 7, 1}, sb[3] = {0, 1, 6};
        *have = b->binary != NULL;
        return *have ? b->binary(MS_BINARY_ADD, j->dt, 3, shape, j->a, sa, j->b, sb, out)
                     : MS_ERR_UNSUPPORTED;
    }
    case TK_GEMM:
        *have = b->gemm != NULL;
        return *have ? b->gemm(j->dt, false, s % 2, 2, s, s + 1, s + 2, 1.0, j->a, s + 2,
                               s * (s + 2), j->b, s % 2 ? s + 2 : s + 1, 0, 0.0, out, s + 1,
                               s * (s + 1))
                     : MS_ERR_UNSUPPORTED;
    case TK_SUM: {
        const int64_t shape[2] = {s, 300};
        *have = b->reduce != NULL;
        return *have ? b->reduce(MS_REDUCE_SUM, j->dt, 2, shape, 2u, j->a, out)
                     : MS_ERR_UNSUPPORTED;
    }
    case TK_SOFTMAX:
        *have = b->softmax != NULL;
        return *have ? b->softmax(j->dt, false, s, 5 + s % 3, 1, j->a, out) : MS_ERR_UNSUPPORTED;
    case TK_CONV:
    case TK_CONV_BWD_DATA:
    case TK_CONV_BWD_WEIGHTS: {
        const ms_conv2d_desc d = tjob_conv_desc(s);
        return conv_call(b, CONV_FWD + (int)(j->kind - TK_CONV), j->dt, &d, j->a, j->b, j->bias,
                         out, have);
    }
    default: *have = false; return MS_ERR_UNSUPPORTED;
    }
}

static void *tthread_main(void *arg)
{
    tthread *t = arg;
    for (int it = 0; it < THREAD_ITERS; it++) {
        for (int k = 0; k < TK_COUNT; k++) {
            tjob *j = &t->jobs[k];
            if (j->fallback || j->st != MS_OK)
                continue;
            bool have;
            ms_status st = tjob_call(t->cand, j, j->out, &have);
            if (!have || st == MS_ERR_UNSUPPORTED) {
                j->fallback = true;
                continue;
            }
            if (st != MS_OK) {
                j->st = st;
                continue;
            }
            int64_t at;
            double e = compare(j->dt, j->ref, j->out, j->nout + GUARD, j->t, &at);
            if (e > j->worst || isnan(e)) {
                j->worst = e;
                j->at = at;
            }
        }
    }
    return NULL;
}

static void family_threads(ctx *c)
{
    for (int dti = 0; dti < 2; dti++) {
        ms_dtype dt = (ms_dtype)dti;
        tthread th[NTHREADS];
        memset(th, 0, sizeof th);
        for (int i = 0; i < NTHREADS; i++) {
            th[i].cand = c->cand;
            for (int k = 0; k < TK_COUNT; k++) {
                tjob *j = &th[i].jobs[k];
                j->kind = (tkind)k;
                j->dt = dt;
                j->s = (k == TK_GEMM ? 30 : 3) + i;
                const int64_t s = j->s;
                int64_t na = 0, nb = 0;
                double n = 1;
                switch (j->kind) {
                case TK_TANH: na = j->nout = 37 * s; break;
                case TK_ADD: na = s * 42, nb = 42, j->nout = s * 42; break;
                case TK_GEMM:
                    na = 2 * s * (s + 2), nb = (s + 2) * (s + 2), j->nout = 2 * s * (s + 1);
                    n = (double)(s + 2);
                    break;
                case TK_SUM: na = s * 300, j->nout = s, n = 300; break;
                case TK_SOFTMAX: na = j->nout = s * (5 + s % 3); n = 5 + (double)(s % 3); break;
                case TK_CONV:
                case TK_CONV_BWD_DATA:
                case TK_CONV_BWD_WEIGHTS: {
                    const ms_conv2d_desc d = tjob_conv_desc(s);
                    const int64_t nx = d.n * d.c * d.h * d.w, nw = d.o * d.c * d.kh * d.kw;
                    const int64_t ny = d.n * d.o * d.oh * d.ow;
                    na = j->kind == TK_CONV_BWD_DATA ? ny : nx;
                    nb = j->kind == TK_CONV_BWD_WEIGHTS ? ny : nw;
                    j->nout = j->kind == TK_CONV ? ny : j->kind == TK_CONV_BWD_DATA ? nx : nw;
                    n = j->kind == TK_CONV ? (double)(d.c * d.kh * d.kw + 1)
                        : j->kind == TK_CONV_BWD_DATA ? (double)(d.o * d.kh * d.kw)
                                                      : (double)(d.n * d.oh * d.ow);
                    if (j->kind == TK_CONV)
                        j->bias = rand_buf(c, dt, d.o, DOM_UNIT);
                    break;
                }
                default: break;
                }
                j->a = rand_buf(c, dt, na, DOM_UNIT);
                j->b = rand_buf(c, dt, nb, DOM_UNIT);
                if (!out_pair(c, dt, j->nout, NULL, false, &j->ref, &j->out) || !j->a || !j->b) {
                    j->st = MS_ERR_NOMEM;
                    continue;
                }
                double scale = j->kind == TK_GEMM || j->kind >= TK_CONV ? sqrt(n) / 3
                               : j->kind == TK_SUM ? sqrt(n / 3) : 0;
                const char *key = j->kind == TK_GEMM ? "gemm" : TK_NAMES[k];
                j->t = tol_for("threads", key, dt, n, scale);
                bool have;
                j->st = tjob_call(c->ref, j, j->ref, &have);
            }
        }
        pthread_t tid[NTHREADS];
        bool started[NTHREADS] = {false};
        for (int i = 0; i < NTHREADS; i++)
            started[i] = pthread_create(&tid[i], NULL, tthread_main, &th[i]) == 0;
        for (int i = 0; i < NTHREADS; i++)
            if (started[i])
                pthread_join(tid[i], NULL);
            else
                tthread_main(&th[i]);
        for (int k = 0; k < TK_COUNT; k++) {
            conf_row *row = row_get(c, "threads", TK_NAMES[k], dt);
            if (!row)
                break;
            for (int i = 0; i < NTHREADS; i++) {
                tjob *j = &th[i].jobs[k];
                char desc[96];
                snprintf(desc, sizeof desc, "%d threads x %d calls, thread %d size %lld",
                         NTHREADS, THREAD_ITERS, i, (long long)j->s);
                row->cases++;
                if (j->fallback) {
                    row->fallback++;
                    continue;
                }
                row->native++;
                if (j->st != MS_OK) {
                    row_fail(row, "returned '%s' (%s)", ms_status_string(j->st), desc);
                    continue;
                }
                row_error(row, j->worst, j->t);
                if (!within(j->worst, j->t))
                    row_fail(row, "error %.3g > tol %.3g at element %lld: got %.9g, ref %.9g (%s)",
                             j->worst, j->t.rtol, (long long)j->at, get(dt, j->out, j->at),
                             get(dt, j->ref, j->at), desc);
            }
        }
        case_end(c);
    }
}

/* ------------------------------------------------------------------------ */
/* driver                                                                     */
/* ------------------------------------------------------------------------ */

static bool selected(const char *const *families, const char *f)
{
    if (!families)
        return true;
    for (; *families; families++)
        if (strcmp(*families, f) == 0)
            return true;
    return false;
}

conf_report *conf_run(const char *backend, const char *const *families)
{
    conf_report *rep = calloc(1, sizeof *rep);
    if (!rep)
        return NULL;
    snprintf(rep->backend, sizeof rep->backend, "%s", backend ? backend : "(null)");
    ctx c = {0};
    c.rep = rep;
    c.cand_name = backend;
    ms_clear_error();
    const char *msg = NULL;
    if (!backend || metastep_load_backend(backend, &c.cand) != MS_OK) {
        ms_last_error(&msg);
        snprintf(rep->error, sizeof rep->error, "cannot load backend '%s': %s", rep->backend,
                 msg ? msg : "unknown error");
        ms_clear_error();
        return rep;
    }
    if (metastep_load_backend("ref", &c.ref) != MS_OK) {
        ms_last_error(&msg);
        snprintf(rep->error, sizeof rep->error, "cannot load the reference backend: %s",
                 msg ? msg : "unknown error");
        ms_clear_error();
        return rep;
    }
    snprintf(rep->name, sizeof rep->name, "%s", c.cand->header.name);
    snprintf(rep->description, sizeof rep->description, "%s", c.cand->header.description);

    static void (*const kernel_families[])(ctx *) = {
        family_unary, family_binary, family_reduce, family_gemm,  family_copy,
        family_softmax, family_fill, family_arange, family_where};
    for (int f = 0; f < conf_family_count; f++) {
        if (!selected(families, conf_families[f]))
            continue;
        c.seed = 1 + 100000 * (uint64_t)f; /* the same inputs whether run alone or not */
        if (f < (int)(sizeof kernel_families / sizeof *kernel_families))
            kernel_families[f](&c);
        else if (strcmp(conf_families[f], "threads") == 0)
            family_threads(&c);
        else if (strcmp(conf_families[f], "conv") == 0)
            family_conv(&c);
        else
            family_ops(&c, conf_families[f]);
        case_end(&c);
    }
    free(c.allocs);
    if (c.oom)
        snprintf(rep->error, sizeof rep->error, "out of memory");
    for (int i = 0; i < rep->nrows; i++)
        rep->failed_rows += rep->rows[i].failed > 0;
    return rep;
}

int conf_failures(const conf_report *r)
{
    if (!r)
        return 1;
    return r->failed_rows + (r->error[0] != 0);
}

static void served(const conf_row *row, char *buf, size_t cap)
{
    if (strcmp(row->family, "ops") == 0 || strcmp(row->family, "grad") == 0 ||
        strcmp(row->family, "gradcheck") == 0)
        snprintf(buf, cap, "end to end");
    else if (row->fallback == 0)
        snprintf(buf, cap, "native");
    else if (row->native == 0)
        snprintf(buf, cap, "fallback");
    else
        snprintf(buf, cap, "native %d/%d", row->native, row->cases);
}

void conf_print(FILE *f, const conf_report *r, bool quiet)
{
    if (!r)
        return;
    fprintf(f, "conformance of backend '%s'", r->backend);
    if (r->name[0] && strcmp(r->name, r->backend) != 0)
        fprintf(f, " (%s)", r->name);
    fprintf(f, " against 'ref'\n");
    if (r->description[0])
        fprintf(f, "  %s\n", r->description);
    if (r->error[0]) {
        fprintf(f, "error: %s\n", r->error);
        if (!r->nrows)
            return;
    }
    fprintf(f, "\n%-34s %6s %10s %10s  %-14s %s\n", "kernel", "cases", "worst err", "tol",
             "served", "result");
    int cases = 0, native = 0, fallback = 0;
    for (int i = 0; i < r->nrows; i++) {
        const conf_row *row = &r->rows[i];
        cases += row->cases;
        native += row->native;
        fallback += row->fallback;
        if (quiet && !row->failed)
            continue;
        char sv[32], err[16], tl[16];
        served(row, sv, sizeof sv);
        if (row->native == 0)
            snprintf(err, sizeof err, "-");
        else
            snprintf(err, sizeof err, "%.2g", row->worst);
        if (row->native == 0)
            snprintf(tl, sizeof tl, "-");
        else if (row->worst_tol == 0)
            snprintf(tl, sizeof tl, "exact");
        else
            snprintf(tl, sizeof tl, "%.2g", row->worst_tol);
        fprintf(f, "%-34s %6d %10s %10s  %-14s %s\n", row->kernel, row->cases, err, tl, sv,
                row->failed ? "FAIL" : "ok");
    }
    fprintf(f, "\n%d kernels, %d cases (%d native, %d fallback): %d kernel%s failed\n", r->nrows,
            cases, native, fallback, r->failed_rows, r->failed_rows == 1 ? "" : "s");
    for (int i = 0; i < r->nrows; i++) {
        const conf_row *row = &r->rows[i];
        if (row->failed)
            fprintf(f, "FAIL %s: %d of %d cases; first: %s\n", row->kernel, row->failed,
                    row->cases, row->first_failure);
    }
}

void conf_free(conf_report *r)
{
    if (!r)
        return;
    free(r->rows);
    free(r);
}
