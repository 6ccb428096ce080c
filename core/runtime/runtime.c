/* The backend registry, the set/unset stack, and kernel dispatch with
 * fallback to the reference backend. */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

#define MS_MAX_LOADED 32
#define MS_MAX_STACK 64

struct ms_loaded {
    const ms_backend *t;
    void *handle;
    char *path;
    atomic_ullong fallbacks[MS_KERNEL_COUNT];
};

static const ms_plugin_kind backend_kind = {
    .kind = "backend",
    .prefix = "libmetastep-backend-",
    .entry_symbol = MS_BACKEND_ENTRY_SYMBOL,
    .path_env = "METASTEP_BACKEND_PATH",
    .build_dir = MS_BUILD_BACKEND_DIR,
    .install_dir = MS_INSTALL_BACKEND_DIR,
    .abi_major = MS_BACKEND_ABI_MAJOR,
    .min_size = MS_BACKEND_MIN_SIZE,
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static ms_loaded loaded[MS_MAX_LOADED];
static int nloaded;
static ms_loaded *stack[MS_MAX_STACK];
static int depth;
static ms_loaded *_Atomic active;      /* top of stack, or the default */
static ms_loaded *_Atomic ref_backend; /* the fallback */
static bool exit_hook;

static void shutdown_all(void)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < nloaded; i++) {
        if (loaded[i].t->shutdown)
            loaded[i].t->shutdown();
        free(loaded[i].path);
    }
    nloaded = 0;
    pthread_mutex_unlock(&lock);
}

/* Find or load a backend; the lock is held. */
static ms_loaded *load_locked(const char *name)
{
    for (int i = 0; i < nloaded; i++)
        if (strcmp(loaded[i].t->header.name, name) == 0 || strcmp(loaded[i].path, name) == 0)
            return &loaded[i];
    if (nloaded == MS_MAX_LOADED) {
        ms__fail(MS_ERR_BACKEND, "backend '%s': more than %d backends loaded", name, MS_MAX_LOADED);
        return NULL;
    }
    void *h;
    const ms_plugin_header *hdr;
    char *path;
    if (ms__plugin_open(&backend_kind, name, &h, &hdr, &path) != MS_OK)
        return NULL;
    const ms_backend *t = (const ms_backend *)hdr;
    /* a path may name a backend already loaded under its table name */
    for (int i = 0; i < nloaded; i++)
        if (loaded[i].t == t) {
            dlclose(h); /* drop the extra reference dlopen took */
            free(path);
            return &loaded[i];
        }
    if (t->init) {
        ms_status st = t->init();
        if (st != MS_OK) {
            ms__fail(MS_ERR_BACKEND, "backend '%s': init failed: %s", path, ms_status_string(st));
            dlclose(h);
            free(path);
            return NULL;
        }
    }
    ms_loaded *l = &loaded[nloaded++];
    l->t = t;
    l->handle = h;
    l->path = path;
    for (int k = 0; k < MS_KERNEL_COUNT; k++)
        atomic_init(&l->fallbacks[k], 0);
    if (!exit_hook) {
        atexit(shutdown_all);
        exit_hook = true;
    }
    return l;
}

static const char *default_name(void)
{
    const char *env = getenv("METASTEP_BACKEND");
    return env && *env ? env : "ref";
}

/* Per-thread overrides (metastep_set_thread_backend): a stack per thread.
 * `overrides` counts the threads that have one, so the common case (none)
 * costs one relaxed load and no thread-local access per kernel call. */
static _Thread_local ms_loaded *tstack[MS_MAX_STACK];
static _Thread_local int tdepth;
static atomic_int overrides;

static ms_loaded *active_backend(void)
{
    if (atomic_load_explicit(&overrides, memory_order_relaxed) && tdepth)
        return tstack[tdepth - 1];
    ms_loaded *l = atomic_load_explicit(&active, memory_order_acquire);
    if (l)
        return l;
    pthread_mutex_lock(&lock);
    l = depth ? stack[depth - 1] : load_locked(default_name());
    atomic_store(&active, l);
    pthread_mutex_unlock(&lock);
    return l;
}

const ms_backend *ms__ref(void)
{
    ms_loaded *l = atomic_load_explicit(&ref_backend, memory_order_acquire);
    if (!l) {
        pthread_mutex_lock(&lock);
        l = load_locked("ref");
        atomic_store(&ref_backend, l);
        pthread_mutex_unlock(&lock);
    }
    return l ? l->t : NULL;
}

ms_status metastep_set_backend(const char *name)
{
    if (!name)
        return ms__fail(MS_ERR_NULL_ARG, "metastep_set_backend: name is NULL");
    pthread_mutex_lock(&lock);
    ms_status st = MS_OK;
    ms_loaded *l = NULL;
    if (depth == MS_MAX_STACK)
        st = ms__fail(MS_ERR_INVALID_ARG, "metastep_set_backend: more than %d backends pushed",
                      MS_MAX_STACK);
    else if (!(l = load_locked(name)))
        st = MS_ERR_BACKEND;
    else {
        stack[depth++] = l;
        atomic_store(&active, l);
    }
    pthread_mutex_unlock(&lock);
    return st;
}

ms_status metastep_unset_backend(void)
{
    pthread_mutex_lock(&lock);
    ms_status st = MS_OK;
    if (depth == 0)
        st = ms__fail(MS_ERR_INVALID_ARG, "metastep_unset_backend: no backend was set");
    else {
        depth--;
        atomic_store(&active, depth ? stack[depth - 1] : NULL);
    }
    pthread_mutex_unlock(&lock);
    return st;
}

ms_status metastep_set_thread_backend(const char *name)
{
    if (!name)
        return ms__fail(MS_ERR_NULL_ARG, "metastep_set_thread_backend: name is NULL");
    if (tdepth == MS_MAX_STACK)
        return ms__fail(MS_ERR_INVALID_ARG, "metastep_set_thread_backend: more than %d "
                        "backends pushed on this thread", MS_MAX_STACK);
    pthread_mutex_lock(&lock);
    ms_loaded *l = load_locked(name);
    pthread_mutex_unlock(&lock);
    if (!l)
        return MS_ERR_BACKEND;
    tstack[tdepth++] = l;
    if (tdepth == 1)
        atomic_fetch_add(&overrides, 1);
    return MS_OK;
}

void *ms__backend_handle(void) { return active_backend(); }

ms_status ms__thread_backend_push(void *handle)
{
    if (!handle)
        return ms__fail(MS_ERR_BACKEND, "no backend to run the worker on");
    if (tdepth == MS_MAX_STACK)
        return ms__fail(MS_ERR_INVALID_ARG, "metastep_set_thread_backend: more than %d "
                        "backends pushed on this thread", MS_MAX_STACK);
    tstack[tdepth++] = handle;
    if (tdepth == 1)
        atomic_fetch_add(&overrides, 1);
    return MS_OK;
}

int ms__backend_set_threads(int n)
{
    ms_loaded *l = active_backend();
    if (!l || !MS_BACKEND_HAS_SLOT(l->t, set_num_threads) || !l->t->set_num_threads)
        return 0;
    return l->t->set_num_threads(n);
}

int metastep_set_backend_threads(int n)
{
    if (n >= 1)
        return ms__backend_set_threads(n);
    int prev = ms__backend_set_threads(1); /* a query: set and restore */
    if (prev > 1)
        ms__backend_set_threads(prev);
    return prev;
}

ms_status metastep_unset_thread_backend(void)
{
    if (tdepth == 0)
        return ms__fail(MS_ERR_INVALID_ARG, "metastep_unset_thread_backend: no backend was set "
                        "on this thread");
    if (--tdepth == 0)
        atomic_fetch_sub(&overrides, 1);
    return MS_OK;
}

const char *metastep_current_backend(void)
{
    ms_loaded *l = active_backend();
    return l ? l->t->header.name : NULL;
}

ms_status metastep_load_backend(const char *name, const struct ms_backend **table)
{
    if (!name || !table)
        return ms__fail(MS_ERR_NULL_ARG, "metastep_load_backend: NULL argument");
    pthread_mutex_lock(&lock);
    ms_loaded *l = load_locked(name);
    pthread_mutex_unlock(&lock);
    if (!l)
        return MS_ERR_BACKEND;
    *table = l->t;
    return MS_OK;
}

static ms_loaded *find_loaded(const char *name)
{
    ms_loaded *r = NULL;
    pthread_mutex_lock(&lock);
    for (int i = 0; i < nloaded && !r; i++)
        if (strcmp(loaded[i].t->header.name, name) == 0 || strcmp(loaded[i].path, name) == 0)
            r = &loaded[i];
    pthread_mutex_unlock(&lock);
    return r;
}

const char *metastep_backend_description(const char *name)
{
    ms_loaded *l = name ? find_loaded(name) : NULL;
    return l ? l->t->header.description : NULL;
}

int metastep_list_backends(void (*fn)(const char *, const char *, void *), void *user)
{
    return ms__plugin_list(&backend_kind, fn, user);
}

size_t metastep_backend_search_path(char *buf, size_t cap)
{
    return ms__plugin_search_path(&backend_kind, buf, cap);
}

uint64_t metastep_fallback_count(const char *backend, int kernel)
{
    ms_loaded *l = backend ? find_loaded(backend) : active_backend();
    if (!l || kernel >= MS_KERNEL_COUNT)
        return 0;
    if (kernel >= 0)
        return atomic_load(&l->fallbacks[kernel]);
    uint64_t s = 0;
    for (int k = 0; k < MS_KERNEL_COUNT; k++)
        s += atomic_load(&l->fallbacks[k]);
    return s;
}

const ms_backend *ms__active_table(void)
{
    ms_loaded *l = active_backend();
    return l ? l->t : NULL;
}

void ms__count_fallbacks(const uint64_t *n)
{
    ms_loaded *l = active_backend();
    for (int k = 0; l && k < MS_KERNEL_COUNT; k++)
        if (n[k])
            atomic_fetch_add_explicit(&l->fallbacks[k], n[k], memory_order_relaxed);
}

/* One dispatcher per kernel family: the active backend's slot when present
 * and willing, else the reference backend's (counted as a fallback). */
#define DISPATCH(KERNEL, slot, PARAMS, ARGS)                                                 \
    ms_status msk_##slot PARAMS                                                              \
    {                                                                                        \
        ms_loaded *l = active_backend();                                                     \
        if (!l)                                                                              \
            return MS_ERR_BACKEND;                                                           \
        if (ms__taping()) {                                                                  \
            ms_status rs = ms__tape_##slot ARGS;                                             \
            if (rs != MS_OK)                                                                 \
                return rs;                                                                   \
        }                                                                                    \
        if (MS_BACKEND_HAS_SLOT(l->t, slot) && l->t->slot) {                                 \
            ms_status st = l->t->slot ARGS;                                                  \
            if (st != MS_ERR_UNSUPPORTED)                                                    \
                return st;                                                                   \
        }                                                                                    \
        const ms_backend *ref = ms__ref();                                                   \
        if (!ref || ref == l->t)                                                             \
            return ref ? MS_ERR_UNSUPPORTED : MS_ERR_BACKEND;                                \
        atomic_fetch_add_explicit(&l->fallbacks[KERNEL], 1, memory_order_relaxed);           \
        return ref->slot ARGS;                                                               \
    }

DISPATCH(MS_KERNEL_UNARY, unary,
         (ms_unary_op op, ms_dtype dt, int64_t n, const void *x, void *y), (op, dt, n, x, y))
DISPATCH(MS_KERNEL_BINARY, binary,
         (ms_binary_op op, ms_dtype dt, int ndim, const int64_t *shape, const void *a,
          const int64_t *sa, const void *b, const int64_t *sb, void *y),
         (op, dt, ndim, shape, a, sa, b, sb, y))
DISPATCH(MS_KERNEL_REDUCE, reduce,
         (ms_reduce_op op, ms_dtype dt, int ndim, const int64_t *shape, uint32_t axes,
          const void *x, void *y),
         (op, dt, ndim, shape, axes, x, y))
DISPATCH(MS_KERNEL_GEMM, gemm,
         (ms_dtype dt, bool ta, bool tb, int64_t batch, int64_t m, int64_t n, int64_t k,
          double alpha, const void *a, int64_t lda, int64_t sa, const void *b, int64_t ldb,
          int64_t sb, double beta, void *c, int64_t ldc, int64_t sc),
         (dt, ta, tb, batch, m, n, k, alpha, a, lda, sa, b, ldb, sb, beta, c, ldc, sc))
DISPATCH(MS_KERNEL_COPY, copy,
         (ms_dtype dt, int ndim, const int64_t *shape, const void *src, const int64_t *ss,
          void *dst, const int64_t *ds),
         (dt, ndim, shape, src, ss, dst, ds))
DISPATCH(MS_KERNEL_SOFTMAX, softmax,
         (ms_dtype dt, bool log, int64_t outer, int64_t len, int64_t inner, const void *x,
          void *y),
         (dt, log, outer, len, inner, x, y))
DISPATCH(MS_KERNEL_FILL, fill,
         (ms_dtype dt, int ndim, const int64_t *shape, const int64_t *ds, double value,
          void *dst),
         (dt, ndim, shape, ds, value, dst))
DISPATCH(MS_KERNEL_ARANGE, arange,
         (ms_dtype dt, int64_t n, double start, double step, void *y), (dt, n, start, step, y))
DISPATCH(MS_KERNEL_WHERE, where,
         (ms_dtype dt, int ndim, const int64_t *shape, const void *c, const int64_t *sc,
          const void *a, const int64_t *sa, const void *b, const int64_t *sb, void *y),
         (dt, ndim, shape, c, sc, a, sa, b, sb, y))
DISPATCH(MS_KERNEL_CONV2D, conv2d,
         (ms_dtype dt, const ms_conv2d_desc *d, const void *x, const void *w, const void *bias,
          void *y),
         (dt, d, x, w, bias, y))
DISPATCH(MS_KERNEL_CONV2D_BWD_DATA, conv2d_backward_data,
         (ms_dtype dt, const ms_conv2d_desc *d, const void *gy, const void *w, void *gx),
         (dt, d, gy, w, gx))
DISPATCH(MS_KERNEL_CONV2D_BWD_WEIGHTS, conv2d_backward_weights,
         (ms_dtype dt, const ms_conv2d_desc *d, const void *x, const void *gy, void *gw),
         (dt, d, x, gy, gw))
