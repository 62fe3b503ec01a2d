/* grid.h: the process grid of the parallel layer.
 *
 * world = DP x PP x CP x TP with TP varying fastest (neighbouring ranks, which share a node,
 * form a tensor-parallel group) and DP slowest. The grid is one Cartesian communicator with
 * dims {dp, pp, cp, tp}, no periods and no reordering, so a rank's coordinates (d, p, c, t)
 * follow
 *
 *     rank = t + n_tp * (c + n_cp * (p + n_pp * d))
 *
 * and the four parallel groups are its MPI_Cart_sub slices. Every communicator the grid owns
 * returns errors (MPI_ERRORS_RETURN) instead of aborting.
 *
 * The layout helpers say which layers a pipeline stage owns (contiguous ranges) and which
 * tokens a context-parallel rank owns (two chunks, one early and one late, so causal
 * attention work is balanced).
 */
#ifndef CALMFLOW_GRID_H
#define CALMFLOW_GRID_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"

struct cf_grid {
  MPI_Comm cart;           /* dims {dp, pp, cp, tp}, periods 0, reorder 0 */
  MPI_Comm tp, cp, pp, dp; /* MPI_Cart_sub of cart: the ranks differing only in that coordinate */
  MPI_Comm dpcp;           /* ranks differing only in dp and cp: they hold the same parameters and
                              sum their gradients */
  MPI_Comm mp;             /* ranks differing only in pp and tp: together one whole model */
  int size, rank;          /* of cart (== of the comm given to init) */
  int n_dp, n_pp, n_cp, n_tp;
  int dp_rank, pp_rank, cp_rank, tp_rank; /* this rank's coordinates */
  int built; /* nonzero from cf_grid_init until cf_grid_release; a zeroed grid releases as a no-op
              */
};

/* Local. Check a layout before any communicator is built. CF_EINVAL when a degree is < 1 or a
 * size is < 1; CF_ETOPO, with one message naming the options, when the world size is not
 * divisible by -par_tp x -par_pp x -par_cp, -net_layers is not divisible by -par_pp, -net_heads
 * is not divisible by -par_tp, the sequence (points per sequence N*P; context ranks split at
 * point boundaries) is shorter than 2 x -par_cp (two chunks per context rank), or
 * -train_microbatches < -par_pp. Callers without a pipeline schedule (sampling) pass
 * microbatches = pp. */
cf_status cf_grid_check(int world, int tp, int pp, int cp, int64_t layers, int64_t heads,
                        int64_t points, int64_t microbatches);

/* Collective on comm. Build the grid on `comm` (duplicated first; the caller's communicator is
 * not modified) with dp = size / (tp*pp*cp). CF_ETOPO / CF_EINVAL (same messages as
 * cf_grid_check) when the degrees do not fit the size; on any failure everything built so far
 * is freed and *g is left released. */
cf_status cf_grid_init(struct cf_grid *g, MPI_Comm comm, int tp, int pp, int cp);

/* Local. Free every communicator of the grid and set the handles to MPI_COMM_NULL. Idempotent;
 * a zero-initialized grid is fine. (MPI_Comm_free is formally collective; all ranks of the grid
 * release together.) */
void cf_grid_release(struct cf_grid *g);

/* Local. Contiguous layer range [l0, l1) of pipeline stage `stage` (0 <= stage < pp) for
 * `layers` layers; stages differ by at most one layer, earlier stages take the extra ones. */
void cf_grid_stage_layers(int64_t layers, int pp, int stage, int64_t *l0, int64_t *l1);

/* Local. Load-balanced causal split of T tokens for context rank c of cp: the sequence is cut
 * into 2*cp chunks of near-equal size (sizes differ by at most 1) and rank c owns chunks c and
 * 2*cp-1-c, so every rank gets an early and a late chunk. The odd tokens (T mod 2*cp) are placed
 * so that ranks' token counts differ by at most 1 and their causal work (sum over owned tokens
 * of index + 1) by less than T. lo/hi are token ranges [lo, hi); pair entry 0 is the earlier
 * chunk. A c outside [0, cp) owns nothing. */
void cf_grid_cp_chunks(int cp, int c, int64_t T, int64_t lo[2], int64_t hi[2]);

/* Local. A one-line description, e.g. "dp2 x pp1 x cp1 x tp2 (4 ranks)". */
void cf_grid_describe(const struct cf_grid *g, char *buf, size_t cap);

#endif
