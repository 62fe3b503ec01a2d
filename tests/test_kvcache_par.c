/* test_kvcache_par.c: the KV-cached forward on a model part (tensor, pipeline, context
 * parallel) against the whole model. Usage: test_kvcache_par TP PP CP under mpiexec with
 * a multiple of TP*PP*CP ranks.
 * Every rank builds the whole model and its part of the same model (weights are initialized
 * by global element index, so both are the same model). Point by point (np = P per call), the
 * part's stages hand their residual streams on through the grid's pipeline communicator; the
 * last stage's final hidden states and its head's draws must equal the whole model's to float
 * round-off (bit for bit when only pipeline stages split it, since stages do not change the
 * arithmetic). Then, on the part: a sequence gives the same bits alone and inside a batch of
 * three (batch invariance at a layout), and recomputing the prefix in one extend agrees with
 * the point-by-point cache. Every head. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/grid.h"
#include "calmflow/mem.h"
#include "calmflow/model.h"
#include "calmflow/rng.h"
#include "cf_test.h"
#include "cf_test_mpi.h"

static void randn(float *x, size_t n, uint64_t stream) {
  struct cf_rng r = {.seed = 7, .domain = CF_RNG_DATA, .step = 2, .index = stream};
  cf_rng_normal(&r, 0, x, n);
}

static double rel(const float *a, const float *b, size_t n) {
  double m = 0, s = 0;
  for (size_t i = 0; i < n; i++) {
    m = fmax(m, fabs((double)a[i] - (double)b[i]));
    s = fmax(s, fabs((double)b[i]));
  }
  return m / (s > 0 ? s : 1);
}

/* Run the part point by point over B sequences of z (B, J, D); on the last stage, h_all
 * (B, J*S, H) collects the final hidden states and y_all (B, J, D) the head's draws (tau 1,
 * noise eps (B, J, cf_head_noise_width)). recompute: one extend per step over
 * the whole prefix (max_new = T), as -sample_kvcache 0. */
static cf_status run_part(const struct cf_model *m, const struct cf_grid *g, int64_t B,
                          const float *z, const float *eps, int recompute, float *h_all,
                          float *y_all) {
  const struct cf_model_cfg *c = &m->cfg;
  const int64_t P = c->P, S = c->S, D = c->D, H = c->H, J = c->N * P, T = J * S;
  struct cf_kvcache kc;
  CF_TRY(cf_kvcache_init(&kc, m, B, T, recompute ? T : P * S));
  float *in = NULL, *out = NULL, *e = NULL, *y = NULL;
  cf_status st = cf_alloc((void **)&in, (size_t)(B * T * (H > D ? H : D)) * sizeof(float), "in");
  if (st == CF_OK) st = cf_alloc((void **)&out, (size_t)(B * T * H) * sizeof(float), "out");
  if (st == CF_OK)
    st = cf_alloc((void **)&e, (size_t)(B * P * cf_head_noise_width(c)) * sizeof(float), "eps");
  if (st == CF_OK) st = cf_alloc((void **)&y, (size_t)(B * P * D) * sizeof(float), "y");
  for (int64_t t = 0; t < c->N && st == CF_OK; t++) {
    const int64_t np = recompute ? (t + 1) * P : P, j0 = recompute ? 0 : t * P;
    if (recompute) cf_kvcache_reset(&kc);
    const int64_t nact = B * np * S * H;
    if (cf_model_first(m)) {
      for (int64_t b = 0; b < B; b++)
        memcpy(in + b * np * D, z + (b * J + j0) * D, (size_t)(np * D) * sizeof(float));
    } else if (MPI_Recv(in, (int)nact, MPI_FLOAT, g->pp_rank - 1, 5, g->pp, MPI_STATUS_IGNORE) !=
               MPI_SUCCESS) {
      st = cf_err(CF_EMPI, "recv");
      break;
    }
    st = cf_model_extend(m, &kc, in, np, out);
    if (st != CF_OK) break;
    if (!cf_model_last(m)) {
      if (MPI_Send(out, (int)nact, MPI_FLOAT, g->pp_rank + 1, 5, g->pp) != MPI_SUCCESS)
        st = cf_err(CF_EMPI, "send");
      continue;
    }
    /* the newest point's hidden states and its head draw */
    const int64_t per = cf_head_noise_width(c);
    for (int64_t b = 0; b < B; b++) {
      const float *hb = out + (b * np + (np - P)) * S * H;
      memcpy(h_all + (b * T + t * P * S) * H, hb, (size_t)(P * S * H) * sizeof(float));
      memcpy(in + b * P * S * H, hb, (size_t)(P * S * H) * sizeof(float));
      memcpy(e + b * P * per, eps + (b * J + t * P) * per, (size_t)(P * per) * sizeof(float));
    }
    st = cf_head_sample(m, &kc, P, in, e, 1.0f, y);
    for (int64_t b = 0; b < B && st == CF_OK; b++)
      memcpy(y_all + (b * J + t * P) * D, y + b * P * D, (size_t)(P * D) * sizeof(float));
  }
  cf_kvcache_release(&kc);
  cf_free((void **)&in);
  cf_free((void **)&out);
  cf_free((void **)&e);
  cf_free((void **)&y);
  return st;
}

static void run(MPI_Comm comm, int tp, int pp, int cp, enum cf_head head) {
  struct cf_model_cfg cfg = {.D = 3,
                             .S = 2,
                             .P = 2,
                             .N = 5,
                             .H = 16,
                             .layers = 4,
                             .heads = 4,
                             .ffn = 32,
                             .rotary_pct = 0.5,
                             .rotary_base = 10000,
                             .head = head,
                             .dropout = 0.1f,
                             .logstd_min = -7,
                             .logstd_max = 5,
                             .gmm_k = 3,
                             .fm_width = 12,
                             .fm_draws = 2,
                             .fm_steps = 5,
                             .cvae_dz = 3};
  const int64_t B = 3, P = cfg.P, S = cfg.S, D = cfg.D, H = cfg.H, J = cfg.N * P, T = J * S;
  const int64_t W = cf_head_noise_width(&cfg);
  struct cf_grid g;
  memset(&g, 0, sizeof g);
  EXPECT_OK(cf_grid_init(&g, comm, tp, pp, cp), "grid");
  if (cf_test_fails) return;
  struct cf_model whole, part;
  EXPECT_OK(cf_model_init(&whole, &cfg, 1), "whole model");
  EXPECT_OK(cf_model_init_part(&part, &cfg, 1, &g), "model part");
  if (cf_test_fails) return;
  cf_model_init_weights(&whole, 11);
  cf_model_init_weights(&part, 11);
  size_t nz = (size_t)(B * J * D), nh = (size_t)(B * T * H), ne = (size_t)(B * J * W);
  float *z = malloc(nz * 4), *eps = malloc(ne * 4), *hw = calloc(nh, 4), *hp = calloc(nh, 4);
  float *yw = calloc(nz, 4), *yp = calloc(nz, 4), *h1 = calloc(nh, 4), *y1 = calloc(nz, 4);
  float *hr = calloc(nh, 4), *yr = calloc(nz, 4);
  randn(z, nz, 1);
  randn(eps, ne, 2);
  EXPECT_OK(run_part(&whole, NULL, B, z, eps, 0, hw, yw), "whole model rollout");
  EXPECT_OK(run_part(&part, &g, B, z, eps, 0, hp, yp), "part rollout");
  /* the same middle sequence alone: bit-identical at this layout */
  EXPECT_OK(run_part(&part, &g, 1, z + J * D, eps + J * W, 0, h1, y1), "part, one sequence");
  EXPECT_OK(run_part(&part, &g, B, z, eps, 1, hr, yr), "part, recompute");
  if (cf_model_last(&part) && !cf_test_fails) {
    double dh = rel(hp, hw, nh), dy = rel(yp, yw, nz), dr = rel(hr, hp, nh);
    int exact = tp == 1 && cp == 1;
    if (g.rank == g.size - 1)
      printf("%s tp%d pp%d cp%d: hidden vs whole %.1e, draws %.1e, recompute vs cache %.1e\n",
             cf_head_name(head), tp, pp, cp, dh, dy, dr);
    if (exact) {
      EXPECT(memcmp(hp, hw, nh * 4) == 0, "pipeline-only part differs from the whole model");
      EXPECT(memcmp(yp, yw, nz * 4) == 0, "pipeline-only draws differ from the whole model");
    }
    EXPECT(dh < 2e-5, "hidden states differ from the whole model by %.2e", dh);
    EXPECT(dy < 2e-5, "head draws differ from the whole model by %.2e", dy);
    EXPECT(dr < 2e-5, "recompute differs from the cache by %.2e", dr);
    EXPECT(memcmp(h1, hp + T * H, (size_t)(T * H) * 4) == 0 &&
               memcmp(y1, yp + J * D, (size_t)(J * D) * 4) == 0,
           "a sequence alone differs from the same sequence in a batch of 3");
  }
  free(z), free(eps), free(hw), free(hp), free(yw), free(yp), free(h1), free(y1), free(hr);
  free(yr);
  cf_model_release(&whole);
  cf_model_release(&part);
  cf_grid_release(&g);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm comm;
  int rank, size;
  cf_test_mpi_begin("test_kvcache_par", &comm, &rank, &size);
  int tp = argc > 1 ? atoi(argv[1]) : 1, pp = argc > 2 ? atoi(argv[2]) : 1;
  int cp = argc > 3 ? atoi(argv[3]) : 1;
  run(comm, tp, pp, cp, CF_HEAD_GAUSS);
  run(comm, tp, pp, cp, CF_HEAD_VAE);
  run(comm, tp, pp, cp, CF_HEAD_GMM);
  run(comm, tp, pp, cp, CF_HEAD_FM);
  run(comm, tp, pp, cp, CF_HEAD_CVAE);
  const char *name = cf_test_mpi_end(&comm, "test_kvcache_par");
  int rc = cf_test_done(name);
  MPI_Finalize();
  return rc;
}
