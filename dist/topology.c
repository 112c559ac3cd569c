/* The start-up layout behind dist/topology.h: rank 0 gathers each rank's
 * processor name, online cores and BLAS threads, groups ranks by host and
 * says which MPI transport was requested (OMPI_MCA_* variables) or, failing
 * that, which one Open MPI picks by default for this layout. */
#include "topology.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nn/err.h"

#define LIST_HOSTS 8 /* hosts named in the line; more are counted, not named */

typedef struct {
  char name[MPI_MAX_PROCESSOR_NAME];
  int cores;   /* online processors, as the host reports them */
  int threads; /* BLAS threads of that rank */
} rank_info;

typedef struct {
  const char *name;
  int ranks, cores, threads; /* threads: the most any rank on the host uses */
} host_info;

/* Appends to buf (capacity n) at *len; output that does not fit is cut. */
__attribute__((format(printf, 4, 5))) static void append(char *buf, size_t n, size_t *len,
                                                          const char *fmt, ...) {
  if (*len + 1 >= n) return;
  va_list ap;
  va_start(ap, fmt);
  int k = vsnprintf(buf + *len, n - *len, fmt, ap);
  va_end(ap);
  if (k > 0) *len = *len + (size_t)k < n ? *len + (size_t)k : n - 1;
}

/* Ranks grouped by processor name, in order of first appearance (so rank 0's
 * host comes first). hosts has room for nranks entries; returns the count. */
static int group_hosts(const rank_info *ranks, int nranks, host_info *hosts) {
  int nh = 0;
  for (int r = 0; r < nranks; r++) {
    int h = 0;
    while (h < nh && strcmp(hosts[h].name, ranks[r].name)) h++;
    if (h == nh) hosts[nh++] = (host_info){.name = ranks[r].name};
    hosts[h].ranks++;
    if (ranks[r].cores > hosts[h].cores) hosts[h].cores = ranks[r].cores;
    if (ranks[r].threads > hosts[h].threads) hosts[h].threads = ranks[r].threads;
  }
  return nh;
}

/* What carries messages between ranks. Open MPI passes --mca settings of
 * mpirun to its ranks as OMPI_MCA_* variables, and a user may set them
 * directly (srun, sbatch), so those are what was *requested*; without them
 * the default is *inferred* from the layout (ob1 with the vader shared-memory
 * btl on one host, tcp between hosts on a network without InfiniBand). */
static void describe_transport(int nranks, int nhosts, char *buf, size_t n, size_t *len) {
  char lib[MPI_MAX_LIBRARY_VERSION_STRING] = "";
  int liblen = 0;
  MPI_Get_library_version(lib, &liblen);
  lib[strcspn(lib, ",\n")] = '\0';
  if (nranks == 1) {
    append(buf, n, len, "transport none (one rank)");
    return;
  }
  if (!strstr(lib, "Open MPI")) {
    append(buf, n, len, "transport not known (%.60s)", lib);
    return;
  }
  const char *pml = getenv("OMPI_MCA_pml"), *btl = getenv("OMPI_MCA_btl");
  const char *tcp_if = getenv("OMPI_MCA_btl_tcp_if_include");
  if (pml && pml[0] && strcmp(pml, "ob1")) {
    append(buf, n, len, "transport pml %s (requested: OMPI_MCA_pml)", pml);
  } else if (btl && btl[0]) {
    append(buf, n, len, "transport btl %s (requested: OMPI_MCA_btl)", btl);
  } else if (nhosts == 1) {
    append(buf, n, len, "transport shared memory (inferred: one host, Open MPI's vader btl)");
  } else {
    append(buf, n, len, "transport tcp between hosts, shared memory within one (inferred: "
                        "Open MPI's default btls)");
  }
  if (tcp_if && tcp_if[0]) append(buf, n, len, ", tcp on %s", tcp_if);
}

static void describe(const rank_info *ranks, int nranks, const host_info *hosts, int nh,
                     dist_topology *out) {
  size_t len = 0;
  int threads = 0, mixed = 0;
  for (int r = 0; r < nranks; r++) {
    if (r > 0 && ranks[r].threads != threads) mixed = 1;
    if (ranks[r].threads > threads) threads = ranks[r].threads;
  }
  append(out->line, sizeof out->line, &len, "%d rank%s on %d host%s (", nranks,
         nranks == 1 ? "" : "s", nh, nh == 1 ? "" : "s");
  for (int h = 0; h < nh && h < LIST_HOSTS; h++)
    append(out->line, sizeof out->line, &len, "%s%s: %d rank%s/%d cores", h ? ", " : "",
           hosts[h].name, hosts[h].ranks, hosts[h].ranks == 1 ? "" : "s", hosts[h].cores);
  if (nh > LIST_HOSTS) append(out->line, sizeof out->line, &len, ", %d more", nh - LIST_HOSTS);
  append(out->line, sizeof out->line, &len, "), %s%d BLAS thread%s per rank, ",
         mixed ? "up to " : "", threads, threads == 1 ? "" : "s");
  describe_transport(nranks, nh, out->line, sizeof out->line, &len);

  size_t wlen = 0;
  for (int h = 0; h < nh; h++) {
    const host_info *x = &hosts[h];
    if (x->ranks > x->cores)
      append(out->warn, sizeof out->warn, &wlen,
             "%sferry: warning: host %s is oversubscribed: %d ranks on %d cores; steps will be slower "
             "(ask the launcher for fewer ranks per node)",
             wlen ? "\n" : "", x->name, x->ranks, x->cores);
    else if ((long)x->ranks * x->threads > x->cores)
      append(out->warn, sizeof out->warn, &wlen,
             "%sferry: warning: host %s: %d ranks x %d BLAS threads exceed its %d cores: set "
             "OPENBLAS_NUM_THREADS=1 (or train.threads: 1)",
             wlen ? "\n" : "", x->name, x->ranks, x->threads, x->cores);
  }
}

int dist_topology_describe(const dist_comm *c, int blas_threads, dist_topology *out) {
  memset(out, 0, sizeof *out);
  rank_info me;
  memset(&me, 0, sizeof me);
  int namelen = 0;
  CHECK_CALL(dist_mpi_check(MPI_Get_processor_name(me.name, &namelen), "MPI_Get_processor_name"));
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  me.cores = cores > 0 ? (int)cores : 1;
  me.threads = blas_threads;
  rank_info *all = NULL;
  host_info *hosts = NULL;
  int rc = 0;
  if (c->rank == 0) {
    all = calloc((size_t)c->size, sizeof *all);
    hosts = calloc((size_t)c->size, sizeof *hosts);
    if (!all || !hosts)
      rc = ferry_err_set(FERRY_ERUNTIME, __FILE__, __LINE__, __func__,
                         "out of memory gathering the layout of %d ranks", c->size);
  }
  /* Every rank takes part in the gather even if rank 0 could not allocate,
   * then all agree on the outcome: no rank is left waiting. */
  int first = -1;
  if (dist_agree(c, rc, &first)) {
    free(all);
    free(hosts);
    return rc ? rc : FERRY_ERUNTIME;
  }
  rc = dist_mpi_check(MPI_Gather(&me, (int)sizeof me, MPI_BYTE, all, (int)sizeof me, MPI_BYTE, 0,
                                 c->comm),
                      "MPI_Gather");
  int counts[2] = {0, 0};
  if (!rc && c->rank == 0) {
    int nh = group_hosts(all, c->size, hosts);
    describe(all, c->size, hosts, nh, out);
    counts[0] = nh;
    for (int h = 0; h < nh; h++)
      if (hosts[h].ranks > counts[1]) counts[1] = hosts[h].ranks;
  }
  free(all);
  free(hosts);
  CHECK_CALL(rc);
  CHECK_CALL(dist_bcast(c, counts, sizeof counts, 0));
  out->nhosts = counts[0];
  out->max_per_host = counts[1];
  return 0;
}
