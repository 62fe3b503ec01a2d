/* neox.c: a pretrained GPT-NeoX / Pythia backbone into calmflow's transformer (neox.h): the
 * Hugging Face config.json checked and read, the tensor names mapped, every needed tensor's
 * presence, shape and dtype checked on every rank, then each rank's own blocks read from the
 * safetensors files (safetensors.h). */
#include "calmflow/neox.h"

#include <cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/safetensors.h"

#define NEOX_CONFIG_MAX ((long)16 << 20)
#define NEOX_LN_EPS 1e-5 /* calmflow's LayerNorm eps (model.h) */

/* ---- config.json ---- */

static cf_status read_text(const char *path, char **out) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  CF_CHECK(f != NULL, CF_EIO, "cannot open '%s': %s (a Hugging Face model directory needs it)",
           path, strerror(errno));
  long n = -1;
  if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
  cf_status st = CF_OK;
  if (n < 0 || n > NEOX_CONFIG_MAX || fseek(f, 0, SEEK_SET) != 0)
    st = cf_err(CF_EIO, "'%s': cannot size it, or larger than %ld bytes", path, NEOX_CONFIG_MAX);
  if (st == CF_OK) st = cf_alloc((void **)out, (size_t)n + 1, path);
  if (st == CF_OK && fread(*out, 1, (size_t)n, f) != (size_t)n)
    st = cf_err(CF_EIO, "'%s': short read", path);
  fclose(f);
  if (st != CF_OK) cf_free((void **)out);
  return st;
}

/* A positive integer key (required). */
static cf_status cfg_int(const char *path, const cJSON *root, const char *key, int64_t *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
  CF_CHECK(x != NULL, CF_ECORRUPT, "'%s' has no \"%s\"", path, key);
  double d = cJSON_IsNumber(x) ? x->valuedouble : -1.0;
  CF_CHECK(d >= 1.0 && d <= (double)(1 << 24) && d == floor(d), CF_ECORRUPT,
           "'%s': \"%s\" must be a positive integer (at most 2^24)", path, key);
  *v = (int64_t)d;
  return CF_OK;
}

/* A number key, def when absent (or null). */
static cf_status cfg_real(const char *path, const cJSON *root, const char *key, double def,
                          double *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
  *v = def;
  if (x == NULL || cJSON_IsNull(x)) return CF_OK;
  CF_CHECK(cJSON_IsNumber(x) && isfinite(x->valuedouble), CF_ECORRUPT,
           "'%s': \"%s\" must be a number", path, key);
  *v = x->valuedouble;
  return CF_OK;
}

/* A boolean key, def when absent. */
static cf_status cfg_bool(const char *path, const cJSON *root, const char *key, int def, int *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(root, key);
  *v = def;
  if (x == NULL || cJSON_IsNull(x)) return CF_OK;
  CF_CHECK(cJSON_IsBool(x), CF_ECORRUPT, "'%s': \"%s\" must be true or false", path, key);
  *v = cJSON_IsTrue(x) ? 1 : 0;
  return CF_OK;
}

/* int(rotary_pct * head_size), as transformers computes the rotary dimensions. */
static int64_t hf_rotary_dims(double pct, int64_t dh) {
  return (int64_t)(pct * (double)dh);
}

static cf_status parse_config(const char *path, const cJSON *root, struct cf_neox_cfg *nc) {
  CF_CHECK(cJSON_IsObject(root), CF_ECORRUPT, "'%s' is not a JSON object", path);
  const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
  CF_CHECK(cJSON_IsString(mt), CF_EINVAL,
           "'%s' has no \"model_type\"; calmflow loads gpt_neox (GPT-NeoX / Pythia) models only",
           path);
  CF_CHECK(strcmp(mt->valuestring, "gpt_neox") == 0, CF_EINVAL,
           "'%s': model_type is '%.64s'; calmflow loads gpt_neox (GPT-NeoX / Pythia) models only",
           path, mt->valuestring);
  int par;
  CF_TRY(cfg_bool(path, root, "use_parallel_residual", 1, &par));
  CF_CHECK(par, CF_EINVAL,
           "'%s': use_parallel_residual is false; calmflow's blocks are parallel-residual only "
           "(x += attn(ln1(x)) + mlp(ln2(x)))",
           path);
  const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
  CF_CHECK(act == NULL || (cJSON_IsString(act) && strcmp(act->valuestring, "gelu") == 0), CF_EINVAL,
           "'%s': hidden_act is '%.64s'; calmflow's MLP uses the exact (erf) gelu only", path,
           cJSON_IsString(act) ? act->valuestring : "(not a string)");
  const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
  CF_CHECK(rs == NULL || cJSON_IsNull(rs), CF_EINVAL,
           "'%s': rope_scaling is set; calmflow's rotary embedding has no scaling", path);
  CF_TRY(cfg_int(path, root, "hidden_size", &nc->hidden));
  CF_TRY(cfg_int(path, root, "num_attention_heads", &nc->heads));
  CF_TRY(cfg_int(path, root, "num_hidden_layers", &nc->layers));
  CF_TRY(cfg_int(path, root, "intermediate_size", &nc->ffn));
  CF_TRY(cfg_int(path, root, "vocab_size", &nc->vocab));
  CF_CHECK(nc->hidden % nc->heads == 0, CF_ECORRUPT,
           "'%s': hidden_size %lld is not a multiple of num_attention_heads %lld", path,
           (long long)nc->hidden, (long long)nc->heads);
  double pct_alt;
  CF_TRY(cfg_real(path, root, "partial_rotary_factor", 0.25, &pct_alt));
  CF_TRY(cfg_real(path, root, "rotary_pct", pct_alt, &nc->rotary_pct));
  CF_CHECK(nc->rotary_pct >= 0.0 && nc->rotary_pct <= 1.0, CF_ECORRUPT,
           "'%s': rotary_pct %g is outside [0, 1]", path, nc->rotary_pct);
  double base_alt;
  CF_TRY(cfg_real(path, root, "rope_theta", 10000.0, &base_alt));
  CF_TRY(cfg_real(path, root, "rotary_emb_base", base_alt, &nc->rotary_base));
  CF_CHECK(nc->rotary_base > 0.0, CF_ECORRUPT, "'%s': rotary_emb_base %g must be positive", path,
           nc->rotary_base);
  const int64_t dh = nc->hidden / nc->heads, rot = hf_rotary_dims(nc->rotary_pct, dh);
  CF_CHECK(rot % 2 == 0, CF_EINVAL,
           "'%s': int(rotary_pct %g x head size %lld) = %lld rotary dimensions is odd; calmflow "
           "rotates pairs of dimensions (an even count)",
           path, nc->rotary_pct, (long long)dh, (long long)rot);
  CF_TRY(cfg_real(path, root, "layer_norm_eps", NEOX_LN_EPS, &nc->ln_eps));
  CF_CHECK(fabs(nc->ln_eps - NEOX_LN_EPS) <= 1e-6 * NEOX_LN_EPS, CF_EINVAL,
           "'%s': layer_norm_eps is %g; calmflow's LayerNorms use eps 1e-5", path, nc->ln_eps);
  CF_TRY(cfg_bool(path, root, "attention_bias", 1, &nc->attention_bias));
  return CF_OK;
}

cf_status cf_neox_config_read(const char *dir, struct cf_neox_cfg *nc) {
  memset(nc, 0, sizeof *nc);
  CF_CHECK(dir != NULL && dir[0] != '\0', CF_EINVAL, "no Hugging Face model directory given");
  char path[4096];
  int n = snprintf(path, sizeof path, "%s/config.json", dir);
  CF_CHECK(n > 0 && (size_t)n < sizeof path, CF_EINVAL, "model directory '%s': path too long", dir);
  char *text = NULL;
  CF_TRY(read_text(path, &text));
  cJSON *root = cJSON_Parse(text);
  cf_free((void **)&text);
  CF_CHECK(root != NULL, CF_ECORRUPT, "'%s' is not valid JSON", path);
  cf_status st = parse_config(path, root, nc);
  cJSON_Delete(root);
  return st;
}

cf_status cf_neox_check_model(const struct cf_neox_cfg *nc, const struct cf_model_cfg *mc,
                              const char *dir) {
#define NEOX_SAME(a, b, opt, key)                                                                  \
  CF_CHECK((a) == (b), CF_EINVAL, opt " is %lld but '%s/config.json' has " key " %lld",            \
           (long long)(a), dir, (long long)(b))
  NEOX_SAME(mc->H, nc->hidden, "-net_hidden", "hidden_size");
  NEOX_SAME(mc->heads, nc->heads, "-net_heads", "num_attention_heads");
  NEOX_SAME(mc->layers, nc->layers, "-net_layers", "num_hidden_layers");
  NEOX_SAME(mc->ffn, nc->ffn, "-net_ffn", "intermediate_size");
#undef NEOX_SAME
  const int64_t dh = nc->hidden / nc->heads;
  const int64_t rot = 2 * (int64_t)floor(mc->rotary_pct * (double)dh / 2.0);
  CF_CHECK(rot == hf_rotary_dims(nc->rotary_pct, dh), CF_EINVAL,
           "-net_rotary_pct %g gives %lld rotary dimensions per head but '%s/config.json' "
           "(rotary_pct %g) gives %lld",
           mc->rotary_pct, (long long)rot, dir, nc->rotary_pct,
           (long long)hf_rotary_dims(nc->rotary_pct, dh));
  CF_CHECK(fabs(mc->rotary_base - nc->rotary_base) <= 1e-12 * nc->rotary_base, CF_EINVAL,
           "-net_rotary_base is %g but '%s/config.json' has rotary_emb_base %g", mc->rotary_base,
           dir, nc->rotary_base);
  return CF_OK;
}

/* ---- names ---- */

/* calmflow's name inside block L -> the Hugging Face name inside gpt_neox.layers.L */
static const struct {
  const char *cf, *hf;
} g_block_map[] = {
    {"ln1.weight", "input_layernorm.weight"},
    {"ln1.bias", "input_layernorm.bias"},
    {"ln2.weight", "post_attention_layernorm.weight"},
    {"ln2.bias", "post_attention_layernorm.bias"},
    {"attn.qkv.weight", "attention.query_key_value.weight"}, /* rows per head [q | k | v]: same */
    {"attn.qkv.bias", "attention.query_key_value.bias"},
    {"attn.out.weight", "attention.dense.weight"},
    {"attn.out.bias", "attention.dense.bias"},
    {"mlp.fc1.weight", "mlp.dense_h_to_4h.weight"},
    {"mlp.fc1.bias", "mlp.dense_h_to_4h.bias"},
    {"mlp.fc2.weight", "mlp.dense_4h_to_h.weight"},
    {"mlp.fc2.bias", "mlp.dense_4h_to_h.bias"},
};

/* The HF name of calmflow tensor `name` into hf (cap bytes), or 0 when the tensor is not part
 * of the backbone (encoder, head, decoder: calmflow's own initialization). *attn_bias: it is an
 * attention bias (absent from models with attention_bias false). */
static int hf_name(const char *name, const char *prefix, char *hf, size_t cap, int *attn_bias) {
  *attn_bias = 0;
  if (strcmp(name, "lnf.weight") == 0 || strcmp(name, "lnf.bias") == 0) {
    snprintf(hf, cap, "%sfinal_layer_norm.%s", prefix, name + 4);
    return 1;
  }
  /* The token embedding of text prompts (added to model.c by the prompts work): HF's input
   * embedding, its first V rows. Loaded whenever the model has this tensor. */
  if (strcmp(name, "prompt.wte.weight") == 0) {
    snprintf(hf, cap, "%sembed_in.weight", prefix);
    return 1;
  }
  if (strncmp(name, "layers.", 7) != 0) return 0;
  char *end = NULL;
  long long l = strtoll(name + 7, &end, 10);
  if (end == name + 7 || *end != '.') return 0;
  for (size_t i = 0; i < sizeof g_block_map / sizeof g_block_map[0]; i++)
    if (strcmp(end + 1, g_block_map[i].cf) == 0) {
      snprintf(hf, cap, "%slayers.%lld.%s", prefix, l, g_block_map[i].hf);
      *attn_bias =
          strncmp(g_block_map[i].cf, "attn.", 5) == 0 && strstr(g_block_map[i].cf, ".bias") != NULL;
      return 1;
    }
  return 0;
}

/* ---- loading ---- */

/* Collective on comm. Every rank ends with the status and message of the lowest failing rank. */
static cf_status agree(MPI_Comm comm, cf_status st) {
  int rank, first, mine;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  mine = st != CF_OK ? rank : INT_MAX;
  CF_MPI(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm));
  if (first == INT_MAX) return CF_OK;
  char msg[1024];
  int code = (int)st;
  if (rank == first) snprintf(msg, sizeof msg, "%s", cf_errmsg());
  CF_MPI(MPI_Bcast(msg, (int)sizeof msg, MPI_CHAR, first, comm));
  CF_MPI(MPI_Bcast(&code, 1, MPI_INT, first, comm));
  if (rank == first) return st;
  cf_err_clear();
  return cf_err((cf_status)code, "%s", msg);
}

/* Local. The check of one calmflow tensor ti (its name and global shape) of the backbone against
 * the files s opened: present (unless an attention bias of a model without them), the shape
 * calmflow needs, a dtype calmflow reads. *t receives the file's tensor (NULL: none, skip it). */
static cf_status check_tensor(const struct cf_st *s, const struct cf_neox_cfg *nc,
                              const char *prefix, const char *dir, const struct cf_tensor_info *ti,
                              const struct cf_st_tensor **t) {
  char hf[256];
  int attn_bias;
  *t = NULL;
  if (!hf_name(ti->name, prefix, hf, sizeof hf, &attn_bias)) return CF_OK;
  const struct cf_st_tensor *f = cf_st_find(s, hf);
  const int wte = strcmp(ti->name, "prompt.wte.weight") == 0;
  if (f == NULL && attn_bias && !nc->attention_bias) return CF_OK; /* stays zero */
  CF_CHECK(f != NULL, CF_ECORRUPT,
           "model directory '%s': tensor '%s' (for calmflow's %s) is missing from its "
           "safetensors",
           dir, hf, ti->name);
  const int64_t r = ti->shape[0], c = ti->ndim == 2 ? ti->shape[1] : 1;
  int ok =
      f->ndim == ti->ndim && cf_st_cols(f) == c && (wte ? cf_st_rows(f) >= r : cf_st_rows(f) == r);
  if (!ok) {
    char got[96] = "", *g = got;
    for (int k = 0; k < f->ndim && g < got + sizeof got - 24; k++)
      g += snprintf(g, (size_t)(got + sizeof got - g), "%s%lld", k ? "x" : "",
                    (long long)f->shape[k]);
    if (f->ndim == 0) snprintf(got, sizeof got, "a scalar");
    if (ti->ndim == 2)
      return cf_err(CF_ECORRUPT,
                    "safetensors '%s': tensor '%s' has shape %s, calmflow's %s needs %s%lldx%lld",
                    cf_st_path(s, f), hf, got, ti->name, wte ? "at least " : "", (long long)r,
                    (long long)c);
    return cf_err(CF_ECORRUPT,
                  "safetensors '%s': tensor '%s' has shape %s, calmflow's %s needs %lld",
                  cf_st_path(s, f), hf, got, ti->name, (long long)r);
  }
  CF_CHECK(strcmp(f->dtype, "F32") == 0 || strcmp(f->dtype, "F16") == 0 ||
               strcmp(f->dtype, "BF16") == 0,
           CF_EINVAL,
           "safetensors '%s': tensor '%s' has dtype %s; calmflow reads F32, F16 or BF16 weights",
           cf_st_path(s, f), hf, f->dtype);
  *t = f;
  return CF_OK;
}

/* Local. config.json against the model configuration, then the safetensors files opened into s
 * (every header checked) and the HF name prefix they use. */
static cf_status open_checked(const struct cf_model_cfg *mc, const char *dir,
                              struct cf_neox_cfg *nc, struct cf_st *s, const char **prefix) {
  CF_TRY(cf_neox_config_read(dir, nc));
  CF_TRY(cf_neox_check_model(nc, mc, dir));
  CF_TRY(cf_st_open_dir(s, dir));
  *prefix = cf_st_find(s, "gpt_neox.final_layer_norm.weight") != NULL ? "gpt_neox." : "";
  return CF_OK;
}

/* Local. Check every backbone tensor of the whole model against the files, then read this
 * rank's blocks. */
static cf_status load_local(struct cf_model *m, const char *dir, struct cf_neox_info *info) {
  struct cf_neox_cfg nc;
  struct cf_st s;
  const char *prefix = "";
  memset(&s, 0, sizeof s);
  cf_status st = open_checked(&m->cfg, dir, &nc, &s, &prefix);
  if (st == CF_OK) snprintf(info->prefix, sizeof info->prefix, "%s", prefix);
  /* pass 0 checks the whole model's tensors (the same verdict on every rank), pass 1 reads */
  for (int pass = 0; pass < 2 && st == CF_OK; pass++) {
    for (int i = 0; i < m->n_tensors && st == CF_OK; i++) {
      const struct cf_tensor_info *ti = &m->tensors[i];
      const struct cf_st_tensor *t = NULL;
      st = check_tensor(&s, &nc, prefix, dir, ti, &t);
      if (st != CF_OK || t == NULL) continue;
      if (pass == 0) {
        info->n_loaded++;
        info->wte |= strcmp(ti->name, "prompt.wte.weight") == 0;
        continue;
      }
      if (!ti->held || ti->numel == 0) continue;
      st = cf_st_read(&s, t, ti->start[0], ti->count[0], ti->ndim == 2 ? ti->start[1] : 0,
                      ti->ndim == 2 ? ti->count[1] : 1, m->params + ti->offset);
    }
  }
  cf_st_close(&s);
  return st;
}

#define NEOX_SCAN_FLOATS ((int64_t)1 << 20) /* values read per block by the early check */

/* The early check's state: the files, and this rank's share of the value scan. */
struct precheck {
  const struct cf_st *s;
  const struct cf_neox_cfg *nc;
  const char *prefix, *dir;
  int rank, size, k; /* k: backbone tensors found so far; rank k % size scans the k-th */
  int scan;          /* 0: headers, shapes and dtypes only; 1: the values too */
  float *buf;        /* (NEOX_SCAN_FLOATS) */
};

/* Local. check_tensor for calmflow tensor `name` of global shape (d0, d1) (d1 = 0: 1-D); on
 * this rank's turn also read the d0 rows it needs, a block at a time, for a NaN or infinity. */
static cf_status check_named(struct precheck *p, const char *name, int64_t d0, int64_t d1) {
  struct cf_tensor_info ti;
  const struct cf_st_tensor *t;
  memset(&ti, 0, sizeof ti);
  ti.name = name;
  ti.ndim = d1 > 0 ? 2 : 1;
  ti.shape[0] = d0;
  ti.shape[1] = d1;
  CF_TRY(check_tensor(p->s, p->nc, p->prefix, p->dir, &ti, &t));
  if (!p->scan || t == NULL || p->k++ % p->size != p->rank) return CF_OK;
  const int64_t cols = d1 > 0 ? d1 : 1;
  const int64_t block = cols < NEOX_SCAN_FLOATS ? NEOX_SCAN_FLOATS / cols : 1;
  for (int64_t r = 0; r < d0; r += block) {
    int64_t nr = d0 - r < block ? d0 - r : block;
    for (int64_t c = 0; c < cols; c += NEOX_SCAN_FLOATS) /* (a row longer than a block) */
      CF_TRY(cf_st_read(p->s, t, r, nr, c,
                        cols - c < NEOX_SCAN_FLOATS ? cols - c : NEOX_SCAN_FLOATS, p->buf));
  }
  return CF_OK;
}

/* Local. check_tensor over the backbone tensors a model of configuration mc has, in their
 * global shapes as model.c makes them: layers.L.{ln1, ln2} (H), attn.qkv (3H, H), attn.out
 * (H, H), mlp.fc1 (ffn, H), mlp.fc2 (H, ffn), each bias of its weight's output size; lnf (H);
 * prompt.wte (V, H) with a prompt. This rank (of size) reads every size-th of them for
 * non-finite values. */
static cf_status check_local(const struct cf_model_cfg *mc, const char *dir, int rank, int size) {
  struct cf_neox_cfg nc;
  struct cf_st s;
  struct precheck p = {&s, &nc, "", dir, rank, size, 0, 0, NULL};
  memset(&s, 0, sizeof s);
  cf_status st = open_checked(mc, dir, &nc, &s, &p.prefix);
  if (st == CF_OK)
    st = cf_alloc((void **)&p.buf, (size_t)NEOX_SCAN_FLOATS * sizeof(float), "weight check");
  const int64_t H = mc->H, F = mc->ffn;
  static const char *const part[6] = {"ln1", "ln2", "attn.qkv", "attn.out", "mlp.fc1", "mlp.fc2"};
  const int64_t out[6] = {H, H, 3 * H, H, F, H}, in[6] = {0, 0, H, H, H, F};
  char name[128], bias[128];
  /* every header, shape and dtype first (the same verdict on every rank), then the values */
  for (p.scan = 0; p.scan < 2 && st == CF_OK; p.scan++) {
    for (int64_t l = 0; l < mc->layers && st == CF_OK; l++)
      for (int i = 0; i < 6 && st == CF_OK; i++) {
        snprintf(name, sizeof name, "layers.%lld.%s.weight", (long long)l, part[i]);
        snprintf(bias, sizeof bias, "layers.%lld.%s.bias", (long long)l, part[i]);
        st = check_named(&p, name, out[i], in[i]);
        if (st == CF_OK) st = check_named(&p, bias, out[i], 0);
      }
    if (st == CF_OK) st = check_named(&p, "lnf.weight", H, 0);
    if (st == CF_OK) st = check_named(&p, "lnf.bias", H, 0);
    if (st == CF_OK && mc->prompt_len > 0) st = check_named(&p, "prompt.wte.weight", mc->vocab, H);
  }
  cf_free((void **)&p.buf);
  cf_st_close(&s);
  return st;
}

cf_status cf_neox_check(MPI_Comm comm, const struct cf_model_cfg *mc, const char *dir) {
  int rank, size;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &size));
  return agree(comm, check_local(mc, dir, rank, size));
}

cf_status cf_neox_load(MPI_Comm comm, struct cf_model *m, const char *dir,
                       struct cf_neox_info *info) {
  struct cf_neox_info local;
  memset(&local, 0, sizeof local);
  cf_status st = m != NULL && m->impl != NULL
                     ? load_local(m, dir, &local)
                     : cf_err(CF_EINVAL, "neox: load before cf_model_init");
  st = agree(comm, st);
  if (info != NULL) *info = local;
  return st;
}
