/* The backend loader and registry: refusals (each with its own message naming
 * the file), discovery by name and by path, the default from METASTEP_BACKEND,
 * the set/unset stack, listing, fallback counting, tensors shared between
 * backends, and `metastep backends` end to end.
 *
 * check forks every test by default, so each test starts with nothing loaded
 * and may set environment variables freely.  Tests that need a fresh process
 * (the default backend is chosen once, at first use) skip themselves under
 * CK_FORK=no; the rest leave the stack empty and set METASTEP_BACKEND_PATH
 * themselves, so they also run in-process (for valgrind). */
#include <check.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "metastep/backend.h"
#include "metastep/metastep.h"

#ifndef TEST_PLUGIN_DIR
#error "the build defines TEST_PLUGIN_DIR (tests/meson.build)"
#endif

#define PLUGIN(name) TEST_PLUGIN_DIR "/libmetastep-backend-" name ".so"

static bool forking = true; /* false under CK_FORK=no */

#define NEEDS_FORK()                                                                      \
    do {                                                                                  \
        if (!forking)                                                                     \
            return; /* the default backend is chosen once per process */                  \
    } while (0)

static void use_plugin_dir(void) { setenv("METASTEP_BACKEND_PATH", TEST_PLUGIN_DIR, 1); }
static void no_plugin_dir(void) { unsetenv("METASTEP_BACKEND_PATH"); }

static const char *last_msg(void)
{
    const char *m = NULL;
    ms_last_error(&m);
    return m ? m : "";
}

#define ck_assert_has(hay, needle)                                                        \
    ck_assert_msg(strstr((hay), (needle)) != NULL, "expected \"%s\" in: %s", (needle), (hay))

/* Every directory of the search path appears in msg. */
static void assert_names_dirs(const char *msg)
{
    char dirs[4096];
    size_t n = metastep_backend_search_path(dirs, sizeof dirs);
    ck_assert_uint_lt(n, sizeof dirs);
    int count = 0;
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        ck_assert_has(msg, d);
        count++;
    }
    ck_assert_int_ge(count, 2); /* the build tree and the install dir at least */
}

/* ------------------------------------------------------------ listing */

typedef struct found {
    int n;
    char name[64][64];
    char path[64][4096];
} found;

static void collect(const char *name, const char *path, void *user)
{
    found *f = user;
    ck_assert_int_lt(f->n, 64);
    snprintf(f->name[f->n], sizeof f->name[0], "%s", name);
    snprintf(f->path[f->n], sizeof f->path[0], "%s", path);
    f->n++;
}

static int find(const found *f, const char *name)
{
    for (int i = 0; i < f->n; i++)
        if (strcmp(f->name[i], name) == 0)
            return i;
    return -1;
}

/* The file of a backend as listed on the current search path. */
static void path_of(const char *name, char *out, size_t cap)
{
    static found f;
    f.n = 0;
    metastep_list_backends(collect, &f);
    int i = find(&f, name);
    ck_assert_msg(i >= 0, "backend %s not listed", name);
    snprintf(out, cap, "%s", f.path[i]);
}

START_TEST(list_finds_builtin_backends)
{
    no_plugin_dir();
    static found f;
    f.n = 0;
    int n = metastep_list_backends(collect, &f);
    ck_assert_int_eq(n, f.n);
    ck_assert_int_eq(metastep_list_backends(NULL, NULL), n);
    const char *want[] = {"ref", "openblas", "onednn"};
    for (int w = 0; w < 3; w++) {
        int i = find(&f, want[w]);
        ck_assert_msg(i >= 0, "%s not found", want[w]);
        char tail[128];
        snprintf(tail, sizeof tail, "/libmetastep-backend-%s.so", want[w]);
        size_t pl = strlen(f.path[i]), tl = strlen(tail);
        ck_assert_uint_gt(pl, tl);
        ck_assert_str_eq(f.path[i] + pl - tl, tail);
        ck_assert_int_eq(access(f.path[i], R_OK), 0);
    }
    /* nothing is loaded by listing */
    ck_assert_ptr_null(metastep_backend_description("onednn"));
}
END_TEST

static size_t dir_len(const char *path) { return (size_t)(strrchr(path, '/') - path); }

START_TEST(list_sorted_within_directory_and_deduplicated)
{
    /* the plugin dir twice: every name once, from the first directory */
    setenv("METASTEP_BACKEND_PATH", TEST_PLUGIN_DIR ":" TEST_PLUGIN_DIR, 1);
    static found f;
    f.n = 0;
    metastep_list_backends(collect, &f);
    const char *want[] = {"failinit", "garbage", "noentry", "nullname", "partial", "short",
                          "wrongmajor", "ref", "openblas", "onednn"};
    for (int w = 0; w < 10; w++) {
        int i = find(&f, want[w]);
        ck_assert_msg(i >= 0, "%s not found", want[w]);
        for (int j = i + 1; j < f.n; j++)
            ck_assert_str_ne(f.name[i], f.name[j]);
    }
    ck_assert_uint_eq(dir_len(f.path[find(&f, "partial")]), strlen(TEST_PLUGIN_DIR));
    ck_assert_int_lt(find(&f, "partial"), find(&f, "ref")); /* METASTEP_BACKEND_PATH first */
    for (int i = 1; i < f.n; i++) {
        bool same_dir = dir_len(f.path[i - 1]) == dir_len(f.path[i]) &&
                        strncmp(f.path[i - 1], f.path[i], dir_len(f.path[i])) == 0;
        if (same_dir)
            ck_assert_msg(strcmp(f.name[i - 1], f.name[i]) < 0, "%s listed before %s",
                          f.name[i - 1], f.name[i]);
    }
    no_plugin_dir();
}
END_TEST

START_TEST(search_path_order_and_truncation)
{
    setenv("METASTEP_BACKEND_PATH", "/nonexistent/a::/nonexistent/b", 1);
    char buf[4096];
    size_t n = metastep_backend_search_path(buf, sizeof buf);
    ck_assert_uint_eq(n, strlen(buf));
    ck_assert_msg(strncmp(buf, "/nonexistent/a:/nonexistent/b:", 30) == 0, "%s", buf);
    char small[8];
    ck_assert_uint_eq(metastep_backend_search_path(small, sizeof small), n);
    ck_assert_uint_eq(strlen(small), sizeof small - 1);
    ck_assert_uint_eq(metastep_backend_search_path(NULL, 0), n);
    /* unreadable directories are skipped by the listing */
    ck_assert_int_ge(metastep_list_backends(NULL, NULL), 3);
    no_plugin_dir();
}
END_TEST

/* Issue 12: more than 32 entries made even ref unfindable (a fixed array
 * filled with the environment's entries first). */
START_TEST(search_path_any_length)
{
    char env[4096] = "";
    for (int i = 0; i < 40; i++)
        snprintf(env + strlen(env), sizeof env - strlen(env), "%s/nonexistent/d%d", i ? ":" : "",
                 i);
    setenv("METASTEP_BACKEND_PATH", env, 1);
    char buf[8192];
    metastep_backend_search_path(buf, sizeof buf);
    ck_assert_msg(strstr(buf, "/nonexistent/d39:"), "entry 40 missing: %s", buf);
    ck_assert_int_eq(metastep_set_backend("ref"), MS_OK);
    metastep_unset_backend();
    no_plugin_dir();
}
END_TEST

/* ------------------------------------------------------------ refusals */

/* Loading `name` is refused with MS_ERR_BACKEND, a message naming `file` and
 * holding each of `words`, and nothing is pushed or loaded. */
static void assert_refused(const char *name, const char *file, const char *const *words)
{
    use_plugin_dir();
    const char *before = metastep_current_backend();
    ck_assert_ptr_nonnull(before);
    for (int attempt = 0; attempt < 2; attempt++) { /* a refusal is not cached as a success */
        ms_clear_error();
        ck_assert_int_eq(metastep_set_backend(name), MS_ERR_BACKEND);
        ck_assert_int_eq(ms_last_error(NULL), MS_ERR_BACKEND);
        const char *msg = last_msg();
        ck_assert_has(msg, file);
        for (int i = 0; words[i]; i++)
            ck_assert_has(msg, words[i]);
        ck_assert_ptr_eq(metastep_current_backend(), before);
        ms_clear_error();
        const ms_backend *t = NULL;
        ck_assert_int_eq(metastep_load_backend(name, &t), MS_ERR_BACKEND);
        ck_assert_ptr_null(t);
        ck_assert_has(last_msg(), file);
    }
    /* nothing was pushed: the stack is still empty */
    ms_clear_error();
    ck_assert_int_eq(metastep_unset_backend(), MS_ERR_INVALID_ARG);
    ck_assert_ptr_eq(metastep_current_backend(), before);
    ms_clear_error();
    no_plugin_dir();
}

START_TEST(refuse_no_entry)
{
    const char *w[] = {"no entry symbol", MS_BACKEND_ENTRY_SYMBOL, NULL};
    assert_refused("noentry", PLUGIN("noentry"), w);
}
END_TEST

START_TEST(refuse_wrong_major)
{
    char built[32];
    snprintf(built, sizeof built, "ABI %d.%d", MS_BACKEND_ABI_MAJOR + 1, MS_BACKEND_ABI_MINOR);
    const char *w[] = {"ABI", built, NULL};
    assert_refused("wrongmajor", PLUGIN("wrongmajor"), w);
}
END_TEST

START_TEST(refuse_short_table)
{
    char need[32];
    snprintf(need, sizeof need, "%zu", (size_t)MS_BACKEND_MIN_SIZE);
    const char *w[] = {"short table", need, NULL};
    assert_refused("short", PLUGIN("short"), w);
}
END_TEST

START_TEST(refuse_garbage)
{
    /* the message carries dlerror's own text */
    dlerror();
    void *h = dlopen(PLUGIN("garbage"), RTLD_NOW | RTLD_LOCAL);
    ck_assert_ptr_null(h);
    char why[1024];
    snprintf(why, sizeof why, "%s", dlerror());
    ck_assert_uint_gt(strlen(why), 0);
    const char *w[] = {"dlopen failed", why, NULL};
    assert_refused("garbage", PLUGIN("garbage"), w);
}
END_TEST

START_TEST(refuse_null_name)
{
    const char *w[] = {"NULL", NULL};
    assert_refused("nullname", PLUGIN("nullname"), w);
}
END_TEST

START_TEST(refuse_failing_init)
{
    const char *w[] = {"init failed", ms_status_string(MS_ERR_INTERNAL), NULL};
    assert_refused("failinit", PLUGIN("failinit"), w);
}
END_TEST

START_TEST(refuse_by_path)
{
    /* the same refusals when the file is given by path */
    const char *w1[] = {"short table", NULL};
    assert_refused(PLUGIN("short"), PLUGIN("short"), w1);
    const char *w2[] = {"no entry symbol", NULL};
    assert_refused(PLUGIN("noentry"), PLUGIN("noentry"), w2);
    const char *w3[] = {"dlopen failed", "No such file", NULL};
    assert_refused("/nonexistent/libmetastep-backend-x.so", "/nonexistent/libmetastep-backend-x.so",
                   w3);
}
END_TEST

/* ------------------------------------------------------------- names */

START_TEST(unknown_name_lists_found_and_searched)
{
    use_plugin_dir();
    ms_clear_error();
    ck_assert_int_eq(metastep_set_backend("nosuch"), MS_ERR_BACKEND);
    const char *msg = last_msg();
    ck_assert_has(msg, "nosuch");
    ck_assert_has(msg, "libmetastep-backend-nosuch.so");
    const char *names[] = {"ref", "openblas", "onednn", "partial", "wrongmajor", "noentry"};
    for (int i = 0; i < 6; i++)
        ck_assert_has(msg, names[i]);
    ck_assert_has(msg, TEST_PLUGIN_DIR);
    assert_names_dirs(msg);
    ms_clear_error();
    ck_assert_int_eq(metastep_unset_backend(), MS_ERR_INVALID_ARG);
    ms_clear_error();
    no_plugin_dir();
}
END_TEST

START_TEST(name_with_slash_is_a_path)
{
    no_plugin_dir();
    char path[4096];
    path_of("ref", path, sizeof path);
    ck_assert_ptr_nonnull(strchr(path, '/'));
    ms_clear_error();
    ck_assert_int_eq(metastep_set_backend(path), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "ref");
    /* by name and by path: one backend, one table */
    const ms_backend *by_path = NULL, *by_name = NULL;
    ck_assert_int_eq(metastep_load_backend(path, &by_path), MS_OK);
    ck_assert_int_eq(metastep_load_backend("ref", &by_name), MS_OK);
    ck_assert_ptr_eq(by_path, by_name);
    ck_assert_str_eq(by_name->header.name, "ref");
    ck_assert_ptr_nonnull(metastep_backend_description("ref"));
    ck_assert_ptr_nonnull(metastep_backend_description(path));
    /* a differently spelt path to the same file is still the same backend */
    char dotted[4200];
    size_t dl = dir_len(path);
    snprintf(dotted, sizeof dotted, "%.*s/.%s", (int)dl, path, path + dl);
    const ms_backend *again = NULL;
    ck_assert_int_eq(metastep_load_backend(dotted, &again), MS_OK);
    ck_assert_ptr_eq(again, by_name);
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
}
END_TEST

START_TEST(invalid_names_refused)
{
    no_plugin_dir();
    const char *before = metastep_current_backend();
    const char *bad[] = {"a b", "", "x;y", "ref\n", "tab\there",
                         "a-very-long-name-that-goes-on-and-on-past-forty-eight-chars"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ms_clear_error();
        ck_assert_int_eq(metastep_set_backend(bad[i]), MS_ERR_BACKEND);
        ck_assert_has(last_msg(), "not a valid name");
        ck_assert_ptr_eq(metastep_current_backend(), before);
    }
    ms_clear_error();
    ck_assert_int_eq(metastep_set_backend(NULL), MS_ERR_NULL_ARG);
    const ms_backend *t = NULL;
    ck_assert_int_eq(metastep_load_backend(NULL, &t), MS_ERR_NULL_ARG);
    ck_assert_int_eq(metastep_load_backend("ref", NULL), MS_ERR_NULL_ARG);
    ms_clear_error();
    ck_assert_int_eq(metastep_unset_backend(), MS_ERR_INVALID_ARG);
    ms_clear_error();
    ck_assert_ptr_null(metastep_backend_description(NULL));
    ck_assert_ptr_null(metastep_backend_description("nope"));
}
END_TEST

/* ----------------------------------------------------------- default */

START_TEST(default_from_env)
{
    NEEDS_FORK();
    no_plugin_dir();
    setenv("METASTEP_BACKEND", "openblas", 1);
    ck_assert_str_eq(metastep_current_backend(), "openblas");
    ck_assert_int_eq(metastep_set_backend("ref"), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "ref");
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "openblas");
    ck_assert_ptr_nonnull(metastep_backend_description("openblas"));
}
END_TEST

START_TEST(default_is_ref)
{
    NEEDS_FORK();
    unsetenv("METASTEP_BACKEND");
    ck_assert_str_eq(metastep_current_backend(), "ref");
}
END_TEST

START_TEST(default_empty_env_is_ref)
{
    NEEDS_FORK();
    setenv("METASTEP_BACKEND", "", 1);
    ck_assert_str_eq(metastep_current_backend(), "ref");
}
END_TEST

START_TEST(default_unknown)
{
    NEEDS_FORK();
    no_plugin_dir();
    setenv("METASTEP_BACKEND", "nope", 1);
    ms_clear_error();
    ck_assert_ptr_null(metastep_current_backend());
    ck_assert_int_eq(ms_last_error(NULL), MS_ERR_BACKEND);
    const char *msg = last_msg();
    ck_assert_has(msg, "nope");
    ck_assert_has(msg, "ref");
    ck_assert_has(msg, "openblas");
    ck_assert_has(msg, "onednn");
    assert_names_dirs(msg);
    /* ops fail cleanly rather than crash */
    ms_clear_error();
    int64_t shape[1] = {2};
    float v[2] = {1, 2};
    ms_tensor *x = ms_tensor_from_data(MS_F32, 1, shape, v);
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_null(ms_add(x, x));
    ck_assert_int_eq(ms_last_error(NULL), MS_ERR_BACKEND);
    ms_release(x);
    /* an explicit backend still works, and the default stays unloadable */
    ms_clear_error();
    ck_assert_int_eq(metastep_set_backend("ref"), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "ref");
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_ptr_null(metastep_current_backend());
    ck_assert_int_eq(metastep_unset_backend(), MS_ERR_INVALID_ARG);
    ck_assert_int_eq(ms_live_tensors(), 0);
}
END_TEST

/* ------------------------------------------------------------- stack */

START_TEST(stack_like_ivy)
{
    no_plugin_dir();
    const char *def = metastep_current_backend();
    ck_assert_ptr_nonnull(def);
    ck_assert_int_eq(metastep_set_backend("openblas"), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "openblas");
    ck_assert_int_eq(metastep_set_backend("onednn"), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "onednn");
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "openblas");
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), def);
    ms_clear_error();
    ck_assert_int_eq(metastep_unset_backend(), MS_ERR_INVALID_ARG);
    ck_assert_int_eq(ms_last_error(NULL), MS_ERR_INVALID_ARG);
    ck_assert_str_eq(metastep_current_backend(), def);
    ms_clear_error();
    /* the same backend twice is two entries */
    ck_assert_int_eq(metastep_set_backend("onednn"), MS_OK);
    ck_assert_int_eq(metastep_set_backend("onednn"), MS_OK);
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "onednn");
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), def);
    /* a refused push in the middle leaves the stack as it was */
    use_plugin_dir();
    ck_assert_int_eq(metastep_set_backend("openblas"), MS_OK);
    ck_assert_int_eq(metastep_set_backend("short"), MS_ERR_BACKEND);
    ck_assert_str_eq(metastep_current_backend(), "openblas");
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), def);
    ms_clear_error();
    no_plugin_dir();
}
END_TEST

START_TEST(stack_depth_limit)
{
    no_plugin_dir();
    int pushed = 0;
    ms_clear_error();
    while (pushed < 1000 && metastep_set_backend(pushed % 2 ? "ref" : "openblas") == MS_OK)
        pushed++;
    ck_assert_int_ge(pushed, 16);
    ck_assert_int_lt(pushed, 1000);
    ck_assert_int_eq(ms_last_error(NULL), MS_ERR_INVALID_ARG);
    ck_assert_str_eq(metastep_current_backend(), (pushed - 1) % 2 ? "ref" : "openblas");
    for (int i = 0; i < pushed; i++)
        ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_int_eq(metastep_unset_backend(), MS_ERR_INVALID_ARG);
    ms_clear_error();
}
END_TEST

/* Tensors made under one backend are used under another. */
START_TEST(tensors_cross_backends)
{
    no_plugin_dir();
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    int64_t s[2] = {2, 3}, st[2] = {3, 2};
    ck_assert_int_eq(metastep_set_backend("ref"), MS_OK);
    ms_tensor *a = ms_random_normal(MS_F32, 2, s, 0, 1, 1);
    ms_tensor *b = ms_random_normal(MS_F32, 2, st, 0, 1, 2);
    ms_tensor *want = ms_tanh(ms_add(ms_matmul(a, b), ms_ones(MS_F32, 0, NULL)));
    ck_assert_ptr_nonnull(want);
    ck_assert_int_eq(metastep_set_backend("openblas"), MS_OK);
    ms_tensor *c = ms_matmul(a, b); /* made under openblas */
    ck_assert_int_eq(metastep_set_backend("onednn"), MS_OK);
    ms_tensor *d = ms_tanh(ms_add_scalar(c, 1.0)); /* used under onednn */
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ms_tensor *e = ms_sub(d, want); /* and back under ref */
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(ms_tensor_numel(e), 4);
    const float *v = ms_tensor_data(e);
    for (int i = 0; i < 4; i++)
        ck_assert_float_eq_tol(v[i], 0.0f, 1e-5f);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_live_tensors(), 0);
}
END_TEST

/* ---------------------------------------------------------- fallbacks */

static uint64_t fb(int k) { return metastep_fallback_count("partial", k); }

START_TEST(fallback_counting)
{
    use_plugin_dir();
    ck_assert_int_eq(ms_scope_push(), MS_OK);
    int64_t shape[1] = {4};
    const float xf[4] = {-1.5f, -0.25f, 0.5f, 2.0f};
    const double xd[4] = {-1.5, -0.25, 0.5, 2.0};
    ms_tensor *f = ms_tensor_from_data(MS_F32, 1, shape, xf);
    ms_tensor *d = ms_tensor_from_data(MS_F64, 1, shape, xd);
    ck_assert_ptr_nonnull(f);
    ck_assert_ptr_nonnull(d);

    /* reference results */
    ck_assert_int_eq(metastep_set_backend("ref"), MS_OK);
    ms_tensor *rt_f = ms_tanh(f), *rt_d = ms_tanh(d), *ra_f = ms_add(f, f), *ra_d = ms_add(d, d);
    ms_tensor *rs_f = ms_sum(f, 0, NULL, false);
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);

    ms_clear_error();
    ck_assert_int_eq(metastep_set_backend("partial"), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "partial");
    ck_assert_ptr_nonnull(metastep_backend_description("partial"));
    ck_assert_uint_eq(fb(-1), 0);

    ms_tensor *t_f = ms_tanh(f); /* native */
    ck_assert_uint_eq(fb(MS_KERNEL_UNARY), 0);
    ck_assert_uint_eq(fb(-1), 0);
    ms_tensor *t_d = ms_tanh(d); /* declined: float64 */
    ck_assert_uint_eq(fb(MS_KERNEL_UNARY), 1);
    ms_tensor *a_f = ms_add(f, f); /* NULL slot */
    ck_assert_uint_eq(fb(MS_KERNEL_BINARY), 1);
    ms_tensor *a_d = ms_add(d, d);
    ck_assert_uint_eq(fb(MS_KERNEL_BINARY), 2);
    ck_assert_uint_eq(fb(MS_KERNEL_UNARY), 1);
    ms_tensor *s_f = ms_sum(f, 0, NULL, false);
    ck_assert_uint_eq(fb(MS_KERNEL_REDUCE), 1);
    ck_assert_uint_eq(fb(-1), 4);
    ck_assert_uint_eq(metastep_fallback_count(NULL, MS_KERNEL_BINARY), 2); /* the active one */
    ck_assert_uint_eq(metastep_fallback_count("partial", MS_KERNEL_COUNT), 0);
    ck_assert_uint_eq(metastep_fallback_count("nope", -1), 0);
    ck_assert_uint_eq(metastep_fallback_count("ref", -1), 0);
    ck_assert_int_eq(ms_last_error(NULL), MS_OK);

    const float *pt = ms_tensor_data(t_f), *rpt = ms_tensor_data(rt_f);
    for (int i = 0; i < 4; i++) {
        ck_assert_float_eq_tol(pt[i], tanhf(xf[i]), 1e-6f);
        ck_assert_float_eq_tol(pt[i], rpt[i], 1e-6f);
    }
    /* what ref served is exactly ref's */
    ck_assert_mem_eq(ms_tensor_data(t_d), ms_tensor_data(rt_d), 4 * sizeof(double));
    ck_assert_mem_eq(ms_tensor_data(a_f), ms_tensor_data(ra_f), 4 * sizeof(float));
    ck_assert_mem_eq(ms_tensor_data(a_d), ms_tensor_data(ra_d), 4 * sizeof(double));
    ck_assert_mem_eq(ms_tensor_data(s_f), ms_tensor_data(rs_f), sizeof(float));

    /* counts are per backend and survive switching away */
    ck_assert_int_eq(metastep_set_backend("ref"), MS_OK);
    ms_add(d, d);
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_uint_eq(fb(MS_KERNEL_BINARY), 2);
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_int_eq(ms_scope_pop(), MS_OK);
    ck_assert_int_eq(ms_live_tensors(), 0);
    no_plugin_dir();
}
END_TEST

/* ------------------------------------------------- metastep backends */

#ifdef METASTEP_EXE
/* Run `metastep ARGS` with the environment prefix ENV (for env(1)); returns
 * the exit status, stdout and stderr in malloc'd strings. */
static int run_cli(const char *env, const char *args, char **out, char **err)
{
    char errfile[] = "/tmp/test_loader_stderr_XXXXXX";
    int fd = mkstemp(errfile);
    ck_assert_int_ge(fd, 0);
    close(fd);
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "env -u METASTEP_BACKEND_PATH %s '%s' %s 2>'%s'", env, METASTEP_EXE,
             args, errfile);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t cap = 1 << 16, n = 0;
    *out = malloc(cap);
    ck_assert_ptr_nonnull(*out);
    size_t r;
    while ((r = fread(*out + n, 1, cap - 1 - n, p)) > 0) {
        n += r;
        if (n == cap - 1) {
            cap *= 2;
            *out = realloc(*out, cap);
            ck_assert_ptr_nonnull(*out);
        }
    }
    (*out)[n] = '\0';
    int status = pclose(p);
    FILE *e = fopen(errfile, "r");
    ck_assert_ptr_nonnull(e);
    *err = calloc(1, 1 << 16);
    ck_assert_ptr_nonnull(*err);
    size_t en = fread(*err, 1, (1 << 16) - 1, e);
    (*err)[en] = '\0';
    fclose(e);
    unlink(errfile);
    ck_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* Issue 12: an installed library searched the build tree it was compiled in
 * before its install directory, so recreating that directory (build trees
 * often live in /tmp) planted a backend.  A copy of the library outside its
 * build tree, standing in for an installed one, must not search it. */
START_TEST(installed_library_ignores_build_tree)
{
    char dir[] = "/tmp/test_loader_installed_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char root[4096], cmd[8192];
    snprintf(root, sizeof root, "%s", METASTEP_EXE);
    *strrchr(root, '/') = '\0'; /* <build>/tools */
    *strrchr(root, '/') = '\0'; /* <build> */
    snprintf(cmd, sizeof cmd, "cp -L '%s/core/libmetastep.so.0' '%s/'", root, dir);
    ck_assert_int_eq(system(cmd), 0);
    char env[4200], *out = NULL, *err = NULL;
    snprintf(env, sizeof env, "LD_LIBRARY_PATH='%s'", dir);
    run_cli(env, "backends --json", &out, &err);
    char build_backends[4200];
    snprintf(build_backends, sizeof build_backends, "%s/backends", root);
    ck_assert_msg(strstr(out, "\"search_path\""), "no search path in: %s", out);
    ck_assert_msg(!strstr(out, build_backends) && !strstr(err, build_backends),
                  "the installed copy searches the build tree:\n%s\n%s", out, err);
    free(out);
    free(err);
    /* the uninstalled library itself still finds its build tree's backends */
    run_cli("", "backends --json", &out, &err);
    ck_assert_msg(strstr(out, build_backends), "%s", out);
    free(out);
    free(err);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(cli_unknown_default)
{
    no_plugin_dir();
    char *out, *err;
    int rc = run_cli("METASTEP_BACKEND=nope", "backends", &out, &err);
    ck_assert_int_ne(rc, 0);
    ck_assert_has(err, "nope");
    ck_assert_has(err, "cannot be loaded");
    ck_assert_has(err, "ref");
    ck_assert_has(err, "openblas");
    ck_assert_has(err, "onednn");
    assert_names_dirs(err);
    ck_assert_has(out, "search path:");
    assert_names_dirs(out);
    free(out);
    free(err);
}
END_TEST

START_TEST(cli_json)
{
    no_plugin_dir();
    char *out, *err;
    int rc = run_cli("METASTEP_BACKEND=ref", "backends --json", &out, &err);
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(err, "");
    const char *names[] = {"\"name\": \"onednn\"", "\"name\": \"openblas\"", "\"name\": \"ref\""};
    const char *prev = out;
    for (int i = 0; i < 3; i++) {
        const char *at = strstr(out, names[i]);
        ck_assert_msg(at != NULL, "expected %s in: %s", names[i], out);
        ck_assert_msg(at >= prev, "%s out of order in: %s", names[i], out);
        prev = at;
    }
    ck_assert_has(out, "\"default\": \"ref\"");
    ck_assert_has(out, "\"search_path\": ");
    ck_assert_has(out, "\"fallback\": []"); /* ref serves everything */
    ck_assert_int_eq(out[0], '{');
    free(out);
    free(err);

    /* the test plugins: the partial one's slots, the refusals' reasons */
    rc = run_cli("METASTEP_BACKEND=ref METASTEP_BACKEND_PATH='" TEST_PLUGIN_DIR "'",
                 "backends --json", &out, &err);
    ck_assert_int_eq(rc, 0);
    ck_assert_has(out, "\"name\": \"partial\"");
    ck_assert_has(out, "\"native\": [\"unary\"]");
    ck_assert_has(out, "\"name\": \"short\"");
    ck_assert_has(out, "short table");
    ck_assert_has(out, "\"name\": \"garbage\"");
    ck_assert_has(out, "dlopen failed");
    ck_assert_has(out, TEST_PLUGIN_DIR);
    free(out);
    free(err);
}
END_TEST

START_TEST(cli_text_and_bad_option)
{
    no_plugin_dir();
    char *out, *err;
    int rc = run_cli("METASTEP_BACKEND=openblas", "backends", &out, &err);
    ck_assert_int_eq(rc, 0);
    ck_assert_has(out, "default:     openblas");
    ck_assert_has(out, "onednn\n");
    ck_assert_has(out, "description:");
    free(out);
    free(err);
    rc = run_cli("", "backends --bogus", &out, &err);
    ck_assert_int_eq(rc, 2);
    ck_assert_has(err, "--bogus");
    free(out);
    free(err);
}
END_TEST

/* Issue 13: each backend says whether its kernels thread inside and what
 * metastep train --threads N gives them. */
START_TEST(cli_threads)
{
    no_plugin_dir();
    char *out, *err;
    int rc = run_cli("METASTEP_BACKEND=ref OPENBLAS_NUM_THREADS=2", "backends --json --threads 3",
                     &out, &err);
    ck_assert_int_eq(rc, 0);
    const char *ref = strstr(out, "\"name\": \"ref\""), *blas = strstr(out, "\"name\": \"openblas\"");
    ck_assert_ptr_nonnull(ref);
    ck_assert_ptr_nonnull(blas);
    ck_assert_msg(strstr(ref, "\"threads\": {\"thread_safe\": true, \"internal\": false, "
                              "\"internal_now\": 1, \"train_threads\": 3, \"unbatched\": "
                              "{\"tasks\": 3, \"kernel_threads\": 1}, \"batched\": {\"tasks\": 1, "
                              "\"kernel_threads\": 1}}") != NULL, "%s", ref);
    ck_assert_msg(strstr(blas, "\"threads\": {\"thread_safe\": true, \"internal\": true, "
                               "\"internal_now\": 2, \"train_threads\": 3, \"unbatched\": "
                               "{\"tasks\": 3, \"kernel_threads\": 1}, \"batched\": {\"tasks\": 1, "
                               "\"kernel_threads\": 3}}") != NULL, "%s", blas);
    free(out);
    free(err);
    rc = run_cli("METASTEP_BACKEND=ref", "backends --threads 2", &out, &err);
    ck_assert_int_eq(rc, 0);
    ck_assert_has(out, "train --threads 2: unbatched steps up to 2 tasks at once x 1 kernel "
                       "thread; batched steps and evaluation 1 x 1\n");
    free(out);
    free(err);
    rc = run_cli("", "backends --threads 0", &out, &err);
    ck_assert_int_eq(rc, 2);
    free(out);
    free(err);
}
END_TEST
#endif

/* metastep_set_backend_threads: the ABI 1.2 slot of the active backend. */
START_TEST(backend_threads)
{
    ck_assert_int_eq(metastep_set_backend("ref"), MS_OK);
    ck_assert_int_eq(metastep_set_backend_threads(4), 0); /* ref does not thread */
    ck_assert_int_eq(metastep_set_backend_threads(0), 0);
    ck_assert_int_eq(metastep_set_backend("openblas"), MS_OK);
    int before = metastep_set_backend_threads(0);
    ck_assert_int_ge(before, 1);
    ck_assert_int_eq(metastep_set_backend_threads(3), before);
    ck_assert_int_eq(metastep_set_backend_threads(0), 3); /* asking changes nothing */
    ck_assert_int_eq(metastep_set_backend_threads(-1), 3);
    ck_assert_int_eq(metastep_set_backend_threads(before), 3);
    ck_assert_int_eq(metastep_set_backend_threads(0), before);
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
    ck_assert_int_eq(metastep_unset_backend(), MS_OK);
}
END_TEST

static Suite *loader_suite(void)
{
    Suite *s = suite_create("loader");
    TCase *tc;

    tc = tcase_create("list");
    tcase_add_test(tc, list_finds_builtin_backends);
    tcase_add_test(tc, list_sorted_within_directory_and_deduplicated);
    tcase_add_test(tc, search_path_order_and_truncation);
    tcase_add_test(tc, search_path_any_length);
    suite_add_tcase(s, tc);

    tc = tcase_create("refusals");
    tcase_add_test(tc, refuse_no_entry);
    tcase_add_test(tc, refuse_wrong_major);
    tcase_add_test(tc, refuse_short_table);
    tcase_add_test(tc, refuse_garbage);
    tcase_add_test(tc, refuse_null_name);
    tcase_add_test(tc, refuse_failing_init);
    tcase_add_test(tc, refuse_by_path);
    suite_add_tcase(s, tc);

    tc = tcase_create("names");
    tcase_add_test(tc, unknown_name_lists_found_and_searched);
    tcase_add_test(tc, name_with_slash_is_a_path);
    tcase_add_test(tc, invalid_names_refused);
    suite_add_tcase(s, tc);

    tc = tcase_create("default");
    tcase_add_test(tc, default_from_env);
    tcase_add_test(tc, default_is_ref);
    tcase_add_test(tc, default_empty_env_is_ref);
    tcase_add_test(tc, default_unknown);
    suite_add_tcase(s, tc);

    tc = tcase_create("stack");
    tcase_add_test(tc, stack_like_ivy);
    tcase_add_test(tc, stack_depth_limit);
    tcase_add_test(tc, tensors_cross_backends);
    tcase_add_test(tc, backend_threads);
    suite_add_tcase(s, tc);

    tc = tcase_create("fallback");
    tcase_add_test(tc, fallback_counting);
    suite_add_tcase(s, tc);

#ifdef METASTEP_EXE
    tc = tcase_create("cli");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, cli_unknown_default);
    tcase_add_test(tc, cli_json);
    tcase_add_test(tc, installed_library_ignores_build_tree);
    tcase_add_test(tc, cli_text_and_bad_option);
    tcase_add_test(tc, cli_threads);
    suite_add_tcase(s, tc);
#endif
    return s;
}

int main(void)
{
    /* nothing may touch metastep here: each forked test starts fresh */
    SRunner *r = srunner_create(loader_suite());
    forking = srunner_fork_status(r) != CK_NOFORK;
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
