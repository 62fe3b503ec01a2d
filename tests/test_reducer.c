/* test_reducer.c: the bucketed gradient all-reduce (reducer.h) at 1-3 ranks.
 *
 * Every rank fills an arena with small integers (sums exact in any order) and reports final
 * suffixes the way backward does; after cf_reducer_finish every element must hold the sum over
 * the ranks, reduced exactly once. Cases: the whole arena final at once (as a layer's
 * gradients are), which must go out in bucket-sized pieces with at most CF_REDUCER_IN_FLIGHT
 * of them in flight; suffixes of uneven sizes, some below a bucket; a bucket larger than the
 * arena (one piece at finish); and a second step through the same reducer. The in-flight bound
 * is what keeps MPI's temporaries to a few buckets (docs/performance.md, peak memory). */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>

#include "calmflow/reducer.h"
#include "cf_test.h"

#define N 10007 /* floats in the arena: not a multiple of any bucket below */

static float value(int rank, int step, size_t i) {
  return (float)((int)((i * 7u + (size_t)rank * 13u + (size_t)step * 5u) % 41u) - 20);
}

static void fill(float *g, int rank, int step) {
  for (size_t i = 0; i < N; i++)
    g[i] = value(rank, step, i);
}

/* every element is the sum over the ranks of its values */
static void check(const float *g, int size, int step, const char *what) {
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < N; i++) {
    float want = 0;
    for (int r = 0; r < size; r++)
      want += value(r, step, i);
    if (g[i] != want && bad++ == 0) first = i;
  }
  EXPECT(bad == 0, "%s: %zu of %d elements wrong, the first at %zu", what, bad, N, first);
}

/* One step: report the suffixes starting at offs[0] > offs[1] > ... (the last need not be 0),
 * then finish. */
static void step(struct cf_reducer *r, const size_t *offs, int noffs) {
  cf_reducer_begin(r);
  for (int k = 0; k < noffs; k++)
    EXPECT_OK(cf_reducer_ready(r, offs[k]), "cf_reducer_ready");
  EXPECT_OK(cf_reducer_finish(r), "cf_reducer_finish");
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  cf_test_rank = rank;
  float *g = cf_test_floats(N);
  struct cf_reducer red;

  /* the whole arena final at once: ceil(N / 100) pieces, never more than the bound in flight */
  EXPECT_OK(cf_reducer_init(&red, MPI_COMM_WORLD, g, N, 100), "cf_reducer_init");
  fill(g, rank, 0);
  const size_t all[] = {0};
  step(&red, all, 1);
  check(g, size, 0, "whole arena at once");
  EXPECT(red.buckets == (N + 99) / 100, "whole arena: %d buckets, expected %d", red.buckets,
         (N + 99) / 100);
  EXPECT(red.most_in_flight == CF_REDUCER_IN_FLIGHT,
         "whole arena: %d in flight at most, expected %d", red.most_in_flight,
         CF_REDUCER_IN_FLIGHT);
  EXPECT(red.bytes == (double)N * sizeof(float), "whole arena: %.0f bytes reduced, expected %zu",
         red.bytes, N * sizeof(float));

  /* the same reducer, a second step: suffixes of uneven sizes, some smaller than a bucket (they
   * wait for the next report or for finish) */
  fill(g, rank, 1);
  const size_t uneven[] = {N - 30, N - 250, N - 251, 6000, 5990, 1234, 17};
  step(&red, uneven, 7);
  check(g, size, 1, "uneven suffixes");
  EXPECT(red.bytes == 2.0 * N * sizeof(float), "uneven suffixes: %.0f bytes reduced in all",
         red.bytes);
  EXPECT(red.most_in_flight <= CF_REDUCER_IN_FLIGHT, "uneven suffixes: %d in flight",
         red.most_in_flight);

  /* a bucket larger than the arena: nothing starts before finish, then one piece */
  EXPECT_OK(cf_reducer_init(&red, MPI_COMM_WORLD, g, N, 4 * N), "cf_reducer_init (large)");
  fill(g, rank, 2);
  const size_t layers[] = {N - 100, N / 2, 0};
  step(&red, layers, 3);
  check(g, size, 2, "bucket larger than the arena");
  EXPECT(red.buckets == 1, "bucket larger than the arena: %d buckets, expected 1", red.buckets);

  EXPECT_FAIL(cf_reducer_init(&red, MPI_COMM_WORLD, g, N, 0), "-par_bucket_mb", "empty bucket");

  free(g);
  MPI_Allreduce(MPI_IN_PLACE, &cf_test_fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  int rc = cf_test_done("test_reducer");
  MPI_Finalize();
  return rc;
}
