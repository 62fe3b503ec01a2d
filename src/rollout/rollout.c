/* rollout.c: KV-cached (or recompute-the-prefix) autoregressive sampling with a coordinator
 * rank that hands out batches, reorders the results and feeds the sink in sample order (see
 * rollout.h). */
#include "calmflow/rollout.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "calmflow/fault.h"
#include "calmflow/mem.h"
#include "calmflow/watchdog.h"

#define TAG_ASSIGN 7101 /* coordinator -> worker: int64 batch index, or -1: no more work */
#define TAG_HEAD 7102   /* worker -> coordinator: int64 {batch index, status} */
#define TAG_DATA 7103   /* worker -> coordinator: the batch's samples (status OK only) */

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

struct bufs {
  float *seq;   /* (B, J, D) points of the batch, time-major */
  float *stage; /* (B, J, D) contiguous input for extend */
  float *h;     /* (B, J*S, H) hidden states */
  float *hl;    /* (B, P*S, H) hidden states of the newest point */
  float *eps;   /* (B, P*S*H) or (B, P*D) */
  float *y;     /* (B, P, D) head output */
};

/* What the coordinator does between the rollout steps of its own batch. */
struct poll_fn {
  cf_status (*fn)(void *ctx);
  void *ctx;
};

/* Roll out sequences [s0, s0 + b) of the global order. out: the batch's samples in order,
 * (count, N, D) trajectories when traj, else (count, D) final points; count = the samples of
 * those sequences below n. */
static cf_status rollout_batch(const struct cf_model *m, const struct cf_flow_cfg *fc,
                               const struct cf_dist *src, const struct cf_sample_cfg *sc,
                               struct cf_kvcache *c, struct bufs *w, int64_t s0, int64_t b,
                               float *out, const struct poll_fn *poll) {
  const struct cf_model_cfg *mc = &m->cfg;
  const int64_t B = c->B, P = mc->P, N = mc->N, S = mc->S, D = mc->D, H = mc->H, J = N * P;
  const int vae = mc->head == CF_HEAD_VAE;
  const int64_t epsw = vae ? P * S * H : P * D; /* noise floats per sequence and step */
  /* t = 0: the source points; padding sequences (b < B) repeat sequence s0 */
  for (int64_t i = 0; i < B; i++)
    for (int64_t p = 0; p < P; p++) {
      uint64_t g = (uint64_t)((s0 + (i < b ? i : 0)) * P + p);
      struct cf_rng r = {sc->seed, CF_RNG_X0, UINT32_MAX, g};
      cf_dist_draw(src, &r, w->seq + i * J * D + p * D);
    }
  cf_kvcache_reset(c);
  for (int64_t t = 0; t + 1 < N; t++) {
    int64_t np, first;
    if (sc->kvcache) {
      np = P;
      first = t * P;
    } else {
      cf_kvcache_reset(c);
      np = (t + 1) * P;
      first = 0;
    }
    for (int64_t i = 0; i < B; i++)
      memcpy(w->stage + i * np * D, w->seq + (i * J + first) * D, (size_t)(np * D) * sizeof(float));
    CF_TRY(cf_model_extend(m, c, w->stage, np, w->h));
    for (int64_t i = 0; i < B; i++)
      memcpy(w->hl + i * P * S * H, w->h + (i * np * S + (np - P) * S) * H,
             (size_t)(P * S * H) * sizeof(float));
    for (int64_t i = 0; i < B; i++)
      for (int64_t p = 0; p < P; p++) {
        uint64_t g = (uint64_t)((s0 + (i < b ? i : 0)) * P + p);
        struct cf_rng r = {sc->seed, CF_RNG_SAMPLE, (uint32_t)t, g};
        int64_t per = vae ? S * H : D;
        cf_rng_normal(&r, 0, w->eps + i * epsw + p * per, (size_t)per);
      }
    CF_TRY(cf_head_sample(m, c, P, w->hl, w->eps, (float)sc->tau, w->y));
    for (int64_t i = 0; i < B; i++)
      for (int64_t p = 0; p < P; p++) {
        const float *cur = w->seq + (i * J + t * P + p) * D;
        float *nxt = w->seq + (i * J + (t + 1) * P + p) * D;
        cf_flow_advance(fc, cur, w->y + (i * P + p) * D, nxt);
      }
    if (poll != NULL) CF_TRY(poll->fn(poll->ctx));
  }
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

/* Sequences in batch k of a run starting at sequence sfirst, Ns sequences in all. */
static int64_t batch_seqs(int64_t sfirst, int64_t Ns, int64_t batch, int64_t k) {
  int64_t s0 = sfirst + k * batch;
  return s0 + batch <= Ns ? batch : Ns - s0;
}

/* ---- the coordinator (rank 0) ---- */

struct coord {
  MPI_Comm comm;
  int world;
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
  for (int w = 1; w < c->world; w++)
    CF_TRY(serve(c, w));
  return CF_OK;
}

/* Tell the workers with nothing outstanding that the work is over (all handed out, or a
 * failure). */
static cf_status stop_idle(struct coord *c) {
  for (int w = 1; w < c->world; w++)
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
    e = MPI_Recv(d, (int)(count * c->per_sample), MPI_FLOAT, w, TAG_DATA, c->comm,
                 MPI_STATUS_IGNORE);
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
  for (int w = 1; w < c->world; w++)
    if (!c->stopped[w] || c->outstanding[w] > 0) return 0;
  return 1;
}

/* ---- the run ---- */

cf_status cf_rollout_run(MPI_Comm comm, const struct cf_model *m, const struct cf_flow_cfg *fc,
                         const struct cf_dist *src, const struct cf_sample_cfg *sc,
                         cf_rollout_sink sink, void *sink_ctx, struct cf_rollout_stats *stats) {
  int rank, world;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &world));
  const struct cf_model_cfg *mc = &m->cfg;
  const int64_t P = mc->P, N = mc->N, S = mc->S, D = mc->D, H = mc->H, J = N * P, T = J * S;
  CF_CHECK(sc->n >= 1, CF_EINVAL, "option -sample_n: expected >= 1, got %lld", (long long)sc->n);
  CF_CHECK(sc->batch >= 1, CF_EINVAL, "option -sample_batch: expected >= 1, got %lld",
           (long long)sc->batch);
  CF_CHECK(sc->first >= 0 && sc->first <= sc->n && (sc->first % P == 0 || sc->first == sc->n),
           CF_EINVAL, "sampling: resume point %lld is not a whole number of sequences of %lld",
           (long long)sc->first, (long long)P);
  const int64_t Ns = (sc->n + P - 1) / P;                         /* sequences in all */
  const int64_t sfirst = sc->first == sc->n ? Ns : sc->first / P; /* first sequence to make */
  const int64_t nb = (Ns - sfirst + sc->batch - 1) / sc->batch;
  const int64_t B = sc->batch < Ns - sfirst ? sc->batch : (Ns > sfirst ? Ns - sfirst : 1);
  const int64_t per_sample = sc->traj ? N * D : D, batch_floats = B * P * per_sample;
  const int64_t window = 2 * (int64_t)world + 2;
  CF_CHECK((double)batch_floats < 2147483647.0, CF_EINVAL,
           "option -sample_batch: %lld sequences make a result of %lld floats, too large for one "
           "message; use a smaller batch",
           (long long)sc->batch, (long long)batch_floats);

  struct cf_kvcache kc;
  CF_TRY(cf_kvcache_init(&kc, m, B, T, sc->kvcache ? P * S : T));
  struct cf_arena ar;
  struct bufs w;
  struct coord c;
  memset(&c, 0, sizeof c);
  float *res[2] = {NULL, NULL};
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1)
      CF_TRY(cf_arena_commit(&ar, 0, "rollout buffers"));
    else
      cf_arena_plan(&ar);
    w.seq = cf_arena_floats(&ar, (size_t)(B * J * D));
    w.stage = cf_arena_floats(&ar, (size_t)(B * J * D));
    w.h = cf_arena_floats(&ar, (size_t)(B * T * H));
    w.hl = cf_arena_floats(&ar, (size_t)(B * P * S * H));
    w.eps = cf_arena_floats(&ar, (size_t)(B * P * (S * H > D ? S * H : D)));
    w.y = cf_arena_floats(&ar, (size_t)(B * P * D));
    res[0] = cf_arena_floats(&ar, (size_t)batch_floats);
    res[1] = cf_arena_floats(&ar, (size_t)batch_floats);
    if (rank == 0) {
      c.slots = cf_arena_floats(&ar, (size_t)(window * batch_floats));
      c.recv = cf_arena_floats(&ar, (size_t)(B * P * D));
    }
  }
  double t0 = now_s(), busy = 0;
  int64_t made = 0;
  cf_status st = CF_OK;
  if (rank == 0) {
    c.comm = comm;
    c.world = world;
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
      for (int r = 1; r < world; r++)
        c.owed[r] = 1;    /* one batch each to start; the second (the one known next) once rank 0
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
        for (int r = 1; r < world; r++)
          c.owed[r]++;
        st = serve_all(&c);
        if (st != CF_OK) break;
      }
      if (k >= 0) { /* rank 0 computes a batch, serving the queue between its steps */
        float *d = slot_for(&c, k);
        double tb = now_s();
        c.busy_s = 0;
        cf_status sb = cf_fault_point("sample_batch");
        if (sb == CF_OK)
          sb = rollout_batch(m, fc, src, sc, &kc, &w, sfirst + k * sc->batch,
                             batch_seqs(sfirst, Ns, sc->batch, k), d, &poll);
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
  } else {
    /* a worker: up to two assigned batches; results go back with a non-blocking send */
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
      if (sb == CF_OK)
        sb = rollout_batch(m, fc, src, sc, &kc, &w, sfirst + k * sc->batch,
                           batch_seqs(sfirst, Ns, sc->batch, k), res[cur], NULL);
      busy += now_s() - tb;
      made++;
      int64_t s0 = sfirst + k * sc->batch, s1 = s0 + batch_seqs(sfirst, Ns, sc->batch, k);
      int64_t count = (s1 * P < sc->n ? s1 * P : sc->n) - s0 * P;
      head[cur][0] = k;
      head[cur][1] = sb;
      if (MPI_Isend(head[cur], 2, MPI_INT64_T, 0, TAG_HEAD, comm, &sreq[cur][0]) != MPI_SUCCESS ||
          (sb == CF_OK && MPI_Isend(res[cur], (int)(count * per_sample), MPI_FLOAT, 0, TAG_DATA,
                                    comm, &sreq[cur][1]) != MPI_SUCCESS))
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
    stats->batches = made_all;
  }
  cf_free((void **)&c.slot_k);
  cf_free((void **)&c.slot_ready);
  cf_free((void **)&c.stopped);
  cf_free((void **)&c.owed);
  cf_free((void **)&c.outstanding);
  cf_kvcache_release(&kc);
  cf_arena_release(&ar);
  if (st != CF_OK) return st;
  CF_MPI(e_agree);
  if (anybad) return cf_err(CF_EREMOTE, "sampling failed on another rank");
  return CF_OK;
}
