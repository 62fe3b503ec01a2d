/* ckpt.c: checkpoint files: a flat list of named float32 tensors in their global shapes
 * plus root attributes, written atomically and collectively from each rank's blocks (whole
 * tensors, row or column blocks, replicated or not, or nothing), read back into any other
 * blocking with format, completion, shape, tiling and checksum checks. Layout:
 * docs/checkpoint-format.md. */
#include "calmflow/ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calmflow/conds.h"
#include "calmflow/fault.h"
#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "io/h5util.h"

#define CKPT_NAME_MAX 1024
#define CKPT_OPTIONS_MAX ((size_t)64 << 20) /* bound on the options attribute we accept */
#define CKPT_GOLDEN 0x9e3779b97f4a7c15ull

/* The strings of the last cf_ckpt_read_meta (meta->model_kind, ->layout, ->rng, ->conditions
 * point here). */
static char g_model_kind[256], g_layout[256], g_rng[256], g_conditions[CF_CONDS_TEXT_MAX];

/* ---- checksums ---- */

/* The splitmix64 finaliser: a bijection of 64-bit words that mixes every bit into every bit. */
static inline uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* Over rows [a, b) of the block x (nr x nc) at (r0, c0) of a tensor with `cols` columns:
 * *cs += the checksum terms mix(mix(i + G) ^ bits) (only when x != NULL) and *cv += the
 * layout terms mix(i + G), which depend on the element indices only (tiling check). */
/* The data checksum of n contiguous elements whose global indices start at i0 (CKPT_GOLDEN
 * added). Integer sums wrap, so the AVX-512 copy (8 64-bit multiplies per instruction, chosen
 * at run time where the CPU has it) gives exactly the portable copy's result. */
static uint64_t row_sum_portable(const float *row, uint64_t i0, int64_t n) {
  uint64_t s = 0;
  for (int64_t c = 0; c < n; c++) {
    uint32_t bits;
    memcpy(&bits, &row[c], sizeof bits);
    s += mix64(mix64(i0 + (uint64_t)c) ^ bits);
  }
  return s;
}

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx512f,avx512dq"))) static uint64_t row_sum_avx512(const float *row,
                                                                           uint64_t i0, int64_t n) {
  uint64_t s = 0;
  for (int64_t c = 0; c < n; c++) {
    uint32_t bits;
    memcpy(&bits, &row[c], sizeof bits);
    s += mix64(mix64(i0 + (uint64_t)c) ^ bits);
  }
  return s;
}
#endif

static uint64_t (*row_sum)(const float *, uint64_t, int64_t);

static void pick_row_sum(void) {
  if (row_sum != NULL) return;
  row_sum = row_sum_portable;
#if defined(__GNUC__) && defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq"))
    row_sum = row_sum_avx512;
#endif
}

static void block_sums(const float *x, int64_t cols, int64_t r0, int64_t c0, int64_t nc, int64_t a,
                       int64_t b, uint64_t *cs, uint64_t *cv) {
  uint64_t s = 0, v = 0;
  pick_row_sum();
  for (int64_t r = a; r < b; r++) {
    uint64_t i0 = (uint64_t)(r0 + r) * (uint64_t)cols + (uint64_t)c0 + CKPT_GOLDEN;
    if (x != NULL && cv == NULL) { /* the data checksum alone: the fast path */
      s += row_sum(x + r * nc, i0, nc);
      continue;
    }
    const float *row = x != NULL ? x + r * nc : NULL;
    for (int64_t c = 0; c < nc; c++) {
      uint64_t in = mix64(i0 + (uint64_t)c);
      v += in;
      if (row != NULL) {
        uint32_t bits;
        memcpy(&bits, &row[c], sizeof bits);
        s += mix64(in ^ bits);
      }
    }
  }
  if (cs != NULL) *cs += s;
  if (cv != NULL) *cv += v;
}

uint64_t cf_ckpt_checksum(const float *x, int64_t cols, int64_t r0, int64_t c0, int64_t nr,
                          int64_t nc) {
  uint64_t s = 0;
  if (x != NULL) block_sums(x, cols, r0, c0, nc, 0, nr, &s, NULL);
  return s;
}

/* The version-1 checksum: 64-bit FNV-1a of the little-endian bytes of x[0..n-1]. */
static uint64_t fnv1a64_f32(const float *x, size_t n) {
  const uint16_t probe = 1;
  const int little = *(const uint8_t *)&probe == 1;
  const uint8_t *p = (const uint8_t *)x;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++, p += 4) {
    for (int k = 0; k < 4; k++) {
      h ^= p[little ? k : 3 - k];
      h *= 0x100000001b3ull;
    }
  }
  return h;
}

/* FNV-1a over n raw bytes, continuing from h (for the tensor-list fingerprint). */
static uint64_t fnv_bytes(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) {
    h ^= b[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

/* ---- arguments and layouts ---- */

/* Local. A tensor name: "a/b.c" style, no leading '/', no empty, "." or ".." component,
 * printable ASCII only. */
static cf_status check_name(const char *name) {
  CF_CHECK(name != NULL && name[0] != '\0', CF_EINVAL, "checkpoint tensor with an empty name");
  size_t len = strlen(name);
  CF_CHECK(len < CKPT_NAME_MAX, CF_EINVAL, "checkpoint tensor name '%.64s...' is too long", name);
  CF_CHECK(name[0] != '/', CF_EINVAL, "checkpoint tensor name '%s' must not start with '/'", name);
  const char *c = name;
  while (1) {
    const char *end = strchr(c, '/');
    size_t n = end ? (size_t)(end - c) : strlen(c);
    CF_CHECK(n > 0 && !(n == 1 && c[0] == '.') && !(n == 2 && c[0] == '.' && c[1] == '.'),
             CF_EINVAL, "checkpoint tensor name '%s' has an empty, '.' or '..' component", name);
    for (size_t i = 0; i < n; i++)
      CF_CHECK(c[i] > 0x20 && c[i] < 0x7f, CF_EINVAL,
               "checkpoint tensor name '%s' has a space or non-printable character", name);
    if (!end) break;
    c = end + 1;
  }
  return CF_OK;
}

static int64_t cols_of(const struct cf_ckpt_tensor *t) {
  return t->ndim == 2 ? t->shape[1] : 1;
}

static int block_is_whole(const struct cf_ckpt_tensor *t) {
  return t->count[0] == 0 && t->count[1] == 0;
}

/* Local. One entry: name, ndim, global shape, and (when held) the block and replica fields. */
static cf_status check_tensor_arg(const struct cf_ckpt_tensor *t, int size) {
  CF_TRY(check_name(t->name));
  CF_CHECK(t->ndim == 1 || t->ndim == 2, CF_EINVAL,
           "checkpoint tensor '%s' has ndim %d, expected 1 or 2", t->name, t->ndim);
  for (int k = 0; k < t->ndim; k++)
    CF_CHECK(t->shape[k] >= 1, CF_EINVAL,
             "checkpoint tensor '%s' has dimension %d = %lld, expected >= 1", t->name, k,
             (long long)t->shape[k]);
  size_t bytes;
  CF_TRY(cf_mul_size(&bytes, (size_t)t->shape[0], (size_t)cols_of(t), t->name));
  CF_TRY(cf_mul_size(&bytes, bytes, sizeof(float), t->name));
  if (t->data == NULL) return CF_OK; /* not held: the block fields are ignored */
  long long s0 = (long long)t->start[0], s1 = (long long)t->start[1];
  long long n0 = (long long)t->count[0], n1 = (long long)t->count[1];
  if (block_is_whole(t)) {
    CF_CHECK(s0 == 0 && s1 == 0, CF_EINVAL,
             "checkpoint tensor '%s' has count 0 (the whole tensor) but start %lld,%lld, "
             "expected 0,0",
             t->name, s0, s1);
  } else if (t->ndim == 1) {
    CF_CHECK(s1 == 0 && (n1 == 0 || n1 == 1), CF_EINVAL,
             "checkpoint tensor '%s' is 1-D but its block has start[1] = %lld and count[1] = "
             "%lld, expected 0 and 0 or 1",
             t->name, s1, n1);
    CF_CHECK(n0 >= 1 && s0 >= 0 && s0 <= (long long)t->shape[0] - n0, CF_EINVAL,
             "checkpoint tensor '%s' block %lld..%lld (start %lld, count %lld) is empty or "
             "outside its %lld elements",
             t->name, s0, s0 + n0, s0, n0, (long long)t->shape[0]);
  } else {
    CF_CHECK(n0 >= 1 && n1 >= 1 && s0 >= 0 && s1 >= 0 && s0 <= (long long)t->shape[0] - n0 &&
                 s1 <= (long long)t->shape[1] - n1,
             CF_EINVAL,
             "checkpoint tensor '%s' block rows %lld..%lld, columns %lld..%lld (start %lld,%lld, "
             "count %lld,%lld) is empty or outside its shape %lldx%lld",
             t->name, s0, s0 + n0, s1, s1 + n1, s0, s1, n0, n1, (long long)t->shape[0],
             (long long)t->shape[1]);
  }
  CF_CHECK(t->n_replicas >= 0 && t->n_replicas <= size &&
               (t->n_replicas == 0 || (t->replica >= 0 && t->replica < t->n_replicas)),
           CF_EINVAL,
           "checkpoint tensor '%s' has replica %d of n_replicas %d, expected 0 <= replica < "
           "n_replicas <= %d (the ranks), or n_replicas 0",
           t->name, t->replica, t->n_replicas, size);
  return CF_OK;
}

/* Local. The whole list (the ranks agree on the outcome with cf_agree). */
static cf_status check_args(MPI_Comm comm, const struct cf_ckpt_tensor *t, int nt) {
  int size;
  CF_MPI(MPI_Comm_size(comm, &size));
  CF_CHECK(nt >= 0 && (nt == 0 || t != NULL), CF_EINVAL, "bad checkpoint tensor list (%d tensors)",
           nt);
  for (int i = 0; i < nt; i++)
    CF_TRY(check_tensor_arg(&t[i], size));
  return CF_OK;
}

/* Collective. Every rank must pass the same names, ndims and global shapes in the same order
 * (datasets are created and read collectively), and when writing the same metadata (the
 * attributes are written collectively; HDF5 hangs on differing sizes): compare a fingerprint. */
static cf_status lists_agree(MPI_Comm comm, const struct cf_ckpt_tensor *t, int nt,
                             const struct cf_ckpt_meta *meta) {
  uint64_t h = 0xcbf29ce484222325ull;
  int64_t n = nt;
  h = fnv_bytes(h, &n, sizeof n);
  if (meta != NULL) {
    /* which optional attributes are present, then their values */
    int64_t v[8] = {meta->step,
                    (int64_t)meta->seed,
                    meta->world,
                    meta->data_cursor,
                    meta->layout != NULL,
                    meta->rng != NULL,
                    meta->rng ? meta->rng_step : 0,
                    meta->conditions != NULL};
    const char *s[5] = {meta->options_yaml, meta->model_kind, meta->layout, meta->rng,
                        meta->conditions};
    h = fnv_bytes(h, v, sizeof v);
    for (int i = 0; i < 5; i++)
      h = fnv_bytes(h, s[i] ? s[i] : "", strlen(s[i] ? s[i] : "") + 1);
  }
  for (int i = 0; i < nt; i++) {
    int64_t d[3] = {t[i].ndim, t[i].shape[0], cols_of(&t[i])};
    h = fnv_bytes(h, t[i].name, strlen(t[i].name) + 1);
    h = fnv_bytes(h, d, sizeof d);
  }
  uint64_t mine[2] = {h, ~h}, got[2];
  CF_MPI(MPI_Allreduce(mine, got, 2, MPI_UINT64_T, MPI_MAX, comm));
  CF_CHECK(got[0] == h && ~got[1] == h, CF_EINVAL,
           "the ranks pass different checkpoint tensor lists (names, order or shapes differ)%s",
           meta != NULL ? " or different metadata (step, seed, world, data_cursor, options, "
                          "model_kind, layout, rng, rng_step, conditions)"
                        : "");
  return CF_OK;
}

/* This rank's part of one tensor, normalised (1-D tensors have one column). */
struct layout {
  int64_t rows, cols;     /* global shape */
  int64_t r0, c0, nr, nc; /* the block; nr = nc = 0 when not held */
  int replica, nrep;      /* among the holders of this block (inferred when n_replicas is 0) */
  int64_t s0, s1;         /* block rows this rank writes and verifies: [s0, s1) */
};

/* Collective. Fill L[0..nt-1]; whole tensors held with n_replicas 0 get their replica index
 * and count from an exclusive scan and a sum over the ranks. */
static cf_status plan_layouts(MPI_Comm comm, const struct cf_ckpt_tensor *t, int nt,
                              struct layout *L) {
  int rank;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  int *flag = NULL;
  CF_TRY(cf_alloc((void **)&flag, (3 * (size_t)nt + 1) * sizeof(int), "checkpoint layout"));
  int *idx = flag + nt, *tot = flag + 2 * nt;
  for (int i = 0; i < nt; i++) {
    struct layout *l = &L[i];
    memset(l, 0, sizeof *l);
    l->rows = t[i].shape[0];
    l->cols = cols_of(&t[i]);
    if (t[i].data == NULL) continue;
    int whole = block_is_whole(&t[i]);
    l->r0 = whole ? 0 : t[i].start[0];
    l->c0 = whole || t[i].ndim == 1 ? 0 : t[i].start[1];
    l->nr = whole ? l->rows : t[i].count[0];
    l->nc = whole ? l->cols : (t[i].ndim == 1 ? 1 : t[i].count[1]);
    whole = l->nr == l->rows && l->nc == l->cols;
    if (t[i].n_replicas > 0) {
      l->replica = t[i].replica;
      l->nrep = t[i].n_replicas;
    } else if (whole) {
      flag[i] = 1;
    } else {
      l->nrep = 1;
    }
  }
  int e = MPI_Exscan(flag, idx, nt, MPI_INT, MPI_SUM, comm);
  if (e == MPI_SUCCESS) e = MPI_Allreduce(flag, tot, nt, MPI_INT, MPI_SUM, comm);
  for (int i = 0; i < nt && e == MPI_SUCCESS; i++) {
    if (flag[i]) {
      L[i].replica = rank == 0 ? 0 : idx[i]; /* MPI_Exscan leaves rank 0's result undefined */
      L[i].nrep = tot[i];
    }
    if (L[i].nr > 0) cf_io_row_range(L[i].nr, L[i].replica, L[i].nrep, &L[i].s0, &L[i].s1);
  }
  cf_free((void **)&flag);
  if (e != MPI_SUCCESS) return cf_mpi_fail(e, __FILE__, __LINE__, "replica scan");
  return CF_OK;
}

/* A rectangle of a tensor: rows [a, b), columns [c, d). */
struct rect {
  int64_t a, b, c, d;
};

static int rect_cmp(const void *x, const void *y) {
  const struct rect *p = x, *q = y;
  return p->a < q->a ? -1 : (p->a > q->a ? 1 : 0);
}

/* Collective. The rectangles the ranks write must tile every tensor exactly once: their areas
 * add up to the tensor's size and no two overlap (each already lies inside the tensor, checked
 * with the arguments). The rectangles are all-gathered; rank r checks the tensors i with
 * i % size == r, sorting by first row so each rectangle is compared only with those that start
 * before it ends. Cost: O(ranks) per tensor, nothing per element. */
static cf_status check_tiling(MPI_Comm comm, const struct cf_ckpt_tensor *t, int nt,
                              const struct layout *L) {
  int rank, size;
  CF_MPI(MPI_Comm_rank(comm, &rank));
  CF_MPI(MPI_Comm_size(comm, &size));
  int64_t *mine = NULL, *all = NULL;
  struct rect *rs = NULL;
  size_t per = 4 * (size_t)nt;
  cf_status st = cf_alloc((void **)&mine, (per + 1) * sizeof(int64_t), "checkpoint tiling");
  if (st == CF_OK)
    st = cf_alloc((void **)&all, (per * (size_t)size + 1) * sizeof(int64_t), "checkpoint tiling");
  if (st == CF_OK)
    st = cf_alloc((void **)&rs, ((size_t)size + 1) * sizeof(struct rect), "checkpoint tiling");
  if (st != CF_OK) goto done;
  for (int i = 0; i < nt; i++) {
    const struct layout *l = &L[i];
    int held = l->nr > 0 && l->s1 > l->s0;
    mine[4 * i] = held ? l->r0 + l->s0 : 0;
    mine[4 * i + 1] = held ? l->r0 + l->s1 : 0;
    mine[4 * i + 2] = held ? l->c0 : 0;
    mine[4 * i + 3] = held ? l->c0 + l->nc : 0;
  }
  if (per * (size_t)size > (size_t)INT32_MAX) {
    st = cf_err(CF_EINVAL, "checkpoint: %d tensors on %d ranks are too many to check", nt, size);
    goto done;
  }
  int e = MPI_Allgather(mine, (int)per, MPI_INT64_T, all, (int)per, MPI_INT64_T, comm);
  if (e != MPI_SUCCESS) {
    st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Allgather of the checkpoint blocks");
    goto done;
  }
  for (int i = rank; i < nt && st == CF_OK; i += size) {
    int n = 0;
    int64_t area = 0, want = L[i].rows * L[i].cols;
    for (int r = 0; r < size; r++) {
      const int64_t *q = all + (size_t)r * per + 4 * (size_t)i;
      if (q[1] <= q[0] || q[3] <= q[2]) continue;
      rs[n++] = (struct rect){q[0], q[1], q[2], q[3]};
      area += (q[1] - q[0]) * (q[3] - q[2]);
    }
    int ok = area == want;
    qsort(rs, (size_t)n, sizeof *rs, rect_cmp);
    for (int x = 0; x < n && ok; x++)
      for (int y = x + 1; y < n && rs[y].a < rs[x].b && ok; y++)
        if (rs[y].c < rs[x].d && rs[x].c < rs[y].d) ok = 0;
    if (!ok)
      st = cf_err(CF_EINVAL,
                  "checkpoint tensor '%s': the blocks the ranks hold do not cover it exactly once "
                  "(check data, start, count, replica and n_replicas on every rank)",
                  t[i].name);
  }
done:
  cf_free((void **)&mine);
  cf_free((void **)&all);
  cf_free((void **)&rs);
  return st;
}

/* Collective. Everything about the arguments that can be checked before a file is touched:
 * each rank's entries, the agreement of the lists (and of meta, when writing), the layouts
 * (into L) and their tiling. */
static cf_status prepare(MPI_Comm comm, const struct cf_ckpt_tensor *t, int nt,
                         const struct cf_ckpt_meta *meta, struct layout **L) {
  *L = NULL;
  CF_TRY(cf_agree(comm, check_args(comm, t, nt)));
  CF_TRY(cf_agree(comm, lists_agree(comm, t, nt, meta)));
  CF_TRY(cf_agree(comm, cf_alloc((void **)L, ((size_t)nt + 1) * sizeof **L, "checkpoint layouts")));
  cf_status st = cf_agree(comm, plan_layouts(comm, t, nt, *L));
  if (st == CF_OK) st = cf_agree(comm, check_tiling(comm, t, nt, *L));
  if (st != CF_OK) cf_free((void **)L);
  return st;
}

/* ---- writing ---- */

/* Collective. sums[i] = the checksum of tensor i (each rank adds the part it writes), and the
 * replicas of every block must agree: each holder's whole-block checksum c enters the sums
 * c - n c [replica 0 only] and mix(c) - n mix(c) [replica 0 only], which are 0 over the ranks
 * when the n replicas hold the same values. */
static cf_status write_sums(MPI_Comm comm, const struct cf_ckpt_tensor *t, int nt,
                            const struct layout *L, uint64_t *sums) {
  uint64_t *v = NULL;
  CF_TRY(cf_alloc((void **)&v, (6 * (size_t)nt + 1) * sizeof(uint64_t), "checkpoint checksums"));
  uint64_t *r = v + 3 * nt;
  for (int i = 0; i < nt; i++) {
    const struct layout *l = &L[i];
    uint64_t part = 0, rest = 0;
    if (l->nr > 0) {
      block_sums(t[i].data, l->cols, l->r0, l->c0, l->nc, 0, l->s0, &rest, NULL);
      block_sums(t[i].data, l->cols, l->r0, l->c0, l->nc, l->s0, l->s1, &part, NULL);
      block_sums(t[i].data, l->cols, l->r0, l->c0, l->nc, l->s1, l->nr, &rest, NULL);
    }
    uint64_t c = part + rest, n = (uint64_t)l->nrep;
    int lead = l->nr > 0 && l->replica == 0;
    v[3 * i] = part;
    v[3 * i + 1] = l->nr > 0 ? c - (lead ? n * c : 0) : 0;
    v[3 * i + 2] = l->nr > 0 ? mix64(c) - (lead ? n * mix64(c) : 0) : 0;
  }
  int e = MPI_Allreduce(v, r, 3 * nt, MPI_UINT64_T, MPI_SUM, comm);
  cf_status st = CF_OK;
  if (e != MPI_SUCCESS) st = cf_mpi_fail(e, __FILE__, __LINE__, "MPI_Allreduce of checksums");
  for (int i = 0; i < nt && st == CF_OK; i++) {
    sums[i] = r[3 * i];
    if (r[3 * i + 1] != 0 || r[3 * i + 2] != 0)
      st = cf_err(CF_EINVAL,
                  "checkpoint tensor '%s' differs between ranks (checksums disagree): replicas "
                  "diverged",
                  t[i].name);
  }
  cf_free((void **)&v);
  return st;
}

/* Collective. Create tensor t's dataset, write this rank's rows [s0, s1) of its block (an
 * empty selection when it has none) and the checksum attribute. */
static cf_status write_tensor(struct cf_h5_writer *w, const struct cf_ckpt_tensor *t,
                              const struct layout *l, uint64_t sum) {
  char dset[CKPT_NAME_MAX + 2];
  snprintf(dset, sizeof dset, "/%s", t->name);
  int64_t shape[2] = {l->rows, l->cols};
  int64_t start[2] = {l->r0 + l->s0, l->c0}, count[2] = {l->s1 - l->s0, l->nc};
  const float *x = l->nr > 0 ? t->data + l->s0 * l->nc : NULL;
  hid_t did = -1;
  /* fault site ckpt_write (fault.h), agreed first: an injected error on one rank stops every
   * rank before the collective create */
  CF_TRY(cf_agree(w->comm, cf_fault_point("ckpt_write")));
  cf_status st = cf_io_create_f32((hid_t)w->file, dset, t->ndim, shape, w->tmp, &did);
  if (st == CF_OK) st = cf_io_write_block(did, t->ndim, start, count, x, w->tmp, dset);
  if (st == CF_OK) st = cf_io_attr_put_u64(did, "checksum", sum, w->tmp);
  if (did >= 0) H5Dclose(did);
  return cf_agree(w->comm, st);
}

static cf_status write_all(struct cf_h5_writer *w, const struct cf_ckpt_meta *meta,
                           const struct cf_ckpt_tensor *t, int nt, const struct layout *L,
                           const uint64_t *sums) {
  CF_TRY(cf_h5_writer_attr(w, "format", CF_CKPT_FORMAT));
  CF_TRY(cf_io_writer_attr_i64(w, "format_version", CF_CKPT_FORMAT_VERSION));
  CF_TRY(cf_io_writer_attr_i64(w, "step", meta->step));
  CF_TRY(cf_io_writer_attr_u64(w, "seed", meta->seed));
  CF_TRY(cf_io_writer_attr_i64(w, "world", meta->world));
  CF_TRY(cf_io_writer_attr_i64(w, "data_cursor", meta->data_cursor));
  CF_TRY(cf_h5_writer_attr(w, "options", meta->options_yaml ? meta->options_yaml : ""));
  CF_TRY(cf_h5_writer_attr(w, "model_kind", meta->model_kind ? meta->model_kind : ""));
  if (meta->layout != NULL) CF_TRY(cf_h5_writer_attr(w, "layout", meta->layout));
  if (meta->rng != NULL) {
    CF_TRY(cf_h5_writer_attr(w, "rng", meta->rng));
    CF_TRY(cf_io_writer_attr_i64(w, "rng_step", meta->rng_step));
  }
  if (meta->conditions != NULL) CF_TRY(cf_h5_writer_attr(w, "conditions", meta->conditions));
  CF_TRY(cf_io_writer_attr_i64(w, "n_tensors", nt));
  CF_TRY(cf_h5_writer_attr(w, "checksum_algorithm", CF_CKPT_CHECKSUM_ALGORITHM));
  for (int i = 0; i < nt; i++)
    CF_TRY(write_tensor(w, &t[i], &L[i], sums[i]));
  CF_TRY(cf_io_writer_attr_i64(w, "complete", 1)); /* last, before close */
  return CF_OK;
}

/* Collective. Reserve in the temporary file the bytes the checkpoint's tensors will need, with
 * about 2 KiB each for their headers (the writer counts its own metadata and the attributes),
 * so that a full disk, a quota or a file-size limit shows up here, before HDF5 holds anything it
 * would have to flush (cf_h5_writer_reserve, cf_io_reserve: a failed H5Fclose crashes HDF5
 * 1.10.8 in MPI_Finalize). HDF5 cuts the file to its real size when it closes it. */
static cf_status reserve_space(struct cf_h5_writer *w, const struct cf_ckpt_tensor *t, int nt) {
  double bytes = 0.0;
  for (int i = 0; i < nt; i++)
    bytes += (double)t[i].shape[0] * (double)cols_of(&t[i]) * sizeof(float) + 2048.0;
  return cf_h5_writer_reserve(w, bytes);
}

cf_status cf_ckpt_write(MPI_Comm comm, const char *path, const struct cf_ckpt_meta *meta,
                        const struct cf_ckpt_tensor *t, int nt) {
  cf_io_h5_quiet();
  CF_TRY(cf_agree(comm, meta != NULL ? CF_OK
                                     : cf_err(CF_EINVAL, "checkpoint '%s' without metadata",
                                              path ? path : "")));
  CF_TRY(cf_agree(comm, meta->rng == NULL || meta->rng_step >= 0
                            ? CF_OK
                            : cf_err(CF_EINVAL,
                                     "checkpoint '%s': rng_step %lld with an rng, expected >= 0",
                                     path ? path : "", (long long)meta->rng_step)));
  struct layout *L = NULL;
  CF_TRY(prepare(comm, t, nt, meta, &L));
  uint64_t *sums = NULL;
  cf_status st = cf_agree(
      comm, cf_alloc((void **)&sums, ((size_t)nt + 1) * sizeof(uint64_t), "checkpoint checksums"));
  if (st == CF_OK) st = cf_agree(comm, write_sums(comm, t, nt, L, sums));
  struct cf_h5_writer w;
  if (st == CF_OK) st = cf_h5_writer_open(&w, comm, path);
  if (st == CF_OK) {
    w.rename_fault = "ckpt_rename";
    st = reserve_space(&w, t, nt);
    if (st == CF_OK) st = write_all(&w, meta, t, nt, L, sums);
    if (st == CF_OK) {
      st = cf_h5_writer_commit(&w);
    } else {
      cf_h5_writer_abort(&w);
    }
  }
  cf_free((void **)&sums);
  cf_free((void **)&L);
  CF_TRY(st);
  return CF_OK;
}

/* ---- reading ---- */

static void fmt_shape(char *buf, size_t cap, int nd, const int64_t *dims) {
  size_t used = 0;
  buf[0] = '\0';
  for (int k = 0; k < nd && used < cap; k++) {
    int w = snprintf(buf + used, cap - used, k ? "x%lld" : "%lld", (long long)dims[k]);
    if (w < 0) break;
    used += (size_t)w;
  }
  if (nd == 0) snprintf(buf, cap, "scalar");
}

/* Collective. The root attributes that make `fid` a readable, complete checkpoint; its
 * format_version into *version. */
static cf_status check_header(hid_t fid, const char *path, int64_t *version) {
  htri_t has = H5Aexists(fid, "format");
  CF_CHECK(has >= 0, CF_ECORRUPT,
           "'%s': the root group's metadata cannot be read; the file is corrupt", path);
  CF_CHECK(has > 0, CF_ECORRUPT, "'%s' is not a calmflow checkpoint (no 'format' attribute)", path);
  char *fmt = NULL;
  CF_TRY(cf_io_attr_get_str(fid, "format", path, "root attribute", 256, &fmt));
  int same = strcmp(fmt, CF_CKPT_FORMAT) == 0;
  cf_status st = CF_OK;
  if (!same)
    st = cf_err(CF_ECORRUPT, "'%s' is not a calmflow checkpoint (format '%.64s', expected '%s')",
                path, fmt, CF_CKPT_FORMAT);
  cf_free((void **)&fmt);
  CF_TRY(st);
  int64_t ver = 0;
  CF_TRY(cf_io_attr_get_i64(fid, "format_version", path, "root attribute", &ver));
  CF_CHECK(ver >= 1, CF_ECORRUPT, "'%s' has a bad format_version %lld", path, (long long)ver);
  CF_CHECK(ver <= CF_CKPT_FORMAT_VERSION, CF_EINVAL,
           "'%s' has checkpoint format_version %lld, newer than this build reads (up to %d)", path,
           (long long)ver, CF_CKPT_FORMAT_VERSION);
  int64_t done = 0;
  if (H5Aexists(fid, "complete") > 0)
    CF_TRY(cf_io_attr_get_i64(fid, "complete", path, "root attribute", &done));
  CF_CHECK(done == 1, CF_ECORRUPT,
           "'%s' is incomplete (no 'complete' mark): its write did not finish", path);
  *version = ver;
  return CF_OK;
}

static cf_status read_meta_open(hid_t fid, const char *path, struct cf_ckpt_meta *meta,
                                char **buf) {
  int64_t version = 0;
  CF_TRY(check_header(fid, path, &version));
  const char *ra = "root attribute";
  CF_TRY(cf_io_attr_get_i64(fid, "step", path, ra, &meta->step));
  CF_TRY(cf_io_attr_get_u64(fid, "seed", path, ra, &meta->seed));
  CF_TRY(cf_io_attr_get_i64(fid, "world", path, ra, &meta->world));
  CF_TRY(cf_io_attr_get_i64(fid, "data_cursor", path, ra, &meta->data_cursor));
  char *kind = NULL;
  CF_TRY(cf_io_attr_get_str(fid, "model_kind", path, ra, sizeof g_model_kind, &kind));
  snprintf(g_model_kind, sizeof g_model_kind, "%s", kind);
  cf_free((void **)&kind);
  meta->model_kind = g_model_kind;
  /* optional (absent in files written before they were added): NULL / -1 */
  meta->layout = meta->rng = NULL;
  meta->rng_step = -1;
  char *const dst[2] = {g_layout, g_rng};
  const char *const key[2] = {"layout", "rng"};
  for (int i = 0; i < 2; i++) {
    if (H5Aexists(fid, key[i]) <= 0) continue;
    char *v = NULL;
    CF_TRY(cf_io_attr_get_str(fid, key[i], path, ra, 256, &v));
    snprintf(dst[i], 256, "%s", v);
    cf_free((void **)&v);
    if (i == 0) meta->layout = g_layout;
    if (i == 1) meta->rng = g_rng;
  }
  if (H5Aexists(fid, "rng_step") > 0)
    CF_TRY(cf_io_attr_get_i64(fid, "rng_step", path, ra, &meta->rng_step));
  meta->conditions = NULL;
  if (H5Aexists(fid, "conditions") > 0) {
    char *v = NULL;
    CF_TRY(cf_io_attr_get_str(fid, "conditions", path, ra, sizeof g_conditions, &v));
    snprintf(g_conditions, sizeof g_conditions, "%s", v);
    cf_free((void **)&v);
    meta->conditions = g_conditions;
  }
  CF_TRY(cf_io_attr_get_str(fid, "options", path, ra, CKPT_OPTIONS_MAX, buf));
  meta->options_yaml = *buf;
  return CF_OK;
}

cf_status cf_ckpt_read_meta(MPI_Comm comm, const char *path, struct cf_ckpt_meta *meta,
                            char **options_yaml) {
  cf_io_h5_quiet();
  memset(meta, 0, sizeof *meta);
  *options_yaml = NULL;
  hid_t fid;
  CF_TRY(cf_io_open_read(comm, path, &fid));
  cf_status st = read_meta_open(fid, path, meta, options_yaml);
  H5Fclose(fid);
  st = cf_agree(comm, st);
  if (st != CF_OK) {
    cf_free((void **)options_yaml);
    memset(meta, 0, sizeof *meta);
  }
  CF_TRY(st);
  return CF_OK;
}

/* Collective. Does the link path "/a/b/c" exist (checking each prefix in turn)? */
static int link_exists(hid_t fid, const char *dset) {
  char prefix[CKPT_NAME_MAX + 2];
  const char *c = dset + 1;
  while (1) {
    const char *end = strchr(c, '/');
    size_t n = end ? (size_t)(end - dset) : strlen(dset);
    snprintf(prefix, sizeof prefix, "%.*s", (int)n, dset);
    if (H5Lexists(fid, prefix, H5P_DEFAULT) <= 0) return 0;
    if (!end) return 1;
    c = end + 1;
  }
}

/* Collective. Check presence, type and shape of t in fid; on a problem write the message
 * into msg (not recorded) and return its status. */
static cf_status check_tensor(hid_t fid, const char *path, const struct cf_ckpt_tensor *t,
                              char *msg, size_t cap) {
  char dset[CKPT_NAME_MAX + 2];
  snprintf(dset, sizeof dset, "/%s", t->name);
  if (!link_exists(fid, dset)) {
    snprintf(msg, cap, "'%s' has no tensor '%s'", path, t->name);
    return CF_ECORRUPT;
  }
  hid_t did = H5Dopen2(fid, dset, H5P_DEFAULT);
  if (did < 0) {
    /* the link exists: either another kind of object or a header HDF5 cannot decode */
    H5O_info_t oi;
    if (H5Oget_info_by_name(fid, dset, &oi, H5P_DEFAULT) >= 0 && oi.type != H5O_TYPE_DATASET)
      snprintf(msg, cap, "'%s' '%s' is not a dataset", path, t->name);
    else
      snprintf(msg, cap, "'%s' tensor '%s': its object header cannot be read; the file is corrupt",
               path, t->name);
    return CF_ECORRUPT;
  }
  cf_status st = CF_OK;
  hid_t ty = H5Dget_type(did), sp = H5Dget_space(did);
  int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  if (ty < 0 || H5Tget_class(ty) != H5T_FLOAT) {
    snprintf(msg, cap, "'%s' tensor '%s' does not hold floats", path, t->name);
    st = CF_ECORRUPT;
  } else if (nd < 0 || nd > CF_IO_MAXDIM) {
    snprintf(msg, cap, "'%s' tensor '%s' has a bad dataspace", path, t->name);
    st = CF_ECORRUPT;
  } else {
    hsize_t dims[CF_IO_MAXDIM];
    int64_t got[CF_IO_MAXDIM];
    H5Sget_simple_extent_dims(sp, dims, NULL);
    int same = nd == t->ndim;
    for (int k = 0; k < nd; k++) {
      got[k] = (int64_t)dims[k];
      if (same && got[k] != t->shape[k]) same = 0;
    }
    if (!same) {
      char a[128], b[128];
      fmt_shape(a, sizeof a, nd, got);
      fmt_shape(b, sizeof b, t->ndim, t->shape);
      snprintf(msg, cap, "'%s' tensor '%s' has shape %s, expected %s", path, t->name, a, b);
      st = CF_ECORRUPT;
    }
  }
  if (sp >= 0) H5Sclose(sp);
  if (ty >= 0) H5Tclose(ty);
  H5Dclose(did);
  return st;
}

/* Collective. Read this rank's block of tensor t (already checked) into t->data and the stored
 * checksum into *stored. Version 2: *part = the checksum of block rows [s0, s1), summed over
 * the ranks by the caller. Version 1: each holder reads the whole tensor into scratch, checks
 * its FNV-1a checksum and keeps its block. */
static cf_status read_tensor(MPI_Comm comm, hid_t fid, const char *path, int64_t version,
                             const struct cf_ckpt_tensor *t, const struct layout *l, float *scratch,
                             uint64_t *part, uint64_t *stored) {
  char dset[CKPT_NAME_MAX + 2];
  snprintf(dset, sizeof dset, "/%s", t->name);
  *part = *stored = 0;
  hid_t did = H5Dopen2(fid, dset, H5P_DEFAULT);
  cf_status st =
      did >= 0 ? CF_OK : cf_err(CF_ECORRUPT, "'%s': cannot open tensor '%s'", path, t->name);
  st = cf_agree(comm, st);
  if (st == CF_OK && version >= 2) {
    int64_t start[2] = {l->r0, l->c0}, count[2] = {l->nr, l->nc};
    st = cf_io_read_block(did, t->ndim, start, count, H5T_NATIVE_FLOAT, t->data, path, dset);
  } else if (st == CF_OK) {
    int64_t start[2] = {0, 0}, count[2] = {l->nr > 0 ? l->rows : 0, l->cols};
    st = cf_io_read_block(did, t->ndim, start, count, H5T_NATIVE_FLOAT, scratch, path, dset);
  }
  st = cf_agree(comm, st);
  if (st == CF_OK) {
    char owner[CKPT_NAME_MAX + 32];
    snprintf(owner, sizeof owner, "tensor '%s' attribute", t->name);
    if (H5Aexists(did, "checksum") <= 0)
      st = cf_err(CF_ECORRUPT, "'%s' tensor '%s' has no checksum attribute", path, t->name);
    else
      st = cf_io_attr_get_u64(did, "checksum", path, owner, stored);
  }
  if (st == CF_OK && l->nr > 0 && version >= 2) {
    block_sums(t->data, l->cols, l->r0, l->c0, l->nc, l->s0, l->s1, part, NULL);
  } else if (st == CF_OK && l->nr > 0) {
    uint64_t got = fnv1a64_f32(scratch, (size_t)(l->rows * l->cols));
    if (got != *stored)
      st = cf_err(CF_ECORRUPT,
                  "'%s' tensor '%s' fails its checksum (stored %016llx, computed %016llx): the "
                  "file is corrupt",
                  path, t->name, (unsigned long long)*stored, (unsigned long long)got);
    for (int64_t r = 0; r < l->nr && st == CF_OK; r++)
      memcpy(t->data + r * l->nc, scratch + (l->r0 + r) * l->cols + l->c0,
             (size_t)l->nc * sizeof(float));
  }
  if (did >= 0) H5Dclose(did);
  return cf_agree(comm, st);
}

/* Collective. Version 2: add up the ranks' partial checksums and compare with the stored ones. */
static cf_status verify_sums(MPI_Comm comm, const char *path, const struct cf_ckpt_tensor *t,
                             int nt, const uint64_t *part, const uint64_t *stored, uint64_t *sum) {
  CF_MPI(MPI_Allreduce(part, sum, nt, MPI_UINT64_T, MPI_SUM, comm));
  int bad = 0, first = -1;
  for (int i = 0; i < nt; i++)
    if (sum[i] != stored[i] && bad++ == 0) first = i;
  if (bad == 0) return CF_OK;
  char more[64] = "";
  if (bad > 1) snprintf(more, sizeof more, " (and %d more tensors fail theirs)", bad - 1);
  return cf_err(CF_ECORRUPT,
                "'%s' tensor '%s' fails its checksum (stored %016llx, computed %016llx): the file "
                "is corrupt%s",
                path, t[first].name, (unsigned long long)stored[first],
                (unsigned long long)sum[first], more);
}

/* Every object of the file, the storage of its header, link and attribute indexes, and its
 * attributes, read once: HDF5 checksums all of these, and a flipped byte in a part the tensor
 * reads never touch (a B-tree leaf of a group's creation-order index) would otherwise pass here
 * and fail in any other HDF5 reader. */
static herr_t walk_attr(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
  (void)loc, (void)name, (void)info, (void)data;
  return 0;
}
#if H5_VERSION_GE(1, 12, 0)
static herr_t walk_obj(hid_t loc, const char *name, const H5O_info2_t *info, void *data) {
#else
static herr_t walk_obj(hid_t loc, const char *name, const H5O_info_t *info, void *data) {
#endif
  (void)info, (void)data;
  hid_t o = H5Oopen(loc, name, H5P_DEFAULT);
  if (o < 0) return -1;
  hsize_t i = 0;
  herr_t r = H5Aiterate2(o, H5_INDEX_NAME, H5_ITER_NATIVE, &i, walk_attr, NULL);
#if H5_VERSION_GE(1, 12, 0) /* the index sizes moved out of H5O_info2_t */
  H5O_native_info_t ni;
  if (r >= 0) r = H5Oget_native_info(o, &ni, H5O_NATIVE_INFO_ALL);
#endif
  H5Oclose(o);
  return r < 0 ? -1 : 0;
}

/* Local. */
static cf_status walk_objects(hid_t fid, const char *path) {
#if H5_VERSION_GE(1, 12, 0)
  herr_t r = H5Ovisit3(fid, H5_INDEX_NAME, H5_ITER_NATIVE, walk_obj, NULL, H5O_INFO_ALL);
#else /* H5O_INFO_ALL: also the sizes of the B-trees and heaps, which walks them */
  herr_t r = H5Ovisit2(fid, H5_INDEX_NAME, H5_ITER_NATIVE, walk_obj, NULL, H5O_INFO_ALL);
#endif
  CF_CHECK(r >= 0, CF_ECORRUPT,
           "'%s': its HDF5 metadata (object headers, link or attribute indexes) fails to read: "
           "the file is corrupt",
           path);
  return CF_OK;
}

static cf_status read_tensors_open(MPI_Comm comm, hid_t fid, const char *path,
                                   const struct cf_ckpt_tensor *t, int nt, const struct layout *L) {
  int64_t version = 0;
  CF_TRY(cf_agree(comm, check_header(fid, path, &version)));
  CF_TRY(cf_agree(comm, walk_objects(fid, path)));
  char first[768] = "";
  cf_status st = CF_OK;
  int bad = 0;
  for (int i = 0; i < nt; i++) {
    char msg[768];
    cf_status s = check_tensor(fid, path, &t[i], msg, sizeof msg);
    if (s != CF_OK && bad++ == 0) {
      st = s;
      snprintf(first, sizeof first, "%s", msg);
    }
  }
  if (bad == 1) st = cf_err(st, "%s", first);
  if (bad > 1) st = cf_err(st, "%s (and %d more missing or mismatched)", first, bad - 1);
  CF_TRY(cf_agree(comm, st));

  size_t scratch_n = 0; /* version 1: the largest whole tensor this rank holds part of */
  for (int i = 0; i < nt && version < 2; i++)
    if (L[i].nr > 0 && (size_t)(L[i].rows * L[i].cols) > scratch_n)
      scratch_n = (size_t)(L[i].rows * L[i].cols);
  uint64_t *v = NULL;
  float *scratch = NULL;
  st = cf_alloc((void **)&v, (3 * (size_t)nt + 1) * sizeof(uint64_t), "checkpoint checksums");
  if (st == CF_OK && scratch_n > 0)
    st = cf_alloc((void **)&scratch, scratch_n * sizeof(float), "version-1 checkpoint tensor");
  st = cf_agree(comm, st);
  for (int i = 0; i < nt && st == CF_OK; i++)
    st = read_tensor(comm, fid, path, version, &t[i], &L[i], scratch, &v[i], &v[nt + i]);
  if (st == CF_OK && version >= 2)
    st = cf_agree(comm, verify_sums(comm, path, t, nt, v, v + nt, v + 2 * nt));
  cf_free((void **)&scratch);
  cf_free((void **)&v);
  return st;
}

cf_status cf_ckpt_read_tensors(MPI_Comm comm, const char *path, const struct cf_ckpt_tensor *t,
                               int nt) {
  cf_io_h5_quiet();
  struct layout *L = NULL;
  CF_TRY(prepare(comm, t, nt, NULL, &L));
  hid_t fid;
  cf_status st = cf_io_open_read(comm, path, &fid);
  if (st == CF_OK) {
    st = read_tensors_open(comm, fid, path, t, nt, L);
    H5Fclose(fid);
  }
  cf_free((void **)&L);
  CF_TRY(st);
  return CF_OK;
}
