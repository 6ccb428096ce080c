/* metastep — the command: backends, conformance, train, eval. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: metastep COMMAND [OPTIONS]\n"
            "\n"
            "commands:\n"
            "  backends [--json]    list the backends found, their files, ABI versions and\n"
            "                       which kernels each serves natively\n"
            "  conformance --backend NAME|PATH [--quiet]\n"
            "                       check a backend's kernels against the reference\n"
            "  train --task NAME [--algo maml|fomaml|reptile] [...]\n"
            "                       meta-train a task plugin's model (plots, log, params)\n"
            "  eval --task NAME --params FILE\n"
            "                       held-out losses of saved meta-parameters\n"
            "\n"
            "Run 'metastep COMMAND --help' for a command's options.\n"
            "Environment: METASTEP_BACKEND (default backend), METASTEP_BACKEND_PATH\n"
            "(colon-separated directories searched first for backends), METASTEP_PLUGIN_PATH\n"
            "(the same for task plugins).\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "backends") == 0)
        return cmd_backends(argc - 1, argv + 1);
    if (strcmp(cmd, "train") == 0)
        return cmd_train(argc - 1, argv + 1);
    if (strcmp(cmd, "eval") == 0)
        return cmd_eval(argc - 1, argv + 1);
    if (strcmp(cmd, "conformance") == 0)
        return cmd_conformance(argc - 1, argv + 1);
    fprintf(stderr, "metastep: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}
