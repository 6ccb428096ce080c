/* Tensor creation, lifetime and scopes. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "tensor/tensor.h"

#define MS_HEADER_BYTES ((sizeof(struct ms_tensor) + 63) & ~(size_t)63)
#define MS_MAX_SCOPES 1024
#define MS_SCOPE_KEEP 4096 /* entries of the outermost scope's list kept after its pop */

static atomic_llong live_tensors;
/* bytes of the live tensors' blocks (header and data), and the most since
 * the last ms_reset_peak_tensor_bytes: a memory measure that needs no clock */
static atomic_llong live_bytes, peak_bytes;

typedef struct scope {
    ms_tensor **items;
    size_t n, cap;
} scope;

/* This thread's scopes and release stack, in one block so that a function
 * computes the block's address (a __tls_get_addr call in a shared library)
 * once rather than once per variable. */
static _Thread_local struct thread_state {
    int scope_top; /* number of open scopes */
    int scope_hwm; /* deepest scope opened since the lists were last freed */
    /* Releasing a tensor releases its graph; a long chain of nodes would
     * recurse deeply, so the cascade runs on an explicit stack. */
    bool releasing;
    size_t ndying, capdying;
    ms_tensor **dying;
    scope scopes[MS_MAX_SCOPES];
} ts;

/* The address of this thread's state, computed once: the empty asm hides it
 * from the optimiser, which would otherwise recompute it (another
 * __tls_get_addr call) after every call the function makes. */
static inline struct thread_state *state(void)
{
    struct thread_state *p = &ts;
    __asm__("" : "+r"(p));
    return p;
}

static inline void release(struct thread_state *st, ms_tensor *t);

size_t ms_dtype_size(ms_dtype dt)
{
    return dt == MS_F32 ? 4 : dt == MS_F64 ? 8 : 0;
}

const char *ms_dtype_name(ms_dtype dt)
{
    return dt == MS_F32 ? "float32" : dt == MS_F64 ? "float64" : "invalid";
}

void ms__strides(int ndim, const int64_t *shape, int64_t *strides)
{
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s *= shape[i];
    }
}

int ms__axis(const char *fn, int axis, int ndim)
{
    if (axis < -ndim || axis >= ndim || (ndim == 0)) {
        ms__fail(MS_ERR_RANK, "%s: axis %d is out of range for a tensor of rank %d", fn, axis,
                 ndim);
        return -1;
    }
    return axis < 0 ? axis + ndim : axis;
}

bool ms__check(const char *fn, const ms_tensor *t, const char *argname)
{
    if (!t) {
        ms__fail(MS_ERR_NULL_ARG, "%s: %s is NULL", fn, argname);
        return false;
    }
    if (t->magic != MS_TENSOR_MAGIC) {
        ms__fail(MS_ERR_INVALID_ARG, "%s: %s is not a live tensor (released, or its scope was popped)",
                 fn, argname);
        return false;
    }
    return true;
}

bool ms__same_dtype(const char *fn, const ms_tensor *a, const ms_tensor *b)
{
    if (a->dtype != b->dtype) {
        ms__fail(MS_ERR_DTYPE, "%s: dtypes %s and %s differ", fn, ms_dtype_name(a->dtype),
                 ms_dtype_name(b->dtype));
        return false;
    }
    return true;
}

/* A thread's scope lists are freed when it exits (a pthread key destructor,
 * registered by the thread's first list), so threads that come and go leak
 * nothing. */
static pthread_key_t exit_key;
static pthread_once_t exit_once = PTHREAD_ONCE_INIT;
static _Thread_local bool exit_registered;

static void on_thread_exit(void *arg)
{
    (void)arg;
    ms__thread_release();
}

static void make_exit_key(void) { (void)pthread_key_create(&exit_key, on_thread_exit); }

static void register_thread_exit(void)
{
    exit_registered = true;
    pthread_once(&exit_once, make_exit_key);
    (void)pthread_setspecific(exit_key, &exit_registered); /* non-NULL: run the destructor */
}

static bool scope_add(struct thread_state *st, ms_tensor *t)
{
    if (st->scope_top == 0)
        return true;
    scope *s = &st->scopes[st->scope_top - 1];
    if (s->n == s->cap) {
        if (!exit_registered)
            register_thread_exit();
        size_t cap = s->cap ? s->cap * 2 : 256;
        ms_tensor **items = realloc(s->items, cap * sizeof *items);
        if (!items)
            return false;
        s->items = items;
        s->cap = cap;
    }
    s->items[s->n++] = t;
    return true;
}

static ms_tensor *tensor_alloc(const char *fn, ms_dtype dt, int ndim, const int64_t *shape,
                               bool scoped)
{
    size_t es = dt == MS_F32 ? 4 : dt == MS_F64 ? 8 : 0; /* no PLT call to ms_dtype_size */
    if (!es) {
        ms__fail(MS_ERR_DTYPE, "%s: invalid dtype %d", fn, (int)dt);
        return NULL;
    }
    if (ndim < 0 || ndim > MS_MAX_DIMS) {
        ms__fail(MS_ERR_RANK, "%s: rank %d is outside [0, %d]", fn, ndim, MS_MAX_DIMS);
        return NULL;
    }
    if (ndim > 0 && !shape) {
        ms__fail(MS_ERR_NULL_ARG, "%s: shape is NULL", fn);
        return NULL;
    }
    int64_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) {
            char b[MS_SHAPE_BUF];
            ms__fail(MS_ERR_INVALID_ARG, "%s: negative dimension in shape %s", fn,
                     ms__shape_str(b, sizeof b, ndim, shape));
            return NULL;
        }
        if (__builtin_mul_overflow(numel, shape[i], &numel) || numel > INT64_MAX / 8) {
            char b[MS_SHAPE_BUF];
            ms__fail(MS_ERR_OVERFLOW, "%s: shape %s has too many elements", fn,
                     ms__shape_str(b, sizeof b, ndim, shape));
            return NULL;
        }
    }
    size_t bytes = (size_t)numel * es;
    if (bytes > SIZE_MAX - MS_HEADER_BYTES) {
        ms__fail(MS_ERR_OVERFLOW, "%s: %lld elements overflow the address space", fn,
                 (long long)numel);
        return NULL;
    }
    size_t cls;
    ms_tensor *t = ms__block_alloc(MS_HEADER_BYTES + bytes, &cls);
    if (!t) {
        ms__fail(MS_ERR_NOMEM, "%s: cannot allocate %zu bytes", fn, bytes);
        return NULL;
    }
    t->magic = MS_TENSOR_MAGIC;
    atomic_init(&t->refs, 1);
    t->dtype = dt;
    t->ndim = ndim;
    for (int i = 0; i < MS_MAX_DIMS; i++)
        t->shape[i] = 1;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    t->numel = numel;
    t->data = (char *)t + MS_HEADER_BYTES;
    t->block = cls;
    t->requires_grad = false;
    t->graph_freed = false;
    t->node = NULL;
    t->visit = 0;
    t->gacc = NULL;
    t->pending = 0;
    if (scoped && !scope_add(state(), t)) {
        t->magic = MS_TENSOR_DEAD;
        ms__block_free(t, cls);
        ms__fail(MS_ERR_NOMEM, "%s: cannot grow the scope", fn);
        return NULL;
    }
    atomic_fetch_add_explicit(&live_tensors, 1, memory_order_relaxed);
    {
        long long now = atomic_fetch_add_explicit(&live_bytes, 1LL << cls, memory_order_relaxed) +
                        (1LL << cls);
        long long peak = atomic_load_explicit(&peak_bytes, memory_order_relaxed);
        while (now > peak && !atomic_compare_exchange_weak_explicit(
                                 &peak_bytes, &peak, now, memory_order_relaxed,
                                 memory_order_relaxed))
            ;
    }
    t->level = 0;
    return t;
}

ms_tensor *ms__tensor_new(const char *fn, ms_dtype dt, int ndim, const int64_t *shape)
{
    return tensor_alloc(fn, dt, ndim, shape, true);
}

ms_tensor *ms__tensor_tmp(const char *fn, ms_dtype dt, int ndim, const int64_t *shape)
{
    return tensor_alloc(fn, dt, ndim, shape, false);
}

void ms__discard(ms_tensor *t)
{
    if (!t)
        return;
    struct thread_state *st = state();
    if (st->scope_top > 0) {
        scope *s = &st->scopes[st->scope_top - 1];
        if (s->n && s->items[s->n - 1] == t)
            s->n--;
        else
            return; /* the scope owns it and releases it at pop */
    }
    release(st, t);
}

ms_tensor *ms_retain(ms_tensor *t)
{
    if (t && t->magic == MS_TENSOR_MAGIC)
        atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}


static void destroy(ms_tensor *t)
{
    ms_node *n = t->node;
    t->magic = MS_TENSOR_DEAD;
    t->node = NULL;
    atomic_fetch_sub_explicit(&live_tensors, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&live_bytes, 1LL << t->block, memory_order_relaxed);
    ms__block_free(t, t->block);
    if (n)
        ms__node_free(n); /* releases the inputs, possibly re-entering ms_release */
}

/* ms_release's body, called directly from this file (a call to the exported
 * name would go through the PLT). */
static inline void release(struct thread_state *st, ms_tensor *t)
{
    if (!t || t->magic != MS_TENSOR_MAGIC)
        return;
    if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    if (st->releasing) {
        if (st->ndying == st->capdying) {
            if (!exit_registered)
                register_thread_exit();
            size_t cap = st->capdying ? st->capdying * 2 : 64;
            ms_tensor **d = realloc(st->dying, cap * sizeof *d);
            if (!d) { /* cannot defer: recurse instead */
                destroy(t);
                return;
            }
            st->dying = d;
            st->capdying = cap;
        }
        st->dying[st->ndying++] = t;
        return;
    }
    st->releasing = true;
    destroy(t);
    while (st->ndying)
        destroy(st->dying[--st->ndying]);
    st->releasing = false;
}

void ms_release(ms_tensor *t) { release(state(), t); }

ms_status ms_scope_push(void)
{
    struct thread_state *st = state();
    if (st->scope_top >= MS_MAX_SCOPES)
        return ms__fail(MS_ERR_INVALID_ARG, "ms_scope_push: more than %d nested scopes",
                        MS_MAX_SCOPES);
    st->scopes[st->scope_top++].n = 0;
    if (st->scope_top > st->scope_hwm)
        st->scope_hwm = st->scope_top;
    return MS_OK;
}

ms_status ms_scope_pop(void)
{
    struct thread_state *st = state();
    if (st->scope_top == 0)
        return ms__fail(MS_ERR_INVALID_ARG, "ms_scope_pop: no scope is open");
    scope *s = &st->scopes[--st->scope_top];
    for (size_t i = 0; i < s->n; i++)
        release(st, s->items[i]);
    s->n = 0;
    if (st->scope_top == 0) {
        /* give the lists back when the outermost scope closes, except the
         * outermost one's while it is small: a loop that opens and closes a
         * scope per step must not pay for regrowing it every time */
        for (int i = 0; i < st->scope_hwm; i++) {
            if (!st->scopes[i].items || (i == 0 && st->scopes[i].cap <= MS_SCOPE_KEEP))
                continue;
            free(st->scopes[i].items);
            st->scopes[i].items = NULL;
            st->scopes[i].cap = 0;
        }
        st->scope_hwm = 0;
        free(st->dying);
        st->dying = NULL;
        st->capdying = 0;
    }
    return MS_OK;
}

int ms_scope_depth(void) { return ts.scope_top; }

void ms__thread_release(void)
{
    struct thread_state *st = state();
    if (st->scope_top != 0)
        return;
    for (int i = 0; i < MS_MAX_SCOPES; i++) {
        free(st->scopes[i].items);
        st->scopes[i].items = NULL;
        st->scopes[i].cap = 0;
    }
    free(st->dying);
    st->dying = NULL;
    st->capdying = 0;
}

void ms__scope_adopt(ms_tensor *t)
{
    if (t && !scope_add(state(), t))
        ms__fail(MS_ERR_NOMEM, "scope: cannot grow the scope");
}

int64_t ms_live_tensors(void) { return atomic_load(&live_tensors); }

int64_t ms_live_tensor_bytes(void) { return atomic_load(&live_bytes); }

int64_t ms_peak_tensor_bytes(void) { return atomic_load(&peak_bytes); }

void ms_reset_peak_tensor_bytes(void) { atomic_store(&peak_bytes, atomic_load(&live_bytes)); }

int64_t ms__peak_tensor_bytes_restart(void)
{
    return atomic_exchange(&peak_bytes, atomic_load(&live_bytes));
}

void ms__peak_tensor_bytes_raise(int64_t v)
{
    long long peak = atomic_load(&peak_bytes);
    while (v > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, v))
        ;
}

/* --- creation --- */

ms_tensor *ms_tensor_from_data(ms_dtype dt, int ndim, const int64_t *shape, const void *data)
{
    ms_tensor *t = ms__tensor_new("ms_tensor_from_data", dt, ndim, shape);
    if (!t)
        return NULL;
    if (t->numel && !data) {
        ms__fail(MS_ERR_NULL_ARG, "ms_tensor_from_data: data is NULL for %lld elements",
                 (long long)t->numel);
        ms__discard(t);
        return NULL;
    }
    if (t->numel)
        memcpy(t->data, data, (size_t)t->numel * ms_dtype_size(dt));
    return t;
}

static ms_tensor *filled(const char *fn, ms_dtype dt, int ndim, const int64_t *shape, double v)
{
    ms_tensor *t = ms__tensor_new(fn, dt, ndim, shape);
    if (!t)
        return NULL;
    int64_t one = 1;
    ms_status st = msk_fill(dt, 1, &t->numel, &one, v, t->data);
    if (st != MS_OK) {
        ms__fail(st, "%s: fill kernel failed", fn);
        ms__discard(t);
        return NULL;
    }
    return t;
}

ms_tensor *ms_zeros(ms_dtype dt, int ndim, const int64_t *shape)
{
    return filled("ms_zeros", dt, ndim, shape, 0.0);
}

ms_tensor *ms_ones(ms_dtype dt, int ndim, const int64_t *shape)
{
    return filled("ms_ones", dt, ndim, shape, 1.0);
}

ms_tensor *ms_full(ms_dtype dt, int ndim, const int64_t *shape, double value)
{
    return filled("ms_full", dt, ndim, shape, value);
}

ms_tensor *ms_scalar(ms_dtype dt, double value)
{
    return filled("ms_scalar", dt, 0, NULL, value);
}

static ms_tensor *ranged(const char *fn, ms_dtype dt, int64_t n, double start, double step)
{
    ms_tensor *t = ms__tensor_new(fn, dt, 1, &n);
    if (!t)
        return NULL;
    ms_status st = msk_arange(dt, n, start, step, t->data);
    if (st != MS_OK) {
        ms__fail(st, "%s: arange kernel failed", fn);
        ms__discard(t);
        return NULL;
    }
    return t;
}

ms_tensor *ms_arange(ms_dtype dt, double start, double stop, double step)
{
    if (!isfinite(start) || !isfinite(stop) || !isfinite(step) || step == 0) {
        ms__fail(MS_ERR_INVALID_ARG,
                 "ms_arange: start %g, stop %g and step %g must be finite and step non-zero",
                 start, stop, step);
        return NULL;
    }
    double len = ceil((stop - start) / step);
    if (len > 1e15) {
        ms__fail(MS_ERR_OVERFLOW, "ms_arange: %g elements is too many", len);
        return NULL;
    }
    return ranged("ms_arange", dt, len > 0 ? (int64_t)len : 0, start, step);
}

ms_tensor *ms_linspace(ms_dtype dt, double start, double stop, int64_t num)
{
    if (num < 0 || !isfinite(start) || !isfinite(stop)) {
        ms__fail(MS_ERR_INVALID_ARG, "ms_linspace: num %lld must be >= 0 and bounds finite",
                 (long long)num);
        return NULL;
    }
    double step = num > 1 ? (stop - start) / (double)(num - 1) : 0.0;
    ms_tensor *t = ranged("ms_linspace", dt, num, start, step);
    if (t && num > 1) { /* the last value is exactly stop, as in NumPy */
        int64_t last = num - 1, one = 1;
        char *p = (char *)t->data + (size_t)last * ms_dtype_size(dt);
        msk_fill(dt, 1, &one, &one, stop, p);
    }
    return t;
}

ms_tensor *ms_eye(ms_dtype dt, int64_t n, int64_t m)
{
    if (m < 0)
        m = n;
    int64_t shape[2] = {n, m};
    ms_tensor *t = filled("ms_eye", dt, 2, shape, 0.0);
    if (!t)
        return NULL;
    int64_t diag = n < m ? n : m, stride = m + 1;
    if (diag > 0)
        msk_fill(dt, 1, &diag, &stride, 1.0, t->data);
    return t;
}

ms_tensor *ms_copy(const ms_tensor *t)
{
    if (!ms__check("ms_copy", t, "t"))
        return NULL;
    return ms_tensor_from_data(t->dtype, t->ndim, t->shape, t->data);
}

/* --- inspection --- */

/* Host access to data while a compiled step is traced means the callables
 * may choose their kernels by value: such a trace is refused. */
void *ms_tensor_data(const ms_tensor *t)
{
    if (ms__taping())
        ms__tape_refuse("a callable read or wrote tensor data on the host (ms_tensor_data)");
    return t ? t->data : NULL;
}
int ms_tensor_ndim(const ms_tensor *t) { return t ? t->ndim : 0; }
const int64_t *ms_tensor_shape(const ms_tensor *t) { return t ? t->shape : NULL; }
int64_t ms_tensor_numel(const ms_tensor *t) { return t ? t->numel : 0; }
ms_dtype ms_tensor_dtype(const ms_tensor *t) { return t ? t->dtype : MS_F32; }

double ms_tensor_item(const ms_tensor *t)
{
    if (ms__taping())
        ms__tape_refuse("a callable read a tensor's value on the host (ms_tensor_item)");
    if (!ms__check("ms_tensor_item", t, "t"))
        return NAN;
    if (t->numel != 1) {
        char b[MS_SHAPE_BUF];
        ms__fail(MS_ERR_SHAPE, "ms_tensor_item: tensor of shape %s has %lld elements, not 1",
                 ms__shape_str(b, sizeof b, t->ndim, t->shape), (long long)t->numel);
        return NAN;
    }
    return t->dtype == MS_F32 ? (double)*(const float *)t->data : *(const double *)t->data;
}
