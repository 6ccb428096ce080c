/* Subcommands of the metastep command. */
#ifndef METASTEP_TOOLS_CLI_H
#define METASTEP_TOOLS_CLI_H

int cmd_backends(int argc, char **argv);

#endif
