/* grid.c: the DP x PP x CP x TP process grid (a Cartesian communicator and its four slices),
 * the layout check, and the layer / token ownership rules (see grid.h). */
#include "calmflow/grid.h"

#include <stdio.h>
#include <string.h>

/* Local. Degrees >= 1 and tp*pp*cp dividing world (the checks cf_grid_init needs too). */
static cf_status check_degrees(int world, int tp, int pp, int cp) {
  CF_CHECK(tp >= 1, CF_EINVAL, "-par_tp must be >= 1 (got %d)", tp);
  CF_CHECK(pp >= 1, CF_EINVAL, "-par_pp must be >= 1 (got %d)", pp);
  CF_CHECK(cp >= 1, CF_EINVAL, "-par_cp must be >= 1 (got %d)", cp);
  CF_CHECK(world >= 1, CF_EINVAL, "world size must be >= 1 (got %d)", world);
  /* tp*pp*cp fits in int64 (each factor < 2^31); a product above world never divides it */
  int64_t prod = (int64_t)tp * pp * cp;
  CF_CHECK(world % prod == 0, CF_ETOPO,
           "world size %d is not divisible by -par_tp x -par_pp x -par_cp = %lld (%d x %d x %d)",
           world, (long long)prod, tp, pp, cp);
  return CF_OK;
}

cf_status cf_grid_check(int world, int tp, int pp, int cp, int64_t layers, int64_t heads,
                        int64_t points, int64_t microbatches) {
  CF_TRY(check_degrees(world, tp, pp, cp));
  CF_CHECK(layers >= 1, CF_EINVAL, "-net_layers must be >= 1 (got %lld)", (long long)layers);
  CF_CHECK(heads >= 1, CF_EINVAL, "-net_heads must be >= 1 (got %lld)", (long long)heads);
  CF_CHECK(points >= 1, CF_EINVAL, "the sequence length N*P must be >= 1 point (got %lld)",
           (long long)points);
  CF_CHECK(microbatches >= 1, CF_EINVAL, "-train_microbatches must be >= 1 (got %lld)",
           (long long)microbatches);
  CF_CHECK(layers % pp == 0, CF_ETOPO,
           "-net_layers %lld is not divisible by -par_pp %d (each pipeline stage owns an equal "
           "share of the layers)",
           (long long)layers, pp);
  CF_CHECK(heads % tp == 0, CF_ETOPO,
           "-net_heads %lld is not divisible by -par_tp %d (each tensor-parallel rank owns an "
           "equal share of the heads)",
           (long long)heads, tp);
  CF_CHECK(points >= 2 * (int64_t)cp, CF_ETOPO,
           "the sequence of N*P = %lld points (-flow_time_points x -flow_trajectories) is too "
           "short for -par_cp %d: need at least 2 x -par_cp = %lld (each context rank owns two "
           "chunks of whole points)",
           (long long)points, cp, 2 * (long long)cp);
  CF_CHECK(microbatches >= pp, CF_ETOPO,
           "-train_microbatches %lld is less than -par_pp %d (the pipeline needs at least one "
           "micro-batch per stage)",
           (long long)microbatches, pp);
  return CF_OK;
}

/* Local. Set MPI_ERRORS_RETURN on a communicator the grid owns. */
static cf_status errors_return(MPI_Comm c) {
  CF_MPI(MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN));
  return CF_OK;
}

/* Collective. The body of cf_grid_init; the caller releases on failure. */
static cf_status build(struct cf_grid *g, MPI_Comm comm, int tp, int pp, int cp) {
  MPI_Comm dup = MPI_COMM_NULL;
  CF_MPI(MPI_Comm_dup(comm, &dup));
  int dims[4] = {g->n_dp, pp, cp, tp}, periods[4] = {0, 0, 0, 0};
  int e = MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
  if (e == MPI_SUCCESS) e = MPI_Cart_create(dup, 4, dims, periods, 0, &g->cart);
  MPI_Comm_free(&dup);
  if (e != MPI_SUCCESS) return cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Cart_create");
  CF_CHECK(g->cart != MPI_COMM_NULL, CF_EMPI,
           "MPI_Cart_create left rank %d out of a grid of %d ranks", g->rank, g->size);
  CF_TRY(errors_return(g->cart));

  int size = 0, rank = 0, co[4];
  CF_MPI(MPI_Comm_size(g->cart, &size));
  CF_MPI(MPI_Comm_rank(g->cart, &rank));
  CF_MPI(MPI_Cart_coords(g->cart, rank, 4, co));
  CF_CHECK(size == g->size && rank == g->rank &&
               rank == co[3] + tp * (co[2] + cp * (co[1] + pp * co[0])),
           CF_EMPI, "the Cartesian grid moved rank %d of %d to rank %d (coordinates %d,%d,%d,%d)",
           g->rank, g->size, rank, co[0], co[1], co[2], co[3]);
  g->dp_rank = co[0];
  g->pp_rank = co[1];
  g->cp_rank = co[2];
  g->tp_rank = co[3];

  static const int remain[6][4] = {{0, 0, 0, 1}, {0, 0, 1, 0}, {0, 1, 0, 0},
                                   {1, 0, 0, 0}, {1, 0, 1, 0}, {0, 1, 0, 1}};
  MPI_Comm *sub[6] = {&g->tp, &g->cp, &g->pp, &g->dp, &g->dpcp, &g->mp};
  for (int i = 0; i < 6; i++) {
    CF_MPI(MPI_Cart_sub(g->cart, remain[i], sub[i]));
    CF_TRY(errors_return(*sub[i]));
  }
  return CF_OK;
}

cf_status cf_grid_init(struct cf_grid *g, MPI_Comm comm, int tp, int pp, int cp) {
  memset(g, 0, sizeof *g);
  g->cart = g->tp = g->cp = g->pp = g->dp = g->dpcp = g->mp = MPI_COMM_NULL;
  CF_MPI(MPI_Comm_size(comm, &g->size));
  CF_MPI(MPI_Comm_rank(comm, &g->rank));
  CF_TRY(check_degrees(g->size, tp, pp, cp));
  g->n_tp = tp;
  g->n_cp = cp;
  g->n_pp = pp;
  g->n_dp = g->size / (tp * pp * cp);
  g->built = 1;
  cf_status st = build(g, comm, tp, pp, cp);
  if (st != CF_OK) cf_grid_release(g);
  return st;
}

void cf_grid_release(struct cf_grid *g) {
  if (!g || !g->built) return;
  MPI_Comm *c[7] = {&g->tp, &g->cp, &g->pp, &g->dp, &g->dpcp, &g->mp, &g->cart};
  for (int i = 0; i < 7; i++) {
    if (*c[i] != MPI_COMM_NULL) MPI_Comm_free(c[i]);
    *c[i] = MPI_COMM_NULL;
  }
  g->built = 0;
}

/* Local. Start of piece k (0 <= k <= n) when `total` items are cut into n contiguous pieces of
 * near-equal size, the first total % n pieces one larger. */
static int64_t piece_start(int64_t total, int64_t n, int64_t k) {
  if (total < 0) total = 0;
  if (k < 0) k = 0;
  if (k > n) k = n;
  int64_t base = total / n, rem = total % n;
  return k * base + (k < rem ? k : rem);
}

void cf_grid_stage_layers(int64_t layers, int pp, int stage, int64_t *l0, int64_t *l1) {
  int64_t n = pp < 1 ? 1 : pp;
  *l0 = piece_start(layers, n, stage);
  *l1 = piece_start(layers, n, (int64_t)stage + 1);
}

/* Local. Start of chunk k (0 <= k <= n, n = 2*cp even) of the context-parallel split of T
 * tokens. With T = n*q + r: when r <= cp the first r chunks get q+1 tokens, otherwise the first
 * n-r chunks get q and the rest q+1. Either way each rank (chunks c and n-1-c) holds at most one
 * token more than any other, and the odd tokens sit in early chunks, where a token costs the
 * least causal attention work; the ranks' work then differs by less than one token's worth (T). */
static int64_t chunk_start(int64_t T, int64_t n, int64_t k) {
  if (T < 0) T = 0;
  if (k < 0) k = 0;
  if (k > n) k = n;
  int64_t q = T / n, r = T % n;
  if (r <= n / 2) return k * q + (k < r ? k : r);
  return k * (q + 1) - (k < n - r ? k : n - r);
}

void cf_grid_cp_chunks(int cp, int c, int64_t T, int64_t lo[2], int64_t hi[2]) {
  int64_t n = 2 * (int64_t)(cp < 1 ? 1 : cp);
  if (c < 0 || c >= n / 2) { /* not a context rank: own nothing */
    lo[0] = hi[0] = lo[1] = hi[1] = 0;
    return;
  }
  lo[0] = chunk_start(T, n, c);
  hi[0] = chunk_start(T, n, (int64_t)c + 1);
  lo[1] = chunk_start(T, n, n - 1 - c);
  hi[1] = chunk_start(T, n, n - c);
}

void cf_grid_describe(const struct cf_grid *g, char *buf, size_t cap) {
  if (!buf || cap == 0) return;
  snprintf(buf, cap, "dp%d x pp%d x cp%d x tp%d (%d rank%s)", g->n_dp, g->n_pp, g->n_cp, g->n_tp,
           g->size, g->size == 1 ? "" : "s");
}
