/* cfm.c: the CFM baseline's MLP velocity field (forward, backward, initialization, tensor
 * table; optionally conditioned on one-hot condition features) on the model's kernels, its
 * training pairs (I-CFM draws and paths) and the exact OT coupling over the global batch of all
 * data-parallel ranks (per condition group for a conditional model). Sampling is in
 * cfm_ode.c. */
#include "calmflow/cfm.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/metrics.h"
#include "calmflow/mpichunk.h"
#include "calmflow/rng.h"
#include "flow/cfm_impl.h"
#include "model/layers.h"

#define CFM_NAME_LEN 32 /* bytes per tensor name */
#define CFM_PI 3.14159265358979323846

cf_status cf_cfm_cfg_check(const struct cf_cfm_cfg *c) {
  CF_CHECK(c != NULL, CF_EINVAL, "cfm: no configuration");
  CF_CHECK(c->D >= 1, CF_EINVAL, "cfm: data dimension %lld; expected at least 1", (long long)c->D);
  CF_CHECK(c->width >= 1 && c->width <= (1 << 20), CF_EINVAL,
           "cfm: hidden width %lld; expected 1 .. 1048576", (long long)c->width);
  CF_CHECK(c->layers >= 1 && c->layers <= 1024, CF_EINVAL,
           "cfm: hidden layers %lld; expected 1 .. 1024", (long long)c->layers);
  CF_CHECK(c->time_freqs >= 0 && c->time_freqs <= 64, CF_EINVAL,
           "cfm: time frequencies %lld; expected 0 .. 64", (long long)c->time_freqs);
  CF_CHECK(c->D <= (1 << 24), CF_EINVAL, "cfm: data dimension %lld is too large", (long long)c->D);
  CF_CHECK(c->cond_dim >= 0 && c->cond_dim <= (1 << 20), CF_EINVAL,
           "cfm: %lld condition features; expected 0 .. 1048576", (long long)c->cond_dim);
  return CF_OK;
}

int64_t cf_cfm_in_features(const struct cf_cfm_cfg *c) {
  return c->D + 1 + 2 * c->time_freqs + c->cond_dim;
}

size_t cf_cfm_param_count(const struct cf_cfm_cfg *c) {
  size_t W = (size_t)c->width, I = (size_t)cf_cfm_in_features(c), D = (size_t)c->D;
  return W * I + W + (size_t)(c->layers - 1) * (W * W + W) + D * W + D;
}

double cf_cfm_flops(const struct cf_cfm_cfg *c) {
  double W = (double)c->width, I = (double)cf_cfm_in_features(c), D = (double)c->D;
  double f = 2.0 * (I * W + (double)(c->layers - 1) * W * W + W * D);
  return 3.0 * f;
}

/* ---- tensor table ---- */

/* Add tensor `name` (d0, d1) (d1 = 0: a vector) at *off, with fan-in fan for its init. */
static void add_tensor(struct cf_cfm *m, struct cf_cfm_impl *im, int *n, size_t *off,
                       const char *name, int64_t d0, int64_t d1, int64_t fan) {
  if (m->tensors != NULL) {
    struct cf_tensor_info *ti = &m->tensors[*n];
    char *nm = im->names + (size_t)*n * CFM_NAME_LEN;
    snprintf(nm, CFM_NAME_LEN, "%s", name);
    memset(ti, 0, sizeof *ti);
    ti->name = nm;
    ti->ndim = d1 > 0 ? 2 : 1;
    ti->shape[0] = d0;
    ti->shape[1] = d1;
    ti->held = 1;
    ti->split = CF_SPLIT_NONE;
    ti->count[0] = d0;
    ti->count[1] = d1 > 0 ? d1 : 1;
    ti->offset = *off;
    ti->numel = (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
    im->fan_in[*n] = fan;
  }
  *off += (size_t)d0 * (size_t)(d1 > 0 ? d1 : 1);
  (*n)++;
}

/* Count (m->tensors == NULL) or fill the tensor table and the linears' pointers. */
static void build_tensors(struct cf_cfm *m, struct cf_cfm_impl *im) {
  const struct cf_cfm_cfg *c = &m->cfg;
  int n = 0;
  size_t off = 0;
  char nm[CFM_NAME_LEN];
  for (int64_t l = 0; l <= c->layers; l++) {
    int last = l == c->layers;
    int64_t out = last ? c->D : c->width, in = l == 0 ? im->I0 : c->width;
    size_t ow = off;
    if (last)
      snprintf(nm, sizeof nm, "cfm.out.weight");
    else
      snprintf(nm, sizeof nm, "cfm.fc%lld.weight", (long long)(l + 1));
    add_tensor(m, im, &n, &off, nm, out, in, in);
    size_t ob = off;
    if (last)
      snprintf(nm, sizeof nm, "cfm.out.bias");
    else
      snprintf(nm, sizeof nm, "cfm.fc%lld.bias", (long long)(l + 1));
    add_tensor(m, im, &n, &off, nm, out, 0, in);
    if (m->tensors != NULL) {
      struct cf_lin *L = &im->lin[l];
      L->w = m->params + ow;
      L->gw = m->grads + ow;
      L->b = m->params + ob;
      L->gb = m->grads + ob;
      L->out = out;
      L->in = in;
    }
  }
  m->n_tensors = n;
  m->n_params = off;
}

/* Carve the activations for max_batch points out of the arena (planning or for real). */
static void act_layout(struct cf_cfm_impl *im, const struct cf_cfm_cfg *c, int64_t B,
                       struct cf_arena *a) {
  size_t W = (size_t)c->width, D = (size_t)c->D, nB = (size_t)B;
  im->in = cf_arena_floats(a, nB * (size_t)im->I0);
  for (int64_t l = 0; l < c->layers; l++) {
    im->xh[l] = cf_arena_floats(a, nB * W);
    im->rs[l] = cf_arena_floats(a, nB);
    im->h[l] = cf_arena_floats(a, nB * W);
  }
  im->g[0] = cf_arena_floats(a, nB * W);
  im->g[1] = cf_arena_floats(a, nB * W);
  im->v = cf_arena_floats(a, nB * D);
  im->dv = cf_arena_floats(a, nB * D);
}

cf_status cf_cfm_init(struct cf_cfm *m, const struct cf_cfm_cfg *cfg, int64_t max_batch) {
  memset(m, 0, sizeof *m);
  CF_TRY(cf_cfm_cfg_check(cfg));
  CF_CHECK(max_batch >= 1 && max_batch <= INT_MAX / 2, CF_EINVAL,
           "cfm: batch of %lld points; expected 1 .. %d", (long long)max_batch, INT_MAX / 2);
  int64_t widest = cfg->width > cfg->D ? cfg->width : cfg->D;
  if (cf_cfm_in_features(cfg) > widest) widest = cf_cfm_in_features(cfg);
  CF_CHECK((double)max_batch * (double)widest <= (double)INT_MAX, CF_EINVAL,
           "cfm: %lld points of %lld features exceed the BLAS index range", (long long)max_batch,
           (long long)widest);
  m->cfg = *cfg;
  m->max_batch = max_batch;
  void *p = NULL;
  CF_TRY(cf_alloc(&p, sizeof(struct cf_cfm_impl), "cfm state"));
  struct cf_cfm_impl *im = p;
  m->impl = im;
  im->I0 = cf_cfm_in_features(cfg);
  build_tensors(m, im); /* count */
  size_t nt = (size_t)m->n_tensors, nl = (size_t)cfg->layers;
  cf_status st;
#define CFM_ALLOC(ptr, bytes, what)                                                                \
  do {                                                                                             \
    void *q_ = NULL;                                                                               \
    st = cf_alloc(&q_, (bytes), (what));                                                           \
    if (st != CF_OK) goto fail;                                                                    \
    ptr = q_;                                                                                      \
  } while (0)
  CFM_ALLOC(m->params, m->n_params * sizeof(float), "cfm parameters");
  CFM_ALLOC(m->grads, m->n_params * sizeof(float), "cfm gradients");
  CFM_ALLOC(im->names, nt * CFM_NAME_LEN, "cfm tensor names");
  CFM_ALLOC(im->fan_in, nt * sizeof(int64_t), "cfm init table");
  CFM_ALLOC(im->lin, (nl + 1) * sizeof(struct cf_lin), "cfm layer table");
  CFM_ALLOC(im->xh, nl * sizeof(float *), "cfm layer table");
  CFM_ALLOC(im->rs, nl * sizeof(float *), "cfm layer table");
  CFM_ALLOC(im->h, nl * sizeof(float *), "cfm layer table");
  CFM_ALLOC(m->tensors, nt * sizeof(struct cf_tensor_info), "cfm tensor table");
#undef CFM_ALLOC
  build_tensors(m, im); /* fill */
  cf_arena_plan(&im->arena);
  act_layout(im, cfg, max_batch, &im->arena);
  st = cf_arena_commit(&im->arena, 0, "cfm activations");
  if (st != CF_OK) goto fail;
  act_layout(im, cfg, max_batch, &im->arena);
  return CF_OK;
fail:
  cf_trace_push(__FILE__, __LINE__, "cf_cfm_init");
  cf_cfm_release(m);
  return st;
}

void cf_cfm_release(struct cf_cfm *m) {
  if (m == NULL) return;
  struct cf_cfm_impl *im = m->impl;
  void *p;
  if (im != NULL) {
    cf_arena_release(&im->arena);
    p = im->names;
    cf_free(&p);
    p = im->fan_in;
    cf_free(&p);
    p = im->lin;
    cf_free(&p);
    p = im->xh;
    cf_free(&p);
    p = im->rs;
    cf_free(&p);
    p = im->h;
    cf_free(&p);
    p = im;
    cf_free(&p);
  }
  p = m->tensors;
  cf_free(&p);
  p = m->params;
  cf_free(&p);
  p = m->grads;
  cf_free(&p);
  memset(m, 0, sizeof *m);
}

void cf_cfm_init_weights(struct cf_cfm *m, uint64_t seed) {
  const struct cf_cfm_impl *im = m->impl;
  for (int t = 0; t < m->n_tensors; t++) {
    const struct cf_tensor_info *ti = &m->tensors[t];
    struct cf_rng r = {.seed = seed, .domain = CF_RNG_INIT, .step = 0, .index = (uint64_t)t};
    float *w = m->params + ti->offset;
    float bound = (float)(1.0 / sqrt((double)im->fan_in[t]));
    cf_rng_uniform(&r, 0, w, ti->numel);
    for (size_t i = 0; i < ti->numel; i++)
      w[i] = (2.0f * w[i] - 1.0f) * bound;
  }
}

void cf_cfm_zero_grad(struct cf_cfm *m) {
  if (m != NULL && m->grads != NULL) memset(m->grads, 0, m->n_params * sizeof(float));
}

double cf_cfm_grad_sqnorm(const struct cf_cfm *m, int *finite) {
  double s = cf_sqsum(m->grads, m->n_params);
  if (finite) *finite = isfinite(s) != 0;
  return s;
}

const struct cf_tensor_info *cf_cfm_find(const struct cf_cfm *m, const char *name) {
  if (m == NULL || name == NULL) return NULL;
  for (int t = 0; t < m->n_tensors; t++)
    if (strcmp(m->tensors[t].name, name) == 0) return &m->tensors[t];
  return NULL;
}

/* ---- forward and backward ---- */

cf_status cf_cfm_forward(struct cf_cfm *m, int64_t B, const float *x, const float *t, float *v) {
  return cf_cfm_forward_c(m, B, x, t, NULL, v);
}

cf_status cf_cfm_forward_c(struct cf_cfm *m, int64_t B, const float *x, const float *t,
                           const float *cond, float *v) {
  struct cf_cfm_impl *im = m->impl;
  const struct cf_cfm_cfg *c = &m->cfg;
  CF_CHECK(B >= 1 && B <= m->max_batch, CF_EINVAL,
           "cfm: forward of %lld points; expected 1 .. %lld", (long long)B,
           (long long)m->max_batch);
  const int64_t C = c->cond_dim;
  CF_CHECK(C == 0 || cond != NULL, CF_EINVAL,
           "cfm: the model is conditioned on %lld features, but no condition was given",
           (long long)C);
  int64_t D = c->D, I0 = im->I0, K = c->time_freqs, W = c->width;
  for (int64_t i = 0; i < B; i++) { /* in (B, I0) = [x | t | sin | cos | c] */
    float *r = im->in + i * I0;
    memcpy(r, x + i * D, (size_t)D * sizeof(float));
    double ti = (double)t[i];
    r[D] = (float)ti;
    for (int64_t k = 1; k <= K; k++) {
      double a = CFM_PI * (double)k * ti;
      r[D + 2 * k - 1] = (float)sin(a);
      r[D + 2 * k] = (float)cos(a);
    }
    if (C > 0) memcpy(r + D + 1 + 2 * K, cond + i * C, (size_t)C * sizeof(float));
  }
  const float *prev = im->in;
  for (int64_t l = 0; l < c->layers; l++) {
    const struct cf_lin *L = &im->lin[l];
    cf_linear_fwd(prev, B, L->w, L->b, L->out, L->in, 0, im->xh[l]); /* (B, W) pre-activation */
    cf_lnrelu_fwd(im->xh[l], im->rs[l], NULL, B, W, im->h[l]);       /* xh <- xhat, h = relu */
    prev = im->h[l];
  }
  const struct cf_lin *O = &im->lin[c->layers];
  cf_linear_fwd(prev, B, O->w, O->b, D, W, 0, im->v); /* (B, D) */
  if (v != NULL && v != im->v) memcpy(v, im->v, (size_t)(B * D) * sizeof(float));
  im->last_B = B;
  return CF_OK;
}

cf_status cf_cfm_backward(struct cf_cfm *m, const float *dv) {
  struct cf_cfm_impl *im = m->impl;
  const struct cf_cfm_cfg *c = &m->cfg;
  int64_t B = im->last_B, W = c->width, D = c->D;
  CF_CHECK(B >= 1, CF_EINVAL, "cfm: backward without a forward");
  const struct cf_lin *O = &im->lin[c->layers];
  float *gcur = im->g[0], *gnext = im->g[1];
  cf_linear_bwd(im->h[c->layers - 1], dv, B, O->w, D, W, O->gw, O->gb, gcur, 0); /* d h_L */
  for (int64_t l = c->layers - 1; l >= 0; l--) {
    const struct cf_lin *L = &im->lin[l];
    cf_lnrelu_bwd(gcur, im->xh[l], im->rs[l], NULL, B, W, gcur); /* d pre-activation */
    const float *in = l == 0 ? im->in : im->h[l - 1];
    cf_linear_bwd(in, gcur, B, L->w, L->out, L->in, L->gw, L->gb, l == 0 ? NULL : gnext, 0);
    float *s = gcur;
    gcur = gnext;
    gnext = s;
  }
  im->last_B = 0; /* activations are consumed once */
  return CF_OK;
}

cf_status cf_cfm_loss_grad(struct cf_cfm *m, int64_t B, const float *xt, const float *t,
                           const float *u, double n_total, double *loss) {
  return cf_cfm_loss_grad_c(m, B, xt, t, NULL, u, n_total, loss);
}

cf_status cf_cfm_loss_grad_c(struct cf_cfm *m, int64_t B, const float *xt, const float *t,
                             const float *c, const float *u, double n_total, double *loss) {
  struct cf_cfm_impl *im = m->impl;
  CF_CHECK(n_total > 0, CF_EINVAL, "cfm: loss divisor %g; expected a positive point count",
           n_total);
  CF_TRY(cf_cfm_forward_c(m, B, xt, t, c, NULL));
  size_t n = (size_t)B * (size_t)m->cfg.D;
  double s = 0;
  float k = (float)(2.0 / n_total);
  for (size_t i = 0; i < n; i++) {
    float d = im->v[i] - u[i];
    s += (double)d * d;
    im->dv[i] = k * d;
  }
  *loss = s / n_total;
  return cf_cfm_backward(m, im->dv);
}

/* ---- training pairs ---- */

cf_status cf_cfm_draw(const struct cf_dist *src, const struct cf_dist *tgt, int64_t D,
                      uint64_t seed, uint32_t step, uint64_t g0, int64_t B, float *x0, float *x1,
                      float *t, float *eps) {
  return cf_cfm_draw_rows(src, tgt, D, seed, step, g0, B, x0, x1, t, eps, NULL);
}

cf_status cf_cfm_draw_rows(const struct cf_dist *src, const struct cf_dist *tgt, int64_t D,
                           uint64_t seed, uint32_t step, uint64_t g0, int64_t B, float *x0,
                           float *x1, float *t, float *eps, int64_t *row) {
  CF_CHECK(row == NULL || tgt->kind == CF_DIST_POINTS, CF_EINVAL,
           "cfm: a conditional model needs a data file as its target (-data_train)");
  CF_CHECK(src->dim == D, CF_EINVAL, "cfm: source dimension %lld; the model has %lld",
           (long long)src->dim, (long long)D);
  CF_CHECK(tgt->dim == D, CF_EINVAL, "cfm: target dimension %lld; the model has %lld",
           (long long)tgt->dim, (long long)D);
  for (int64_t i = 0; i < B; i++) {
    uint64_t g = g0 + (uint64_t)i;
    struct cf_rng r0 = {.seed = seed, .domain = CF_RNG_X0, .step = step, .index = g};
    struct cf_rng r1 = {.seed = seed, .domain = CF_RNG_X1, .step = step, .index = g};
    struct cf_rng rp = {.seed = seed, .domain = CF_RNG_PATH, .step = step, .index = g};
    cf_dist_draw(src, &r0, x0 + i * D);
    cf_dist_draw(tgt, &r1, x1 + i * D);
    if (row != NULL) row[i] = cf_dist_row(tgt, &r1);
    t[i] = (float)cf_rng_uniform1(&rp, 0);
    if (eps != NULL) cf_rng_normal(&rp, 4, eps + i * D, (size_t)D);
  }
  return CF_OK;
}

void cf_cfm_path(int64_t B, int64_t D, const float *x0, const float *x1, const float *t,
                 const float *eps, double sigma, float *xt, float *u) {
  float sg = (float)sigma;
  for (int64_t i = 0; i < B; i++) {
    float ti = t[i];
    for (int64_t d = 0; d < D; d++) {
      int64_t e = i * D + d;
      float a = x0[e], b = x1[e];
      float z = (1.0f - ti) * a + ti * b;
      if (eps != NULL && sg != 0.0f) z += sg * eps[e];
      xt[e] = z;
      u[e] = b - a;
    }
  }
}

/* ---- exact OT coupling over the global batch ---- */

cf_status cf_cfm_ot_init(struct cf_cfm_ot *ot, MPI_Comm comm, int64_t max_n, int64_t D) {
  memset(ot, 0, sizeof *ot);
  CF_CHECK(max_n >= 1 && D >= 1, CF_EINVAL,
           "cfm: OT coupling for %lld points of dimension %lld; expected at least 1 of each",
           (long long)max_n, (long long)D);
  CF_CHECK((double)max_n * (double)D <= (double)INT_MAX, CF_EINVAL,
           "cfm: OT coupling of %lld points of dimension %lld exceeds MPI's count range",
           (long long)max_n, (long long)D);
  size_t nn, nd;
  CF_TRY(cf_mul_size(&nn, (size_t)max_n, (size_t)max_n, "cfm OT cost matrix"));
  CF_TRY(cf_mul_size(&nn, nn, sizeof(double), "cfm OT cost matrix"));
  CF_TRY(cf_mul_size(&nd, (size_t)max_n, (size_t)D, "cfm OT batch"));
  CF_MPI(MPI_Comm_size(comm, &ot->size));
  CF_MPI(MPI_Comm_rank(comm, &ot->rank));
  ot->comm = comm;
  ot->max_n = max_n;
  ot->D = D;
  enum { NBUF = 10 };
  void *p[NBUF] = {NULL};
  size_t bytes[NBUF] = {(size_t)ot->size * sizeof(int64_t),
                        (size_t)ot->size * sizeof(int64_t),
                        nd * sizeof(float),
                        nd * sizeof(float),
                        nn,
                        (size_t)max_n * sizeof(int64_t),
                        (size_t)ot->size * sizeof(int64_t),
                        (size_t)max_n * sizeof(int64_t),
                        2 * (size_t)max_n * sizeof(int64_t),
                        (size_t)max_n * sizeof(int64_t)};
  for (int i = 0; i < NBUF; i++) {
    cf_status st = cf_alloc(&p[i], bytes[i], "cfm OT coupling workspace");
    if (st != CF_OK) {
      for (int j = 0; j < i; j++)
        cf_free(&p[j]);
      memset(ot, 0, sizeof *ot);
      return st;
    }
  }
  ot->counts = p[0];
  ot->offs = p[1];
  ot->x0 = p[2];
  ot->x1 = p[3];
  ot->cost = p[4];
  ot->col = p[5];
  ot->blocks = p[6];
  ot->grp = p[7];
  ot->idx = p[8];
  ot->sub = p[9];
  cf_status st = cf_lsa_init(&ot->lsa, max_n);
  if (st != CF_OK) cf_cfm_ot_release(ot);
  return st;
}

void cf_cfm_ot_release(struct cf_cfm_ot *ot) {
  if (ot == NULL) return;
  void *p[10] = {ot->counts, ot->offs,   ot->x0,  ot->x1,  ot->cost,
                 ot->col,    ot->blocks, ot->grp, ot->idx, ot->sub};
  for (int i = 0; i < 10; i++)
    cf_free(&p[i]);
  cf_lsa_release(&ot->lsa);
  memset(ot, 0, sizeof *ot);
}

/* FNV-1a over the assignment, to check that every rank found the same one. */
static uint64_t hash_assignment(const int64_t *col, int64_t n) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t i = 0; i < n; i++) {
    uint64_t v = (uint64_t)col[i];
    for (int b = 0; b < 8; b++) {
      h ^= (v >> (8 * b)) & 0xffu;
      h *= 1099511628211ull;
    }
  }
  return h;
}

/* (group, row) keys, sorted by group and then row. */
static int cmp_key(const void *a, const void *b) {
  const int64_t *x = a, *y = b;
  if (x[0] != y[0]) return x[0] < y[0] ? -1 : 1;
  return x[1] < y[1] ? -1 : x[1] > y[1];
}

cf_status cf_cfm_ot_couple(struct cf_cfm_ot *ot, int64_t B, const float *x0, float *x1,
                           int64_t *pair, double *cost_ot, double *cost_id) {
  return cf_cfm_ot_couple_groups(ot, B, x0, x1, NULL, pair, cost_ot, cost_id);
}

/* ||a - b||^2 (D) in double, in a fixed order that does not depend on the machine: eight
 * running sums, lane k over d = k, k + 8, ..., then the tail, then the lanes in order. The
 * lanes are independent, so the compiler can keep them in vector registers (the cost matrix of
 * a D = 1000 batch of 256 is 65M of these terms a step); every run-time copy gives the same
 * bits, so every rank computes the same matrix. */
CF_CLONES static double sqdist(const float *restrict a, const float *restrict b, int64_t D) {
  double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t d = 0;
  for (; d + 8 <= D; d += 8)
    for (int k = 0; k < 8; k++) {
      double e = (double)a[d + k] - (double)b[d + k];
      lane[k] += e * e;
    }
  double s = 0;
  for (; d < D; d++) {
    double e = (double)a[d] - (double)b[d];
    s += e * e;
  }
  for (int k = 0; k < 8; k++)
    s += lane[k];
  return s;
}

cf_status cf_cfm_ot_couple_groups(struct cf_cfm_ot *ot, int64_t B, const float *x0, float *x1,
                                  const int64_t *group, int64_t *pair, double *cost_ot,
                                  double *cost_id) {
  CF_CHECK(ot->comm != MPI_COMM_NULL && ot->cost != NULL, CF_EINVAL,
           "cfm: OT coupling workspace is not initialized");
  const int64_t D = ot->D;
  /* every rank learns every block size first, so all reach the same verdict on the size */
  int64_t mine[2] = {B, group != NULL}, *sizes = ot->blocks;
  int64_t grouped = 0;
  CF_MPI(MPI_Allgather(&mine[0], 1, MPI_INT64_T, sizes, 1, MPI_INT64_T, ot->comm));
  CF_MPI(MPI_Allreduce(&mine[1], &grouped, 1, MPI_INT64_T, MPI_MAX, ot->comm));
  int64_t n = 0, off = 0, bad = -1;
  for (int r = 0; r < ot->size; r++) {
    if (sizes[r] < 0) bad = r;
    if (r == ot->rank) off = n;
    n += sizes[r];
  }
  CF_CHECK(bad < 0, CF_EINVAL, "cfm: OT coupling: rank %d passed a negative batch", (int)bad);
  CF_CHECK(n >= 1, CF_EINVAL, "cfm: OT coupling of an empty global batch");
  CF_CHECK(n <= ot->max_n, CF_EINVAL,
           "cfm: OT coupling of a global batch of %lld points; the workspace holds %lld",
           (long long)n, (long long)ot->max_n);

  /* the groups of the whole global batch (all 0 without groups) */
  if (grouped) {
    for (int r = 0; r < ot->size; r++) {
      ot->counts[r] = sizes[r];
      ot->offs[r] = r == 0 ? 0 : ot->offs[r - 1] + ot->counts[r - 1];
    }
    for (int64_t i = 0; i < B; i++) /* a rank without groups puts its rows in group 0 */
      ot->grp[off + i] = group ? group[i] : 0;
    CF_MPI(cf_mpi_allgatherv(MPI_IN_PLACE, (size_t)B, ot->grp, ot->counts, ot->offs, MPI_INT64_T,
                             ot->comm));
  } else {
    memset(ot->grp, 0, (size_t)n * sizeof(int64_t));
  }
  for (int r = 0; r < ot->size; r++) {
    ot->counts[r] = sizes[r] * D;
    ot->offs[r] = r == 0 ? 0 : ot->offs[r - 1] + ot->counts[r - 1];
  }
  CF_MPI(cf_mpi_allgatherv(x0, (size_t)(B * D), ot->x0, ot->counts, ot->offs, MPI_FLOAT, ot->comm));
  CF_MPI(cf_mpi_allgatherv(x1, (size_t)(B * D), ot->x1, ot->counts, ot->offs, MPI_FLOAT, ot->comm));

  /* the identity pairing's cost, in double, in a fixed order (the same on every rank) */
  double id = 0;
  int finite = 1;
  for (int64_t i = 0; i < n; i++) {
    id += sqdist(ot->x0 + i * D, ot->x1 + i * D, D);
  }
  /* rows sorted by (group, row): each group is a run */
  int64_t *key = ot->idx;
  for (int64_t i = 0; i < n; i++) {
    key[2 * i] = ot->grp[i];
    key[2 * i + 1] = i;
  }
  if (grouped) qsort(key, (size_t)n, 2 * sizeof(int64_t), cmp_key);
  double tot = 0;
  for (int64_t a0 = 0; a0 < n;) {
    int64_t a1 = a0 + 1;
    while (a1 < n && key[2 * a1] == key[2 * a0])
      a1++;
    const int64_t m = a1 - a0;
    /* cost (m, m) of the group: x0 rows against x1 rows, the same double arithmetic in the
     * same order on every rank */
    for (int64_t p = 0; p < m; p++) {
      const float *a = ot->x0 + key[2 * (a0 + p) + 1] * D;
      double *crow = ot->cost + p * m;
      for (int64_t q = 0; q < m; q++) {
        double s = sqdist(a, ot->x1 + key[2 * (a0 + q) + 1] * D, D);
        crow[q] = s;
        if (!isfinite(s)) finite = 0;
      }
    }
    CF_CHECK(finite && isfinite(id), CF_ECORRUPT,
             "cfm: OT coupling: a source or target point is not finite");
    double tg = 0;
    CF_TRY(cf_lsa_solve_dense(&ot->lsa, ot->cost, m, ot->sub, &tg));
    tot += tg;
    for (int64_t p = 0; p < m; p++)
      ot->col[key[2 * (a0 + p) + 1]] = key[2 * (a0 + ot->sub[p]) + 1];
    a0 = a1;
  }

  /* all ranks must hold the same assignment (same binary, same inputs: they do) */
  uint64_t h = hash_assignment(ot->col, n), hmin = 0, hmax = 0;
  CF_MPI(MPI_Allreduce(&h, &hmin, 1, MPI_UINT64_T, MPI_MIN, ot->comm));
  CF_MPI(MPI_Allreduce(&h, &hmax, 1, MPI_UINT64_T, MPI_MAX, ot->comm));
  CF_CHECK(hmin == hmax, CF_EREMOTE,
           "cfm: OT coupling: the ranks found different assignments of the global batch");

  for (int64_t i = 0; i < B; i++) {
    int64_t j = ot->col[off + i];
    memcpy(x1 + i * D, ot->x1 + j * D, (size_t)D * sizeof(float));
    if (pair != NULL) pair[i] = j;
  }
  if (cost_ot != NULL) *cost_ot = tot;
  if (cost_id != NULL) *cost_id = id;
  return CF_OK;
}
