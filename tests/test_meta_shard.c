/* Sharded meta steps (metastep_options.shard), the hook behind
 * include/metastep/mpi.h, simulated in one process: R "processes" each run
 * their contiguous share of the tasks; a first pass captures every
 * process's records, a second pass hands each process the others' records
 * (as an all-gather would).  Every process's cost, gradients and adapted
 * variables must equal the unsharded step's bit for bit (memcmp), for R = 1
 * 1, 2, 3 and 7 (more processes than tasks), 1 and 2 threads, MAML, FOMAML
 * and Reptile, with and without masks, batch functions, averaging across
 * steps and returned adapted variables; a failing task fails every process
 * with the unsharded step's status and message; invalid shards are refused.
 * Runs once per backend (METASTEP_BACKEND). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "testutil.h"

#include "six_tasks.h"


/* The simulated exchange: capture copies this process's records out (and
 * fails the step); replay fills the others' records from the capture. */
typedef struct sim {
    char *all;    /* num_tasks records */
    size_t bytes; /* of one record */
    int n;
    bool replay;
} sim;

static ms_status sim_exchange(void *ctx, void *records, size_t bytes, int n, int first, int count)
{
    sim *s = ctx;
    if (!s->all) {
        s->all = calloc((size_t)n, bytes);
        s->bytes = bytes;
        s->n = n;
    }
    ck_assert_uint_eq(bytes, s->bytes);
    ck_assert_int_eq(n, s->n);
    if (!s->replay) {
        memcpy(s->all + (size_t)first * bytes, (char *)records + (size_t)first * bytes,
               (size_t)count * bytes);
        return ms_record_error(MS_ERR_IO, "captured");
    }
    for (int t = 0; t < n; t++)
        if (t < first || t >= first + count)
            memcpy((char *)records + (size_t)t * bytes, s->all + (size_t)t * bytes, bytes);
        else /* this process's own records are the ones it captured */
            ck_assert_int_eq(memcmp((char *)records + (size_t)t * bytes,
                                    s->all + (size_t)t * bytes, bytes), 0);
    return MS_OK;
}

static void share(int n, int ranks, int rank, int *first, int *count)
{
    int base = n / ranks, extra = n % ranks;
    *first = rank * base + (rank < extra ? rank : extra);
    *count = base + (rank < extra ? 1 : 0);
}

/* Run the step as R processes: 0 or the first failing status (message in
 * msg); each process's result compared with ref when ref is non-NULL. */
static ms_status run_sharded(const cfg *c, const ms_container *batch, const ms_container *vars,
                             int R, int threads, const metastep_result *ref, char *msg,
                             size_t cap)
{
    sim s = {0};
    metastep_shard sh[16];
    for (int r = 0; r < R; r++) {
        share(T, R, r, &sh[r].first, &sh[r].count);
        sh[r].exchange = sim_exchange;
        sh[r].ctx = &s;
        metastep_result out;
        ms_clear_error();
        ms_status st = step(c, batch, vars, threads, &sh[r], &out);
        const char *m = NULL;
        ms_last_error(&m);
        ck_assert_msg(st == MS_ERR_IO, "capture of process %d of %d: %d %s", r, R, st, m);
        ck_assert_ptr_null(out.cost);
    }
    s.replay = true;
    ms_status first = MS_OK;
    for (int r = 0; r < R; r++) {
        metastep_result out;
        ms_clear_error();
        ms_status st = step(c, batch, vars, threads, &sh[r], &out);
        const char *m = NULL;
        ms_last_error(&m);
        if (r == 0) {
            first = st;
            snprintf(msg, cap, "%s", m ? m : "");
        } else {
            ck_assert_int_eq(st, first);
            ck_assert_str_eq(m ? m : "", msg);
        }
        if (st == MS_OK && ref)
            ck_assert_msg(same_tensor(ref->cost, out.cost) && same_container(ref->grads, out.grads) &&
                              same_container(ref->inner_v, out.inner_v),
                          "alg %d mask %d batch_fn %d avg %d rg %d ret %d: process %d of %d "
                          "(threads %d) differs from one process (cost %.9g vs %.9g)",
                          c->alg, c->mask, c->batch_fn, c->avg, c->rg, (int)c->ret, r, R,
                          threads, ms_tensor_item(ref->cost), ms_tensor_item(out.cost));
        if (st != MS_OK)
            ck_assert_ptr_null(out.cost);
        metastep_result_release(&out);
    }
    free(s.all);
    return first;
}

static int ncases;

START_TEST(bit_identical)
{
    for (int m = 0; m < 32; m++) {
        cfg c = {.alg = _i, .mask = m & 1, .batch_fn = m & 2, .stop = true, .avg = m & 4,
                 .rg = m & 8, .ret = (metastep_return_inner)((m >> 4) ? (m % 3) : 0)};
        if (c.alg == 2 && (c.mask || c.batch_fn || c.avg))
            continue; /* Reptile takes none of these */
        ms_container *batch = make_batch(), *vars = make_vars(c.rg);
        metastep_result ref;
        const char *msg = NULL;
        ms_status st = step(&c, batch, vars, 0, NULL, &ref);
        ms_last_error(&msg);
        ck_assert_msg(st == MS_OK, "unsharded: %s", msg);
        char m2[1024];
        /* 7 processes for 6 tasks: one has none; 3 with 2 threads each */
        const int runs[][2] = {{1, 1}, {2, 1}, {3, 1}, {7, 1}, {3, 2}};
        for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++)
            ck_assert_int_eq(run_sharded(&c, batch, vars, runs[k][0], runs[k][1], &ref, m2,
                                         sizeof m2), MS_OK);
        metastep_result_release(&ref);
        ms_container_release(batch);
        ms_container_release(vars);
        ncases++;
    }
    ck_assert_int_gt(ncases, 0);
}
END_TEST

/* Tasks 2 and 4 fail: every process reports task 2's status and message, as
 * one process does, whichever process ran it. */
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
        char msg0[1024], msg[1024];
        snprintf(msg0, sizeof msg0, "%s", m);
        ck_assert_int_ne(st0, MS_OK);
        ck_assert_ptr_nonnull(strstr(msg0, "task 2 refuses"));
        for (int R = 1; R <= 4; R++)
            for (int th = 1; th <= 2; th++) {
                ck_assert_int_eq(run_sharded(&c, batch, vars, R, th, NULL, msg, sizeof msg), st0);
                ck_assert_str_eq(msg, msg0);
            }
    }
    failing[0] = failing[1] = -1;
    ms_clear_error();
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

static ms_status never(void *ctx, void *records, size_t bytes, int n, int first, int count)
{
    (void)ctx, (void)records, (void)bytes, (void)n, (void)first, (void)count;
    ck_abort_msg("exchange called for an invalid shard");
    return MS_ERR_INTERNAL;
}

START_TEST(invalid_shards_refused)
{
    ms_container *batch = make_batch(), *vars = make_vars(false);
    metastep_result r;
    const char *m = NULL;
    cfg c = {.alg = 1, .stop = true};
    metastep_shard bad[] = {{-1, 2, never, NULL}, {0, T + 1, never, NULL}, {T, 1, never, NULL},
                            {2, -1, never, NULL}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ms_clear_error();
        ck_assert_int_eq(step(&c, batch, vars, 1, &bad[i], &r), MS_ERR_INVALID_ARG);
        ms_last_error(&m);
        ck_assert_ptr_nonnull(strstr(m, "outside the 6 tasks"));
    }
    metastep_shard ok = {0, 3, never, NULL}, none = {0, 3, NULL, NULL};
    ms_clear_error();
    ck_assert_int_eq(step(&c, batch, vars, 1, &none, &r), MS_ERR_NULL_ARG);
    ms_clear_error();
    c.batched = true;
    ck_assert_int_eq(step(&c, batch, vars, 1, &ok, &r), MS_ERR_INVALID_ARG);
    ms_last_error(&m);
    ck_assert_ptr_nonnull(strstr(m, "batched step cannot be sharded"));
    c.batched = false;
    c.stop = false;
    for (int alg = 0; alg < 3; alg++) {
        c.alg = alg;
        ms_clear_error();
        ck_assert_int_eq(step(&c, batch, vars, 1, &ok, &r), MS_ERR_INVALID_ARG);
        ms_last_error(&m);
        ck_assert_ptr_nonnull(strstr(m, "stop_gradients off"));
    }
    ms_clear_error();
    ms_container_release(batch);
    ms_container_release(vars);
}
END_TEST

int main(void)
{
    /* results do not depend on kernel threads; one keeps oneDNN's OpenMP
     * threads from spinning against the task threads and the other suites
     * of a parallel run (under ASan such a run exceeded the timeout) */
    metastep_set_backend_threads(1);
    Suite *s = suite_create("meta_shard");
    TCase *tc = tcase_create("shard");
    tcase_add_checked_fixture(tc, setup_live, teardown_live);
    tcase_set_timeout(tc, 600);
    tcase_add_loop_test(tc, bit_identical, 0, 3);
    tcase_add_test(tc, first_failing_task_wins);
    tcase_add_test(tc, invalid_shards_refused);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
