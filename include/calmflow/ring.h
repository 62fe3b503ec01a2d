/* ring.h: exact causal ring attention for context parallelism.
 *
 * One sequence of T tokens (global positions 0..T-1) is split over the cp ranks of a
 * context-parallel communicator. Rank c owns two contiguous token ranges
 * [lo[c][0], hi[c][0]) and [lo[c][1], hi[c][1]) (the first earlier; either may be empty;
 * together the ranges of all ranks cover 0..T-1 exactly once). A rank's local rows are its
 * tokens in order, first range then second: Tl(c) = total. A call handles B sequences; local
 * row b*Tl + i is token i of sequence b.
 *
 * Inputs are the rotated fused qkv rows (GPT-NeoX layout: for head h, columns
 * h*3*dh .. (h+1)*3*dh hold [q | k | v], dh each; Hl = nh*dh). The forward computes, for every
 * local query and head, softmax over the keys at global positions <= the query's position of
 * (q.k / sqrt(dh)), times V; heads concatenated (head h in columns h*dh..). This is what the
 * serial cf_attn_fwd (src/model/layers.c) gives for the whole sequence, restricted to this
 * rank's rows.
 *
 * Forward: every rank packs its K,V rows into a contiguous block and passes it cp-1 times to
 * rank c+1 (receiving from c-1), overlapping the transfer with the work on the block it holds.
 * Per (sequence, head, query) it keeps the running max m and sum l (double) of an online
 * softmax and rescales the output accumulator when m grows. Raw scores go straight into the
 * probability storage at their GLOBAL key column and are normalised at the end with the final
 * m and l; (query range, key range) pairs where every key comes after every query are skipped.
 *
 * Backward: with D_i = dout_i . out_i per head, dP = dO V^T, dS = P (dP - D),
 * dQ = dS K / sqrt(dh), dK = dS^T Q / sqrt(dh), dV = P^T dO. Every block (K, V, dK, dV)
 * travels once around the ring (cp shifts; the last one carries only dK, dV), each rank adding
 * its contributions, so the owner gets back its complete dK, dV. No approximation anywhere.
 *
 * Communication is bracketed with cf_watchdog_enter("ring_kv" / "ring_dkv", peer). Every call
 * is deterministic: the blocks are visited and summed in a fixed order for a given layout.
 * The plan allocates everything at init; the forward and backward allocate nothing.
 */
#ifndef CALMFLOW_RING_H
#define CALMFLOW_RING_H

#include <mpi.h>
#include <stdint.h>

#include "calmflow/error.h"

struct cf_ring {
  MPI_Comm comm;        /* borrowed: the context-parallel communicator (size cp) */
  int cp, rank;         /* size of comm and this rank in it */
  int64_t T, B, nh, dh; /* global tokens per sequence, max sequences per call, heads, head dim */
  int64_t *lo, *hi;     /* (cp, 2) every rank's token ranges: lo[2*c + k], hi[2*c + k] */
  int64_t *tl;          /* (cp) tokens of every rank */
  int64_t Tl, max_tl;   /* this rank's tokens; the largest over the ranks */
  int64_t max_range;    /* the longest single range of any rank */
  int64_t *pos;         /* (Tl) global position of each local row */
  float *blk[2];        /* (B * max_tl, 4*Hl) each: the travelling blocks, see ring.c */
  float *m;             /* (B, nh, Tl) running max of the online softmax */
  double *l;            /* (B, nh, Tl) running sum (forward) / D = dout . out (backward) */
  float *scr;           /* (max_range, max_range) scores / dS of one sub-block */
};

/* Collective on comm. Plan ring attention over comm (borrowed; its size is cp, c its rank) for
 * T tokens per sequence, at most max_B sequences per call, nh heads of dimension dh. lo, hi
 * are (cp, 2) arrays, row c the ranges of rank c (entry 0 the earlier one), the same on every
 * rank. CF_EINVAL naming what is wrong when a size is < 1, a range lies outside [0, T), a
 * rank's first range does not come before its second, the ranges do not cover every token
 * exactly once, the arguments differ across ranks, or a block is too large for an MPI count;
 * every rank fails together. On failure *r is left released. */
cf_status cf_ring_init(struct cf_ring *r, MPI_Comm comm, int64_t T, const int64_t *lo,
                       const int64_t *hi, int64_t max_B, int64_t nh, int64_t dh);

/* Local. Free the buffers and zero *r (idempotent; a zeroed struct is fine). */
void cf_ring_release(struct cf_ring *r);

/* Local. Tl, the number of tokens (local rows per sequence) of this rank. */
int64_t cf_ring_local_tokens(const struct cf_ring *r);

/* Collective on r->comm (every rank passes the same B, 1 <= B <= max_B).
 * qkv (B*Tl, 3*Hl) rotated fused rows; probs (B, nh, Tl, T): row = local query, column =
 * global key position, softmax probabilities with masked entries (key after query) 0;
 * out (B*Tl, Hl). probs and out are overwritten and kept for the backward. */
cf_status cf_ring_attn_fwd(struct cf_ring *r, int64_t B, const float *qkv, float *probs,
                           float *out);

/* Collective on r->comm (same B on every rank). From the forward's qkv, probs and out and the
 * output gradient dout (B*Tl, Hl), dqkv (B*Tl, 3*Hl) = gradient w.r.t. the rotated qkv
 * (overwritten; the caller inverse-rotates dq, dk). */
cf_status cf_ring_attn_bwd(struct cf_ring *r, int64_t B, const float *qkv, const float *probs,
                           const float *out, const float *dout, float *dqkv);

#endif
