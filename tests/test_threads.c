/* Per-thread backends (metastep_set_thread_backend): four threads compute at
 * once, each on its own backend, and every result is bit-identical to the
 * same computation run alone on that backend; a thread without an override
 * follows the process-wide stack.  The process-wide stack alone could not
 * do this (issue 12: 166-199 of 200 steps ran on another thread's backend).
 * Run with METASTEP_ONEDNN_MIN_WORK=0 so that oneDNN serves the small
 * problems itself; scripts/test also runs it under ThreadSanitizer. */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "testutil.h"

#define NB 4
#define ITERS 200
#define N 24
static const char *const backends[NB] = {"ref", "openblas", "onednn", "ref"};

/* A small computation touching gemm, unary, binary, reduce and softmax:
 * sum(softmax(tanh(a @ b) * 3 + a)), as float32 bytes. */
static void compute(float *out)
{
    ms_scope_push();
    int64_t s[2] = {N, N};
    ms_tensor *a = ms_random_uniform(MS_F32, 2, s, -1, 1, 11);
    ms_tensor *b = ms_random_uniform(MS_F32, 2, s, -1, 1, 12);
    ms_tensor *y = ms_softmax(ms_add(ms_mul_scalar(ms_tanh(ms_matmul(a, b)), 3.0), a), 1);
    ms_tensor *r = ms_sum(ms_mul(y, a), 1, (int[]){0}, false);
    if (r)
        memcpy(out, ms_tensor_data(r), N * sizeof *out);
    else
        memset(out, 0xff, N * sizeof *out);
    ms_scope_pop();
}

static float expected[NB][N];
static atomic_int wrong_backend, wrong_value, set_failed;

typedef struct job {
    int b;
} job;

static void *worker(void *p)
{
    const job *j = p;
    if (metastep_set_thread_backend(backends[j->b]) != MS_OK) {
        atomic_fetch_add(&set_failed, 1);
        return NULL;
    }
    float got[N];
    for (int i = 0; i < ITERS; i++) {
        const char *cur = metastep_current_backend();
        if (!cur || strcmp(cur, backends[j->b]) != 0)
            atomic_fetch_add(&wrong_backend, 1);
        compute(got);
        if (memcmp(got, expected[j->b], sizeof got) != 0)
            atomic_fetch_add(&wrong_value, 1);
    }
    metastep_unset_thread_backend();
    return NULL;
}

START_TEST(four_threads_four_backends)
{
    for (int b = 0; b < NB; b++) {
        ck_assert_int_eq(metastep_set_backend(backends[b]), MS_OK);
        compute(expected[b]);
        metastep_unset_backend();
    }
    /* the backends really differ somewhere, or the test could not tell */
    ck_assert_msg(memcmp(expected[0], expected[2], sizeof expected[0]) != 0 ||
                      memcmp(expected[0], expected[1], sizeof expected[0]) != 0,
                  "ref, openblas and onednn agree to the bit: the test cannot see a mix-up");
    pthread_t th[NB];
    job jobs[NB];
    for (int b = 0; b < NB; b++) {
        jobs[b].b = b;
        ck_assert_int_eq(pthread_create(&th[b], NULL, worker, &jobs[b]), 0);
    }
    /* meanwhile the process-wide stack moves under them */
    for (int i = 0; i < 50; i++) {
        metastep_set_backend(backends[i % NB]);
        metastep_unset_backend();
    }
    for (int b = 0; b < NB; b++)
        pthread_join(th[b], NULL);
    ck_assert_int_eq(atomic_load(&set_failed), 0);
    ck_assert_int_eq(atomic_load(&wrong_backend), 0);
    ck_assert_int_eq(atomic_load(&wrong_value), 0);
}
END_TEST

static void *plain_worker(void *p)
{
    const char **name = p;
    *name = metastep_current_backend();
    return NULL;
}

START_TEST(override_is_per_thread_and_nests)
{
    ck_assert_int_eq(metastep_set_backend("openblas"), MS_OK);
    ck_assert_int_eq(metastep_set_thread_backend("onednn"), MS_OK);
    ck_assert_int_eq(metastep_set_thread_backend("ref"), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "ref");
    const char *other = NULL;
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, plain_worker, &other), 0);
    pthread_join(t, NULL);
    ck_assert_str_eq(other, "openblas"); /* no override there: the process-wide stack */
    ck_assert_int_eq(metastep_unset_thread_backend(), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "onednn");
    ck_assert_int_eq(metastep_unset_thread_backend(), MS_OK);
    ck_assert_str_eq(metastep_current_backend(), "openblas");
    ck_assert_int_eq(metastep_unset_thread_backend(), MS_ERR_INVALID_ARG);
    ms_clear_error();
    ck_assert_int_eq(metastep_set_thread_backend("nope"), MS_ERR_BACKEND);
    ck_assert_str_eq(metastep_current_backend(), "openblas");
    ck_assert_int_eq(metastep_set_thread_backend(NULL), MS_ERR_NULL_ARG);
    ms_clear_error();
    metastep_unset_backend();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("thread backends");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_add_test(tc, four_threads_four_backends);
    tcase_add_test(tc, override_is_per_thread_and_nests);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
