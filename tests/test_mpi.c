/* libmetastep-mpi under mpirun (tests/mpi/run, any number of ranks): on
 * every rank, metastep_mpi_{maml,fomaml,reptile}_step give the cost,
 * gradients and adapted variables of the one-process step bit for bit
 * (memcmp), with 1 and 2 threads per rank, with masks, averaging across
 * steps and returned adapted variables; a failing task fails every rank
 * with the one-process status and message; a batched step is refused on
 * every rank; ranks that disagree on the batch are told so.  Exits 0 and
 * prints "ok" on rank 0, or prints the first failed check and exits 1. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/metastep.h"
#include "metastep/mpi.h"

static int rank, size, failures;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "rank %d: %s:%d: ", rank, __FILE__, __LINE__);                  \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fputc('\n', stderr);                                                             \
            failures++;                                                                      \
        }                                                                                    \
    } while (0)

enum { P = 5, D = 3, H = 4 };
static int T = 7;

static void put(ms_container *c, const char *key, ms_tensor *t)
{
    ms_container_set(c, key, t);
    ms_release(t);
}

static ms_tensor *cost_on(const ms_container *b, const ms_container *v, const char *x,
                          const char *y)
{
    ms_tensor *hid = ms_tanh(ms_add(ms_matmul(ms_container_get(b, x), ms_container_get(v, "l/w")),
                                    ms_container_get(v, "l/b")));
    ms_tensor *pred = ms_matmul(hid, ms_container_get(v, "h/w"));
    return ms_mean(ms_square(ms_sub(pred, ms_container_get(b, y))), 0, NULL, false);
}

static int failing = -1;

static ms_tensor *inner_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    ms_tensor *id = ms_container_get(b, "id");
    if (id && ms_tensor_numel(id) == 1 && (int)ms_tensor_item(id) == failing) {
        ms_record_error(MS_ERR_INVALID_ARG, "task %d refuses", failing);
        return NULL;
    }
    return cost_on(b, v, "xs", "ys");
}

static ms_tensor *outer_cost(const ms_container *b, const ms_container *v, void *u)
{
    (void)u;
    return cost_on(b, v, "xq", "yq");
}

static ms_container *make_batch(int tasks)
{
    ms_container *r = ms_container_new();
    int64_t sx[3] = {tasks, P, D}, sy[3] = {tasks, P, 1}, sid[2] = {tasks, 1};
    put(r, "xs", ms_random_uniform(MS_F32, 3, sx, -1, 1, 1));
    put(r, "ys", ms_random_uniform(MS_F32, 3, sy, -1, 1, 2));
    put(r, "xq", ms_random_uniform(MS_F32, 3, sx, -1, 1, 3));
    put(r, "yq", ms_random_uniform(MS_F32, 3, sy, -1, 1, 4));
    ms_tensor *id = ms_arange(MS_F32, 0, tasks, 1);
    put(r, "id", ms_reshape(id, 2, sid));
    ms_release(id);
    return r;
}

static ms_container *make_vars(void)
{
    ms_container *v = ms_container_new();
    int64_t sw[2] = {D, H}, sb[1] = {H}, sh[2] = {H, 1};
    put(v, "l/w", ms_random_uniform(MS_F32, 2, sw, -1, 1, 5));
    put(v, "l/b", ms_random_uniform(MS_F32, 1, sb, -0.5, 0.5, 6));
    put(v, "h/w", ms_random_uniform(MS_F32, 2, sh, -1, 1, 7));
    return v;
}

static bool same_tensor(const ms_tensor *a, const ms_tensor *b)
{
    if (!a || !b)
        return a == b;
    return ms_tensor_dtype(a) == ms_tensor_dtype(b) && ms_tensor_numel(a) == ms_tensor_numel(b) &&
           ms_tensor_ndim(a) == ms_tensor_ndim(b) &&
           memcmp(ms_tensor_data(a), ms_tensor_data(b),
                  (size_t)ms_tensor_numel(a) * ms_dtype_size(ms_tensor_dtype(a))) == 0;
}

static bool same_container(const ms_container *a, const ms_container *b)
{
    if (!a || !b)
        return a == b;
    if (ms_container_size(a) != ms_container_size(b))
        return false;
    for (int i = 0; i < ms_container_size(a); i++)
        if (strcmp(ms_container_key(a, i), ms_container_key(b, i)) != 0 ||
            !same_tensor(ms_container_at(a, i), ms_container_at(b, i)))
            return false;
    return true;
}

static const char *const head_only[] = {"h/w", NULL};

/* alg 0 maml, 1 fomaml, 2 reptile; mpi: through libmetastep-mpi */
static ms_status step(int alg, bool mpi, bool mask, bool avg, metastep_return_inner ret,
                      int threads, bool batched, const ms_container *batch,
                      const ms_container *vars, metastep_result *r)
{
    ms_clear_error();
    if (alg == 2) {
        metastep_reptile_options o = METASTEP_REPTILE_OPTIONS_DEFAULT;
        o.batched = batched;
        o.return_inner_v = ret;
        o.threads = threads;
        return mpi ? metastep_mpi_reptile_step(MPI_COMM_WORLD, batch, inner_cost, vars, 2, 0.1, &o, r)
                   : metastep_reptile_step(batch, inner_cost, vars, 2, 0.1, &o, r);
    }
    metastep_options o = METASTEP_OPTIONS_DEFAULT;
    o.batched = batched;
    o.inner_v = mask ? head_only : NULL;
    o.average_across_steps = avg;
    o.return_inner_v = ret;
    o.threads = threads;
    if (mpi)
        return (alg == 0 ? metastep_mpi_maml_step : metastep_mpi_fomaml_step)(
            MPI_COMM_WORLD, batch, inner_cost, outer_cost, vars, 2, 0.1, &o, r);
    return (alg == 0 ? metastep_maml_step : metastep_fomaml_step)(batch, inner_cost, outer_cost,
                                                                  vars, 2, 0.1, &o, r);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    ms_container *batch = make_batch(T), *vars = make_vars();
    int cases = 0;
    for (int alg = 0; alg < 3; alg++)
        for (int m = 0; m < 8; m++) {
            bool mask = m & 1, avg = m & 2;
            metastep_return_inner ret = (m & 4) ? METASTEP_RETURN_INNER_ALL : METASTEP_RETURN_INNER_NONE;
            if (alg == 2 && (mask || avg))
                continue;
            metastep_result one, r;
            CHECK(step(alg, false, mask, avg, ret, 1, false, batch, vars, &one) == MS_OK,
                  "one process failed");
            for (int th = 1; th <= 2; th++) {
                ms_status st = step(alg, true, mask, avg, ret, th, false, batch, vars, &r);
                const char *msg = NULL;
                ms_last_error(&msg);
                CHECK(st == MS_OK, "alg %d: %s", alg, msg);
                CHECK(same_tensor(one.cost, r.cost) && same_container(one.grads, r.grads) &&
                          same_container(one.inner_v, r.inner_v),
                      "alg %d mask %d avg %d ret %d threads %d: differs from one process "
                      "(cost %.9g vs %.9g)", alg, mask, avg, (int)ret, th,
                      ms_tensor_item(one.cost), ms_tensor_item(r.cost));
                metastep_result_release(&r);
                cases++;
            }
            metastep_result_release(&one);
        }
    /* a record: a 256-byte header (status, message, cost), the gradients of
     * 3 leaves (12 + 4 + 4 float32), and the adapted variables when returned */
    for (int k = 0; k < 2; k++) {
        metastep_result r;
        CHECK(step(1, true, false, false, k ? METASTEP_RETURN_INNER_ALL : METASTEP_RETURN_INNER_NONE,
                   1, false, batch, vars, &r) == MS_OK, "fomaml");
        CHECK(metastep_mpi_last_record_bytes() == (size_t)(256 + 4 * (12 + 4 + 4) * (k + 1)),
              "record of %zu bytes", metastep_mpi_last_record_bytes());
        metastep_result_release(&r);
    }

    /* a failing task (the last one, on the last rank): every rank reports it */
    failing = T - 1;
    for (int alg = 0; alg < 3; alg++) {
        metastep_result one, r;
        ms_status st1 = step(alg, false, false, false, METASTEP_RETURN_INNER_NONE, 1, false,
                             batch, vars, &one);
        const char *m1 = NULL;
        ms_last_error(&m1);
        char msg1[1024];
        snprintf(msg1, sizeof msg1, "%s", m1 ? m1 : "");
        ms_status st = step(alg, true, false, false, METASTEP_RETURN_INNER_NONE, 1, false, batch,
                            vars, &r);
        const char *m = NULL;
        ms_last_error(&m);
        CHECK(st1 == MS_ERR_INVALID_ARG && st == st1 && m && !strcmp(m, msg1) &&
                  strstr(msg1, "refuses"), "failing task: %d %d '%s' '%s'", st1, st, m, msg1);
        CHECK(!r.cost && !r.grads, "a failed step returned results");
    }
    failing = -1;

    /* batched: refused on every rank, before any exchange */
    metastep_result r;
    ms_status st = step(1, true, false, false, METASTEP_RETURN_INNER_NONE, 1, true, batch, vars, &r);
    const char *m = NULL;
    ms_last_error(&m);
    CHECK(st == MS_ERR_INVALID_ARG && m && strstr(m, "batched step cannot be sharded"),
          "batched: %d %s", st, m);

    /* ranks that disagree on the tasks are told (when there are several) */
    if (size > 1) {
        ms_container *b2 = make_batch(rank == 0 ? T + 1 : T);
        st = step(1, true, false, false, METASTEP_RETURN_INNER_NONE, 1, false, b2, vars, &r);
        ms_last_error(&m);
        CHECK(st == MS_ERR_INVALID_ARG && m && strstr(m, "the ranks disagree"), "disagree: %d %s",
              st, m);
        ms_container_release(b2);
    }
    ms_clear_error();
    ms_container_release(batch);
    ms_container_release(vars);
    int all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0 && all == 0)
        printf("ok: %d cases bit-identical to one process on each of %d ranks\n", cases, size);
    MPI_Finalize();
    return all ? 1 : 0;
}
