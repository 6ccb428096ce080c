/* metastep — the oneDNN backend (oneDNN 2.x C API).
 *
 * float32 only: every float64 call returns MS_ERR_UNSUPPORTED so the
 * reference backend serves it.  Kernels: gemm (matmul), unary (eltwise; neg
 * as a binary multiply), binary (with broadcasting), reduce (reduction),
 * softmax, and conv2d forward / backward data / backward weights
 * (convolution primitives; for gemm and conv2d the threshold below counts
 * multiply-adds, 16 times the element count).  copy/fill/arange/where are NULL.  Declined (served by ref):
 * sign/sin/cos and pow (not in oneDNN 2.6); log and log-softmax (oneDNN's
 * log is off by ~4e-6 absolute); and, because oneDNN 2.6 mishandles NaN,
 * exp/relu/max/min/lt/le/gt/ge calls and max/min reductions whose inputs
 * hold a NaN, and softmax calls with a row the reference makes NaN (a NaN,
 * a +inf, or nothing but -inf), each checked by a scan before the call.
 *
 * Small problems are declined too: a oneDNN call costs microseconds of
 * primitive execution and OpenMP fork/join, far more than the reference
 * loops need for a few thousand elements.  Below METASTEP_ONEDNN_MIN_WORK
 * elements (default 16384; for gemm, batch*m*n*k below 16 times that) the
 * call is served by ref; METASTEP_ONEDNN_MIN_WORK=0 sends everything to
 * oneDNN (the conformance suite does, to check every native path).
 *
 * Primitives are created once per (kind, op, shapes, strides, parameters)
 * and kept in a mutex-protected hash table until shutdown.  Each call wraps
 * the caller's buffers in fresh dnnl_memory objects and runs on a stream
 * taken from a small pool; every pooled stream owns its scratchpad buffer
 * (primitives use user-mode scratchpads), so one primitive can run on
 * several threads at once.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <dnnl.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "metastep/backend.h"

/* ------------------------------------------------------------------------ */
/* engine, description                                                       */

static dnnl_engine_t g_engine;
static ms_status g_engine_status = MS_ERR_BACKEND;
static pthread_once_t g_engine_once = PTHREAD_ONCE_INIT;
static atomic_bool g_shut_down;

static char g_description[200] = "oneDNN";
static int64_t g_min_work = 16384;
static pthread_once_t g_description_once = PTHREAD_ONCE_INIT;

static const char *isa_name(dnnl_cpu_isa_t isa)
{
    switch (isa) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    case dnnl_cpu_isa_all: return "all";
    default: return "unknown ISA";
    }
}

static void fill_description(void)
{
    const char *env = getenv("METASTEP_ONEDNN_MIN_WORK");
    if (env && *env) {
        char *end;
        long long w = strtoll(env, &end, 10);
        if (!*end && w >= 0)
            g_min_work = (int64_t)w;
    }
    const dnnl_version_t *v = dnnl_version();
    snprintf(g_description, sizeof g_description,
             "oneDNN %d.%d.%d (%s), float32 kernels from %lld elements; float64 and smaller "
             "problems served by ref", v ? v->major : 0, v ? v->minor : 0, v ? v->patch : 0,
             isa_name(dnnl_get_effective_cpu_isa()), (long long)g_min_work);
}

/* Too little work to be worth a oneDNN call. */
static bool too_small(int64_t work, int64_t factor)
{
    return work < g_min_work * factor;
}

static int64_t numel(int ndim, const int64_t *shape)
{
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    return n;
}

static void create_engine(void)
{
    if (dnnl_engine_create(&g_engine, dnnl_cpu, 0) == dnnl_success)
        g_engine_status = MS_OK;
    else
        g_engine = NULL;
}

static bool engine_ready(void)
{
    pthread_once(&g_engine_once, create_engine);
    return g_engine_status == MS_OK && !g_shut_down;
}

/* ------------------------------------------------------------------------ */
/* execution contexts: a stream plus its scratchpad, pooled                  */

typedef struct exec_ctx {
    dnnl_stream_t stream;
    void *scratch;
    size_t scratch_cap;
    struct exec_ctx *next;
} exec_ctx;

static pthread_mutex_t g_pool_lock = PTHREAD_MUTEX_INITIALIZER;
static exec_ctx *g_pool_free;   /* idle contexts */
static exec_ctx *g_pool_all[256]; /* every context ever made, for shutdown */
static int g_pool_count;

static exec_ctx *ctx_get(void)
{
    pthread_mutex_lock(&g_pool_lock);
    exec_ctx *c = g_pool_free;
    if (c)
        g_pool_free = c->next;
    pthread_mutex_unlock(&g_pool_lock);
    if (c)
        return c;
    c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (dnnl_stream_create(&c->stream, g_engine, dnnl_stream_default_flags) != dnnl_success) {
        free(c);
        return NULL;
    }
    return c;
}

static void ctx_destroy(exec_ctx *c)
{
    dnnl_stream_destroy(c->stream);
    free(c->scratch);
    free(c);
}

static void ctx_put(exec_ctx *c)
{
    pthread_mutex_lock(&g_pool_lock);
    bool known = false;
    for (int i = 0; i < g_pool_count; i++)
        if (g_pool_all[i] == c) {
            known = true;
            break;
        }
    if (!known && g_pool_count < (int)(sizeof g_pool_all / sizeof *g_pool_all))
        g_pool_all[g_pool_count++] = c, known = true;
    if (known) {
        c->next = g_pool_free;
        g_pool_free = c;
    }
    pthread_mutex_unlock(&g_pool_lock);
    if (!known)
        ctx_destroy(c); /* more simultaneous threads than the pool tracks */
}

static void *ctx_scratch(exec_ctx *c, size_t size)
{
    if (size <= c->scratch_cap)
        return c->scratch;
    size_t cap = (size + 4095) & ~(size_t)4095;
    void *p = NULL;
    if (posix_memalign(&p, 64, cap) != 0)
        return NULL;
    free(c->scratch);
    c->scratch = p;
    c->scratch_cap = cap;
    return p;
}

/* ------------------------------------------------------------------------ */
/* primitive cache                                                           */

enum {
    KIND_GEMM = 1, KIND_UNARY, KIND_BINARY, KIND_REDUCE, KIND_SOFTMAX,
    KIND_CONV_FWD, KIND_CONV_BWD_DATA, KIND_CONV_BWD_WEIGHTS
};

#define KEY_WORDS 40 /* 2 + 3 * MS_MAX_DIMS + slack */

typedef struct prim_key {
    int64_t w[KEY_WORDS];
    int len;
} prim_key;

typedef struct prim_entry {
    prim_key key;
    uint64_t hash;
    dnnl_primitive_t prim; /* NULL: oneDNN refused this configuration */
    dnnl_memory_desc_t md[4]; /* argument descriptors, in kernel-specific order */
    dnnl_memory_desc_t scratch_md;
    size_t scratch_size;
    struct prim_entry *next;
} prim_entry;

#define CACHE_BUCKETS 1024
#define CACHE_MAX_ENTRIES 4096 /* ~3 KiB each; beyond, primitives are per call */

static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;
static prim_entry *g_cache[CACHE_BUCKETS];
static int g_cache_count;

static void key_push(prim_key *k, int64_t v)
{
    if (k->len < KEY_WORDS)
        k->w[k->len++] = v;
}

static uint64_t key_hash(const prim_key *k)
{
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < k->len; i++) {
        h ^= (uint64_t)k->w[i];
        h *= 1099511628211ull;
        h ^= h >> 29;
    }
    return h;
}

static bool key_eq(const prim_key *a, const prim_key *b)
{
    return a->len == b->len && memcmp(a->w, b->w, (size_t)a->len * sizeof(int64_t)) == 0;
}

static prim_entry *cache_find(const prim_key *k, uint64_t h)
{
    for (prim_entry *e = g_cache[h % CACHE_BUCKETS]; e; e = e->next)
        if (e->hash == h && key_eq(&e->key, k))
            return e;
    return NULL;
}

static void entry_free(prim_entry *e)
{
    if (e->prim)
        dnnl_primitive_destroy(e->prim);
    free(e);
}

/* Insert `e` (freshly built) unless another thread beat us; returns the entry
 * to use.  *owned is set when the caller must free the returned entry after
 * use (cache full). */
static prim_entry *cache_insert(prim_entry *e, bool *owned)
{
    *owned = false;
    pthread_mutex_lock(&g_cache_lock);
    prim_entry *old = cache_find(&e->key, e->hash);
    if (old) {
        pthread_mutex_unlock(&g_cache_lock);
        entry_free(e);
        return old;
    }
    if (g_cache_count >= CACHE_MAX_ENTRIES || g_shut_down) {
        pthread_mutex_unlock(&g_cache_lock);
        *owned = true;
        return e;
    }
    e->next = g_cache[e->hash % CACHE_BUCKETS];
    g_cache[e->hash % CACHE_BUCKETS] = e;
    g_cache_count++;
    pthread_mutex_unlock(&g_cache_lock);
    return e;
}

/* Builds the primitive from an operation descriptor; prim stays NULL when
 * oneDNN refuses.  attr may be NULL; hint is the forward primitive
 * descriptor a backward primitive needs (NULL otherwise). */
static void entry_build_hint(prim_entry *e, const_dnnl_op_desc_t op_desc,
                             dnnl_primitive_attr_t attr_in, const_dnnl_primitive_desc_t hint)
{
    dnnl_primitive_attr_t attr = attr_in;
    if (!attr && dnnl_primitive_attr_create(&attr) != dnnl_success)
        return;
    dnnl_primitive_desc_t pd = NULL;
    if (dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user) == dnnl_success &&
        dnnl_primitive_desc_create(&pd, op_desc, attr, g_engine, hint) == dnnl_success) {
        const dnnl_memory_desc_t *smd = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
        /* oneDNN's own reference implementations ("ref:any", plain loops it
         * falls back to when no JIT kernel fits, e.g. a reduction over axes
         * (0,2,3) of batch norm's (75,32,28,28)) are far slower than
         * metastep's ref: leave this configuration to ref (prim NULL). */
        static pthread_mutex_t impl_lock = PTHREAD_MUTEX_INITIALIZER;
        const char *impl = NULL;
        /* oneDNN may share one implementation among equal descriptors made
         * on several threads; its info string is not documented as safe to
         * query concurrently (ThreadSanitizer flagged it once) */
        pthread_mutex_lock(&impl_lock);
        bool ref_impl = dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) !=
                            dnnl_success ||
                        !impl || strncmp(impl, "ref", 3) == 0;
        pthread_mutex_unlock(&impl_lock);
        if (ref_impl)
            smd = NULL;
        if (smd) {
            e->scratch_md = *smd;
            e->scratch_size = dnnl_memory_desc_get_size(smd);
            if (dnnl_primitive_create(&e->prim, pd) != dnnl_success)
                e->prim = NULL;
        }
        dnnl_primitive_desc_destroy(pd);
    }
    if (!attr_in)
        dnnl_primitive_attr_destroy(attr);
}

static void entry_build(prim_entry *e, const_dnnl_op_desc_t op_desc, dnnl_primitive_attr_t attr_in)
{
    entry_build_hint(e, op_desc, attr_in, NULL);
}

/* Run `e` with nargs (arg index, md index or -1 for handles given with an
 * explicit md, pointer) triples. */
typedef struct exec_arg {
    int arg;
    const dnnl_memory_desc_t *md;
    void *ptr;
} exec_arg;

static ms_status entry_execute(const prim_entry *e, int nargs, const exec_arg *args)
{
    exec_ctx *c = ctx_get();
    if (!c)
        return MS_ERR_NOMEM;
    dnnl_exec_arg_t xa[8];
    int n = 0;
    ms_status st = MS_OK;
    for (int i = 0; i < nargs && st == MS_OK; i++) {
        if (dnnl_memory_create(&xa[n].memory, args[i].md, g_engine, args[i].ptr) != dnnl_success) {
            st = MS_ERR_NOMEM;
            break;
        }
        xa[n++].arg = args[i].arg;
    }
    if (st == MS_OK && e->scratch_size > 0) {
        void *sp = ctx_scratch(c, e->scratch_size);
        if (!sp || dnnl_memory_create(&xa[n].memory, &e->scratch_md, g_engine, sp) != dnnl_success)
            st = MS_ERR_NOMEM;
        else
            xa[n++].arg = DNNL_ARG_SCRATCHPAD;
    }
    if (st == MS_OK) {
        if (dnnl_primitive_execute(e->prim, c->stream, n, xa) != dnnl_success ||
            dnnl_stream_wait(c->stream) != dnnl_success)
            st = MS_ERR_BACKEND;
    }
    for (int i = 0; i < n; i++)
        dnnl_memory_destroy(xa[i].memory);
    ctx_put(c);
    return st;
}

/* Looks the key up; on a miss calls build(e, ctx) to fill md[] and prim.
 * Returns the entry (with *owned telling whether to free it after use) or
 * NULL when memory ran out. */
typedef void (*build_fn)(prim_entry *e, const void *ctx);

static prim_entry *cache_get(const prim_key *k, build_fn build, const void *bctx, bool *owned)
{
    uint64_t h = key_hash(k);
    *owned = false;
    pthread_mutex_lock(&g_cache_lock);
    prim_entry *e = cache_find(k, h);
    pthread_mutex_unlock(&g_cache_lock);
    if (e)
        return e;
    e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->key = *k;
    e->hash = h;
    build(e, bctx);
    return cache_insert(e, owned);
}

static void cache_clear(void)
{
    pthread_mutex_lock(&g_cache_lock);
    for (int b = 0; b < CACHE_BUCKETS; b++) {
        prim_entry *e = g_cache[b];
        while (e) {
            prim_entry *next = e->next;
            entry_free(e);
            e = next;
        }
        g_cache[b] = NULL;
    }
    g_cache_count = 0;
    pthread_mutex_unlock(&g_cache_lock);
}

static bool md_strided(dnnl_memory_desc_t *md, int nd, const int64_t *dims, const int64_t *strides)
{
    /* The API takes full dnnl_dims_t arrays. */
    dnnl_dims_t d, s;
    memset(d, 0, sizeof d);
    memset(s, 0, sizeof s);
    for (int i = 0; i < nd && i < DNNL_MAX_NDIMS; i++) {
        d[i] = dims[i];
        s[i] = strides[i];
    }
    return dnnl_memory_desc_init_by_strides(md, nd, d, dnnl_f32, s) == dnnl_success;
}

static void contiguous_strides(int nd, const int64_t *dims, int64_t *strides)
{
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; d--) {
        strides[d] = s;
        s *= dims[d] > 0 ? dims[d] : 1;
    }
}

/* Runs a cached primitive; returns UNSUPPORTED when oneDNN refused it. */
static ms_status run_cached(const prim_key *k, build_fn build, const void *bctx, int nargs,
                            exec_arg *args)
{
    bool owned;
    prim_entry *e = cache_get(k, build, bctx, &owned);
    if (!e)
        return MS_ERR_NOMEM;
    ms_status st;
    if (!e->prim) {
        st = MS_ERR_UNSUPPORTED;
    } else {
        for (int i = 0; i < nargs; i++)
            args[i].md = &e->md[(intptr_t)args[i].md];
        st = entry_execute(e, nargs, args);
    }
    if (owned)
        entry_free(e);
    return st;
}
#define MD_INDEX(i) ((const dnnl_memory_desc_t *)(intptr_t)(i))

/* ------------------------------------------------------------------------ */
/* NaN scans (oneDNN 2.6 mishandles NaN in a few kernels)                   */

/* Whether any of n contiguous floats is NaN.  Fixed-size blocks so that
 * -O2 vectorises the inner loop. */
static bool contiguous_has_nan(const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        int found = 0;
        for (int j = 0; j < 64; j++)
            found |= x[i + j] != x[i + j];
        if (found)
            return true;
    }
    int found = 0;
    for (; i < n; i++)
        found |= x[i] != x[i];
    return found != 0;
}

/* Whether any element of a strided float view is NaN (stride 0 dims are
 * visited once). */
static bool any_nan(const float *x, int nd, const int64_t *shape, const int64_t *str)
{
    int64_t sh[MS_MAX_DIMS], s[MS_MAX_DIMS];
    int n = 0;
    for (int d = 0; d < nd; d++)
        if (str[d] != 0 && shape[d] > 1) {
            sh[n] = shape[d];
            s[n] = str[d];
            n++;
        }
    if (n == 0)
        return isnan(x[0]);
    int64_t idx[MS_MAX_DIMS] = {0};
    const int in = n - 1;
    for (;;) {
        const float *row = x;
        if (s[in] == 1) {
            if (contiguous_has_nan(row, sh[in]))
                return true;
        } else {
            int found = 0;
            for (int64_t i = 0; i < sh[in]; i++)
                found |= row[i * s[in]] != row[i * s[in]];
            if (found)
                return true;
        }
        int d = in - 1;
        for (; d >= 0; d--) {
            if (++idx[d] < sh[d]) {
                x += s[d];
                break;
            }
            x -= (sh[d] - 1) * s[d];
            idx[d] = 0;
        }
        if (d < 0)
            return false;
    }
}

/* Whether softmax over x, viewed as (outer, len, inner), has a row oneDNN
 * 2.6 gets wrong.  The reference gives NaN for the whole row when the row
 * holds a NaN or a +inf (inf - inf, as PyTorch) and when every entry is
 * -inf (-inf - -inf); oneDNN's max drops NaN and its exp flushes NaN to 0.
 * One pass looks for NaN, +inf and -inf; only when some -inf turned up are
 * rows checked for being all -inf (each row stops at its first other
 * value).  Rows with some -inf and a finite max are fine on oneDNN. */
static bool softmax_has_bad_row(const float *x, int64_t outer, int64_t len, int64_t inner)
{
    const int64_t n = outer * len * inner;
    int bad = 0, neg_inf = 0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        for (int j = 0; j < 64; j++) {
            bad |= !(x[i + j] < INFINITY); /* NaN or +inf */
            neg_inf |= x[i + j] == -INFINITY;
        }
        if (bad)
            return true;
    }
    for (; i < n; i++) {
        bad |= !(x[i] < INFINITY);
        neg_inf |= x[i] == -INFINITY;
    }
    if (bad)
        return true;
    if (!neg_inf)
        return false;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t j = 0; j < inner; j++) {
            const float *row = x + o * len * inner + j;
            int64_t r = 0;
            while (r < len && row[r * inner] == -INFINITY)
                r++;
            if (r == len)
                return true;
        }
    return false;
}

/* ------------------------------------------------------------------------ */
/* gemm                                                                      */

typedef struct gemm_params {
    int64_t batch_a, batch_c, batch_b, m, n, k;
    int64_t sa[3], sb[3], sc[3];
    float alpha, beta;
} gemm_params;

static void build_gemm(prim_entry *e, const void *ctx)
{
    const gemm_params *p = ctx;
    int64_t da[3] = {p->batch_a, p->m, p->k}, db[3] = {p->batch_b, p->k, p->n},
            dc[3] = {p->batch_c, p->m, p->n};
    if (!md_strided(&e->md[0], 3, da, p->sa) || !md_strided(&e->md[1], 3, db, p->sb) ||
        !md_strided(&e->md[2], 3, dc, p->sc))
        return;
    dnnl_matmul_desc_t desc;
    if (dnnl_matmul_desc_init(&desc, &e->md[0], &e->md[1], NULL, &e->md[2]) != dnnl_success)
        return;
    dnnl_primitive_attr_t attr;
    if (dnnl_primitive_attr_create(&attr) != dnnl_success)
        return;
    bool ok = true;
    if (p->alpha != 1.0f)
        ok = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &p->alpha) == dnnl_success;
    if (ok && p->beta != 0.0f) {
        dnnl_post_ops_t po;
        ok = dnnl_post_ops_create(&po) == dnnl_success;
        if (ok) {
            ok = dnnl_post_ops_append_sum(po, p->beta) == dnnl_success &&
                 dnnl_primitive_attr_set_post_ops(attr, po) == dnnl_success;
            dnnl_post_ops_destroy(po);
        }
    }
    if (ok)
        entry_build(e, &desc, attr);
    dnnl_primitive_attr_destroy(attr);
}

static ms_status gemm_run(gemm_params *p, int64_t stride_a, int64_t stride_b, int64_t stride_c,
                          const void *a, const void *b, void *c);

static ms_status dnnl_gemm_kernel(ms_dtype dt, bool trans_a, bool trans_b, int64_t batch,
                                  int64_t m, int64_t n, int64_t k, double alpha, const void *a,
                                  int64_t lda, int64_t stride_a, const void *b, int64_t ldb,
                                  int64_t stride_b, double beta, void *c, int64_t ldc,
                                  int64_t stride_c)
{
    if (dt != MS_F32)
        return MS_ERR_UNSUPPORTED;
    if (batch <= 0 || m <= 0 || n <= 0)
        return MS_OK;
    if (k <= 0) { /* empty product: C = beta * C (not read when beta is 0) */
        const float fb = (float)beta;
        for (int64_t i = 0; i < batch; i++)
            for (int64_t r = 0; r < m; r++) {
                float *row = (float *)c + i * stride_c + r * ldc;
                if (beta == 0.0)
                    memset(row, 0, (size_t)n * sizeof(float));
                else if (beta != 1.0)
                    for (int64_t j = 0; j < n; j++)
                        row[j] *= fb;
            }
        return MS_OK;
    }
    if (too_small(batch * m * n * k, 16) || !engine_ready())
        return MS_ERR_UNSUPPORTED;
    if (stride_a < 0 || stride_b < 0 || stride_c <= 0 || lda < 0 || ldb < 0 || ldc < 0)
        return MS_ERR_UNSUPPORTED;
    /* Alpha and beta are part of the primitive; only cache a few values. */
    float fa = (float)alpha, fb = (float)beta;
    if ((double)fa != alpha || (double)fb != beta)
        return MS_ERR_UNSUPPORTED;

    gemm_params p;
    memset(&p, 0, sizeof p);
    p.m = m;
    p.n = n;
    p.k = k;
    p.alpha = fa;
    p.beta = fb;
    p.batch_c = batch;
    p.batch_a = (batch > 1 && stride_a != 0) ? batch : 1;
    p.batch_b = (batch > 1 && stride_b != 0) ? batch : 1;
    /* Strides of the logical m×k, k×n and m×n matrices.  Size-1 dims get a
     * dense-looking stride (their value is never used). */
    int64_t a_row = trans_a ? 1 : lda, a_col = trans_a ? lda : 1;
    int64_t b_row = trans_b ? 1 : ldb, b_col = trans_b ? ldb : 1;
    if (m == 1)
        a_row = trans_a ? 1 : k;
    if (k == 1) {
        a_col = trans_a ? m : 1;
        b_row = trans_b ? 1 : n;
    }
    if (n == 1)
        b_col = trans_b ? k : 1;
    p.sa[1] = a_row;
    p.sa[2] = a_col;
    p.sb[1] = b_row;
    p.sb[2] = b_col;
    p.sc[1] = m == 1 ? n : ldc;
    p.sc[2] = 1;

    /* oneDNN's matmul refuses a batched dst when both A and B are shared:
     * then (or whenever the batched primitive is refused) run one matrix
     * per batch entry. */
    if (p.batch_a > 1 || p.batch_b > 1) {
        ms_status st = gemm_run(&p, stride_a, stride_b, stride_c, a, b, c);
        if (st != MS_ERR_UNSUPPORTED)
            return st;
    }
    const bool shared = p.batch_a == 1 && p.batch_b == 1;
    p.batch_a = p.batch_b = p.batch_c = 1;
    for (int64_t i = 0; i < batch; i++) {
        float *ci = (float *)c + i * stride_c;
        if (i > 0 && shared && beta == 0.0) { /* same product: copy C_0 */
            for (int64_t r = 0; r < m; r++)
                memcpy(ci + r * ldc, (float *)c + r * ldc, (size_t)n * sizeof(float));
            continue;
        }
        ms_status st = gemm_run(&p, stride_a, stride_b, stride_c, (const float *)a + i * stride_a,
                                (const float *)b + i * stride_b, ci);
        if (st != MS_OK)
            return st;
    }
    return MS_OK;
}

static ms_status gemm_run(gemm_params *p, int64_t stride_a, int64_t stride_b, int64_t stride_c,
                          const void *a, const void *b, void *c)
{
    const int64_t m = p->m, n = p->n, k = p->k;
    p->sa[0] = p->batch_a > 1 ? stride_a : m * k;
    p->sb[0] = p->batch_b > 1 ? stride_b : k * n;
    p->sc[0] = p->batch_c > 1 ? stride_c : m * n;
    const float fa = p->alpha, fb = p->beta;

    prim_key key = {.len = 0};
    key_push(&key, KIND_GEMM);
    key_push(&key, p->batch_a);
    key_push(&key, p->batch_b);
    key_push(&key, p->batch_c);
    key_push(&key, m);
    key_push(&key, n);
    key_push(&key, k);
    for (int i = 0; i < 3; i++) {
        key_push(&key, p->sa[i]);
        key_push(&key, p->sb[i]);
        key_push(&key, p->sc[i]);
    }
    uint32_t bits[2];
    memcpy(&bits[0], &fa, 4);
    memcpy(&bits[1], &fb, 4);
    key_push(&key, (int64_t)(((uint64_t)bits[0] << 32) | bits[1]));

    exec_arg args[3] = {{DNNL_ARG_SRC, MD_INDEX(0), (void *)a},
                        {DNNL_ARG_WEIGHTS, MD_INDEX(1), (void *)b},
                        {DNNL_ARG_DST, MD_INDEX(2), c}};
    return run_cached(&key, build_gemm, p, 3, args);
}

/* ------------------------------------------------------------------------ */
/* unary                                                                     */

typedef struct unary_params {
    int64_t n;
    dnnl_alg_kind_t alg;
    float alpha, beta;
} unary_params;

static void build_unary(prim_entry *e, const void *ctx)
{
    const unary_params *p = ctx;
    int64_t dims[1] = {p->n}, str[1] = {1};
    if (!md_strided(&e->md[0], 1, dims, str))
        return;
    dnnl_eltwise_desc_t desc;
    if (dnnl_eltwise_forward_desc_init(&desc, dnnl_forward_inference, p->alg, &e->md[0], p->alpha,
                                       p->beta) != dnnl_success)
        return;
    entry_build(e, &desc, NULL);
}

/* NEG as a binary multiply by a broadcast -1, exact including signed zeros:
 * eltwise linear computes -1 * x + 0, which maps +0 to +0 instead of -0. */
static const float g_minus_one = -1.0f;

static void build_neg(prim_entry *e, const void *ctx)
{
    const unary_params *p = ctx;
    int64_t dims[1] = {p->n}, one[1] = {1};
    if (!md_strided(&e->md[0], 1, dims, one) || !md_strided(&e->md[1], 1, one, one))
        return;
    dnnl_binary_desc_t desc;
    if (dnnl_binary_desc_init(&desc, dnnl_binary_mul, &e->md[0], &e->md[1], &e->md[0]) !=
        dnnl_success)
        return;
    entry_build(e, &desc, NULL);
}


static ms_status dnnl_unary_kernel(ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y)
{
    if (dt != MS_F32)
        return MS_ERR_UNSUPPORTED;
    if (n <= 0)
        return MS_OK;
    if (too_small(n, 1))
        return MS_ERR_UNSUPPORTED;
    unary_params p = {n, dnnl_eltwise_linear, 0.0f, 0.0f};
    switch (op) {
    case MS_UNARY_NEG: break; /* binary multiply, below */
    case MS_UNARY_ABS: p.alg = dnnl_eltwise_abs; break;
    case MS_UNARY_EXP: p.alg = dnnl_eltwise_exp; break;
    case MS_UNARY_SQRT: p.alg = dnnl_eltwise_sqrt; break;
    case MS_UNARY_SQUARE: p.alg = dnnl_eltwise_square; break;
    case MS_UNARY_RECIPROCAL: p.alg = dnnl_eltwise_pow; p.alpha = 1.0f; p.beta = -1.0f; break;
    case MS_UNARY_TANH: p.alg = dnnl_eltwise_tanh; break;
    case MS_UNARY_SIGMOID: p.alg = dnnl_eltwise_logistic; break;
    case MS_UNARY_RELU: p.alg = dnnl_eltwise_relu; p.alpha = 0.0f; break;
    /* SIGN, SIN, COS: not in oneDNN 2.6.  LOG: oneDNN 2.6's eltwise log is
     * off by up to ~4e-6 absolute (huge relative error near x = 1). */
    default: return MS_ERR_UNSUPPORTED;
    }
    /* exp(NaN) gives +inf and relu(NaN) gives 0 in oneDNN 2.6 (libm and
     * NumPy give NaN): such calls go to the reference backend. */
    if ((op == MS_UNARY_EXP || op == MS_UNARY_RELU) && contiguous_has_nan(x, n))
        return MS_ERR_UNSUPPORTED;
    if (!engine_ready())
        return MS_ERR_UNSUPPORTED;
    prim_key key = {.len = 0};
    key_push(&key, KIND_UNARY);
    key_push(&key, op);
    key_push(&key, n);
    if (op == MS_UNARY_NEG) {
        exec_arg args[3] = {{DNNL_ARG_SRC_0, MD_INDEX(0), (void *)x},
                            {DNNL_ARG_SRC_1, MD_INDEX(1), (void *)&g_minus_one},
                            {DNNL_ARG_DST, MD_INDEX(0), y}};
        return run_cached(&key, build_neg, &p, 3, args);
    }
    exec_arg args[2] = {{DNNL_ARG_SRC, MD_INDEX(0), (void *)x}, {DNNL_ARG_DST, MD_INDEX(0), y}};
    return run_cached(&key, build_unary, &p, 2, args);
}

/* ------------------------------------------------------------------------ */
/* binary                                                                    */

typedef struct binary_params {
    dnnl_alg_kind_t alg;
    int nd;
    int64_t shape[MS_MAX_DIMS], da[MS_MAX_DIMS], db[MS_MAX_DIMS];
    int64_t sa[MS_MAX_DIMS], sb[MS_MAX_DIMS], sy[MS_MAX_DIMS];
} binary_params;

static void build_binary(prim_entry *e, const void *ctx)
{
    const binary_params *p = ctx;
    if (!md_strided(&e->md[0], p->nd, p->da, p->sa) || !md_strided(&e->md[1], p->nd, p->db, p->sb) ||
        !md_strided(&e->md[2], p->nd, p->shape, p->sy))
        return;
    dnnl_binary_desc_t desc;
    if (dnnl_binary_desc_init(&desc, p->alg, &e->md[0], &e->md[1], &e->md[2]) != dnnl_success)
        return;
    entry_build(e, &desc, NULL);
}

static ms_status dnnl_binary_kernel(ms_binary_op op, ms_dtype dt, int ndim, const int64_t *shape,
                                    const void *a, const int64_t *sa, const void *b,
                                    const int64_t *sb, void *y)
{
    if (dt != MS_F32)
        return MS_ERR_UNSUPPORTED;
    if (ndim < 0 || ndim > MS_MAX_DIMS)
        return MS_ERR_UNSUPPORTED;
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0)
            return MS_OK;
    if (too_small(numel(ndim, shape), 1))
        return MS_ERR_UNSUPPORTED;

    binary_params p;
    memset(&p, 0, sizeof p);
    switch (op) {
    case MS_BINARY_ADD: p.alg = dnnl_binary_add; break;
    case MS_BINARY_SUB: p.alg = dnnl_binary_sub; break;
    case MS_BINARY_MUL: p.alg = dnnl_binary_mul; break;
    case MS_BINARY_DIV: p.alg = dnnl_binary_div; break;
    case MS_BINARY_MAXIMUM: p.alg = dnnl_binary_max; break;
    case MS_BINARY_MINIMUM: p.alg = dnnl_binary_min; break;
    case MS_BINARY_EQ: p.alg = dnnl_binary_eq; break;
    case MS_BINARY_NE: p.alg = dnnl_binary_ne; break;
    case MS_BINARY_LT: p.alg = dnnl_binary_lt; break;
    case MS_BINARY_LE: p.alg = dnnl_binary_le; break;
    case MS_BINARY_GT: p.alg = dnnl_binary_gt; break;
    case MS_BINARY_GE: p.alg = dnnl_binary_ge; break;
    default: return MS_ERR_UNSUPPORTED; /* POW: no binary pow in oneDNN 2.6 */
    }

    /* Coalesce: drop size-1 dims, merge dims contiguous in a, b and y. */
    int64_t sh[MS_MAX_DIMS], xa[MS_MAX_DIMS], xb[MS_MAX_DIMS];
    int nd = 0;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1)
            continue;
        if (sa[d] < 0 || sb[d] < 0)
            return MS_ERR_UNSUPPORTED;
        if (nd > 0 && xa[nd - 1] == sa[d] * shape[d] && xb[nd - 1] == sb[d] * shape[d]) {
            sh[nd - 1] *= shape[d];
            xa[nd - 1] = sa[d];
            xb[nd - 1] = sb[d];
            continue;
        }
        sh[nd] = shape[d];
        xa[nd] = sa[d];
        xb[nd] = sb[d];
        nd++;
    }
    if (nd == 0) {
        sh[0] = 1;
        xa[0] = xb[0] = 0;
        nd = 1;
    }

    /* oneDNN 2.6 broadcasts src1 only: if a is broadcast somewhere and b is
     * not, swap the operands when the op allows it. */
    bool a_bcast = false, b_bcast = false;
    for (int d = 0; d < nd; d++) {
        a_bcast |= xa[d] == 0 && sh[d] > 1;
        b_bcast |= xb[d] == 0 && sh[d] > 1;
    }
    if (a_bcast && !b_bcast) {
        dnnl_alg_kind_t swapped;
        switch (p.alg) {
        case dnnl_binary_lt: swapped = dnnl_binary_gt; break;
        case dnnl_binary_gt: swapped = dnnl_binary_lt; break;
        case dnnl_binary_le: swapped = dnnl_binary_ge; break;
        case dnnl_binary_ge: swapped = dnnl_binary_le; break;
        case dnnl_binary_sub:
        case dnnl_binary_div: swapped = dnnl_alg_kind_undef; break;
        default: swapped = p.alg; break;
        }
        if (swapped != dnnl_alg_kind_undef) {
            const void *t = a;
            a = b;
            b = t;
            for (int d = 0; d < nd; d++) {
                int64_t s = xa[d];
                xa[d] = xb[d];
                xb[d] = s;
            }
            p.alg = swapped;
        }
    }

    /* NumPy's maximum/minimum propagate NaN and ordered comparisons with NaN
     * are false; oneDNN 2.6's max/min drop NaN and its lt/le/gt/ge give 1
     * for NaN operands, so those calls go to the reference backend. */
    if ((op == MS_BINARY_MAXIMUM || op == MS_BINARY_MINIMUM || op == MS_BINARY_LT ||
         op == MS_BINARY_LE || op == MS_BINARY_GT || op == MS_BINARY_GE) &&
        (any_nan(a, nd, sh, xa) || any_nan(b, nd, sh, xb)))
        return MS_ERR_UNSUPPORTED;

    if (!engine_ready())
        return MS_ERR_UNSUPPORTED;

    p.nd = nd;
    for (int d = 0; d < nd; d++) {
        p.shape[d] = sh[d];
        p.da[d] = sh[d];
        p.db[d] = xb[d] == 0 ? 1 : sh[d];
    }
    contiguous_strides(nd, p.shape, p.sy);
    /* src1 broadcast dims have size 1 (oneDNN's broadcast); they get a
     * dense-looking stride, never used for addressing.  src0 cannot be
     * broadcast in oneDNN 2.6, so a broadcast src0 keeps the full dims with
     * stride 0 (accepted, served by oneDNN's generic kernel). */
    for (int d = nd - 1; d >= 0; d--) {
        p.sa[d] = xa[d];
        p.sb[d] = xb[d] != 0 ? xb[d] : (d == nd - 1 ? 1 : p.sb[d + 1] * p.db[d + 1]);
    }

    prim_key key = {.len = 0};
    key_push(&key, KIND_BINARY);
    key_push(&key, p.alg);
    key_push(&key, nd);
    for (int d = 0; d < nd; d++) {
        key_push(&key, p.shape[d]);
        key_push(&key, xa[d]);
        key_push(&key, xb[d]);
    }
    exec_arg args[3] = {{DNNL_ARG_SRC_0, MD_INDEX(0), (void *)a},
                        {DNNL_ARG_SRC_1, MD_INDEX(1), (void *)b},
                        {DNNL_ARG_DST, MD_INDEX(2), y}};
    return run_cached(&key, build_binary, &p, 3, args);
}

/* ------------------------------------------------------------------------ */
/* reduce                                                                    */

typedef struct reduce_params {
    dnnl_alg_kind_t alg;
    int nd;
    int64_t src[MS_MAX_DIMS], dst[MS_MAX_DIMS];
} reduce_params;

static void build_reduce(prim_entry *e, const void *ctx)
{
    const reduce_params *p = ctx;
    int64_t ss[MS_MAX_DIMS], ds[MS_MAX_DIMS];
    contiguous_strides(p->nd, p->src, ss);
    contiguous_strides(p->nd, p->dst, ds);
    if (!md_strided(&e->md[0], p->nd, p->src, ss) || !md_strided(&e->md[1], p->nd, p->dst, ds))
        return;
    dnnl_reduction_desc_t desc;
    if (dnnl_reduction_desc_init(&desc, p->alg, &e->md[0], &e->md[1], 0.0f, 0.0f) != dnnl_success)
        return;
    entry_build(e, &desc, NULL);
}

static ms_status dnnl_reduce_kernel(ms_reduce_op op, ms_dtype dt, int ndim, const int64_t *shape,
                                    uint32_t axes, const void *x, void *y)
{
    if (dt != MS_F32)
        return MS_ERR_UNSUPPORTED;
    if (ndim < 0 || ndim > MS_MAX_DIMS || too_small(numel(ndim, shape), 1))
        return MS_ERR_UNSUPPORTED;
    reduce_params p;
    memset(&p, 0, sizeof p);
    switch (op) {
    case MS_REDUCE_SUM: p.alg = dnnl_reduction_sum; break;
    case MS_REDUCE_MEAN: p.alg = dnnl_reduction_mean; break;
    case MS_REDUCE_MAX: p.alg = dnnl_reduction_max; break;
    case MS_REDUCE_MIN: p.alg = dnnl_reduction_min; break;
    default: return MS_ERR_UNSUPPORTED;
    }
    int64_t out = 1, total = 1;
    bool empty_reduction = false;
    for (int d = 0; d < ndim; d++) {
        bool red = (axes >> d) & 1u;
        total *= shape[d];
        if (!red)
            out *= shape[d];
        else if (shape[d] == 0)
            empty_reduction = true;
    }
    if (out == 0)
        return MS_OK;
    if (empty_reduction)
        return MS_ERR_UNSUPPORTED;
    if (total == out) { /* nothing reduced: every output is its single input */
        if (x != y)
            memmove(y, x, (size_t)total * sizeof(float));
        return MS_OK;
    }
    /* max/min: NumPy propagates NaN; oneDNN's max/min may drop it. */
    if (op == MS_REDUCE_MAX || op == MS_REDUCE_MIN) {
        if (contiguous_has_nan(x, total))
            return MS_ERR_UNSUPPORTED;
    }
    /* Coalesce: drop size-1 dims, merge neighbours of the same kind. */
    int nd = 0;
    bool prev_red = false;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] == 1)
            continue;
        bool red = (axes >> d) & 1u;
        if (nd > 0 && red == prev_red) {
            p.src[nd - 1] *= shape[d];
        } else {
            p.src[nd] = shape[d];
            nd++;
        }
        p.dst[nd - 1] = red ? 1 : p.src[nd - 1];
        prev_red = red;
    }
    p.nd = nd;
    if (!engine_ready())
        return MS_ERR_UNSUPPORTED;

    prim_key key = {.len = 0};
    key_push(&key, KIND_REDUCE);
    key_push(&key, p.alg);
    key_push(&key, nd);
    for (int d = 0; d < nd; d++) {
        key_push(&key, p.src[d]);
        key_push(&key, p.dst[d]);
    }
    exec_arg args[2] = {{DNNL_ARG_SRC, MD_INDEX(0), (void *)x}, {DNNL_ARG_DST, MD_INDEX(1), y}};
    return run_cached(&key, build_reduce, &p, 2, args);
}

/* ------------------------------------------------------------------------ */
/* softmax                                                                   */

typedef struct softmax_params {
    bool log;
    int nd, axis;
    int64_t dims[3];
} softmax_params;

static void build_softmax(prim_entry *e, const void *ctx)
{
    const softmax_params *p = ctx;
    int64_t str[3];
    contiguous_strides(p->nd, p->dims, str);
    if (!md_strided(&e->md[0], p->nd, p->dims, str))
        return;
    if (p->log) {
        dnnl_logsoftmax_desc_t desc;
        if (dnnl_logsoftmax_forward_desc_init(&desc, dnnl_forward_inference, &e->md[0], p->axis) !=
            dnnl_success)
            return;
        entry_build(e, &desc, NULL);
    } else {
        dnnl_softmax_desc_t desc;
        if (dnnl_softmax_forward_desc_init(&desc, dnnl_forward_inference, &e->md[0], p->axis) !=
            dnnl_success)
            return;
        entry_build(e, &desc, NULL);
    }
}

static ms_status dnnl_softmax_kernel(ms_dtype dt, bool log, int64_t outer, int64_t len,
                                     int64_t inner, const void *x, void *y)
{
    if (dt != MS_F32)
        return MS_ERR_UNSUPPORTED;
    if (outer <= 0 || len <= 0 || inner <= 0)
        return MS_OK;
    if (too_small(outer * len * inner, 1))
        return MS_ERR_UNSUPPORTED;
    /* Log-softmax needs log(sum): oneDNN 2.6's log is off by up to ~4e-6
     * absolute, too much for log-probabilities near 0 (the reference serves
     * it). */
    if (log)
        return MS_ERR_UNSUPPORTED;
    /* Rows the reference makes NaN: oneDNN 2.6 gives 0 or finite values. */
    if (softmax_has_bad_row(x, outer, len, inner))
        return MS_ERR_UNSUPPORTED;
    if (!engine_ready())
        return MS_ERR_UNSUPPORTED;
    softmax_params p;
    memset(&p, 0, sizeof p);
    p.log = log;
    /* Drop unit outer/inner dims so oneDNN sees the simplest layout. */
    p.nd = 0;
    if (outer > 1)
        p.dims[p.nd++] = outer;
    p.axis = p.nd;
    p.dims[p.nd++] = len;
    if (inner > 1)
        p.dims[p.nd++] = inner;

    prim_key key = {.len = 0};
    key_push(&key, KIND_SOFTMAX);
    key_push(&key, log);
    key_push(&key, outer);
    key_push(&key, len);
    key_push(&key, inner);
    exec_arg args[2] = {{DNNL_ARG_SRC, MD_INDEX(0), (void *)x}, {DNNL_ARG_DST, MD_INDEX(0), y}};
    return run_cached(&key, build_softmax, &p, 2, args);
}

/* ------------------------------------------------------------------------ */
/* conv2d (ABI 1.1): oneDNN convolution primitives on plain NCHW / OIHW     */
/*                                                                            */
/* Forward (with or without bias), backward data and backward weights; the   */
/* backward descriptors are created with a forward primitive descriptor as   */
/* the hint oneDNN requires.  The weight gradient's primitive is built       */
/* without a bias gradient.  oneDNN wants                                     */
/*   (h + padding_l + padding_r - kh) / stride + 1 == oh                      */
/* exactly, so when the output floors the right padding is smaller than the  */
/* left one, negative when the last rows or columns are never read; a        */
/* configuration oneDNN refuses is declined (ref serves it).                 */
/*                                                                            */
/* Non-finite values: the reference skips padded taps, and oneDNN's          */
/* implementations may multiply them by 0 (0·inf = NaN): forward calls whose */
/* weights, and weight-gradient calls whose output gradient, hold a NaN or   */
/* an infinity are declined when padding > 0 (checked by a scan).            */
/* ------------------------------------------------------------------------ */

typedef struct conv_params {
    int kind; /* KIND_CONV_FWD, KIND_CONV_BWD_DATA, KIND_CONV_BWD_WEIGHTS */
    bool bias;
    ms_conv2d_desc d;
} conv_params;

/* md[0] src (or diff_src), md[1] weights (or diff_weights), md[2] dst (or
 * diff_dst), md[3] bias. */
static void build_conv(prim_entry *e, const void *ctx)
{
    const conv_params *p = ctx;
    const ms_conv2d_desc *d = &p->d;
    int64_t sd[4] = {d->n, d->c, d->h, d->w}, wd[4] = {d->o, d->c, d->kh, d->kw};
    int64_t dd[4] = {d->n, d->o, d->oh, d->ow}, bd[1] = {d->o};
    int64_t ss[4], ws[4], ds[4], bs[1] = {1};
    contiguous_strides(4, sd, ss);
    contiguous_strides(4, wd, ws);
    contiguous_strides(4, dd, ds);
    if (!md_strided(&e->md[0], 4, sd, ss) || !md_strided(&e->md[1], 4, wd, ws) ||
        !md_strided(&e->md[2], 4, dd, ds) || !md_strided(&e->md[3], 1, bd, bs))
        return;
    dnnl_dims_t strides = {d->stride, d->stride};
    dnnl_dims_t pl = {d->padding, d->padding};
    dnnl_dims_t pr = {(d->oh - 1) * d->stride + d->kh - d->h - d->padding,
                      (d->ow - 1) * d->stride + d->kw - d->w - d->padding};
    const bool fwd_bias = p->kind == KIND_CONV_FWD && p->bias;
    dnnl_convolution_desc_t fwd;
    if (dnnl_convolution_forward_desc_init(
            &fwd, p->kind == KIND_CONV_FWD ? dnnl_forward_inference : dnnl_forward_training,
            dnnl_convolution_direct, &e->md[0], &e->md[1], fwd_bias ? &e->md[3] : NULL,
            &e->md[2], strides, pl, pr) != dnnl_success)
        return;
    if (p->kind == KIND_CONV_FWD) {
        entry_build(e, &fwd, NULL);
        return;
    }
    /* The backward primitives need the forward primitive descriptor. */
    dnnl_primitive_desc_t hint = NULL;
    if (dnnl_primitive_desc_create(&hint, &fwd, NULL, g_engine, NULL) != dnnl_success)
        return;
    dnnl_convolution_desc_t bwd;
    dnnl_status_t st;
    if (p->kind == KIND_CONV_BWD_DATA)
        st = dnnl_convolution_backward_data_desc_init(&bwd, dnnl_convolution_direct, &e->md[0],
                                                      &e->md[1], &e->md[2], strides, pl, pr);
    else
        st = dnnl_convolution_backward_weights_desc_init(&bwd, dnnl_convolution_direct,
                                                         &e->md[0], &e->md[1], NULL, &e->md[2],
                                                         strides, pl, pr);
    if (st == dnnl_success)
        entry_build_hint(e, &bwd, NULL, hint);
    dnnl_primitive_desc_destroy(hint);
}

/* Whether any of n floats is NaN or an infinity. */
static bool contiguous_has_nonfinite(const float *x, int64_t n)
{
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        float acc = 0.0f;
        for (int j = 0; j < 64; j++)
            acc += x[i + j] - x[i + j]; /* 0 when finite, NaN otherwise */
        if (acc != 0.0f)
            return true;
    }
    float acc = 0.0f;
    for (; i < n; i++)
        acc += x[i] - x[i];
    return acc != 0.0f;
}

static ms_status conv_run(int kind, ms_dtype dt, const ms_conv2d_desc *d, const void *a0,
                          const void *a1, const void *bias, void *out)
{
    if (dt != MS_F32)
        return MS_ERR_UNSUPPORTED;
    const int64_t ckk = d->c * d->kh * d->kw;
    if (too_small(d->n * d->o * d->oh * d->ow * ckk, 16))
        return MS_ERR_UNSUPPORTED;
    /* Padded taps meeting a non-finite weight (forward) or output gradient
     * (weight gradient): see above. */
    if (d->padding > 0 &&
        ((kind == KIND_CONV_FWD && contiguous_has_nonfinite(a1, d->o * ckk)) ||
         (kind == KIND_CONV_BWD_WEIGHTS &&
          contiguous_has_nonfinite(a1, d->n * d->o * d->oh * d->ow))))
        return MS_ERR_UNSUPPORTED;
    if (!engine_ready())
        return MS_ERR_UNSUPPORTED;
    conv_params p;
    memset(&p, 0, sizeof p);
    p.kind = kind;
    p.bias = bias != NULL;
    p.d = *d;
    prim_key key = {.len = 0};
    key_push(&key, kind);
    key_push(&key, p.bias);
    const int64_t v[11] = {d->n, d->c, d->h, d->w, d->o, d->kh, d->kw, d->oh, d->ow, d->stride,
                           d->padding};
    for (int i = 0; i < 11; i++)
        key_push(&key, v[i]);
    switch (kind) {
    case KIND_CONV_FWD: {
        exec_arg args[4] = {{DNNL_ARG_SRC, MD_INDEX(0), (void *)a0},
                            {DNNL_ARG_WEIGHTS, MD_INDEX(1), (void *)a1},
                            {DNNL_ARG_DST, MD_INDEX(2), out},
                            {DNNL_ARG_BIAS, MD_INDEX(3), (void *)bias}};
        return run_cached(&key, build_conv, &p, bias ? 4 : 3, args);
    }
    case KIND_CONV_BWD_DATA: {
        exec_arg args[3] = {{DNNL_ARG_DIFF_DST, MD_INDEX(2), (void *)a0},
                            {DNNL_ARG_WEIGHTS, MD_INDEX(1), (void *)a1},
                            {DNNL_ARG_DIFF_SRC, MD_INDEX(0), out}};
        return run_cached(&key, build_conv, &p, 3, args);
    }
    default: {
        exec_arg args[3] = {{DNNL_ARG_SRC, MD_INDEX(0), (void *)a0},
                            {DNNL_ARG_DIFF_DST, MD_INDEX(2), (void *)a1},
                            {DNNL_ARG_DIFF_WEIGHTS, MD_INDEX(1), out}};
        return run_cached(&key, build_conv, &p, 3, args);
    }
    }
}

static ms_status dnnl_conv2d_kernel(ms_dtype dt, const ms_conv2d_desc *d, const void *x,
                                    const void *w, const void *bias, void *y)
{
    return conv_run(KIND_CONV_FWD, dt, d, x, w, bias, y);
}

static ms_status dnnl_conv2d_bwd_data_kernel(ms_dtype dt, const ms_conv2d_desc *d,
                                             const void *gy, const void *w, void *gx)
{
    return conv_run(KIND_CONV_BWD_DATA, dt, d, gy, w, NULL, gx);
}

static ms_status dnnl_conv2d_bwd_weights_kernel(ms_dtype dt, const ms_conv2d_desc *d,
                                                const void *x, const void *gy, void *gw)
{
    return conv_run(KIND_CONV_BWD_WEIGHTS, dt, d, x, gy, NULL, gw);
}

/* ------------------------------------------------------------------------ */
/* table                                                                     */

static ms_status dnnl_backend_init(void)
{
    pthread_once(&g_description_once, fill_description);
    pthread_once(&g_engine_once, create_engine);
    return g_engine_status == MS_OK ? MS_OK : MS_ERR_BACKEND;
}

static void dnnl_backend_shutdown(void)
{
    g_shut_down = true;
    cache_clear();
    pthread_mutex_lock(&g_pool_lock);
    for (int i = 0; i < g_pool_count; i++)
        ctx_destroy(g_pool_all[i]);
    g_pool_count = 0;
    g_pool_free = NULL;
    pthread_mutex_unlock(&g_pool_lock);
    if (g_engine) {
        dnnl_engine_destroy(g_engine);
        g_engine = NULL;
    }
}

#ifdef _OPENMP
/* ABI 1.2: Debian's oneDNN runs its primitives on OpenMP (libgomp), whose
 * thread count is a per-thread setting of the calling thread. */
static int dnnl_set_num_threads(int n)
{
    int prev = omp_get_max_threads();
    if (n >= 1 && n != prev)
        omp_set_num_threads(n);
    return prev;
}
#endif

static const ms_backend g_table = {
    .header = {MS_BACKEND_ABI_MAJOR, MS_BACKEND_ABI_MINOR, sizeof(ms_backend), "onednn",
               g_description},
    .init = dnnl_backend_init,
    .shutdown = dnnl_backend_shutdown,
    .unary = dnnl_unary_kernel,
    .binary = dnnl_binary_kernel,
    .reduce = dnnl_reduce_kernel,
    .gemm = dnnl_gemm_kernel,
    .copy = NULL,
    .softmax = dnnl_softmax_kernel,
    .fill = NULL,
    .arange = NULL,
    .where = NULL,
    .conv2d = dnnl_conv2d_kernel,
    .conv2d_backward_data = dnnl_conv2d_bwd_data_kernel,
    .conv2d_backward_weights = dnnl_conv2d_bwd_weights_kernel,
#ifdef _OPENMP
    .set_num_threads = dnnl_set_num_threads,
#endif
};

MS_PLUGIN_EXPORT const ms_backend *metastep_backend_entry(void)
{
    pthread_once(&g_description_once, fill_description);
    return &g_table;
}
