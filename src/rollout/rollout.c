/* rollout.c: KV-cached (or recompute-the-prefix) autoregressive sampling with a coordinator
 * rank that hands out batches, reorders the results and feeds the sink in sample order (see
 * rollout.h). */
#include "calmflow/rollout.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "calmflow/commstat.h"
#include "calmflow/fault.h"
#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "calmflow/watchdog.h"

#define TAG_ASSIGN 7101 /* coordinator -> worker: int64 batch index, or -1: no more work */
#define TAG_HEAD 7102   /* worker -> coordinator: int64 {batch index, status} */
#define TAG_DATA 7103   /* worker -> coordinator: the batch's samples (status OK only) */

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* One model replica: the ranks of a data-parallel index, together one whole model. */
struct replica {
  MPI_Comm rep;    /* its ranks (the leader is rank 0 in it); MPI_COMM_NULL: whole model */
  MPI_Comm pp;     /* pipeline neighbours (rank = stage); MPI_COMM_NULL: one stage */
  int n_pp, stage; /* stages, this rank's */
  int first, last; /* holds the encoder / the head */
  int leader;      /* talks to the coordinator: stage 0, tensor and context rank 0 */
  int stride;      /* world ranks per replica: replica r's leader is world rank r*stride */
  int64_t nm, Bm;  /* micro-batches per batch and sequences in each */
  int64_t max_new; /* tokens per sequence one extend adds */
  int64_t rows;    /* token rows per sequence of a stage message: max(max_new, prompt_len) */
};

struct bufs {
  struct cf_kvcache *kc; /* (nm) one cache per micro-batch */
  float *seq;            /* (nm*Bm, J, D) points of the batch, time-major (first, last stage) */
  float *stage;          /* (Bm, J, D) contiguous input for extend (first stage) */
  float *act;            /* (Bm, max_new, H) activations received from the previous stage */
  float *act_out;        /* (nm, Bm, max_new, H) sent to the next stage, one per micro-batch */
  float *h;              /* (Bm, max_new, H) final hidden states (last stage) */
  float *hl;             /* (Bm, P*S, H) hidden states of the newest point */
  float *eps;            /* (Bm, P*S*H) or (Bm, P*D) */
  float *y;              /* (Bm, P, D) head output */
  float *pts;            /* (nm, Bm, P, D) new points sent back to the first stage */
  MPI_Request *req;      /* (2, nm) outstanding sends of act_out and pts */
  int32_t *ids;          /* (Bm, prompt_len) the prompt of every sequence (first stage) */
};

/* What the coordinator does between the rollout steps of its own batch. */
struct poll_fn {
  cf_status (*fn)(void *ctx);
  void *ctx;
};

#define TAG_ACT 7104 /* stage s -> s+1: a micro-batch's activations */
#define TAG_PTS 7105 /* last stage -> first: a micro-batch's new points */

static cf_status pp_recv(const struct replica *r, float *buf, int64_t n, int from, int tag) {
  cf_watchdog_enter("sample_pp_recv", from);
  double t0 = cf_commstat_now();
  int e = cf_mpi_recv(buf, (size_t)n, MPI_FLOAT, from, tag, r->pp);
  cf_commstat_add(CF_COMM_PP, (double)n * sizeof(float), cf_commstat_now() - t0);
  cf_watchdog_leave();
  CF_MPI(e);
  return CF_OK;
}

/* Wait for the previous send from a buffer before it is refilled. */
static cf_status wait_send(MPI_Request *q, int peer) {
  cf_watchdog_enter("sample_pp_send", peer);
  int e = MPI_Wait(q, MPI_STATUS_IGNORE);
  cf_watchdog_leave();
  CF_MPI(e);
  return CF_OK;
}

/* Collective on the replica. Put the prompt into micro-batch mb's empty cache c: the first
 * stage embeds the ids, the others receive the previous stage's residual stream and all but
 * the last send theirs on (in the same (step, micro-batch) order as the extends). */
static cf_status prefill(const struct cf_model *m, const struct replica *r, struct bufs *w,
                         struct cf_kvcache *c, int64_t mb) {
  const int64_t n = r->Bm * m->cfg.prompt_len * m->cfg.H;
  const float *in = NULL;
  if (!r->first) {
    CF_TRY(pp_recv(r, w->act, n, r->stage - 1, TAG_ACT));
    in = w->act;
  }
  if (r->last) return cf_model_prefill(m, c, w->ids, in, NULL);
  float *ao = w->act_out + mb * r->Bm * r->rows * m->cfg.H;
  CF_TRY(wait_send(&w->req[mb], r->stage + 1));
  CF_TRY(cf_model_prefill(m, c, w->ids, in, ao));
  if (cf_mpi_isend(ao, (size_t)n, MPI_FLOAT, r->stage + 1, TAG_ACT, r->pp, &w->req[mb]) !=
      MPI_SUCCESS)
    return cf_err(CF_EMPI, "sampling: sending the prompt's activations to stage %d failed",
                  r->stage + 1);
  cf_commstat_add(CF_COMM_PP, (double)n * sizeof(float), 0);
  return CF_OK;
}

/* Collective on the replica. Roll out sequences [s0, s0 + b) of the global order. The batch
 * is cut into nm micro-batches of Bm sequences (padding sequences repeat s0); every pipeline
 * stage takes them in the order (step, micro-batch), the last stage sends each micro-batch's
 * new points back to the first, so with nm = pp every stage has a micro-batch to work on.
 * Leader: out gets the batch's samples in order, (count, N, D) trajectories when traj, else
 * (count, D) final points; count = the samples of those sequences below n. */
static cf_status rollout_batch(const struct cf_model *m, const struct cf_flow_cfg *fc,
                               const struct cf_dist *src, const struct cf_sample_cfg *sc,
                               const struct replica *r, struct bufs *w, int64_t s0, int64_t b,
                               float *out, const struct poll_fn *poll) {
  const struct cf_model_cfg *mc = &m->cfg;
  const int64_t P = mc->P, N = mc->N, S = mc->S, D = mc->D, H = mc->H, J = N * P;
  const int64_t nm = r->nm, Bm = r->Bm;
  const int64_t per = cf_head_noise_width(mc), epsw = P * per; /* noise per point, sequence */
  const int piped = r->n_pp > 1;
  /* t = 0: the source points */
  if (r->first || r->last)
    for (int64_t i = 0; i < nm * Bm; i++)
      for (int64_t p = 0; p < P; p++) {
        uint64_t g = (uint64_t)((s0 + (i < b ? i : 0)) * P + p);
        struct cf_rng q = {sc->seed, CF_RNG_X0, UINT32_MAX, g};
        cf_dist_draw(src, &q, w->seq + i * J * D + p * D);
      }
  for (int64_t mb = 0; mb < nm; mb++)
    cf_kvcache_reset(&w->kc[mb]);
  for (int64_t t = 0; t + 1 < N; t++) {
    const int64_t np = sc->kvcache ? P : (t + 1) * P, first = sc->kvcache ? t * P : 0;
    for (int64_t mb = 0; mb < nm; mb++) {
      struct cf_kvcache *c = &w->kc[mb];
      float *seq = w->seq + mb * Bm * J * D;
      if (!sc->kvcache) cf_kvcache_reset(c);
      if (sc->prompt != NULL && (t == 0 || !sc->kvcache)) CF_TRY(prefill(m, r, w, c, mb));
      const float *in;
      if (r->first) {
        if (piped && t > 0) { /* the points of step t from the last stage */
          CF_TRY(pp_recv(r, w->y, Bm * P * D, r->n_pp - 1, TAG_PTS));
          for (int64_t i = 0; i < Bm; i++)
            memcpy(seq + (i * J + t * P) * D, w->y + i * P * D, (size_t)(P * D) * sizeof(float));
        }
        for (int64_t i = 0; i < Bm; i++)
          memcpy(w->stage + i * np * D, seq + (i * J + first) * D,
                 (size_t)(np * D) * sizeof(float));
        in = w->stage;
      } else {
        CF_TRY(pp_recv(r, w->act, Bm * np * S * H, r->stage - 1, TAG_ACT));
        in = w->act;
      }
      if (!r->last) {
        float *ao = w->act_out + mb * Bm * r->rows * H;
        CF_TRY(wait_send(&w->req[mb], r->stage + 1));
        CF_TRY(cf_model_extend(m, c, in, np, ao));
        if (cf_mpi_isend(ao, (size_t)(Bm * np * S * H), MPI_FLOAT, r->stage + 1, TAG_ACT, r->pp,
                         &w->req[mb]) != MPI_SUCCESS)
          return cf_err(CF_EMPI, "sampling: sending activations to stage %d failed", r->stage + 1);
        cf_commstat_add(CF_COMM_PP, (double)(Bm * np * S * H) * sizeof(float), 0);
      } else {
        CF_TRY(cf_model_extend(m, c, in, np, w->h));
        for (int64_t i = 0; i < Bm; i++)
          memcpy(w->hl + i * P * S * H, w->h + (i * np * S + (np - P) * S) * H,
                 (size_t)(P * S * H) * sizeof(float));
        for (int64_t i = 0; i < Bm; i++)
          for (int64_t p = 0; p < P; p++) {
            int64_t ib = mb * Bm + i; /* sequence within the batch */
            uint64_t g = (uint64_t)((s0 + (ib < b ? ib : 0)) * P + p);
            struct cf_rng q = {sc->seed, CF_RNG_SAMPLE, (uint32_t)t, g};
            cf_head_noise(mc, &q, w->eps + i * epsw + p * per);
          }
        CF_TRY(cf_head_sample(m, c, P, w->hl, w->eps, (float)sc->tau, w->y));
        for (int64_t i = 0; i < Bm; i++)
          for (int64_t p = 0; p < P; p++) {
            const float *cur = seq + (i * J + t * P + p) * D;
            float *nxt = seq + (i * J + (t + 1) * P + p) * D;
            cf_flow_advance(fc, cur, w->y + (i * P + p) * D, nxt);
          }
        if (piped) { /* every step's points go back, the last ones too: the leader outputs */
          float *pb = w->pts + mb * Bm * P * D;
          CF_TRY(wait_send(&w->req[nm + mb], 0));
          for (int64_t i = 0; i < Bm; i++)
            memcpy(pb + i * P * D, seq + (i * J + (t + 1) * P) * D,
                   (size_t)(P * D) * sizeof(float));
          if (cf_mpi_isend(pb, (size_t)(Bm * P * D), MPI_FLOAT, 0, TAG_PTS, r->pp,
                           &w->req[nm + mb]) != MPI_SUCCESS)
            return cf_err(CF_EMPI, "sampling: sending points to stage 0 failed");
        }
      }
      if (poll != NULL) CF_TRY(poll->fn(poll->ctx));
    }
  }
  if (r->first && piped) /* the final points */
    for (int64_t mb = 0; mb < nm; mb++) {
      float *seq = w->seq + mb * Bm * J * D;
      CF_TRY(pp_recv(r, w->y, Bm * P * D, r->n_pp - 1, TAG_PTS));
      for (int64_t i = 0; i < Bm; i++)
        memcpy(seq + (i * J + (N - 1) * P) * D, w->y + i * P * D, (size_t)(P * D) * sizeof(float));
    }
  for (int64_t q = 0; q < 2 * nm; q++)
    CF_TRY(wait_send(&w->req[q], -1));
  if (!r->leader) return CF_OK;
  int64_t count = (s0 + b) * P <= sc->n ? b * P : sc->n - s0 * P;
  for (int64_t k = 0; k < count; k++) {
    int64_t i = k / P, p = k % P;
    if (sc->traj) {
      for (int64_t t = 0; t < N; t++)
        memcpy(out + (k * N + t) * D, w->seq + (i * J + t * P + p) * D, (size_t)D * sizeof(float));
    } else {
      memcpy(out + k * D, w->seq + (i * J + (N - 1) * P + p) * D, (size_t)D * sizeof(float));
    }
  }
  return CF_OK;
}

/* Collective on the replica. The leader hands batch k (-1: stop) to the replica's other ranks.
 */
static cf_status replica_bcast(const struct replica *r, int64_t *k) {
  if (r->rep == MPI_COMM_NULL) return CF_OK;
  cf_watchdog_enter("sample_replica_bcast", 0);
  int e = MPI_Bcast(k, 1, MPI_INT64_T, 0, r->rep);
  cf_watchdog_leave();
  CF_MPI(e);
  return CF_OK;
}

/* Collective on the replica: did batch k succeed on every rank of it? */
static cf_status replica_agree(const struct replica *r, cf_status st) {
  if (r->rep == MPI_COMM_NULL) return st;
  int bad = st != CF_OK, any = 0;
  cf_watchdog_enter("sample_replica_agree", -1);
  int e = MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_LOR, r->rep);
  cf_watchdog_leave();
  CF_MPI(e);
  if (st != CF_OK) return st;
  return any ? cf_err(CF_EREMOTE, "sampling failed on another rank of this model replica") : CF_OK;
}

/* Sequences in batch k of a run starting at sequence sfirst, Ns sequences in all. */
static int64_t batch_seqs(int64_t sfirst, int64_t Ns, int64_t batch, int64_t k) {
  int64_t s0 = sfirst + k * batch;
  return s0 + batch <= Ns ? batch : Ns - s0;
}

/* Collective on the replica. Batch k from its leader: broadcast, roll out, agree. */
static cf_status replica_batch(const struct cf_model *m, const struct cf_flow_cfg *fc,
                               const struct cf_dist *src, const struct cf_sample_cfg *sc,
                               const struct replica *r, struct bufs *w, int64_t sfirst, int64_t Ns,
                               int64_t k, float *out, const struct poll_fn *poll) {
  CF_TRY(replica_bcast(r, &k));
  cf_status st = rollout_batch(m, fc, src, sc, r, w, sfirst + k * sc->batch,
                               batch_seqs(sfirst, Ns, sc->batch, k), out, poll);
  return replica_agree(r, st);
}

/* ---- the coordinator (rank 0) ---- */

struct coord {
  MPI_Comm comm;
  int world;
  int stride; /* the workers are the replica leaders: world ranks stride, 2*stride, .. */
  const struct cf_sample_cfg *sc;
  int64_t P, N, D, per_sample; /* floats per sample in a result */
  int64_t nb;                  /* batches of this run */
  int64_t sfirst;              /* first sequence of this run: batch k starts at sfirst + k*batch */
  int64_t next;                /* next batch to hand out */
  int64_t frontier;            /* first batch not yet given to the sink */
  int64_t window;              /* batches handed out may not reach frontier + window */
  int64_t *slot_k;             /* (window) batch held in each reorder slot, -1: free */
  int *slot_ready;             /* (window) its samples are complete (rank 0's own batch is
                                  registered before it is computed) */
  float *slots;                /* (window, batch floats) */
  int64_t batch_floats;
  int *stopped;         /* (world) the worker got its -1 */
  int *owed;            /* (world) assignments owed to it (the window was full) */
  int64_t *outstanding; /* (world) batches assigned and not yet returned */
  cf_rollout_sink sink;
  void *sink_ctx;
  cf_status err; /* first failure seen (CF_OK: none) */
  double t0, last_print;
  double busy_s;  /* serving time inside rank 0's own batch (subtracted from its busy time) */
  double serve_s; /* all time spent receiving, reordering, in the sink and assigning */
  float *recv;    /* (batch floats) landing buffer */
};

/* Local. Samples of batch k: [s0*P, s0*P + count). */
static void batch_span(const struct coord *c, int64_t k, int64_t *i0, int64_t *count) {
  int64_t Ns = (c->sc->n + c->P - 1) / c->P, s0 = c->sfirst + k * c->sc->batch;
  int64_t s1 = s0 + c->sc->batch < Ns ? s0 + c->sc->batch : Ns;
  *i0 = s0 * c->P;
  *count = (s1 * c->P < c->sc->n ? s1 * c->P : c->sc->n) - *i0;
}

static float *slot_for(struct coord *c, int64_t k) {
  for (int64_t s = 0; s < c->window; s++)
    if (c->slot_k[s] == -1) {
      c->slot_k[s] = k;
      c->slot_ready[s] = 0;
      return c->slots + s * c->batch_floats;
    }
  return NULL; /* cannot happen: the window bounds the batches in flight */
}

/* Batch k's samples are all in its slot. */
static void mark_ready(struct coord *c, int64_t k) {
  for (int64_t s = 0; s < c->window; s++)
    if (c->slot_k[s] == k) c->slot_ready[s] = 1;
}

/* Give every finished batch at the frontier to the sink, in order. */
static cf_status flush(struct coord *c) {
  for (int found = 1; found && c->err == CF_OK;) {
    found = 0;
    for (int64_t s = 0; s < c->window; s++) {
      if (c->slot_k[s] != c->frontier || !c->slot_ready[s]) continue;
      int64_t i0, count;
      batch_span(c, c->frontier, &i0, &count);
      const float *d = c->slots + s * c->batch_floats;
      cf_status st;
      if (c->sc->traj) {
        /* x is the last time point of each trajectory: gather it into the landing buffer */
        for (int64_t q = 0; q < count; q++)
          memcpy(c->recv + q * c->D, d + (q * c->N + c->N - 1) * c->D,
                 (size_t)c->D * sizeof(float));
        st = c->sink(c->sink_ctx, i0, count, c->recv, d);
      } else {
        st = c->sink(c->sink_ctx, i0, count, d, NULL);
      }
      if (st != CF_OK) c->err = st;
      c->slot_k[s] = -1;
      c->frontier++;
      found = 1;
      if (!c->sc->quiet) {
        double tn = now_s();
        if (tn - c->last_print >= 2.0 || c->frontier == c->nb) {
          double done = (double)(i0 + count - c->sc->first), left = (double)(c->sc->n - i0 - count);
          double rate = done / (tn - c->t0 > 1e-9 ? tn - c->t0 : 1e-9);
          printf("sample: %lld/%lld  %.0f samples/s  ETA %.0fs\n", (long long)(i0 + count),
                 (long long)c->sc->n, rate, rate > 0 ? left / rate : 0.0);
          fflush(stdout);
          c->last_print = tn;
        }
      }
      break;
    }
  }
  return c->err;
}

/* The next batch for a worker (or for rank 0 itself): -1 when there is none now; *wait set
 * when there is work left but the window is full. After a failure nothing more is handed out. */
static int64_t take(struct coord *c, int *wait) {
  *wait = 0;
  if (c->err != CF_OK || c->next >= c->nb) return -1;
  if (c->next >= c->frontier + c->window - 1) { /* keep a slot for rank 0's own batch */
    *wait = 1;
    return -1;
  }
  return c->next++;
}

static cf_status send_assign(struct coord *c, int w, int64_t k) {
  if (k < 0)
    c->stopped[w] = 1;
  else
    c->outstanding[w]++;
  cf_watchdog_enter("sample_assign", w);
  int e = MPI_Send(&k, 1, MPI_INT64_T, w, TAG_ASSIGN, c->comm);
  cf_watchdog_leave();
  CF_MPI(e);
  return CF_OK;
}

/* Serve a worker that is owed work or must be told to stop. */
static cf_status serve(struct coord *c, int w) {
  while (c->owed[w] > 0 && !c->stopped[w]) {
    /* a second batch ahead only while more are left than there are replicas: at the tail a
     * batch waiting in one replica's queue would leave another idle */
    if (c->outstanding[w] >= 1 && c->err == CF_OK && c->next < c->nb &&
        c->nb - c->next <= (int64_t)(c->world / c->stride))
      return CF_OK;
    int wait;
    int64_t k = take(c, &wait);
    if (wait) return CF_OK;
    c->owed[w]--;
    if (k < 0) {
      c->owed[w] = 0;
      if (c->outstanding[w] == 0 || c->err != CF_OK || c->next >= c->nb)
        CF_TRY(send_assign(c, w, -1));
      return CF_OK;
    }
    CF_TRY(send_assign(c, w, k));
  }
  return CF_OK;
}

static cf_status serve_all(struct coord *c) {
  for (int w = c->stride; w < c->world; w += c->stride)
    CF_TRY(serve(c, w));
  return CF_OK;
}

/* Tell the workers with nothing outstanding that the work is over (all handed out, or a
 * failure). */
static cf_status stop_idle(struct coord *c) {
  for (int w = c->stride; w < c->world; w += c->stride)
    if (!c->stopped[w] && c->outstanding[w] == 0 && (c->err != CF_OK || c->next >= c->nb))
      CF_TRY(send_assign(c, w, -1));
  return CF_OK;
}

static cf_status receive_one(struct coord *c, int w);

/* Receive one result that is known to be waiting from worker w (timed). */
static cf_status receive(struct coord *c, int w) {
  double t = now_s();
  cf_status st = receive_one(c, w);
  c->serve_s += now_s() - t;
  return st;
}

static cf_status receive_one(struct coord *c, int w) {
  int64_t head[2];
  cf_watchdog_enter("sample_result", w);
  int e = MPI_Recv(head, 2, MPI_INT64_T, w, TAG_HEAD, c->comm, MPI_STATUS_IGNORE);
  cf_watchdog_leave();
  CF_MPI(e);
  c->outstanding[w]--;
  if (head[1] != CF_OK) {
    if (c->err == CF_OK) c->err = cf_err(CF_EREMOTE, "sampling failed on rank %d", w);
  } else {
    int64_t i0, count;
    batch_span(c, head[0], &i0, &count);
    float *d = slot_for(c, head[0]);
    CF_CHECK(d != NULL, CF_EINVAL, "sample coordinator: no free reorder slot (internal error)");
    cf_watchdog_enter("sample_result", w);
    e = cf_mpi_recv(d, (size_t)(count * c->per_sample), MPI_FLOAT, w, TAG_DATA, c->comm);
    cf_watchdog_leave();
    CF_MPI(e);
    mark_ready(c, head[0]);
    flush(c);
  }
  c->owed[w]++;
  CF_TRY(serve_all(c)); /* the frontier may have moved: others may be owed work too */
  return CF_OK;
}

/* Rank 0 between its own rollout steps: take every result that has arrived. */
static cf_status coord_poll(void *ctx) {
  struct coord *c = ctx;
  double t = now_s();
  for (;;) {
    int flag = 0;
    MPI_Status s;
    CF_MPI(MPI_Iprobe(MPI_ANY_SOURCE, TAG_HEAD, c->comm, &flag, &s));
    if (!flag) break;
    CF_TRY(receive(c, s.MPI_SOURCE));
  }
  c->busy_s -= now_s() - t; /* serving is not computing */
  return CF_OK;
}

static int workers_done(const struct coord *c) {
  for (int w = c->stride; w < c->world; w += c->stride)
    if (!c->stopped[w] || c->outstanding[w] > 0) return 0;
  return 1;
}

/* ---- the run ---- */

/* Collective on comm. This rank's replica on grid g (NULL: every rank a whole model). */
static cf_status replica_init(struct replica *r, MPI_Comm comm, const struct cf_grid *g,
                              const struct cf_model *m, int64_t B, int kvcache) {
  const struct cf_model_cfg *mc = &m->cfg;
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  memset(r, 0, sizeof *r);
  r->rep = r->pp = MPI_COMM_NULL;
  r->n_pp = 1;
  r->stride = 1;
  if (g != NULL && g->n_dp < g->size) {
    r->n_pp = g->n_pp;
    r->stage = g->pp_rank;
    r->stride = g->size / g->n_dp;
    CF_MPI(MPI_Comm_split(comm, g->dp_rank, rank, &r->rep));
    r->pp = g->n_pp > 1 ? g->pp : MPI_COMM_NULL;
  }
  r->first = cf_model_first(m);
  r->last = cf_model_last(m);
  r->leader = rank % r->stride == 0;
  r->nm = B < r->n_pp ? B : r->n_pp;
  r->Bm = (B + r->nm - 1) / r->nm;
  r->max_new = kvcache ? mc->P * mc->S : mc->N * mc->P * mc->S;
  r->rows = r->max_new > mc->prompt_len ? r->max_new : mc->prompt_len;
  return CF_OK;
}

static void replica_release(struct replica *r) {
  if (r->rep != MPI_COMM_NULL) MPI_Comm_free(&r->rep);
}

/* Local. Lay out (pass 0: plan) the rollout buffers of this rank's role. */
static void bufs_layout(struct cf_arena *ar, struct bufs *w, const struct replica *r,
                        const struct cf_model_cfg *mc) {
  const int64_t P = mc->P, N = mc->N, S = mc->S, D = mc->D, H = mc->H, J = N * P;
  const int64_t Bm = r->Bm, nm = r->nm, rows = Bm * r->rows * H;
  struct cf_kvcache *kc = w->kc;
  MPI_Request *req = w->req;
  int32_t *ids = w->ids;
  memset(w, 0, sizeof *w);
  w->kc = kc;
  w->req = req;
  w->ids = ids;
  if (r->first || r->last) {
    w->seq = cf_arena_floats(ar, (size_t)(nm * Bm * J * D));
    w->y = cf_arena_floats(ar, (size_t)(Bm * P * D));
  }
  if (r->first) w->stage = cf_arena_floats(ar, (size_t)(Bm * J * D));
  if (!r->first) w->act = cf_arena_floats(ar, (size_t)rows);
  if (!r->last) w->act_out = cf_arena_floats(ar, (size_t)(nm * rows));
  if (r->last) {
    w->h = cf_arena_floats(ar, (size_t)rows);
    w->hl = cf_arena_floats(ar, (size_t)(Bm * P * S * H));
    w->eps = cf_arena_floats(ar, (size_t)(Bm * P * cf_head_noise_width(mc)));
    if (r->n_pp > 1) w->pts = cf_arena_floats(ar, (size_t)(nm * Bm * P * D));
  }
}

cf_status cf_rollout_run(MPI_Comm comm, const struct cf_grid *g, const struct cf_model *m,
                         const struct cf_flow_cfg *fc, const struct cf_dist *src,
                         const struct cf_sample_cfg *sc, cf_rollout_sink sink, void *sink_ctx,
                         struct cf_rollout_stats *stats) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  const struct cf_model_cfg *mc = &m->cfg;
  const int64_t P = mc->P, N = mc->N, D = mc->D, T = N * P * mc->S;
  CF_CHECK(sc->n >= 1, CF_EINVAL, "option -sample_n: expected >= 1, got %lld", (long long)sc->n);
  CF_CHECK(sc->batch >= 1, CF_EINVAL, "option -sample_batch: expected >= 1, got %lld",
           (long long)sc->batch);
  CF_CHECK(sc->first >= 0 && sc->first <= sc->n && (sc->first % P == 0 || sc->first == sc->n),
           CF_EINVAL, "sampling: resume point %lld is not a whole number of sequences of %lld",
           (long long)sc->first, (long long)P);
  CF_CHECK(g == NULL || (g->size == world), CF_EINVAL,
           "sampling: the process grid has %d ranks but the communicator %d", g ? g->size : 0,
           world);
  const int64_t Ns = (sc->n + P - 1) / P;                         /* sequences in all */
  const int64_t sfirst = sc->first == sc->n ? Ns : sc->first / P; /* first sequence to make */
  const int64_t nb = (Ns - sfirst + sc->batch - 1) / sc->batch;
  const int64_t B = sc->batch < Ns - sfirst ? sc->batch : (Ns > sfirst ? Ns - sfirst : 1);
  const int64_t per_sample = sc->traj ? N * D : D, batch_floats = B * P * per_sample;
  CF_CHECK((double)batch_floats < 2147483647.0, CF_EINVAL,
           "option -sample_batch: %lld sequences make a result of %lld floats, too large for one "
           "message; use a smaller batch",
           (long long)sc->batch, (long long)batch_floats);

  struct replica rp;
  CF_TRY(replica_init(&rp, comm, g, m, B, sc->kvcache));
  const int n_rep = world / rp.stride;
  const int64_t window = 2 * (int64_t)n_rep + 2;
  struct cf_kvcache *kc = NULL;
  cf_status st = cf_alloc((void **)&kc, (size_t)rp.nm * sizeof *kc, "kv caches");
  struct bufs w;
  memset(&w, 0, sizeof w);
  if (st == CF_OK)
    st = cf_alloc((void **)&w.req, (size_t)(2 * rp.nm) * sizeof(MPI_Request), "sample requests");
  for (int64_t i = 0; i < 2 * rp.nm && st == CF_OK; i++)
    w.req[i] = MPI_REQUEST_NULL;
  const int64_t L = mc->prompt_len;
  if (st == CF_OK && (L > 0) != (sc->prompt != NULL))
    st = cf_err(CF_EINVAL, "sampling: the model %s a prompt but the run %s one",
                L > 0 ? "has" : "has no", sc->prompt != NULL ? "gives" : "gives no");
  if (st == CF_OK && L > 0)
    st = cf_alloc((void **)&w.ids, (size_t)(rp.Bm * L) * sizeof(int32_t), "prompt ids");
  for (int64_t i = 0; st == CF_OK && L > 0 && i < rp.Bm; i++)
    memcpy(w.ids + i * L, sc->prompt, (size_t)L * sizeof(int32_t));
  for (int64_t i = 0; i < rp.nm && st == CF_OK; i++)
    st = cf_kvcache_init(&kc[i], m, rp.Bm, T, rp.max_new);
  w.kc = kc;
  struct cf_arena ar;
  memset(&ar, 0, sizeof ar);
  struct coord c;
  memset(&c, 0, sizeof c);
  float *res[2] = {NULL, NULL};
  for (int pass = 0; pass < 2 && st == CF_OK; pass++) {
    if (pass == 1) {
      st = cf_arena_commit(&ar, 0, "rollout buffers");
      if (st != CF_OK) break;
    } else {
      cf_arena_plan(&ar);
    }
    bufs_layout(&ar, &w, &rp, mc);
    if (rp.leader) {
      res[0] = cf_arena_floats(&ar, (size_t)batch_floats);
      res[1] = cf_arena_floats(&ar, (size_t)batch_floats);
    }
    if (rank == 0) {
      c.slots = cf_arena_floats(&ar, (size_t)(window * batch_floats));
      c.recv = cf_arena_floats(&ar, (size_t)(B * P * D));
    }
  }
  double t0 = now_s(), busy = 0;
  int64_t made = 0;
  if (st != CF_OK) {
    /* fall through to the agreement: every rank learns of the failure */
  } else if (rank == 0) {
    c.comm = comm;
    c.world = world;
    c.stride = rp.stride;
    c.sc = sc;
    c.P = P;
    c.N = N;
    c.D = D;
    c.per_sample = per_sample;
    c.nb = nb;
    c.sfirst = sfirst;
    c.next = c.frontier = 0;
    c.window = window;
    c.batch_floats = batch_floats;
    c.sink = sink;
    c.sink_ctx = sink_ctx;
    c.t0 = t0;
    c.last_print = t0;
    c.err = CF_OK;
    size_t nw = (size_t)world;
    st = cf_alloc((void **)&c.slot_k, (size_t)window * sizeof(int64_t), "sample reorder slots");
    if (st == CF_OK)
      st = cf_alloc((void **)&c.slot_ready, (size_t)window * sizeof(int), "sample reorder slots");
    if (st == CF_OK) st = cf_alloc((void **)&c.stopped, nw * sizeof(int), "sample queue");
    if (st == CF_OK) st = cf_alloc((void **)&c.owed, nw * sizeof(int), "sample queue");
    if (st == CF_OK) st = cf_alloc((void **)&c.outstanding, nw * sizeof(int64_t), "sample queue");
    if (st == CF_OK) {
      for (int64_t s = 0; s < window; s++)
        c.slot_k[s] = -1;
      for (int q = rp.stride; q < world; q += rp.stride)
        c.owed[q] = 1;    /* one batch each to start; the second (the one known next) once rank 0
                             has taken its own, so a short run keeps rank 0 busy too */
      st = serve_all(&c); /* serve() stops a worker at once when there is no work for it */
    }
    struct poll_fn poll = {coord_poll, &c};
    int second_round = 0;
    while (st == CF_OK && (c.frontier < c.nb || !workers_done(&c))) {
      int wait;
      int64_t k = take(&c, &wait);
      if (k >= 0 && !second_round) {
        second_round = 1;
        for (int q = rp.stride; q < world; q += rp.stride)
          c.owed[q]++;
        st = serve_all(&c);
        if (st != CF_OK) break;
      }
      if (k >= 0) { /* rank 0's replica computes a batch, rank 0 serving the queue between steps */
        float *d = slot_for(&c, k);
        double tb = now_s();
        c.busy_s = 0;
        cf_status sb = cf_fault_point("sample_batch");
        if (sb == CF_OK) sb = replica_batch(m, fc, src, sc, &rp, &w, sfirst, Ns, k, d, &poll);
        busy += now_s() - tb + c.busy_s;
        made++;
        if (sb != CF_OK) {
          if (c.err == CF_OK) c.err = sb;
          for (int64_t s = 0; s < window; s++)
            if (c.slot_k[s] == k) c.slot_k[s] = -1;
          st = serve_all(&c);
        } else {
          double ts = now_s();
          mark_ready(&c, k);
          flush(&c);
          st = serve_all(&c);
          c.serve_s += now_s() - ts;
        }
        if (st == CF_OK) st = stop_idle(&c);
        continue;
      }
      if (workers_done(&c)) break; /* a failure: nothing more will arrive */
      /* nothing to compute here now: wait for a result */
      MPI_Status s;
      cf_watchdog_enter("sample_result", -1);
      int e = MPI_Probe(MPI_ANY_SOURCE, TAG_HEAD, comm, &s);
      cf_watchdog_leave();
      if (e != MPI_SUCCESS) {
        st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Probe");
        break;
      }
      st = receive(&c, s.MPI_SOURCE);
      if (st == CF_OK) st = stop_idle(&c);
    }
    if (st == CF_OK) st = c.err;
    c.busy_s = 0;
    int64_t stop = -1;
    cf_status sr = replica_bcast(&rp, &stop); /* rank 0's replica is done */
    if (st == CF_OK) st = sr;
  } else if (!rp.leader) {
    /* a rank of a replica: the batches its leader starts, until -1 */
    for (;;) {
      int64_t k = -1;
      cf_status sb = replica_bcast(&rp, &k);
      if (sb != CF_OK || k < 0) {
        if (st == CF_OK) st = sb;
        break;
      }
      double tb = now_s();
      sb = replica_agree(&rp, rollout_batch(m, fc, src, sc, &rp, &w, sfirst + k * sc->batch,
                                            batch_seqs(sfirst, Ns, sc->batch, k), NULL, NULL));
      busy += now_s() - tb;
      made++;
      if (st == CF_OK) st = sb;
    }
  } else {
    /* a replica's leader: up to two assigned batches; results go back with a non-blocking
     * send */
    int64_t queue[2], nq = 0;
    int stopped = 0, cur = 0;
    MPI_Request sreq[2][2] = {{MPI_REQUEST_NULL, MPI_REQUEST_NULL},
                              {MPI_REQUEST_NULL, MPI_REQUEST_NULL}};
    int64_t head[2][2];
    while (st == CF_OK) {
      while (!stopped && nq < 2) { /* the next assignment, when one is due */
        int flag = 1;
        MPI_Status s;
        if (nq > 0) {
          int e = MPI_Iprobe(0, TAG_ASSIGN, comm, &flag, &s);
          if (e != MPI_SUCCESS) st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Iprobe");
        }
        if (st != CF_OK || !flag) break;
        int64_t k;
        cf_watchdog_enter("sample_assign", 0);
        int e = MPI_Recv(&k, 1, MPI_INT64_T, 0, TAG_ASSIGN, comm, MPI_STATUS_IGNORE);
        cf_watchdog_leave();
        if (e != MPI_SUCCESS) st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Recv");
        if (st != CF_OK) break;
        if (k < 0)
          stopped = 1;
        else
          queue[nq++] = k;
      }
      if (st != CF_OK || nq == 0) break;
      int64_t k = queue[0];
      queue[0] = queue[1];
      nq--;
      /* the buffer's previous result must have left */
      cf_watchdog_enter("sample_send", 0);
      int e = MPI_Waitall(2, sreq[cur], MPI_STATUSES_IGNORE);
      cf_watchdog_leave();
      if (e != MPI_SUCCESS) {
        st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Waitall");
        break;
      }
      double tb = now_s();
      cf_status sb = cf_fault_point("sample_batch");
      if (sb == CF_OK) sb = replica_batch(m, fc, src, sc, &rp, &w, sfirst, Ns, k, res[cur], NULL);
      busy += now_s() - tb;
      made++;
      int64_t s0 = sfirst + k * sc->batch, s1 = s0 + batch_seqs(sfirst, Ns, sc->batch, k);
      int64_t count = (s1 * P < sc->n ? s1 * P : sc->n) - s0 * P;
      head[cur][0] = k;
      head[cur][1] = sb;
      if (MPI_Isend(head[cur], 2, MPI_INT64_T, 0, TAG_HEAD, comm, &sreq[cur][0]) != MPI_SUCCESS ||
          (sb == CF_OK && cf_mpi_isend(res[cur], (size_t)(count * per_sample), MPI_FLOAT, 0,
                                       TAG_DATA, comm, &sreq[cur][1]) != MPI_SUCCESS))
        st = cf_err(CF_EMPI, "sending a sample batch to the coordinator failed");
      if (sb != CF_OK) st = sb; /* keep our own error; the coordinator stops the others */
      cur ^= 1;
    }
    /* wait for the sends, and (after a failure) for the coordinator's stop; batches this rank
     * holds but will not make go back as failed, so the coordinator is not left waiting */
    for (int i = 0; i < 2; i++)
      MPI_Waitall(2, sreq[i], MPI_STATUSES_IGNORE);
    for (int64_t q = 0; q < nq; q++) {
      int64_t h[2] = {queue[q], CF_EREMOTE};
      MPI_Send(h, 2, MPI_INT64_T, 0, TAG_HEAD, comm);
    }
    while (!stopped) {
      int64_t k;
      cf_watchdog_enter("sample_assign", 0);
      int e = MPI_Recv(&k, 1, MPI_INT64_T, 0, TAG_ASSIGN, comm, MPI_STATUS_IGNORE);
      cf_watchdog_leave();
      if (e != MPI_SUCCESS) break;
      if (k < 0)
        stopped = 1;
      else { /* work handed out before the coordinator learnt of the failure: give it back */
        int64_t h[2] = {k, CF_EREMOTE};
        MPI_Send(h, 2, MPI_INT64_T, 0, TAG_HEAD, comm);
      }
    }
    int64_t stop = -1;
    cf_status sr = replica_bcast(&rp, &stop);
    if (st == CF_OK) st = sr;
  }
  double wall = now_s() - t0;
  /* everyone agrees on the outcome */
  int bad = st != CF_OK, anybad = 0;
  cf_watchdog_enter("sample_agree", -1);
  int e_agree = MPI_Allreduce(&bad, &anybad, 1, MPI_INT, MPI_LOR, comm);
  double frac = wall > 0 ? busy / wall : 0, fr[2] = {-frac, frac};
  int64_t made_all = 0;
  if (e_agree == MPI_SUCCESS)
    e_agree = MPI_Allreduce(MPI_IN_PLACE, fr, 2, MPI_DOUBLE, MPI_MAX, comm);
  if (e_agree == MPI_SUCCESS)
    e_agree = MPI_Allreduce(&made, &made_all, 1, MPI_INT64_T, MPI_SUM, comm);
  cf_watchdog_leave();
  if (stats) {
    memset(stats, 0, sizeof *stats);
    stats->seconds = wall;
    stats->busy_min = -fr[0];
    stats->busy_max = fr[1];
    stats->coord_seconds = rank == 0 ? c.serve_s : 0;
    stats->batches = made_all / rp.stride; /* every rank of a replica counts its batches */
  }
  cf_free((void **)&c.slot_k);
  cf_free((void **)&c.slot_ready);
  cf_free((void **)&c.stopped);
  cf_free((void **)&c.owed);
  cf_free((void **)&c.outstanding);
  for (int64_t i = 0; kc != NULL && i < rp.nm; i++)
    cf_kvcache_release(&kc[i]);
  cf_free((void **)&kc);
  cf_free((void **)&w.req);
  cf_free((void **)&w.ids);
  cf_arena_release(&ar);
  replica_release(&rp);
  if (st != CF_OK) return st;
  CF_MPI(e_agree);
  if (anybad) return cf_err(CF_EREMOTE, "sampling failed on another rank");
  return CF_OK;
}
