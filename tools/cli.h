/* Subcommands of the metastep command. */
#ifndef METASTEP_TOOLS_CLI_H
#define METASTEP_TOOLS_CLI_H

int cmd_backends(int argc, char **argv);
int cmd_conformance(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);

#endif
