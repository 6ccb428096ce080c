/* bench-inner-memory: peak memory and time of one second-order MAML meta
 * step as the inner loop grows, unrolled against checkpointed
 * (metastep_options.checkpoint_every), on the sine MLP and on Conv4.
 *
 *   ./build-rel/bench/bench-inner-memory [--models sine,conv4] [--ks 1,5,10,25,50,100]
 *       [--modes 0,-1] [--backend openblas] [--sine-batch 25] [--conv4-batch 2]
 *       [--repeats 3] [--json] [--smoke]
 *
 * Every (model, k, mode) runs in a child process of its own (fork), so its
 * peak resident set (VmHWM) is its own: the library, the backend, the task's
 * data and the step.  Mode 0 is the unrolled step, -1 checkpoints every
 * ceil(sqrt(k)) steps, N > 0 every N steps.  The child runs --repeats meta
 * steps (meta step over the meta-batch, unbatched, one thread, plus the outer
 * Adam update at lr 1e-3) and reports the median seconds per step, the peak
 * RSS, and the peak bytes of live tensors during the steps above what was
 * live before them (ms_peak_tensor_bytes: the step's own tensor memory,
 * without the allocator's cache and the process's fixed part).
 *
 * Models: the sine task plugin (MLP 1-40-40-1, ReLU, K = 10 support and 10
 * query points, inner lr 0.01) and the images task plugin (Conv4, F = 32
 * filters, 5-way 1-shot with 15 queries per class, 28x28 Fashion-MNIST,
 * inner lr 0.4), float32.
 * --smoke: sine only, k = 1 and 3, one step each (for scripts/test).
 */
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "benchutil.h"
#include "metastep/metastep.h"

#define MAXN 32

typedef struct result {
    int ok;
    double secs, cost;
    long rss_kib;
    long long tensor_bytes;
    char msg[256];
} result;

static const char *backend = NULL;
static int sine_batch = 25, conv4_batch = 2, repeats = 3;

static int parse_list(const char *s, int *out)
{
    int n = 0;
    char *copy = strdup(s), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t && n < MAXN; t = strtok_r(NULL, ",", &save))
        out[n++] = atoi(t);
    free(copy);
    return n;
}

static void fail(result *r, const char *what)
{
    const char *msg = NULL;
    ms_last_error(&msg);
    snprintf(r->msg, sizeof r->msg, "%s: %s", what, msg ? msg : "failed");
}

/* In the child: one configuration. */
static void run_one(bool conv4, int k, int mode, result *r)
{
    memset(r, 0, sizeof *r);
    if (backend && metastep_set_backend(backend) != MS_OK)
        return fail(r, "backend");
    const metastep_task *task = NULL;
    if (metastep_load_task(conv4 ? "images" : "sine", &task) != MS_OK)
        return fail(r, "task");
    if (conv4 && (task->configure("ways", "5") != MS_OK || task->configure("query", "15") != MS_OK ||
                  task->configure("filters", "32") != MS_OK))
        return fail(r, "configure");
    const int mb = conv4 ? conv4_batch : sine_batch, shots = conv4 ? 1 : 10;
    const double lr = conv4 ? 0.4 : 0.01;
    ms_container *vars = task->init_variables(1, MS_F32);
    ms_container *batch = vars ? task->sample(mb, shots, 7, MS_F32) : NULL;
    metastep_optimizer adam = metastep_adam(0.9, 0.999, 1e-8);
    metastep_optim_state *opt = metastep_optim_state_new(&adam);
    if (!vars || !batch || !opt)
        return fail(r, "setup");
    double secs[64];
    int n = repeats < 64 ? repeats : 64;
    long long base = ms_live_tensor_bytes();
    ms_reset_peak_tensor_bytes();
    for (int i = 0; i < n; i++) {
        metastep_options o = METASTEP_OPTIONS_DEFAULT;
        o.batched = false;
        o.checkpoint_every = mode;
        metastep_result res;
        double t0 = bench_now();
        ms_scope_push();
        ms_status st = metastep_maml_step(batch, task->inner_cost, task->outer_cost, vars, k, lr,
                                          &o, &res);
        ms_container *next = st == MS_OK ? metastep_optim_step(opt, vars, res.grads, 1e-3, true) : NULL;
        ms_scope_pop();
        secs[i] = bench_now() - t0;
        if (!next) {
            metastep_result_release(&res);
            return fail(r, "meta step");
        }
        r->cost = ms_tensor_item(res.cost);
        metastep_result_release(&res);
        ms_container_release(vars);
        vars = next;
    }
    qsort(secs, (size_t)n, sizeof *secs, bench_cmp_double);
    r->secs = secs[n / 2];
    r->tensor_bytes = ms_peak_tensor_bytes() - base;
    r->rss_kib = bench_peak_rss_kib();
    r->ok = 1;
    ms_container_release(vars);
    ms_container_release(batch);
    metastep_optim_state_release(opt);
}

static result in_child(bool conv4, int k, int mode)
{
    result r;
    memset(&r, 0, sizeof r);
    int fd[2];
    if (pipe(fd) != 0) {
        snprintf(r.msg, sizeof r.msg, "pipe failed");
        return r;
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        result c;
        run_one(conv4, k, mode, &c);
        ssize_t w = write(fd[1], &c, sizeof c);
        _exit(w == (ssize_t)sizeof c ? 0 : 1);
    }
    close(fd[1]);
    ssize_t got = pid > 0 ? read(fd[0], &r, sizeof r) : -1;
    close(fd[0]);
    int status = 0;
    if (pid > 0)
        waitpid(pid, &status, 0);
    if (got != (ssize_t)sizeof r) {
        memset(&r, 0, sizeof r);
        snprintf(r.msg, sizeof r.msg, "child died (status %d%s)", status,
                 WIFSIGNALED(status) ? ", killed: out of memory?" : "");
    }
    return r;
}

int main(int argc, char **argv)
{
    int ks[MAXN] = {1, 5, 10, 25, 50, 100}, nk = 6, modes[MAXN] = {0, -1}, nm = 2;
    bool models[2] = {true, true}, json = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "--smoke")) {
            models[1] = false;
            nk = parse_list("1,3", ks);
            repeats = 1;
            sine_batch = 2;
        } else if (v && !strcmp(a, "--models")) {
            models[0] = strstr(v, "sine") != NULL;
            models[1] = strstr(v, "conv4") != NULL;
            i++;
        } else if (v && !strcmp(a, "--ks")) {
            nk = parse_list(v, ks), i++;
        } else if (v && !strcmp(a, "--modes")) {
            nm = parse_list(v, modes), i++;
        } else if (v && !strcmp(a, "--backend")) {
            backend = v, i++;
        } else if (v && !strcmp(a, "--sine-batch")) {
            sine_batch = atoi(v), i++;
        } else if (v && !strcmp(a, "--conv4-batch")) {
            conv4_batch = atoi(v), i++;
        } else if (v && !strcmp(a, "--repeats")) {
            repeats = atoi(v), i++;
        } else {
            fprintf(stderr, "usage: %s [--models sine,conv4] [--ks 1,5,...] [--modes 0,-1] "
                            "[--backend NAME] [--sine-batch N] [--conv4-batch N] [--repeats N] "
                            "[--json] [--smoke]\n", argv[0]);
            return 2;
        }
    }
    if (repeats < 1)
        repeats = 1;
    int bad = 0;
    if (json)
        printf("[\n");
    else
        printf("%-6s %5s %-12s %12s %12s %16s %14s\n", "model", "k", "mode", "s/step",
               "peak RSS MiB", "step tensor MiB", "cost");
    bool first = true;
    for (int m = 0; m < 2; m++) {
        if (!models[m])
            continue;
        for (int i = 0; i < nk; i++)
            for (int j = 0; j < nm; j++) {
                result r = in_child(m == 1, ks[i], modes[j]);
                char mode[32];
                if (modes[j] == 0)
                    snprintf(mode, sizeof mode, "unrolled");
                else if (modes[j] < 0)
                    snprintf(mode, sizeof mode, "ckpt %d", (int)ceil(sqrt((double)ks[i])));
                else
                    snprintf(mode, sizeof mode, "ckpt %d", modes[j]);
                const char *model = m ? "conv4" : "sine";
                if (json) {
                    printf("%s  {\"model\": \"%s\", \"k\": %d, \"checkpoint_every\": %d, \"ok\": %s, "
                           "\"seconds_per_step\": %.6g, \"peak_rss_kib\": %ld, "
                           "\"step_tensor_bytes\": %lld, \"cost\": %.9g, \"error\": \"%s\"}",
                           first ? "" : ",\n", model, ks[i], modes[j], r.ok ? "true" : "false",
                           r.secs, r.rss_kib, r.tensor_bytes, r.cost, r.ok ? "" : r.msg);
                } else if (r.ok) {
                    printf("%-6s %5d %-12s %12.4f %12.1f %16.1f %14.7g\n", model, ks[i], mode,
                           r.secs, r.rss_kib / 1024.0, r.tensor_bytes / 1048576.0, r.cost);
                } else {
                    printf("%-6s %5d %-12s failed: %s\n", model, ks[i], mode, r.msg);
                }
                fflush(stdout);
                first = false;
                bad += !r.ok;
            }
    }
    if (json)
        printf("\n]\n");
    return bad ? 1 : 0;
}
