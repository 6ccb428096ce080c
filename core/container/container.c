/* Containers: flat, insertion-ordered maps from '/'-separated key chains to
 * tensors, mirroring ivy.Container.  A container holds one reference to each
 * of its tensors and is never owned by a scope. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "container/container.h"

struct ms_container {
    int n, cap;
    char **keys;
    ms_tensor **vals;
};

/* ------------------------------------------------------------------------ */
/* helpers                                                                  */

static int find_key(const ms_container *c, const char *key)
{
    for (int i = 0; i < c->n; i++)
        if (strcmp(c->keys[i], key) == 0)
            return i;
    return -1;
}

/* Whether `key` is `chain` itself or lies in the subtree named by `chain`. */
static bool chain_selects(const char *chain, const char *key)
{
    size_t len = strlen(chain);
    return strncmp(key, chain, len) == 0 && (key[len] == '\0' || key[len] == '/');
}

/* Whether one chain is a strict prefix-subtree of the other ("a" vs "a/b"). */
static bool chains_conflict(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la == lb)
        return false;
    if (la < lb)
        return strncmp(a, b, la) == 0 && b[la] == '/';
    return strncmp(a, b, lb) == 0 && a[lb] == '/';
}

static bool valid_chain(const char *k)
{
    size_t len = strlen(k);
    if (len == 0 || k[0] == '/' || k[len - 1] == '/' || strstr(k, "//"))
        return false;
    return true;
}

static bool reserve(ms_container *c, int need)
{
    if (need <= c->cap)
        return true;
    if (need > INT_MAX / 2)
        return false;
    int cap = c->cap ? c->cap : 8;
    while (cap < need)
        cap *= 2;
    char **k = realloc(c->keys, (size_t)cap * sizeof *k);
    if (!k)
        return false;
    c->keys = k;
    ms_tensor **v = realloc(c->vals, (size_t)cap * sizeof *v);
    if (!v)
        return false;
    c->vals = v;
    c->cap = cap;
    return true;
}

/* Append without validation (the chain is known to be valid and new);
 * retains t. */
static ms_status push(ms_container *c, const char *fn, const char *key, ms_tensor *t)
{
    if (!reserve(c, c->n + 1))
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory growing a container", fn);
    char *k = strdup(key);
    if (!k)
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory copying key chain", fn);
    c->keys[c->n] = k;
    c->vals[c->n] = ms_retain(t);
    c->n++;
    return MS_OK;
}

/* Store a tensor an op just returned: the container retains it, and when no
 * scope is open the op's reference is dropped so the container is the sole
 * owner (a scope keeps its own reference and drops it at pop). */
ms_status ms__container_adopt(ms_container *c, const char *fn, const char *key, ms_tensor *t)
{
    if (!t) {
        /* The op recorded why (this is only recorded if it did not). */
        return ms__fail(MS_ERR_NULL_ARG, "%s: computing key chain '%s' failed", fn, key);
    }
    ms_status st = ms_container_set(c, key, t);
    if (ms_scope_depth() == 0)
        ms_release(t);
    return st;
}

static ms_container *new_or_fail(const char *fn)
{
    ms_container *c = calloc(1, sizeof *c);
    if (!c)
        ms__fail(MS_ERR_NOMEM, "%s: out of memory allocating a container", fn);
    return c;
}

/* MS_OK when a and b hold the same set of key chains; otherwise MS_ERR_KEY
 * naming the first chain missing from either side. */
static ms_status same_keys(const char *fn, const ms_container *a, const ms_container *b,
                           const char *na, const char *nb)
{
    for (int i = 0; i < a->n; i++)
        if (find_key(b, a->keys[i]) < 0)
            return ms__fail(MS_ERR_KEY, "%s: key chain '%s' is in %s but not in %s", fn,
                            a->keys[i], na, nb);
    for (int i = 0; i < b->n; i++)
        if (find_key(a, b->keys[i]) < 0)
            return ms__fail(MS_ERR_KEY, "%s: key chain '%s' is in %s but not in %s", fn,
                            b->keys[i], nb, na);
    return MS_OK;
}

/* ------------------------------------------------------------------------ */
/* basics                                                                   */

ms_container *ms_container_new(void)
{
    return new_or_fail("ms_container_new");
}

void ms_container_release(ms_container *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->n; i++) {
        free(c->keys[i]);
        ms_release(c->vals[i]);
    }
    free(c->keys);
    free(c->vals);
    free(c);
}

ms_container *ms_container_copy(const ms_container *c)
{
    static const char fn[] = "ms_container_copy";
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
        return NULL;
    }
    ms_container *r = new_or_fail(fn);
    if (!r)
        return NULL;
    for (int i = 0; i < c->n; i++)
        if (push(r, fn, c->keys[i], c->vals[i]) != MS_OK) {
            ms_container_release(r);
            return NULL;
        }
    return r;
}

ms_status ms_container_set(ms_container *c, const char *key_chain, ms_tensor *t)
{
    static const char fn[] = "ms_container_set";
    if (!c)
        return ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
    if (!key_chain)
        return ms__fail(MS_ERR_NULL_ARG, "%s: key chain is NULL", fn);
    if (!valid_chain(key_chain))
        return ms__fail(MS_ERR_KEY,
                        "%s: invalid key chain '%s' (empty, or an empty component: "
                        "leading/trailing '/' or '//')",
                        fn, key_chain);
    if (!t)
        return ms__fail(MS_ERR_NULL_ARG, "%s: tensor for key chain '%s' is NULL", fn,
                        key_chain);
    if (!ms__check(fn, t, "t"))
        return ms__fail(MS_ERR_INVALID_ARG, "%s: invalid tensor for key chain '%s'", fn,
                        key_chain);
    for (int i = 0; i < c->n; i++) {
        if (strcmp(c->keys[i], key_chain) == 0) {
            ms_retain(t);
            ms_release(c->vals[i]);
            c->vals[i] = t;
            return MS_OK;
        }
        if (chains_conflict(c->keys[i], key_chain))
            return ms__fail(MS_ERR_KEY,
                            "%s: key chain '%s' conflicts with existing key chain '%s' "
                            "(a leaf cannot also be a subtree)",
                            fn, key_chain, c->keys[i]);
    }
    return push(c, fn, key_chain, t);
}

ms_tensor *ms_container_get(const ms_container *c, const char *key_chain)
{
    static const char fn[] = "ms_container_get";
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
        return NULL;
    }
    if (!key_chain) {
        ms__fail(MS_ERR_NULL_ARG, "%s: key chain is NULL", fn);
        return NULL;
    }
    int i = find_key(c, key_chain);
    if (i < 0) {
        ms__fail(MS_ERR_KEY, "%s: no leaf at key chain '%s'", fn, key_chain);
        return NULL;
    }
    return c->vals[i];
}

bool ms_container_has(const ms_container *c, const char *key_chain)
{
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "ms_container_has: container is NULL");
        return false;
    }
    if (!key_chain) {
        ms__fail(MS_ERR_NULL_ARG, "ms_container_has: key chain is NULL");
        return false;
    }
    return find_key(c, key_chain) >= 0;
}

int ms_container_size(const ms_container *c)
{
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "ms_container_size: container is NULL");
        return 0;
    }
    return c->n;
}

const char *ms_container_key(const ms_container *c, int i)
{
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "ms_container_key: container is NULL");
        return NULL;
    }
    if (i < 0 || i >= c->n)
        return NULL;
    return c->keys[i];
}

ms_tensor *ms_container_at(const ms_container *c, int i)
{
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "ms_container_at: container is NULL");
        return NULL;
    }
    if (i < 0 || i >= c->n)
        return NULL;
    return c->vals[i];
}

/* ------------------------------------------------------------------------ */
/* selection                                                                */

static ms_container *select_chains(const char *fn, const ms_container *c,
                                   const char *const *chains, bool keep)
{
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
        return NULL;
    }
    if (!chains) {
        ms__fail(MS_ERR_NULL_ARG, "%s: key chain list is NULL", fn);
        return NULL;
    }
    for (const char *const *p = chains; *p; p++) {
        bool found = false;
        for (int i = 0; i < c->n && !found; i++)
            found = chain_selects(*p, c->keys[i]);
        if (!found) {
            ms__fail(MS_ERR_KEY, "%s: key chain '%s' matches no leaf or subtree", fn, *p);
            return NULL;
        }
    }
    ms_container *r = new_or_fail(fn);
    if (!r)
        return NULL;
    for (int i = 0; i < c->n; i++) {
        bool sel = false;
        for (const char *const *p = chains; *p && !sel; p++)
            sel = chain_selects(*p, c->keys[i]);
        if (sel == keep && push(r, fn, c->keys[i], c->vals[i]) != MS_OK) {
            ms_container_release(r);
            return NULL;
        }
    }
    return r;
}

ms_container *ms_container_at_key_chains(const ms_container *c, const char *const *chains)
{
    return select_chains("ms_container_at_key_chains", c, chains, true);
}

ms_container *ms_container_prune_key_chains(const ms_container *c, const char *const *chains)
{
    return select_chains("ms_container_prune_key_chains", c, chains, false);
}

ms_container *ms_container_set_at_key_chains(const ms_container *c, const ms_container *values)
{
    static const char fn[] = "ms_container_set_at_key_chains";
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
        return NULL;
    }
    if (!values) {
        ms__fail(MS_ERR_NULL_ARG, "%s: values container is NULL", fn);
        return NULL;
    }
    ms_container *r = ms_container_copy(c);
    if (!r)
        return NULL;
    for (int i = 0; i < values->n; i++)
        if (ms_container_set(r, values->keys[i], values->vals[i]) != MS_OK) {
            ms_container_release(r);
            return NULL;
        }
    return r;
}

/* ------------------------------------------------------------------------ */
/* mapping and arithmetic                                                   */

ms_container *ms_container_map(const ms_container *c, ms_container_map_fn fnp, void *user)
{
    static const char fn[] = "ms_container_map";
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
        return NULL;
    }
    if (!fnp) {
        ms__fail(MS_ERR_NULL_ARG, "%s: function is NULL", fn);
        return NULL;
    }
    ms_container *r = new_or_fail(fn);
    if (!r)
        return NULL;
    for (int i = 0; i < c->n; i++) {
        ms_tensor *t = fnp(c->vals[i], c->keys[i], user);
        if (!t) {
            ms__fail(MS_ERR_INVALID_ARG, "%s: the function returned NULL for key chain '%s'",
                     fn, c->keys[i]);
            ms_container_release(r);
            return NULL;
        }
        if (ms__container_adopt(r, fn, c->keys[i], t) != MS_OK) {
            ms_container_release(r);
            return NULL;
        }
    }
    return r;
}

typedef ms_tensor *(*binary_fn)(const ms_tensor *, const ms_tensor *);

static ms_container *binary(const char *fn, const ms_container *a, const ms_container *b,
                            binary_fn op)
{
    if (!a || !b) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container %s is NULL", fn, !a ? "a" : "b");
        return NULL;
    }
    if (same_keys(fn, a, b, "a", "b") != MS_OK)
        return NULL;
    ms_container *r = new_or_fail(fn);
    if (!r)
        return NULL;
    for (int i = 0; i < a->n; i++) {
        ms_tensor *tb = b->vals[find_key(b, a->keys[i])];
        if (ms__container_adopt(r, fn, a->keys[i], op(a->vals[i], tb)) != MS_OK) {
            ms_container_release(r);
            return NULL;
        }
    }
    return r;
}

ms_container *ms_container_add(const ms_container *a, const ms_container *b)
{
    return binary("ms_container_add", a, b, ms_add);
}

ms_container *ms_container_sub(const ms_container *a, const ms_container *b)
{
    return binary("ms_container_sub", a, b, ms_sub);
}

ms_container *ms_container_mul(const ms_container *a, const ms_container *b)
{
    return binary("ms_container_mul", a, b, ms_mul);
}

ms_container *ms_container_div(const ms_container *a, const ms_container *b)
{
    return binary("ms_container_div", a, b, ms_div);
}

enum unary_kind { U_ADD_SCALAR, U_MUL_SCALAR, U_DIV_SCALAR, U_REPLICATE, U_MEAN, U_SUM, U_EXPAND, U_STOP_GRAD };

static ms_tensor *apply_unary(enum unary_kind k, const ms_tensor *t, double s, int axis)
{
    switch (k) {
    case U_ADD_SCALAR: return ms_add_scalar(t, s);
    case U_MUL_SCALAR: return ms_mul_scalar(t, s);
    case U_DIV_SCALAR: return ms_div_scalar(t, s);
    case U_REPLICATE: {
        int64_t shape[MS_MAX_DIMS];
        int nd = ms_tensor_ndim(t);
        if (nd >= MS_MAX_DIMS) /* let broadcast_to report the rank */
            return ms_broadcast_to(t, MS_MAX_DIMS + 1, NULL);
        shape[0] = (int64_t)s;
        for (int d = 0; d < nd; d++)
            shape[d + 1] = ms_tensor_shape(t)[d];
        return ms_broadcast_to(t, nd + 1, shape);
    }
    case U_MEAN: return ms_mean(t, 1, &axis, false);
    case U_SUM: return ms_sum(t, 1, &axis, false);
    case U_EXPAND: return ms_expand_dims(t, axis);
    case U_STOP_GRAD: return ms_stop_gradient(t);
    }
    return NULL;
}

static ms_container *unary(const char *fn, const ms_container *c, enum unary_kind k, double s,
                           int axis)
{
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
        return NULL;
    }
    ms_container *r = new_or_fail(fn);
    if (!r)
        return NULL;
    for (int i = 0; i < c->n; i++)
        if (ms__container_adopt(r, fn, c->keys[i], apply_unary(k, c->vals[i], s, axis)) != MS_OK) {
            ms_container_release(r);
            return NULL;
        }
    return r;
}

ms_container *ms_container_add_scalar(const ms_container *a, double s)
{
    return unary("ms_container_add_scalar", a, U_ADD_SCALAR, s, 0);
}

ms_container *ms_container_mul_scalar(const ms_container *a, double s)
{
    return unary("ms_container_mul_scalar", a, U_MUL_SCALAR, s, 0);
}

ms_container *ms_container_div_scalar(const ms_container *a, double s)
{
    return unary("ms_container_div_scalar", a, U_DIV_SCALAR, s, 0);
}

ms_container *ms_container_replicate(const ms_container *c, int64_t n)
{
    if (n < 1) {
        ms__fail(MS_ERR_INVALID_ARG, "ms_container_replicate: n is %lld; it must be >= 1",
                 (long long)n);
        return NULL;
    }
    return unary("ms_container_replicate", c, U_REPLICATE, (double)n, 0);
}

ms_container *ms_container_mean(const ms_container *c, int axis)
{
    return unary("ms_container_mean", c, U_MEAN, 0.0, axis);
}

ms_container *ms_container_sum(const ms_container *c, int axis)
{
    return unary("ms_container_sum", c, U_SUM, 0.0, axis);
}

ms_container *ms_container_expand_dims(const ms_container *c, int axis)
{
    return unary("ms_container_expand_dims", c, U_EXPAND, 0.0, axis);
}

ms_container *ms_container_stop_gradient(const ms_container *c)
{
    return unary("ms_container_stop_gradient", c, U_STOP_GRAD, 0.0, 0);
}

/* ------------------------------------------------------------------------ */
/* unstack / concat                                                         */

static void free_pieces(ms_container **pieces, int n)
{
    if (!pieces)
        return;
    for (int i = 0; i < n; i++)
        ms_container_release(pieces[i]);
    free(pieces);
}

ms_status ms_container_unstack(const ms_container *c, bool keepdims, int *n,
                               ms_container ***out)
{
    static const char fn[] = "ms_container_unstack";
    if (n)
        *n = 0;
    if (out)
        *out = NULL;
    if (!c)
        return ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
    if (!n || !out)
        return ms__fail(MS_ERR_NULL_ARG, "%s: %s is NULL", fn, !n ? "n" : "out");
    if (c->n == 0)
        return MS_OK;

    int64_t lead = -1;
    for (int i = 0; i < c->n; i++) {
        const ms_tensor *t = c->vals[i];
        if (!ms__check(fn, t, c->keys[i]))
            return ms__fail(MS_ERR_INVALID_ARG, "%s: invalid tensor at '%s'", fn, c->keys[i]);
        int nd = ms_tensor_ndim(t);
        if (nd < 1)
            return ms__fail(MS_ERR_SHAPE, "%s: leaf '%s' is 0-d and cannot be unstacked", fn,
                            c->keys[i]);
        int64_t d = ms_tensor_shape(t)[0];
        if (lead < 0) {
            lead = d;
        } else if (d != lead) {
            char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
            const ms_tensor *t0 = c->vals[0];
            return ms__fail(MS_ERR_SHAPE,
                            "%s: leading dimensions differ: '%s' has shape %s, '%s' has shape %s",
                            fn, c->keys[0],
                            ms__shape_str(b1, sizeof b1, ms_tensor_ndim(t0), ms_tensor_shape(t0)),
                            c->keys[i], ms__shape_str(b2, sizeof b2, nd, ms_tensor_shape(t)));
        }
    }
    if (lead > INT_MAX)
        return ms__fail(MS_ERR_OVERFLOW, "%s: leading dimension %lld too large", fn,
                        (long long)lead);
    int np = (int)lead;
    if (np <= 0)
        return MS_OK;

    ms_container **pieces = calloc((size_t)np, sizeof *pieces);
    if (!pieces)
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    for (int p = 0; p < np; p++) {
        pieces[p] = new_or_fail(fn);
        if (!pieces[p]) {
            free_pieces(pieces, np);
            return MS_ERR_NOMEM;
        }
    }
    for (int p = 0; p < np; p++) {
        for (int i = 0; i < c->n; i++) {
            ms_tensor *s = ms_slice(c->vals[i], 0, p, (int64_t)p + 1);
            ms_tensor *q = s;
            if (s && !keepdims) {
                q = ms_squeeze(s, 0);
                if (ms_scope_depth() == 0)
                    ms_release(s);
            }
            ms_status st = ms__container_adopt(pieces[p], fn, c->keys[i], q);
            if (st != MS_OK) {
                free_pieces(pieces, np);
                return st;
            }
        }
    }
    *n = np;
    *out = pieces;
    return MS_OK;
}

ms_container *ms_container_concat(int n, ms_container *const *cs, int axis)
{
    static const char fn[] = "ms_container_concat";
    if (!cs) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container array is NULL", fn);
        return NULL;
    }
    if (n < 1) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: n = %d, need at least one container", fn, n);
        return NULL;
    }
    for (int j = 0; j < n; j++)
        if (!cs[j]) {
            ms__fail(MS_ERR_NULL_ARG, "%s: container %d is NULL", fn, j);
            return NULL;
        }
    for (int j = 1; j < n; j++) {
        char nj[32];
        snprintf(nj, sizeof nj, "container %d", j);
        if (same_keys(fn, cs[0], cs[j], "container 0", nj) != MS_OK)
            return NULL;
    }
    ms_tensor **ts = malloc((size_t)n * sizeof *ts);
    if (!ts) {
        ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
        return NULL;
    }
    ms_container *r = new_or_fail(fn);
    if (!r) {
        free(ts);
        return NULL;
    }
    for (int i = 0; i < cs[0]->n; i++) {
        const char *key = cs[0]->keys[i];
        ts[0] = cs[0]->vals[i];
        for (int j = 1; j < n; j++)
            ts[j] = cs[j]->vals[find_key(cs[j], key)];
        if (ms__container_adopt(r, fn, key, ms_concat(n, ts, axis)) != MS_OK) {
            ms_container_release(r);
            free(ts);
            return NULL;
        }
    }
    free(ts);
    return r;
}

/* ------------------------------------------------------------------------ */
/* comparison                                                               */

static double read_at(const ms_tensor *t, int64_t i)
{
    const void *d = ms_tensor_data(t);
    if (ms_tensor_dtype(t) == MS_F32)
        return (double)((const float *)d)[i];
    return ((const double *)d)[i];
}

static bool same_shape(const ms_tensor *a, const ms_tensor *b)
{
    int nd = ms_tensor_ndim(a);
    if (nd != ms_tensor_ndim(b))
        return false;
    const int64_t *sa = ms_tensor_shape(a), *sb = ms_tensor_shape(b);
    for (int k = 0; k < nd; k++)
        if (sa[k] != sb[k])
            return false;
    return true;
}

bool ms_container_allclose(const ms_container *a, const ms_container *b, double rtol,
                           double atol)
{
    static const char fn[] = "ms_container_allclose";
    if (!a || !b) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container %s is NULL", fn, !a ? "a" : "b");
        return false;
    }
    if (a->n != b->n)
        return false;
    for (int i = 0; i < a->n; i++) {
        int j = find_key(b, a->keys[i]);
        if (j < 0)
            return false;
        const ms_tensor *ta = a->vals[i], *tb = b->vals[j];
        if (!ta || !tb || !same_shape(ta, tb))
            return false;
        int64_t ne = ms_tensor_numel(ta);
        if (ne > 0 && (!ms_tensor_data(ta) || !ms_tensor_data(tb)))
            return false;
        for (int64_t e = 0; e < ne; e++) {
            double x = read_at(ta, e), y = read_at(tb, e);
            if (isnan(x) || isnan(y))
                return false;
            if (isinf(x) || isinf(y)) {
                if (x != y) /* NumPy: equal infinities are close */
                    return false;
                continue;
            }
            if (!(fabs(x - y) <= atol + rtol * fabs(y)))
                return false;
        }
    }
    return true;
}

ms_status ms_container_assert_identical_structure(const ms_container *a, const ms_container *b)
{
    static const char fn[] = "ms_container_assert_identical_structure";
    if (!a || !b)
        return ms__fail(MS_ERR_NULL_ARG, "%s: container %s is NULL", fn, !a ? "a" : "b");
    ms_status st = same_keys(fn, a, b, "a", "b");
    if (st != MS_OK)
        return st;
    for (int i = 0; i < a->n; i++) {
        const ms_tensor *ta = a->vals[i], *tb = b->vals[find_key(b, a->keys[i])];
        if (!same_shape(ta, tb)) {
            char b1[MS_SHAPE_BUF], b2[MS_SHAPE_BUF];
            return ms__fail(MS_ERR_SHAPE, "%s: key chain '%s' has shape %s in a but %s in b",
                            fn, a->keys[i],
                            ms__shape_str(b1, sizeof b1, ms_tensor_ndim(ta), ms_tensor_shape(ta)),
                            ms__shape_str(b2, sizeof b2, ms_tensor_ndim(tb), ms_tensor_shape(tb)));
        }
    }
    return MS_OK;
}

/* ------------------------------------------------------------------------ */
/* printing                                                                 */

static void spaces(FILE *f, int n)
{
    for (int i = 0; i < n; i++)
        fputc(' ', f);
}

/* Write a tensor's text; continuation lines are indented by `col` spaces so
 * rows stay aligned under the first one (blank lines are left empty). */
static void write_aligned(FILE *f, const char *text, int col)
{
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        if (p != text && len > 0)
            spaces(f, col);
        fwrite(p, 1, len, f);
        if (!nl)
            break;
        fputc('\n', f);
        p = nl + 1;
    }
}

/* Print the entries (rest[i] = the remaining key chain below this level) at
 * `indent`, grouped by first component in order of first appearance. */
static ms_status print_level(FILE *f, const char **rest, ms_tensor **ts, int n, int indent)
{
    static const char fn[] = "ms_container_fprint";
    ms_status st = MS_OK;
    bool *used = calloc((size_t)n, sizeof *used);
    const char **srest = malloc((size_t)n * sizeof *srest);
    ms_tensor **sts = malloc((size_t)n * sizeof *sts);
    if (!used || !srest || !sts) {
        st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
        goto done;
    }
    bool first = true;
    for (int i = 0; i < n; i++) {
        if (used[i])
            continue;
        used[i] = true;
        const char *k = rest[i];
        size_t len = strcspn(k, "/");
        if (!first)
            fputs(",\n", f);
        first = false;
        spaces(f, indent);
        fwrite(k, 1, len, f);
        fputs(": ", f);
        if (k[len] == '\0') {
            char *text = ms_tensor_to_string(ts[i]);
            if (!text) {
                st = ms__fail(MS_ERR_INTERNAL, "%s: could not format the tensor at '%s'", fn,
                              k);
                goto done;
            }
            write_aligned(f, text, indent + (int)len + 2);
            free(text);
        } else {
            int m = 0;
            srest[m] = k + len + 1;
            sts[m++] = ts[i];
            for (int j = i + 1; j < n; j++)
                if (!used[j] && strncmp(rest[j], k, len) == 0 && rest[j][len] == '/') {
                    used[j] = true;
                    srest[m] = rest[j] + len + 1;
                    sts[m++] = ts[j];
                }
            fputs("{\n", f);
            st = print_level(f, srest, sts, m, indent + 4);
            if (st != MS_OK)
                goto done;
            fputc('\n', f);
            spaces(f, indent);
            fputc('}', f);
        }
    }
done:
    free(used);
    free(srest);
    free(sts);
    return st;
}

ms_status ms_container_fprint(FILE *f, const ms_container *c)
{
    static const char fn[] = "ms_container_fprint";
    if (!f)
        return ms__fail(MS_ERR_NULL_ARG, "%s: FILE is NULL", fn);
    if (!c)
        return ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
    if (c->n == 0) {
        fputs("{}", f);
        return ferror(f) ? ms__fail(MS_ERR_IO, "%s: write failed", fn) : MS_OK;
    }
    const char **rest = malloc((size_t)c->n * sizeof *rest);
    if (!rest)
        return ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    for (int i = 0; i < c->n; i++)
        rest[i] = c->keys[i];
    fputs("{\n", f);
    ms_status st = print_level(f, rest, c->vals, c->n, 4);
    free(rest);
    if (st != MS_OK)
        return st;
    fputs("\n}", f);
    if (ferror(f))
        return ms__fail(MS_ERR_IO, "%s: write failed", fn);
    return MS_OK;
}

char *ms_container_to_string(const ms_container *c)
{
    static const char fn[] = "ms_container_to_string";
    if (!c) {
        ms__fail(MS_ERR_NULL_ARG, "%s: container is NULL", fn);
        return NULL;
    }
    char *buf = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&buf, &size);
    if (!f) {
        ms__fail(MS_ERR_NOMEM, "%s: open_memstream failed", fn);
        return NULL;
    }
    ms_status st = ms_container_fprint(f, c);
    if (fclose(f) != 0 && st == MS_OK)
        st = ms__fail(MS_ERR_NOMEM, "%s: out of memory", fn);
    if (st != MS_OK) {
        free(buf);
        return NULL;
    }
    return buf;
}
