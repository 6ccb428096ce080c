/* Rewriting a finished kernel tape before its arena is planned, so that a
 * replay does less and still writes the same bytes as the eager step.
 *
 * Three passes, all exact by construction (no arithmetic is changed, only
 * which copy of the same bytes an operation reads, and whether an operation
 * whose result nobody reads runs at all):
 *   - copy forwarding: an operation that reads the destination of a plain
 *     copy (a host copy between tensors, a contiguous copy kernel, a
 *     reduction over size-1 axes that ref computes as a copy) reads
 *     the copy's source instead, when the destination is a temporary that
 *     nothing else writes and the source is not written before the last such
 *     read.  The eager frontend copies tensors whole where it cannot share
 *     them (a task's view of the variables, a detached or reshaped result),
 *     so a loop step records about as many copies as arithmetic;
 *   - dead operations: an operation whose writes all land in temporaries no
 *     later operation reads (and no caller reads after the replay) is
 *     dropped, from the end backwards, so whole chains go: the forwarded
 *     copies, and results the eager step computes and never uses.
 *   - in place: an elementwise result whose operand is a temporary read for
 *     the last time by that operation, densely in the result's order, takes
 *     the operand's bytes (the result's temporary is merged into the
 *     operand's), so the kernel stores into lines it has just loaded
 *     instead of missing on a fresh part of the arena, and the arena
 *     shrinks.  Unary kernels accept y = x on every backend (the ABI says
 *     so); binary ones only when ref computes them, which documents it.
 *     Each element is still computed from the same operand values.
 * Finiteness checks are never dropped: a replay makes every check the eager
 * step made, at the same point.  A forwarded read keeps its address modulo
 * 64 bytes, so every kernel sees operands aligned exactly as in the eager
 * step.  Afterwards every temporary's lifetime and byte range are recomputed
 * from the remaining operations, so the arena shrinks with them.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/tape_impl.h"

/* One range of bytes an operation reads or writes through its pointer p[ref],
 * from the buffer's base. */
typedef struct acc {
    int op, ref;
    bool write;
    int64_t lo, hi;
} acc;

enum { MAX_ACC = 6 };

/* The non-empty byte ranges operation o touches, reads before writes, as the
 * recorders in tape.c resolved them. */
static int accesses(const ms_tape *t, const tape_op *o, int op, acc *a)
{
    const int64_t es = (int64_t)ms__tape_dtype_bytes(o->dt);
    const int64_t *i = o->i;
    const ms_conv2d_desc *d = &o->cd;
    int n = 0;
#define DENSE(K, W, BYTES) (a[n++] = (acc){op, K, W, 0, (BYTES)})
#define STRIDED(K, W, ST)                                                                        \
    do {                                                                                         \
        a[n] = (acc){op, K, W, 0, 0};                                                            \
        ms__tape_extent(o->ndim, o->shape, ST, (size_t)es, &a[n].lo, &a[n].hi);                  \
        n++;                                                                                     \
    } while (0)
    const int64_t all = ms__tape_prod(o->ndim, o->shape) * es;
    switch (o->kind) {
    case MS_KERNEL_UNARY:
        DENSE(0, false, i[0] * es);
        DENSE(1, true, i[0] * es);
        break;
    case MS_KERNEL_BINARY:
        STRIDED(0, false, o->st[0]);
        STRIDED(1, false, o->st[1]);
        DENSE(2, true, all);
        break;
    case MS_KERNEL_REDUCE: {
        int64_t ny = 1;
        for (int k = 0; k < o->ndim; k++)
            if (!(o->axes & (1u << k)))
                ny *= o->shape[k];
        DENSE(0, false, all);
        DENSE(1, true, ny * es);
        break;
    }
    case MS_KERNEL_GEMM: {
        int64_t ea, eb, ec;
        ms__tape_gemm_extents(i, o->f0, o->f1, &ea, &eb, &ec);
        DENSE(0, false, ea * es);
        DENSE(1, false, eb * es);
        if (o->d[1] != 0)
            DENSE(2, false, ec * es);
        DENSE(2, true, ec * es);
        break;
    }
    case MS_KERNEL_COPY:
        STRIDED(0, false, o->st[0]);
        STRIDED(1, true, o->st[1]);
        break;
    case MS_KERNEL_SOFTMAX:
        DENSE(0, false, i[0] * i[1] * i[2] * es);
        DENSE(1, true, i[0] * i[1] * i[2] * es);
        break;
    case MS_KERNEL_FILL:
        STRIDED(0, true, o->st[0]);
        break;
    case MS_KERNEL_ARANGE:
        DENSE(0, true, i[0] * es);
        break;
    case MS_KERNEL_WHERE:
        STRIDED(0, false, o->st[0]);
        STRIDED(1, false, o->st[1]);
        STRIDED(2, false, o->st[2]);
        DENSE(3, true, all);
        break;
    case MS_KERNEL_CONV2D:
        DENSE(0, false, d->n * d->c * d->h * d->w * es);
        DENSE(1, false, d->o * d->c * d->kh * d->kw * es);
        DENSE(2, false, d->o * es);
        DENSE(3, true, d->n * d->o * d->oh * d->ow * es);
        break;
    case MS_KERNEL_CONV2D_BWD_DATA:
        DENSE(0, false, d->n * d->o * d->oh * d->ow * es);
        DENSE(1, false, d->o * d->c * d->kh * d->kw * es);
        DENSE(2, true, d->n * d->c * d->h * d->w * es);
        break;
    case MS_KERNEL_CONV2D_BWD_WEIGHTS:
        DENSE(0, false, d->n * d->c * d->h * d->w * es);
        DENSE(1, false, d->n * d->o * d->oh * d->ow * es);
        DENSE(2, true, d->o * d->c * d->kh * d->kw * es);
        break;
    case OP_HOSTCOPY:
        DENSE(0, false, i[0]);
        DENSE(1, true, i[0]);
        break;
    case OP_CHECK:
        DENSE(0, false, i[0] * es);
        break;
    case OP_RESTORE:
        DENSE(0, true, (int64_t)t->bufs[o->p[0].buf].size);
        break;
    default:
        break;
    }
#undef DENSE
#undef STRIDED
    int m = 0;
    for (int k = 0; k < n; k++) {
        const tref *r = &o->p[a[k].ref];
        if (r->buf < 0 || a[k].hi <= a[k].lo)
            continue;
        a[m] = a[k];
        a[m].lo += r->off;
        a[m].hi += r->off;
        m++;
    }
    return m;
}

/* Every access of the tape, grouped by buffer in operation order. */
typedef struct by_buf {
    acc *a;
    int *start; /* buffer b's accesses: a[start[b] .. start[b + 1]) */
} by_buf;

static ms_status group(const ms_tape *t, by_buf *g)
{
    acc tmp[MAX_ACC];
    g->start = calloc((size_t)t->nbufs + 2, sizeof *g->start);
    int total = 0;
    for (int k = 0; g->start && k < t->nops; k++) {
        int n = accesses(t, &t->ops[k], k, tmp);
        for (int j = 0; j < n; j++)
            g->start[t->ops[k].p[tmp[j].ref].buf + 2]++;
        total += n;
    }
    g->a = malloc(((size_t)total + 1) * sizeof *g->a);
    if (!g->start || !g->a)
        return MS_ERR_NOMEM;
    for (int b = 0; b < t->nbufs; b++)
        g->start[b + 2] += g->start[b + 1];
    for (int k = 0; k < t->nops; k++) {
        int n = accesses(t, &t->ops[k], k, tmp);
        for (int j = 0; j < n; j++)
            g->a[g->start[t->ops[k].p[tmp[j].ref].buf + 1]++] = tmp[j];
    }
    return MS_OK;
}

/* Whether o's strides st[j] walk its shape densely, in row-major order
 * (size-1 dims are free): for an elementwise operand, element for element
 * with the contiguous result. */
static bool dense(const tape_op *o, int j)
{
    int64_t want = 1;
    for (int d = o->ndim - 1; d >= 0; d--) {
        if (o->shape[d] == 1)
            continue;
        if (o->st[j][d] != want)
            return false;
        want *= o->shape[d];
    }
    return true;
}

/* Make every reference to buffer `from` in the operations that access it
 * (g), except op `keep`, a reference to buffer `to`, `delta` bytes further. */
static void retarget(ms_tape *t, const by_buf *g, int from, int to, int64_t delta, int keep)
{
    for (int j = g->start[from]; j < g->start[from + 1]; j++) {
        tape_op *o = &t->ops[g->a[j].op];
        if (g->a[j].op == keep)
            continue;
        for (int r = 0; r < 4; r++)
            if (o->p[r].buf == from) {
                o->p[r].buf = to;
                o->p[r].off += delta;
            }
    }
}

/* A plain copy of n bytes from *src to *dst: a host copy, a copy kernel
 * whose both sides are dense and in the same order, or, when ref computes
 * reductions (ref_copies_reduce), a reduction over axes that all have size 1,
 * which ref computes as a memcpy (the autodiff's sum over a broadcast task
 * axis of size 1, in every loop-mode backward). */
static bool plain_copy(const tape_op *o, bool ref_copies_reduce, tref *src, tref *dst,
                       int64_t *n)
{
    if (o->kind == OP_HOSTCOPY) {
        *n = o->i[0];
    } else if (o->kind == MS_KERNEL_REDUCE && ref_copies_reduce) {
        int64_t count = 1, all = 1;
        for (int d = 0; d < o->ndim; d++) {
            if (o->axes & (1u << d))
                count *= o->shape[d];
            all *= o->shape[d];
        }
        if (count != 1 || o->axes == 0)
            return false;
        *n = all * (int64_t)ms__tape_dtype_bytes(o->dt);
    } else if (o->kind == MS_KERNEL_COPY) {
        if (!dense(o, 0) || !dense(o, 1))
            return false;
        *n = ms__tape_prod(o->ndim, o->shape) * (int64_t)ms__tape_dtype_bytes(o->dt);
    } else {
        return false;
    }
    *src = o->p[0];
    *dst = o->p[1];
    return *n > 0 && src->buf >= 0 && dst->buf >= 0 && src->buf != dst->buf;
}

/* Forward the copy at op k when it is safe (see the top of this file). */
static void forward(ms_tape *t, const by_buf *g, int k, bool ref_copies_reduce)
{
    tref s, dst;
    int64_t n;
    if (!plain_copy(&t->ops[k], ref_copies_reduce, &s, &dst, &n))
        return;
    const tbuf *db = &t->bufs[dst.buf];
    if (db->kind != TB_TEMP || db->snap || t->bufs[s.buf].kind == TB_CONST ||
        (s.off - dst.off) % 64 != 0)
        return;
    /* the destination: written by this copy only, then read inside it */
    int last = -1;
    for (int j = g->start[dst.buf]; j < g->start[dst.buf + 1]; j++) {
        const acc *e = &g->a[j];
        if (e->op == k && e->write)
            continue;
        if (e->write || e->op <= k || e->lo < dst.off || e->hi > dst.off + n)
            return;
        last = e->op;
    }
    if (last < 0)
        return; /* nothing reads it: the dead-operation pass drops the copy */
    /* the source: not written until the last read (included: that op must
     * not read and write the same bytes) */
    for (int j = g->start[s.buf]; j < g->start[s.buf + 1]; j++) {
        const acc *e = &g->a[j];
        if (e->write && e->op > k && e->op <= last && e->lo < s.off + n && e->hi > s.off)
            return;
    }
    retarget(t, g, dst.buf, s.buf, s.off - dst.off, k); /* the copy itself stays */
}

/* Drop operations nothing reads; mark them with kind -1. */
static ms_status drop_dead(ms_tape *t)
{
    int *reads = calloc((size_t)t->nbufs + 1, sizeof *reads); /* by later live ops */
    if (!reads)
        return MS_ERR_NOMEM;
    acc a[MAX_ACC];
    for (int k = t->nops - 1; k >= 0; k--) {
        tape_op *o = &t->ops[k];
        int n = accesses(t, o, k, a);
        bool dead = o->kind != OP_CHECK;
        int writes = 0;
        for (int j = 0; j < n && dead; j++) {
            if (!a[j].write)
                continue;
            const tbuf *b = &t->bufs[o->p[a[j].ref].buf];
            writes++;
            dead = b->kind == TB_TEMP && !b->output && reads[o->p[a[j].ref].buf] == 0;
        }
        if (dead && writes) {
            o->kind = -1;
            continue;
        }
        for (int j = 0; j < n; j++)
            if (!a[j].write)
                reads[o->p[a[j].ref].buf]++;
    }
    free(reads);
    return MS_OK;
}

/* A temporary whose bytes only the tape's operations give meaning to. */
static bool private_temp(const ms_tape *t, int buf)
{
    const tbuf *b = &t->bufs[buf];
    return b->kind == TB_TEMP && !b->output && !b->snap;
}

/* Merge the result of each elementwise operation into an operand that dies
 * there (see the top of this file).  g: the accesses of the tape as it is. */
static ms_status in_place(ms_tape *t, const by_buf *g, bool ref_binary)
{
    int *first = malloc(((size_t)t->nbufs + 1) * sizeof *first);
    int *last = malloc(((size_t)t->nbufs + 1) * sizeof *last);
    if (!first || !last) {
        free(first);
        free(last);
        return MS_ERR_NOMEM;
    }
    for (int b = 0; b < t->nbufs; b++) {
        const bool any = g->start[b + 1] > g->start[b];
        first[b] = any ? g->a[g->start[b]].op : -1;
        last[b] = any ? g->a[g->start[b + 1] - 1].op : -1;
    }
    for (int k = 0; k < t->nops; k++) {
        tape_op *o = &t->ops[k];
        int yr, nc = 0, cand[2];
        if (o->kind == MS_KERNEL_UNARY) {
            yr = 1;
            cand[nc++] = 0;
        } else if (o->kind == MS_KERNEL_BINARY && ref_binary) {
            yr = 2;
            for (int j = 0; j < 2; j++)
                if (dense(o, j))
                    cand[nc++] = j;
        } else {
            continue;
        }
        const tref y = o->p[yr];
        if (y.buf < 0 || !private_temp(t, y.buf) || first[y.buf] != k)
            continue;
        for (int c = 0; c < nc; c++) {
            const tref x = o->p[cand[c]];
            if (x.buf < 0 || x.buf == y.buf || !private_temp(t, x.buf) || last[x.buf] != k ||
                (x.off - y.off) % 64 != 0)
                continue;
            if (yr == 2) { /* the other operand: not y, and x only as x itself */
                const int j = 1 - cand[c];
                const tref w = o->p[j];
                if (w.buf == y.buf ||
                    (w.buf == x.buf && (w.off != x.off || !dense(o, j))))
                    continue;
            }
            retarget(t, g, y.buf, x.buf, x.off - y.off, -1);
            last[x.buf] = last[y.buf];
            first[y.buf] = last[y.buf] = -1;
            break;
        }
    }
    free(first);
    free(last);
    return MS_OK;
}

/* Remove the dropped operations and recompute each temporary's first and
 * last use and its byte range from what remains. */
static void compact(ms_tape *t)
{
    int m = 0;
    for (int k = 0; k < t->nops; k++)
        if (t->ops[k].kind >= 0)
            t->ops[m++] = t->ops[k];
    t->nops = m;
    for (int i = 0; i < t->nbufs; i++) {
        tbuf *b = &t->bufs[i];
        if (b->kind != TB_TEMP)
            continue;
        b->first = b->last = -1;
        b->lo = INT64_MAX;
        b->hi = 0;
    }
    acc a[MAX_ACC];
    for (int k = 0; k < t->nops; k++) {
        int n = accesses(t, &t->ops[k], k, a);
        for (int j = 0; j < n; j++) {
            tbuf *b = &t->bufs[t->ops[k].p[a[j].ref].buf];
            if (b->kind != TB_TEMP)
                continue;
            if (a[j].lo < b->lo)
                b->lo = a[j].lo;
            if (a[j].hi > b->hi)
                b->hi = a[j].hi;
            if (b->first < 0)
                b->first = k;
            b->last = k;
        }
    }
    for (int i = 0; i < t->nbufs; i++) {
        tbuf *b = &t->bufs[i];
        if (b->kind != TB_TEMP)
            continue;
        if (b->output) {
            if (b->olo < b->lo)
                b->lo = b->olo;
            if (b->ohi > b->hi)
                b->hi = b->ohi;
            if (b->first < 0)
                b->first = t->nops;
            b->last = t->nops;
        }
        if (b->first < 0) /* nothing touches it any more: an empty slot */
            b->lo = b->hi = 0;
    }
}

ms_status ms__tape_optimize(ms_tape *t)
{
    by_buf g = {0};
    ms_status st = group(t, &g);
    /* whether ref computes a kernel family for the backend the replay will
     * call (the traced one): it is ref, or leaves that slot empty */
    const ms_backend *be = ms__active_table(), *ref = ms__ref();
#define REF_SERVES(slot)                                                                          \
    (be && ref && (be == ref || !MS_BACKEND_HAS_SLOT(be, slot) || !be->slot))
    const bool ref_copies_reduce = REF_SERVES(reduce), ref_binary = REF_SERVES(binary);
#undef REF_SERVES
    for (int k = 0; st == MS_OK && k < t->nops; k++)
        forward(t, &g, k, ref_copies_reduce);
    free(g.a);
    free(g.start);
    if (st == MS_OK)
        st = drop_dead(t);
    /* in place, on the accesses of the operations that remain (dropped ones
     * have none) */
    g = (by_buf){0};
    if (st == MS_OK)
        st = group(t, &g);
    if (st == MS_OK)
        st = in_place(t, &g, ref_binary);
    free(g.a);
    free(g.start);
    if (st == MS_OK)
        compact(t);
    return st;
}
