/* mpichunk.c: MPI calls with size_t counts, split into calls of at most cf_mpi_chunk()
 * elements or carried by a derived datatype (see mpichunk.h). */
#include "calmflow/mpichunk.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define CF_GATHER_TAG 32101 /* cf_mpi_gatherv's split path (below the guaranteed MPI_TAG_UB) */
#define STACK_RANKS 256     /* int count/displacement arrays kept on the stack up to this */

static size_t g_chunk; /* 0: not yet decided (the environment is read at the first call) */

size_t cf_mpi_chunk(void) {
  if (g_chunk == 0) {
    size_t c = INT_MAX;
    const char *e = getenv("CF_MPI_CHUNK");
    if (e != NULL && e[0] != '\0') {
      char *end = NULL;
      unsigned long long v = strtoull(e, &end, 10);
      if (end != NULL && *end == '\0' && v >= 1 && v < (unsigned long long)INT_MAX) c = (size_t)v;
    }
    g_chunk = c;
  }
  return g_chunk;
}

void cf_mpi_set_chunk(size_t n) {
  g_chunk = n > (size_t)INT_MAX ? (size_t)INT_MAX : n;
}

static int extent_of(MPI_Datatype t, MPI_Aint *ext) {
  MPI_Aint lb;
  return MPI_Type_get_extent(t, &lb, ext);
}

/* Element o of a buffer of elements of extent ext (NULL stays NULL). */
static void *at(const void *buf, size_t o, MPI_Aint ext) {
  return buf == NULL ? NULL : (char *)buf + o * (size_t)ext;
}

int cf_mpi_allreduce(const void *send, void *recv, size_t n, MPI_Datatype t, MPI_Op op,
                     MPI_Comm comm) {
  const size_t c = cf_mpi_chunk();
  if (n <= c) return MPI_Allreduce(send, recv, (int)n, t, op, comm);
  MPI_Aint ext;
  int e = extent_of(t, &ext);
  for (size_t o = 0; e == MPI_SUCCESS && o < n; o += c) {
    int k = (int)(n - o < c ? n - o : c);
    e = MPI_Allreduce(send == MPI_IN_PLACE ? MPI_IN_PLACE : at(send, o, ext), at(recv, o, ext), k,
                      t, op, comm);
  }
  return e;
}

int cf_mpi_reduce(const void *send, void *recv, size_t n, MPI_Datatype t, MPI_Op op, int root,
                  MPI_Comm comm) {
  const size_t c = cf_mpi_chunk();
  if (n <= c) return MPI_Reduce(send, recv, (int)n, t, op, root, comm);
  MPI_Aint ext;
  int e = extent_of(t, &ext);
  for (size_t o = 0; e == MPI_SUCCESS && o < n; o += c) {
    int k = (int)(n - o < c ? n - o : c);
    e = MPI_Reduce(send == MPI_IN_PLACE ? MPI_IN_PLACE : at(send, o, ext), at(recv, o, ext), k, t,
                   op, root, comm);
  }
  return e;
}

int cf_mpi_bcast(void *buf, size_t n, MPI_Datatype t, int root, MPI_Comm comm) {
  const size_t c = cf_mpi_chunk();
  if (n <= c) return MPI_Bcast(buf, (int)n, t, root, comm);
  MPI_Aint ext;
  int e = extent_of(t, &ext);
  for (size_t o = 0; e == MPI_SUCCESS && o < n; o += c)
    e = MPI_Bcast(at(buf, o, ext), (int)(n - o < c ? n - o : c), t, root, comm);
  return e;
}

/* n elements of t as (type, count): t and n within the limit; else a committed derived type
 * of q blocks of cf_mpi_chunk() elements followed by the rest, count 1 (*made = 1: free it). */
static int big_type(size_t n, MPI_Datatype t, MPI_Datatype *bt, int *cnt, int *made) {
  const size_t c = cf_mpi_chunk();
  *made = 0;
  *bt = t;
  *cnt = (int)(n <= c ? n : 0);
  if (n <= c) return MPI_SUCCESS;
  const size_t q = n / c, r = n % c;
  if (q > (size_t)INT_MAX) return MPI_ERR_COUNT;
  MPI_Aint ext;
  int e = extent_of(t, &ext);
  MPI_Datatype block = MPI_DATATYPE_NULL;
  if (e == MPI_SUCCESS) e = MPI_Type_contiguous((int)c, t, &block);
  if (e == MPI_SUCCESS) {
    int len[2] = {(int)q, (int)r};
    MPI_Aint disp[2] = {0, (MPI_Aint)(q * c) * ext};
    MPI_Datatype parts[2] = {block, t};
    e = MPI_Type_create_struct(r > 0 ? 2 : 1, len, disp, parts, bt);
    MPI_Type_free(&block);
  }
  if (e == MPI_SUCCESS) e = MPI_Type_commit(bt);
  if (e == MPI_SUCCESS) {
    *cnt = 1;
    *made = 1;
  }
  return e;
}

/* Free *bt when big_type made it; keeps the first error. */
static int done_type(int e, MPI_Datatype *bt, int made) {
  int f = made ? MPI_Type_free(bt) : MPI_SUCCESS;
  return e != MPI_SUCCESS ? e : f;
}

int cf_mpi_send(const void *buf, size_t n, MPI_Datatype t, int dest, int tag, MPI_Comm comm) {
  MPI_Datatype bt;
  int cnt, made, e = big_type(n, t, &bt, &cnt, &made);
  if (e == MPI_SUCCESS) e = MPI_Send(buf, cnt, bt, dest, tag, comm);
  return done_type(e, &bt, made);
}

int cf_mpi_recv(void *buf, size_t n, MPI_Datatype t, int src, int tag, MPI_Comm comm) {
  MPI_Datatype bt;
  int cnt, made, e = big_type(n, t, &bt, &cnt, &made);
  if (e == MPI_SUCCESS) e = MPI_Recv(buf, cnt, bt, src, tag, comm, MPI_STATUS_IGNORE);
  return done_type(e, &bt, made);
}

int cf_mpi_isend(const void *buf, size_t n, MPI_Datatype t, int dest, int tag, MPI_Comm comm,
                 MPI_Request *req) {
  MPI_Datatype bt;
  int cnt, made, e = big_type(n, t, &bt, &cnt, &made);
  if (e == MPI_SUCCESS) e = MPI_Isend(buf, cnt, bt, dest, tag, comm, req);
  return done_type(e, &bt, made); /* MPI keeps a freed type alive for the pending request */
}

int cf_mpi_irecv(void *buf, size_t n, MPI_Datatype t, int src, int tag, MPI_Comm comm,
                 MPI_Request *req) {
  MPI_Datatype bt;
  int cnt, made, e = big_type(n, t, &bt, &cnt, &made);
  if (e == MPI_SUCCESS) e = MPI_Irecv(buf, cnt, bt, src, tag, comm, req);
  return done_type(e, &bt, made);
}

int cf_mpi_sendrecv(const void *sbuf, size_t sn, int dest, int stag, void *rbuf, size_t rn, int src,
                    int rtag, MPI_Datatype t, MPI_Comm comm) {
  MPI_Datatype st, rt;
  int sc, rc, smade = 0, rmade = 0;
  int e = big_type(sn, t, &st, &sc, &smade);
  if (e == MPI_SUCCESS) e = big_type(rn, t, &rt, &rc, &rmade);
  if (e == MPI_SUCCESS)
    e = MPI_Sendrecv(sbuf, sc, st, dest, stag, rbuf, rc, rt, src, rtag, comm, MPI_STATUS_IGNORE);
  e = done_type(e, &rt, rmade);
  return done_type(e, &st, smade);
}

/* Copy this rank's n elements into place (not for MPI_IN_PLACE). t must be contiguous. */
static int own_part(const void *send, size_t n, void *dst, MPI_Datatype t, MPI_Aint ext) {
  int sz;
  int e = MPI_Type_size(t, &sz);
  if (e != MPI_SUCCESS) return e;
  if ((MPI_Aint)sz != ext) return MPI_ERR_TYPE;
  if (send != MPI_IN_PLACE && n > 0) memmove(dst, send, n * (size_t)ext);
  return MPI_SUCCESS;
}

/* int copies of counts and displs when all fit the native call (1), else 0. */
static int fit_ints(const int64_t *counts, const int64_t *displs, int size, int *ic, int *id) {
  const size_t c = cf_mpi_chunk();
  for (int r = 0; r < size; r++) {
    if (counts[r] < 0 || displs[r] < 0 || (uint64_t)counts[r] > c || displs[r] > INT_MAX) return 0;
    ic[r] = (int)counts[r];
    id[r] = (int)displs[r];
  }
  return 1;
}

int cf_mpi_allgatherv(const void *send, size_t n, void *recv, const int64_t *counts,
                      const int64_t *displs, MPI_Datatype t, MPI_Comm comm) {
  int size, rank, e = MPI_Comm_size(comm, &size);
  if (e == MPI_SUCCESS) e = MPI_Comm_rank(comm, &rank);
  if (e != MPI_SUCCESS) return e;
  int stack[2 * STACK_RANKS], *ic = stack;
  if (size > STACK_RANKS && (ic = malloc(2 * (size_t)size * sizeof(int))) == NULL)
    return MPI_ERR_NO_MEM;
  int *id = ic + size;
  if (fit_ints(counts, displs, size, ic, id)) {
    e = MPI_Allgatherv(send, (int)n, t, recv, ic, id, t, comm);
  } else {
    MPI_Aint ext;
    e = extent_of(t, &ext);
    if (e == MPI_SUCCESS) e = own_part(send, n, at(recv, (size_t)displs[rank], ext), t, ext);
    for (int r = 0; e == MPI_SUCCESS && r < size; r++)
      e = cf_mpi_bcast(at(recv, (size_t)displs[r], ext), (size_t)counts[r], t, r, comm);
  }
  if (ic != stack) free(ic);
  return e;
}

int cf_mpi_gatherv(const void *send, size_t n, void *recv, const int64_t *counts,
                   const int64_t *displs, MPI_Datatype t, int root, MPI_Comm comm) {
  int size, rank, e = MPI_Comm_size(comm, &size);
  if (e == MPI_SUCCESS) e = MPI_Comm_rank(comm, &rank);
  if (e != MPI_SUCCESS) return e;
  int stack[2 * STACK_RANKS], *ic = stack;
  if (size > STACK_RANKS && (ic = malloc(2 * (size_t)size * sizeof(int))) == NULL)
    return MPI_ERR_NO_MEM;
  int *id = ic + size;
  /* only root knows every count: the ranks agree on the path first */
  int fits = n <= cf_mpi_chunk() && (rank != root || fit_ints(counts, displs, size, ic, id));
  e = MPI_Allreduce(MPI_IN_PLACE, &fits, 1, MPI_INT, MPI_LAND, comm);
  if (e == MPI_SUCCESS && fits) {
    e = MPI_Gatherv(send, (int)n, t, recv, ic, id, t, root, comm);
  } else if (e == MPI_SUCCESS) {
    MPI_Aint ext;
    e = extent_of(t, &ext);
    if (e == MPI_SUCCESS && rank != root) e = cf_mpi_send(send, n, t, root, CF_GATHER_TAG, comm);
    if (e == MPI_SUCCESS && rank == root)
      e = own_part(send, n, at(recv, (size_t)displs[rank], ext), t, ext);
    for (int r = 0; e == MPI_SUCCESS && rank == root && r < size; r++)
      if (r != root)
        e = cf_mpi_recv(at(recv, (size_t)displs[r], ext), (size_t)counts[r], t, r, CF_GATHER_TAG,
                        comm);
  }
  if (ic != stack) free(ic);
  return e;
}

int cf_mpi_allgather(const void *send, size_t n, void *recv, MPI_Datatype t, MPI_Comm comm) {
  if (n <= cf_mpi_chunk()) return MPI_Allgather(send, (int)n, t, recv, (int)n, t, comm);
  int size, rank, e = MPI_Comm_size(comm, &size);
  if (e == MPI_SUCCESS) e = MPI_Comm_rank(comm, &rank);
  MPI_Aint ext;
  if (e == MPI_SUCCESS) e = extent_of(t, &ext);
  if (e == MPI_SUCCESS) e = own_part(send, n, at(recv, (size_t)rank * n, ext), t, ext);
  for (int r = 0; e == MPI_SUCCESS && r < size; r++)
    e = cf_mpi_bcast(at(recv, (size_t)r * n, ext), n, t, r, comm);
  return e;
}
