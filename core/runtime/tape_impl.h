/* The kernel tape's records (private to core/runtime/tape*.c): tape.c
 * records and replays them, tape_opt.c rewrites them before the arena is
 * planned. */
#ifndef METASTEP_CORE_RUNTIME_TAPE_IMPL_H
#define METASTEP_CORE_RUNTIME_TAPE_IMPL_H

#include "runtime/runtime.h"

enum { OP_HOSTCOPY = MS_KERNEL_COUNT, OP_RESTORE, OP_CHECK };
enum { TB_INPUT, TB_TEMP, TB_CONST };

typedef struct tref {
    int32_t buf; /* -1: a NULL pointer */
    int64_t off; /* bytes from the buffer's base */
} tref;

typedef struct tape_op {
    int kind, sub, ndim;
    ms_dtype dt;
    bool f0, f1;
    uint32_t axes;
    int64_t shape[MS_MAX_DIMS];
    int64_t st[3][MS_MAX_DIMS];
    int64_t i[10];
    double d[2];
    ms_conv2d_desc cd;
    tref p[4];
} tape_op;

typedef struct tbuf {
    int kind, slot;
    const char *start; /* while recording: the block (inputs, temporaries) */
    size_t size;
    int64_t lo, hi; /* byte range touched, from the base */
    int first, last; /* op indices */
    bool written;
    bool output;    /* read by the caller after a replay (ms__tape_locate) */
    int64_t olo, ohi; /* ... these bytes, from the base */
    void *snap;        /* constants: the data; temporaries: content to restore */
    size_t arena_off;  /* temporaries */
} tbuf;

typedef struct live_block {
    const char *start;
    size_t size;
    int id; /* buffer id, -1 until a recorded op touches it */
} live_block;

/* An operation as a replay runs it: one cache line, with its shapes,
 * strides and scalars in the tape's pool, in operation order. */
typedef struct rop {
    uint8_t kind, sub, ndim, dt, f0, f1;
    uint32_t axes;
    uint32_t aux; /* its arguments: pool[aux ...] */
    int32_t buf[4];
    int64_t off[4];
} rop;

struct ms_tape {
    tape_op *ops;
    int nops, capops;
    tbuf *bufs;
    int nbufs, capbufs;
    live_block *live;
    int nlive, caplive;
    char *arena;
    size_t arena_bytes;
    char **base; /* per buffer, for the current replay */
    rop *rops;     /* the operations as replayed (after ms__tape_finish) */
    int64_t *pool; /* their arguments */
    double *prof;  /* METASTEP_PLAN_PROFILE: seconds per operation, summed */
    long replays;
    ms_status err;
    char why[320]; /* why the recording cannot be replayed ("" when it can) */
    bool finished;
};

/* ms_dtype_size lives in the tensor layer, above this one. */
static inline size_t ms__tape_dtype_bytes(ms_dtype dt) { return dt == MS_F64 ? 8 : 4; }

static inline int64_t ms__tape_prod(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    return n;
}

/* Byte extent [lo, hi) of a strided access from its pointer ([0, 0) when it
 * touches nothing). */
static inline void ms__tape_extent(int ndim, const int64_t *shape, const int64_t *st, size_t es,
                                   int64_t *lo, int64_t *hi)
{
    int64_t a = 0, b = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 0) {
            *lo = *hi = 0;
            return;
        }
        int64_t s = (shape[d] - 1) * st[d];
        if (s < 0)
            a += s;
        else
            b += s;
    }
    *lo = a * (int64_t)es;
    *hi = (b + 1) * (int64_t)es;
}

/* Elements a GEMM reads of A and B and writes of C from their pointers,
 * i = batch, m, n, k, lda, sa, ldb, sb, ldc, sc (a gemm op's i[]). */
static inline void ms__tape_gemm_extents(const int64_t *i, bool ta, bool tb, int64_t *ea,
                                         int64_t *eb, int64_t *ec)
{
    *ea = *eb = *ec = 0;
    if (i[0] <= 0 || i[1] <= 0 || i[2] <= 0)
        return;
    if (i[3] > 0) {
        *ea = (i[0] - 1) * i[5] + (ta ? (i[3] - 1) * i[4] + i[1] : (i[1] - 1) * i[4] + i[3]);
        *eb = (i[0] - 1) * i[7] + (tb ? (i[2] - 1) * i[6] + i[3] : (i[3] - 1) * i[6] + i[2]);
    }
    *ec = (i[0] - 1) * i[9] + (i[1] - 1) * i[8] + i[2];
}

/* Rewrite a finished recording so that it computes the same bytes with fewer
 * operations (tape_opt.c); before the arena is planned.  Then recompute
 * every temporary's lifetime and byte range from the remaining operations. */
MS_HIDDEN ms_status ms__tape_optimize(ms_tape *t);

#endif
