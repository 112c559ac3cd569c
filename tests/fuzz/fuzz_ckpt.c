/* libFuzzer target: ckpt_open_mem on arbitrary bytes must return a status,
 * never crash, hang or read out of bounds. Each input is tried twice: as is
 * (exercises framing and CRCs) and with every record's CRC recomputed, so
 * mutations reach the header decoder, the spec checks and the chunk walk.
 * Inputs that open are then printed and loaded into fixed models. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fuzz_models.h"
#include "nn/err.h"
#include "train/ckpt.h"

static nn_model *small, *rich;
static nn_optim small_opt, rich_opt;
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  nn_model_spec sp;
  nn_opt_cfg adamw = {.kind = NN_OPT_ADAMW};
  fuzz_spec_small(&sp);
  if (nn_model_new(&small, &sp, 1) || nn_optim_init(&small_opt, &adamw, small->nparams)) abort();
  fuzz_spec_rich(&sp);
  if (nn_model_new(&rich, &sp, 1) || nn_optim_init(&rich_opt, &adamw, rich->nparams)) abort();
  devnull = fopen("/dev/null", "w");
  if (!devnull) abort();
  return 0;
}

/* Rewrites the CRC of every record that fits (little-endian u32/u64). */
static void fix_crcs(uint8_t *b, size_t n) {
  size_t pos = 12;
  while (pos <= n && n - pos >= 16) {
    uint64_t plen = 0;
    for (int i = 0; i < 8; i++) plen |= (uint64_t)b[pos + 4 + i] << (8 * i);
    if (plen > n - pos - 16) return;
    uint32_t crc = (uint32_t)crc32_z(0, b + pos, 12 + (size_t)plen);
    for (int i = 0; i < 4; i++) b[pos + 12 + plen + i] = (uint8_t)(crc >> (8 * i));
    pos += 16 + (size_t)plen;
  }
}

static void exercise(const uint8_t *data, size_t size) {
  ckpt_file *f = NULL;
  if (ckpt_open_mem(&f, data, size, "fuzz") == 0) {
    ckpt_print(f, devnull, 0);
    ckpt_print(f, devnull, 1);
    nn_model *models[2] = {small, rich};
    nn_optim *opts[2] = {&small_opt, &rich_opt};
    for (int i = 0; i < 2; i++) {
      char text[512];
      ckpt_trunk_report rep;
      ckpt_load_model(f, models[i], NULL);
      ferry_err_clear();
      ckpt_load_model(f, models[i], opts[i]);
      ferry_err_clear();
      ckpt_load_trunk(f, models[i], &rep, text, sizeof text);
      ferry_err_clear();
    }
    ckpt_close(&f);
  }
  ferry_err_clear();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  exercise(data, size);
  uint8_t *copy = malloc(size ? size : 1);
  if (!copy) return 0;
  memcpy(copy, data, size);
  fix_crcs(copy, size);
  exercise(copy, size);
  free(copy);
  return 0;
}
