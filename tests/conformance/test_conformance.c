/* The conformance suite: every kernel family of the backend named by
 * METASTEP_BACKEND against the reference backend, one check test per family
 * so that a failure names the family and, in its message, the kernels
 * (family/op/dtype).  Also checks that `metastep conformance` passes a correct
 * third-party backend and fails a wrong one, naming the wrong kernel.
 * The engine is conformance/conformance.c, shared with the command. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "conformance.h"
#include "metastep/backend.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#ifdef UNDER_ASAN
/* LeakSanitizer's exit-time tracer crashes ("Tracer caught signal 11") while
 * walking the dynamic TLS of libgomp's worker threads, which oneDNN starts;
 * not tracking __tls_get_addr avoids it.  ASAN_OPTIONS still applies on top. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "intercept_tls_get_addr=0"; }
#endif

static const char *backend(void)
{
    const char *b = getenv("METASTEP_BACKEND");
    return b && *b ? b : "ref";
}

START_TEST(test_family)
{
    const char *fam[] = {conf_families[_i], NULL};
    conf_report *r = conf_run(backend(), fam);
    ck_assert_ptr_nonnull(r);
    conf_print(stdout, r, false);
    fflush(stdout);
    char msg[2048] = "";
    size_t o = 0;
    for (int i = 0; i < r->nrows && o < sizeof msg; i++)
        if (r->rows[i].failed)
            o += (size_t)snprintf(msg + o, sizeof msg - o, "%s%s: %s", o ? "; " : "",
                                  r->rows[i].kernel, r->rows[i].first_failure);
    int failures = conf_failures(r);
    int rows = r->nrows;
    char error[1024];
    snprintf(error, sizeof error, "%s", r->error);
    conf_free(r);
    ck_assert_msg(!error[0], "%s", error);
    ck_assert_msg(rows > 0, "no cases ran for family %s", conf_families[_i]);
    ck_assert_msg(failures == 0, "backend %s failed: %s", backend(), msg);
}
END_TEST

/* Runs `metastep conformance` on a backend file; returns its exit status and
 * its output (stdout and stderr) in buf. */
static int run_command(const char *so, const char *extra, char *buf, size_t cap)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "'%s' conformance --backend '%s' --quiet %s 2>&1", METASTEP_EXE,
             so, extra);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = fread(buf, 1, cap - 1, p);
    buf[n] = '\0';
    int st = pclose(p);
    ck_assert_msg(WIFEXITED(st), "metastep conformance did not exit normally: %s", buf);
    return WEXITSTATUS(st);
}

START_TEST(test_thirdparty_good)
{
    static char out[1 << 16];
    int st = run_command(THIRDPARTY_GOOD, "--family unary --family ops --family grad", out,
                         sizeof out);
    ck_assert_msg(st == 0, "exit status %d for a correct backend:\n%s", st, out);
    ck_assert_msg(strstr(out, "thirdparty-good") != NULL, "backend not named:\n%s", out);
}
END_TEST

START_TEST(test_thirdparty_bad)
{
    static char out[1 << 16];
    int st = run_command(THIRDPARTY_BAD, "--family unary --family ops --family grad", out,
                         sizeof out);
    ck_assert_msg(st == 1, "exit status %d for a wrong backend:\n%s", st, out);
    ck_assert_msg(strstr(out, "FAIL unary/tanh/float32") != NULL, "tanh not named:\n%s", out);
    ck_assert_msg(strstr(out, "FAIL unary/tanh/float64") != NULL, "tanh not named:\n%s", out);
    /* Only tanh is wrong: no other unary op may be blamed. */
    for (int op = 0; op < MS_UNARY_COUNT; op++) {
        if (op == MS_UNARY_TANH)
            continue;
        char needle[64];
        snprintf(needle, sizeof needle, "FAIL unary/%s/", ms_unary_op_name((ms_unary_op)op));
        ck_assert_msg(strstr(out, needle) == NULL, "%s blamed:\n%s", needle + 5, out);
    }
}
END_TEST

START_TEST(test_thirdparty_engine)
{
    /* The engine itself, without the command: the bad backend's tanh row fails. */
    const char *fam[] = {"unary", NULL};
    conf_report *r = conf_run(THIRDPARTY_BAD, fam);
    ck_assert_ptr_nonnull(r);
    ck_assert_str_eq(r->name, "thirdparty-bad");
    int tanh_failed = 0, others_failed = 0;
    for (int i = 0; i < r->nrows; i++) {
        if (!r->rows[i].failed)
            continue;
        if (strstr(r->rows[i].kernel, "/tanh/"))
            tanh_failed++;
        else
            others_failed++;
    }
    conf_free(r);
    ck_assert_int_eq(tanh_failed, 2);
    ck_assert_int_eq(others_failed, 0);
}
END_TEST

START_TEST(test_thirdparty_abi10)
{
    /* The good backend is an ABI 1.0 table: the engine must not read its 1.1
     * (convolution) slots, and reports those kernels as served by ref. */
    const char *fam[] = {"conv", "threads", NULL};
    conf_report *r = conf_run(THIRDPARTY_GOOD, fam);
    ck_assert_ptr_nonnull(r);
    int conv_rows = 0;
    for (int i = 0; i < r->nrows; i++) {
        const conf_row *row = &r->rows[i];
        ck_assert_msg(!row->failed, "%s failed: %s", row->kernel, row->first_failure);
        if (strstr(row->kernel, "conv2d")) {
            conv_rows++;
            ck_assert_msg(row->native == 0 && row->fallback == row->cases && row->cases > 0,
                          "%s: %d native, %d fallback of %d", row->kernel, row->native,
                          row->fallback, row->cases);
        }
    }
    conf_free(r);
    ck_assert_int_eq(conv_rows, 12); /* 3 kernels x 2 dtypes, in conv and in threads */
}
END_TEST

START_TEST(test_unknown_backend)
{
    conf_report *r = conf_run("no-such-backend", NULL);
    ck_assert_ptr_nonnull(r);
    ck_assert(r->error[0] != '\0');
    ck_assert_int_eq(r->nrows, 0);
    ck_assert_int_gt(conf_failures(r), 0);
    conf_free(r);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("conformance");
    for (int f = 0; f < conf_family_count; f++) {
        TCase *tc = tcase_create(conf_families[f]);
        tcase_set_timeout(tc, 600);
        tcase_add_loop_test(tc, test_family, f, f + 1);
        suite_add_tcase(s, tc);
    }
    TCase *tc = tcase_create("thirdparty");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_thirdparty_good);
    tcase_add_test(tc, test_thirdparty_bad);
    tcase_add_test(tc, test_thirdparty_engine);
    tcase_add_test(tc, test_thirdparty_abi10);
    tcase_add_test(tc, test_unknown_backend);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
