/* safetensors.c: the safetensors weight format (safetensors.h) parsed by hand — the 8-byte
 * header length, the JSON header through cJSON, every entry checked against the file — and
 * blocks of F32 / F16 / BF16 tensors read with pread and widened to float32. */
#include "calmflow/safetensors.h"

#include <cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "calmflow/mem.h"

#define ST_MAX_SHARDS 4096
#define ST_INDEX_MAX ((size_t)64 << 20) /* bound on model.safetensors.index.json */

/* ---- dtypes ---- */

static const struct {
  const char *name;
  int size;
} g_dtypes[] = {{"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
                {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
                {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};

static int dtype_size(const char *name) {
  for (size_t i = 0; i < sizeof g_dtypes / sizeof g_dtypes[0]; i++)
    if (strcmp(g_dtypes[i].name, name) == 0) return g_dtypes[i].size;
  return 0;
}

enum { KIND_F32 = 0, KIND_F16 = 1, KIND_BF16 = 2, KIND_OTHER = 3 };

static int dtype_kind(const char *name) {
  if (strcmp(name, "F32") == 0) return KIND_F32;
  if (strcmp(name, "F16") == 0) return KIND_F16;
  if (strcmp(name, "BF16") == 0) return KIND_BF16;
  return KIND_OTHER;
}

/* IEEE binary16 to float, exactly (subnormals, infinities and NaNs included). */
static float half_to_float(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  float v;
  if (e == 0)
    v = ldexpf((float)m, -24);
  else if (e == 31)
    v = m ? NAN : INFINITY;
  else
    v = ldexpf((float)(m | 0x400), e - 25);
  return (h & 0x8000) ? -v : v;
}

static float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* ---- lifecycle ---- */

void cf_st_close(struct cf_st *s) {
  if (s == NULL) return;
  for (int i = 0; i < s->n_files; i++) {
    if (s->fds != NULL && s->fds[i] >= 0) close(s->fds[i]);
    if (s->paths != NULL) cf_free((void **)&s->paths[i]);
    if (s->pools != NULL) cf_free(&s->pools[i]);
  }
  cf_free((void **)&s->paths);
  cf_free((void **)&s->fds);
  cf_free((void **)&s->data_off);
  cf_free((void **)&s->pools);
  cf_free((void **)&s->t);
  memset(s, 0, sizeof *s);
}

/* Room for nf files (descriptors -1 until opened). */
static cf_status alloc_files(struct cf_st *s, int nf) {
  memset(s, 0, sizeof *s);
  CF_TRY(cf_alloc((void **)&s->paths, (size_t)nf * sizeof(char *), "safetensors file table"));
  CF_TRY(cf_alloc((void **)&s->fds, (size_t)nf * sizeof(int), "safetensors file table"));
  CF_TRY(cf_alloc((void **)&s->data_off, (size_t)nf * sizeof(uint64_t), "safetensors file table"));
  CF_TRY(cf_alloc((void **)&s->pools, (size_t)nf * sizeof(void *), "safetensors file table"));
  for (int i = 0; i < nf; i++)
    s->fds[i] = -1;
  s->n_files = nf;
  return CF_OK;
}

/* ---- reading bytes ---- */

/* Local. Exactly n bytes at offset off of file `path` into buf. */
static cf_status pread_full(int fd, const char *path, void *buf, size_t n, uint64_t off) {
  unsigned char *p = buf;
  while (n > 0) {
    size_t want = n < ((size_t)1 << 30) ? n : ((size_t)1 << 30);
    ssize_t got = pread(fd, p, want, (off_t)off);
    if (got < 0 && errno == EINTR) continue;
    CF_CHECK(got >= 0, CF_EIO, "safetensors '%s': read of %zu bytes at offset %llu failed: %s",
             path, want, (unsigned long long)off, strerror(errno));
    CF_CHECK(got > 0, CF_ECORRUPT,
             "safetensors '%s': the file ends at byte %llu, before the data its header describes "
             "(truncated?)",
             path, (unsigned long long)off);
    p += got;
    n -= (size_t)got;
    off += (uint64_t)got;
  }
  return CF_OK;
}

/* ---- the header ---- */

/* Local. A JSON number that is a whole number in [0, 2^53]. */
static int json_count(const cJSON *x, uint64_t *v) {
  if (!cJSON_IsNumber(x)) return 0;
  double d = x->valuedouble;
  if (!(d >= 0.0 && d <= 9007199254740992.0 && d == floor(d))) return 0;
  *v = (uint64_t)d;
  return 1;
}

static int cmp_name(const void *a, const void *b) {
  return strcmp(((const struct cf_st_tensor *)a)->name, ((const struct cf_st_tensor *)b)->name);
}

static int cmp_begin(const void *a, const void *b) {
  const struct cf_st_tensor *x = *(const struct cf_st_tensor *const *)a;
  const struct cf_st_tensor *y = *(const struct cf_st_tensor *const *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : (x->end > y->end);
}

/* Local. Copy str into the pool at *used (room checked by the caller's sizing). */
static const char *pool_put(char *pool, size_t *used, const char *str) {
  size_t n = strlen(str) + 1;
  char *d = pool + *used;
  memcpy(d, str, n);
  *used += n;
  return d;
}

/* Local. One header entry into *e (name and dtype still pointing into the JSON tree). */
static cf_status parse_entry(const char *path, const cJSON *x, uint64_t data_size,
                             struct cf_st_tensor *e) {
  const char *name = x->string;
  CF_CHECK(name != NULL && name[0] != '\0', CF_ECORRUPT,
           "safetensors '%s': a header entry has an empty name", path);
  CF_CHECK(cJSON_IsObject(x), CF_ECORRUPT,
           "safetensors '%s': header entry '%s' is not an object {dtype, shape, data_offsets}",
           path, name);
  const cJSON *dt = cJSON_GetObjectItemCaseSensitive(x, "dtype");
  const cJSON *sh = cJSON_GetObjectItemCaseSensitive(x, "shape");
  const cJSON *of = cJSON_GetObjectItemCaseSensitive(x, "data_offsets");
  CF_CHECK(cJSON_IsString(dt) && cJSON_IsArray(sh) && cJSON_IsArray(of), CF_ECORRUPT,
           "safetensors '%s': tensor '%s' lacks a string \"dtype\", an array \"shape\" or an "
           "array \"data_offsets\"",
           path, name);
  e->name = name;
  e->dtype = dt->valuestring;
  e->esize = dtype_size(dt->valuestring);
  CF_CHECK(e->esize > 0, CF_ECORRUPT, "safetensors '%s': tensor '%s' has unknown dtype '%.32s'",
           path, name, dt->valuestring);
  int nd = cJSON_GetArraySize(sh);
  CF_CHECK(nd <= CF_ST_MAX_DIMS, CF_ECORRUPT,
           "safetensors '%s': tensor '%s' has %d dimensions, at most %d are supported", path, name,
           nd, CF_ST_MAX_DIMS);
  e->ndim = nd;
  uint64_t numel = 1;
  for (int k = 0; k < nd; k++) {
    uint64_t d;
    CF_CHECK(json_count(cJSON_GetArrayItem(sh, k), &d), CF_ECORRUPT,
             "safetensors '%s': tensor '%s' has a shape entry that is not a non-negative integer",
             path, name);
    e->shape[k] = (int64_t)d;
    CF_CHECK(d == 0 || numel <= UINT64_MAX / 16 / d, CF_ECORRUPT,
             "safetensors '%s': tensor '%s' has an impossibly large shape", path, name);
    numel *= d;
  }
  uint64_t b, en;
  CF_CHECK(cJSON_GetArraySize(of) == 2 && json_count(cJSON_GetArrayItem(of, 0), &b) &&
               json_count(cJSON_GetArrayItem(of, 1), &en),
           CF_ECORRUPT,
           "safetensors '%s': tensor '%s' has data_offsets that are not two non-negative integers",
           path, name);
  CF_CHECK(b <= en && en <= data_size, CF_ECORRUPT,
           "safetensors '%s': tensor '%s' has data_offsets [%llu, %llu] outside the %llu bytes of "
           "data the file holds (truncated file?)",
           path, name, (unsigned long long)b, (unsigned long long)en,
           (unsigned long long)data_size);
  CF_CHECK(en - b == numel * (uint64_t)e->esize, CF_ECORRUPT,
           "safetensors '%s': tensor '%s' spans %llu bytes but its shape and dtype %s need %llu",
           path, name, (unsigned long long)(en - b), e->dtype,
           (unsigned long long)(numel * (uint64_t)e->esize));
  e->begin = b;
  e->end = en;
  return CF_OK;
}

/* Local. Parse the header of file index fi (path and fd set) and append its tensors to s. */
static cf_status parse_file(struct cf_st *s, int fi) {
  const char *path = s->paths[fi];
  const int fd = s->fds[fi];
  struct stat sb;
  CF_CHECK(fstat(fd, &sb) == 0, CF_EIO, "safetensors '%s': cannot stat: %s", path, strerror(errno));
  const uint64_t size = (uint64_t)sb.st_size;
  CF_CHECK(size >= 8, CF_ECORRUPT,
           "safetensors '%s': %llu bytes, too short for the 8-byte header length (not a "
           "safetensors file?)",
           path, (unsigned long long)size);
  unsigned char lb[8];
  CF_TRY(pread_full(fd, path, lb, 8, 0));
  uint64_t N = 0;
  for (int k = 7; k >= 0; k--)
    N = (N << 8) | lb[k];
  CF_CHECK(N <= size - 8, CF_ECORRUPT,
           "safetensors '%s': header length %llu runs past the end of the file (%llu bytes; "
           "truncated, or not a safetensors file)",
           path, (unsigned long long)N, (unsigned long long)size);
  CF_CHECK(N >= 2 && N <= CF_ST_MAX_HEADER, CF_ECORRUPT,
           "safetensors '%s': header length %llu, expected 2 .. %llu bytes", path,
           (unsigned long long)N, (unsigned long long)CF_ST_MAX_HEADER);
  char *text = NULL;
  CF_TRY(cf_alloc((void **)&text, (size_t)N + 1, "safetensors header"));
  cf_status st = pread_full(fd, path, text, (size_t)N, 8);
  cJSON *root = NULL;
  if (st == CF_OK) {
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, (size_t)N, &end, 0);
    if (root == NULL) {
      const char *at = cJSON_GetErrorPtr();
      long pos = at != NULL && at >= text && at <= text + N ? (long)(at - text) : -1;
      st = cf_err(CF_ECORRUPT, "safetensors '%s': the header is not valid JSON (near byte %ld)",
                  path, pos);
    } else {
      for (const char *c = end; c != NULL && c < text + N && st == CF_OK; c++)
        if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r')
          st = cf_err(CF_ECORRUPT,
                      "safetensors '%s': the header has bytes after its JSON object (at byte "
                      "%ld)",
                      path, (long)(c - text));
      if (st == CF_OK && !cJSON_IsObject(root))
        st = cf_err(CF_ECORRUPT, "safetensors '%s': the header is not a JSON object", path);
    }
  }
  const uint64_t data_size = size - 8 - N;
  int k = 0, nt = 0;
  const cJSON *x;
  if (st == CF_OK)
    cJSON_ArrayForEach(x, root) nt += strcmp(x->string ? x->string : "", "__metadata__") != 0;
  struct cf_st_tensor *grown = NULL, **order = NULL;
  if (st == CF_OK)
    st = cf_alloc((void **)&grown, (size_t)(s->n + nt + 1) * sizeof *grown, "safetensors tensors");
  if (st == CF_OK)
    st = cf_alloc((void **)&order, (size_t)(nt + 1) * sizeof *order, "safetensors tensors");
  if (st == CF_OK) st = cf_alloc(&s->pools[fi], (size_t)N + 1, "safetensors names");
  if (st == CF_OK) {
    if (s->n > 0) memcpy(grown, s->t, (size_t)s->n * sizeof *grown);
    struct cf_st_tensor *mine = grown + s->n;
    size_t used = 0;
    cJSON_ArrayForEach(x, root) {
      if (st != CF_OK) break;
      if (x->string != NULL && strcmp(x->string, "__metadata__") == 0) {
        if (!cJSON_IsObject(x))
          st = cf_err(CF_ECORRUPT, "safetensors '%s': \"__metadata__\" is not an object", path);
        continue;
      }
      struct cf_st_tensor *e = &mine[k];
      st = parse_entry(path, x, data_size, e);
      if (st != CF_OK) break;
      e->name = pool_put(s->pools[fi], &used, e->name);
      e->dtype = pool_put(s->pools[fi], &used, e->dtype);
      e->file = fi;
      order[k] = e;
      k++;
    }
    /* no two tensors may share bytes */
    if (st == CF_OK && k > 1) {
      qsort(order, (size_t)k, sizeof *order, cmp_begin);
      for (int i = 1; i < k && st == CF_OK; i++)
        if (order[i]->begin < order[i - 1]->end)
          st =
              cf_err(CF_ECORRUPT,
                     "safetensors '%s': tensors '%s' and '%s' overlap (data_offsets [%llu, %llu] "
                     "and [%llu, %llu])",
                     path, order[i - 1]->name, order[i]->name,
                     (unsigned long long)order[i - 1]->begin, (unsigned long long)order[i - 1]->end,
                     (unsigned long long)order[i]->begin, (unsigned long long)order[i]->end);
    }
  }
  if (st == CF_OK) {
    cf_free((void **)&s->t);
    s->t = grown;
    s->n += k;
    grown = NULL;
    s->data_off[fi] = 8 + N;
  }
  cf_free((void **)&grown);
  cf_free((void **)&order);
  cJSON_Delete(root);
  cf_free((void **)&text);
  return st;
}

/* Local. Open file index fi at path and parse it. */
static cf_status add_file(struct cf_st *s, int fi, const char *path) {
  size_t n = strlen(path) + 1;
  CF_TRY(cf_alloc((void **)&s->paths[fi], n, "safetensors path"));
  memcpy(s->paths[fi], path, n);
  s->fds[fi] = open(path, O_RDONLY | O_CLOEXEC);
  CF_CHECK(s->fds[fi] >= 0, CF_EIO, "safetensors '%s': cannot open: %s", path, strerror(errno));
  return parse_file(s, fi);
}

/* Local. Sort the tensors by name; a name twice is an error. */
static cf_status finish(struct cf_st *s) {
  if (s->n > 1) qsort(s->t, (size_t)s->n, sizeof *s->t, cmp_name);
  for (int i = 1; i < s->n; i++) {
    const struct cf_st_tensor *a = &s->t[i - 1], *b = &s->t[i];
    CF_CHECK(strcmp(a->name, b->name) != 0, CF_ECORRUPT,
             "safetensors: tensor '%s' appears twice (in '%s' and '%s')", a->name,
             s->paths[a->file], s->paths[b->file]);
  }
  return CF_OK;
}

cf_status cf_st_open(struct cf_st *s, const char *path) {
  cf_status st = alloc_files(s, 1);
  if (st == CF_OK) st = add_file(s, 0, path);
  if (st == CF_OK) st = finish(s);
  if (st != CF_OK) cf_st_close(s);
  return st;
}

/* Local. The whole (small) text file at path, NUL-terminated, into *out (cf_free). */
static cf_status slurp(const char *path, char **out, size_t *len) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  CF_CHECK(f != NULL, CF_EIO, "cannot open '%s': %s", path, strerror(errno));
  cf_status st = CF_OK;
  long n = -1;
  if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
  if (n < 0 || (size_t)n > ST_INDEX_MAX || fseek(f, 0, SEEK_SET) != 0)
    st = cf_err(CF_EIO, "'%s': cannot size it, or larger than %zu bytes", path, ST_INDEX_MAX);
  if (st == CF_OK) st = cf_alloc((void **)out, (size_t)n + 1, path);
  if (st == CF_OK && fread(*out, 1, (size_t)n, f) != (size_t)n)
    st = cf_err(CF_EIO, "'%s': short read", path);
  fclose(f);
  if (st != CF_OK) {
    cf_free((void **)out);
    return st;
  }
  (*out)[n] = '\0';
  *len = (size_t)n;
  return CF_OK;
}

/* Local. Sharded weights from the index file. */
static cf_status open_index(struct cf_st *s, const char *dir, const char *index) {
  char *text = NULL;
  size_t len = 0;
  CF_TRY(slurp(index, &text, &len));
  cJSON *root = cJSON_ParseWithLength(text, len);
  cf_free((void **)&text);
  CF_CHECK(root != NULL, CF_ECORRUPT, "'%s' is not valid JSON", index);
  cf_status st = CF_OK;
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map"), *x, *y;
  const char **shard = NULL; /* distinct shard names, in order of first mention */
  int ns = 0;
  if (!cJSON_IsObject(wm) || cJSON_GetArraySize(wm) == 0)
    st = cf_err(CF_ECORRUPT, "'%s' has no \"weight_map\" object of tensor -> file", index);
  if (st == CF_OK)
    st = cf_alloc((void **)&shard, (size_t)cJSON_GetArraySize(wm) * sizeof *shard, "shard list");
  if (st == CF_OK) cJSON_ArrayForEach(x, wm) {
      if (!cJSON_IsString(x) || x->valuestring[0] == '\0' || strchr(x->valuestring, '/') ||
          strcmp(x->valuestring, "..") == 0 || strcmp(x->valuestring, ".") == 0) {
        st = cf_err(CF_ECORRUPT, "'%s': weight_map entry '%s' is not a plain file name", index,
                    x->string);
        break;
      }
      int seen = 0;
      for (int i = 0; i < ns && !seen; i++)
        seen = strcmp(shard[i], x->valuestring) == 0;
      if (!seen) shard[ns++] = x->valuestring;
    }
  if (st == CF_OK && ns > ST_MAX_SHARDS)
    st = cf_err(CF_ECORRUPT, "'%s' names %d shard files, at most %d are supported", index, ns,
                ST_MAX_SHARDS);
  if (st == CF_OK) st = alloc_files(s, ns);
  for (int i = 0; i < ns && st == CF_OK; i++) {
    char p[4096];
    int n = snprintf(p, sizeof p, "%s/%s", dir, shard[i]);
    st = n > 0 && (size_t)n < sizeof p
             ? add_file(s, i, p)
             : cf_err(CF_EINVAL, "shard path '%s/%s' is too long", dir, shard[i]);
  }
  if (st == CF_OK) st = finish(s);
  /* every mapped tensor is in the shard the index names */
  if (st == CF_OK) cJSON_ArrayForEach(y, wm) {
      const struct cf_st_tensor *t = cf_st_find(s, y->string);
      const char *f = t != NULL ? strrchr(s->paths[t->file], '/') + 1 : NULL;
      if (t == NULL || strcmp(f, y->valuestring) != 0) {
        st = cf_err(CF_ECORRUPT, "'%s' maps tensor '%s' to '%s', but that file does not hold it",
                    index, y->string, y->valuestring);
        break;
      }
    }
  cf_free((void **)&shard);
  cJSON_Delete(root);
  if (st != CF_OK) cf_st_close(s);
  return st;
}

cf_status cf_st_open_dir(struct cf_st *s, const char *dir) {
  memset(s, 0, sizeof *s);
  char p[4096];
  struct stat sb;
  CF_CHECK(dir != NULL && dir[0] != '\0', CF_EINVAL, "safetensors: no model directory given");
  int n = snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
  CF_CHECK(n > 0 && (size_t)n < sizeof p, CF_EINVAL, "model directory '%s': path too long", dir);
  if (stat(p, &sb) == 0) return open_index(s, dir, p);
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  CF_CHECK(stat(p, &sb) == 0, CF_EIO,
           "model directory '%s' holds neither model.safetensors nor "
           "model.safetensors.index.json (calmflow reads safetensors weights only)",
           dir);
  return cf_st_open(s, p);
}

/* ---- lookups and reads ---- */

const struct cf_st_tensor *cf_st_find(const struct cf_st *s, const char *name) {
  if (s == NULL || name == NULL || s->n == 0) return NULL;
  struct cf_st_tensor key = {.name = name};
  return bsearch(&key, s->t, (size_t)s->n, sizeof *s->t, cmp_name);
}

const char *cf_st_path(const struct cf_st *s, const struct cf_st_tensor *t) {
  return s->paths[t->file];
}

int64_t cf_st_rows(const struct cf_st_tensor *t) {
  return t->ndim >= 1 ? t->shape[0] : 1;
}

int64_t cf_st_cols(const struct cf_st_tensor *t) {
  int64_t c = 1;
  for (int k = 1; k < t->ndim; k++)
    c *= t->shape[k];
  return c;
}

/* Local. n elements of kind `kind` (esize bytes each) at file offset off into out (n floats):
 * the raw bytes go to the back of out and are widened front to back (element i is read before
 * float i, which never reaches an element not yet read). */
static cf_status read_run(int fd, const char *path, int kind, int esize, uint64_t off, size_t n,
                          float *out) {
  unsigned char *dst = (unsigned char *)out, *src = dst + n * (sizeof(float) - (size_t)esize);
  CF_TRY(pread_full(fd, path, src, n * (size_t)esize, off));
  for (size_t i = 0; i < n; i++) {
    const unsigned char *b = src + i * (size_t)esize;
    float v;
    if (kind == KIND_F32)
      v = bits_to_float((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                        (uint32_t)b[3] << 24);
    else if (kind == KIND_F16)
      v = half_to_float((uint16_t)(b[0] | b[1] << 8));
    else
      v = bits_to_float((uint32_t)b[0] << 16 | (uint32_t)b[1] << 24);
    memcpy(dst + i * sizeof(float), &v, sizeof v);
  }
  return CF_OK;
}

cf_status cf_st_read(const struct cf_st *s, const struct cf_st_tensor *t, int64_t r0, int64_t nr,
                     int64_t c0, int64_t nc, float *out) {
  const char *path = s->paths[t->file];
  const int kind = dtype_kind(t->dtype);
  CF_CHECK(kind != KIND_OTHER, CF_EINVAL,
           "safetensors '%s': tensor '%s' has dtype %s; calmflow reads F32, F16 or BF16 weights",
           path, t->name, t->dtype);
  const int64_t rows = cf_st_rows(t), cols = cf_st_cols(t);
  CF_CHECK(r0 >= 0 && nr >= 0 && r0 <= rows - nr && c0 >= 0 && nc >= 0 && c0 <= cols - nc,
           CF_EINVAL,
           "safetensors '%s': block rows %lld+%lld, columns %lld+%lld lies outside tensor '%s' "
           "(%lld x %lld)",
           path, (long long)r0, (long long)nr, (long long)c0, (long long)nc, t->name,
           (long long)rows, (long long)cols);
  if (nr == 0 || nc == 0) return CF_OK;
  const uint64_t base = s->data_off[t->file] + t->begin, es = (uint64_t)t->esize;
  if (c0 == 0 && nc == cols) {
    CF_TRY(read_run(s->fds[t->file], path, kind, t->esize,
                    base + (uint64_t)r0 * (uint64_t)cols * es, (size_t)(nr * nc), out));
  } else {
    for (int64_t r = 0; r < nr; r++)
      CF_TRY(read_run(s->fds[t->file], path, kind, t->esize,
                      base + ((uint64_t)(r0 + r) * (uint64_t)cols + (uint64_t)c0) * es, (size_t)nc,
                      out + r * nc));
  }
  for (int64_t r = 0; r < nr; r++)
    for (int64_t c = 0; c < nc; c++)
      CF_CHECK(isfinite(out[r * nc + c]), CF_ECORRUPT,
               "safetensors '%s': tensor '%s' holds a NaN or infinity at element %lld", path,
               t->name, (long long)((r0 + r) * cols + c0 + c));
  return CF_OK;
}
