/* metastep conformance: check a backend's kernels, ops and gradients against
 * the reference backend (the engine is conformance/conformance.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
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
            "  --quiet              print only the failing rows and the summary\n");
}

int cmd_conformance(int argc, char **argv)
{
    const char *backend = NULL;
    bool quiet = false;
    const char **families = calloc((size_t)argc + 1, sizeof *families);
    int nfam = 0;
    if (!families) {
        fprintf(stderr, "metastep conformance: out of memory\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            conformance_usage(stdout);
            free(families);
            return 0;
        } else if (strcmp(a, "--quiet") == 0 || strcmp(a, "-q") == 0) {
            quiet = true;
        } else if ((strcmp(a, "--backend") == 0 || strcmp(a, "--family") == 0) && i + 1 < argc) {
            if (a[2] == 'b')
                backend = argv[++i];
            else
                families[nfam++] = argv[++i];
        } else if (strncmp(a, "--backend=", 10) == 0) {
            backend = a + 10;
        } else if (strncmp(a, "--family=", 9) == 0) {
            families[nfam++] = a + 9;
        } else {
            fprintf(stderr, "metastep conformance: unexpected argument '%s'\n\n", a);
            conformance_usage(stderr);
            free(families);
            return 2;
        }
    }
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
