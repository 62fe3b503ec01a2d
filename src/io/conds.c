/* conds.c: condition columns of calmflow data files (conds.h) — reading /obs/<column> string
 * datasets with their kind and categories on rank 0 and broadcasting them, the condition
 * columns of a model with each row's codes and their text form, one-hot vectors, the
 * -sample_cond selection and the -data_exclude row filter. */
#include "calmflow/conds.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/mpichunk.h"
#include "io/h5util.h"

/* ---- packed string lists: one cf_alloc block, the pointers followed by the bytes ---- */

/* Local. *out = copies of s[0..n-1] (lengths len; NULL: strlen). */
static cf_status pack(char *const *s, const size_t *len, int64_t n, char ***out) {
  size_t total = (size_t)(n > 0 ? n : 1) * sizeof(char *);
  for (int64_t i = 0; i < n; i++)
    total += (len ? len[i] : strlen(s[i])) + 1;
  char **p = NULL;
  CF_TRY(cf_alloc((void **)&p, total, "string list"));
  char *b = (char *)(p + (n > 0 ? n : 1));
  for (int64_t i = 0; i < n; i++) {
    size_t l = len ? len[i] : strlen(s[i]);
    p[i] = b;
    memcpy(b, s[i], l);
    b[l] = '\0';
    b += l + 1;
  }
  *out = p;
  return CF_OK;
}

/* Local. The bytes of a packed list of n strings (after the pointers), and their size. */
static const char *pack_bytes(char **p, int64_t n, size_t *bytes) {
  size_t b = 0;
  for (int64_t i = 0; i < n; i++)
    b += strlen(p[i]) + 1;
  *bytes = b;
  return n > 0 ? p[0] : "";
}

/* Local. A packed list of n strings from their concatenated NUL-terminated bytes. */
static cf_status unpack(const char *bytes, size_t nbytes, int64_t n, char ***out) {
  size_t total = (size_t)(n > 0 ? n : 1) * sizeof(char *) + nbytes + 1;
  char **p = NULL;
  CF_TRY(cf_alloc((void **)&p, total, "string list"));
  char *b = (char *)(p + (n > 0 ? n : 1));
  memcpy(b, bytes, nbytes);
  size_t at = 0;
  for (int64_t i = 0; i < n; i++) {
    p[i] = b + at;
    at += strlen(b + at) + 1;
  }
  *out = p;
  return CF_OK;
}

/* ---- rank 0: HDF5 reads ---- */

/* Rank 0. A 1-D string dataset (attr < 0) or attribute attr of it into a packed list. */
static cf_status read_strs(hid_t did, hid_t attr, const char *file, const char *where, char ***out,
                           int64_t *n) {
  hid_t ft = attr >= 0 ? H5Aget_type(attr) : H5Dget_type(did);
  hid_t sp = attr >= 0 ? H5Aget_space(attr) : H5Dget_space(did);
  int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  hsize_t dim = 0;
  if (nd == 1) H5Sget_simple_extent_dims(sp, &dim, NULL);
  if (sp >= 0) H5Sclose(sp);
  cf_status st = CF_OK;
  if (ft < 0 || nd != 1)
    st = cf_err(CF_ECORRUPT, "'%s' %s is not a 1-D array (%d dimensions)", file, where, nd);
  else if (H5Tget_class(ft) != H5T_STRING)
    st = cf_err(CF_ECORRUPT, "'%s' %s holds numbers, not strings (calmflow data writes strings)",
                file, where);
  int64_t m = (int64_t)dim;
  char **raw = NULL, *fixed = NULL;
  size_t *len = NULL;
  if (st == CF_OK) st = cf_alloc((void **)&raw, (size_t)(m ? m : 1) * sizeof(char *), where);
  if (st == CF_OK) st = cf_alloc((void **)&len, (size_t)(m ? m : 1) * sizeof(size_t), where);
  hid_t mt = H5Tcopy(H5T_C_S1);
  if (st == CF_OK && H5Tis_variable_str(ft) > 0) {
    int ok = H5Tset_size(mt, H5T_VARIABLE) >= 0 && H5Tset_cset(mt, H5Tget_cset(ft)) >= 0;
    if (ok && m > 0)
      ok = (attr >= 0 ? H5Aread(attr, mt, raw)
                      : H5Dread(did, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw)) >= 0;
    if (!ok) st = cf_err(CF_EIO, "cannot read '%s' %s", file, where);
    char **view = NULL; /* raw with "" for a NULL entry */
    if (st == CF_OK) st = cf_alloc((void **)&view, (size_t)(m ? m : 1) * sizeof(char *), where);
    for (int64_t i = 0; st == CF_OK && i < m; i++) {
      view[i] = raw[i] ? raw[i] : (char *)"";
      len[i] = strlen(view[i]);
    }
    if (st == CF_OK) st = pack(view, len, m, out);
    cf_free((void **)&view);
    if (ok)
      for (int64_t i = 0; i < m; i++)
        if (raw[i] != NULL) H5free_memory(raw[i]);
  } else if (st == CF_OK) {
    size_t w = H5Tget_size(ft), bytes = 0;
    H5T_str_t pad = H5Tget_strpad(ft);
    int ok = w > 0 && H5Tset_size(mt, w) >= 0 && H5Tset_strpad(mt, pad) >= 0 &&
             H5Tset_cset(mt, H5Tget_cset(ft)) >= 0;
    if (!ok) st = cf_err(CF_ECORRUPT, "'%s' %s has a bad string type", file, where);
    if (st == CF_OK) st = cf_mul_size(&bytes, (size_t)m, w, where);
    if (st == CF_OK) st = cf_alloc((void **)&fixed, bytes ? bytes : 1, where);
    if (st == CF_OK && m > 0 &&
        (attr >= 0 ? H5Aread(attr, mt, fixed)
                   : H5Dread(did, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, fixed)) < 0)
      st = cf_err(CF_EIO, "cannot read '%s' %s", file, where);
    for (int64_t i = 0; st == CF_OK && i < m; i++) {
      raw[i] = fixed + (size_t)i * w;
      size_t l = 0;
      while (l < w && raw[i][l] != '\0')
        l++;
      if (pad == H5T_STR_SPACEPAD)
        while (l > 0 && raw[i][l - 1] == ' ')
          l--;
      len[i] = l;
    }
    if (st == CF_OK) st = pack(raw, len, m, out);
  }
  if (mt >= 0) H5Tclose(mt);
  if (ft >= 0) H5Tclose(ft);
  cf_free((void **)&fixed);
  cf_free((void **)&len);
  cf_free((void **)&raw);
  if (st == CF_OK) *n = m;
  return st;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Rank 0. The distinct non-empty strings of s (n), sorted bytewise, as a packed list. */
static cf_status distinct(char **s, int64_t n, char ***out, int64_t *nout) {
  char **tmp = NULL;
  CF_TRY(cf_alloc((void **)&tmp, (size_t)(n ? n : 1) * sizeof(char *), "distinct values"));
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    if (s[i][0] != '\0') tmp[k++] = s[i];
  qsort(tmp, (size_t)k, sizeof(char *), cmp_str);
  int64_t u = 0;
  for (int64_t i = 0; i < k; i++)
    if (u == 0 || strcmp(tmp[u - 1], tmp[i]) != 0) tmp[u++] = tmp[i];
  cf_status st = pack(tmp, NULL, u, out);
  cf_free((void **)&tmp);
  if (st == CF_OK) *nout = u;
  return st;
}

/* Rank 0. "a, b, c" of the /obs members other than _index, into buf. */
static void list_columns(hid_t g, char *buf, size_t cap) {
  H5G_info_t info;
  buf[0] = '\0';
  if (H5Gget_info(g, &info) < 0) return;
  size_t len = 0;
  for (hsize_t i = 0; i < info.nlinks && len + 8 < cap; i++) {
    char nm[256];
    if (H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nm, sizeof nm, H5P_DEFAULT) < 0)
      continue;
    if (strcmp(nm, "_index") == 0) continue;
    int w = snprintf(buf + len, cap - len, "%s%s", len ? ", " : "", nm);
    if (w < 0 || (size_t)w >= cap - len) {
      snprintf(buf + (cap > 4 ? cap - 4 : 0), 4, "...");
      return;
    }
    len += (size_t)w;
  }
  if (len == 0) snprintf(buf, cap, "none");
}

/* Rank 0. Column `name` of the open file fid into c (values, kind, categories). */
static cf_status column_local(hid_t fid, const char *path, const char *name, const char *option,
                              int64_t n_rows, struct cf_obs_column *c) {
  CF_CHECK(name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, "_index") != 0, CF_EINVAL,
           "option %s: '%s' is not an obs column name", option, name);
  CF_CHECK(H5Lexists(fid, "obs", H5P_DEFAULT) > 0, CF_EINVAL,
           "option %s: '%s' has no /obs group (condition columns come from calmflow data "
           "-data_h5ad)",
           option, path);
  hid_t g = H5Gopen2(fid, "obs", H5P_DEFAULT);
  CF_CHECK(g >= 0, CF_ECORRUPT, "'%s': cannot open /obs", path);
  if (H5Lexists(g, name, H5P_DEFAULT) <= 0) {
    char cols[512];
    list_columns(g, cols, sizeof cols);
    H5Gclose(g);
    return cf_err(CF_EINVAL, "option %s: '%s' has no obs column '%s' (its columns: %s)", option,
                  path, name, cols);
  }
  H5Gclose(g);
  char where[600];
  snprintf(where, sizeof where, "/obs/%s", name);
  hid_t did = H5Dopen2(fid, where, H5P_DEFAULT);
  CF_CHECK(did >= 0, CF_ECORRUPT, "'%s': %s is not a dataset", path, where);
  cf_status st = read_strs(did, -1, path, where, &c->values, &c->n);
  if (st == CF_OK && c->n != n_rows)
    st = cf_err(CF_ECORRUPT, "'%s' %s has %lld rows, /x has %lld", path, where, (long long)c->n,
                (long long)n_rows);
  c->kind[0] = '\0';
  if (st == CF_OK && H5Aexists(did, "kind") > 0) {
    char *k = NULL;
    st = cf_io_attr_get_str(did, "kind", path, where, sizeof c->kind, &k);
    if (st == CF_OK) snprintf(c->kind, sizeof c->kind, "%s", k);
    cf_free((void **)&k);
  }
  c->categorical = c->kind[0] == '\0' || strcmp(c->kind, "categorical") == 0;
  if (st == CF_OK && c->categorical && c->kind[0] != '\0') {
    if (H5Aexists(did, "categories") > 0) {
      char w2[700];
      snprintf(w2, sizeof w2, "%s attribute categories", where);
      hid_t at = H5Aopen(did, "categories", H5P_DEFAULT);
      st = at >= 0 ? read_strs(did, at, path, w2, &c->cats, &c->ncat)
                   : cf_err(CF_ECORRUPT, "'%s': cannot open %s", path, w2);
      if (at >= 0) H5Aclose(at);
    } else {
      c->ncat = 0; /* anndata allows a categorical without categories: every value missing */
    }
    for (int64_t i = 0; st == CF_OK && i < c->n; i++) {
      if (c->values[i][0] == '\0') continue;
      int64_t k = 0;
      while (k < c->ncat && strcmp(c->values[i], c->cats[k]) != 0)
        k++;
      if (k == c->ncat)
        st = cf_err(CF_ECORRUPT, "'%s' %s row %lld holds '%s', not one of its categories", path,
                    where, (long long)i, c->values[i]);
    }
  } else if (st == CF_OK && c->categorical) {
    st = distinct(c->values, c->n, &c->cats, &c->ncat);
  }
  H5Dclose(did);
  return st;
}

cf_status cf_obs_column_read(MPI_Comm comm, const char *path, const char *name, const char *option,
                             int64_t n_rows, struct cf_obs_column *c) {
  memset(c, 0, sizeof *c);
  cf_io_h5_quiet();
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_TRY(cf_io_check_input(comm, path));
  cf_status st = CF_OK;
  if (rank == 0) {
    hid_t fid = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    char why[256];
    st = fid >= 0 ? column_local(fid, path, name, option, n_rows, c)
                  : cf_err(CF_EIO, "cannot open '%s': %s", path, cf_io_h5_reason(why, sizeof why));
    if (fid >= 0) H5Fclose(fid);
  }
  CF_TRY(cf_agree(comm, st));
  /* rank 0's result to everyone: counts, kind, then the values' and categories' bytes */
  size_t vb = 0, cb = 0;
  const char *vbytes = rank == 0 ? pack_bytes(c->values, c->n, &vb) : NULL;
  const char *cbytes = rank == 0 && c->cats ? pack_bytes(c->cats, c->ncat, &cb) : NULL;
  int64_t head[5] = {c->n, c->ncat, c->categorical, (int64_t)vb, (int64_t)cb};
  CF_MPI(MPI_Bcast(head, 5, MPI_INT64_T, 0, comm));
  CF_MPI(MPI_Bcast(c->kind, (int)sizeof c->kind, MPI_CHAR, 0, comm));
  char *buf = NULL;
  size_t nb = (size_t)(head[3] + head[4]);
  st = cf_alloc((void **)&buf, nb + 1, "obs column");
  if (st == CF_OK && rank == 0) {
    if (vb) memcpy(buf, vbytes, vb);
    if (cb) memcpy(buf + vb, cbytes, cb);
  }
  CF_TRY(cf_agree(comm, st));
  CF_MPI(cf_mpi_bcast(buf, nb, MPI_CHAR, 0, comm));
  if (rank != 0) {
    c->n = head[0];
    c->ncat = head[1];
    c->categorical = (int)head[2];
    st = unpack(buf, (size_t)head[3], c->n, &c->values);
    if (st == CF_OK && c->categorical)
      st = unpack(buf + head[3], (size_t)head[4], c->ncat, &c->cats);
  }
  cf_free((void **)&buf);
  st = cf_agree(comm, st);
  if (st != CF_OK) cf_obs_column_release(c);
  return st;
}

void cf_obs_column_release(struct cf_obs_column *c) {
  if (c == NULL) return;
  cf_free((void **)&c->values);
  cf_free((void **)&c->cats);
  memset(c, 0, sizeof *c);
}

/* ---- the condition columns ---- */

/* Local. Split s at `sep` into at most max trimmed pieces (copied into store, cap bytes);
 * *n of them. Returns 0 when there are more than max or the store is too small. */
static int split(const char *s, char sep, char *store, size_t cap, char **piece, int max, int *n) {
  size_t len = strlen(s);
  if (len + 1 > cap) return 0;
  memcpy(store, s, len + 1);
  *n = 0;
  char *p = store;
  for (;;) {
    char *e = strchr(p, sep);
    if (e) *e = '\0';
    while (*p == ' ')
      p++;
    size_t l = strlen(p);
    while (l > 0 && p[l - 1] == ' ')
      p[--l] = '\0';
    if (*n >= max) return 0;
    piece[(*n)++] = p;
    if (!e) break;
    p = e + 1;
  }
  return 1;
}

/* Local. "a, b, c" of the strings s (n) into buf (cap bytes), cut short with "..." */
static void join(char *const *s, int64_t n, char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = '\0';
  for (int64_t i = 0; i < n; i++) {
    int w = snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", s[i]);
    if (w < 0 || (size_t)w >= cap - len) {
      if (cap > 4) snprintf(buf + cap - 4, 4, "...");
      return;
    }
    len += (size_t)w;
  }
}

static int bad_text_char(const char *s) {
  return strchr(s, '\t') != NULL || strchr(s, '\n') != NULL;
}

cf_status cf_conds_from_text(const char *text, const char *what, struct cf_conds *c) {
  memset(c, 0, sizeof *c);
  size_t len = strlen(text);
  CF_CHECK(len > 0 && len < CF_CONDS_TEXT_MAX && text[len - 1] == '\n', CF_ECORRUPT,
           "%s: not a list of condition columns (%zu bytes)", what, len);
  /* count the strings to size the pointer table */
  int64_t nstr = 0;
  for (size_t i = 0; i < len; i++)
    nstr += text[i] == '\t' || text[i] == '\n';
  CF_TRY(cf_alloc((void **)&c->text, len + 1, "condition columns"));
  memcpy(c->text, text, len + 1);
  size_t bytes = len + 1 + (size_t)nstr * sizeof(char *);
  cf_status st = cf_alloc((void **)&c->pool_, bytes, "condition columns");
  if (st != CF_OK) {
    cf_conds_release(c);
    return st;
  }
  char **ptr = (char **)c->pool_, *s = c->pool_ + (size_t)nstr * sizeof(char *);
  memcpy(s, text, len + 1);
  int64_t used = 0;
  char *line = s;
  while (st == CF_OK && *line != '\0') {
    char *nl = strchr(line, '\n');
    *nl = '\0';
    if (c->ncol >= CF_CONDS_MAX) {
      st = cf_err(CF_ECORRUPT, "%s: more than %d condition columns", what, CF_CONDS_MAX);
      break;
    }
    int k = c->ncol++;
    char *tab = strchr(line, '\t');
    c->names[k] = line;
    c->cats[k] = ptr + used;
    c->ncat[k] = 0;
    while (tab != NULL) {
      *tab = '\0';
      char *cat = tab + 1;
      tab = strchr(cat, '\t');
      ptr[used++] = cat;
      c->ncat[k]++;
    }
    c->off[k] = c->C;
    c->C += c->ncat[k];
    if (line[0] == '\0' || c->ncat[k] < 1)
      st = cf_err(CF_ECORRUPT, "%s: condition column %d ('%s') %s", what, k + 1, line,
                  line[0] == '\0' ? "has no name" : "has no categories");
    for (int j = 0; st == CF_OK && j < k; j++)
      if (strcmp(c->names[j], line) == 0)
        st = cf_err(CF_ECORRUPT, "%s: condition column '%s' appears twice", what, line);
    line = nl + 1;
  }
  if (st != CF_OK) cf_conds_release(c);
  return st;
}

void cf_conds_release(struct cf_conds *c) {
  if (c == NULL) return;
  cf_free((void **)&c->codes);
  cf_free((void **)&c->text);
  cf_free((void **)&c->pool_);
  memset(c, 0, sizeof *c);
}

/* Local. The text form of the columns cols (n) into a cf_alloc'd string. */
static cf_status make_text(const struct cf_obs_column *cols, char *const *names, int n,
                           const char *option, char **out) {
  size_t len = 1;
  for (int k = 0; k < n; k++) {
    CF_CHECK(!bad_text_char(names[k]), CF_EINVAL,
             "option %s: column name '%s' holds a tab or newline", option, names[k]);
    len += strlen(names[k]) + 1;
    for (int64_t j = 0; j < cols[k].ncat; j++) {
      CF_CHECK(!bad_text_char(cols[k].cats[j]), CF_EINVAL,
               "option %s: a category of column '%s' holds a tab or newline", option, names[k]);
      len += strlen(cols[k].cats[j]) + 1;
    }
  }
  CF_CHECK(len <= CF_CONDS_TEXT_MAX, CF_EINVAL,
           "option %s: the columns' categories take %zu bytes; at most %d are stored with a "
           "model",
           option, len, CF_CONDS_TEXT_MAX);
  CF_TRY(cf_alloc((void **)out, len, "condition columns"));
  char *p = *out;
  for (int k = 0; k < n; k++) {
    p += sprintf(p, "%s", names[k]);
    for (int64_t j = 0; j < cols[k].ncat; j++)
      p += sprintf(p, "\t%s", cols[k].cats[j]);
    *p++ = '\n';
  }
  *p = '\0';
  return CF_OK;
}

/* Collective body of cf_conds_read; cols (CF_CONDS_MAX) are released by the caller. */
static cf_status conds_read_body(MPI_Comm comm, const char *path, const char *spec,
                                 const char *option, int64_t n_rows, const int64_t *rows,
                                 int64_t nrows, struct cf_obs_column *cols, struct cf_conds *c) {
  char store[4096], *names[CF_CONDS_MAX];
  int n = 0;
  CF_CHECK(split(spec, ',', store, sizeof store, names, CF_CONDS_MAX, &n), CF_EINVAL,
           "option %s: at most %d columns, got '%s'", option, CF_CONDS_MAX, spec);
  for (int k = 0; k < n; k++) {
    CF_CHECK(names[k][0] != '\0', CF_EINVAL,
             "option %s: '%s' has an empty column name (expected COL[,COL...])", option, spec);
    for (int j = 0; j < k; j++)
      CF_CHECK(strcmp(names[j], names[k]) != 0, CF_EINVAL, "option %s: column '%s' named twice",
               option, names[k]);
  }
  for (int k = 0; k < n; k++) {
    CF_TRY(cf_obs_column_read(comm, path, names[k], option, n_rows, &cols[k]));
    CF_CHECK(cols[k].categorical, CF_EINVAL,
             "option %s: column '%s' of '%s' is %s, not categorical (a condition is one of a "
             "column's categories)",
             option, names[k], path, cols[k].kind);
    CF_CHECK(cols[k].ncat >= 1, CF_EINVAL, "option %s: column '%s' of '%s' has no categories",
             option, names[k], path);
  }
  double groups = 1;
  for (int k = 0; k < n; k++)
    groups *= (double)cols[k].ncat;
  CF_CHECK(groups < 4e18, CF_EINVAL, "option %s: the columns have too many combinations (%g)",
           option, groups);
  char *text = NULL;
  CF_TRY(make_text(cols, names, n, option, &text));
  cf_status st = cf_conds_from_text(text, option, c);
  cf_free((void **)&text);
  CF_TRY(st);
  int64_t m = rows ? nrows : n_rows;
  CF_TRY(cf_alloc((void **)&c->codes, (size_t)(m > 0 ? m : 1) * (size_t)n * sizeof(int32_t),
                  "condition codes"));
  c->n = m;
  for (int k = 0; k < n; k++) {
    /* codes of every row of the file, then those of the kept rows */
    for (int64_t i = 0; i < m; i++) {
      int64_t r = rows ? rows[i] : i;
      CF_CHECK(r >= 0 && r < n_rows, CF_EINVAL, "option %s: row %lld outside the file", option,
               (long long)r);
      const char *v = cols[k].values[r];
      CF_CHECK(v[0] != '\0', CF_EINVAL,
               "option %s: row %lld of '%s' has no value in column '%s' (leave such rows out "
               "with -data_exclude %s=)",
               option, (long long)r, path, names[k], names[k]);
      int64_t j = 0;
      while (j < cols[k].ncat && strcmp(v, cols[k].cats[j]) != 0)
        j++;
      c->codes[i * n + k] = (int32_t)j; /* found: column_local checked every value */
    }
  }
  return CF_OK;
}

cf_status cf_conds_read(MPI_Comm comm, const char *path, const char *spec, const char *option,
                        int64_t n_rows, const int64_t *rows, int64_t nrows, struct cf_conds *c) {
  memset(c, 0, sizeof *c);
  struct cf_obs_column cols[CF_CONDS_MAX];
  memset(cols, 0, sizeof cols);
  cf_status st = conds_read_body(comm, path, spec, option, n_rows, rows, nrows, cols, c);
  for (int k = 0; k < CF_CONDS_MAX; k++)
    cf_obs_column_release(&cols[k]);
  if (st != CF_OK) cf_conds_release(c);
  return st;
}

cf_status cf_conds_select(const struct cf_conds *c, const char *spec, const char *option,
                          int32_t *codes) {
  char store[4096], *item[CF_CONDS_MAX + 1], have[512];
  int n = 0;
  const char *const *nm = c->names;
  join((char *const *)nm, c->ncol, have, sizeof have);
  CF_CHECK(spec[0] != '\0', CF_EINVAL,
           "option %s: the model is conditioned on %s; give COL=VALUE for each", option, have);
  CF_CHECK(split(spec, ',', store, sizeof store, item, CF_CONDS_MAX + 1, &n) && n <= c->ncol,
           CF_EINVAL, "option %s: '%s' names more columns than the model's %s", option, spec, have);
  for (int k = 0; k < c->ncol; k++)
    codes[k] = -1;
  for (int i = 0; i < n; i++) {
    char *eq = strchr(item[i], '=');
    CF_CHECK(eq != NULL, CF_EINVAL, "option %s: '%s' is not COL=VALUE", option, item[i]);
    *eq = '\0';
    char *col = item[i], *val = eq + 1;
    size_t l = strlen(col);
    while (l > 0 && col[l - 1] == ' ')
      col[--l] = '\0';
    while (*val == ' ')
      val++;
    int k = 0;
    while (k < c->ncol && strcmp(c->names[k], col) != 0)
      k++;
    CF_CHECK(k < c->ncol, CF_EINVAL, "option %s: the model is conditioned on %s, not on '%s'",
             option, have, col);
    CF_CHECK(codes[k] < 0, CF_EINVAL, "option %s: column '%s' given twice", option, col);
    int64_t j = 0;
    while (j < c->ncat[k] && strcmp(c->cats[k][j], val) != 0)
      j++;
    if (j == c->ncat[k]) {
      char cats[512];
      join(c->cats[k], c->ncat[k], cats, sizeof cats);
      return cf_err(CF_EINVAL, "option %s: '%s' is not a category of column '%s' (categories: %s)",
                    option, val, col, cats);
    }
    codes[k] = (int32_t)j;
  }
  for (int k = 0; k < c->ncol; k++)
    CF_CHECK(codes[k] >= 0, CF_EINVAL,
             "option %s: no value for column '%s' (the model is conditioned on %s)", option,
             c->names[k], have);
  return CF_OK;
}

void cf_conds_onehot(const struct cf_conds *c, const int32_t *codes, float *out) {
  memset(out, 0, (size_t)c->C * sizeof(float));
  for (int k = 0; k < c->ncol; k++)
    out[c->off[k] + codes[k]] = 1.0f;
}

int64_t cf_conds_group(const struct cf_conds *c, const int32_t *codes) {
  int64_t g = 0;
  for (int k = 0; k < c->ncol; k++)
    g = g * c->ncat[k] + codes[k];
  return g;
}

void cf_conds_describe(const struct cf_conds *c, const int32_t *codes, char *buf, size_t cap) {
  size_t len = 0;
  buf[0] = '\0';
  for (int k = 0; k < c->ncol && len < cap; k++) {
    int w =
        snprintf(buf + len, cap - len, "%s%s=%s", k ? "," : "", c->names[k], c->cats[k][codes[k]]);
    if (w < 0) break;
    len += (size_t)w;
  }
}

/* ---- the row filter ---- */

cf_status cf_data_exclude(MPI_Comm comm, const char *path, const char *spec, const char *option,
                          int64_t n_rows, int64_t **rows, int64_t *nkeep) {
  *rows = NULL;
  *nkeep = 0;
  char store[4096], *clause[CF_CONDS_MAX];
  int nc = 0;
  CF_CHECK(split(spec, ';', store, sizeof store, clause, CF_CONDS_MAX, &nc), CF_EINVAL,
           "option %s: at most %d clauses COL=VALUE[,VALUE...] separated by ';', got '%s'", option,
           CF_CONDS_MAX, spec);
  uint8_t *drop = NULL;
  CF_TRY(cf_alloc((void **)&drop, (size_t)(n_rows > 0 ? n_rows : 1), "excluded rows"));
  cf_status st = CF_OK;
  for (int q = 0; q < nc && st == CF_OK; q++) {
    char *eq = strchr(clause[q], '=');
    if (eq == NULL || eq == clause[q]) {
      st = cf_err(CF_EINVAL, "option %s: '%s' is not COL=VALUE[,VALUE...]", option, clause[q]);
      break;
    }
    *eq = '\0';
    char *col = clause[q];
    size_t l = strlen(col);
    while (l > 0 && col[l - 1] == ' ')
      col[--l] = '\0';
    char vstore[4096], *val[256];
    int nv = 0;
    if (!split(eq + 1, ',', vstore, sizeof vstore, val, 256, &nv)) {
      st = cf_err(CF_EINVAL, "option %s: at most 256 values per column", option);
      break;
    }
    struct cf_obs_column oc;
    st = cf_obs_column_read(comm, path, col, option, n_rows, &oc);
    for (int v = 0; v < nv && st == CF_OK; v++) {
      int64_t hits = 0;
      for (int64_t i = 0; i < n_rows; i++)
        if (strcmp(oc.values[i], val[v]) == 0) {
          drop[i] = 1;
          hits++;
        }
      if (hits == 0) {
        char have[512] = "";
        if (oc.cats) join(oc.cats, oc.ncat, have, sizeof have);
        st = cf_err(CF_EINVAL, "option %s: no row of '%s' has %s = '%s'%s%s%s", option, path, col,
                    val[v], have[0] ? " (values: " : "", have, have[0] ? ")" : "");
      }
    }
    cf_obs_column_release(&oc);
  }
  int64_t k = 0;
  for (int64_t i = 0; i < n_rows && st == CF_OK; i++)
    k += !drop[i];
  if (st == CF_OK && k == 0)
    st = cf_err(CF_EINVAL, "option %s: '%s' leaves no row of '%s'", option, spec, path);
  if (st == CF_OK) st = cf_alloc((void **)rows, (size_t)k * sizeof(int64_t), "kept rows");
  if (st == CF_OK) {
    int64_t j = 0;
    for (int64_t i = 0; i < n_rows; i++)
      if (!drop[i]) (*rows)[j++] = i;
    *nkeep = k;
  }
  cf_free((void **)&drop);
  return st;
}
