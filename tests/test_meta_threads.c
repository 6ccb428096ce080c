/* The meta steps on several threads (metastep_options.threads): cost,
 * gradients and adapted variables are bit-identical (memcmp) to one thread
 * for 1, 2, 3 and 4 threads, for MAML, FOMAML and Reptile, batched and
 * unbatched, with and without inner_v masks, batch functions, stop_gradients
 * and variables that already require a gradient; an error in one task gives
 * the status and message of one thread (the first failing task in task
 * order wins); nothing leaks.  Runs once per backend (METASTEP_BACKEND), and
 * under AddressSanitizer and ThreadSanitizer in scripts/test. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "testutil.h"

#include "six_tasks.h"


static int ncases;

static void check_case(const cfg *c)
{
    ms_container *batch = make_batch(), *vars = make_vars(c->rg);
    metastep_result ref;
    const char *msg = NULL;
    ms_status st = step(c, batch, vars, 0, NULL, &ref);
    ms_last_error(&msg);
    ck_assert_msg(st == MS_OK, "threads 0: %s", msg);
    for (int th = 1; th <= 4; th++) {
        metastep_result r;
        st = step(c, batch, vars, th, NULL, &r);
        ms_last_error(&msg);
        ck_assert_msg(st == MS_OK, "threads %d: %s", th, msg);
        ck_assert_msg(same_tensor(ref.cost, r.cost) && same_container(ref.grads, r.grads) &&
                          same_container(ref.inner_v, r.inner_v),
                      "alg %d batched %d mask %d batch_fn %d stop %d avg %d rg %d ret %d: "
                      "threads %d differs from threads 0 (cost %.9g vs %.9g)",
                      c->alg, c->batched, c->mask, c->batch_fn, c->stop, c->avg, c->rg,
                      (int)c->ret, th, ms_tensor_item(ref.cost), ms_tensor_item(r.cost));
        metastep_result_release(&r);
    }
    metastep_result_release(&ref);
    ms_container_release(batch);
    ms_container_release(vars);
    ncases++;
}

START_TEST(bit_identical)
{
    /* _i: the algorithm; the other options over their whole product */
    for (int m = 0; m < 64; m++) {
        cfg c = {.alg = _i, .batched = m & 1, .mask = m & 2, .batch_fn = m & 4, .stop = !(m & 8),
                 .avg = m & 16, .rg = m & 32, .ret = (metastep_return_inner)(m % 3)};
        if (c.alg == 2 && (c.mask || c.batch_fn || c.avg))
            continue; /* Reptile takes none of these */
        check_case(&c);
    }
    ck_assert_int_gt(ncases, 0);
}
END_TEST

/* Tasks 2 and 4 fail: task 2's message, whatever thread got there first. */
START_TEST(first_failing_task_wins)
{
    ms_container *batch = make_batch(), *vars = make_vars(false);
    failing[0] = 2;
    failing[1] = 4;
    for (int alg = 0; alg < 3; alg++) {
        cfg c = {.alg = alg, .stop = true};
        metastep_result r;
        ms_clear_error();
        ms_status st0 = step(&c, batch, vars, 0, NULL, &r);
        const char *m = NULL;
        ms_last_error(&m);
        char msg0[1024];
        snprintf(msg0, sizeof msg0, "%s", m);
        ck_assert_int_ne(st0, MS_OK);
        ck_assert_ptr_null(r.cost);
        ck_assert_ptr_nonnull(strstr(msg0, "task 2 refuses"));
        for (int th = 1; th <= 4; th++) {
            for (int rep = 0; rep < 5; rep++) {
                ms_clear_error();
                ms_status st = step(&c, batch, vars, th, NULL, &r);
                ms_last_error(&m);
                ck_assert_int_eq(st, st0);
                ck_assert_str_eq(m, msg0);
                ck_assert_ptr_null(r.cost);
                ck_assert_ptr_null(r.grads);
                ck_assert_ptr_null(r.inner_v);
            }
        }
    }
    failing[0] = failing[1] = -1;
    ms_clear_error();
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

/* Workers compute on the caller's backend: its thread override too. */
START_TEST(workers_follow_the_callers_backend)
{
    ms_container *batch = make_batch(), *vars = make_vars(false);
    cfg c = {.alg = 0, .stop = true, .ret = METASTEP_RETURN_INNER_ALL};
    ck_assert_int_eq(metastep_set_thread_backend("ref"), MS_OK);
    metastep_result a, b;
    ck_assert_int_eq(step(&c, batch, vars, 0, NULL, &a), MS_OK);
    ck_assert_int_eq(step(&c, batch, vars, 3, NULL, &b), MS_OK);
    ck_assert_int_eq(metastep_unset_thread_backend(), MS_OK);
    ck_assert(same_tensor(a.cost, b.cost) && same_container(a.grads, b.grads) &&
              same_container(a.inner_v, b.inner_v));
    metastep_result_release(&a);
    metastep_result_release(&b);
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

START_TEST(negative_threads_refused)
{
    ms_container *batch = make_batch(), *vars = make_vars(false);
    cfg c = {.alg = 1};
    metastep_result r;
    ck_assert_int_eq(step(&c, batch, vars, -1, NULL, &r), MS_ERR_INVALID_ARG);
    ms_clear_error();
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

/* The pool can be shut down and started again. */
START_TEST(shutdown_and_restart)
{
    ms_container *batch = make_batch(), *vars = make_vars(false);
    cfg c = {.alg = 1, .stop = true};
    for (int k = 0; k < 3; k++) {
        metastep_result r;
        ck_assert_int_eq(step(&c, batch, vars, 2 + k, NULL, &r), MS_OK);
        metastep_result_release(&r);
        metastep_shutdown_threads();
    }
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("meta_threads");
    TCase *tc = tcase_create("threads");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, bit_identical, 0, 3);
    tcase_add_test(tc, first_failing_task_wins);
    tcase_add_test(tc, workers_follow_the_callers_backend);
    tcase_add_test(tc, negative_threads_refused);
    tcase_add_test(tc, shutdown_and_restart);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
