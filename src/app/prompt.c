/* prompt.c: text prompts for -model calmflow (model.h "text prompt", docs/prompts.md): the
 * -data_prompt template, rendering it from the data file's /obs columns, the tokenizer
 * (-tok_*), grouping the training rows by prompt (train.h cf_prompt_data) and the prompt a
 * sampling run uses (-sample_prompt, -sample_cond). Rank 0 tokenizes and broadcasts, so every
 * rank holds the same ids and a tokenizer error is reported once. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "calmflow/bpe.h"
#include "calmflow/conds.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"

#define CF_PROMPT_MAX 4096 /* bytes of one rendered prompt, NUL included */

cf_status cf_prompt_template(const char *tmpl, char *pool, size_t cap, const char **names, int *n) {
  *n = 0;
  size_t used = 0;
  for (const char *p = tmpl; *p; p++) {
    if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
      p++;
      continue;
    }
    CF_CHECK(*p != '}', CF_EINVAL,
             "option -data_prompt: '}' at byte %d of '%s' closes no {COL} field (write }} for a "
             "brace)",
             (int)(p - tmpl), tmpl);
    if (*p != '{') continue;
    const char *e = strchr(p + 1, '}');
    CF_CHECK(e != NULL, CF_EINVAL,
             "option -data_prompt: the field at byte %d of '%s' is not closed with '}' (write {{ "
             "for a brace)",
             (int)(p - tmpl), tmpl);
    size_t len = (size_t)(e - p - 1);
    CF_CHECK(len >= 1 && len <= 255 && memchr(p + 1, '{', len) == NULL, CF_EINVAL,
             "option -data_prompt: the field at byte %d of '%s' must name an /obs column, "
             "{COL}",
             (int)(p - tmpl), tmpl);
    int seen = 0;
    for (int k = 0; k < *n && !seen; k++)
      seen = strlen(names[k]) == len && memcmp(names[k], p + 1, len) == 0;
    if (!seen) {
      CF_CHECK(*n < CF_CONDS_MAX && used + len + 1 <= cap, CF_EINVAL,
               "option -data_prompt: '%s' names more than %d columns", tmpl, CF_CONDS_MAX);
      memcpy(pool + used, p + 1, len);
      pool[used + len] = '\0';
      names[(*n)++] = pool + used;
      used += len + 1;
    }
    p = e;
  }
  return CF_OK;
}

cf_status cf_prompt_render(const char *tmpl, const char *const *names, const char *const *values,
                           int n, char *out, size_t cap) {
  size_t len = 0;
#define CF_PUT(src, k)                                                                             \
  do {                                                                                             \
    CF_CHECK(len + (k) < cap, CF_EINVAL,                                                           \
             "option -data_prompt: the prompt from '%s' is longer than %zu bytes", tmpl, cap - 1); \
    memcpy(out + len, (src), (k));                                                                 \
    len += (k);                                                                                    \
  } while (0)
  for (const char *p = tmpl; *p; p++) {
    if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
      CF_PUT(p, 1);
      p++;
      continue;
    }
    if (*p != '{') {
      CF_PUT(p, 1);
      continue;
    }
    const char *e = strchr(p + 1, '}');
    CF_CHECK(e != NULL, CF_EINVAL, "option -data_prompt: '%s' has an unclosed field", tmpl);
    size_t k = (size_t)(e - p - 1);
    int f = -1;
    for (int i = 0; i < n && f < 0; i++)
      if (strlen(names[i]) == k && memcmp(names[i], p + 1, k) == 0) f = i;
    CF_CHECK(f >= 0, CF_EINVAL, "option -data_prompt: no value for the field {%.*s}", (int)k,
             p + 1);
    CF_PUT(values[f], strlen(values[f]));
    p = e;
  }
#undef CF_PUT
  out[len] = '\0';
  return CF_OK;
}

/* Local. The tokenizer from -tok_file, or -tok_encoder with -tok_vocab, of o; `why` names the
 * option that needs it in errors. */
static cf_status load_tokenizer(const struct cf_opts *o, const char *why, struct cf_bpe **bpe) {
  const char *f = cf_opt_str(o, "tok_file"), *e = cf_opt_str(o, "tok_encoder");
  const char *v = cf_opt_str(o, "tok_vocab");
  CF_CHECK(f[0] != '\0' || e[0] != '\0' || v[0] != '\0', CF_EINVAL,
           "option %s: text prompts need a tokenizer: -tok_file tokenizer.json, or -tok_encoder "
           "encoder.json with -tok_vocab vocab.bpe",
           why);
  CF_CHECK(f[0] == '\0' || (e[0] == '\0' && v[0] == '\0'), CF_EINVAL,
           "option -tok_file: give either -tok_file or -tok_encoder with -tok_vocab, not both");
  if (f[0] != '\0') return cf_bpe_load_hf(bpe, f);
  CF_CHECK(e[0] != '\0' && v[0] != '\0', CF_EINVAL,
           "option %s: GPT-2's tokenizer needs both files, encoder.json and vocab.bpe",
           e[0] == '\0' ? "-tok_encoder" : "-tok_vocab");
  return cf_bpe_load_gpt2(bpe, e, v);
}

/* Tokenized texts: every rank gets the same. */
struct toks {
  int64_t n;       /* texts */
  int64_t *off;    /* (n + 1) text k's ids are ids[off[k] .. off[k+1]) */
  int32_t *ids;    /* (off[n]) */
  int32_t vocab;   /* the tokenizer's vocabulary size */
  int32_t eot;     /* its <|endoftext|> id, or -1 */
  int64_t longest; /* the most ids of one text */
};

static void toks_release(struct toks *t) {
  cf_free((void **)&t->off);
  cf_free((void **)&t->ids);
  memset(t, 0, sizeof *t);
}

/* Local (rank 0). Tokenize texts[0 .. n) into t (arrays cf_alloc'd). */
static cf_status tokenize_local(const struct cf_opts *o, const char *why, int64_t n,
                                const char *const *texts, struct toks *t) {
  struct cf_bpe *bpe = NULL;
  CF_TRY(load_tokenizer(o, why, &bpe));
  t->vocab = cf_bpe_vocab_size(bpe);
  t->eot = cf_bpe_token_id(bpe, "<|endoftext|>");
  size_t total = 0;
  cf_status st = cf_alloc((void **)&t->off, (size_t)(n + 1) * sizeof(int64_t), "prompt tokens");
  for (int64_t k = 0; k < n && st == CF_OK; k++) {
    size_t len = strlen(texts[k]), cnt = 0;
    st = cf_bpe_encode(bpe, texts[k], len, NULL, 0, &cnt);
    if (st != CF_OK) {
      cf_err_clear();
      st = cf_err(CF_EINVAL, "option %s: cannot tokenize the prompt '%s'", why, texts[k]);
    }
    total += cnt;
    t->off[k + 1] = (int64_t)total;
  }
  if (st == CF_OK) st = cf_alloc((void **)&t->ids, (total ? total : 1) * sizeof(int32_t), "ids");
  for (int64_t k = 0; k < n && st == CF_OK; k++) {
    size_t got = 0, cap = (size_t)(t->off[k + 1] - t->off[k]);
    st = cf_bpe_encode(bpe, texts[k], strlen(texts[k]), t->ids + t->off[k], cap, &got);
    if (cap > (size_t)t->longest) t->longest = (int64_t)cap;
  }
  t->n = n;
  cf_bpe_free(&bpe);
  return st;
}

/* Collective on comm. Rank 0 tokenizes the n texts (the same on every rank) and broadcasts. */
static cf_status tokenize(MPI_Comm comm, const struct cf_opts *o, const char *why, int64_t n,
                          const char *const *texts, struct toks *t) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  memset(t, 0, sizeof *t);
  cf_status st = rank == 0 ? tokenize_local(o, why, n, texts, t) : CF_OK;
  st = cf_agree(comm, st);
  if (st != CF_OK) {
    toks_release(t);
    return st;
  }
  int64_t head[4] = {t->vocab, t->eot, t->longest, rank == 0 ? t->off[n] : 0};
  CF_MPI(MPI_Bcast(head, 4, MPI_INT64_T, 0, comm));
  if (rank != 0) {
    t->n = n;
    t->vocab = (int32_t)head[0];
    t->eot = (int32_t)head[1];
    t->longest = head[2];
    st = cf_alloc((void **)&t->off, (size_t)(n + 1) * sizeof(int64_t), "prompt tokens");
    if (st == CF_OK)
      st = cf_alloc((void **)&t->ids, (size_t)(head[3] ? head[3] : 1) * sizeof(int32_t), "ids");
  }
  st = cf_agree(comm, st);
  if (st == CF_OK) CF_MPI(cf_mpi_bcast(t->off, (size_t)(n + 1), MPI_INT64_T, 0, comm));
  if (st == CF_OK && head[3] > 0)
    CF_MPI(cf_mpi_bcast(t->ids, (size_t)head[3], MPI_INT32_T, 0, comm));
  if (st != CF_OK) toks_release(t);
  return st;
}

/* ---- training ---- */

static const char **g_sort_text; /* rows' prompts, for the qsort comparison */

static int by_prompt(const void *a, const void *b) {
  const int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
  int c = strcmp(g_sort_text[i], g_sort_text[j]);
  return c != 0 ? c : (i > j) - (i < j);
}

void cf_app_prompt_release(struct cf_prompt_data *pd) {
  if (pd == NULL) return;
  cf_free((void **)&pd->ids);
  cf_free((void **)&pd->start);
  if (pd->text != NULL) cf_free((void **)&pd->text[0]); /* one pool */
  cf_free((void **)&pd->text);
  memset(pd, 0, sizeof *pd);
}

/* Local. Resolve an "auto"-able integer option: *v = dflt for auto, else its value in
 * [lo, hi]; the resolved value is stored back in o. */
static cf_status resolve(struct cf_opts *o, const char *name, int64_t dflt, int64_t lo, int64_t hi,
                         int64_t *v) {
  if (strcmp(cf_opt_str(o, name), "auto") == 0)
    *v = dflt;
  else
    CF_TRY(cf_opt_int(o, name, lo, hi, v));
  char buf[32];
  snprintf(buf, sizeof buf, "%lld", (long long)*v);
  return cf_opt_set(o, name, buf);
}

/* What cf_app_prompt_train holds while it works (released on every path). */
struct train_work {
  struct cf_obs_column col[CF_CONDS_MAX];
  int ncol;
  float *x;          /* (n, D) the file's points */
  int64_t *rows;     /* (nkeep) the rows kept, then sorted by prompt */
  char *pool;        /* rendered prompts */
  const char **text; /* (n) each row's prompt (NULL for rows left out) */
  int64_t *firsts;   /* (groups) the first sorted row of each group */
  struct toks tk;
};

static void work_release(struct train_work *w) {
  for (int k = 0; k < w->ncol; k++)
    cf_obs_column_release(&w->col[k]);
  cf_free((void **)&w->x);
  cf_free((void **)&w->rows);
  cf_free((void **)&w->pool);
  cf_free((void **)&w->text);
  cf_free((void **)&w->firsts);
  toks_release(&w->tk);
}

static cf_status prompt_train(MPI_Comm comm, struct cf_opts *o, int quiet, struct cf_dist *tgt,
                              float **pts, struct cf_prompt_data *pd, struct train_work *w) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  const char *tmpl = cf_opt_str(o, "data_prompt"), *file = cf_opt_str(o, "data_train");
  CF_CHECK(strcmp(cf_opt_str(o, "model"), "calmflow") == 0, CF_EINVAL,
           "option -data_prompt: text prompts condition -model calmflow (the CFM baseline takes "
           "-cfm_cond)");
  CF_CHECK(file[0] != '\0', CF_EINVAL,
           "option -data_prompt: the prompts come from the /obs columns of a -data_train file");
  CF_CHECK(cf_opt_str(o, "cfm_cond")[0] == '\0', CF_EINVAL,
           "option -cfm_cond: conditions are an option of the CFM baseline (-model cfm)");
  char names_pool[CF_CONDS_MAX * 256];
  const char *names[CF_CONDS_MAX];
  int ncol = 0;
  CF_TRY(cf_prompt_template(tmpl, names_pool, sizeof names_pool, names, &ncol));
  int64_t D, n = 0, dd = 0;
  CF_TRY(cf_opt_int(o, "data_dim", 1, (int64_t)1 << 40, &D));
  CF_TRY(cf_h5_read_points(comm, file, "/x", D, &w->x, &n, &dd));
  int64_t nkeep = n;
  const char *excl = cf_opt_str(o, "data_exclude");
  if (excl[0] != '\0') {
    CF_TRY(cf_data_exclude(comm, file, excl, "-data_exclude", n, &w->rows, &nkeep));
  } else {
    CF_TRY(cf_alloc((void **)&w->rows, (size_t)n * sizeof(int64_t), "prompt rows"));
    for (int64_t i = 0; i < n; i++)
      w->rows[i] = i;
  }
  for (int k = 0; k < ncol; k++) {
    CF_TRY(cf_obs_column_read(comm, file, names[k], "-data_prompt", n, &w->col[k]));
    w->ncol = k + 1;
  }
  /* every kept row's prompt, in one pool */
  CF_TRY(cf_alloc((void **)&w->text, (size_t)n * sizeof(char *), "prompts"));
  char buf[CF_PROMPT_MAX];
  const char *vals[CF_CONDS_MAX];
  size_t total = 0;
  for (int pass = 0; pass < 2; pass++) {
    if (pass == 1) CF_TRY(cf_alloc((void **)&w->pool, total, "prompts"));
    size_t at = 0;
    for (int64_t r = 0; r < nkeep; r++) {
      const int64_t i = w->rows[r];
      for (int k = 0; k < ncol; k++)
        vals[k] = w->col[k].values[i];
      CF_TRY(cf_prompt_render(tmpl, names, vals, ncol, buf, sizeof buf));
      size_t len = strlen(buf) + 1;
      if (pass == 1) {
        memcpy(w->pool + at, buf, len);
        w->text[i] = w->pool + at;
      }
      at += len;
    }
    total = at ? at : 1;
  }
  /* rows sorted by prompt (bytewise; ties by row), groups of equal prompts */
  g_sort_text = w->text;
  qsort(w->rows, (size_t)nkeep, sizeof(int64_t), by_prompt);
  g_sort_text = NULL;
  int64_t G = 0;
  CF_TRY(cf_alloc((void **)&w->firsts, (size_t)(nkeep + 1) * sizeof(int64_t), "prompt groups"));
  for (int64_t r = 0; r < nkeep; r++)
    if (r == 0 || strcmp(w->text[w->rows[r]], w->text[w->rows[r - 1]]) != 0) w->firsts[G++] = r;
  w->firsts[G] = nkeep;
  const char **gtext = NULL;
  CF_TRY(cf_alloc((void **)&gtext, (size_t)G * sizeof(char *), "prompt groups"));
  for (int64_t g = 0; g < G; g++)
    gtext[g] = w->text[w->rows[w->firsts[g]]];
  cf_status st = tokenize(comm, o, "-data_prompt", G, gtext, &w->tk);
  cf_free((void **)&gtext);
  CF_TRY(st);
  /* the model's prompt length, vocabulary and pad, stored with the run */
  const struct toks *tk = &w->tk;
  int64_t L, V, pad;
  CF_TRY(resolve(o, "net_prompt_len", tk->longest, 1, 65536, &L));
  for (int64_t g = 0; g < G; g++)
    CF_CHECK(tk->off[g + 1] - tk->off[g] <= L, CF_EINVAL,
             "option -net_prompt_len: the prompt '%s' has %lld tokens, more than %lld",
             w->text[w->rows[w->firsts[g]]], (long long)(tk->off[g + 1] - tk->off[g]),
             (long long)L);
  CF_CHECK(L >= 1, CF_EINVAL, "option -data_prompt: every prompt of '%s' is empty", file);
  CF_TRY(resolve(o, "net_prompt_vocab", tk->vocab, tk->vocab, 1 << 24, &V));
  CF_CHECK(strcmp(cf_opt_str(o, "net_prompt_pad"), "auto") != 0 || tk->eot >= 0, CF_EINVAL,
           "option -net_prompt_pad: the tokenizer has no <|endoftext|> token to pad prompts "
           "with; give the pad id");
  CF_TRY(resolve(o, "net_prompt_pad", tk->eot, 0, V - 1, &pad));
  /* the result: points sorted by group, each group's left-padded ids and text */
  CF_TRY(cf_alloc((void **)pts, (size_t)(nkeep * D) * sizeof(float), "training points"));
  for (int64_t r = 0; r < nkeep; r++)
    memcpy(*pts + r * D, w->x + w->rows[r] * D, (size_t)D * sizeof(float));
  cf_dist_points(tgt, *pts, nkeep, D);
  pd->L = L;
  pd->n_groups = G;
  CF_TRY(cf_alloc((void **)&pd->ids, (size_t)(G * L) * sizeof(int32_t), "prompt ids"));
  CF_TRY(cf_alloc((void **)&pd->start, (size_t)(G + 1) * sizeof(int64_t), "prompt groups"));
  CF_TRY(cf_alloc((void **)&pd->text, (size_t)G * sizeof(char *), "prompt groups"));
  size_t tl = 0;
  for (int64_t g = 0; g < G; g++)
    tl += strlen(w->text[w->rows[w->firsts[g]]]) + 1;
  CF_TRY(cf_alloc((void **)&pd->text[0], tl, "prompt groups"));
  char *tp = pd->text[0];
  for (int64_t g = 0; g < G; g++) {
    const int64_t len = tk->off[g + 1] - tk->off[g];
    int32_t *dst = pd->ids + g * L;
    for (int64_t i = 0; i < L - len; i++)
      dst[i] = (int32_t)pad;
    memcpy(dst + (L - len), tk->ids + tk->off[g], (size_t)len * sizeof(int32_t));
    pd->start[g] = w->firsts[g];
    const char *t = w->text[w->rows[w->firsts[g]]];
    pd->text[g] = tp;
    memcpy(tp, t, strlen(t) + 1);
    tp += strlen(t) + 1;
  }
  pd->start[G] = nkeep;
  if (rank == 0 && !quiet) {
    printf("text prompts: %lld distinct over %lld rows of %s, L = %lld tokens (left-padded with "
           "id %lld), vocabulary %lld\n",
           (long long)G, (long long)nkeep, file, (long long)L, (long long)pad, (long long)V);
    for (int64_t g = 0; g < G && g < 20; g++)
      printf("  '%s': %lld rows, %lld tokens\n", pd->text[g],
             (long long)(pd->start[g + 1] - pd->start[g]),
             (long long)(tk->off[g + 1] - tk->off[g]));
    if (G > 20) printf("  ... and %lld more\n", (long long)(G - 20));
    fflush(stdout);
  }
  return CF_OK;
}

cf_status cf_app_prompt_train(MPI_Comm comm, struct cf_opts *o, int quiet, struct cf_dist *tgt,
                              float **pts, struct cf_prompt_data *pd) {
  memset(pd, 0, sizeof *pd);
  *pts = NULL;
  if (cf_opt_str(o, "data_prompt")[0] == '\0') {
    CF_CHECK(strcmp(cf_opt_str(o, "net_prompt_len"), "auto") == 0, CF_EINVAL,
             "option -net_prompt_len: only with -data_prompt");
    return CF_OK;
  }
  struct train_work w;
  memset(&w, 0, sizeof w);
  cf_status st = prompt_train(comm, o, quiet, tgt, pts, pd, &w);
  work_release(&w);
  if (st != CF_OK) {
    cf_app_prompt_release(pd);
    cf_free((void **)pts);
  }
  return st;
}

/* ---- sampling ---- */

cf_status cf_app_prompt_sample(MPI_Comm comm, const struct cf_opts *o, const struct cf_opts *to,
                               const struct cf_model_cfg *mc, const char *ck, int32_t *ids,
                               char *text, size_t cap) {
  const char *sp = cf_opt_str(o, "sample_prompt"), *sc = cf_opt_str(o, "sample_cond");
  text[0] = '\0';
  if (mc->prompt_len == 0) {
    CF_CHECK(sp[0] == '\0', CF_EINVAL,
             "option -sample_prompt: checkpoint '%s' was trained without text prompts "
             "(-data_prompt)",
             ck);
    return CF_OK;
  }
  const char *tmpl = cf_opt_str(to, "data_prompt");
  CF_CHECK(sp[0] != '\0' || sc[0] != '\0', CF_EINVAL,
           "option -sample_prompt: checkpoint '%s' was trained with text prompts ('%s'); give "
           "-sample_prompt TEXT or -sample_cond COL=VALUE[,COL=VALUE...]",
           ck, tmpl);
  CF_CHECK(sp[0] == '\0' || sc[0] == '\0', CF_EINVAL,
           "option -sample_prompt: give -sample_prompt or -sample_cond, not both");
  if (sp[0] != '\0') {
    CF_CHECK(strlen(sp) < cap, CF_EINVAL, "option -sample_prompt: longer than %zu bytes", cap - 1);
    snprintf(text, cap, "%s", sp);
  } else { /* the template with COL=VALUE pairs */
    char pool[CF_CONDS_MAX * 256], spec[CF_OPT_LEN];
    const char *names[CF_CONDS_MAX], *vals[CF_CONDS_MAX] = {NULL};
    int n = 0;
    CF_TRY(cf_prompt_template(tmpl, pool, sizeof pool, names, &n));
    snprintf(spec, sizeof spec, "%s", sc);
    for (char *item = spec, *next; item != NULL; item = next) {
      next = strchr(item, ',');
      if (next != NULL) *next++ = '\0';
      char *eq = strchr(item, '=');
      CF_CHECK(eq != NULL && eq != item, CF_EINVAL,
               "option -sample_cond: '%s' is not COL=VALUE (the template is '%s')", item, tmpl);
      *eq = '\0';
      int k = -1;
      for (int i = 0; i < n && k < 0; i++)
        if (strcmp(names[i], item) == 0) k = i;
      CF_CHECK(k >= 0, CF_EINVAL, "option -sample_cond: the prompt template '%s' has no field {%s}",
               tmpl, item);
      CF_CHECK(vals[k] == NULL, CF_EINVAL, "option -sample_cond: column %s given twice", item);
      vals[k] = eq + 1;
    }
    for (int k = 0; k < n; k++)
      CF_CHECK(vals[k] != NULL, CF_EINVAL,
               "option -sample_cond: no value for {%s} of the prompt template '%s'", names[k],
               tmpl);
    CF_TRY(cf_prompt_render(tmpl, names, vals, n, text, cap));
  }
  /* the tokenizer named to sample, else the one the checkpoint was trained with */
  const int own = cf_opt_str(o, "tok_file")[0] || cf_opt_str(o, "tok_encoder")[0] ||
                  cf_opt_str(o, "tok_vocab")[0];
  struct toks tk;
  const char *tt = text;
  CF_TRY(tokenize(comm, own ? o : to, own ? "-tok_file" : "-sample_prompt", 1, &tt, &tk));
  const int64_t len = tk.off[1], L = mc->prompt_len;
  cf_status st = CF_OK;
  if (tk.vocab > mc->vocab)
    st = cf_err(CF_EINVAL,
                "option -tok_file: the tokenizer's vocabulary (%d) is larger than the model's "
                "prompt.wte (%lld rows)",
                (int)tk.vocab, (long long)mc->vocab);
  else if (len > L)
    st = cf_err(CF_EINVAL,
                "option -sample_prompt: the prompt '%s' has %lld tokens, more than the model's "
                "prompt length %lld (train with a larger -net_prompt_len)",
                text, (long long)len, (long long)L);
  else if (len == 0)
    st = cf_err(CF_EINVAL, "option -sample_prompt: the prompt is empty");
  if (st == CF_OK) {
    for (int64_t i = 0; i < L - len; i++)
      ids[i] = (int32_t)mc->prompt_pad;
    memcpy(ids + (L - len), tk.ids, (size_t)len * sizeof(int32_t));
  }
  toks_release(&tk);
  return st;
}
