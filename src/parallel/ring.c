/* ring.c: exact causal ring attention over a context-parallel communicator (see ring.h).
 *
 * Travelling block of rank s for B sequences (Ts = tokens of s, Hl = nh*dh):
 *   KV region  (B*Ts, 2*Hl): row b*Ts + i, head h at columns h*2*dh: [k | v]
 *   dKV region (B*Ts, 2*Hl): same layout for [dk | dv], right after the KV region (backward)
 * Both regions are contiguous, so the forward sends the KV region, the backward both, and the
 * last backward shift only the dKV region.
 *
 * Work is done per (query range, key range) pair: this rank's range qa against the block
 * owner's range ka. A pair whose first key comes after its last query is skipped; in a pair
 * that is only partly masked, query at global position g sees the keys klo..g.
 */
#include "calmflow/ring.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "calmflow/commstat.h"
#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "calmflow/watchdog.h"

#define CF_RING_TAG_KV 0x5241  /* forward K,V blocks */
#define CF_RING_TAG_DKV 0x5242 /* backward K,V,dK,dV blocks */

static int64_t rlo(const struct cf_ring *r, int c, int k) {
  return r->lo[2 * c + k];
}
static int64_t rhi(const struct cf_ring *r, int c, int k) {
  return r->hi[2 * c + k];
}
static int64_t rlen(const struct cf_ring *r, int c, int k) {
  return r->hi[2 * c + k] - r->lo[2 * c + k];
}

/* Local checks of the arguments (the same on every rank when the caller is right). */
static cf_status check_args(int cp, int64_t T, const int64_t *lo, const int64_t *hi, int64_t max_B,
                            int64_t nh, int64_t dh) {
  CF_CHECK(T >= 1 && max_B >= 1 && nh >= 1 && dh >= 1, CF_EINVAL,
           "ring attention: T=%lld, max_B=%lld, nh=%lld, dh=%lld; each must be >= 1", (long long)T,
           (long long)max_B, (long long)nh, (long long)dh);
  CF_CHECK(T <= INT_MAX, CF_EINVAL, "ring attention: T=%lld tokens exceeds a BLAS dimension",
           (long long)T);
  CF_CHECK(lo != NULL && hi != NULL, CF_EINVAL, "ring attention: token ranges missing (lo/hi)");
  int64_t total = 0;
  for (int c = 0; c < cp; c++) {
    for (int k = 0; k < 2; k++) {
      int64_t a = lo[2 * c + k], b = hi[2 * c + k];
      CF_CHECK(0 <= a && a <= b && b <= T, CF_EINVAL,
               "ring attention: range %d of rank %d is [%lld, %lld); expected "
               "0 <= lo <= hi <= T=%lld",
               k, c, (long long)a, (long long)b, (long long)T);
      total += b - a;
    }
    CF_CHECK(lo[2 * c] == hi[2 * c] || lo[2 * c + 1] == hi[2 * c + 1] || hi[2 * c] <= lo[2 * c + 1],
             CF_EINVAL,
             "ring attention: rank %d's first range [%lld, %lld) does not come before its "
             "second [%lld, %lld)",
             c, (long long)lo[2 * c], (long long)hi[2 * c], (long long)lo[2 * c + 1],
             (long long)hi[2 * c + 1]);
  }
  for (int x = 0; x < 2 * cp; x++)
    for (int y = x + 1; y < 2 * cp; y++) {
      int64_t a = lo[x] > lo[y] ? lo[x] : lo[y], b = hi[x] < hi[y] ? hi[x] : hi[y];
      CF_CHECK(a >= b, CF_EINVAL,
               "ring attention: token range %d of rank %d and range %d of rank %d overlap "
               "at [%lld, %lld)",
               x % 2, x / 2, y % 2, y / 2, (long long)a, (long long)b);
    }
  CF_CHECK(total == T, CF_EINVAL,
           "ring attention: the ranks' token ranges hold %lld tokens; expected every one of "
           "T=%lld exactly once",
           (long long)total, (long long)T);
  return CF_OK;
}

/* FNV-1a over int64 values: a fingerprint of the arguments to compare across ranks. */
static uint64_t fnv(uint64_t h, int64_t v) {
  for (int i = 0; i < 8; i++) {
    h ^= (uint64_t)v >> (8 * i) & 0xffu;
    h *= 1099511628211ull;
  }
  return h;
}

static cf_status alloc_n(void **p, size_t n, size_t elem, const char *what) {
  size_t bytes;
  CF_TRY(cf_mul_size(&bytes, n ? n : 1, elem, what));
  return cf_alloc(p, bytes, what);
}

static cf_status ring_alloc(struct cf_ring *r, const int64_t *lo, const int64_t *hi) {
  int cp = r->cp;
  CF_TRY(alloc_n((void **)&r->lo, 2 * (size_t)cp, sizeof(int64_t), "ring attention ranges"));
  CF_TRY(alloc_n((void **)&r->hi, 2 * (size_t)cp, sizeof(int64_t), "ring attention ranges"));
  CF_TRY(alloc_n((void **)&r->tl, (size_t)cp, sizeof(int64_t), "ring attention token counts"));
  memcpy(r->lo, lo, 2 * (size_t)cp * sizeof(int64_t));
  memcpy(r->hi, hi, 2 * (size_t)cp * sizeof(int64_t));
  for (int c = 0; c < cp; c++) {
    r->tl[c] = rlen(r, c, 0) + rlen(r, c, 1);
    if (r->tl[c] > r->max_tl) r->max_tl = r->tl[c];
    for (int k = 0; k < 2; k++)
      if (rlen(r, c, k) > r->max_range) r->max_range = rlen(r, c, k);
  }
  r->Tl = r->tl[r->rank];

  size_t Hl, blk, rows, stat;
  CF_TRY(cf_mul_size(&Hl, (size_t)r->nh, (size_t)r->dh, "ring attention heads"));
  CF_TRY(cf_mul_size(&rows, (size_t)r->B, (size_t)r->max_tl, "ring attention block"));
  CF_TRY(cf_mul_size(&blk, rows, Hl, "ring attention block"));
  CF_TRY(cf_mul_size(&blk, blk, 4, "ring attention block"));
  CF_CHECK(blk <= INT_MAX, CF_EINVAL,
           "ring attention: a travelling block of %zu floats (max_B=%lld x %lld tokens x 4 x "
           "%zu) exceeds an MPI count",
           blk, (long long)r->B, (long long)r->max_tl, Hl);
  CF_TRY(cf_mul_size(&stat, (size_t)r->B * (size_t)r->nh, (size_t)r->Tl, "ring attention state"));
  CF_TRY(alloc_n((void **)&r->pos, (size_t)r->Tl, sizeof(int64_t), "ring attention positions"));
  for (int b = 0; b < 2; b++)
    CF_TRY(alloc_n((void **)&r->blk[b], blk, sizeof(float), "ring attention blocks"));
  CF_TRY(alloc_n((void **)&r->m, stat, sizeof(float), "ring attention softmax max"));
  CF_TRY(alloc_n((void **)&r->l, stat, sizeof(double), "ring attention softmax sum"));
  CF_TRY(alloc_n((void **)&r->scr, (size_t)r->max_range * (size_t)r->max_range, sizeof(float),
                 "ring attention scratch"));
  int64_t i = 0;
  for (int k = 0; k < 2; k++)
    for (int64_t t = rlo(r, r->rank, k); t < rhi(r, r->rank, k); t++)
      r->pos[i++] = t;
  return CF_OK;
}

cf_status cf_ring_init(struct cf_ring *r, MPI_Comm comm, int64_t T, const int64_t *lo,
                       const int64_t *hi, int64_t max_B, int64_t nh, int64_t dh) {
  memset(r, 0, sizeof *r);
  r->comm = MPI_COMM_NULL;
  int cp, rank;
  CF_MPI(MPI_Comm_size(comm, &cp));
  CF_MPI(MPI_Comm_rank(comm, &rank));

  /* Every rank checks, then all agree: one bad or differing rank fails them all. */
  cf_status st = check_args(cp, T, lo, hi, max_B, nh, dh);
  uint64_t h = 14695981039346656037ull;
  h = fnv(fnv(fnv(fnv(h, T), max_B), nh), dh);
  for (int i = 0; st == CF_OK && i < 2 * cp; i++)
    h = fnv(fnv(h, lo[i]), hi[i]);
  uint64_t v[3] = {st != CF_OK, h, ~h}, w[3];
  CF_MPI(MPI_Allreduce(v, w, 3, MPI_UINT64_T, MPI_MAX, comm));
  if (st != CF_OK) return st;
  if (w[0]) return cf_err(CF_EINVAL, "ring attention: another rank rejected its arguments");
  CF_CHECK(w[1] == ~w[2], CF_EINVAL,
           "ring attention: the arguments (T, max_B, nh, dh, token ranges) differ across the "
           "%d ranks",
           cp);

  r->comm = comm;
  r->cp = cp;
  r->rank = rank;
  r->T = T;
  r->B = max_B;
  r->nh = nh;
  r->dh = dh;
  st = ring_alloc(r, lo, hi);
  if (st != CF_OK) {
    cf_trace_push(__FILE__, __LINE__, "ring_alloc(r, lo, hi)");
    cf_ring_release(r);
  }
  return st;
}

void cf_ring_release(struct cf_ring *r) {
  if (r == NULL) return;
  cf_free((void **)&r->lo);
  cf_free((void **)&r->hi);
  cf_free((void **)&r->tl);
  cf_free((void **)&r->pos);
  cf_free((void **)&r->blk[0]);
  cf_free((void **)&r->blk[1]);
  cf_free((void **)&r->m);
  cf_free((void **)&r->l);
  cf_free((void **)&r->scr);
  memset(r, 0, sizeof *r);
  r->comm = MPI_COMM_NULL;
}

int64_t cf_ring_local_tokens(const struct cf_ring *r) {
  return r->Tl;
}

/* Pack this rank's K,V rows of qkv (B*Tl, 3*Hl) into a KV region (B*Tl, 2*Hl). */
static void pack_kv(const struct cf_ring *r, int64_t B, const float *qkv, float *kv) {
  int64_t dh = r->dh, Hl = r->nh * dh;
  for (int64_t row = 0; row < B * r->Tl; row++)
    for (int64_t h = 0; h < r->nh; h++)
      memcpy(kv + row * 2 * Hl + h * 2 * dh, qkv + row * 3 * Hl + h * 3 * dh + dh,
             (size_t)(2 * dh) * sizeof(float));
}

/* Keys of pair (query at global g, key range starting at klo with nk keys) that g may see. */
static int64_t visible(int64_t g, int64_t klo, int64_t nk) {
  int64_t n = g - klo + 1;
  return n < 0 ? 0 : n > nk ? nk : n;
}

/* Forward work on the KV block of rank src: raw scores into probs, online softmax update of
 * m, l and the unnormalised output. */
static void fwd_block(struct cf_ring *r, int64_t B, const float *qkv, float *probs, float *out,
                      const float *kv, int src) {
  const int64_t nh = r->nh, dh = r->dh, Hl = nh * dh, ld = 3 * Hl, kvld = 2 * Hl;
  const int64_t Tl = r->Tl, Ts = r->tl[src], T = r->T;
  const float scale = (float)(1.0 / sqrt((double)dh));
  for (int qa = 0; qa < 2; qa++) {
    int64_t qlo = rlo(r, r->rank, qa), qhi = rhi(r, r->rank, qa), nq = qhi - qlo;
    int64_t qoff = qa ? rlen(r, r->rank, 0) : 0;
    for (int ka = 0; ka < 2; ka++) {
      int64_t klo = rlo(r, src, ka), nk = rlen(r, src, ka), koff = ka ? rlen(r, src, 0) : 0;
      if (nq == 0 || nk == 0 || klo >= qhi) continue; /* every key after every query */
      for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < nh; h++) {
          const float *Q = qkv + (b * Tl + qoff) * ld + h * 3 * dh;
          const float *K = kv + (b * Ts + koff) * kvld + h * 2 * dh, *V = K + dh;
          float *S = probs + ((b * nh + h) * Tl + qoff) * T + klo; /* (nq, nk), ld T */
          float *O = out + (b * Tl + qoff) * Hl + h * dh;          /* (nq, dh), ld Hl */
          float *m = r->m + (b * nh + h) * Tl + qoff;
          double *l = r->l + (b * nh + h) * Tl + qoff;
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)dh, scale, Q,
                      (int)ld, K, (int)kvld, 0.0f, S, (int)T);
          for (int64_t i = 0; i < nq; i++) {
            const float *s = S + i * T;
            float *E = r->scr + i * nk; /* (nq, nk) exp(s - m), 0 where masked */
            int64_t nv = visible(qlo + i, klo, nk);
            if (nv > 0) {
              float mx = s[0];
              for (int64_t j = 1; j < nv; j++)
                if (s[j] > mx) mx = s[j];
              if (mx > m[i]) { /* the max grows: rescale what was summed so far */
                float alpha = m[i] == -INFINITY ? 0.0f : expf(m[i] - mx);
                l[i] *= alpha;
                for (int64_t d = 0; d < dh; d++)
                  O[i * Hl + d] *= alpha;
                m[i] = mx;
              }
              double sum = 0;
              for (int64_t j = 0; j < nv; j++) {
                E[j] = expf(s[j] - m[i]);
                sum += E[j];
              }
              l[i] += sum;
            }
            for (int64_t j = nv; j < nk; j++)
              E[j] = 0.0f;
          }
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)dh, (int)nk, 1.0f,
                      r->scr, (int)nk, V, (int)kvld, 1.0f, O, (int)Hl);
        }
      }
    }
  }
}

cf_status cf_ring_attn_fwd(struct cf_ring *r, int64_t B, const float *qkv, float *probs,
                           float *out) {
  CF_CHECK(B >= 1 && B <= r->B, CF_EINVAL,
           "ring attention: %lld sequences in one call; the plan allows 1..%lld", (long long)B,
           (long long)r->B);
  const int64_t nh = r->nh, dh = r->dh, Hl = nh * dh, kvld = 2 * Hl, Tl = r->Tl, T = r->T;
  const int cp = r->cp, next = (r->rank + 1) % cp, prev = (r->rank + cp - 1) % cp;
  if (Tl > 0) memset(out, 0, (size_t)(B * Tl * Hl) * sizeof(float)); /* may be NULL when empty */
  for (int64_t i = 0; i < B * nh * Tl; i++) {
    r->m[i] = -INFINITY;
    r->l[i] = 0.0;
  }
  float *cur = r->blk[0], *nxt = r->blk[1];
  pack_kv(r, B, qkv, cur);
  /* Step k holds the block of rank src = rank - k; while working on it, pass it on to next and
   * receive the block of src - 1 from prev (MPI allows reading a buffer that is being sent). */
  for (int k = 0; k < cp; k++) {
    int src = (r->rank - k + cp) % cp, from = (src + cp - 1) % cp;
    MPI_Request req[2];
    if (k < cp - 1) {
      CF_MPI(cf_mpi_irecv(nxt, (size_t)(B * r->tl[from] * kvld), MPI_FLOAT, prev, CF_RING_TAG_KV,
                          r->comm, &req[0]));
      CF_MPI(cf_mpi_isend(cur, (size_t)(B * r->tl[src] * kvld), MPI_FLOAT, next, CF_RING_TAG_KV,
                          r->comm, &req[1]));
    }
    fwd_block(r, B, qkv, probs, out, cur, src);
    if (k < cp - 1) {
      cf_watchdog_enter("ring_kv", prev);
      double t0 = cf_commstat_now();
      int e = MPI_Waitall(2, req, MPI_STATUSES_IGNORE);
      cf_commstat_add(CF_COMM_CP, (double)(B * r->tl[src] * kvld) * sizeof(float),
                      cf_commstat_now() - t0);
      cf_watchdog_leave();
      CF_MPI(e);
      float *t = cur;
      cur = nxt;
      nxt = t;
    }
  }
  /* Normalise: P = exp(s - m) / l for keys up to the query, 0 after; out /= l. */
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < nh; h++)
      for (int64_t i = 0; i < Tl; i++) {
        int64_t st = (b * nh + h) * Tl + i, g = r->pos[i];
        float *p = probs + st * T, mi = r->m[st];
        double inv = 1.0 / r->l[st];
        for (int64_t j = 0; j <= g; j++)
          p[j] = (float)(expf(p[j] - mi) * inv);
        for (int64_t j = g + 1; j < T; j++)
          p[j] = 0.0f;
        float *o = out + (b * Tl + i) * Hl + h * dh;
        for (int64_t d = 0; d < dh; d++)
          o[d] = (float)(o[d] * inv);
      }
  return CF_OK;
}

/* Backward work on the block of rank src (KV region kv, dKV region dkv): adds this rank's
 * contributions to dq (in dqkv) and to the block's dk, dv. r->l holds D = dout . out. */
static void bwd_block(struct cf_ring *r, int64_t B, const float *qkv, const float *probs,
                      const float *dout, float *dqkv, const float *kv, float *dkv, int src) {
  const int64_t nh = r->nh, dh = r->dh, Hl = nh * dh, ld = 3 * Hl, kvld = 2 * Hl;
  const int64_t Tl = r->Tl, Ts = r->tl[src], T = r->T;
  const float scale = (float)(1.0 / sqrt((double)dh));
  for (int qa = 0; qa < 2; qa++) {
    int64_t qlo = rlo(r, r->rank, qa), qhi = rhi(r, r->rank, qa), nq = qhi - qlo;
    int64_t qoff = qa ? rlen(r, r->rank, 0) : 0;
    for (int ka = 0; ka < 2; ka++) {
      int64_t klo = rlo(r, src, ka), nk = rlen(r, src, ka), koff = ka ? rlen(r, src, 0) : 0;
      if (nq == 0 || nk == 0 || klo >= qhi) continue; /* every key after every query: P = 0 */
      for (int64_t b = 0; b < B; b++) {
        for (int64_t h = 0; h < nh; h++) {
          const float *Q = qkv + (b * Tl + qoff) * ld + h * 3 * dh;
          const float *dO = dout + (b * Tl + qoff) * Hl + h * dh;
          const float *P = probs + ((b * nh + h) * Tl + qoff) * T + klo; /* (nq, nk), ld T */
          const float *K = kv + (b * Ts + koff) * kvld + h * 2 * dh, *V = K + dh;
          float *dK = dkv + (b * Ts + koff) * kvld + h * 2 * dh, *dV = dK + dh;
          float *dQ = dqkv + (b * Tl + qoff) * ld + h * 3 * dh;
          const double *D = r->l + (b * nh + h) * Tl + qoff;
          float *dS = r->scr; /* (nq, nk) */
          /* dP = dO V^T, then dS = P (dP - D) */
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, (int)dh, 1.0f, dO,
                      (int)Hl, V, (int)kvld, 0.0f, dS, (int)nk);
          for (int64_t i = 0; i < nq; i++) {
            int64_t nv = visible(qlo + i, klo, nk);
            float *sr = dS + i * nk;
            const float *pr = P + i * T;
            for (int64_t j = 0; j < nv; j++)
              sr[j] = pr[j] * (float)(sr[j] - D[i]);
            for (int64_t j = nv; j < nk; j++)
              sr[j] = 0.0f;
          }
          /* dQ += scale dS K, dK += scale dS^T Q, dV += P^T dO */
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, (int)dh, (int)nk, scale,
                      dS, (int)nk, K, (int)kvld, 1.0f, dQ, (int)ld);
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)dh, (int)nq, scale, dS,
                      (int)nk, Q, (int)ld, 1.0f, dK, (int)kvld);
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, (int)dh, (int)nq, 1.0f, P,
                      (int)T, dO, (int)Hl, 1.0f, dV, (int)kvld);
        }
      }
    }
  }
}

cf_status cf_ring_attn_bwd(struct cf_ring *r, int64_t B, const float *qkv, const float *probs,
                           const float *out, const float *dout, float *dqkv) {
  CF_CHECK(B >= 1 && B <= r->B, CF_EINVAL,
           "ring attention: %lld sequences in one call; the plan allows 1..%lld", (long long)B,
           (long long)r->B);
  const int64_t nh = r->nh, dh = r->dh, Hl = nh * dh, ld = 3 * Hl, kvld = 2 * Hl, Tl = r->Tl;
  const int cp = r->cp, next = (r->rank + 1) % cp, prev = (r->rank + cp - 1) % cp;
  if (Tl > 0) memset(dqkv, 0, (size_t)(B * Tl * ld) * sizeof(float)); /* may be NULL when empty */
  /* D (B, nh, Tl) = dout . out per head, in double */
  for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < Tl; i++)
      for (int64_t h = 0; h < nh; h++) {
        const float *o = out + (b * Tl + i) * Hl + h * dh, *g = dout + (b * Tl + i) * Hl + h * dh;
        double s = 0;
        for (int64_t d = 0; d < dh; d++)
          s += (double)o[d] * g[d];
        r->l[(b * nh + h) * Tl + i] = s;
      }
  float *cur = r->blk[0], *nxt = r->blk[1];
  pack_kv(r, B, qkv, cur);
  memset(cur + B * Tl * kvld, 0, (size_t)(B * Tl * kvld) * sizeof(float));
  /* Step k holds the block of rank src = rank - k with the dK, dV that ranks src..rank-1 added;
   * after adding ours it moves to next. The last shift (k = cp-1) brings every rank its own
   * block back with all contributions, so it carries only the dKV region. */
  for (int k = 0; k < cp; k++) {
    int src = (r->rank - k + cp) % cp, from = (src + cp - 1) % cp;
    int64_t Ts = r->tl[src];
    bwd_block(r, B, qkv, probs, dout, dqkv, cur, cur + B * Ts * kvld, src);
    if (cp == 1) break;
    const float *sbuf = cur;
    float *rbuf = nxt;
    int64_t scount = 2 * B * Ts * kvld, rcount = 2 * B * r->tl[from] * kvld;
    if (k == cp - 1) { /* from == rank: our own block comes home */
      sbuf = cur + B * Ts * kvld;
      rbuf = nxt + B * Tl * kvld;
      scount = B * Ts * kvld;
      rcount = B * Tl * kvld;
    }
    cf_watchdog_enter("ring_dkv", prev);
    double t0 = cf_commstat_now();
    int e = cf_mpi_sendrecv(sbuf, (size_t)scount, next, CF_RING_TAG_DKV, rbuf, (size_t)rcount, prev,
                            CF_RING_TAG_DKV, MPI_FLOAT, r->comm);
    cf_commstat_add(CF_COMM_CP, (double)scount * sizeof(float), cf_commstat_now() - t0);
    cf_watchdog_leave();
    CF_MPI(e);
    float *t = cur;
    cur = nxt;
    nxt = t;
  }
  /* cur now holds this rank's block with complete dK, dV */
  const float *dkv = cur + B * Tl * kvld;
  for (int64_t row = 0; row < B * Tl; row++)
    for (int64_t h = 0; h < nh; h++)
      memcpy(dqkv + row * ld + h * 3 * dh + dh, dkv + row * kvld + h * 2 * dh,
             (size_t)(2 * dh) * sizeof(float));
  return CF_OK;
}
