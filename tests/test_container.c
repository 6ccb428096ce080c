/* Containers: every function of container.h on real values, error cases,
 * Ivy's print layout, and ownership (containers give their tensors back). */
#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "testutil.h"

/* ------------------------------------------------------------ helpers */

static int64_t live0;

static void setup(void)
{
    ms_clear_error();
    live0 = ms_live_tensors();
}

static void teardown(void)
{
    ck_assert_int_eq(ms_scope_depth(), 0);
    ck_assert_int_eq(ms_live_tensors(), live0);
}

/* Set key to a new float64 tensor and drop the creator's reference, so the
 * container is its only owner (no scope is open in these tests unless said). */
static void put(ms_container *c, const char *key, int nd, const int64_t *shape,
                const double *d)
{
    ms_tensor *t = ms_tensor_from_data(MS_F64, nd, shape, d);
    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(ms_container_set(c, key, t), MS_OK);
    ms_release(t);
}

static void put1(ms_container *c, const char *key, int n, const double *d)
{
    int64_t s[1] = {n};
    put(c, key, 1, s, d);
}

static void check_leaf(const ms_container *c, const char *key, int nd, const int64_t *shape,
                       const double *want)
{
    const ms_tensor *t = ms_container_get(c, key);
    ck_assert_msg(t != NULL, "no leaf '%s'", key);
    ck_assert_int_eq(ms_tensor_ndim(t), nd);
    int64_t n = 1;
    for (int i = 0; i < nd; i++) {
        ck_assert_int_eq(ms_tensor_shape(t)[i], shape[i]);
        n *= shape[i];
    }
    ck_assert_int_eq(ms_tensor_numel(t), n);
    for (int64_t i = 0; i < n; i++)
        ck_assert_msg(fabs(at(t, i) - want[i]) <= 1e-12 * (1 + fabs(want[i])),
                      "%s[%lld] = %.15g, want %.15g", key, (long long)i, at(t, i), want[i]);
}

static void check_keys(const ms_container *c, int n, const char *const *keys)
{
    ck_assert_int_eq(ms_container_size(c), n);
    for (int i = 0; i < n; i++)
        ck_assert_str_eq(ms_container_key(c, i), keys[i]);
}

static void check_error(ms_status want, const char *needle)
{
    const char *msg = NULL;
    ms_status st = ms_last_error(&msg);
    ck_assert_msg(st == want, "status %s, want %s (%s)", ms_status_string(st),
                  ms_status_string(want), msg ? msg : "");
    if (needle)
        ck_assert_msg(msg && strstr(msg, needle), "message '%s' does not mention '%s'",
                      msg ? msg : "(null)", needle);
    ms_clear_error();
}

/* layer1/w (2,2), layer1/b (2), layer2/w (2,1), layer2/b (1) */
static ms_container *net(void)
{
    static const double w1[4] = {1, 2, 3, 4}, b1[2] = {0.5, -0.5}, w2[2] = {2, -1},
                        b2[1] = {0.25};
    int64_t s22[2] = {2, 2}, s21[2] = {2, 1};
    ms_container *c = ms_container_new();
    put(c, "layer1/w", 2, s22, w1);
    put1(c, "layer1/b", 2, b1);
    put(c, "layer2/w", 2, s21, w2);
    put1(c, "layer2/b", 1, b2);
    return c;
}

/* ------------------------------------------------------------ basics */

START_TEST(set_get_has_size_order)
{
    ms_container *c = ms_container_new();
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(ms_container_size(c), 0);
    ck_assert_ptr_null(ms_container_key(c, 0));
    static const double a[2] = {1, 2}, b[1] = {3}, z[3] = {4, 5, 6};
    put1(c, "zeta", 3, z);
    put1(c, "alpha/x", 2, a);
    put1(c, "alpha/y", 1, b);
    static const char *const order[] = {"zeta", "alpha/x", "alpha/y"};
    check_keys(c, 3, order); /* insertion order, not sorted */
    check_leaf(c, "alpha/x", 1, (int64_t[]){2}, a);
    ck_assert(ms_container_has(c, "alpha/y"));
    ck_assert(!ms_container_has(c, "alpha")); /* a subtree is not a leaf */
    ck_assert(!ms_container_has(c, "beta"));
    ck_assert_ptr_eq(ms_container_at(c, 1), ms_container_get(c, "alpha/x"));
    ck_assert_ptr_null(ms_container_at(c, 3));
    ck_assert_ptr_null(ms_container_at(c, -1));
    ck_assert_ptr_null(ms_container_key(c, 3));
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);

    /* get of a missing chain */
    ck_assert_ptr_null(ms_container_get(c, "alpha/z"));
    check_error(MS_ERR_KEY, "alpha/z");
    ck_assert_ptr_null(ms_container_get(c, "alpha"));
    check_error(MS_ERR_KEY, "alpha");

    /* the container holds its own reference */
    ms_tensor *t = ms_scalar(MS_F64, 7.0);
    ck_assert_int_eq(ms_container_set(c, "k", t), MS_OK);
    ms_release(t);
    ck_assert_double_eq(ms_tensor_item(ms_container_get(c, "k")), 7.0);
    ms_container_release(c);
}
END_TEST

START_TEST(replace_in_place)
{
    ms_container *c = net();
    int64_t before = ms_live_tensors();
    ms_tensor *old = ms_container_get(c, "layer1/b");
    ms_retain(old);
    static const double nb[3] = {9, 8, 7};
    put1(c, "layer1/b", 3, nb);
    static const char *const order[] = {"layer1/w", "layer1/b", "layer2/w", "layer2/b"};
    check_keys(c, 4, order); /* same position */
    check_leaf(c, "layer1/b", 1, (int64_t[]){3}, nb);
    ck_assert_int_eq(ms_live_tensors(), before + 1); /* old only alive through our ref */
    ms_release(old);
    ck_assert_int_eq(ms_live_tensors(), before);
    /* setting the same tensor again is harmless */
    ms_tensor *same = ms_container_get(c, "layer1/b");
    ck_assert_int_eq(ms_container_set(c, "layer1/b", same), MS_OK);
    check_leaf(c, "layer1/b", 1, (int64_t[]){3}, nb);
    ck_assert_int_eq(ms_live_tensors(), before);
    ms_container_release(c);
}
END_TEST

START_TEST(bad_key_chains)
{
    ms_container *c = net();
    ms_tensor *t = ms_scalar(MS_F64, 1.0);
    static const char *const bad[] = {"", "/a", "a/", "a//b", "/"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(ms_container_set(c, bad[i], t), MS_ERR_KEY);
        check_error(MS_ERR_KEY, NULL);
    }
    /* a leaf cannot also be a subtree, either way round */
    ck_assert_int_eq(ms_container_set(c, "layer1", t), MS_ERR_KEY);
    check_error(MS_ERR_KEY, "layer1");
    ck_assert_int_eq(ms_container_set(c, "layer1/w/extra", t), MS_ERR_KEY);
    check_error(MS_ERR_KEY, "layer1/w");
    /* a similar-looking prefix is fine: "layer10" is not under "layer1" */
    ck_assert_int_eq(ms_container_set(c, "layer10", t), MS_OK);
    ck_assert_int_eq(ms_container_size(c), 5);
    /* NULL arguments */
    ck_assert_int_eq(ms_container_set(NULL, "a", t), MS_ERR_NULL_ARG);
    check_error(MS_ERR_NULL_ARG, NULL);
    ck_assert_int_eq(ms_container_set(c, NULL, t), MS_ERR_NULL_ARG);
    check_error(MS_ERR_NULL_ARG, NULL);
    ck_assert_int_eq(ms_container_set(c, "n", NULL), MS_ERR_NULL_ARG);
    check_error(MS_ERR_NULL_ARG, NULL);
    ck_assert_ptr_null(ms_container_get(NULL, "a"));
    check_error(MS_ERR_NULL_ARG, NULL);
    ck_assert_int_eq(ms_container_size(NULL), 0);
    ms_clear_error();
    ck_assert_int_eq(ms_container_size(c), 5);
    ms_container_release(NULL);
    ms_release(t);
    ms_container_release(c);
}
END_TEST

START_TEST(copy_shares_tensors)
{
    ms_container *c = net();
    ms_container *d = ms_container_copy(c);
    ck_assert_int_eq(ms_container_size(d), 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_str_eq(ms_container_key(d, i), ms_container_key(c, i));
        ck_assert_ptr_eq(ms_container_at(d, i), ms_container_at(c, i));
    }
    static const double v[1] = {42};
    put1(d, "layer2/b", 1, v);
    put1(d, "extra", 1, v);
    ck_assert_int_eq(ms_container_size(c), 4);
    ck_assert_double_eq(at(ms_container_get(c, "layer2/b"), 0), 0.25);
    ms_container_release(c);
    /* d still works after the original is gone */
    check_leaf(d, "layer1/b", 1, (int64_t[]){2}, (double[]){0.5, -0.5});
    ms_container_release(d);
    ck_assert_ptr_null(ms_container_copy(NULL));
    ms_clear_error();
}
END_TEST

/* ------------------------------------------------------------ selection */

START_TEST(at_and_prune_key_chains)
{
    ms_container *c = net();
    const char *const l1[] = {"layer1", NULL};
    ms_container *s = ms_container_at_key_chains(c, l1);
    static const char *const want1[] = {"layer1/w", "layer1/b"};
    check_keys(s, 2, want1);
    ck_assert_ptr_eq(ms_container_get(s, "layer1/w"), ms_container_get(c, "layer1/w"));
    ms_container_release(s);

    /* several chains; the result follows c's order, not the list's */
    const char *const mixed[] = {"layer2/b", "layer1/w", NULL};
    s = ms_container_at_key_chains(c, mixed);
    static const char *const want2[] = {"layer1/w", "layer2/b"};
    check_keys(s, 2, want2);
    ms_container_release(s);

    /* a prefix that is not a whole component selects nothing */
    const char *const partial[] = {"layer", NULL};
    ck_assert_ptr_null(ms_container_at_key_chains(c, partial));
    check_error(MS_ERR_KEY, "layer");
    const char *const unknown[] = {"layer1/w", "layer3", NULL};
    ck_assert_ptr_null(ms_container_at_key_chains(c, unknown));
    check_error(MS_ERR_KEY, "layer3");
    const char *const none[] = {NULL};
    s = ms_container_at_key_chains(c, none);
    ck_assert_int_eq(ms_container_size(s), 0);
    ms_container_release(s);

    ms_container *p = ms_container_prune_key_chains(c, l1);
    static const char *const want3[] = {"layer2/w", "layer2/b"};
    check_keys(p, 2, want3);
    ms_container_release(p);
    const char *const leaf[] = {"layer2/w", NULL};
    p = ms_container_prune_key_chains(c, leaf);
    static const char *const want4[] = {"layer1/w", "layer1/b", "layer2/b"};
    check_keys(p, 3, want4);
    ms_container_release(p);
    ck_assert_ptr_null(ms_container_prune_key_chains(c, unknown));
    check_error(MS_ERR_KEY, "layer3");
    ck_assert_ptr_null(ms_container_prune_key_chains(c, NULL));
    check_error(MS_ERR_NULL_ARG, NULL);
    ck_assert_int_eq(ms_container_size(c), 4); /* untouched */
    ms_container_release(c);
}
END_TEST

START_TEST(set_at_key_chains)
{
    ms_container *c = net();
    ms_container *v = ms_container_new();
    static const double nb[2] = {7, 8}, nn[1] = {9};
    put1(v, "layer1/b", 2, nb);
    put1(v, "layer3/w", 1, nn);
    ms_container *r = ms_container_set_at_key_chains(c, v);
    static const char *const want[] = {"layer1/w", "layer1/b", "layer2/w", "layer2/b",
                                       "layer3/w"};
    check_keys(r, 5, want);
    check_leaf(r, "layer1/b", 1, (int64_t[]){2}, nb);
    check_leaf(r, "layer3/w", 1, (int64_t[]){1}, nn);
    check_leaf(c, "layer1/b", 1, (int64_t[]){2}, (double[]){0.5, -0.5}); /* c unchanged */
    ck_assert_int_eq(ms_container_size(c), 4);
    ms_container_release(r);
    /* a value that would turn a leaf into a subtree */
    ms_container *bad = ms_container_new();
    put1(bad, "layer2/b/x", 1, nn);
    ck_assert_ptr_null(ms_container_set_at_key_chains(c, bad));
    check_error(MS_ERR_KEY, "layer2/b");
    ms_container_release(bad);
    ms_container_release(v);
    ms_container_release(c);
}
END_TEST

/* ------------------------------------------------------------ map, arithmetic */

static ms_tensor *scale_by_user(const ms_tensor *t, const char *key, void *user)
{
    int *calls = user;
    calls[0]++;
    /* a key-chain-dependent function: biases get +100 */
    double off = strstr(key, "/b") ? 100.0 : 0.0;
    ms_tensor *m = ms_mul_scalar(t, 2.0), *r = ms_add_scalar(m, off);
    if (ms_scope_depth() == 0) /* no scope owns the intermediate */
        ms_release(m);
    return r;
}

static ms_tensor *fail_on_layer2(const ms_tensor *t, const char *key, void *user)
{
    (void)user;
    return strncmp(key, "layer2", 6) == 0 ? NULL : ms_copy(t);
}

START_TEST(map)
{
    ms_container *c = net();
    int calls = 0;
    ms_container *m = ms_container_map(c, scale_by_user, &calls);
    ck_assert_int_eq(calls, 4);
    static const char *const order[] = {"layer1/w", "layer1/b", "layer2/w", "layer2/b"};
    check_keys(m, 4, order);
    check_leaf(m, "layer1/w", 2, (int64_t[]){2, 2}, (double[]){2, 4, 6, 8});
    check_leaf(m, "layer1/b", 1, (int64_t[]){2}, (double[]){101, 99});
    check_leaf(m, "layer2/b", 1, (int64_t[]){1}, (double[]){100.5});
    ms_container_release(m);
    ck_assert_ptr_null(ms_container_map(c, fail_on_layer2, NULL));
    check_error(MS_ERR_INVALID_ARG, "layer2/w");
    ck_assert_ptr_null(ms_container_map(c, NULL, NULL));
    check_error(MS_ERR_NULL_ARG, NULL);
    /* inside a scope the scope keeps its own reference until pop */
    ms_scope_push();
    m = ms_container_map(c, scale_by_user, &calls);
    ms_scope_pop();
    check_leaf(m, "layer1/b", 1, (int64_t[]){2}, (double[]){101, 99});
    ms_container_release(m);
    ms_container_release(c);
}
END_TEST

START_TEST(arithmetic)
{
    static const double a1[2] = {1, 2}, a2[1] = {4}, b1[2] = {4, 8}, b2[1] = {-2};
    ms_container *a = ms_container_new(), *b = ms_container_new();
    put1(a, "p/x", 2, a1);
    put1(a, "q", 1, a2);
    put1(b, "q", 1, b2); /* other order */
    put1(b, "p/x", 2, b1);
    static const char *const order[] = {"p/x", "q"};
    ms_container *r = ms_container_add(a, b);
    check_keys(r, 2, order);
    check_leaf(r, "p/x", 1, (int64_t[]){2}, (double[]){5, 10});
    check_leaf(r, "q", 1, (int64_t[]){1}, (double[]){2});
    ms_container_release(r);
    r = ms_container_sub(a, b);
    check_keys(r, 2, order);
    check_leaf(r, "p/x", 1, (int64_t[]){2}, (double[]){-3, -6});
    check_leaf(r, "q", 1, (int64_t[]){1}, (double[]){6});
    ms_container_release(r);
    r = ms_container_mul(a, b);
    check_leaf(r, "p/x", 1, (int64_t[]){2}, (double[]){4, 16});
    check_leaf(r, "q", 1, (int64_t[]){1}, (double[]){-8});
    ms_container_release(r);
    r = ms_container_div(a, b);
    check_leaf(r, "p/x", 1, (int64_t[]){2}, (double[]){0.25, 0.25});
    check_leaf(r, "q", 1, (int64_t[]){1}, (double[]){-2});
    ms_container_release(r);
    r = ms_container_div(b, a); /* b's order this time */
    static const char *const border[] = {"q", "p/x"};
    check_keys(r, 2, border);
    ms_container_release(r);
    r = ms_container_add_scalar(a, 0.5);
    check_keys(r, 2, order);
    check_leaf(r, "p/x", 1, (int64_t[]){2}, (double[]){1.5, 2.5});
    ms_container_release(r);
    r = ms_container_mul_scalar(a, -3);
    check_leaf(r, "p/x", 1, (int64_t[]){2}, (double[]){-3, -6});
    check_leaf(r, "q", 1, (int64_t[]){1}, (double[]){-12});
    ms_container_release(r);
    r = ms_container_div_scalar(a, 4);
    check_leaf(r, "p/x", 1, (int64_t[]){2}, (double[]){0.25, 0.5});
    check_leaf(r, "q", 1, (int64_t[]){1}, (double[]){1});
    ms_container_release(r);

    /* broadcasting between leaves */
    ms_container *s = ms_container_new();
    put1(s, "p/x", 1, (double[]){10});
    put1(s, "q", 1, (double[]){1});
    r = ms_container_add(a, s);
    check_leaf(r, "p/x", 1, (int64_t[]){2}, (double[]){11, 12});
    ms_container_release(r);
    ms_container_release(s);

    /* mismatched structure names the chain */
    ms_container *d = ms_container_new();
    put1(d, "p/y", 2, b1);
    put1(d, "q", 1, b2);
    ck_assert_ptr_null(ms_container_add(a, d));
    check_error(MS_ERR_KEY, "p/x");
    ck_assert_ptr_null(ms_container_mul(d, a));
    check_error(MS_ERR_KEY, "p/y");
    ms_container *e = ms_container_new();
    put1(e, "p/x", 2, b1); /* a subset */
    ck_assert_ptr_null(ms_container_sub(a, e));
    check_error(MS_ERR_KEY, "q");
    ck_assert_ptr_null(ms_container_div(e, a));
    check_error(MS_ERR_KEY, "q");
    /* shapes that do not broadcast */
    ms_container *f = ms_container_new();
    put1(f, "p/x", 3, (double[]){1, 2, 3});
    put1(f, "q", 1, b2);
    ck_assert_ptr_null(ms_container_add(a, f));
    check_error(MS_ERR_SHAPE, NULL);
    ck_assert_ptr_null(ms_container_add(a, NULL));
    check_error(MS_ERR_NULL_ARG, NULL);
    ck_assert_ptr_null(ms_container_add_scalar(NULL, 1));
    check_error(MS_ERR_NULL_ARG, NULL);
    ms_container *const all[] = {a, b, d, e, f};
    for (int i = 0; i < 5; i++)
        ms_container_release(all[i]);
}
END_TEST

START_TEST(mean_sum_axis)
{
    ms_container *c = ms_container_new();
    int64_t s23[2] = {2, 3};
    put(c, "m", 2, s23, (double[]){1, 2, 3, 4, 5, 6});
    put1(c, "v", 4, (double[]){1, 2, 3, 6});
    ms_container *r = ms_container_sum(c, 0);
    check_leaf(r, "m", 1, (int64_t[]){3}, (double[]){5, 7, 9});
    check_leaf(r, "v", 0, NULL, (double[]){12});
    ms_container_release(r);
    r = ms_container_mean(c, 0);
    check_leaf(r, "m", 1, (int64_t[]){3}, (double[]){2.5, 3.5, 4.5});
    check_leaf(r, "v", 0, NULL, (double[]){3});
    ms_container_release(r);
    r = ms_container_mean(c, -1);
    check_leaf(r, "m", 1, (int64_t[]){2}, (double[]){2, 5});
    check_leaf(r, "v", 0, NULL, (double[]){3});
    ms_container_release(r);
    /* axis 1 does not exist for v */
    ck_assert_ptr_null(ms_container_sum(c, 1));
    check_error(MS_ERR_RANK, NULL);
    ms_container_release(c);
}
END_TEST

/* ------------------------------------------------------------ unstack, concat */

START_TEST(unstack)
{
    ms_container *c = ms_container_new();
    int64_t s32[2] = {3, 2};
    put(c, "a", 2, s32, (double[]){1, 2, 3, 4, 5, 6});
    put1(c, "b/c", 3, (double[]){7, 8, 9});
    for (int keep = 0; keep < 2; keep++) {
        int n = -1;
        ms_container **out = NULL;
        ck_assert_int_eq(ms_container_unstack(c, keep, &n, &out), MS_OK);
        ck_assert_int_eq(n, 3);
        for (int p = 0; p < 3; p++) {
            static const char *const order[] = {"a", "b/c"};
            check_keys(out[p], 2, order);
            double av[2] = {1.0 + 2 * p, 2.0 + 2 * p}, bv[1] = {7.0 + p};
            if (keep) {
                check_leaf(out[p], "a", 2, (int64_t[]){1, 2}, av);
                check_leaf(out[p], "b/c", 1, (int64_t[]){1}, bv);
            } else {
                check_leaf(out[p], "a", 1, (int64_t[]){2}, av);
                check_leaf(out[p], "b/c", 0, NULL, bv);
            }
        }
        if (keep) { /* concat undoes unstack */
            ms_container *back = ms_container_concat(n, out, 0);
            ck_assert(ms_container_allclose(back, c, 0, 0));
            ck_assert_int_eq(ms_container_assert_identical_structure(back, c), MS_OK);
            ms_container_release(back);
        }
        for (int p = 0; p < n; p++)
            ms_container_release(out[p]);
        free(out);
    }
    /* leading dims that differ */
    put1(c, "d", 2, (double[]){1, 2});
    int n = 5;
    ms_container **out = (ms_container **)&n;
    ck_assert_int_eq(ms_container_unstack(c, false, &n, &out), MS_ERR_SHAPE);
    ck_assert_int_eq(n, 0);
    ck_assert_ptr_null(out);
    check_error(MS_ERR_SHAPE, "d");
    ms_container_release(c);
    /* an empty container gives nothing */
    c = ms_container_new();
    ck_assert_int_eq(ms_container_unstack(c, true, &n, &out), MS_OK);
    ck_assert_int_eq(n, 0);
    ms_container_release(c);
    ck_assert_int_eq(ms_container_unstack(NULL, true, &n, &out), MS_ERR_NULL_ARG);
    ms_clear_error();
}
END_TEST

START_TEST(concat)
{
    ms_container *a = ms_container_new(), *b = ms_container_new();
    int64_t s12[2] = {1, 2}, s22[2] = {2, 2};
    put(a, "w", 2, s12, (double[]){1, 2});
    put1(a, "v", 1, (double[]){3});
    put1(b, "v", 2, (double[]){4, 5}); /* other order, other length */
    put(b, "w", 2, s22, (double[]){6, 7, 8, 9});
    ms_container *cs[2] = {a, b};
    ms_container *r = ms_container_concat(2, cs, 0);
    static const char *const order[] = {"w", "v"};
    check_keys(r, 2, order);
    check_leaf(r, "w", 2, (int64_t[]){3, 2}, (double[]){1, 2, 6, 7, 8, 9});
    check_leaf(r, "v", 1, (int64_t[]){3}, (double[]){3, 4, 5});
    ms_container_release(r);
    /* along the last axis */
    ms_container *c = ms_container_new(), *d = ms_container_new();
    put(c, "w", 2, s22, (double[]){1, 2, 3, 4});
    int64_t s21[2] = {2, 1};
    put(d, "w", 2, s21, (double[]){5, 6});
    ms_container *cd[2] = {c, d};
    r = ms_container_concat(2, cd, -1);
    check_leaf(r, "w", 2, (int64_t[]){2, 3}, (double[]){1, 2, 5, 3, 4, 6});
    ms_container_release(r);
    /* one container */
    r = ms_container_concat(1, cs, 0);
    ck_assert(ms_container_allclose(r, a, 0, 0));
    ms_container_release(r);
    /* mismatched key chains */
    ms_container *ac[2] = {a, c};
    ck_assert_ptr_null(ms_container_concat(2, ac, 0));
    check_error(MS_ERR_KEY, "v");
    ck_assert_ptr_null(ms_container_concat(0, cs, 0));
    check_error(MS_ERR_INVALID_ARG, NULL);
    ms_container *const all[] = {a, b, c, d};
    for (int i = 0; i < 4; i++)
        ms_container_release(all[i]);
}
END_TEST

START_TEST(expand_dims)
{
    ms_container *c = net();
    ms_container *r = ms_container_expand_dims(c, 0);
    check_leaf(r, "layer1/w", 3, (int64_t[]){1, 2, 2}, (double[]){1, 2, 3, 4});
    check_leaf(r, "layer2/b", 2, (int64_t[]){1, 1}, (double[]){0.25});
    ms_container_release(r);
    r = ms_container_expand_dims(c, -1);
    check_leaf(r, "layer1/b", 2, (int64_t[]){2, 1}, (double[]){0.5, -0.5});
    check_leaf(r, "layer2/w", 3, (int64_t[]){2, 1, 1}, (double[]){2, -1});
    ms_container_release(r);
    ck_assert_ptr_null(ms_container_expand_dims(c, 5));
    check_error(MS_ERR_RANK, NULL);
    ms_container_release(c);
}
END_TEST

START_TEST(replicate)
{
    ms_container *c = net();
    ms_container *r = ms_container_replicate(c, 2);
    check_leaf(r, "layer1/w", 3, (int64_t[]){2, 2, 2}, (double[]){1, 2, 3, 4, 1, 2, 3, 4});
    check_leaf(r, "layer2/b", 2, (int64_t[]){2, 1}, (double[]){0.25, 0.25});
    ms_container_release(r);
    ck_assert_ptr_null(ms_container_replicate(c, 0));
    check_error(MS_ERR_INVALID_ARG, "ms_container_replicate");
    ms_container_release(c);
}
END_TEST

START_TEST(stop_gradient)
{
    ms_container *c = net();
    ms_container *v = ms_container_new();
    for (int i = 0; i < ms_container_size(c); i++) {
        ms_tensor *t = ms_variable(ms_container_at(c, i));
        ms_container_set(v, ms_container_key(c, i), t);
        ms_release(t);
    }
    /* a gradient through container arithmetic */
    ms_container *sq = ms_container_mul(v, v);
    ck_assert(ms_requires_grad(ms_container_get(sq, "layer1/w")));
    ms_container *s = ms_container_stop_gradient(sq);
    for (int i = 0; i < ms_container_size(s); i++) {
        ck_assert(!ms_requires_grad(ms_container_at(s, i)));
        ck_assert_ptr_ne(ms_container_at(s, i), ms_container_at(sq, i));
    }
    check_leaf(s, "layer1/w", 2, (int64_t[]){2, 2}, (double[]){1, 4, 9, 16});
    ck_assert(ms_container_allclose(s, sq, 0, 0));
    ms_container *g = NULL;
    ms_tensor *w = ms_container_get(v, "layer1/w");
    ms_scope_push(); /* owns y and its intermediates */
    ms_tensor *y = ms_sum(ms_mul(ms_container_get(sq, "layer1/w"),
                                 ms_container_get(s, "layer1/w")), 0, NULL, false);
    ms_container *only = ms_container_new();
    ms_container_set(only, "w", w);
    ck_assert_int_eq(ms_grad(y, only, false, &g), MS_OK);
    /* d/dw sum(w^2 * stop(w^2)) = 2w * w^2 */
    check_leaf(g, "w", 2, (int64_t[]){2, 2}, (double[]){2, 16, 54, 128});
    ms_scope_pop();
    ms_container_release(g);
    ms_container_release(only);
    ms_container_release(s);
    ms_container_release(sq);
    ms_container_release(v);
    ms_container_release(c);
}
END_TEST

/* ------------------------------------------------------------ comparison */

START_TEST(allclose)
{
    ms_container *a = net(), *b = net();
    ck_assert(ms_container_allclose(a, b, 0, 0));
    ms_container *c = ms_container_add_scalar(a, 1e-7);
    ck_assert(!ms_container_allclose(a, c, 0, 0));
    ck_assert(ms_container_allclose(a, c, 0, 2e-7));
    ck_assert(!ms_container_allclose(a, c, 0, 5e-8));
    ck_assert(ms_container_allclose(c, a, 1e-6, 0)); /* rtol against b's values */
    ms_container_release(c);
    /* order does not matter; key chains and shapes do */
    ms_container *r = ms_container_new();
    for (int i = ms_container_size(a) - 1; i >= 0; i--)
        ms_container_set(r, ms_container_key(a, i), ms_container_at(a, i));
    ck_assert(ms_container_allclose(a, r, 0, 0));
    ms_container_release(r);
    const char *const l1[] = {"layer1", NULL};
    ms_container *p = ms_container_prune_key_chains(a, l1);
    ck_assert(!ms_container_allclose(a, p, 1, 1));
    ck_assert(!ms_container_allclose(p, a, 1, 1));
    ms_container_release(p);
    ms_container *e = ms_container_expand_dims(a, 0);
    ck_assert(!ms_container_allclose(a, e, 1, 1));
    ms_container_release(e);
    /* NaN is never close; equal infinities are */
    ms_container *n1 = ms_container_new(), *n2 = ms_container_new();
    put1(n1, "x", 2, (double[]){NAN, 1});
    put1(n2, "x", 2, (double[]){NAN, 1});
    ck_assert(!ms_container_allclose(n1, n2, 1, 1));
    put1(n1, "x", 2, (double[]){INFINITY, -INFINITY});
    put1(n2, "x", 2, (double[]){INFINITY, -INFINITY});
    ck_assert(ms_container_allclose(n1, n2, 0, 0));
    put1(n2, "x", 2, (double[]){INFINITY, INFINITY});
    ck_assert(!ms_container_allclose(n1, n2, 1, 1));
    ms_container_release(n1);
    ms_container_release(n2);
    ck_assert(!ms_container_allclose(a, NULL, 1, 1));
    ms_clear_error();
    ms_container_release(a);
    ms_container_release(b);
}
END_TEST

START_TEST(identical_structure)
{
    ms_container *a = net();
    ms_container *b = ms_container_mul_scalar(a, 5); /* same structure, other values */
    ck_assert_int_eq(ms_container_assert_identical_structure(a, b), MS_OK);
    const char *const l2b[] = {"layer2/b", NULL};
    ms_container *p = ms_container_prune_key_chains(a, l2b);
    ck_assert_int_eq(ms_container_assert_identical_structure(a, p), MS_ERR_KEY);
    check_error(MS_ERR_KEY, "layer2/b");
    ck_assert_int_eq(ms_container_assert_identical_structure(p, a), MS_ERR_KEY);
    check_error(MS_ERR_KEY, "layer2/b");
    put1(b, "layer1/b", 3, (double[]){1, 2, 3});
    ck_assert_int_eq(ms_container_assert_identical_structure(a, b), MS_ERR_SHAPE);
    check_error(MS_ERR_SHAPE, "layer1/b");
    ck_assert_int_eq(ms_container_assert_identical_structure(a, NULL), MS_ERR_NULL_ARG);
    ms_clear_error();
    ms_container_release(p);
    ms_container_release(b);
    ms_container_release(a);
}
END_TEST

/* ------------------------------------------------------------ printing */

START_TEST(print_ivy_layout)
{
    ms_container *c = ms_container_new();
    put1(c, "latent", 1, (double[]){-139.9569855});
    char *s = ms_container_to_string(c);
    ck_assert_str_eq(s, "{\n    latent: ivy.array([-139.9569855])\n}");
    free(s);

    ms_container *n = ms_container_new();
    int64_t s22[2] = {2, 2};
    put(n, "enc/l1/w", 2, s22, (double[]){1, 2, 3, 4});
    put1(n, "enc/l1/b", 2, (double[]){0.5, -1});
    put1(n, "dec", 1, (double[]){3});
    put1(n, "enc/scale", 1, (double[]){-1.13723135});
    s = ms_container_to_string(n);
    ck_assert_str_eq(s, "{\n"
                        "    enc: {\n"
                        "        l1: {\n"
                        "            w: ivy.array([[1., 2.],\n"
                        "                          [3., 4.]]),\n"
                        "            b: ivy.array([ 0.5, -1. ])\n"
                        "        },\n"
                        "        scale: ivy.array([-1.13723135])\n"
                        "    },\n"
                        "    dec: ivy.array([3.])\n"
                        "}");
    free(s);

    /* fprint writes the same text */
    FILE *f = tmpfile();
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(ms_container_fprint(f, c), MS_OK);
    rewind(f);
    char buf[128] = {0};
    size_t got = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    ck_assert_str_eq(buf, "{\n    latent: ivy.array([-139.9569855])\n}");
    ck_assert_int_eq((int)got, (int)strlen(buf));

    ms_container *e = ms_container_new();
    s = ms_container_to_string(e);
    ck_assert_str_eq(s, "{}");
    free(s);
    ck_assert_ptr_null(ms_container_to_string(NULL));
    ms_clear_error();
    ck_assert_int_eq(ms_container_fprint(NULL, c), MS_ERR_NULL_ARG);
    ms_clear_error();
    ms_container_release(e);
    ms_container_release(n);
    ms_container_release(c);
}
END_TEST

/* ------------------------------------------------------------ ownership */

START_TEST(ownership)
{
    /* tensors made in a scope and put in a container outlive the scope, and
     * go when the container goes */
    ms_scope_push();
    ms_container *c = ms_container_new();
    int64_t s[1] = {3};
    ms_container_set(c, "a/x", ms_ones(MS_F32, 1, s));
    ms_container_set(c, "a/y", ms_zeros(MS_F32, 1, s));
    ms_container *d = ms_container_mul_scalar(c, 2.0);
    ms_scope_pop();
    ck_assert_int_eq(ms_live_tensors(), live0 + 4);
    ck_assert_double_eq(at(ms_container_get(d, "a/x"), 2), 2.0);
    ms_container_release(c);
    ck_assert_int_eq(ms_live_tensors(), live0 + 2);
    ms_container_release(d);
    ck_assert_int_eq(ms_live_tensors(), live0);

    /* every container-returning function, without a scope */
    ms_container *a = net();
    const char *const l1[] = {"layer1", NULL};
    ms_container *r[10];
    r[0] = ms_container_copy(a);
    r[1] = ms_container_at_key_chains(a, l1);
    r[2] = ms_container_prune_key_chains(a, l1);
    r[3] = ms_container_set_at_key_chains(a, r[1]);
    r[4] = ms_container_add(a, a);
    ms_container *ex = ms_container_expand_dims(a, 0);
    r[5] = ms_container_sum(ex, 0);
    ms_container_release(ex);
    r[6] = ms_container_mean(r[5], 0);
    r[7] = ms_container_stop_gradient(a);
    r[8] = ms_container_div(a, r[4]);
    r[9] = ms_container_sub(a, r[7]);
    for (int i = 0; i < 10; i++) {
        ck_assert_ptr_nonnull(r[i]);
        ms_container_release(r[i]);
    }
    ms_container_release(a);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("container");
    TCase *tc = tcase_create("container");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, set_get_has_size_order);
    tcase_add_test(tc, replace_in_place);
    tcase_add_test(tc, bad_key_chains);
    tcase_add_test(tc, copy_shares_tensors);
    tcase_add_test(tc, at_and_prune_key_chains);
    tcase_add_test(tc, set_at_key_chains);
    tcase_add_test(tc, map);
    tcase_add_test(tc, arithmetic);
    tcase_add_test(tc, mean_sum_axis);
    tcase_add_test(tc, unstack);
    tcase_add_test(tc, concat);
    tcase_add_test(tc, expand_dims);
    tcase_add_test(tc, stop_gradient);
    tcase_add_test(tc, allclose);
    tcase_add_test(tc, identical_structure);
    tcase_add_test(tc, print_ivy_layout);
    tcase_add_test(tc, ownership);
    tcase_add_test(tc, replicate);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
