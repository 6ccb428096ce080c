/* A caching, 64-byte-aligned block allocator.
 *
 * Meta-learning allocates the same few hundred small tensors every step, so
 * freed blocks are kept in per-thread free lists by power-of-two size class
 * and handed out again without touching malloc.  Each thread caches at most
 * MS_CACHE_LIMIT bytes; the rest goes back to libc.  Built with
 * MS_NO_ALLOC_CACHE (the sanitizer build) every block goes straight to libc so
 * that leaks and use-after-free are visible.
 */
#include <pthread.h>
#include <stdlib.h>

#include "base/base.h"

#define MS_ALIGN 64
#define MS_NCLASS 48
#define MS_CACHE_LIMIT ((size_t)64 << 20)

typedef struct free_block { struct free_block *next; } free_block;

typedef struct thread_cache {
    free_block *head[MS_NCLASS];
    size_t cached;
    bool registered;
} thread_cache;

#ifndef MS_NO_ALLOC_CACHE /* unused (and -Werror) without the cache */
static _Thread_local thread_cache tcache;
static pthread_key_t cache_key;
static pthread_once_t cache_once = PTHREAD_ONCE_INIT;
#endif

/* The smallest c >= 6 (64 bytes) with 2^c >= bytes; bytes >= 1. */
static size_t class_of(size_t bytes)
{
    if (bytes <= 64)
        return 6;
    return (size_t)(64 - __builtin_clzll((unsigned long long)(bytes - 1)));
}

#ifndef MS_NO_ALLOC_CACHE
static void flush_cache(void *arg)
{
    thread_cache *tc = arg;
    for (int c = 0; c < MS_NCLASS; c++) {
        while (tc->head[c]) {
            free_block *b = tc->head[c];
            tc->head[c] = b->next;
            free(b);
        }
    }
    tc->cached = 0;
}

static void make_key(void) { (void)pthread_key_create(&cache_key, flush_cache); }
#endif

_Thread_local void (*ms__alloc_observer)(void *p, size_t bytes, bool alloc);

static void *observed(void *p, size_t c)
{
    if (p && ms__alloc_observer)
        ms__alloc_observer(p, (size_t)1 << c, true);
    return p;
}

void *ms__block_alloc(size_t bytes, size_t *cls)
{
    if (bytes == 0)
        bytes = 1;
    if (bytes > ((size_t)1 << (MS_NCLASS - 1)))
        return NULL;
    size_t c = class_of(bytes);
    *cls = c;
#ifndef MS_NO_ALLOC_CACHE
    free_block *b = tcache.head[c];
    if (b) {
        tcache.head[c] = b->next;
        tcache.cached -= (size_t)1 << c;
        return observed(b, c);
    }
    if (!tcache.registered) {
        /* the key's destructor returns a finished thread's cache to libc */
        pthread_once(&cache_once, make_key);
        pthread_setspecific(cache_key, &tcache);
        tcache.registered = true;
    }
#endif
    return observed(aligned_alloc(MS_ALIGN, (size_t)1 << c), c);
}

void ms__block_free(void *p, size_t cls)
{
    if (!p)
        return;
    if (ms__alloc_observer)
        ms__alloc_observer(p, (size_t)1 << cls, false);
#ifndef MS_NO_ALLOC_CACHE
    size_t bytes = (size_t)1 << cls;
    if (tcache.cached + bytes <= MS_CACHE_LIMIT) {
        free_block *b = p;
        b->next = tcache.head[cls];
        tcache.head[cls] = b;
        tcache.cached += bytes;
        return;
    }
#else
    (void)cls;
#endif
    free(p);
}
