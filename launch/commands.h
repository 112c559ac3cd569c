/* Subcommands of the ferry program. Each takes argc/argv after the command
 * name and returns the process exit code (0 ok, 1 runtime error, 2 usage). */
#ifndef FERRY_LAUNCH_COMMANDS_H
#define FERRY_LAUNCH_COMMANDS_H

int cmd_train(int argc, char **argv);
void cmd_train_help(void);
int cmd_ckpt(int argc, char **argv);
void cmd_ckpt_help(void);
int cmd_report(int argc, char **argv);
void cmd_report_help(void);
/* Prints "[rank N] ferry: error: MSG" (and the trace when FERRY_DEBUG is set). */
void launch_print_error(int rank);

#endif
