/* metastep conformance: check a backend's kernels, ops and gradients against
 * the reference backend (the engine is conformance/conformance.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "util.h"
#include "conformance.h"

static void conformance_usage(FILE *f)
{
    fprintf(f,
            "usage: metastep conformance --backend NAME|PATH [--family NAME]... [--quiet]\n"
            "\n"
            "Runs every kernel of the backend (a name found on the backend search path, or\n"
            "a path to a .so) on seeded inputs over a sweep of shapes and compares it with\n"
            "the reference backend; then every op of ops.h end to end, and the gradients of\n"
            "the differentiable ones.  Prints one row per kernel (family/op/dtype): cases,\n"
            "worst relative error, its tolerance, whether the backend served the kernel or\n"
            "fell back to the reference, and the result.  Exit status 1 when a kernel fails.\n"
            "\n"
            "  --backend NAME|PATH  the backend to check\n"
            "  --family NAME        run only this family (repeatable): unary, binary, reduce,\n"
            "                       gemm, copy, softmax, fill, arange, where, ops, grad,\n"
            "                       gradcheck, threads, conv\n"
            "  --quiet, -q          print only the failing rows and the summary\n"
            "  --help               this text\n");
}

typedef struct conf_opts {
    const char *backend;
    const char **families;
    int nfam;
    bool quiet, help;
} conf_opts;

static bool conformance_opt(void *user, int id, const char *value)
{
    conf_opts *o = user;
    switch (id) {
    case 'b': o->backend = value; return true;
    case 'f': o->families[o->nfam++] = value; return true;
    case 'q': o->quiet = true; return true;
    case 'h': o->help = true; return true;
    default: return false;
    }
}

int cmd_conformance(int argc, char **argv)
{
    static const struct option opts[] = {
        {"backend", required_argument, NULL, 'b'}, {"family", required_argument, NULL, 'f'},
        {"quiet", no_argument, NULL, 'q'}, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    const char **families = calloc((size_t)argc + 1, sizeof *families);
    if (!families) {
        fprintf(stderr, "metastep conformance: out of memory\n");
        return 2;
    }
    conf_opts o = {.families = families};
    if (util_parse_options("conformance", argc, argv, opts, conformance_opt, NULL, &o) != 0) {
        free(families);
        return 2;
    }
    if (o.help) {
        conformance_usage(stdout);
        free(families);
        return 0;
    }
    const char *backend = o.backend;
    bool quiet = o.quiet;
    int nfam = o.nfam;
    if (!backend) {
        fprintf(stderr, "metastep conformance: --backend is required\n\n");
        conformance_usage(stderr);
        free(families);
        return 2;
    }
    for (int f = 0; f < nfam; f++) {
        int k = 0;
        while (k < conf_family_count && strcmp(conf_families[k], families[f]) != 0)
            k++;
        if (k == conf_family_count) {
            fprintf(stderr, "metastep conformance: unknown family '%s'\n", families[f]);
            free(families);
            return 2;
        }
    }
    conf_report *r = conf_run(backend, nfam ? families : NULL);
    free(families);
    if (!r) {
        fprintf(stderr, "metastep conformance: out of memory\n");
        return 2;
    }
    conf_print(stdout, r, quiet);
    int status = r->error[0] && !r->nrows ? 2 : conf_failures(r) ? 1 : 0;
    if (r->error[0])
        fprintf(stderr, "metastep conformance: %s\n", r->error);
    for (int i = 0; i < r->nrows; i++)
        if (r->rows[i].failed)
            fprintf(stderr, "metastep conformance: %s FAILED: %s\n", r->rows[i].kernel,
                    r->rows[i].first_failure);
    conf_free(r);
    return status;
}
