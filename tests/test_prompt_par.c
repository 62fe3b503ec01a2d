/* test_prompt_par.c: a prompt model (model.h "text prompt") on a model part (tensor,
 * pipeline, context parallel) against the whole model. Usage: test_prompt_par TP PP CP under
 * mpiexec with TP*PP*CP ranks.
 * Every rank builds the whole model and its part of the same model (weights initialized by
 * global element index, prompt.wte perturbed the same way everywhere). Training: the part's
 * stages run the forward and backward of three sequences with different, left-padded prompts,
 * handing the stage boundary on through the grid's pipeline communicator; the loss summed over
 * the context ranks and every gradient block the rank holds (summed over the context group, as
 * the reducer does) equal the whole model's to float round-off, prompt.wte included (bit for
 * bit on a pipeline-only split). Sampling: the KV cache prefilled with the prompts and
 * extended point by point gives the whole model's final hidden states and head draws. */
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
  struct cf_rng r = {.seed = 17, .domain = CF_RNG_DATA, .step = 4, .index = stream};
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

/* prompt.wte gets a larger spread than its N(0, 0.02) init, the same on every rank */
static void perturb_wte(struct cf_model *m) {
  const struct cf_tensor_info *t = cf_model_find(m, "prompt.wte.weight");
  if (t == NULL) return;
  float *n = malloc(t->numel * sizeof(float));
  randn(n, t->numel, 99);
  for (size_t i = 0; i < t->numel; i++)
    m->params[t->offset + i] += n[i];
  free(n);
}

/* Forward + backward of B sequences through the part's stages. Returns the loss summed over
 * the context group on the last stage (0 elsewhere). */
static cf_status train_part(struct cf_model *m, const struct cf_grid *g, int64_t B,
                            const int32_t *ids, const float *z, const float *y, double n_pts,
                            double *loss) {
  const int64_t rows = B * cf_model_local_tokens(m) * m->cfg.H;
  struct cf_loss l;
  *loss = 0;
  cf_model_zero_grad(m);
  if (!cf_model_first(m) && MPI_Recv(cf_model_stage_in(m, 0, B), (int)rows, MPI_FLOAT,
                                     g->pp_rank - 1, 1, g->pp, MPI_STATUS_IGNORE) != MPI_SUCCESS)
    return cf_err(CF_EMPI, "recv activation");
  CF_TRY(cf_model_set_prompt(m, 0, B, ids));
  CF_TRY(cf_model_forward_at(m, 0, B, z, y, NULL, NULL, n_pts, 1.0f, &l));
  if (!cf_model_last(m) && MPI_Send(cf_model_stage_out(m, 0, B), (int)rows, MPI_FLOAT,
                                    g->pp_rank + 1, 1, g->pp) != MPI_SUCCESS)
    return cf_err(CF_EMPI, "send activation");
  if (!cf_model_last(m) && MPI_Recv(cf_model_stage_grad(m, 0, B), (int)rows, MPI_FLOAT,
                                    g->pp_rank + 1, 2, g->pp, MPI_STATUS_IGNORE) != MPI_SUCCESS)
    return cf_err(CF_EMPI, "recv gradient");
  CF_TRY(cf_model_backward_at(m, 0, B));
  if (!cf_model_first(m) && MPI_Send(cf_model_stage_grad(m, 0, B), (int)rows, MPI_FLOAT,
                                     g->pp_rank - 1, 2, g->pp) != MPI_SUCCESS)
    return cf_err(CF_EMPI, "send gradient");
  CF_MPI(MPI_Allreduce(MPI_IN_PLACE, m->grads, (int)m->n_params, MPI_FLOAT, MPI_SUM, g->cp));
  double mine = cf_model_last(m) ? l.loss : 0.0;
  CF_MPI(MPI_Allreduce(&mine, loss, 1, MPI_DOUBLE, MPI_SUM, g->cp));
  return CF_OK;
}

/* Prefill, then extend point by point; the last stage collects the hidden states h_all
 * (B, T, H) and head draws y_all (B, J, D) with noise eps (B, J, cf_head_noise_width). */
static cf_status roll_part(const struct cf_model *m, const struct cf_grid *g, int64_t B,
                           const int32_t *ids, const float *z, const float *eps, float *h_all,
                           float *y_all) {
  const struct cf_model_cfg *c = &m->cfg;
  const int64_t P = c->P, S = c->S, D = c->D, H = c->H, J = c->N * P, T = J * S;
  const int64_t L = c->prompt_len, W = cf_head_noise_width(c), R = L > P * S ? L : P * S;
  struct cf_kvcache kc;
  CF_TRY(cf_kvcache_init(&kc, m, B, T, P * S));
  float *in = calloc((size_t)(B * R * (H > D ? H : D)), sizeof(float));
  float *out = calloc((size_t)(B * R * H), sizeof(float));
  float *e = calloc((size_t)(B * P * W), sizeof(float)), *yy = calloc((size_t)(B * P * D), 4);
  cf_status st = CF_OK;
  const int first = cf_model_first(m), last = cf_model_last(m);
  /* the prompt */
  if (!first && MPI_Recv(in, (int)(B * L * H), MPI_FLOAT, g->pp_rank - 1, 3, g->pp,
                         MPI_STATUS_IGNORE) != MPI_SUCCESS)
    st = cf_err(CF_EMPI, "recv");
  if (st == CF_OK) st = cf_model_prefill(m, &kc, ids, first ? NULL : in, last ? NULL : out);
  if (st == CF_OK && !last &&
      MPI_Send(out, (int)(B * L * H), MPI_FLOAT, g->pp_rank + 1, 3, g->pp) != MPI_SUCCESS)
    st = cf_err(CF_EMPI, "send");
  for (int64_t t = 0; t < c->N && st == CF_OK; t++) {
    const int64_t nact = B * P * S * H;
    if (first) {
      for (int64_t b = 0; b < B; b++)
        memcpy(in + b * P * D, z + (b * J + t * P) * D, (size_t)(P * D) * sizeof(float));
    } else if (MPI_Recv(in, (int)nact, MPI_FLOAT, g->pp_rank - 1, 4, g->pp, MPI_STATUS_IGNORE) !=
               MPI_SUCCESS) {
      st = cf_err(CF_EMPI, "recv");
      break;
    }
    st = cf_model_extend(m, &kc, in, P, out);
    if (st != CF_OK) break;
    if (!last) {
      if (MPI_Send(out, (int)nact, MPI_FLOAT, g->pp_rank + 1, 4, g->pp) != MPI_SUCCESS)
        st = cf_err(CF_EMPI, "send");
      continue;
    }
    for (int64_t b = 0; b < B; b++) {
      memcpy(h_all + (b * T + t * P * S) * H, out + b * P * S * H,
             (size_t)(P * S * H) * sizeof(float));
      memcpy(e + b * P * W, eps + (b * J + t * P) * W, (size_t)(P * W) * sizeof(float));
    }
    st = cf_head_sample(m, &kc, P, out, e, 1.0f, yy);
    for (int64_t b = 0; b < B && st == CF_OK; b++)
      memcpy(y_all + (b * J + t * P) * D, yy + b * P * D, (size_t)(P * D) * sizeof(float));
  }
  cf_kvcache_release(&kc);
  free(in), free(out), free(e), free(yy);
  return st;
}

static void run(MPI_Comm comm, int tp, int pp, int cp, enum cf_head head) {
  struct cf_model_cfg cfg = {.D = 3,
                             .S = 2,
                             .P = 2,
                             .N = 4,
                             .H = 16,
                             .layers = 4,
                             .heads = 4,
                             .ffn = 32,
                             .rotary_pct = 0.5,
                             .rotary_base = 10000,
                             .head = head,
                             .dropout = 0.0f,
                             .logstd_min = -7,
                             .logstd_max = 5,
                             .gmm_k = 3,
                             .fm_width = 8,
                             .fm_draws = 2,
                             .fm_steps = 3,
                             .cvae_dz = 3,
                             .prompt_len = 5,
                             .vocab = 9,
                             .prompt_pad = 8};
  const int64_t B = 3, P = cfg.P, S = cfg.S, D = cfg.D, H = cfg.H, J = cfg.N * P, T = J * S;
  const int64_t L = cfg.prompt_len, W = cf_head_noise_width(&cfg);
  const int32_t ids[15] = {8, 8, 8, 2, 5, 8, 1, 2, 3, 4, 0, 7, 6, 5, 4};
  struct cf_grid g;
  memset(&g, 0, sizeof g);
  EXPECT_OK(cf_grid_init(&g, comm, tp, pp, cp), "grid");
  if (cf_test_fails) return;
  struct cf_model whole, part;
  EXPECT_OK(cf_model_init(&whole, &cfg, B), "whole model");
  EXPECT_OK(cf_model_init_part(&part, &cfg, B, &g), "model part");
  if (cf_test_fails) return;
  cf_model_init_weights(&whole, 23);
  cf_model_init_weights(&part, 23);
  perturb_wte(&whole);
  perturb_wte(&part);
  size_t nz = (size_t)(B * J * D), nh = (size_t)(B * T * H), ne = (size_t)(B * J * W);
  float *z = malloc(nz * 4), *y = malloc(nz * 4), *eps = malloc(ne * 4);
  float *hw = calloc(nh, 4), *hp = calloc(nh, 4), *yw = calloc(nz, 4), *yp = calloc(nz, 4);
  randn(z, nz, 1);
  randn(y, nz, 2);
  randn(eps, ne, 3);
  /* training */
  const double n_pts = (double)(B * (cfg.N - 1) * P);
  struct cf_loss lw;
  EXPECT_OK(cf_model_set_prompt(&whole, 0, B, ids), "whole prompt");
  cf_model_zero_grad(&whole);
  EXPECT_OK(cf_model_forward(&whole, B, z, y, NULL, NULL, n_pts, 1.0f, &lw), "whole forward");
  EXPECT_OK(cf_model_backward(&whole), "whole backward");
  double lp = 0;
  EXPECT_OK(train_part(&part, &g, B, ids, z, y, n_pts, &lp), "part forward / backward");
  const int exact = tp == 1 && cp == 1;
  double worst = 0;
  const char *worst_name = "";
  for (int t = 0; t < part.n_tensors && !cf_test_fails; t++) {
    const struct cf_tensor_info *ti = &part.tensors[t];
    if (!ti->held) continue;
    const struct cf_tensor_info *tw = cf_model_find(&whole, ti->name);
    const int64_t cols = ti->ndim == 2 ? ti->shape[1] : 1;
    float *blk = malloc(ti->numel * sizeof(float));
    for (int64_t i = 0; i < ti->count[0]; i++)
      memcpy(blk + i * ti->count[1],
             whole.grads + tw->offset + (ti->start[0] + i) * cols + ti->start[1],
             (size_t)ti->count[1] * sizeof(float));
    double r = rel(part.grads + ti->offset, blk, ti->numel);
    if (exact)
      EXPECT(memcmp(part.grads + ti->offset, blk, ti->numel * 4) == 0,
             "%s: pipeline-only gradient differs from the whole model's", ti->name);
    if (r > worst) worst = r, worst_name = ti->name;
    free(blk);
  }
  EXPECT(worst < 5e-5, "gradient of %s differs from the whole model's by %.2e", worst_name, worst);
  EXPECT(cf_model_find(&part, "prompt.wte.weight") != NULL || !cf_model_first(&part),
         "the first stage lacks prompt.wte");
  if (cf_model_last(&part))
    EXPECT(fabs(lp - lw.loss) <= 1e-5 * fabs(lw.loss), "loss %.9g, whole model %.9g", lp, lw.loss);
  /* sampling */
  EXPECT_OK(roll_part(&whole, NULL, B, ids, z, eps, hw, yw), "whole model rollout");
  EXPECT_OK(roll_part(&part, &g, B, ids, z, eps, hp, yp), "part rollout");
  if (cf_model_last(&part) && !cf_test_fails) {
    double dh = rel(hp, hw, nh), dy = rel(yp, yw, nz);
    if (g.rank == g.size - 1)
      printf("%s tp%d pp%d cp%d, prompt %lld tokens: loss %.9g vs %.9g, worst gradient %.1e "
             "(%s), hidden %.1e, draws %.1e\n",
             cf_head_name(head), tp, pp, cp, (long long)L, lp, lw.loss, worst, worst_name, dh, dy);
    if (exact)
      EXPECT(memcmp(hp, hw, nh * 4) == 0 && memcmp(yp, yw, nz * 4) == 0,
             "pipeline-only sampling differs from the whole model");
    EXPECT(dh < 2e-5, "hidden states differ from the whole model by %.2e", dh);
    EXPECT(dy < 2e-5, "head draws differ from the whole model by %.2e", dy);
  }
  free(z), free(y), free(eps), free(hw), free(hp), free(yw), free(yp);
  cf_model_release(&whole);
  cf_model_release(&part);
  cf_grid_release(&g);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm comm;
  int rank, size;
  cf_test_mpi_begin("test_prompt_par", &comm, &rank, &size);
  int tp = argc > 1 ? atoi(argv[1]) : 1, pp = argc > 2 ? atoi(argv[2]) : 1;
  int cp = argc > 3 ? atoi(argv[3]) : 1;
  run(comm, tp, pp, cp, CF_HEAD_GAUSS);
  run(comm, tp, pp, cp, CF_HEAD_FM);
  const char *name = cf_test_mpi_end(&comm, "test_prompt_par");
  int rc = cf_test_done(name);
  MPI_Finalize();
  return rc;
}
