/* The kernel tape's rewriting (core/runtime/tape_opt.c) on random programs.
 *
 * This suite compiles core/runtime/tape.c and tape_opt.c in, with small
 * kernels of its own in place of the backends.  Each case is a random
 * program over a few input blocks and temporaries that the program allocates
 * and frees as it goes (so blocks are reused at the same addresses, as the
 * allocator does): host copies of whole tensors and of ranges, contiguous
 * and strided copy kernels, elementwise kernels out of place and in place
 * (an operand dense or one broadcast value),
 * reductions over size-1 axes (copies for ref) and real ones,
 * reads through offset views (64-byte aligned or not), accumulating GEMMs,
 * finiteness checks.  The program runs once while recording, the tape is
 * finished (rewritten, then packed) and replayed on the same inputs and on
 * new ones; every output must equal, byte for byte, what the program
 * computes when it simply runs on those inputs.  A rewriting that forwards a
 * copy whose source changes, or drops an operation whose result is read,
 * fails here. */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/tape_impl.h"

/* ------------------------------------------------------------------ */
/* what tape.c needs from the layers around it                         */

_Thread_local void (*ms__alloc_observer)(void *p, size_t bytes, bool alloc);
ms_status ms__fail(ms_status st, const char *fmt, ...)
{
    (void)fmt;
    return st;
}
const char *ms_kernel_name(ms_kernel k) { return k == MS_KERNEL_BINARY ? "binary" : "kernel"; }

/* The test's kernels: float32 only, enough for the programs below. */
static int64_t off_of(int ndim, const int64_t *shape, const int64_t *st, int64_t flat)
{
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; d--) {
        off += (flat % shape[d]) * st[d];
        flat /= shape[d];
    }
    return off;
}

static ms_status k_unary(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y)
{
    (void)dt;
    for (int64_t i = 0; i < n; i++) {
        float v = ((const float *)x)[i];
        ((float *)y)[i] = op == MS_UNARY_NEG ? -v : v * v;
    }
    return MS_OK;
}
static ms_status k_binary(ms_binary_op op, ms_dtype dt, int ndim, const int64_t *shape, const void *a,
                     const int64_t *sa, const void *b, const int64_t *sb, void *y)
{
    (void)dt;
    int64_t n = ms__tape_prod(ndim, shape);
    for (int64_t i = 0; i < n; i++) {
        float u = ((const float *)a)[off_of(ndim, shape, sa, i)];
        float v = ((const float *)b)[off_of(ndim, shape, sb, i)];
        ((float *)y)[i] = op == MS_BINARY_ADD ? u + v : op == MS_BINARY_SUB ? u - v : u * v;
    }
    return MS_OK;
}
static ms_status k_copy(ms_dtype dt, int ndim, const int64_t *shape, const void *src, const int64_t *ss,
                   void *dst, const int64_t *ds)
{
    (void)dt;
    int64_t n = ms__tape_prod(ndim, shape);
    for (int64_t i = 0; i < n; i++)
        ((float *)dst)[off_of(ndim, shape, ds, i)] = ((const float *)src)[off_of(ndim, shape, ss, i)];
    return MS_OK;
}
static ms_status k_gemm(ms_dtype dt, bool ta, bool tb, int64_t batch, int64_t m, int64_t n, int64_t k,
                   double alpha, const void *a, int64_t lda, int64_t sa, const void *b, int64_t ldb,
                   int64_t sb, double beta, void *c, int64_t ldc, int64_t sc)
{
    (void)dt;
    for (int64_t p = 0; p < batch; p++)
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                float acc = 0;
                for (int64_t q = 0; q < k; q++)
                    acc += ((const float *)a)[p * sa + (ta ? q * lda + i : i * lda + q)] *
                           ((const float *)b)[p * sb + (tb ? j * ldb + q : q * ldb + j)];
                float *cp = (float *)c + p * sc + i * ldc + j;
                *cp = (float)alpha * acc + (beta != 0 ? (float)beta * *cp : 0.0f);
            }
    return MS_OK;
}
/* Sums over the axes in `axes` of a dense x; as ref, a memcpy when every
 * reduced axis has size 1. */
static ms_status k_reduce(ms_reduce_op op, ms_dtype dt, int ndim, const int64_t *shape,
                          uint32_t axes, const void *x, void *y)
{
    (void)op, (void)dt;
    int64_t n = ms__tape_prod(ndim, shape), count = 1;
    for (int d = 0; d < ndim; d++)
        if (axes & (1u << d))
            count *= shape[d];
    if (count == 1) {
        memcpy(y, x, (size_t)n * sizeof(float));
        return MS_OK;
    }
    /* this suite's programs reduce (4, len/4) over axis 0 only */
    const int64_t cols = shape[1];
    for (int64_t j = 0; j < cols; j++) {
        float acc = 0;
        for (int64_t i = 0; i < shape[0]; i++)
            acc += ((const float *)x)[i * cols + j];
        ((float *)y)[j] = acc;
    }
    return MS_OK;
}

/* The backend a replay calls: ref and active at once. */
static const ms_backend test_backend = {
    .header = {.size = sizeof(ms_backend)},
    .unary = k_unary, .binary = k_binary, .copy = k_copy, .gemm = k_gemm, .reduce = k_reduce,
};
const ms_backend *ms__active_table(void) { return &test_backend; }
const ms_backend *ms__ref(void) { return &test_backend; }
void ms__count_fallbacks(const uint64_t *n) { (void)n; }

/* ------------------------------------------------------------------ */
/* random programs                                                     */

enum { N = 64, NIN = 3, NTMP = 8, NOUT = 3, MAXINS = 60 };
enum { I_HOSTCOPY, I_HOSTCOPY_RANGE, I_COPY, I_COPY_STRIDED, I_BINARY, I_BINARY_INPLACE,
       I_UNARY_INPLACE, I_GEMM_ACC, I_REDUCE, I_CHECK, I_FREE, I_FRESH, I_KINDS };

/* An operand: input or temporary `slot`, starting at element `at`. */
typedef struct opnd {
    bool input;
    int slot, at;
} opnd;

typedef struct ins {
    int kind, dst, sub, len, dat, bcast; /* bcast: b is one broadcast value */
    opnd a, b;
} ins;

typedef struct prog {
    ins ins[MAXINS];
    int n, outs[NOUT];
} prog;

static uint64_t rng;
static int rnd(int n)
{
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    return (int)((rng >> 33) % (uint64_t)n);
}

/* The program keeps every temporary slot allocated except right after a
 * free, which the next instruction writing that slot re-allocates.  An
 * operand is never the instruction's own destination, except the first
 * operand of an in-place one. */
static opnd pick(int dst, int len)
{
    opnd o = {.input = true, .slot = rnd(NIN)};
    int t = rnd(NTMP);
    if (rnd(3) && t != dst)
        o = (opnd){.input = false, .slot = t};
    /* an offset view: 16 elements is 64 bytes; 3 is not aligned */
    const int offs[3] = {0, 16, 3};
    o.at = offs[rnd(3)];
    if (o.at + len > N)
        o.at = 0;
    return o;
}

static void make_prog(prog *p)
{
    p->n = 0;
    /* every temporary starts as a copy of an input, so all are defined */
    for (int t = 0; t < NTMP; t++)
        p->ins[p->n++] = (ins){.kind = I_HOSTCOPY, .dst = t, .len = N,
                               .a = {.input = true, .slot = rnd(NIN)}};
    while (p->n < MAXINS - 3) {
        ins in = {.kind = rnd(I_KINDS), .dst = rnd(NTMP), .len = 16 + rnd(3) * 16};
        if (in.kind == I_FRESH) {
            /* A new block for dst, its first write elementwise from temporary
             * s, which often dies right there (the in-place candidates):
             * binary (sub 0-2) or unary (sub 3); s as a or b, dense or one
             * broadcast value, or as both at offsets 0 and 16 (len N - 16,
             * the rest of the block from an input). */
            const int s = (in.dst + 1 + rnd(NTMP - 1)) % NTMP, shape = rnd(4);
            in.sub = rnd(4);
            in.len = N;
            in.bcast = shape == 1;
            in.a = (opnd){.slot = s};
            in.b = pick(in.dst, N);
            if (shape == 2) {
                opnd t = in.a;
                in.a = in.b;
                in.b = t;
            } else if (shape == 3) {
                in.len = N - 16;
                in.a.at = rnd(2) ? 16 : 0;
                in.b = (opnd){.slot = s, .at = 16 - in.a.at};
            }
            p->ins[p->n++] = in;
            if (in.len < N)
                p->ins[p->n++] = (ins){.kind = I_HOSTCOPY_RANGE, .dst = in.dst, .dat = in.len,
                                       .len = N - in.len, .a = {.input = true, .slot = rnd(NIN)}};
            if (rnd(2)) { /* s dies: freed, then written whole again */
                p->ins[p->n++] = (ins){.kind = I_FREE, .dst = s};
                p->ins[p->n++] = (ins){.kind = I_COPY, .dst = s, .len = N,
                                       .a = {.input = true, .slot = rnd(NIN)}};
            }
            continue;
        }
        in.sub = rnd(3);
        in.bcast = rnd(3) == 0;
        in.dat = rnd(N - in.len + 1);
        if (in.kind == I_HOSTCOPY || in.kind == I_COPY || in.kind == I_FREE)
            in.len = N, in.dat = 0;
        in.a = pick(in.dst, in.len);
        in.b = pick(in.dst, in.len);
        if (in.kind == I_BINARY_INPLACE)
            in.a = (opnd){.slot = in.dst, .at = in.dat};
        p->ins[p->n++] = in;
        if (in.kind == I_FREE) { /* write it whole again right away: copied, or transposed */
            const int how = rnd(3);
            p->ins[p->n++] = (ins){.kind = how == 2 ? I_COPY_STRIDED : how ? I_HOSTCOPY : I_COPY,
                                   .sub = 2, .dst = in.dst, .len = N, .a = pick(in.dst, N)};
        }
    }
    for (int k = 0; k < NOUT; k++)
        p->outs[k] = rnd(NTMP);
}

static float *tmp_alloc(void)
{
    float *p = aligned_alloc(64, N * sizeof(float));
    ck_assert_ptr_nonnull(p);
    if (ms__alloc_observer)
        ms__alloc_observer(p, N * sizeof(float), true);
    return p;
}

static void tmp_free(float *p)
{
    if (ms__alloc_observer)
        ms__alloc_observer(p, N * sizeof(float), false);
    free(p);
}

static const float *at(float *const *in, float *const *tmp, opnd o)
{
    return (o.input ? in[o.slot] : tmp[o.slot]) + o.at;
}

/* Run the program on the inputs, recording when a tape records on this
 * thread; copies the outputs to out[] (and locates them on the tape).
 * Returns whether every check saw finite values. */
static bool run(const prog *p, float *const *in, float out[NOUT][N], ms_tape *tape, int *ids,
                int64_t *offs)
{
    float *tmp[NTMP] = {0};
    bool finite = true;
    for (int k = 0; k < p->n; k++) {
        const ins *i = &p->ins[k];
        float *d = tmp[i->dst];
        if (!d && i->kind != I_FREE)
            d = tmp[i->dst] = tmp_alloc();
        const float *a = at(in, tmp, i->a), *b = at(in, tmp, i->b);
        const int64_t shape[2] = {i->len / 4, 4}, dense[2] = {4, 1}, zero[2] = {0, 0};
        const int64_t tshape[2] = {4, i->len / 4}, tread[2] = {1, 4}, rev[2] = {-4, -1};
        switch (i->kind) {
        case I_HOSTCOPY:
        case I_HOSTCOPY_RANGE:
            ms__host_copy(d + i->dat, a, (size_t)i->len * sizeof(float));
            break;
        case I_COPY:
            if (ms__taping())
                ms__tape_copy(MS_F32, 2, shape, a, dense, d, dense);
            k_copy(MS_F32, 2, shape, a, dense, d, dense);
            break;
        case I_COPY_STRIDED:
            if (i->sub == 2) { /* a transposed write */
                const int64_t tdense[2] = {i->len / 4, 1};
                if (ms__taping())
                    ms__tape_copy(MS_F32, 2, tshape, a, tdense, d + i->dat, tread);
                k_copy(MS_F32, 2, tshape, a, tdense, d + i->dat, tread);
            } else if (i->sub) { /* a transposed read */
                if (ms__taping())
                    ms__tape_copy(MS_F32, 2, tshape, a, tread, d + i->dat, dense);
                k_copy(MS_F32, 2, tshape, a, tread, d + i->dat, dense);
            } else { /* a reversed write */
                float *last = d + i->dat + i->len - 1;
                if (ms__taping())
                    ms__tape_copy(MS_F32, 2, shape, a, dense, last, rev);
                k_copy(MS_F32, 2, shape, a, dense, last, rev);
            }
            break;
        case I_BINARY:
        case I_BINARY_INPLACE:
            if (ms__taping())
                ms__tape_binary(i->sub, MS_F32, 2, shape, a, dense, b, i->bcast ? zero : dense,
                                d + i->dat);
            k_binary(i->sub, MS_F32, 2, shape, a, dense, b, i->bcast ? zero : dense, d + i->dat);
            break;
        case I_UNARY_INPLACE:
            if (ms__taping())
                ms__tape_unary(i->sub ? MS_UNARY_NEG : MS_UNARY_SQUARE, MS_F32, i->len,
                               d + i->dat, d + i->dat);
            k_unary(i->sub ? MS_UNARY_NEG : MS_UNARY_SQUARE, MS_F32, i->len, d + i->dat,
                      d + i->dat);
            break;
        case I_GEMM_ACC: /* C (4×4, in the destination) += A · B, or Aᵀ · B */
            if (ms__taping())
                ms__tape_gemm(MS_F32, i->sub == 1, false, 1, 4, 4, 4, 1.0, a, 4, 0, b, 4, 0, 1.0,
                              d + i->dat, 4, 0);
            k_gemm(MS_F32, i->sub == 1, false, 1, 4, 4, 4, 1.0, a, 4, 0, b, 4, 0, 1.0,
                     d + i->dat, 4, 0);
            break;
        case I_REDUCE: { /* over a size-1 axis (a copy), or a real sum */
            const int64_t one[3] = {1, 1, i->len}, four[2] = {4, i->len / 4};
            const int nd = i->sub ? 3 : 2;
            const int64_t *sh = i->sub ? one : four;
            const uint32_t axes = i->sub == 2 ? 3u : 1u;
            if (ms__taping())
                ms__tape_reduce(MS_REDUCE_SUM, MS_F32, nd, sh, axes, a, d + i->dat);
            k_reduce(MS_REDUCE_SUM, MS_F32, nd, sh, axes, a, d + i->dat);
            break;
        }
        case I_CHECK:
            ms__tape_check(d + i->dat, i->len, MS_F32);
            for (int j = 0; j < i->len; j++)
                finite = finite && d[i->dat + j] - d[i->dat + j] == 0;
            break;
        case I_FRESH:
            tmp_free(d);
            d = tmp[i->dst] = tmp_alloc();
            a = at(in, tmp, i->a), b = at(in, tmp, i->b);
            if (i->sub == 3) {
                if (ms__taping())
                    ms__tape_unary(MS_UNARY_SQUARE, MS_F32, i->len, a, d);
                k_unary(MS_UNARY_SQUARE, MS_F32, i->len, a, d);
            } else {
                if (ms__taping())
                    ms__tape_binary(i->sub, MS_F32, 2, shape, a, dense, b,
                                    i->bcast ? zero : dense, d);
                k_binary(i->sub, MS_F32, 2, shape, a, dense, b, i->bcast ? zero : dense, d);
            }
            break;
        case I_FREE:
            tmp_free(d);
            tmp[i->dst] = NULL;
            break;
        }
    }
    for (int k = 0; k < NOUT; k++) {
        memcpy(out[k], tmp[p->outs[k]], sizeof out[k]);
        if (tape)
            ck_assert_int_eq(ms__tape_locate(tape, tmp[p->outs[k]], sizeof out[k], &ids[k],
                                             &offs[k]), MS_OK);
    }
    for (int t = 0; t < NTMP; t++)
        if (tmp[t])
            tmp_free(tmp[t]);
    return finite;
}

static void fill_inputs(float *const *in)
{
    for (int j = 0; j < NIN; j++)
        for (int i = 0; i < N; i++)
            in[j][i] = (float)(rnd(2001) - 1000) / 1000.0f;
}

/* One random program: record, finish (rewritten or not), replay on two sets
 * of inputs, compare with plain runs.  Returns the replayed op count. */
static int one_case(uint64_t seed, bool optimize)
{
    rng = seed;
    prog p;
    make_prog(&p);
    float *in[NIN];
    for (int j = 0; j < NIN; j++) {
        in[j] = aligned_alloc(64, N * sizeof(float));
        ck_assert_ptr_nonnull(in[j]);
    }
    fill_inputs(in);
    ms_tape *tape = ms__tape_new();
    ck_assert_ptr_nonnull(tape);
    ck_assert_int_eq(ms__tape_begin(tape), MS_OK);
    int ids_in[NIN];
    for (int j = 0; j < NIN; j++)
        ids_in[j] = ms__tape_input(tape, in[j], N * sizeof(float), j);
    float want[NOUT][N], got[NOUT][N];
    int ids[NOUT];
    int64_t offs[NOUT];
    bool finite = run(&p, in, want, tape, ids, offs);
    ms__tape_end();
    ck_assert_msg(!ms__tape_why(tape), "seed %llu: %s", (unsigned long long)seed,
                  ms__tape_why(tape));
    setenv("METASTEP_PLAN_OPTIMIZE", optimize ? "1" : "0", 1);
    ck_assert_int_eq(ms__tape_finish(tape), MS_OK);
    int nops = ms__tape_ops(tape);
    for (int round = 0; round < 2; round++) {
        if (round) { /* new inputs in new blocks */
            for (int j = 0; j < NIN; j++) {
                float *q = aligned_alloc(64, N * sizeof(float));
                ck_assert_ptr_nonnull(q);
                free(in[j]);
                in[j] = q;
            }
            fill_inputs(in);
            finite = run(&p, in, want, NULL, NULL, NULL);
        }
        for (int j = 0; j < NIN; j++)
            if (ids_in[j] >= 0)
                ms__tape_set_input(tape, ids_in[j], in[j]);
        ms_status st = ms__tape_replay(tape);
        ck_assert_msg(st == (finite ? MS_OK : MS_ERR_NUMERIC),
                      "seed %llu round %d: replay gave %d", (unsigned long long)seed, round, st);
        if (!finite)
            continue;
        for (int k = 0; k < NOUT; k++) {
            memcpy(got[k], ms__tape_addr(tape, ids[k], offs[k]), sizeof got[k]);
            ck_assert_msg(memcmp(got[k], want[k], sizeof got[k]) == 0,
                          "seed %llu round %d: output %d differs (optimize %d)",
                          (unsigned long long)seed, round, k, optimize);
        }
    }
    ms__tape_free(tape);
    for (int j = 0; j < NIN; j++)
        free(in[j]);
    return nops;
}

START_TEST(random_programs)
{
    int before = 0, after = 0;
    for (uint64_t seed = 1; seed <= 3000; seed++) {
        before += one_case(seed, false);
        after += one_case(seed, true);
    }
    unsetenv("METASTEP_PLAN_OPTIMIZE");
    /* the rewriting must be doing something on these programs */
    ck_assert_int_lt(after, before - before / 10);
    printf("random programs: %d operations recorded, %d after rewriting\n", before, after);
}
END_TEST

/* A reduction that sums (over an axis of 4) is no copy, even as the only
 * writer of a fresh temporary: y = sum(x, axis 0) + x[0, :] replayed. */
START_TEST(real_reduction_not_forwarded)
{
    float *x = aligned_alloc(64, N * sizeof(float));
    ck_assert_ptr_nonnull(x);
    for (int i = 0; i < N; i++)
        x[i] = (float)(i + 1);
    ms_tape *tape = ms__tape_new();
    ck_assert_int_eq(ms__tape_begin(tape), MS_OK);
    int xid = ms__tape_input(tape, x, N * sizeof(float), 0);
    float *t = tmp_alloc(), *y = tmp_alloc();
    const int64_t shape[2] = {4, N / 4}, row[1] = {N / 4}, one[1] = {1};
    ms__tape_reduce(MS_REDUCE_SUM, MS_F32, 2, shape, 1u, x, t);
    k_reduce(MS_REDUCE_SUM, MS_F32, 2, shape, 1u, x, t);
    ms__tape_binary(MS_BINARY_ADD, MS_F32, 1, row, t, one, x, one, y);
    k_binary(MS_BINARY_ADD, MS_F32, 1, row, t, one, x, one, y);
    float want[N / 4];
    memcpy(want, y, sizeof want);
    int id;
    int64_t off;
    ck_assert_int_eq(ms__tape_locate(tape, y, sizeof want, &id, &off), MS_OK);
    ms__tape_end();
    tmp_free(t);
    tmp_free(y);
    unsetenv("METASTEP_PLAN_OPTIMIZE");
    ck_assert_int_eq(ms__tape_finish(tape), MS_OK);
    ms__tape_set_input(tape, xid, x);
    ck_assert_int_eq(ms__tape_replay(tape), MS_OK);
    ck_assert_int_eq(ms__tape_ops(tape), 2);
    ck_assert_mem_eq(ms__tape_addr(tape, id, off), want, sizeof want);
    ck_assert_float_eq(want[0], 1.0f + 17 + 33 + 49 + 1);
    ms__tape_free(tape);
    free(x);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("tape");
    TCase *tc = tcase_create("rewrite");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, random_programs);
    tcase_add_test(tc, real_reduction_not_forwarded);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
