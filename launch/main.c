/* ferry: entry point and subcommand table. */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "launch/commands.h"

typedef struct {
  const char *name;
  int (*run)(int argc, char **argv);
  void (*help)(void);
  const char *summary;
} command;

static const command commands[] = {
    {"train", cmd_train, cmd_train_help, "train a model on one dataset (data-parallel under mpirun)"},
    {"ckpt", cmd_ckpt, cmd_ckpt_help, "inspect, verify or export a checkpoint file"},
    {"report", cmd_report, cmd_report_help, "summarise a transfer run (tables, negative transfer, plots)"},
};
#define NCOMMANDS ((int)(sizeof commands / sizeof commands[0]))

static void usage(FILE *f) {
  fprintf(f,
          "ferry %s: distributed training for transfer learning\n"
          "\n"
          "usage: ferry COMMAND [ARGS]        (under MPI: mpirun -np N ferry COMMAND ...)\n"
          "       ferry COMMAND --help\n"
          "       ferry --version\n"
          "\n"
          "commands:\n",
          FERRY_VERSION);
  for (int i = 0; i < NCOMMANDS; i++) fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
  fprintf(f,
          "\n"
          "exit codes: 0 success, 1 runtime error (I/O, divergence, MPI), 2 usage error\n"
          "            (bad arguments, bad experiment file, bad data file), 3 stopped by\n"
          "            SIGTERM/SIGUSR1 after writing a checkpoint (continue with --resume)\n"
          "environment: OPENBLAS_NUM_THREADS (BLAS threads per rank; train.threads overrides),\n"
          "             FERRY_DEBUG=1 (print where an error was raised)\n"
          "experiment file format: docs/experiment-format.md, or `ferry train --help`\n");
}

int main(int argc, char **argv) {
  /* A file-size limit (ulimit -f) must fail a write with EFBIG, which the
   * checkpoint writer reports, rather than kill the process. */
  signal(SIGXFSZ, SIG_IGN);
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    if (argc >= 3)
      for (int i = 0; i < NCOMMANDS; i++)
        if (!strcmp(argv[2], commands[i].name)) {
          commands[i].help();
          return 0;
        }
    usage(stdout);
    return 0;
  }
  if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
    printf("ferry %s\n", FERRY_VERSION);
    return 0;
  }
  for (int i = 0; i < NCOMMANDS; i++)
    if (!strcmp(cmd, commands[i].name)) return commands[i].run(argc - 2, argv + 2);
  fprintf(stderr, "ferry: unknown command \"%s\"\n\n", cmd);
  usage(stderr);
  return 2;
}
