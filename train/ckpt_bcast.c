/* ckpt_open_bcast: rank 0 reads the checkpoint file, broadcasts its status
 * and length, then the bytes in pieces; every rank verifies and parses its
 * copy. Ranks other than 0 never touch the file system, so a checkpoint on a
 * node-local disk restores a multi-node job. Every step that can fail on one
 * rank is followed by an agreement, so no rank is left waiting in a
 * collective. */
#include <stdlib.h>
#include <string.h>

#include "nn/err.h"
#include "train/ckpt_impl.h"

#define BCAST_PIECE ((size_t)64 << 20)

/* Makes every rank's status the worst one; ranks that did not fail get a
 * message naming the rank that did. */
static int agree(const dist_comm *c, int rc, const char *path, const char *what) {
  int first = -1;
  int all = dist_agree(c, rc, &first);
  if (all && !rc)
    return ferry_err_set(all, __FILE__, __LINE__, __func__,
                         "checkpoint %s: rank %d failed %s (see its message)", path, first, what);
  return all;
}

int ckpt_open_bcast(ckpt_file **out, const char *path, const dist_comm *c) {
  *out = NULL;
  unsigned char *buf = NULL;
  size_t len = 0;
  int rc = 0, mapped = 0;
  if (c->rank == 0) rc = ckpt_read_file(path, &buf, &len, &mapped);
  /* Status and length travel together: a rank-0 read failure ends here on
   * every rank. */
  uint64_t head[2] = {(uint64_t)rc, (uint64_t)len};
  CHECK_CALL(dist_bcast(c, head, sizeof head, 0));
  if (head[0] != 0) {
    CHECK_CALL(rc);
    FERRY_FAIL((int)head[0], "checkpoint %s: rank 0 could not read it (see its message)", path);
  }
  len = (size_t)head[1];
  if (c->rank != 0) {
    buf = malloc(len ? len : 1);
    rc = buf ? 0
             : ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                             "checkpoint %s: out of memory for %zu bytes on rank %d", path, len,
                             c->rank);
  }
  rc = agree(c, rc, path, "to allocate the receive buffer");
  if (rc) {
    ckpt_buf_release(buf, len, mapped);
    CHECK_CALL(rc);
  }
  for (size_t off = 0; off < len; off += BCAST_PIECE) {
    size_t k = len - off < BCAST_PIECE ? len - off : BCAST_PIECE;
    rc = dist_bcast(c, buf + off, k, 0);
    if (rc) {
      ckpt_buf_release(buf, len, mapped);
      CHECK_CALL(rc);
    }
  }
  rc = ckpt_parse_owned(out, buf, len, mapped, path);
  rc = agree(c, rc, path, "to verify it");
  if (rc) {
    ckpt_close(out);
    CHECK_CALL(rc);
  }
  return 0;
}
