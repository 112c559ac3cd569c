/* Experiment files: YAML text plus `--set KEY=VALUE` overrides, parsed into a
 * validated exp_experiment. One table of keys drives parsing, validation and
 * the printed reference, so `ferry train --help` cannot drift from the parser.
 * The format is documented in docs/experiment-format.md. */
#ifndef FERRY_LAUNCH_CONFIG_H
#define FERRY_LAUNCH_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "train/experiment.h"

/* Resets *e with exp_defaults(), parses the YAML file at path, applies the
 * overrides sets[0..nsets) in order ("a.b.c=VALUE", VALUE read as YAML, e.g.
 * "train.optimizer.lr=0.1", "data.classes=[5,6,7]",
 * "train.optimizer={name: adamw, lr: 0.001}"; missing maps on the path are
 * created; a sequence element is addressed by its index, "model.trunk.3.dense=64"),
 * then converts and validates everything into *e and sets e->text_path = path.
 * Returns 0, or FERRY_EUSER with one message naming the file:line:col (or the
 * --set argument), the key path, what was expected and what was found;
 * FERRY_ERUNTIME only when memory runs out. On failure *e holds a partial
 * result and must not be used. Not collective: every rank calls it. */
int cfg_load(exp_experiment *e, const char *path, const char *const *sets, int nsets);

/* As cfg_load, from the NUL-terminated yaml_text held in memory; name is
 * what messages call the text (and what e->text_path is set to). */
int cfg_load_string(exp_experiment *e, const char *yaml_text, const char *name,
                    const char *const *sets, int nsets);

/* 64-bit hash (FNV-1a, each piece length-prefixed) of the experiment text and
 * the overrides in order: the same file with the same --set arguments hashes
 * the same on every rank and every run. checkpoint.resume overrides are left
 * out: where a run resumes from does not change what it computes. Pure. */
uint64_t cfg_text_hash(const char *text, size_t len, const char *const *sets, int nsets);

/* cfg_text_hash of the file at path. Returns 0, or FERRY_EUSER naming the path
 * when it cannot be read. Not collective. */
int cfg_file_hash(uint64_t *hash, const char *path, const char *const *sets, int nsets);

/* Prints every key the parser accepts, one per line: full key path (at column
 * 0), type and range, default, meaning; then every layer op and transform with
 * its parameters. Lines that are not keys start with '#' or a space. */
void cfg_print_reference(FILE *f);

#endif
