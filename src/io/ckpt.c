/* ckpt.c: checkpoint files: a flat list of named float32 tensors in their global shapes
 * plus root attributes, written atomically and collectively, read back with format,
 * completion, shape and checksum checks. Layout: docs/checkpoint-format.md. */
#include "calmflow/ckpt.h"

#include <stdio.h>
#include <string.h>

#include "calmflow/h5io.h"
#include "calmflow/mem.h"
#include "io/h5util.h"

#define CKPT_NAME_MAX 1024
#define CKPT_OPTIONS_MAX ((size_t)64 << 20) /* bound on the options attribute we accept */

/* The model kind of the last cf_ckpt_read_meta (meta->model_kind points here). */
static char g_model_kind[256];

uint64_t cf_ckpt_checksum(const float *x, size_t n) {
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

static cf_status check_tensor_arg(const struct cf_ckpt_tensor *t) {
  CF_TRY(check_name(t->name));
  CF_CHECK(t->ndim == 1 || t->ndim == 2, CF_EINVAL,
           "checkpoint tensor '%s' has ndim %d, expected 1 or 2", t->name, t->ndim);
  for (int k = 0; k < t->ndim; k++)
    CF_CHECK(t->shape[k] >= 1, CF_EINVAL,
             "checkpoint tensor '%s' has dimension %d = %lld, expected >= 1", t->name, k,
             (long long)t->shape[k]);
  CF_CHECK(t->data != NULL, CF_EINVAL, "checkpoint tensor '%s' has no data", t->name);
  return CF_OK;
}

static size_t tensor_count(const struct cf_ckpt_tensor *t) {
  return (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
}

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

static cf_status check_args(const struct cf_ckpt_tensor *t, int nt) {
  CF_CHECK(nt >= 0 && (nt == 0 || t != NULL), CF_EINVAL, "bad checkpoint tensor list (%d tensors)",
           nt);
  for (int i = 0; i < nt; i++) {
    CF_TRY(check_tensor_arg(&t[i]));
    size_t bytes;
    CF_TRY(cf_mul_size(&bytes, (size_t)t[i].shape[0], (size_t)(t[i].ndim == 2 ? t[i].shape[1] : 1),
                       t[i].name));
    CF_TRY(cf_mul_size(&bytes, bytes, sizeof(float), t[i].name));
  }
  return CF_OK;
}

/* Collective. Compute every tensor's checksum (into sums) and check that all ranks agree:
 * the data must be identical on every rank (data-parallel replicas). */
static cf_status checksums_agree(MPI_Comm comm, const struct cf_ckpt_tensor *t, int nt,
                                 uint64_t *sums) {
  uint64_t *mn = sums + nt, *mx = sums + 2 * nt;
  for (int i = 0; i < nt; i++)
    sums[i] = cf_ckpt_checksum(t[i].data, tensor_count(&t[i]));
  CF_MPI(MPI_Allreduce(sums, mn, nt, MPI_UINT64_T, MPI_MIN, comm));
  CF_MPI(MPI_Allreduce(sums, mx, nt, MPI_UINT64_T, MPI_MAX, comm));
  for (int i = 0; i < nt; i++)
    CF_CHECK(mn[i] == mx[i], CF_EINVAL,
             "checkpoint tensor '%s' differs between ranks (checksums disagree): replicas diverged",
             t[i].name);
  return CF_OK;
}

static cf_status write_all(struct cf_h5_writer *w, const struct cf_ckpt_meta *meta,
                           const struct cf_ckpt_tensor *t, int nt, const uint64_t *sums) {
  CF_TRY(cf_h5_writer_attr(w, "format", CF_CKPT_FORMAT));
  CF_TRY(cf_io_writer_attr_i64(w, "format_version", CF_CKPT_FORMAT_VERSION));
  CF_TRY(cf_io_writer_attr_i64(w, "step", meta->step));
  CF_TRY(cf_io_writer_attr_u64(w, "seed", meta->seed));
  CF_TRY(cf_io_writer_attr_i64(w, "world", meta->world));
  CF_TRY(cf_io_writer_attr_i64(w, "data_cursor", meta->data_cursor));
  CF_TRY(cf_h5_writer_attr(w, "options", meta->options_yaml ? meta->options_yaml : ""));
  CF_TRY(cf_h5_writer_attr(w, "model_kind", meta->model_kind ? meta->model_kind : ""));
  CF_TRY(cf_io_writer_attr_i64(w, "n_tensors", nt));
  CF_TRY(cf_h5_writer_attr(w, "checksum_algorithm", "fnv1a64-f32le"));
  char dset[CKPT_NAME_MAX + 2];
  for (int i = 0; i < nt; i++) {
    snprintf(dset, sizeof dset, "/%s", t[i].name);
    CF_TRY(cf_io_writer_put_sum(w, dset, t[i].data, t[i].ndim, t[i].shape, &sums[i]));
  }
  CF_TRY(cf_io_writer_attr_i64(w, "complete", 1)); /* last, before close */
  return CF_OK;
}

cf_status cf_ckpt_write(MPI_Comm comm, const char *path, const struct cf_ckpt_meta *meta,
                        const struct cf_ckpt_tensor *t, int nt) {
  cf_io_h5_quiet();
  cf_status st = meta != NULL
                     ? check_args(t, nt)
                     : cf_err(CF_EINVAL, "checkpoint '%s' without metadata", path ? path : "");
  CF_TRY(cf_io_agree(comm, st));
  uint64_t *sums = NULL;
  st = cf_alloc((void **)&sums, (3 * (size_t)nt + 1) * sizeof(uint64_t), "checkpoint checksums");
  CF_TRY(cf_io_agree(comm, st));
  st = cf_io_agree(comm, checksums_agree(comm, t, nt, sums));
  struct cf_h5_writer w;
  if (st == CF_OK) st = cf_h5_writer_open(&w, comm, path);
  if (st == CF_OK) {
    st = write_all(&w, meta, t, nt, sums);
    if (st == CF_OK) {
      st = cf_h5_writer_commit(&w);
    } else {
      cf_h5_writer_abort(&w);
    }
  }
  cf_free((void **)&sums);
  CF_TRY(st);
  return CF_OK;
}

/* Collective. The root attributes that make `fid` a readable, complete checkpoint. */
static cf_status check_header(hid_t fid, const char *path) {
  CF_CHECK(H5Aexists(fid, "format") > 0, CF_ECORRUPT,
           "'%s' is not a calmflow checkpoint (no 'format' attribute)", path);
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
  return CF_OK;
}

static cf_status read_meta_open(hid_t fid, const char *path, struct cf_ckpt_meta *meta,
                                char **buf) {
  CF_TRY(check_header(fid, path));
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
  st = cf_io_agree(comm, st);
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
    snprintf(msg, cap, "'%s' '%s' is not a dataset", path, t->name);
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

/* Collective. Read tensor t (already checked) into t->data on every rank and verify it. */
static cf_status read_tensor(MPI_Comm comm, hid_t fid, const char *path,
                             const struct cf_ckpt_tensor *t) {
  int rank, size;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  char dset[CKPT_NAME_MAX + 2];
  snprintf(dset, sizeof dset, "/%s", t->name);
  hsize_t dims[2] = {(hsize_t)t->shape[0], t->ndim == 2 ? (hsize_t)t->shape[1] : 1};
  int64_t rowlen = t->ndim == 2 ? t->shape[1] : 1, lo, hi;
  cf_io_row_range(t->shape[0], rank, size, &lo, &hi);
  cf_status st = CF_OK;
  hid_t did = H5Dopen2(fid, dset, H5P_DEFAULT);
  if (did < 0) {
    st = cf_err(CF_ECORRUPT, "'%s': cannot open tensor '%s'", path, t->name);
  } else {
    st = cf_io_read_rows(did, t->ndim, dims, lo, hi, H5T_NATIVE_FLOAT, t->data + lo * rowlen, path,
                         dset);
  }
  st = cf_io_agree(comm, st);
  if (st == CF_OK)
    st = cf_io_agree(comm, cf_io_allgather_rows(comm, t->data, t->shape[0], rowlen, t->name));
  uint64_t stored = 0;
  if (st == CF_OK) {
    char owner[CKPT_NAME_MAX + 32];
    snprintf(owner, sizeof owner, "tensor '%s' attribute", t->name);
    if (H5Aexists(did, "checksum") <= 0)
      st = cf_err(CF_ECORRUPT, "'%s' tensor '%s' has no checksum attribute", path, t->name);
    else
      st = cf_io_attr_get_u64(did, "checksum", path, owner, &stored);
  }
  if (st == CF_OK) {
    uint64_t got = cf_ckpt_checksum(t->data, tensor_count(t));
    if (got != stored)
      st = cf_err(CF_ECORRUPT,
                  "'%s' tensor '%s' fails its checksum (stored %016llx, computed %016llx): the "
                  "file is corrupt",
                  path, t->name, (unsigned long long)stored, (unsigned long long)got);
  }
  if (did >= 0) H5Dclose(did);
  return cf_io_agree(comm, st);
}

static cf_status read_tensors_open(MPI_Comm comm, hid_t fid, const char *path,
                                   const struct cf_ckpt_tensor *t, int nt) {
  CF_TRY(cf_io_agree(comm, check_header(fid, path)));
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
  CF_TRY(cf_io_agree(comm, st));
  for (int i = 0; i < nt; i++)
    CF_TRY(read_tensor(comm, fid, path, &t[i]));
  return CF_OK;
}

cf_status cf_ckpt_read_tensors(MPI_Comm comm, const char *path, const struct cf_ckpt_tensor *t,
                               int nt) {
  cf_io_h5_quiet();
  CF_TRY(cf_io_agree(comm, check_args(t, nt)));
  hid_t fid;
  CF_TRY(cf_io_open_read(comm, path, &fid));
  cf_status st = read_tensors_open(comm, fid, path, t, nt);
  H5Fclose(fid);
  CF_TRY(st);
  return CF_OK;
}
