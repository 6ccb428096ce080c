/* The worker pool behind metastep_options.threads: the tasks of one meta step
 * run on the caller and up to threads - 1 workers, which take task indices
 * from a shared counter.  The pool only schedules; the meta steps write each
 * task's results to a slot of its own and combine the slots in task order,
 * so which thread ran a task never shows in a result.
 *
 * Workers are created on first use, kept for later steps (a meta step is
 * short: creating threads per step would cost more than small tasks), and
 * joined by metastep_shutdown_threads or at process exit.  One job runs at a
 * time; a step that finds the pool busy (another user thread, or a cost
 * function that itself runs a meta step) runs its tasks on its own thread,
 * which gives the same results. */
#include <pthread.h>
#include <stdlib.h>

#include "learn/learn.h"

#define MS_POOL_MAX 64

typedef struct worker {
    pthread_t thread;
    int id;
    unsigned long long seen; /* the last job generation this worker looked at */
} worker;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;
static worker workers[MS_POOL_MAX];
static int nworkers;
static bool quitting, busy, exit_hook;
static unsigned long long generation;

/* The job being run; written under mu before the generation moves on. */
static struct {
    ms__pool_fn fn;
    void *ctx;
    int n;
    int helpers;  /* workers taking part: ids below this */
    int pending;  /* helpers not finished yet (under mu) */
    void *backend; /* the caller's backend, which every helper computes on */
    bool no_grad;  /* the caller's recording state, mirrored */
    atomic_int next;
} job;

static _Thread_local bool in_worker;

static void run_tasks(void)
{
    for (;;) {
        int i = atomic_fetch_add_explicit(&job.next, 1, memory_order_relaxed);
        if (i >= job.n)
            break;
        job.fn(job.ctx, i);
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    in_worker = true;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!quitting && w->seen == generation)
            pthread_cond_wait(&work_cv, &mu);
        if (quitting)
            break;
        w->seen = generation;
        if (w->id >= job.helpers)
            continue;
        pthread_mutex_unlock(&mu);
        bool pushed = ms__thread_backend_push(job.backend) == MS_OK;
        if (pushed)
            ms__backend_set_threads(1); /* tasks × kernel threads <= cores */
        if (job.no_grad)
            ms_no_grad_push();
        run_tasks();
        if (job.no_grad)
            ms_no_grad_pop();
        if (pushed)
            metastep_unset_thread_backend();
        pthread_mutex_lock(&mu);
        if (--job.pending == 0)
            pthread_cond_signal(&done_cv);
    }
    pthread_mutex_unlock(&mu);
    ms__thread_release();
    return NULL;
}

void metastep_shutdown_threads(void)
{
    if (in_worker)
        return; /* a worker cannot join itself: leave it to the exit */
    pthread_mutex_lock(&mu);
    quitting = true;
    pthread_cond_broadcast(&work_cv);
    int n = nworkers;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < n; i++)
        pthread_join(workers[i].thread, NULL);
    pthread_mutex_lock(&mu);
    nworkers = 0;
    quitting = false;
    pthread_mutex_unlock(&mu);
}

static void run_inline(int n, ms__pool_fn fn, void *ctx)
{
    for (int i = 0; i < n; i++)
        fn(ctx, i);
}

void ms__pool_run(int threads, int n, ms__pool_fn fn, void *ctx)
{
    if (threads <= 1 || n <= 1 || in_worker) {
        run_inline(n, fn, ctx);
        return;
    }
    int helpers = (threads < n ? threads : n) - 1;
    if (helpers > MS_POOL_MAX)
        helpers = MS_POOL_MAX;
    pthread_mutex_lock(&mu);
    if (busy || quitting) {
        pthread_mutex_unlock(&mu);
        run_inline(n, fn, ctx);
        return;
    }
    while (nworkers < helpers) {
        worker *w = &workers[nworkers];
        w->id = nworkers;
        w->seen = generation;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
            break; /* run with the workers there are */
        nworkers++;
    }
    if (nworkers > 0 && !exit_hook) {
        atexit(metastep_shutdown_threads);
        exit_hook = true;
    }
    if (helpers > nworkers)
        helpers = nworkers;
    if (helpers == 0) {
        pthread_mutex_unlock(&mu);
        run_inline(n, fn, ctx);
        return;
    }
    busy = true;
    /* before any helper runs, so that the count read here is the caller's */
    int prev = ms__backend_set_threads(1);
    job.fn = fn;
    job.ctx = ctx;
    job.n = n;
    job.helpers = helpers;
    job.pending = helpers;
    job.backend = ms__backend_handle();
    job.no_grad = ms__no_grad_depth > 0;
    atomic_store_explicit(&job.next, 0, memory_order_relaxed);
    generation++;
    pthread_cond_broadcast(&work_cv);
    pthread_mutex_unlock(&mu);
    run_tasks();
    pthread_mutex_lock(&mu);
    while (job.pending > 0)
        pthread_cond_wait(&done_cv, &mu);
    busy = false;
    pthread_mutex_unlock(&mu);
    if (prev > 0)
        ms__backend_set_threads(prev);
}
