/* `ferry ckpt inspect FILE [--json]`, `ferry ckpt verify FILE` and `ferry
 * ckpt export FILE DIR`: read a checkpoint without training (no MPI
 * start-up). Each verifies every record first; a file that fails exits 1
 * with the reason and byte offset. */
#include <stdio.h>
#include <string.h>

#include "launch/commands.h"
#include "launch/report_io.h"
#include "nn/err.h"
#include "train/ckpt.h"

void cmd_ckpt_help(void) {
  printf(
      "usage: ferry ckpt inspect FILE [--json]\n"
      "       ferry ckpt verify FILE\n"
      "       ferry ckpt export FILE DIR\n"
      "\n"
      "Reads a checkpoint written by `ferry train` (files DIR/ckpt-<step>.ferry).\n"
      "Opening one checks the magic, the format version, the CRC-32 of every\n"
      "record, the tensor index against the stored model spec and the END record;\n"
      "a checkpoint is pure data and reading one never runs code.\n"
      "\n"
      "  inspect FILE   print step, data cursor, seed, optimizer, provenance (ferry\n"
      "                 version, save time, world size, datasets), the model spec and\n"
      "                 every tensor with its shape and L2 norm\n"
      "     --json      the same as one JSON document\n"
      "  verify FILE    print \"ok: ...\" if the file is intact\n"
      "  export FILE DIR  write every tensor to DIR/<name>.f32 (raw little-endian\n"
      "                 float32, row-major) and DIR/manifest.json (name, shape, role,\n"
      "                 file of each): the weights for NumPy or PyTorch, e.g.\n"
      "                 numpy.fromfile(DIR + \"/trunk.conv1.W.f32\", \"<f4\").reshape(shape)\n"
      "\n"
      "exit codes: 0 ok, 1 the file is missing, unreadable, corrupt or truncated\n"
      "            (the message says why and at which byte), 2 usage error.\n"
      "format: docs/checkpoint-format.md\n");
}

static int usage_error(const char *why) {
  fprintf(stderr, "ferry ckpt: %s\n\n", why);
  fprintf(stderr, "usage: ferry ckpt inspect FILE [--json]\n       ferry ckpt verify FILE\n"
                  "       ferry ckpt export FILE DIR\n       ferry ckpt --help\n");
  return 2;
}

static int open_or_report(ckpt_file **f, const char *path) {
  if (ckpt_open(f, path) == 0) return 0;
  launch_print_error(0);
  return 1;
}

static int run_verify(const char *path) {
  ckpt_file *f = NULL;
  if (open_or_report(&f, path)) return 1;
  const ckpt_meta *m = ckpt_meta_of(f);
  printf("ok: %s: format %u, step %lld, %d tensors, %zu bytes, every CRC-32 verified\n", path,
         CKPT_FORMAT_VERSION, (long long)m->step, ckpt_ntensors(f), ckpt_file_bytes(f));
  ckpt_close(&f);
  return 0;
}

static int run_export(const char *path, const char *dir) {
  ckpt_file *f = NULL;
  if (open_or_report(&f, path)) return 1;
  int rc = io_mkdirs(dir);
  if (!rc) rc = ckpt_export(f, dir);
  if (!rc) printf("exported %d tensors of %s to %s (manifest.json)\n", ckpt_ntensors(f), path, dir);
  ckpt_close(&f);
  if (rc) launch_print_error(0);
  return rc ? 1 : 0;
}

static int run_inspect(const char *path, int json) {
  ckpt_file *f = NULL;
  if (open_or_report(&f, path)) return 1;
  int rc = ckpt_print(f, stdout, json);
  ckpt_close(&f);
  if (rc) launch_print_error(0);
  return rc ? 1 : 0;
}

int cmd_ckpt(int argc, char **argv) {
  for (int i = 0; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      cmd_ckpt_help();
      return 0;
    }
  if (argc < 1) return usage_error("missing subcommand (inspect, verify or export)");
  const char *sub = argv[0], *file = NULL;
  int json = 0;
  int is_inspect = !strcmp(sub, "inspect"), is_verify = !strcmp(sub, "verify");
  if (!strcmp(sub, "export")) {
    if (argc != 3 || argv[1][0] == '-' || argv[2][0] == '-')
      return usage_error("export wants FILE and DIR");
    return run_export(argv[1], argv[2]);
  }
  if (!is_inspect && !is_verify) {
    char msg[128];
    snprintf(msg, sizeof msg, "unknown subcommand \"%.60s\" (expected inspect, verify or export)", sub);
    return usage_error(msg);
  }
  for (int i = 1; i < argc; i++) {
    if (is_inspect && !strcmp(argv[i], "--json")) {
      json = 1;
    } else if (argv[i][0] == '-' && argv[i][1]) {
      char msg[128];
      snprintf(msg, sizeof msg, "unknown option \"%.60s\" for ckpt %s", argv[i], sub);
      return usage_error(msg);
    } else if (file) {
      return usage_error("expected exactly one FILE");
    } else {
      file = argv[i];
    }
  }
  if (!file) return usage_error("missing FILE");
  return is_inspect ? run_inspect(file, json) : run_verify(file);
}
