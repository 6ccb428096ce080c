/* Rewriting a finished kernel tape before its arena is planned, so that a
 * replay does less and still writes the same bytes as the eager step.
 *
 * Two passes, both exact by construction (no arithmetic is changed, only
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
 * Finiteness checks are never dropped: a replay makes every check the eager
 * step made, at the same point.  A forwarded read keeps its address modulo
 * 64 bytes, so every kernel sees operands aligned exactly as in the eager
 * step.  Afterwards every temporary's lifetime and byte range are recomputed
 * from the remaining operations, so the arena shrinks with them.
 */
#include <stdio.h>
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
        /* i = batch, m, n, k, lda, sa, ldb, sb, ldc, sc */
        int64_t ea = 0, eb = 0, ec = 0;
        if (i[0] > 0 && i[1] > 0 && i[2] > 0) {
            if (i[3] > 0) {
                ea = (i[0] - 1) * i[5] + (o->f0 ? (i[3] - 1) * i[4] + i[1] : (i[1] - 1) * i[4] + i[3]);
                eb = (i[0] - 1) * i[7] + (o->f1 ? (i[2] - 1) * i[6] + i[3] : (i[3] - 1) * i[6] + i[2]);
            }
            ec = (i[0] - 1) * i[9] + (i[1] - 1) * i[8] + i[2];
        }
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
        int64_t want = 1;
        for (int d = o->ndim - 1; d >= 0; d--) {
            if (o->shape[d] != 1 && (o->st[0][d] != want || o->st[1][d] != want))
                return false;
            want *= o->shape[d];
        }
        *n = want * (int64_t)ms__tape_dtype_bytes(o->dt);
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
    for (int j = g->start[dst.buf]; j < g->start[dst.buf + 1]; j++) {
        tape_op *o = &t->ops[g->a[j].op];
        if (g->a[j].op == k)
            continue;
        for (int r = 0; r < 4; r++)
            if (o->p[r].buf == dst.buf) {
                o->p[r].buf = s.buf;
                o->p[r].off += s.off - dst.off;
            }
    }
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

/* Extend the lifetimes and byte ranges of the temporaries o touches to op k
 * (a group's scratch block: its whole, small, size). */
static void touch_op(ms_tape *t, const tape_op *o, int k)
{
    acc a[MAX_ACC];
    int n = accesses(t, o, k, a);
    for (int j = 0; j < n; j++) {
        tbuf *b = &t->bufs[o->p[a[j].ref].buf];
        if (b->kind != TB_TEMP)
            continue;
        int64_t lo = b->scratch ? 0 : a[j].lo, hi = b->scratch ? (int64_t)b->size : a[j].hi;
        if (lo < b->lo)
            b->lo = lo;
        if (hi > b->hi)
            b->hi = hi;
        if (b->first < 0)
            b->first = k;
        b->last = k;
    }
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
    for (int k = 0; k < t->nops; k++) {
        const tape_op *o = &t->ops[k];
        if (o->kind == OP_GROUP)
            for (int m = 0; m < o->i[3]; m++)
                touch_op(t, &t->gops[o->i[2] + m], k);
        else
            touch_op(t, o, k);
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

/* --- groups: elementwise operations of one length, block by block ---
 *
 * A meta step's elementwise operations on one variable come in chains
 * (batched: the gradient times the task count, its check, times the
 * learning rate, subtracted from the weights), each a pass over arrays that
 * live in L2 or further.  A group runs such operations block by block
 * (GROUP_BLOCK elements), each block through every member in tape order, so
 * a block stays in L1 from one member to the next; an intermediate only
 * members read shrinks to one block (a scratch buffer).  Each member is the
 * same kernel on a slice of its operands, and elementwise results do not
 * depend on how the elements are sliced, so the bytes are the same.
 *
 * Members: flat binary operations (operands dense or one broadcast value)
 * and unary ones that ref computes for the traced backend, and finiteness
 * checks, of one dtype and length (at least GROUP_MIN elements).  An
 * operation joins a group that starts earlier when no operation it would
 * move ahead of touches what it touches (reads against writes), and when
 * within the group every member that reads what another writes reads it
 * densely at the same address (the same element of the same block). */
enum { GROUP_BLOCK = 1024, GROUP_MIN = 4096, GROUP_WINDOW = 48, GROUP_MAX = 32 };

/* METASTEP_PLAN_GROUP=MIN,BLOCK overrides the smallest length and the
 * block (the tests make groups of any length, in odd blocks); "0" turns
 * groups off. */
static bool group_params(int64_t *min, int64_t *block)
{
    *min = GROUP_MIN;
    *block = GROUP_BLOCK;
    const char *e = getenv("METASTEP_PLAN_GROUP");
    if (!e || !*e)
        return true;
    long long a = 0, b = 0;
    int n = sscanf(e, "%lld,%lld", &a, &b);
    if (n >= 1 && a <= 0)
        return false;
    if (n >= 1)
        *min = a;
    if (n == 2 && b > 0)
        *block = b;
    return true;
}

/* Whether o can be a member, and its length; l[] per operand: 1 dense,
 * 0 one broadcast value (binary); -1 when it cannot. */
static int64_t member_len(const tape_op *o, bool ref_binary, bool ref_unary, int l[3])
{
    l[0] = l[1] = l[2] = 1;
    switch (o->kind) {
    case MS_KERNEL_BINARY: {
        if (!ref_binary)
            return -1;
        int64_t n = ms__tape_prod(o->ndim, o->shape);
        for (int j = 0; j < 2; j++) {
            bool dense = true, one = true;
            int64_t want = 1;
            for (int d = o->ndim - 1; d >= 0; d--) {
                if (o->shape[d] == 1)
                    continue;
                dense = dense && o->st[j][d] == want;
                one = one && o->st[j][d] == 0;
                want *= o->shape[d];
            }
            if (!dense && !one)
                return -1;
            l[j] = dense ? 1 : 0;
        }
        return n;
    }
    case MS_KERNEL_UNARY:
        return ref_unary ? o->i[0] : -1;
    case OP_CHECK:
        return o->i[0];
    default:
        return -1;
    }
}

static bool overlap(const acc *x, int bx, const acc *y, int by)
{
    return bx == by && x->lo < y->hi && y->lo < x->hi;
}

/* Whether b (later in the tape) may run after a, block by block, in one
 * group: every byte one writes and the other touches is touched densely at
 * the same address by both.  la, lb: the operands' l[] of member_len. */
/* Every operation's accesses, computed once for the grouping. */
typedef struct acc_list {
    acc a[MAX_ACC];
    int n;
} acc_list;

static bool members_agree(const acc_list *ca, const tape_op *a, const int *la,
                          const acc_list *cb, const tape_op *b, const int *lb)
{
    const acc *x = ca->a, *y = cb->a;
    const int nx = ca->n, ny = cb->n;
    for (int i = 0; i < nx; i++)
        for (int j = 0; j < ny; j++) {
            if (!x[i].write && !y[j].write)
                continue;
            if (!overlap(&x[i], a->p[x[i].ref].buf, &y[j], b->p[y[j].ref].buf))
                continue;
            bool dense = la[x[i].ref] == 1 && lb[y[j].ref] == 1;
            if (!dense || x[i].lo != y[j].lo || x[i].hi != y[j].hi)
                return false;
        }
    return true;
}

/* Whether op b may move ahead of op a (no byte one writes the other
 * touches). */
static bool independent(const acc_list *ca, const tape_op *a, const acc_list *cb,
                        const tape_op *b)
{
    const acc *x = ca->a, *y = cb->a;
    const int nx = ca->n, ny = cb->n;
    for (int i = 0; i < nx; i++)
        for (int j = 0; j < ny; j++)
            if ((x[i].write || y[j].write) &&
                overlap(&x[i], a->p[x[i].ref].buf, &y[j], b->p[y[j].ref].buf))
                return false;
    return true;
}

/* An intermediate of the group [members] that nothing outside it reads: the
 * temporary written by member w, when every access to it in the whole tape
 * is one of the members' (g: accesses by buffer, op indices of the tape
 * before grouping; in[] marks the members). */
static bool only_members(const ms_tape *t, const by_buf *g, int buf, const bool *in)
{
    const tbuf *b = &t->bufs[buf];
    if (b->kind != TB_TEMP || b->output || b->snap)
        return false;
    for (int j = g->start[buf]; j < g->start[buf + 1]; j++)
        if (!in[g->a[j].op])
            return false;
    return true;
}

/* A new temporary of `bytes`: one block of a group's intermediate. */
static int new_scratch(ms_tape *t, size_t bytes)
{
    tbuf *q = realloc(t->bufs, ((size_t)t->nbufs + 1) * sizeof *q);
    if (!q)
        return -1;
    t->bufs = q;
    t->capbufs = t->nbufs + 1;
    t->bufs[t->nbufs] = (tbuf){.kind = TB_TEMP, .slot = -1, .size = bytes, .lo = 0,
                               .hi = (int64_t)bytes, .first = -1, .last = -1, .written = true,
                               .scratch = true};
    return t->nbufs++;
}

static ms_status fuse(ms_tape *t, bool ref_binary, bool ref_unary, int64_t min_len,
                      int64_t block)
{
    by_buf g = {0};
    ms_status st = group(t, &g);
    bool *in = calloc((size_t)t->nops + 1, sizeof *in);   /* in the group being built */
    bool *done = calloc((size_t)t->nops + 1, sizeof *done); /* in some group */
    int *mem = malloc(GROUP_MAX * sizeof *mem);
    acc_list *al = malloc(((size_t)t->nops + 1) * sizeof *al);
    if (st != MS_OK || !in || !done || !mem || !al) {
        st = MS_ERR_NOMEM;
        goto out;
    }
    for (int k = 0; k < t->nops; k++)
        al[k].n = accesses(t, &t->ops[k], k, al[k].a);
    for (int k = 0; k < t->nops; k++) {
        int lk[3];
        const tape_op *ok = &t->ops[k];
        int64_t n = done[k] ? -1 : member_len(ok, ref_binary, ref_unary, lk);
        if (n < min_len)
            continue;
        int cnt = 0;
        mem[cnt++] = k;
        in[k] = true;
        for (int j = k + 1; j < t->nops && j <= k + GROUP_WINDOW && cnt < GROUP_MAX; j++) {
            int lj[3];
            const tape_op *oj = &t->ops[j];
            bool ok_j = !done[j] && oj->dt == ok->dt &&
                        member_len(oj, ref_binary, ref_unary, lj) == n;
            for (int i = k + 1; ok_j && i < j; i++)
                if (!in[i] && t->ops[i].kind >= 0)
                    ok_j = independent(&al[i], &t->ops[i], &al[j], oj);
            for (int m = 0; ok_j && m < cnt; m++) {
                int lm[3];
                member_len(&t->ops[mem[m]], ref_binary, ref_unary, lm);
                ok_j = members_agree(&al[mem[m]], &t->ops[mem[m]], lm, &al[j], oj, lj);
            }
            if (ok_j) {
                mem[cnt++] = j;
                in[j] = true;
            }
        }
        if (cnt < 2) {
            in[k] = false;
            continue;
        }
        /* members' written temporaries only members touch: one block each */
        for (int m = 0; m < cnt; m++) {
            tape_op *o = &t->ops[mem[m]];
            int w = o->kind == MS_KERNEL_BINARY ? 2 : o->kind == MS_KERNEL_UNARY ? 1 : -1;
            if (w < 0 || o->p[w].buf < 0 || !only_members(t, &g, o->p[w].buf, in))
                continue;
            const int old = o->p[w].buf;
            const int64_t at = o->p[w].off;
            int id = new_scratch(t, (size_t)block * ms__tape_dtype_bytes(o->dt));
            if (id < 0) {
                st = MS_ERR_NOMEM;
                goto out;
            }
            for (int q = m; q < cnt; q++)
                for (int r = 0; r < 4; r++) {
                    tref *p = &t->ops[mem[q]].p[r];
                    if (p->buf == old && p->off == at)
                        *p = (tref){id, 0};
                }
        }
        /* the members move to gops; the group takes the first's place */
        tape_op *q = realloc(t->gops, ((size_t)t->ngops + (size_t)cnt) * sizeof *q);
        if (!q) {
            st = MS_ERR_NOMEM;
            goto out;
        }
        t->gops = q;
        tape_op grp;
        memset(&grp, 0, sizeof grp);
        grp.kind = OP_GROUP;
        grp.dt = ok->dt;
        grp.i[0] = n;
        grp.i[1] = block;
        grp.i[2] = t->ngops;
        grp.i[3] = cnt;
        for (int m = 0; m < cnt; m++) {
            t->gops[t->ngops++] = t->ops[mem[m]];
            done[mem[m]] = true;
            in[mem[m]] = false;
            if (m)
                t->ops[mem[m]].kind = -1;
        }
        t->ops[k] = grp;
    }
out:
    free(in);
    free(done);
    free(mem);
    free(al);
    free(g.a);
    free(g.start);
    return st;
}

ms_status ms__tape_optimize(ms_tape *t)
{
    by_buf g = {0};
    ms_status st = group(t, &g);
    /* the backend the replay will call (the traced one) leaves reductions
     * to ref, or is ref */
    const ms_backend *be = ms__active_table(), *ref = ms__ref();
    const bool ref_copies_reduce =
        be && ref && (be == ref || !MS_BACKEND_HAS_SLOT(be, reduce) || !be->reduce);
    for (int k = 0; st == MS_OK && k < t->nops; k++)
        forward(t, &g, k, ref_copies_reduce);
    free(g.a);
    free(g.start);
    if (st == MS_OK)
        st = drop_dead(t);
    if (st == MS_OK)
        compact(t);
    /* groups need the backend to leave elementwise kernels to ref */
    const bool ref_binary = be && ref && (be == ref || !MS_BACKEND_HAS_SLOT(be, binary) || !be->binary);
    const bool ref_unary = be && ref && (be == ref || !MS_BACKEND_HAS_SLOT(be, unary) || !be->unary);
    int64_t min_len, block;
    if (st == MS_OK && group_params(&min_len, &block)) {
        st = fuse(t, ref_binary, ref_unary, min_len, block);
        if (st == MS_OK)
            compact(t);
    }
    return st;
}
