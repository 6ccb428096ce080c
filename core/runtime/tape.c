/* The kernel tape: what compiled meta steps (core/learn/plan.c) record and
 * replay.
 *
 * While a tape records on a thread, every kernel call dispatched from that
 * thread (msk_*) and every host copy the frontend makes between tensors
 * (ms__host_copy) is appended to it with its arguments by value, and each
 * buffer pointer is resolved to (buffer, byte offset):
 *   - an input: a block registered with ms__tape_input (the caller's batch and
 *     variables), replaced by the new inputs' blocks at replay;
 *   - a temporary: a block the allocator handed out while recording (the
 *     allocator tells the tape through ms__alloc_observer); at the end the
 *     temporaries are packed into one arena by their lifetimes, so a replay
 *     allocates nothing;
 *   - a constant: memory from before the recording that is neither (a
 *     scalar on the stack, a tensor the cost function captured), copied when
 *     first read, as jax.jit captures closed-over arrays by value.
 * A temporary read before any recorded op wrote it was written on the host
 * (ms_tensor_from_data in a cost function): its content at that moment is
 * saved and restored by the replay at the same point.
 * Replaying runs the same kernels with the same arguments through the same
 * dispatch (fallback to ref included) at 64-byte-aligned addresses like the
 * eager ones, so it computes the same bits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/tape_impl.h"

_Thread_local ms_tape *ms__tape_cur;
#define cur ms__tape_cur


ms_tape *ms__tape_new(void) { return calloc(1, sizeof(ms_tape)); }

static void write_profile(const ms_tape *t);

void ms__tape_free(ms_tape *t)
{
    if (!t)
        return;
    if (cur == t)
        ms__tape_end();
    if (t->prof)
        write_profile(t);
    free(t->prof);
    for (int i = 0; i < t->nbufs; i++)
        free(t->bufs[i].snap);
    free(t->bufs);
    free(t->ops);
    free(t->live);
    free(t->arena);
    free(t->base);
    free(t->rops);
    free(t->pool);
    free(t);
}

static void refuse(ms_tape *t, const char *fmt, const char *arg)
{
    if (!t->why[0])
        snprintf(t->why, sizeof t->why, fmt, arg);
}

void ms__tape_refuse(const char *what)
{
    if (cur)
        refuse(cur, "%s", what);
}

const char *ms__tape_why(const ms_tape *t) { return t->why[0] ? t->why : NULL; }

static bool grow(void **p, int *cap, int need, size_t elem)
{
    if (need <= *cap)
        return true;
    int n = *cap ? *cap * 2 : 64;
    while (n < need)
        n *= 2;
    void *q = realloc(*p, (size_t)n * elem);
    if (!q)
        return false;
    *p = q;
    *cap = n;
    return true;
}

static void observe(void *p, size_t bytes, bool alloc)
{
    ms_tape *t = cur;
    if (!t)
        return;
    if (alloc) {
        if (!grow((void **)&t->live, &t->caplive, t->nlive + 1, sizeof *t->live)) {
            t->err = MS_ERR_NOMEM;
            return;
        }
        t->live[t->nlive++] = (live_block){p, bytes, -1};
        return;
    }
    for (int i = t->nlive - 1; i >= 0; i--) {
        if (t->live[i].start == p) {
            t->live[i] = t->live[--t->nlive];
            return;
        }
    }
}

ms_status ms__tape_begin(ms_tape *t)
{
    if (cur)
        return ms__fail(MS_ERR_INVALID_ARG, "a compiled step is already being traced on this thread");
    cur = t;
    ms__alloc_observer = observe;
    return MS_OK;
}

void ms__tape_end(void)
{
    cur = NULL;
    ms__alloc_observer = NULL;
}

static int new_buf(ms_tape *t, int kind, const char *start, size_t size)
{
    if (!grow((void **)&t->bufs, &t->capbufs, t->nbufs + 1, sizeof *t->bufs)) {
        t->err = MS_ERR_NOMEM;
        return -1;
    }
    t->bufs[t->nbufs] = (tbuf){.kind = kind, .slot = -1, .start = start, .size = size,
                               .lo = INT64_MAX, .hi = 0, .first = -1, .last = -1};
    return t->nbufs++;
}

int ms__tape_input(ms_tape *t, const void *block, size_t bytes, int slot)
{
    for (int i = 0; i < t->nlive; i++)
        if (t->live[i].start == block)
            return t->live[i].id;
    int id = new_buf(t, TB_INPUT, block, bytes);
    if (id < 0)
        return -1;
    t->bufs[id].slot = slot;
    if (!grow((void **)&t->live, &t->caplive, t->nlive + 1, sizeof *t->live)) {
        t->err = MS_ERR_NOMEM;
        return -1;
    }
    t->live[t->nlive++] = (live_block){block, bytes, id};
    return id;
}

static live_block *find_live(ms_tape *t, const char *p)
{
    for (int i = t->nlive - 1; i >= 0; i--)
        if (p >= t->live[i].start && p < t->live[i].start + t->live[i].size)
            return &t->live[i];
    return NULL;
}

/* The op being recorded: its index is t->nops; restores go before it. */
static void touch(ms_tape *t, int id, int64_t lo, int64_t hi, int at)
{
    tbuf *b = &t->bufs[id];
    if (lo < b->lo)
        b->lo = lo;
    if (hi > b->hi)
        b->hi = hi;
    if (b->first < 0)
        b->first = at;
    b->last = at;
}

static tape_op *append(ms_tape *t)
{
    if (!grow((void **)&t->ops, &t->capops, t->nops + 1, sizeof *t->ops)) {
        t->err = MS_ERR_NOMEM;
        return NULL;
    }
    tape_op *o = &t->ops[t->nops];
    memset(o, 0, sizeof *o);
    return o;
}

/* Resolve a pointer that the op about to be recorded reads (or writes) over
 * bytes [lo, hi) from it. */
static tref resolve(ms_tape *t, const void *ptr, int64_t lo, int64_t hi, bool write)
{
    if (!ptr || t->err)
        return (tref){-1, 0};
    const char *p = ptr;
    if (hi <= lo) /* nothing touched: any valid reference does */
        lo = hi = 0;
    live_block *l = find_live(t, p + lo);
    if (!l) {
        if (write) {
            refuse(t, "%s", "a kernel wrote memory that is neither the step's own nor its inputs'");
            return (tref){-1, 0};
        }
        int id = new_buf(t, TB_CONST, p + lo, (size_t)(hi - lo));
        if (id < 0)
            return (tref){-1, 0};
        tbuf *b = &t->bufs[id];
        b->snap = malloc(hi > lo ? (size_t)(hi - lo) : 1);
        if (!b->snap) {
            t->err = MS_ERR_NOMEM;
            return (tref){-1, 0};
        }
        if (hi > lo)
            memcpy(b->snap, p + lo, (size_t)(hi - lo));
        b->lo = 0;
        b->hi = hi - lo;
        return (tref){id, -lo};
    }
    int64_t off = p - l->start;
    if (off + hi > (int64_t)l->size || off + lo < 0) {
        refuse(t, "%s", "a kernel touched memory across the end of a block");
        return (tref){-1, 0};
    }
    if (l->id < 0) {
        l->id = new_buf(t, TB_TEMP, l->start, l->size);
        if (l->id < 0)
            return (tref){-1, 0};
    }
    tbuf *b = &t->bufs[l->id];
    if (write && b->kind == TB_INPUT) {
        refuse(t, "%s", "a kernel wrote into the caller's batch or variables");
        return (tref){-1, 0};
    }
    if (!write && b->kind == TB_TEMP && !b->written && !b->snap) {
        /* written on the host since it was allocated: restore it here */
        b->snap = malloc(b->size);
        tape_op *r = b->snap ? append(t) : NULL;
        if (!r) {
            t->err = MS_ERR_NOMEM;
            return (tref){-1, 0};
        }
        memcpy(b->snap, b->start, b->size);
        r->kind = OP_RESTORE;
        r->p[0] = (tref){l->id, 0};
        touch(t, l->id, 0, (int64_t)b->size, t->nops);
        t->nops++;
        b->written = true;
    }
    touch(t, l->id, off + lo, off + hi, t->nops);
    if (write)
        b->written = true;
    return (tref){l->id, off};
}

static tref rd(ms_tape *t, const void *p, int64_t bytes) { return resolve(t, p, 0, bytes, false); }
static tref wr(ms_tape *t, const void *p, int64_t bytes) { return resolve(t, p, 0, bytes, true); }
static tref rds(ms_tape *t, const void *p, int ndim, const int64_t *shape, const int64_t *st,
                size_t es, bool write)
{
    int64_t lo, hi;
    ms__tape_extent(ndim, shape, st, es, &lo, &hi);
    return resolve(t, p, lo, hi, write);
}

static void set_shape(tape_op *o, int ndim, const int64_t *shape)
{
    for (int d = 0; shape && d < ndim; d++)
        o->shape[d] = shape[d];
}

/* Each recorder builds its op on the stack, because resolving a pointer may
 * append a restore, which must come first; reads are resolved before writes,
 * so that a buffer both read and written (an in-place unary) is restored
 * before it is overwritten. */
#define REC_BEGIN(KIND, DT, NDIM, SHAPE)                                                     \
    ms_tape *t = cur;                                                                        \
    tape_op o;                                                                               \
    memset(&o, 0, sizeof o);                                                                 \
    o.kind = KIND;                                                                           \
    o.dt = DT;                                                                               \
    o.ndim = NDIM;                                                                           \
    set_shape(&o, NDIM, SHAPE);                                                              \
    size_t es = ms__tape_dtype_bytes(DT);                                                           \
    (void)es;
#define REC_END                                                                              \
    tape_op *slot = t->err ? NULL : append(t);                                               \
    if (slot)                                                                                \
        *slot = o, t->nops++;                                                                \
    return t->err;

ms_status ms__tape_unary(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y)
{
    REC_BEGIN(MS_KERNEL_UNARY, dt, 0, (const int64_t *)NULL)
    o.sub = op;
    o.i[0] = n;
    o.p[0] = rd(t, x, n * (int64_t)es);
    o.p[1] = wr(t, y, n * (int64_t)es);
    REC_END
}

ms_status ms__tape_binary(ms_binary_op op, ms_dtype dt, int ndim, const int64_t *shape,
                          const void *a, const int64_t *sa, const void *b, const int64_t *sb,
                          void *y)
{
    REC_BEGIN(MS_KERNEL_BINARY, dt, ndim, shape)
    o.sub = op;
    memcpy(o.st[0], sa, (size_t)ndim * sizeof *sa);
    memcpy(o.st[1], sb, (size_t)ndim * sizeof *sb);
    o.p[0] = rds(t, a, ndim, shape, sa, es, false);
    o.p[1] = rds(t, b, ndim, shape, sb, es, false);
    o.p[2] = wr(t, y, ms__tape_prod(ndim, shape) * (int64_t)es);
    REC_END
}

ms_status ms__tape_reduce(ms_reduce_op op, ms_dtype dt, int ndim, const int64_t *shape,
                          uint32_t axes, const void *x, void *y)
{
    REC_BEGIN(MS_KERNEL_REDUCE, dt, ndim, shape)
    o.sub = op;
    o.axes = axes;
    int64_t ny = 1;
    for (int d = 0; d < ndim; d++)
        if (!(axes & (1u << d)))
            ny *= shape[d];
    o.p[0] = rd(t, x, ms__tape_prod(ndim, shape) * (int64_t)es);
    o.p[1] = wr(t, y, ny * (int64_t)es);
    REC_END
}

ms_status ms__tape_gemm(ms_dtype dt, bool ta, bool tb, int64_t batch, int64_t m, int64_t n,
                        int64_t k, double alpha, const void *a, int64_t lda, int64_t sa,
                        const void *b, int64_t ldb, int64_t sb, double beta, void *c,
                        int64_t ldc, int64_t sc)
{
    REC_BEGIN(MS_KERNEL_GEMM, dt, 0, (const int64_t *)NULL)
    o.f0 = ta;
    o.f1 = tb;
    int64_t v[9] = {batch, m, n, k, lda, sa, ldb, sb, ldc};
    memcpy(o.i, v, sizeof v);
    o.i[9] = sc;
    o.d[0] = alpha;
    o.d[1] = beta;
    int64_t ea, eb, ec;
    ms__tape_gemm_extents(o.i, ta, tb, &ea, &eb, &ec);
    o.p[0] = rd(t, a, ea * (int64_t)es);
    o.p[1] = rd(t, b, eb * (int64_t)es);
    if (beta != 0)
        (void)rd(t, c, ec * (int64_t)es);
    o.p[2] = wr(t, c, ec * (int64_t)es);
    REC_END
}

ms_status ms__tape_copy(ms_dtype dt, int ndim, const int64_t *shape, const void *src,
                        const int64_t *ss, void *dst, const int64_t *ds)
{
    REC_BEGIN(MS_KERNEL_COPY, dt, ndim, shape)
    memcpy(o.st[0], ss, (size_t)ndim * sizeof *ss);
    memcpy(o.st[1], ds, (size_t)ndim * sizeof *ds);
    o.p[0] = rds(t, src, ndim, shape, ss, es, false);
    o.p[1] = rds(t, dst, ndim, shape, ds, es, true);
    REC_END
}

ms_status ms__tape_softmax(ms_dtype dt, bool log, int64_t outer, int64_t len, int64_t inner,
                           const void *x, void *y)
{
    REC_BEGIN(MS_KERNEL_SOFTMAX, dt, 0, (const int64_t *)NULL)
    o.f0 = log;
    o.i[0] = outer;
    o.i[1] = len;
    o.i[2] = inner;
    o.p[0] = rd(t, x, outer * len * inner * (int64_t)es);
    o.p[1] = wr(t, y, outer * len * inner * (int64_t)es);
    REC_END
}

ms_status ms__tape_fill(ms_dtype dt, int ndim, const int64_t *shape, const int64_t *ds,
                        double value, void *dst)
{
    REC_BEGIN(MS_KERNEL_FILL, dt, ndim, shape)
    memcpy(o.st[0], ds, (size_t)ndim * sizeof *ds);
    o.d[0] = value;
    o.p[0] = rds(t, dst, ndim, shape, ds, es, true);
    REC_END
}

ms_status ms__tape_arange(ms_dtype dt, int64_t n, double start, double step, void *y)
{
    REC_BEGIN(MS_KERNEL_ARANGE, dt, 0, (const int64_t *)NULL)
    o.i[0] = n;
    o.d[0] = start;
    o.d[1] = step;
    o.p[0] = wr(t, y, n * (int64_t)es);
    REC_END
}

ms_status ms__tape_where(ms_dtype dt, int ndim, const int64_t *shape, const void *c,
                         const int64_t *sc, const void *a, const int64_t *sa, const void *b,
                         const int64_t *sb, void *y)
{
    REC_BEGIN(MS_KERNEL_WHERE, dt, ndim, shape)
    memcpy(o.st[0], sc, (size_t)ndim * sizeof *sc);
    memcpy(o.st[1], sa, (size_t)ndim * sizeof *sa);
    memcpy(o.st[2], sb, (size_t)ndim * sizeof *sb);
    o.p[0] = rds(t, c, ndim, shape, sc, es, false);
    o.p[1] = rds(t, a, ndim, shape, sa, es, false);
    o.p[2] = rds(t, b, ndim, shape, sb, es, false);
    o.p[3] = wr(t, y, ms__tape_prod(ndim, shape) * (int64_t)es);
    REC_END
}

ms_status ms__tape_conv2d(ms_dtype dt, const ms_conv2d_desc *d, const void *x, const void *w,
                          const void *bias, void *y)
{
    REC_BEGIN(MS_KERNEL_CONV2D, dt, 0, (const int64_t *)NULL)
    o.cd = *d;
    o.p[0] = rd(t, x, d->n * d->c * d->h * d->w * (int64_t)es);
    o.p[1] = rd(t, w, d->o * d->c * d->kh * d->kw * (int64_t)es);
    o.p[2] = rd(t, bias, d->o * (int64_t)es);
    o.p[3] = wr(t, y, d->n * d->o * d->oh * d->ow * (int64_t)es);
    REC_END
}

ms_status ms__tape_conv2d_backward_data(ms_dtype dt, const ms_conv2d_desc *d, const void *gy,
                                        const void *w, void *gx)
{
    REC_BEGIN(MS_KERNEL_CONV2D_BWD_DATA, dt, 0, (const int64_t *)NULL)
    o.cd = *d;
    o.p[0] = rd(t, gy, d->n * d->o * d->oh * d->ow * (int64_t)es);
    o.p[1] = rd(t, w, d->o * d->c * d->kh * d->kw * (int64_t)es);
    o.p[2] = wr(t, gx, d->n * d->c * d->h * d->w * (int64_t)es);
    REC_END
}

ms_status ms__tape_conv2d_backward_weights(ms_dtype dt, const ms_conv2d_desc *d, const void *x,
                                           const void *gy, void *gw)
{
    REC_BEGIN(MS_KERNEL_CONV2D_BWD_WEIGHTS, dt, 0, (const int64_t *)NULL)
    o.cd = *d;
    o.p[0] = rd(t, x, d->n * d->c * d->h * d->w * (int64_t)es);
    o.p[1] = rd(t, gy, d->n * d->o * d->oh * d->ow * (int64_t)es);
    o.p[2] = wr(t, gw, d->o * d->c * d->kh * d->kw * (int64_t)es);
    REC_END
}

void ms__host_copy(void *dst, const void *src, size_t bytes)
{
    if (cur && bytes) {
        ms_tape *t = cur;
        tape_op o;
        memset(&o, 0, sizeof o);
        o.kind = OP_HOSTCOPY;
        o.i[0] = (int64_t)bytes;
        o.p[0] = rd(t, src, (int64_t)bytes);
        o.p[1] = wr(t, dst, (int64_t)bytes);
        tape_op *slot = t->err ? NULL : append(t);
        if (slot)
            *slot = o, t->nops++;
    }
    if (bytes)
        memcpy(dst, src, bytes);
}

void ms__tape_check(const void *data, int64_t n, ms_dtype dt)
{
    ms_tape *t = cur;
    if (!t || n <= 0)
        return;
    tape_op o;
    memset(&o, 0, sizeof o);
    o.kind = OP_CHECK;
    o.dt = dt;
    o.i[0] = n;
    o.p[0] = rd(t, data, n * (int64_t)ms__tape_dtype_bytes(dt));
    tape_op *slot = t->err ? NULL : append(t);
    if (slot)
        *slot = o, t->nops++;
}

/* A replay checks every gradient the eager step checks: about as many
 * values as the step's elementwise kernels touch, so the loop is built for
 * AVX-512, AVX2 and baseline and picked at load, as the ref backend's are. */
/* Not under the sanitizers: this library loads with the program, and its
 * ifunc resolvers would run before the sanitizer's runtime is set up. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) &&                          \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
static bool all_finite(const void *p, int64_t n, ms_dtype dt)
{
    int bad = 0; /* x - x is 0 unless x is NaN or infinite */
    if (dt == MS_F32)
        for (int64_t i = 0; i < n; i++)
            bad |= (((const float *)p)[i] - ((const float *)p)[i]) != 0;
    else
        for (int64_t i = 0; i < n; i++)
            bad |= (((const double *)p)[i] - ((const double *)p)[i]) != 0;
    return !bad;
}

static void dims(FILE *f, int ndim, const int64_t *v)
{
    fputc('(', f);
    for (int d = 0; d < ndim; d++)
        fprintf(f, "%s%lld", d ? "," : "", (long long)v[d]);
    fputc(')', f);
}

static void dump_op(FILE *f, const tape_op *o, int k)
{
    static const char *const extra[] = {"hostcopy", "restore", "check"};
    fprintf(f, "%5d %-8s %s", k,
            o->kind < MS_KERNEL_COUNT ? ms_kernel_name(o->kind) : extra[o->kind - OP_HOSTCOPY],
            o->dt == MS_F64 ? "f64" : "f32");
    switch (o->kind) {
    case MS_KERNEL_UNARY:
    case MS_KERNEL_ARANGE:
    case OP_HOSTCOPY:
    case OP_CHECK:
        fprintf(f, " op %d n %lld", o->sub, (long long)o->i[0]);
        break;
    case MS_KERNEL_GEMM:
        fprintf(f, " %c%c batch %lld m %lld n %lld k %lld alpha %g beta %g strides %lld %lld %lld",
                o->f0 ? 'T' : 'N', o->f1 ? 'T' : 'N', (long long)o->i[0], (long long)o->i[1],
                (long long)o->i[2], (long long)o->i[3], o->d[0], o->d[1], (long long)o->i[5],
                (long long)o->i[7], (long long)o->i[9]);
        break;
    case MS_KERNEL_SOFTMAX:
        fprintf(f, " %lld x %lld x %lld", (long long)o->i[0], (long long)o->i[1],
                (long long)o->i[2]);
        break;
    case MS_KERNEL_CONV2D:
    case MS_KERNEL_CONV2D_BWD_DATA:
    case MS_KERNEL_CONV2D_BWD_WEIGHTS:
        fprintf(f, " n %lld c %lld h %lld w %lld o %lld k %lld", (long long)o->cd.n,
                (long long)o->cd.c, (long long)o->cd.h, (long long)o->cd.w, (long long)o->cd.o,
                (long long)o->cd.kh);
        break;
    default:
        fprintf(f, " op %d axes %u shape ", o->sub, o->axes);
        dims(f, o->ndim, o->shape);
        for (int j = 0; j < 3 && o->kind != MS_KERNEL_REDUCE; j++) {
            fputc(' ', f);
            dims(f, o->ndim, o->st[j]);
        }
    }
    fputc('\n', f);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* METASTEP_PLAN_PROFILE=file: when the tape is freed, append to file the
 * replays' time per operation (microseconds per replay, the clock reads
 * between operations included) with the operation as the dump prints it. */
static void write_profile(const ms_tape *t)
{
    FILE *f = t->replays ? fopen(getenv("METASTEP_PLAN_PROFILE"), "a") : NULL;
    if (!f)
        return;
    fprintf(f, "# %d operations, %ld replays\n", t->nops, t->replays);
    for (int k = 0; k < t->nops; k++) {
        fprintf(f, "%10.3f us ", 1e6 * t->prof[k] / (double)t->replays);
        dump_op(f, &t->ops[k], k);
    }
    fclose(f);
}

void ms__tape_dump(const ms_tape *t, FILE *f)
{
    fprintf(f, "# %d operations, arena %zu bytes\n", t->nops, t->arena_bytes);
    for (int k = 0; k < t->nops; k++)
        dump_op(f, &t->ops[k], k);
}

ms_status ms__tape_locate(ms_tape *t, const void *ptr, size_t bytes, int *id, int64_t *off)
{
    tref r = resolve(t, ptr, 0, (int64_t)bytes, false);
    if (t->err)
        return t->err;
    if (r.buf < 0)
        return MS_ERR_INVALID_ARG;
    /* an output lives to the end */
    t->bufs[r.buf].last = t->nops;
    tbuf *b = &t->bufs[r.buf];
    if (!b->output || r.off < b->olo)
        b->olo = r.off;
    if (!b->output || r.off + (int64_t)bytes > b->ohi)
        b->ohi = r.off + (int64_t)bytes;
    b->output = true;
    *id = r.buf;
    *off = r.off;
    return MS_OK;
}

/* The arena's free space while placing: segments sorted by offset. */
typedef struct segs {
    size_t *off, *len;
    int n, cap;
    size_t end; /* the arena's size so far */
} segs;

/* Best fit among the free segments, else at the end of the arena. */
static bool seg_take(segs *f, size_t sz, size_t *at)
{
    int best = -1;
    for (int i = 0; i < f->n; i++)
        if (f->len[i] >= sz && (best < 0 || f->len[i] < f->len[best]))
            best = i;
    if (best < 0) {
        /* grow the last segment when it ends the arena */
        if (f->n && f->off[f->n - 1] + f->len[f->n - 1] == f->end) {
            *at = f->off[f->n - 1];
            f->end = *at + sz;
            f->n--;
        } else {
            *at = f->end;
            f->end += sz;
        }
        return true;
    }
    *at = f->off[best];
    f->off[best] += sz;
    f->len[best] -= sz;
    if (!f->len[best]) {
        memmove(f->off + best, f->off + best + 1, (size_t)(f->n - best - 1) * sizeof *f->off);
        memmove(f->len + best, f->len + best + 1, (size_t)(f->n - best - 1) * sizeof *f->len);
        f->n--;
    }
    return true;
}

/* Give [at, at + sz) back, merged with its neighbours. */
static bool seg_give(segs *f, size_t at, size_t sz)
{
    int i = 0;
    while (i < f->n && f->off[i] < at)
        i++;
    bool left = i > 0 && f->off[i - 1] + f->len[i - 1] == at;
    bool right = i < f->n && at + sz == f->off[i];
    if (left && right) {
        f->len[i - 1] += sz + f->len[i];
        memmove(f->off + i, f->off + i + 1, (size_t)(f->n - i - 1) * sizeof *f->off);
        memmove(f->len + i, f->len + i + 1, (size_t)(f->n - i - 1) * sizeof *f->len);
        f->n--;
    } else if (left) {
        f->len[i - 1] += sz;
    } else if (right) {
        f->off[i] = at;
        f->len[i] += sz;
    } else {
        if (f->n == f->cap) {
            int c = f->cap ? 2 * f->cap : 64;
            size_t *o = realloc(f->off, (size_t)c * sizeof *o);
            if (o)
                f->off = o;
            size_t *l = o ? realloc(f->len, (size_t)c * sizeof *l) : NULL;
            if (!l)
                return false;
            f->len = l;
            f->cap = c;
        }
        memmove(f->off + i + 1, f->off + i, (size_t)(f->n - i) * sizeof *f->off);
        memmove(f->len + i + 1, f->len + i, (size_t)(f->n - i) * sizeof *f->len);
        f->off[i] = at;
        f->len[i] = sz;
        f->n++;
    }
    return true;
}

static size_t slot_bytes(const tbuf *b) { return ((size_t)(b->hi - b->lo) + 63) & ~(size_t)63; }

static ms_status build_rops(ms_tape *t);

/* Pack the temporaries into one arena, in the order the tape uses them: a
 * temporary takes the best-fitting free space at its first use and gives it
 * back after its last, so two temporaries share bytes only when their
 * lifetimes do not overlap.  Offsets are 64-byte aligned, as the allocator's
 * blocks are. */
ms_status ms__tape_finish(ms_tape *t)
{
    if (t->err)
        return t->err;
    /* METASTEP_PLAN_OPTIMIZE=0 replays the recording as it is (to measure
     * what the rewriting saves) */
    const char *opt = getenv("METASTEP_PLAN_OPTIMIZE");
    if (!(opt && strcmp(opt, "0") == 0)) {
        ms_status st = ms__tape_optimize(t);
        if (st != MS_OK)
            return st;
    }
    const int nops = t->nops + 1; /* outputs live to index nops - 1 */
    int *starts = calloc((size_t)nops + 1, sizeof *starts); /* temporaries by first use */
    int *ends = calloc((size_t)nops + 1, sizeof *ends);     /* ... and by last use */
    int *by_first = malloc(((size_t)t->nbufs + 1) * sizeof *by_first);
    int *by_last = malloc(((size_t)t->nbufs + 1) * sizeof *by_last);
    t->base = calloc((size_t)t->nbufs + 1, sizeof *t->base);
    segs f = {0};
    ms_status st = starts && ends && by_first && by_last && t->base ? MS_OK : MS_ERR_NOMEM;
    /* counting sorts of the temporaries by first and by last use */
    for (int i = 0; st == MS_OK && i < t->nbufs; i++) {
        tbuf *b = &t->bufs[i];
        if (b->kind != TB_TEMP)
            continue;
        if (b->first < 0)
            b->first = b->last = t->nops;
        b->lo &= ~(int64_t)63;
        if (b->hi < b->lo)
            b->hi = b->lo;
        starts[b->first + 1]++;
        ends[b->last + 1]++;
    }
    for (int k = 0; st == MS_OK && k < nops; k++) {
        starts[k + 1] += starts[k];
        ends[k + 1] += ends[k];
    }
    for (int i = 0; st == MS_OK && i < t->nbufs; i++) {
        const tbuf *b = &t->bufs[i];
        if (b->kind == TB_TEMP) {
            by_first[starts[b->first]++] = i;
            by_last[ends[b->last]++] = i;
        }
    }
    /* starts[k] is now the end of op k's group: walk ops in order */
    int a = 0, r = 0, ntemp = st == MS_OK ? starts[nops - 1] : 0;
    for (int k = 0; st == MS_OK && k < nops; k++) {
        for (; a < ntemp && t->bufs[by_first[a]].first == k; a++) {
            tbuf *b = &t->bufs[by_first[a]];
            seg_take(&f, slot_bytes(b), &b->arena_off);
        }
        for (; r < ntemp && t->bufs[by_last[r]].last == k; r++) {
            const tbuf *b = &t->bufs[by_last[r]];
            if (!seg_give(&f, b->arena_off, slot_bytes(b)))
                st = MS_ERR_NOMEM;
        }
    }
    free(starts);
    free(ends);
    free(by_first);
    free(by_last);
    free(f.off);
    free(f.len);
    if (st != MS_OK)
        return st;
    size_t total = f.end;
    t->arena = aligned_alloc(64, total ? total : 64);
    if (!t->arena)
        return MS_ERR_NOMEM;
    t->arena_bytes = total;
    for (int i = 0; i < t->nbufs; i++) {
        tbuf *b = &t->bufs[i];
        if (b->kind == TB_TEMP)
            t->base[i] = t->arena + b->arena_off - b->lo;
        else if (b->kind == TB_CONST)
            t->base[i] = b->snap;
        b->start = NULL; /* the recording's blocks are gone */
    }
    st = build_rops(t);
    if (st != MS_OK)
        return st;
    t->finished = true;
    return MS_OK;
}

size_t ms__tape_arena_bytes(const ms_tape *t) { return t->arena_bytes; }
int ms__tape_ops(const ms_tape *t) { return t->nops; }

void ms__tape_set_input(ms_tape *t, int id, const void *block) { t->base[id] = (char *)block; }

void *ms__tape_addr(const ms_tape *t, int id, int64_t off) { return t->base[id] + off; }

/* The replay form of the operations: what each kernel call needs, in the
 * order a replay reads it. */
static ms_status build_rops(ms_tape *t)
{
    size_t cap = 64, n = 0;
    t->rops = malloc(((size_t)t->nops + 1) * sizeof *t->rops);
    t->pool = malloc(cap * sizeof *t->pool);
    if (!t->rops || !t->pool)
        return MS_ERR_NOMEM;
    const char *prof = getenv("METASTEP_PLAN_PROFILE");
    if (prof && *prof && !(t->prof = calloc((size_t)t->nops + 1, sizeof *t->prof)))
        return MS_ERR_NOMEM;
    for (int k = 0; k < t->nops; k++) {
        const tape_op *o = &t->ops[k];
        rop *r = &t->rops[k];
        *r = (rop){.kind = (uint8_t)o->kind, .sub = (uint8_t)o->sub, .ndim = (uint8_t)o->ndim,
                   .dt = (uint8_t)o->dt, .f0 = o->f0, .f1 = o->f1, .axes = o->axes,
                   .aux = (uint32_t)n};
        for (int j = 0; j < 4; j++) {
            r->buf[j] = o->p[j].buf;
            r->off[j] = o->p[j].off;
        }
        /* what goes to the pool: shape and strides, the integers, the doubles */
        int nst = 0, ni = 0, nd = 0;
        bool shape = false, cd = false;
        switch (o->kind) {
        case MS_KERNEL_UNARY: case MS_KERNEL_ARANGE: case OP_HOSTCOPY: case OP_CHECK:
            ni = 1, nd = o->kind == MS_KERNEL_ARANGE ? 2 : 0;
            break;
        case MS_KERNEL_BINARY: case MS_KERNEL_COPY: shape = true, nst = 2; break;
        case MS_KERNEL_WHERE: shape = true, nst = 3; break;
        case MS_KERNEL_FILL: shape = true, nst = 1, nd = 1; break;
        case MS_KERNEL_REDUCE: shape = true; break;
        case MS_KERNEL_GEMM: ni = 10, nd = 2; break;
        case MS_KERNEL_SOFTMAX: ni = 3; break;
        case MS_KERNEL_CONV2D: case MS_KERNEL_CONV2D_BWD_DATA: case MS_KERNEL_CONV2D_BWD_WEIGHTS:
            cd = true;
            break;
        default: break;
        }
        size_t need = n + (shape ? (size_t)o->ndim * (1 + (size_t)nst) : 0) + (size_t)ni +
                      (size_t)nd + (cd ? sizeof o->cd / sizeof(int64_t) + 1 : 0);
        if (need > cap) {
            while (cap < need)
                cap *= 2;
            int64_t *q = realloc(t->pool, cap * sizeof *q);
            if (!q)
                return MS_ERR_NOMEM;
            t->pool = q;
        }
        if (need > UINT32_MAX)
            return MS_ERR_NOMEM;
        int64_t *x = t->pool + n;
        if (shape) {
            memcpy(x, o->shape, (size_t)o->ndim * sizeof *x), x += o->ndim;
            for (int j = 0; j < nst; j++)
                memcpy(x, o->st[j], (size_t)o->ndim * sizeof *x), x += o->ndim;
        }
        memcpy(x, o->i, (size_t)ni * sizeof *x), x += ni;
        memcpy(x, o->d, (size_t)nd * sizeof *x), x += nd;
        if (cd)
            memcpy(x, &o->cd, sizeof o->cd);
        n = need;
    }
    return MS_OK;
}

#define P(k) (o->buf[k] < 0 ? NULL : (void *)(base[o->buf[k]] + o->off[k]))
/* The backend's kernel, else ref's when the backend has no such slot or
 * declines (counted as a fallback), as the msk_* dispatchers do. */
#define CALL(KERNEL, slot, ARGS)                                                             \
    do {                                                                                     \
        st = MS_ERR_UNSUPPORTED;                                                             \
        if (has[KERNEL])                                                                     \
            st = be->slot ARGS;                                                              \
        if (st == MS_ERR_UNSUPPORTED && ref != be) {                                         \
            fallbacks[KERNEL]++;                                                             \
            st = ref->slot ARGS;                                                             \
        }                                                                                    \
    } while (0)

ms_status ms__tape_replay(ms_tape *t)
{
    /* a replay calls the backend's table directly, past the recorder: inside
     * another trace on this thread (a compiled step run by a traced cost
     * function) it declines, and the plan runs the step eagerly, recorded */
    if (!t->finished || ms__taping())
        return MS_ERR_INVALID_ARG;
    const ms_backend *be = ms__active_table(), *ref = ms__ref();
    if (!be || !ref)
        return MS_ERR_BACKEND;
    bool has[MS_KERNEL_COUNT];
#define HAS(KERNEL, slot) has[KERNEL] = MS_BACKEND_HAS_SLOT(be, slot) && be->slot != NULL
    HAS(MS_KERNEL_UNARY, unary);
    HAS(MS_KERNEL_BINARY, binary);
    HAS(MS_KERNEL_REDUCE, reduce);
    HAS(MS_KERNEL_GEMM, gemm);
    HAS(MS_KERNEL_COPY, copy);
    HAS(MS_KERNEL_SOFTMAX, softmax);
    HAS(MS_KERNEL_FILL, fill);
    HAS(MS_KERNEL_ARANGE, arange);
    HAS(MS_KERNEL_WHERE, where);
    HAS(MS_KERNEL_CONV2D, conv2d);
    HAS(MS_KERNEL_CONV2D_BWD_DATA, conv2d_backward_data);
    HAS(MS_KERNEL_CONV2D_BWD_WEIGHTS, conv2d_backward_weights);
#undef HAS
    uint64_t fallbacks[MS_KERNEL_COUNT] = {0};
    char *const *base = t->base;
    ms_status st = MS_OK;
    double t0 = t->prof ? now() : 0;
    for (int k = 0; k < t->nops && st == MS_OK; k++) {
        if (t->prof && k) {
            double t1 = now();
            t->prof[k - 1] += t1 - t0;
            t0 = t1;
        }
        const rop *o = &t->rops[k];
        const int64_t *x = t->pool + o->aux;
        const int nd = o->ndim;
        const ms_dtype dt = (ms_dtype)o->dt;
        double d[2];
        switch (o->kind) {
        case MS_KERNEL_UNARY:
            CALL(MS_KERNEL_UNARY, unary, ((ms_unary_op)o->sub, dt, x[0], P(0), P(1)));
            break;
        case MS_KERNEL_BINARY:
            CALL(MS_KERNEL_BINARY, binary,
                 ((ms_binary_op)o->sub, dt, nd, x, P(0), x + nd, P(1), x + 2 * nd, P(2)));
            break;
        case MS_KERNEL_REDUCE:
            CALL(MS_KERNEL_REDUCE, reduce, ((ms_reduce_op)o->sub, dt, nd, x, o->axes, P(0), P(1)));
            break;
        case MS_KERNEL_GEMM:
            memcpy(d, x + 10, sizeof d);
            CALL(MS_KERNEL_GEMM, gemm,
                 (dt, o->f0, o->f1, x[0], x[1], x[2], x[3], d[0], P(0), x[4], x[5], P(1), x[6],
                  x[7], d[1], P(2), x[8], x[9]));
            break;
        case MS_KERNEL_COPY:
            CALL(MS_KERNEL_COPY, copy, (dt, nd, x, P(0), x + nd, P(1), x + 2 * nd));
            break;
        case MS_KERNEL_SOFTMAX:
            CALL(MS_KERNEL_SOFTMAX, softmax, (dt, o->f0, x[0], x[1], x[2], P(0), P(1)));
            break;
        case MS_KERNEL_FILL:
            memcpy(d, x + 2 * nd, sizeof d[0]);
            CALL(MS_KERNEL_FILL, fill, (dt, nd, x, x + nd, d[0], P(0)));
            break;
        case MS_KERNEL_ARANGE:
            memcpy(d, x + 1, sizeof d);
            CALL(MS_KERNEL_ARANGE, arange, (dt, x[0], d[0], d[1], P(0)));
            break;
        case MS_KERNEL_WHERE:
            CALL(MS_KERNEL_WHERE, where,
                 (dt, nd, x, P(0), x + nd, P(1), x + 2 * nd, P(2), x + 3 * nd, P(3)));
            break;
        case MS_KERNEL_CONV2D:
            CALL(MS_KERNEL_CONV2D, conv2d, (dt, (const ms_conv2d_desc *)x, P(0), P(1), P(2), P(3)));
            break;
        case MS_KERNEL_CONV2D_BWD_DATA:
            CALL(MS_KERNEL_CONV2D_BWD_DATA, conv2d_backward_data,
                 (dt, (const ms_conv2d_desc *)x, P(0), P(1), P(2)));
            break;
        case MS_KERNEL_CONV2D_BWD_WEIGHTS:
            CALL(MS_KERNEL_CONV2D_BWD_WEIGHTS, conv2d_backward_weights,
                 (dt, (const ms_conv2d_desc *)x, P(0), P(1), P(2)));
            break;
        case OP_HOSTCOPY: {
            char *dst = P(1), *src = P(0);
            if (dst && src)
                memcpy(dst, src, (size_t)x[0]);
            break;
        }
        case OP_CHECK:
            if (!all_finite(P(0), x[0], dt))
                st = MS_ERR_NUMERIC;
            break;
        case OP_RESTORE: {
            const tbuf *b = &t->bufs[o->buf[0]];
            memcpy(base[o->buf[0]], b->snap, b->size);
            break;
        }
        default:
            st = MS_ERR_INVALID_ARG;
        }
    }
    if (t->prof && t->nops) {
        t->prof[t->nops - 1] += now() - t0;
        t->replays++;
    }
    ms__count_fallbacks(fallbacks);
    return st;
}
