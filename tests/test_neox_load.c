/* test_neox_load.c: a GPT-NeoX model directory (written by tests/test_neox_load.py) loaded into
 * calmflow's transformer. Usage: test_neox_load FIXTURES TP PP under mpiexec with TP*PP ranks.
 *
 * FIXTURES/good holds a 4-layer model (H 32, 4 heads, ffn 48, rotary_pct 0.5, base 1000; BF16
 * embedding, one F16 weight) and ref.txt, the final hidden states of an independent float64
 * PyTorch GPT-NeoX forward for 12 tokens. Here: the model part of this rank (tensor and
 * pipeline parallel at TP, PP) is built from config.json and loaded; the tokens' embedding rows
 * (read from the file) go through the loaded blocks (cf_block_fwd, stage to stage over the
 * pipeline communicator) and lnf; the last stage's hidden states must match ref.txt to 1e-4
 * relative. A model with a text prompt gets embed_in's first rows as prompt.wte (and at pp2 its
 * first stage's prefill hands on what the runner does). Tensors outside the backbone keep
 * calmflow's initialization; the sharded copy loads the same parameters bit for bit; every
 * FIXTURES/bad_* directory fails on every rank with the same one-line message naming the defect. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/grid.h"
#include "calmflow/mem.h"
#include "calmflow/model.h"
#include "calmflow/neox.h"
#include "calmflow/rng.h"
#include "calmflow/safetensors.h"
#include "cf_test.h"
#include "model/layers.h"

#define MAXT 64

static char g_fx[2048];

static void fx(char *buf, size_t cap, const char *name) {
  snprintf(buf, cap, "%s/%s", g_fx, name);
}

/* ref.txt: "T H", T token ids, then T x H floats. */
static int read_ref(int64_t *T, int64_t *H, int *tok, double **h) {
  char p[2200];
  fx(p, sizeof p, "good/ref.txt");
  FILE *f = fopen(p, "r");
  if (f == NULL) return 0;
  long long t, hh;
  int ok = fscanf(f, "%lld %lld", &t, &hh) == 2 && t > 0 && t <= MAXT && hh > 0;
  for (long long i = 0; ok && i < t; i++)
    ok = fscanf(f, "%d", &tok[i]) == 1;
  if (ok) {
    *h = calloc((size_t)(t * hh), sizeof(double));
    for (long long i = 0; ok && i < t * hh; i++)
      ok = fscanf(f, "%lf", &(*h)[i]) == 1;
  }
  fclose(f);
  *T = t;
  *H = hh;
  return ok;
}

/* The model configuration for the fixture: the backbone from config.json, one sequence of T
 * tokens (N = T points, P = S = 1), a gauss head on D = 2. */
static void model_cfg(const struct cf_neox_cfg *nc, int64_t T, struct cf_model_cfg *c) {
  memset(c, 0, sizeof *c);
  c->D = 2;
  c->S = 1;
  c->P = 1;
  c->N = T;
  c->H = nc->hidden;
  c->heads = nc->heads;
  c->layers = nc->layers;
  c->ffn = nc->ffn;
  c->rotary_pct = nc->rotary_pct;
  c->rotary_base = nc->rotary_base;
  c->head = CF_HEAD_GAUSS;
  c->dropout = 0.0f;
  c->logstd_min = -7.0f;
  c->logstd_max = 5.0f;
  c->gmm_k = 4;
  c->fm_width = 8;
  c->fm_draws = 1;
  c->fm_steps = 1;
  c->cvae_dz = 2;
}

/* Run this rank's blocks on x0 (T, H) (first stage) or on what the previous stage sends, hand
 * the result on; the last stage applies lnf and returns its hidden states in h (T, H). */
static cf_status backbone(struct cf_model *m, const struct cf_grid *g, const float *x0, float *h) {
  struct cf_model_impl *im = m->impl;
  const int64_t T = im->Tl, H = m->cfg.H;
  struct cf_block_dims bd = {.H = H,
                             .heads = im->heads_l,
                             .dh = im->dh,
                             .rot = im->rot,
                             .ffn = im->ffn_l,
                             .win = 0,
                             .cs = im->cs,
                             .sn = im->sn,
                             .tp = im->tpc,
                             .ring = NULL};
  float *x = im->ba[im->l0].x;
  if (cf_model_first(m))
    memcpy(x, x0, (size_t)(T * H) * sizeof(float));
  else
    CF_MPI(MPI_Recv(x, (int)(T * H), MPI_FLOAT, g->pp_rank - 1, 7, g->pp, MPI_STATUS_IGNORE));
  for (int64_t l = im->l0; l < im->l1; l++)
    CF_TRY(cf_block_fwd(&im->blk[l], &im->ba[l], 1, T, &bd,
                        l + 1 < im->l1 ? im->ba[l + 1].x : im->xL));
  if (!cf_model_last(m))
    CF_MPI(MPI_Send(im->xL, (int)(T * H), MPI_FLOAT, g->pp_rank + 1, 7, g->pp));
  else
    cf_layernorm_fwd(im->xL, T, H, im->lnf.w, im->lnf.b, im->xhf, im->rsf, h);
  return CF_OK;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  cf_test_rank = rank;
  if (argc != 4) {
    if (rank == 0) printf("usage: test_neox_load FIXTURES TP PP\n");
    MPI_Finalize();
    return 2;
  }
  snprintf(g_fx, sizeof g_fx, "%s", argv[1]);
  const int tp = atoi(argv[2]), pp = atoi(argv[3]);
  char dir[2200], label[64];
  snprintf(label, sizeof label, "test_neox_load tp%d pp%d (%d ranks)", tp, pp, size);

  int64_t T = 0, H = 0;
  int tok[MAXT];
  double *ref = NULL;
  EXPECT(read_ref(&T, &H, tok, &ref), "cannot read %s/good/ref.txt", g_fx);
  struct cf_neox_cfg nc;
  fx(dir, sizeof dir, "good");
  EXPECT_OK(cf_neox_config_read(dir, &nc), "config.json");
  EXPECT(nc.hidden == H && nc.layers == 4 && nc.heads == 4 && nc.ffn == 48 && nc.vocab == 56 &&
             nc.rotary_base == 1000.0 && nc.rotary_pct == 0.5 && nc.attention_bias == 1,
         "config.json read as H %lld layers %lld heads %lld ffn %lld vocab %lld base %g pct %g",
         (long long)nc.hidden, (long long)nc.layers, (long long)nc.heads, (long long)nc.ffn,
         (long long)nc.vocab, nc.rotary_base, nc.rotary_pct);
  if (cf_test_fails) {
    MPI_Finalize();
    return cf_test_done(label);
  }

  struct cf_model_cfg mc;
  model_cfg(&nc, T, &mc);
  struct cf_grid g;
  EXPECT_OK(cf_grid_init(&g, comm, tp, pp, 1), "grid");
  struct cf_model m, fresh, sh;
  EXPECT_OK(cf_model_init_part(&m, &mc, 1, &g), "model part");
  EXPECT_OK(cf_model_init_part(&fresh, &mc, 1, &g), "model part");
  EXPECT_OK(cf_model_init_part(&sh, &mc, 1, &g), "model part");
  cf_model_init_weights(&m, 3);
  cf_model_init_weights(&fresh, 3);
  cf_model_init_weights(&sh, 3);

  /* the loaded backbone against the PyTorch forward */
  struct cf_neox_info info;
  EXPECT_OK(cf_neox_load(g.cart, &m, dir, &info), "load good");
  int has_wte = 0;
  for (int i = 0; i < m.n_tensors; i++)
    has_wte |= strcmp(m.tensors[i].name, "prompt.wte.weight") == 0;
  EXPECT(info.n_loaded == 12 * 4 + 2 + has_wte && info.wte == has_wte &&
             strcmp(info.prefix, "gpt_neox.") == 0,
         "loaded %d tensors (wte %d, prefix '%s'), expected %d", info.n_loaded, info.wte,
         info.prefix, 12 * 4 + 2 + has_wte);
  float *x0 = cf_test_floats((size_t)(T * H)), *h = cf_test_floats((size_t)(T * H));
  if (cf_model_first(&m)) { /* the tokens' rows of the BF16 embedding */
    struct cf_st s;
    EXPECT_OK(cf_st_open_dir(&s, dir), "open the safetensors");
    const struct cf_st_tensor *e = cf_st_find(&s, "gpt_neox.embed_in.weight");
    EXPECT(e != NULL && strcmp(e->dtype, "BF16") == 0, "embed_in missing or not BF16");
    for (int64_t t = 0; e != NULL && t < T; t++)
      EXPECT_OK(cf_st_read(&s, e, tok[t], 1, 0, H, x0 + t * H), "embedding row");
    cf_st_close(&s);
  }
  EXPECT_OK(backbone(&m, &g, x0, h), "backbone forward");
  if (cf_model_last(&m)) {
    double dmax = 0, rmax = 0;
    for (int64_t i = 0; i < T * H; i++) {
      dmax = fmax(dmax, fabs((double)h[i] - ref[i]));
      rmax = fmax(rmax, fabs(ref[i]));
    }
    EXPECT(dmax <= 1e-4 * rmax,
           "hidden states differ from the PyTorch GPT-NeoX: max |diff| %.3g, "
           "max |ref| %.3g (relative %.3g > 1e-4)",
           dmax, rmax, dmax / rmax);
    if (rank == size - 1)
      printf("final hidden states: relative max difference %.3g\n", dmax / rmax);
  }

  /* a model with a text prompt (model.h): prompt.wte takes embed_in's first V = 50 of its 56
   * rows; on a first stage that is not the last (pp2), the prompt's embedding and blocks
   * (cf_model_prefill) give the residual stream the runner above hands on */
  struct cf_model_cfg pc = mc;
  pc.N = 2;
  pc.prompt_len = T;
  pc.vocab = 50;
  pc.prompt_pad = 0;
  struct cf_model pm;
  EXPECT_OK(cf_model_init_part(&pm, &pc, 1, &g), "prompt model part");
  cf_model_init_weights(&pm, 3);
  EXPECT_OK(cf_neox_load(g.cart, &pm, dir, &info), "load good into a prompt model");
  EXPECT(info.wte == 1 && info.n_loaded == 12 * 4 + 3, "prompt model: loaded %d tensors, wte %d",
         info.n_loaded, info.wte);
  const struct cf_tensor_info *wt = cf_model_find(&pm, "prompt.wte.weight");
  if (cf_model_first(&pm)) {
    float *rows = cf_test_floats((size_t)(50 * H));
    struct cf_st s;
    EXPECT_OK(cf_st_open_dir(&s, dir), "open the safetensors");
    const struct cf_st_tensor *e = cf_st_find(&s, "gpt_neox.embed_in.weight");
    if (e != NULL) EXPECT_OK(cf_st_read(&s, e, 0, 50, 0, H, rows), "embedding rows");
    cf_st_close(&s);
    EXPECT(wt != NULL && wt->numel == (size_t)(50 * H) &&
               memcmp(pm.params + wt->offset, rows, (size_t)(50 * H) * sizeof(float)) == 0,
           "prompt.wte.weight is not embed_in's first 50 rows");
    free(rows);
  }
  if (cf_model_first(&pm) && !cf_model_last(&pm)) {
    struct cf_kvcache kc;
    int32_t ids[MAXT];
    float *out = cf_test_floats((size_t)(T * H));
    for (int64_t t = 0; t < T; t++)
      ids[t] = tok[t];
    EXPECT_OK(cf_kvcache_init(&kc, &pm, 1, pc.N, 1), "prompt cache");
    EXPECT_OK(cf_model_prefill(&pm, &kc, ids, NULL, out), "prefill");
    const float *want = ((struct cf_model_impl *)m.impl)->xL;
    double dmax = 0, rmax = 0;
    for (int64_t i = 0; i < T * H; i++) {
      dmax = fmax(dmax, fabs((double)out[i] - want[i]));
      rmax = fmax(rmax, fabs((double)want[i]));
    }
    EXPECT(dmax <= 1e-5 * rmax, "prefill's stage output differs from the block runner's by %.3g",
           dmax / rmax);
    cf_kvcache_release(&kc);
    free(out);
  }
  cf_model_release(&pm);

  /* outside the backbone, calmflow's own initialization */
  for (int i = 0; i < m.n_tensors; i++) {
    const struct cf_tensor_info *t = &m.tensors[i];
    int backbone_t = strncmp(t->name, "layers.", 7) == 0 || strncmp(t->name, "lnf.", 4) == 0 ||
                     strcmp(t->name, "prompt.wte.weight") == 0;
    if (!t->held) continue;
    int same =
        memcmp(m.params + t->offset, fresh.params + t->offset, t->numel * sizeof(float)) == 0;
    EXPECT(backbone_t ? !same || t->numel == 0 : same, "tensor %s %s", t->name,
           backbone_t ? "was not loaded" : "was changed by the load");
  }

  /* the sharded copy: the same parameters, bit for bit */
  fx(dir, sizeof dir, "sharded");
  EXPECT_OK(cf_neox_load(g.cart, &sh, dir, NULL), "load sharded");
  EXPECT(memcmp(sh.params, m.params, m.n_params * sizeof(float)) == 0,
         "the sharded weights load differently");

  /* defects: the same single line on every rank */
  static const struct {
    const char *dir, *want;
  } bad[] = {
      {"bad_type", "model_type is 'gpt2'; calmflow loads gpt_neox"},
      {"bad_serial", "use_parallel_residual is false"},
      {"bad_act", "hidden_act is 'gelu_new'"},
      {"bad_eps", "layer_norm_eps is 1e-06"},
      {"bad_missing", "tensor 'gpt_neox.layers.2.attention.dense.bias' (for calmflow's "
                      "layers.2.attn.out.bias) is missing"},
      {"bad_dtype", "tensor 'gpt_neox.layers.1.mlp.dense_h_to_4h.weight' has dtype F64"},
      {"bad_shape", "tensor 'gpt_neox.layers.3.mlp.dense_4h_to_h.weight' has shape 48x32, "
                    "calmflow's layers.3.mlp.fc2.weight needs 32x48"},
      {"bad_nan", "tensor 'gpt_neox.layers.3.mlp.dense_h_to_4h.weight' holds a NaN or infinity "
                  "at element 167"},
      {"bad_size", "tensor 'gpt_neox.layers.0.attention.dense.weight' spans 4096 bytes but its "
                   "shape and dtype F32 need 4224"},
      {"bad_overlap", "overlap"},
      {"bad_unknown_dtype", "has unknown dtype 'F7'"},
      {"bad_trunc", "outside the"},
      {"bad_hdrlen", "runs past the end of the file"},
      {"bad_json", "the header is not valid JSON"},
      {"bad_short", "too short for the 8-byte header length"},
      {"bad_noweights", "holds neither model.safetensors nor model.safetensors.index.json"},
      {"nonexistent", "cannot open"},
  };
  struct cf_model scratch;
  EXPECT_OK(cf_model_init_part(&scratch, &mc, 1, &g), "model part");
  const size_t held = cf_alloc_bytes(); /* every path, failing ones too, frees what it took */
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    fx(dir, sizeof dir, bad[i].dir);
    cf_status st = cf_neox_load(g.cart, &scratch, dir, NULL);
    EXPECT(st != CF_OK, "%s: loaded, expected an error containing '%s'", bad[i].dir, bad[i].want);
    EXPECT(strstr(cf_errmsg(), bad[i].want) != NULL && strchr(cf_errmsg(), '\n') == NULL,
           "%s: message '%s' lacks '%s' (or has several lines)", bad[i].dir, cf_errmsg(),
           bad[i].want);
    if (getenv("CF_TEST_VERBOSE") && rank == 0) printf("[%s] %s\n", bad[i].dir, cf_errmsg());
    /* every rank must hold the same message */
    char mine[1024], first[1024];
    snprintf(mine, sizeof mine, "%s", cf_errmsg());
    memcpy(first, mine, sizeof first);
    MPI_Bcast(first, (int)sizeof first, MPI_CHAR, 0, comm);
    EXPECT(strcmp(mine, first) == 0, "%s: ranks disagree: '%s' vs rank 0's '%s'", bad[i].dir, mine,
           first);
    cf_err_clear();
  }
  EXPECT(cf_alloc_bytes() == held, "the failed loads left %zu bytes allocated",
         cf_alloc_bytes() - held);
  if (size == 1) { /* the header parser on 300 damaged copies: an error or a file, no crash */
    char src[2300], dst[2300];
    fx(src, sizeof src, "good/model.safetensors");
    fx(dst, sizeof dst, "mutant.safetensors");
    FILE *f = fopen(src, "rb");
    static unsigned char buf[1 << 18];
    size_t n = f != NULL ? fread(buf, 1, sizeof buf, f) : 0;
    if (f != NULL) fclose(f);
    EXPECT(n > 8 && n < sizeof buf, "cannot read %s", src);
    uint64_t hl = 0;
    for (int k = 7; k >= 0 && n > 8; k--)
      hl = (hl << 8) | buf[k];
    struct cf_rng r = {.seed = 9, .domain = CF_RNG_DATA, .step = 0, .index = 0};
    for (uint64_t it = 0; it < 300 && n > 8 && hl + 8 <= n; it++) {
      float u[4];
      cf_rng_uniform(&r, 4 * it, u, 4);
      size_t at = (size_t)(u[0] * (float)(hl + 8)), len = n;
      unsigned char keep = buf[at];
      buf[at] = (unsigned char)(u[1] * 256.0f);
      if (u[2] < 0.3f) len = (size_t)(u[3] * (float)n);
      FILE *w = fopen(dst, "wb");
      if (w != NULL) {
        fwrite(buf, 1, len, w);
        fclose(w);
      }
      struct cf_st s;
      if (cf_st_open(&s, dst) == CF_OK) {
        for (int k = 0; k < s.n; k++) /* reads fail cleanly too */
          if (cf_st_rows(&s.t[k]) * cf_st_cols(&s.t[k]) <= (1 << 16)) {
            float *v = cf_test_floats((size_t)(cf_st_rows(&s.t[k]) * cf_st_cols(&s.t[k])));
            (void)cf_st_read(&s, &s.t[k], 0, cf_st_rows(&s.t[k]), 0, cf_st_cols(&s.t[k]), v);
            free(v);
          }
        cf_st_close(&s);
      }
      EXPECT(strchr(cf_errmsg(), '\n') == NULL, "a damaged file gave several lines: %s",
             cf_errmsg());
      cf_err_clear();
      buf[at] = keep;
    }
    EXPECT(cf_alloc_bytes() == held, "the damaged files left %zu bytes allocated",
           cf_alloc_bytes() - held);
  }
  /* a model whose shape is not config.json's */
  struct cf_model_cfg other = mc;
  other.ffn = 64;
  struct cf_model wrong;
  EXPECT_OK(cf_model_init_part(&wrong, &other, 1, &g), "model part");
  fx(dir, sizeof dir, "good");
  EXPECT_FAIL(cf_neox_load(g.cart, &wrong, dir, NULL), "-net_ffn is 64 but",
              "a model of another shape");
  cf_model_release(&wrong);

  cf_model_release(&scratch);
  cf_model_release(&sh);
  cf_model_release(&fresh);
  cf_model_release(&m);
  cf_grid_release(&g);
  free(x0);
  free(h);
  free(ref);
  int total = 0;
  MPI_Allreduce(&cf_test_fails, &total, 1, MPI_INT, MPI_SUM, comm);
  cf_test_fails = total;
  MPI_Comm_free(&comm);
  MPI_Finalize();
  return cf_test_done(label);
}
