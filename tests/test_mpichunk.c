/* test_mpichunk.c: the size_t-count MPI wrappers (mpichunk.h) with the chunk limit lowered to
 * a few elements give bit-identical results to the unsplit calls: allreduce (separate and in
 * place), reduce, bcast, send/recv, isend/irecv, sendrecv, a receive larger than the message,
 * allgatherv (uneven, separate and in place), gatherv and allgather, on float, double and
 * int64 data. At 1 and 2 ranks the sums are of arbitrary floats (a + b is order-free); at 3
 * and more of integers, whose sums are exact in any order. Also CF_MPI_CHUNK from the
 * environment, and the limit's clamping. */
#include <limits.h>
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/mpichunk.h"
#include "cf_test.h"

#define N 1001 /* elements per rank and call: not a multiple of any tested limit */

/* Deterministic values for rank r, stream s: arbitrary floats, or small integers (exact). */
static double value(int r, int s, size_t i, int exact) {
  uint64_t h =
      (uint64_t)(r + 1) * 0x9e3779b97f4a7c15ull ^ (uint64_t)(s + 1) * 0xbf58476d1ce4e5b9ull;
  h ^= (uint64_t)i * 0x94d049bb133111ebull;
  h ^= h >> 31;
  h *= 0xd6e8feb86ca6bd55ull;
  h ^= h >> 29;
  if (exact) return (double)(int)(h % 201) - 100.0;
  return ((double)(h >> 11) / 9007199254740992.0 - 0.5) * 1e3;
}

static void fill_f(float *x, size_t n, int r, int s, int exact) {
  for (size_t i = 0; i < n; i++)
    x[i] = (float)value(r, s, i, exact);
}
static void fill_d(double *x, size_t n, int r, int s, int exact) {
  for (size_t i = 0; i < n; i++)
    x[i] = value(r, s, i, exact);
}

/* Everything one pass computes, compared byte for byte between passes. */
struct result {
  float allreduce[N], reduce[N], bcast_f[N], ring[N], iring[N], sr[N], big[N + 5];
  double allreduce_inplace[N], bcast_d[N];
  int64_t reduce_i64[N];
  float *allgatherv, *allgatherv_inplace, *gatherv, *allgather; /* (total) / (size * N) */
};

static int64_t count_of(int r) {
  return 100 + 37 * (int64_t)r;
}

#define OK(call, what) EXPECT((call) == MPI_SUCCESS, "%s (chunk %zu) failed", what, cf_mpi_chunk())

static void pass(MPI_Comm comm, int rank, int size, int exact, struct result *o) {
  float *a = cf_test_floats(N), *b = cf_test_floats(N + 5);
  double *d = calloc(N, sizeof *d);
  const int next = (rank + 1) % size, prev = (rank + size - 1) % size;

  fill_f(a, N, rank, 1, exact);
  OK(cf_mpi_allreduce(a, o->allreduce, N, MPI_FLOAT, MPI_SUM, comm), "allreduce");
  fill_d(o->allreduce_inplace, N, rank, 2, exact);
  OK(cf_mpi_allreduce(MPI_IN_PLACE, o->allreduce_inplace, N, MPI_DOUBLE, MPI_SUM, comm),
     "allreduce in place");
  const int root = size - 1;
  fill_f(a, N, rank, 3, exact);
  OK(cf_mpi_reduce(a, rank == root ? o->reduce : NULL, N, MPI_FLOAT, MPI_SUM, root, comm),
     "reduce");
  int64_t li[N];
  for (size_t i = 0; i < N; i++)
    li[i] = (int64_t)value(rank, 4, i, 1) * ((int64_t)1 << 40);
  OK(cf_mpi_reduce(rank == 0 ? MPI_IN_PLACE : li, rank == 0 ? li : NULL, N, MPI_INT64_T, MPI_SUM, 0,
                   comm),
     "reduce int64 in place");
  if (rank == 0) memcpy(o->reduce_i64, li, sizeof li);
  if (rank == root) fill_f(o->bcast_f, N, rank, 5, exact);
  OK(cf_mpi_bcast(o->bcast_f, N, MPI_FLOAT, root, comm), "bcast float");
  if (rank == 0) fill_d(o->bcast_d, N, rank, 6, exact);
  OK(cf_mpi_bcast(o->bcast_d, N, MPI_DOUBLE, 0, comm), "bcast double");

  /* a ring: isend to next + recv from prev; irecv from prev + send to next; sendrecv */
  MPI_Request rq;
  fill_f(a, N, rank, 7, exact);
  OK(cf_mpi_isend(a, N, MPI_FLOAT, next, 11, comm, &rq), "isend");
  OK(cf_mpi_recv(o->ring, N, MPI_FLOAT, prev, 11, comm), "recv");
  OK(MPI_Wait(&rq, MPI_STATUS_IGNORE), "wait isend");
  fill_f(a, N, rank, 8, exact);
  OK(cf_mpi_irecv(o->iring, N, MPI_FLOAT, prev, 12, comm, &rq), "irecv");
  OK(cf_mpi_send(a, N, MPI_FLOAT, next, 12, comm), "send");
  OK(MPI_Wait(&rq, MPI_STATUS_IGNORE), "wait irecv");
  fill_f(a, N, rank, 9, exact);
  OK(cf_mpi_sendrecv(a, N, next, 13, o->sr, N, prev, 13, MPI_FLOAT, comm), "sendrecv");
  /* a receive of N + 5 elements takes a message of N */
  fill_f(a, N, rank, 10, exact);
  for (size_t i = 0; i < N + 5; i++)
    o->big[i] = -1.0f;
  OK(cf_mpi_isend(a, N, MPI_FLOAT, next, 14, comm, &rq), "isend to a larger receive");
  OK(cf_mpi_recv(o->big, N + 5, MPI_FLOAT, prev, 14, comm), "larger receive");
  OK(MPI_Wait(&rq, MPI_STATUS_IGNORE), "wait");

  /* uneven gathers */
  int64_t *counts = calloc((size_t)size, sizeof *counts),
          *displs = calloc((size_t)size, sizeof *displs);
  int64_t total = 0;
  for (int r = 0; r < size; r++) {
    counts[r] = count_of(r);
    displs[r] = total;
    total += counts[r];
  }
  const size_t mine = (size_t)counts[rank];
  fill_f(b, mine, rank, 15, exact);
  OK(cf_mpi_allgatherv(b, mine, o->allgatherv, counts, displs, MPI_FLOAT, comm), "allgatherv");
  fill_f(o->allgatherv_inplace + displs[rank], mine, rank, 16, exact);
  OK(cf_mpi_allgatherv(MPI_IN_PLACE, mine, o->allgatherv_inplace, counts, displs, MPI_FLOAT, comm),
     "allgatherv in place");
  fill_f(b, mine, rank, 17, exact);
  OK(cf_mpi_gatherv(b, mine, rank == 0 ? o->gatherv : NULL, rank == 0 ? counts : NULL,
                    rank == 0 ? displs : NULL, MPI_FLOAT, 0, comm),
     "gatherv");
  fill_f(a, N, rank, 18, exact);
  OK(cf_mpi_allgather(a, N, o->allgather, MPI_FLOAT, comm), "allgather");

  /* what the data must be, whatever the split: the moved values arrive unchanged */
  float *w = cf_test_floats(N);
  fill_f(w, N, root, 5, exact);
  EXPECT(memcmp(w, o->bcast_f, sizeof o->bcast_f) == 0, "bcast: not the root's values");
  fill_f(w, N, prev, 7, exact);
  EXPECT(memcmp(w, o->ring, sizeof o->ring) == 0, "isend/recv: not prev's values");
  fill_f(w, N, prev, 9, exact);
  EXPECT(memcmp(w, o->sr, sizeof o->sr) == 0, "sendrecv: not prev's values");
  fill_f(w, N, prev, 10, exact);
  EXPECT(memcmp(w, o->big, N * sizeof(float)) == 0 && o->big[N] == -1.0f,
         "larger receive: wrong values or written past the message");
  for (int r = 0; r < size; r++) {
    fill_f(w, (size_t)counts[r], r, 15, exact);
    EXPECT(memcmp(w, o->allgatherv + displs[r], (size_t)counts[r] * sizeof(float)) == 0,
           "allgatherv: rank %d's part", r);
    fill_f(w, N, r, 18, exact);
    EXPECT(memcmp(w, o->allgather + (size_t)r * N, N * sizeof(float)) == 0,
           "allgather: rank %d's part", r);
  }
  free(w);
  free(counts);
  free(displs);
  free(d);
  free(b);
  free(a);
}

static void alloc_result(struct result *o, int size) {
  memset(o, 0, sizeof *o);
  size_t total = 0;
  for (int r = 0; r < size; r++)
    total += (size_t)count_of(r);
  o->allgatherv = cf_test_floats(total);
  o->allgatherv_inplace = cf_test_floats(total);
  o->gatherv = cf_test_floats(total);
  o->allgather = cf_test_floats((size_t)size * N);
}

static void free_result(struct result *o) {
  free(o->allgatherv);
  free(o->allgatherv_inplace);
  free(o->gatherv);
  free(o->allgather);
}

#define SAME(field, bytes, rank_ok)                                                                \
  EXPECT(!(rank_ok) || memcmp(ref->field, got->field, (bytes)) == 0,                               \
         "chunk %zu: " #field " differs from the unsplit call", chunk)

static void compare(const struct result *ref, const struct result *got, int rank, int size,
                    size_t chunk) {
  size_t total = 0;
  for (int r = 0; r < size; r++)
    total += (size_t)count_of(r);
  SAME(allreduce, sizeof ref->allreduce, 1);
  SAME(allreduce_inplace, sizeof ref->allreduce_inplace, 1);
  SAME(reduce, sizeof ref->reduce, rank == size - 1);
  SAME(reduce_i64, sizeof ref->reduce_i64, rank == 0);
  SAME(bcast_f, sizeof ref->bcast_f, 1);
  SAME(bcast_d, sizeof ref->bcast_d, 1);
  SAME(ring, sizeof ref->ring, 1);
  SAME(iring, sizeof ref->iring, 1);
  SAME(sr, sizeof ref->sr, 1);
  SAME(big, sizeof ref->big, 1);
  SAME(allgatherv, total * sizeof(float), 1);
  SAME(allgatherv_inplace, total * sizeof(float), 1);
  SAME(gatherv, total * sizeof(float), rank == 0);
  SAME(allgather, (size_t)size * N * sizeof(float), 1);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  cf_test_rank = rank;
  const int exact = size > 2;

  /* the limit: INT_MAX by default, the environment at the first call, clamped by the setter */
  unsetenv("CF_MPI_CHUNK");
  cf_mpi_set_chunk(0);
  EXPECT(cf_mpi_chunk() == (size_t)INT_MAX, "default chunk %zu", cf_mpi_chunk());
  setenv("CF_MPI_CHUNK", "5", 1);
  cf_mpi_set_chunk(0);
  EXPECT(cf_mpi_chunk() == 5, "CF_MPI_CHUNK=5 gave %zu", cf_mpi_chunk());
  setenv("CF_MPI_CHUNK", "x", 1);
  cf_mpi_set_chunk(0);
  EXPECT(cf_mpi_chunk() == (size_t)INT_MAX, "CF_MPI_CHUNK=x gave %zu", cf_mpi_chunk());
  unsetenv("CF_MPI_CHUNK");
  cf_mpi_set_chunk((size_t)1 << 40);
  EXPECT(cf_mpi_chunk() == (size_t)INT_MAX, "set_chunk(2^40) gave %zu", cf_mpi_chunk());

  static struct result ref, got;
  alloc_result(&ref, size);
  alloc_result(&got, size);
  cf_mpi_set_chunk(0);
  pass(comm, rank, size, exact, &ref);
  /* 1: every element its own call or block; 3, 7: remainders; 100: some counts fit, some not */
  const size_t chunks[] = {1, 3, 7, 100, N};
  for (size_t k = 0; k < sizeof chunks / sizeof chunks[0]; k++) {
    cf_mpi_set_chunk(chunks[k]);
    pass(comm, rank, size, exact, &got);
    compare(&ref, &got, rank, size, chunks[k]);
  }
  cf_mpi_set_chunk(0);
  free_result(&ref);
  free_result(&got);

  int total = 0;
  MPI_Allreduce(&cf_test_fails, &total, 1, MPI_INT, MPI_SUM, comm);
  cf_test_fails = total;
  MPI_Comm_free(&comm);
  char label[64];
  snprintf(label, sizeof label, "test_mpichunk (%d ranks)", size);
  int rc = cf_test_done(label);
  MPI_Finalize();
  return rc;
}
