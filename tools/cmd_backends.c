/* metastep backends: what is installed, and what each backend serves itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metastep/backend.h"
#include "metastep/metastep.h"
#include "cli.h"
#include "util.h"

typedef struct listing {
    bool json;
    int n, failed;
    int threads; /* the --threads N of metastep train whose effect is shown */
} listing;

/* How a backend threads: its kernels must be thread-safe (backend.h; every
 * backend declares it by being loadable, and `metastep conformance` checks it
 * with concurrent calls); the ABI 1.2 set_num_threads slot says that they also
 * thread internally, and the count they use now (asked by setting 1 and
 * restoring what it returned). */
static int internal_threads(const ms_backend *b)
{
    if (!MS_BACKEND_HAS_SLOT(b, set_num_threads) || !b->set_num_threads)
        return 0;
    int now = b->set_num_threads(1);
    if (now > 1)
        b->set_num_threads(now);
    return now > 0 ? now : 1;
}

/* What metastep train --threads N does with a backend: unbatched steps run
 * up to N tasks at once, each kernel on 1 thread (the worker pool sets it);
 * batched steps and the held-out evaluation run one at a time with N kernel
 * threads when the backend threads internally, else on one thread. */
static void threads_text(const listing *l, int internal)
{
    printf("  threads:     thread-safe kernels (every backend's must be); ");
    if (internal)
        printf("threaded inside (set_num_threads), %d thread%s now\n", internal,
               internal == 1 ? "" : "s");
    else
        printf("not threaded inside\n");
    printf("  train --threads %d: unbatched steps up to %d task%s at once x 1 kernel thread; "
           "batched steps and evaluation 1 x %d\n", l->threads, l->threads,
           l->threads == 1 ? "" : "s", internal ? l->threads : 1);
}

static void threads_json(const listing *l, int internal)
{
    printf(", \"threads\": {\"thread_safe\": true, \"internal\": %s, \"internal_now\": %d, "
           "\"train_threads\": %d, \"unbatched\": {\"tasks\": %d, \"kernel_threads\": 1}, "
           "\"batched\": {\"tasks\": 1, \"kernel_threads\": %d}}",
           internal ? "true" : "false", internal ? internal : 1, l->threads, l->threads,
           internal ? l->threads : 1);
}

/* A slot is native when the table has it non-NULL (a kernel may still
 * decline some dtypes at run time; those calls are counted as fallbacks). */
static void kernel_slots(const ms_backend *b, bool native[MS_KERNEL_COUNT])
{
    const void *slots[MS_KERNEL_COUNT] = {
        (const void *)b->unary, (const void *)b->binary, (const void *)b->reduce,
        (const void *)b->gemm,  (const void *)b->copy,   (const void *)b->softmax,
        (const void *)b->fill,  (const void *)b->arange, (const void *)b->where,
        /* ABI 1.1: absent from a 1.0 table, which is shorter */
        MS_BACKEND_HAS_SLOT(b, conv2d) ? (const void *)b->conv2d : NULL,
        MS_BACKEND_HAS_SLOT(b, conv2d_backward_data) ? (const void *)b->conv2d_backward_data
                                                     : NULL,
        MS_BACKEND_HAS_SLOT(b, conv2d_backward_weights)
            ? (const void *)b->conv2d_backward_weights : NULL};
    for (int k = 0; k < MS_KERNEL_COUNT; k++)
        native[k] = slots[k] != NULL;
}

static void show(const char *name, const char *path, void *user)
{
    listing *l = user;
    const ms_backend *b = NULL;
    ms_clear_error();
    ms_status st = metastep_load_backend(path, &b);
    const char *msg = NULL;
    ms_last_error(&msg);
    bool native[MS_KERNEL_COUNT] = {false};
    int internal = 0;
    if (st == MS_OK) {
        kernel_slots(b, native);
        internal = internal_threads(b);
    }
    else
        l->failed++;
    if (l->json) {
        printf("%s\n  {\"name\": ", l->n ? "," : "");
        util_json_string(stdout, name);
        printf(", \"file\": ");
        util_json_string(stdout, path);
        if (st == MS_OK) {
            printf(", \"description\": ");
            util_json_string(stdout, b->header.description);
            printf(", \"abi\": \"%u.%u\", \"native\": [", b->header.abi_major,
                   b->header.abi_minor);
            int c = 0;
            for (int k = 0; k < MS_KERNEL_COUNT; k++)
                if (native[k])
                    printf("%s\"%s\"", c++ ? ", " : "", ms_kernel_name((ms_kernel)k));
            printf("], \"fallback\": [");
            c = 0;
            for (int k = 0; k < MS_KERNEL_COUNT; k++)
                if (!native[k])
                    printf("%s\"%s\"", c++ ? ", " : "", ms_kernel_name((ms_kernel)k));
            printf("]");
            threads_json(l, internal);
            printf("}");
        } else {
            printf(", \"error\": ");
            util_json_string(stdout, msg);
            printf("}");
        }
    } else {
        printf("%s\n  file:        %s\n", name, path);
        if (st == MS_OK) {
            printf("  description: %s\n  abi:         %u.%u\n  native:     ",
                   b->header.description, b->header.abi_major, b->header.abi_minor);
            for (int k = 0; k < MS_KERNEL_COUNT; k++)
                if (native[k])
                    printf(" %s", ms_kernel_name((ms_kernel)k));
            printf("\n  via ref:    ");
            int c = 0;
            for (int k = 0; k < MS_KERNEL_COUNT; k++)
                if (!native[k])
                    printf(" %s", ms_kernel_name((ms_kernel)k)), c++;
            printf("%s\n", c ? "" : " (none)");
            threads_text(l, internal);
        } else {
            printf("  refused:     %s\n", msg);
        }
    }
    l->n++;
}

typedef struct backends_opts {
    bool json, help;
    int threads;
} backends_opts;

static bool backends_opt(void *user, int id, const char *value)
{
    backends_opts *o = user;
    if (id == 'j')
        o->json = true;
    else if (id == 'h')
        o->help = true;
    else if (id == 't')
        return util_int(value, 1, 1024, &o->threads);
    else
        return false;
    return true;
}

int cmd_backends(int argc, char **argv)
{
    listing l = {false, 0, 0, 1};
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    backends_opts o = {false, false, cores > 1 ? (int)(cores < 1024 ? cores : 1024) : 1};
    if (util_parse_options("backends", argc, argv, opts, backends_opt, NULL, &o) != 0)
        return 2;
    if (o.help) {
        printf("usage: metastep backends [--json] [--threads N]\n\n"
               "Lists every backend on the search path with its description, file, ABI\n"
               "version, the kernel families it serves natively (the rest are served\n"
               "by the reference backend), whether its kernels thread internally (and\n"
               "with how many threads now), and the threads metastep train --threads N\n"
               "gives it: unbatched steps run N tasks at once with 1 kernel thread each;\n"
               "batched steps and the evaluation run one at a time with N kernel threads\n"
               "(1 for a backend that does not thread).  Every backend's kernels must be\n"
               "thread-safe (metastep conformance checks it).  Exits 1 when the default\n"
               "backend (METASTEP_BACKEND, else ref) cannot be loaded.\n"
               "\n"
               "  --json       print the list as JSON\n"
               "  --threads N  the metastep train --threads whose effect is shown [cores online]\n"
               "  --help       this text\n");
        return 0;
    }
    l.json = o.json;
    l.threads = o.threads;
    if (l.json)
        printf("{\"backends\": [");
    metastep_list_backends(show, &l);
    ms_clear_error();
    const char *def = metastep_current_backend();
    const char *msg = NULL;
    ms_last_error(&msg);
    char dirs[4096];
    metastep_backend_search_path(dirs, sizeof dirs);
    if (l.json) {
        printf("\n], \"default\": ");
        if (def)
            util_json_string(stdout, def);
        else
            printf("null");
        printf(", \"search_path\": ");
        util_json_string(stdout, dirs);
        printf("}\n");
    } else {
        printf("\nsearch path: %s\n", dirs);
        if (def)
            printf("default:     %s\n", def);
    }
    if (!def) {
        fprintf(stderr, "metastep backends: the default backend cannot be loaded: %s\n", msg);
        return 1;
    }
    return 0;
}
