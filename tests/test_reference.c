/* test_reference.c: compare the C model with the independent PyTorch reference
 * (tests/reference/make_reference.py): loss components, every parameter gradient, the
 * final hidden states through the KV cache (whole sequence at once and point by point),
 * and head sampling (gmm: also the most probable component's mean, without noise), for the
 * vae, gauss, gmm, fm and cvae heads and the no_history / time_input ablation (fm and cvae
 * dumps carry their training noise: inputs/eps), and a text prompt in front of the tokens
 * (attributes prompt_len, vocab, prompt_pad and inputs/prompt_ids; the cache is prefilled
 * with the prompt). The dump holds float32
 * weights and inputs and float64 reference values, so the tolerances below only have to
 * cover the C code's float32 round-off.
 * After the real comparison the test perturbs one weight (with a prompt also one used row of
 * prompt.wte) and checks that the loss, gradient and hidden-state comparisons then fail (the
 * test can fail).
 *
 * Usage: test_reference [DUMP.h5 ...]; a relative path is also tried under
 * $CF_SOURCE_DIR; without arguments every dump in $CF_SOURCE_DIR/tests/reference. */
#include <hdf5.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/model.h"
#include "cf_test.h"

/* Loss components: float32 forward with the loss sums accumulated in any reasonable way
 * stays within a few 1e-7 relative (the float32 torch run of the same dumps differs from
 * float64 by <= 2e-7); 1e-5 leaves ample room and still catches any modelling error. */
#define TOL_LOSS_REL 1e-5
#define TOL_LOSS_ABS 1e-6
/* Gradients: max |g_c - g_ref| <= TOL_GRAD * max(GRAD_FLOOR, max |g_ref|) per tensor. The
 * float32 torch run reaches 0.5e-6 .. 2.5e-6 of this measure (make_reference.py prints it); a
 * float32 C backward with different summation orders can be a few times worse, 1e-4 keeps >10x
 * headroom while any wrong term (a missing path, a wrong index) gives errors of order 1. */
#define TOL_GRAD 1e-4
#define GRAD_FLOOR 1e-3
/* Hidden states and samples: max |c - ref| <= TOL_OUT * max(1, max |ref|). */
#define TOL_OUT 2e-5

/* ---- HDF5 helpers ---- */

static int attr_i64(hid_t f, const char *name, int64_t *v) {
  if (H5Aexists(f, name) <= 0) {
    printf("FAIL: dump has no attribute '%s'\n", name);
    return -1;
  }
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  herr_t e = H5Aread(a, H5T_NATIVE_INT64, v);
  H5Aclose(a);
  if (e < 0) printf("FAIL: cannot read attribute '%s' as an integer\n", name);
  return e < 0 ? -1 : 0;
}

static int attr_f64(hid_t f, const char *name, double *v) {
  if (H5Aexists(f, name) <= 0) {
    printf("FAIL: dump has no attribute '%s'\n", name);
    return -1;
  }
  hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  herr_t e = H5Aread(a, H5T_NATIVE_DOUBLE, v);
  H5Aclose(a);
  if (e < 0) printf("FAIL: cannot read attribute '%s' as a number\n", name);
  return e < 0 ? -1 : 0;
}

/* An integer attribute that older dumps may lack: *v = dflt when absent. */
static int attr_i64_opt(hid_t f, const char *name, int64_t dflt, int64_t *v) {
  *v = dflt;
  return H5Aexists(f, name) > 0 ? attr_i64(f, name, v) : 0;
}

/* Read dataset `name` (whose shape must be shape[0..ndim-1]; ndim 0 = scalar) as memtype. */
static int read_ds(hid_t f, const char *name, hid_t memtype, int ndim, const int64_t *shape,
                   void *buf) {
  char group[256];
  const char *slash = strrchr(name, '/');
  if (slash) {
    snprintf(group, sizeof group, "%.*s", (int)(slash - name), name);
    if (H5Lexists(f, group, H5P_DEFAULT) <= 0) {
      printf("FAIL: dump has no group '%s'\n", group);
      return -1;
    }
  }
  if (H5Lexists(f, name, H5P_DEFAULT) <= 0) {
    printf("FAIL: dump has no dataset '%s'\n", name);
    return -1;
  }
  hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
  hid_t s = H5Dget_space(d);
  int nd = H5Sget_simple_extent_ndims(s);
  hsize_t dims[8] = {0};
  int ok = nd == ndim && nd <= 8;
  if (ok) {
    H5Sget_simple_extent_dims(s, dims, NULL);
    for (int i = 0; i < nd; i++)
      ok = ok && (int64_t)dims[i] == shape[i];
  }
  if (!ok) {
    if (nd > 0 && nd <= 8) H5Sget_simple_extent_dims(s, dims, NULL);
    printf("FAIL: dataset '%s' has shape (", name);
    for (int i = 0; i < nd && i < 8; i++)
      printf("%s%llu", i ? ", " : "", (unsigned long long)dims[i]);
    printf("), expected (");
    for (int i = 0; i < ndim; i++)
      printf("%s%lld", i ? ", " : "", (long long)shape[i]);
    printf(")\n");
  } else if (H5Dread(d, memtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
    printf("FAIL: cannot read dataset '%s'\n", name);
    ok = 0;
  }
  H5Sclose(s);
  H5Dclose(d);
  return ok ? 0 : -1;
}

static void *xcalloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size);
  if (!p) {
    printf("FAIL: out of memory\n");
    exit(2);
  }
  return p;
}

static void print_err(const char *what, cf_status st) {
  printf("FAIL: %s returned %s: %s\n%s", what, cf_status_name(st), cf_errmsg(), cf_errtrace());
  cf_err_clear();
}

/* ---- comparisons: each returns the number of failed checks, prints unless quiet ---- */

static int compare_loss(const struct cf_loss *got, const double ref[4], int quiet) {
  const char *names[4] = {"loss", "recon", "kl", "nll"};
  const double g[4] = {got->loss, got->recon, got->kl, got->nll};
  int bad = 0;
  for (int i = 0; i < 4; i++) {
    double err = fabs(g[i] - ref[i]);
    int ok = err <= TOL_LOSS_REL * fabs(ref[i]) || err <= TOL_LOSS_ABS;
    bad += !ok;
    if (!quiet)
      printf("  %s %-5s got %.9e ref %.9e rel err %.2e\n", ok ? "ok  " : "FAIL", names[i], g[i],
             ref[i], err / fmax(fabs(ref[i]), 1e-300));
  }
  return bad;
}

static int compare_grads(const struct cf_model *m, const double *gref, int quiet) {
  int bad = 0, worst_t = -1;
  double worst = -1;
  for (int t = 0; t < m->n_tensors; t++) {
    const struct cf_tensor_info *ti = &m->tensors[t];
    const float *g = m->grads + ti->offset;
    const double *r = gref + ti->offset;
    double maxref = 0, maxerr = 0;
    size_t at = 0;
    for (size_t i = 0; i < ti->numel; i++) {
      double e = fabs((double)g[i] - r[i]);
      maxref = fmax(maxref, fabs(r[i]));
      if (e > maxerr || isnan(e)) {
        maxerr = isnan(e) ? INFINITY : e;
        at = i;
      }
    }
    double rel = maxerr / fmax(GRAD_FLOOR, maxref);
    if (rel > worst) {
      worst = rel;
      worst_t = t;
    }
    if (!(rel <= TOL_GRAD)) {
      bad++;
      if (!quiet)
        printf("  FAIL grad %s: element %zu got %.9e ref %.9e (max |ref| %.3e, rel err %.2e)\n",
               ti->name, at, (double)g[at], r[at], maxref, rel);
    }
  }
  if (!quiet && worst_t >= 0)
    printf("  %s grads: %d tensors, worst %s rel err %.2e (tol %.0e)\n", bad ? "FAIL" : "ok  ",
           m->n_tensors, m->tensors[worst_t].name, worst, TOL_GRAD);
  return bad;
}

/* got (n) float vs ref (n) double; row = elements per reported row (for the position). */
static int compare_out(const char *what, const float *got, const double *ref, size_t n, size_t row,
                       int quiet) {
  double maxref = 0, maxerr = 0;
  size_t at = 0;
  for (size_t i = 0; i < n; i++) {
    double e = fabs((double)got[i] - ref[i]);
    maxref = fmax(maxref, fabs(ref[i]));
    if (e > maxerr || isnan(e)) {
      maxerr = isnan(e) ? INFINITY : e;
      at = i;
    }
  }
  double rel = maxerr / fmax(1.0, maxref);
  int ok = rel <= TOL_OUT;
  if (!quiet)
    printf("  %s %s: worst at row %zu col %zu got %.9e ref %.9e rel err %.2e (tol %.0e)\n",
           ok ? "ok  " : "FAIL", what, at / row, at % row, (double)got[at], ref[at], rel, TOL_OUT);
  return !ok;
}

/* ---- one dump ---- */

struct dump {
  struct cf_model_cfg cfg;
  int64_t B, J, T;
  double n_pts, beta, tau;
  float *z, *y, *eps; /* (B, J, D) (B, J, D); vae (B, T, H), fm / cvae (B, J, Wt), or NULL */
  int32_t *ids;       /* (B, L) prompt token ids, or NULL */
  float *params;      /* (n_params) as laid out by the model */
  double *grads;      /* (n_params) */
  double loss[4];     /* loss recon kl nll */
  double *hidden;     /* (B, T, H) */
  float *hidden_f;    /* (B, T, H) the same rounded to float32 */
  float *s_eps;       /* vae (B, T, H), others (B, J, cf_head_noise_width) */
  double *s_y;        /* (B, J, D) */
  double *s_mode;     /* gmm: (B, J, D) the sample at tau 0 without noise; else NULL */
};

static void dump_free(struct dump *d) {
  free(d->z);
  free(d->y);
  free(d->eps);
  free(d->ids);
  free(d->params);
  free(d->grads);
  free(d->hidden);
  free(d->hidden_f);
  free(d->s_eps);
  free(d->s_y);
  free(d->s_mode);
  memset(d, 0, sizeof *d);
}

static int read_cfg(hid_t f, struct dump *d) {
  int64_t D, S, P, N, H, layers, heads, ffn, head, B, gmm_k, no_history, time_input;
  int64_t fm_width, fm_draws, fm_steps, cvae_dz, prompt_len, vocab, prompt_pad;
  double rp, rb, drop, lmin, lmax;
  if (attr_i64(f, "D", &D) || attr_i64(f, "S", &S) || attr_i64(f, "P", &P) ||
      attr_i64(f, "N", &N) || attr_i64(f, "H", &H) || attr_i64(f, "layers", &layers) ||
      attr_i64(f, "heads", &heads) || attr_i64(f, "ffn", &ffn) || attr_i64(f, "head", &head) ||
      attr_i64(f, "B", &B) || attr_f64(f, "rotary_pct", &rp) || attr_f64(f, "rotary_base", &rb) ||
      attr_f64(f, "dropout", &drop) || attr_f64(f, "logstd_min", &lmin) ||
      attr_f64(f, "logstd_max", &lmax) || attr_f64(f, "beta", &d->beta) ||
      attr_f64(f, "n_pts", &d->n_pts) || attr_i64_opt(f, "no_history", 0, &no_history) ||
      attr_i64_opt(f, "time_input", 0, &time_input) ||
      attr_i64_opt(f, "prompt_len", 0, &prompt_len) || attr_i64_opt(f, "vocab", 0, &vocab) ||
      attr_i64_opt(f, "prompt_pad", 0, &prompt_pad))
    return -1;
  if (head < CF_HEAD_VAE || head > CF_HEAD_CVAE) {
    printf("FAIL: dump attribute head = %lld, expected 0 (vae), 1 (gauss), 2 (gmm), 3 (fm) or "
           "4 (cvae)\n",
           (long long)head);
    return -1;
  }
  if (head == CF_HEAD_GMM ? attr_i64(f, "gmm_k", &gmm_k) : attr_i64_opt(f, "gmm_k", 0, &gmm_k))
    return -1;
  int fm = head == CF_HEAD_FM, cv = head == CF_HEAD_CVAE;
  if ((fm ? attr_i64(f, "fm_width", &fm_width) : attr_i64_opt(f, "fm_width", 0, &fm_width)) ||
      (fm ? attr_i64(f, "fm_draws", &fm_draws) : attr_i64_opt(f, "fm_draws", 0, &fm_draws)) ||
      (fm ? attr_i64(f, "fm_steps", &fm_steps) : attr_i64_opt(f, "fm_steps", 0, &fm_steps)) ||
      (cv ? attr_i64(f, "cvae_dz", &cvae_dz) : attr_i64_opt(f, "cvae_dz", 0, &cvae_dz)))
    return -1;
  d->cfg = (struct cf_model_cfg){.D = D,
                                 .S = S,
                                 .P = P,
                                 .N = N,
                                 .H = H,
                                 .layers = layers,
                                 .heads = heads,
                                 .ffn = ffn,
                                 .rotary_pct = rp,
                                 .rotary_base = rb,
                                 .head = (enum cf_head)head,
                                 .dropout = (float)drop,
                                 .logstd_min = (float)lmin,
                                 .logstd_max = (float)lmax,
                                 .gmm_k = gmm_k,
                                 .fm_width = fm_width,
                                 .fm_draws = fm_draws,
                                 .fm_steps = fm_steps,
                                 .cvae_dz = cvae_dz,
                                 .no_history = (int)no_history,
                                 .time_input = (int)time_input,
                                 .prompt_len = prompt_len,
                                 .vocab = vocab,
                                 .prompt_pad = prompt_pad};
  d->B = B;
  d->J = N * P;
  d->T = N * P * S;
  return 0;
}

/* Read the dump's arrays; params / grads go to the model's tensor offsets by name. */
static int read_dump(hid_t f, const struct cf_model *m, struct dump *d) {
  const struct cf_model_cfg *c = &d->cfg;
  int64_t B = d->B, J = d->J, T = d->T, D = c->D, H = c->H;
  int vae = c->head == CF_HEAD_VAE, gmm = c->head == CF_HEAD_GMM;
  int64_t W = cf_head_noise_width(c);  /* per point (all heads but vae) */
  int64_t Wt = cf_head_train_width(c); /* fm / cvae training noise per point */
  int64_t sh_z[3] = {B, J, D}, sh_tok[3] = {B, T, H}, sh_noise[3] = {B, J, W};
  int64_t sh_train[3] = {B, J, Wt};
  d->z = xcalloc((size_t)(B * J * D), sizeof(float));
  d->y = xcalloc((size_t)(B * J * D), sizeof(float));
  d->params = xcalloc(m->n_params, sizeof(float));
  d->grads = xcalloc(m->n_params, sizeof(double));
  d->hidden = xcalloc((size_t)(B * T * H), sizeof(double));
  d->hidden_f = xcalloc((size_t)(B * T * H), sizeof(float));
  d->s_eps = xcalloc((size_t)(vae ? B * T * H : B * J * W), sizeof(float));
  d->s_y = xcalloc((size_t)(B * J * D), sizeof(double));
  if (read_ds(f, "inputs/z", H5T_NATIVE_FLOAT, 3, sh_z, d->z) ||
      read_ds(f, "inputs/y", H5T_NATIVE_FLOAT, 3, sh_z, d->y))
    return -1;
  if (vae) {
    d->eps = xcalloc((size_t)(B * T * H), sizeof(float));
    if (read_ds(f, "inputs/eps", H5T_NATIVE_FLOAT, 3, sh_tok, d->eps)) return -1;
  } else if (Wt > 0) {
    d->eps = xcalloc((size_t)(B * J * Wt), sizeof(float));
    if (read_ds(f, "inputs/eps", H5T_NATIVE_FLOAT, 3, sh_train, d->eps)) return -1;
  }
  if (c->prompt_len > 0) {
    int64_t sh_ids[2] = {B, c->prompt_len};
    d->ids = xcalloc((size_t)(B * c->prompt_len), sizeof(int32_t));
    if (read_ds(f, "inputs/prompt_ids", H5T_NATIVE_INT32, 2, sh_ids, d->ids)) return -1;
  }
  const char *ln[4] = {"out/loss", "out/recon", "out/kl", "out/nll"};
  for (int i = 0; i < 4; i++)
    if (read_ds(f, ln[i], H5T_NATIVE_DOUBLE, 0, NULL, &d->loss[i])) return -1;
  if (read_ds(f, "out/hidden", H5T_NATIVE_DOUBLE, 3, sh_tok, d->hidden) ||
      read_ds(f, "sample/eps", H5T_NATIVE_FLOAT, 3, vae ? sh_tok : sh_noise, d->s_eps) ||
      read_ds(f, "sample/tau", H5T_NATIVE_DOUBLE, 0, NULL, &d->tau) ||
      read_ds(f, "sample/y", H5T_NATIVE_DOUBLE, 3, sh_z, d->s_y))
    return -1;
  if (gmm) {
    d->s_mode = xcalloc((size_t)(B * J * D), sizeof(double));
    if (read_ds(f, "sample/y_mode", H5T_NATIVE_DOUBLE, 3, sh_z, d->s_mode)) return -1;
  }
  for (size_t i = 0; i < (size_t)(B * T * H); i++)
    d->hidden_f[i] = (float)d->hidden[i];

  /* every model tensor is in the dump with the same shape, and nothing else is */
  size_t covered = 0;
  for (int t = 0; t < m->n_tensors; t++) {
    const struct cf_tensor_info *ti = &m->tensors[t];
    char name[256];
    snprintf(name, sizeof name, "params/%s", ti->name);
    if (read_ds(f, name, H5T_NATIVE_FLOAT, ti->ndim, ti->shape, d->params + ti->offset)) return -1;
    snprintf(name, sizeof name, "grads/%s", ti->name);
    if (read_ds(f, name, H5T_NATIVE_DOUBLE, ti->ndim, ti->shape, d->grads + ti->offset)) return -1;
    covered += ti->numel;
  }
  const char *groups[2] = {"params", "grads"};
  for (int i = 0; i < 2; i++) {
    H5G_info_t info = {0};
    if (H5Gget_info_by_name(f, groups[i], &info, H5P_DEFAULT) < 0 ||
        info.nlinks != (hsize_t)m->n_tensors) {
      printf("FAIL: dump group '%s' holds %llu tensors, the model has %d\n", groups[i],
             (unsigned long long)info.nlinks, m->n_tensors);
      return -1;
    }
  }
  if (covered != m->n_params) {
    printf("FAIL: model tensors cover %zu of %zu parameters\n", covered, m->n_params);
    return -1;
  }
  return 0;
}

/* Forward + backward from the parameters in m; 0 on success. */
static int train_step(struct cf_model *m, const struct dump *d, struct cf_loss *l) {
  cf_status st;
  cf_model_zero_grad(m);
  if (d->ids != NULL && (st = cf_model_set_prompt(m, 0, d->B, d->ids)) != CF_OK) {
    print_err("cf_model_set_prompt", st);
    return -1;
  }
  st = cf_model_forward(m, d->B, d->z, d->y, d->eps, NULL, d->n_pts, (float)d->beta, l);
  if (st != CF_OK) {
    print_err("cf_model_forward", st);
    return -1;
  }
  st = cf_model_backward(m);
  if (st != CF_OK) {
    print_err("cf_model_backward", st);
    return -1;
  }
  return 0;
}

/* Hidden states through a cache: all J points in one extend (chunk = J) or chunk points per
 * call; compared with the reference. Returns failed checks (-1: a call failed). */
static int check_hidden(const struct cf_model *m, const struct dump *d, int64_t chunk, float *h,
                        int quiet) {
  const struct cf_model_cfg *c = &d->cfg;
  int64_t B = d->B, J = d->J, T = d->T, S = c->S, H = c->H, D = c->D;
  struct cf_kvcache kc;
  memset(&kc, 0, sizeof kc);
  cf_status st = cf_kvcache_init(&kc, m, B, T, chunk * S);
  if (st != CF_OK) {
    print_err("cf_kvcache_init", st);
    return -1;
  }
  float *zc = xcalloc((size_t)(B * chunk * D), sizeof(float));
  float *hc = xcalloc((size_t)(B * chunk * S * H), sizeof(float));
  int rc = 0;
  if (d->ids != NULL && (st = cf_model_prefill(m, &kc, d->ids, NULL, NULL)) != CF_OK) {
    print_err("cf_model_prefill", st);
    rc = -1;
  }
  for (int64_t j0 = 0; j0 < J && rc == 0; j0 += chunk) {
    for (int64_t b = 0; b < B; b++)
      memcpy(zc + b * chunk * D, d->z + (b * J + j0) * D, (size_t)(chunk * D) * sizeof(float));
    st = cf_model_extend(m, &kc, zc, chunk, hc);
    if (st != CF_OK) {
      print_err("cf_model_extend", st);
      rc = -1;
      break;
    }
    for (int64_t b = 0; b < B; b++)
      memcpy(h + (b * T + j0 * S) * H, hc + b * chunk * S * H,
             (size_t)(chunk * S * H) * sizeof(float));
  }
  if (rc == 0 && kc.len != T) {
    printf("FAIL: cache len %lld after extending %lld tokens\n", (long long)kc.len, (long long)T);
    rc = -1;
  }
  if (rc == 0) {
    char what[96];
    snprintf(what, sizeof what, "hidden (extend %lld point%s per call)", (long long)chunk,
             chunk > 1 ? "s" : "");
    rc = compare_out(what, h, d->hidden, (size_t)(B * T * H), (size_t)H, quiet);
  }
  free(zc);
  free(hc);
  cf_kvcache_release(&kc);
  return rc;
}

static int check_sample(const struct cf_model *m, const struct dump *d, int quiet) {
  int64_t B = d->B, J = d->J, T = d->T, D = d->cfg.D;
  struct cf_kvcache kc;
  memset(&kc, 0, sizeof kc);
  cf_status st = cf_kvcache_init(&kc, m, B, T, T);
  if (st != CF_OK) {
    print_err("cf_kvcache_init", st);
    return -1;
  }
  float *y = xcalloc((size_t)(B * J * D), sizeof(float));
  int rc = 0;
  st = cf_head_sample(m, &kc, J, d->hidden_f, d->s_eps, (float)d->tau, y);
  if (st != CF_OK) {
    print_err("cf_head_sample", st);
    rc = -1;
  } else {
    rc = compare_out("head sample", y, d->s_y, (size_t)(B * J * D), (size_t)D, quiet);
  }
  if (rc == 0 && d->s_mode) { /* gmm, tau 0 without noise: the most probable component */
    st = cf_head_sample(m, &kc, J, d->hidden_f, NULL, 0.0f, y);
    if (st != CF_OK) {
      print_err("cf_head_sample (tau 0, no noise)", st);
      rc = -1;
    } else {
      rc = compare_out("head sample (tau 0, no noise)", y, d->s_mode, (size_t)(B * J * D),
                       (size_t)D, quiet);
    }
  }
  free(y);
  cf_kvcache_release(&kc);
  return rc;
}

static int run_dump(const char *path) {
  printf("test_reference: %s\n", path);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) {
    printf("FAIL: cannot open reference dump '%s'\n", path);
    return 1;
  }
  struct dump d;
  memset(&d, 0, sizeof d);
  struct cf_model m;
  memset(&m, 0, sizeof m);
  int bad = 0;
  if (read_cfg(f, &d)) {
    H5Fclose(f);
    return 1;
  }
  cf_status st = cf_model_cfg_check(&d.cfg);
  if (st == CF_OK) st = cf_model_init(&m, &d.cfg, d.B);
  if (st != CF_OK) {
    print_err("cf_model_init", st);
    H5Fclose(f);
    return 1;
  }
  if (read_dump(f, &m, &d)) {
    H5Fclose(f);
    dump_free(&d);
    cf_model_release(&m);
    return 1;
  }
  H5Fclose(f);
  printf("  head %s (gmm_k %lld, fm width %lld draws %lld steps %lld, cvae dz %lld), D %lld "
         "S %lld P %lld N %lld H %lld layers %lld heads %lld "
         "ffn %lld rotary_pct %g, logstd [%g, %g], no_history %d time_input %d, prompt %lld "
         "tokens (V %lld), B %lld, %zu parameters in %d tensors\n",
         cf_head_name(d.cfg.head), (long long)d.cfg.gmm_k, (long long)d.cfg.fm_width,
         (long long)d.cfg.fm_draws, (long long)d.cfg.fm_steps, (long long)d.cfg.cvae_dz,
         (long long)d.cfg.D, (long long)d.cfg.S, (long long)d.cfg.P, (long long)d.cfg.N,
         (long long)d.cfg.H, (long long)d.cfg.layers, (long long)d.cfg.heads, (long long)d.cfg.ffn,
         d.cfg.rotary_pct, (double)d.cfg.logstd_min, (double)d.cfg.logstd_max, d.cfg.no_history,
         d.cfg.time_input, (long long)d.cfg.prompt_len, (long long)d.cfg.vocab, (long long)d.B,
         m.n_params, m.n_tensors);
  memcpy(m.params, d.params, m.n_params * sizeof(float));

  float *h = xcalloc((size_t)(d.B * d.T * d.cfg.H), sizeof(float));
  struct cf_loss l;
  int hb;
  if (train_step(&m, &d, &l)) {
    bad++;
  } else {
    bad += compare_loss(&l, d.loss, 0);
    bad += compare_grads(&m, d.grads, 0);
  }
  hb = check_hidden(&m, &d, d.J, h, 0);
  bad += hb != 0;
  hb = check_hidden(&m, &d, d.cfg.P, h, 0); /* rollout-style: P points per call */
  bad += hb != 0;
  hb = check_sample(&m, &d, 0);
  bad += hb != 0;

  /* Self-check: with one encoder weight perturbed the comparisons must fail. */
  if (bad == 0) {
    const struct cf_tensor_info *ti = cf_model_find(&m, "enc.fc1.weight");
    if (!ti) {
      printf("FAIL: cf_model_find(\"enc.fc1.weight\") is NULL\n");
      bad++;
    } else {
      m.params[ti->offset] += 0.05f;
      struct cf_loss lp;
      if (train_step(&m, &d, &lp) == 0) {
        int lb = compare_loss(&lp, d.loss, 1), gb = compare_grads(&m, d.grads, 1);
        int hbad = check_hidden(&m, &d, d.J, h, 1);
        printf("  %s self-check: enc.fc1.weight[0] += 0.05 -> loss %.9e (ref %.9e), "
               "%d loss / %d grad / %d hidden mismatches\n",
               lb > 0 && gb > 0 && hbad > 0 ? "ok  " : "FAIL", lp.loss, d.loss[0], lb, gb, hbad);
        bad += !(lb > 0 && gb > 0 && hbad > 0);
      } else {
        bad++;
      }
      m.params[ti->offset] = d.params[ti->offset];
    }
  }
  /* with a prompt: one element of the wte row of the last sequence's last id */
  if (bad == 0 && d.ids != NULL) {
    const struct cf_tensor_info *ti = cf_model_find(&m, "prompt.wte.weight");
    size_t at = ti != NULL ? ti->offset + (size_t)d.ids[d.B * d.cfg.prompt_len - 1] * d.cfg.H : 0;
    if (!ti) {
      printf("FAIL: cf_model_find(\"prompt.wte.weight\") is NULL\n");
      bad++;
    } else {
      m.params[at] += 0.05f;
      struct cf_loss lp;
      if (train_step(&m, &d, &lp) == 0) {
        int lb = compare_loss(&lp, d.loss, 1), gb = compare_grads(&m, d.grads, 1);
        int hbad = check_hidden(&m, &d, d.J, h, 1);
        printf("  %s self-check: a used prompt.wte element += 0.05 -> %d loss / %d grad / %d "
               "hidden mismatches\n",
               lb > 0 && gb > 0 && hbad > 0 ? "ok  " : "FAIL", lb, gb, hbad);
        bad += !(lb > 0 && gb > 0 && hbad > 0);
      } else {
        bad++;
      }
      m.params[at] = d.params[at];
    }
  }
  free(h);
  dump_free(&d);
  cf_model_release(&m);
  printf("  %s\n", bad ? "FAILED" : "passed");
  return bad != 0;
}

static int readable(const char *path) {
  FILE *fp = fopen(path, "rb");
  if (fp) fclose(fp);
  return fp != NULL;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* report failures ourselves */
  const char *src = getenv("CF_SOURCE_DIR");
  if (argc > 1) {
    for (int i = 1; i < argc; i++) {
      char path[4096];
      snprintf(path, sizeof path, "%s", argv[i]);
      if (argv[i][0] != '/' && src && !readable(path))
        snprintf(path, sizeof path, "%s/%s", src, argv[i]);
      EXPECT(run_dump(path) == 0, "reference dump %s failed (see above)", path);
    }
  } else if (src) {
    const char *dumps[7] = {"ref_vae.h5",          "ref_gauss.h5", "ref_vae_rot4.h5", "ref_gmm.h5",
                            "ref_gauss_nohist.h5", "ref_fm.h5",    "ref_cvae.h5"};
    for (int i = 0; i < 7; i++) {
      char path[4096];
      snprintf(path, sizeof path, "%s/tests/reference/%s", src, dumps[i]);
      EXPECT(run_dump(path) == 0, "reference dump %s failed (see above)", path);
    }
  } else {
    EXPECT(0, "usage: test_reference DUMP.h5 ... (or set CF_SOURCE_DIR)");
  }
  MPI_Finalize();
  return cf_test_done("test_reference");
}
