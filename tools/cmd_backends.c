/* metastep backends: what is installed, and what each backend serves itself. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metastep/backend.h"
#include "metastep/metastep.h"
#include "cli.h"
#include "util.h"

typedef struct listing {
    bool json;
    int n, failed;
} listing;

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
    if (st == MS_OK)
        kernel_slots(b, native);
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
            printf("]}");
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
        } else {
            printf("  refused:     %s\n", msg);
        }
    }
    l->n++;
}

typedef struct backends_opts {
    bool json, help;
} backends_opts;

static bool backends_opt(void *user, int id, const char *value)
{
    (void)value;
    backends_opts *o = user;
    if (id == 'j')
        o->json = true;
    else if (id == 'h')
        o->help = true;
    else
        return false;
    return true;
}

int cmd_backends(int argc, char **argv)
{
    listing l = {false, 0, 0};
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    backends_opts o = {false, false};
    if (util_parse_options("backends", argc, argv, opts, backends_opt, NULL, &o) != 0)
        return 2;
    if (o.help) {
        printf("usage: metastep backends [--json]\n\n"
               "Lists every backend on the search path with its description, file, ABI\n"
               "version and the kernel families it serves natively (the rest are served\n"
               "by the reference backend).  Exits 1 when the default backend\n"
               "(METASTEP_BACKEND, else ref) cannot be loaded.\n"
               "\n"
               "  --json  print the list as JSON\n"
               "  --help  this text\n");
        return 0;
    }
    l.json = o.json;
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
