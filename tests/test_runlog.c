/* curves.png is drawn from log.csv, the whole run (issue 12, item 17): the
 * rows of a run interrupted and resumed, every held-out series (after 0, 1
 * and 10 steps), and the smoothed training loss. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "runlog.h"

START_TEST(whole_run_from_the_log)
{
    char path[] = "/tmp/metastep-runlog-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "step,train_loss,heldout_loss_0,heldout_loss_1,seconds,heldout_acc_0,"
               "heldout_acc_1,heldout_loss_10,heldout_acc_10\n");
    /* 300 steps: the first 120 before a Ctrl-C, the rest after --resume
     * (seconds restart); held-out every 50 steps; a torn last row */
    for (int s = 1; s <= 300; s++) {
        double t = s <= 120 ? s * 0.01 : (s - 120) * 0.01;
        if (s % 50 == 0)
            fprintf(f, "%d,%g,%g,%g,%.3f,nan,nan,%g,nan\n", s, 1.0 + (s % 2), 3.0, 2.0, t, 1.0);
        else
            fprintf(f, "%d,%g,nan,nan,%.3f,nan,nan,nan,nan\n", s, 1.0 + (s % 2), t);
    }
    fprintf(f, "301,0.5,na");
    fclose(f);
    run_log l;
    ck_assert(run_log_read(path, &l));
    unlink(path);
    ck_assert_int_eq(l.n, 300);
    for (long i = 0; i < l.n; i++)
        ck_assert_double_eq(l.step[i], (double)(i + 1));
    ck_assert_int_eq(l.ne, 6);
    for (long i = 0; i < l.ne; i++) {
        ck_assert_double_eq(l.es[i], 50.0 * (double)(i + 1));
        ck_assert_double_eq(l.h[0][i], 3.0);
        ck_assert_double_eq(l.h[1][i], 2.0);
        ck_assert_double_eq(l.h[2][i], 1.0); /* the 10-step series is drawn too */
    }
    /* the smoothed training loss: the alternating 1, 2 band becomes ~1.5 */
    double *sm = run_log_smooth(l.train, l.n, 10);
    ck_assert_ptr_nonnull(sm);
    for (long i = 10; i < l.n - 10; i++)
        ck_assert_msg(fabs(sm[i] - 1.5) < 0.1, "smoothed[%ld] = %g", i, sm[i]);
    free(sm);
    run_log_free(&l);
    ck_assert(!run_log_read("/nonexistent/log.csv", &l));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("runlog");
    TCase *tc = tcase_create("runlog");
    tcase_add_test(tc, whole_run_from_the_log);
    suite_add_tcase(s, tc);
    SRunner *r = srunner_create(s);
    srunner_run_all(r, CK_NORMAL);
    int failed = srunner_ntests_failed(r);
    srunner_free(r);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
