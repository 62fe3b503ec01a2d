/* fuzz_h5build.c: the structured HDF5 builder of the fuzz targets (format in fuzz_common.h):
 * input bytes -> groups, datasets, attributes and links with names from the target's
 * dictionary, written with the plain (sec2) driver to the scratch file the reader then opens
 * with MPI-IO. Operations HDF5 refuses are skipped; the builder itself never fails on input. */
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/ckpt.h"
#include "fuzz_common.h"

#define MAX_OPS 160
#define MAX_VALUES 4096 /* values written per dataset; larger ones are left unwritten */

struct rd {
  const uint8_t *p;
  size_t n, i;
};

static unsigned u8(struct rd *r) {
  return r->i < r->n ? r->p[r->i++] : 0;
}

/* k bytes into dst; those past the end of the input read as 0. */
static void take(struct rd *r, void *dst, size_t k) {
  size_t have = r->n - r->i < k ? r->n - r->i : k;
  if (have) memcpy(dst, r->p + r->i, have);
  if (k > have) memset((char *)dst + have, 0, k - have);
  r->i += have;
}

static hsize_t dimval(unsigned b) {
  static const hsize_t big[16] = {65536,
                                  1u << 20,
                                  (hsize_t)1 << 31,
                                  ((hsize_t)1 << 32) + 1,
                                  (hsize_t)1 << 40,
                                  (hsize_t)1 << 62,
                                  255,
                                  256,
                                  1000,
                                  4097,
                                  (hsize_t)1 << 30,
                                  ((hsize_t)1 << 31) - 1,
                                  ((hsize_t)1 << 31) + 1,
                                  (hsize_t)1 << 33,
                                  (hsize_t)1 << 48,
                                  (hsize_t)1 << 24};
  return b < 240 ? b : big[b - 240];
}

enum {
  T_I8,
  T_U8,
  T_I16,
  T_U16,
  T_I32,
  T_U32,
  T_I64,
  T_U64,
  T_F32,
  T_F64,
  T_I32BE,
  T_F64BE,
  T_BOOL,
  T_ENUM,
  T_VSTR_UTF8,
  T_VSTR_ASCII,
  T_FSTR,
  T_REF,
  T_COMPOUND,
  T_ARRAY,
  T_CKSUM2,
  T_CKSUM1,
  T_N
};

/* A new type id for kind t (fixed strings take a width byte). */
static hid_t make_type(int t, struct rd *r) {
  hid_t x = -1;
  switch (t) {
  case T_I8:
    return H5Tcopy(H5T_STD_I8LE);
  case T_U8:
    return H5Tcopy(H5T_STD_U8LE);
  case T_I16:
    return H5Tcopy(H5T_STD_I16LE);
  case T_U16:
    return H5Tcopy(H5T_STD_U16LE);
  case T_I32:
    return H5Tcopy(H5T_STD_I32LE);
  case T_U32:
    return H5Tcopy(H5T_STD_U32LE);
  case T_I64:
    return H5Tcopy(H5T_STD_I64LE);
  case T_U64:
  case T_CKSUM2:
  case T_CKSUM1:
    return H5Tcopy(H5T_STD_U64LE);
  case T_F32:
    return H5Tcopy(H5T_IEEE_F32LE);
  case T_F64:
    return H5Tcopy(H5T_IEEE_F64LE);
  case T_I32BE:
    return H5Tcopy(H5T_STD_I32BE);
  case T_F64BE:
    return H5Tcopy(H5T_IEEE_F64BE);
  case T_BOOL: { /* h5py's bool */
    x = H5Tenum_create(H5T_NATIVE_INT8);
    int8_t v = 0;
    H5Tenum_insert(x, "FALSE", &v);
    v = 1;
    H5Tenum_insert(x, "TRUE", &v);
    return x;
  }
  case T_ENUM: {
    x = H5Tenum_create(H5T_STD_I16LE);
    const char *nm[3] = {"a", "b", "c"};
    for (int16_t v = 0; v < 3; v++) {
      int16_t le = v;
      H5Tenum_insert(x, nm[v], &le);
    }
    return x;
  }
  case T_VSTR_UTF8:
  case T_VSTR_ASCII:
    x = H5Tcopy(H5T_C_S1);
    H5Tset_size(x, H5T_VARIABLE);
    H5Tset_cset(x, t == T_VSTR_UTF8 ? H5T_CSET_UTF8 : H5T_CSET_ASCII);
    return x;
  case T_FSTR: {
    unsigned b = u8(r);
    x = H5Tcopy(H5T_C_S1);
    H5Tset_size(x, 1 + (b & 31));
    H5Tset_strpad(x, (b >> 5) % 3 == 0   ? H5T_STR_NULLTERM
                     : (b >> 5) % 3 == 1 ? H5T_STR_NULLPAD
                                         : H5T_STR_SPACEPAD);
    H5Tset_cset(x, b & 0x80 ? H5T_CSET_UTF8 : H5T_CSET_ASCII);
    return x;
  }
  case T_REF:
    return H5Tcopy(H5T_STD_REF_OBJ);
  case T_COMPOUND:
    x = H5Tcreate(H5T_COMPOUND, 12);
    H5Tinsert(x, "a", 0, H5T_STD_I32LE);
    H5Tinsert(x, "b", 4, H5T_IEEE_F64LE);
    return x;
  case T_ARRAY: {
    hsize_t two = 2;
    return H5Tarray_create2(H5T_IEEE_F32LE, 1, &two);
  }
  default:
    return -1;
  }
}

/* Values of n elements of type t (file type ft) into a buffer: fixed-size types take raw
 * bytes, strings a dictionary entry or raw bytes, references a dictionary path. The buffer
 * layout is the file type's, except variable-length strings (char pointers into strs_out). */
static void *make_values(int t, hid_t ft, size_t n, struct rd *r, hid_t fid,
                         const struct cf_fuzz_dict *d, char *strs_out, size_t strs_cap) {
  size_t sz = H5Tget_size(ft);
  if (t == T_VSTR_UTF8 || t == T_VSTR_ASCII) {
    char **p = calloc(n ? n : 1, sizeof *p);
    size_t used = 0;
    for (size_t i = 0; i < n && p; i++) {
      unsigned b = u8(r);
      if (b < 0xf0 && d->nstrs > 0) {
        p[i] = (char *)d->strs[b % (unsigned)d->nstrs];
      } else if (used + 65 <= strs_cap) {
        size_t len = u8(r) % 64;
        take(r, strs_out + used, len);
        strs_out[used + len] = '\0';
        p[i] = strs_out + used;
        used += len + 1;
      } else {
        p[i] = (b & 1) ? NULL : ""; /* NULL: HDF5 stores an empty / null string */
      }
    }
    return p;
  }
  char *buf = calloc(n ? n : 1, sz ? sz : 1);
  if (buf == NULL) return NULL;
  if (t == T_FSTR) {
    for (size_t i = 0; i < n; i++) {
      unsigned b = u8(r);
      if (b < 0x80 && d->nstrs > 0) {
        const char *s = d->strs[b % (unsigned)d->nstrs];
        size_t len = strlen(s);
        memcpy(buf + i * sz, s, len < sz ? len : sz);
      } else {
        take(r, buf + i * sz, sz);
      }
    }
  } else if (t == T_REF) {
    for (size_t i = 0; i < n; i++) {
      unsigned b = u8(r);
      const char *target = b % (unsigned)(d->npaths + 1) == (unsigned)d->npaths
                               ? "/"
                               : d->paths[b % (unsigned)(d->npaths + 1)];
      hobj_ref_t ref = 0;
      if (H5Lexists(fid, target, H5P_DEFAULT) > 0 || strcmp(target, "/") == 0)
        H5Rcreate(&ref, fid, target, H5R_OBJECT, -1);
      memcpy(buf + i * sz, &ref, sizeof ref < sz ? sizeof ref : sz);
    }
  } else {
    take(r, buf, n * sz);
  }
  return buf;
}

static uint64_t fnv1a64(const float *x, size_t n) {
  const uint8_t *p = (const uint8_t *)x;
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < 4 * n; i++) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

/* The checkpoint checksum (version 2 or 1) of dataset obj read as float32; 0 when it cannot be
 * read. */
static uint64_t dataset_checksum(hid_t obj, int version) {
  if (H5Iget_type(obj) != H5I_DATASET) return 0;
  hid_t sp = H5Dget_space(obj);
  int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  hsize_t dims[8] = {0};
  hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
  if (nd >= 1 && nd <= 8) H5Sget_simple_extent_dims(sp, dims, NULL);
  if (sp >= 0) H5Sclose(sp);
  if (nd < 1 || nd > 2 || np <= 0 || np > MAX_VALUES) return 0;
  float *x = calloc((size_t)np, sizeof *x);
  uint64_t s = 0;
  if (x && H5Dread(obj, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0) {
    int64_t cols = nd == 2 ? (int64_t)dims[1] : 1, rows = (int64_t)dims[0];
    s = version == 2 ? cf_ckpt_checksum(x, cols, 0, 0, rows, cols) : fnv1a64(x, (size_t)np);
  }
  free(x);
  return s;
}

static const char *pick_path(const struct cf_fuzz_dict *d, unsigned b) {
  return d->paths[b % (unsigned)d->npaths];
}

static void op_dataset(hid_t fid, struct rd *r, const struct cf_fuzz_dict *d) {
  const char *path = pick_path(d, u8(r));
  int t = (int)(u8(r) % T_N);
  if (t == T_CKSUM1 || t == T_CKSUM2) t = T_U64;
  int nd = (int)(u8(r) % 4);
  hsize_t dims[3] = {0}, maxd[3], chunk[3];
  int huge = 0;
  size_t total = 1;
  for (int k = 0; k < nd; k++) {
    dims[k] = dimval(u8(r));
    if (dims[k] > (1u << 20)) huge = 1;
    total = huge ? 0 : total * (size_t)dims[k];
  }
  unsigned flags = u8(r);
  int chunked = nd > 0 && ((flags & 1) || huge);
  for (int k = 0; k < nd; k++) {
    maxd[k] = H5S_UNLIMITED;
    chunk[k] = dims[k] == 0 ? 1 : dims[k] < 16 ? dims[k] : 16;
  }
  hid_t ft = make_type(t, r);
  hid_t sp = nd == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(nd, dims, chunked ? maxd : NULL);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE), dcpl = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  if (chunked) {
    H5Pset_chunk(dcpl, nd, chunk);
    if (flags & 2) H5Pset_deflate(dcpl, 1);
  }
  hid_t did = ft >= 0 && sp >= 0 ? H5Dcreate2(fid, path, ft, sp, lcpl, dcpl, H5P_DEFAULT) : -1;
  if (did >= 0 && !huge && total > 0 && total <= MAX_VALUES && !(flags & 4)) {
    static char strs[MAX_VALUES * 16];
    void *v = make_values(t, ft, total, r, fid, d, strs, sizeof strs);
    hid_t mt = ft;
    if (v) H5Dwrite(did, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, v);
    free(v);
  }
  if (did >= 0) H5Dclose(did);
  H5Pclose(dcpl);
  H5Pclose(lcpl);
  if (sp >= 0) H5Sclose(sp);
  if (ft >= 0) H5Tclose(ft);
}

static void op_attribute(hid_t fid, struct rd *r, const struct cf_fuzz_dict *d) {
  unsigned ob = u8(r) % (unsigned)(d->npaths + 1);
  const char *obj_path = ob == (unsigned)d->npaths ? "/" : d->paths[ob];
  const char *name = d->attrs[u8(r) % (unsigned)d->nattrs];
  int t = (int)(u8(r) % T_N);
  unsigned shape = u8(r);
  int nd = (int)(shape % 3);
  hsize_t dims[2] = {(shape >> 2) % 9, (shape >> 6) % 4};
  if (t == T_CKSUM1 || t == T_CKSUM2) nd = 0;
  size_t total = nd == 0 ? 1 : nd == 1 ? (size_t)dims[0] : (size_t)(dims[0] * dims[1]);
  if (strcmp(obj_path, "/") != 0 && H5Lexists(fid, obj_path, H5P_DEFAULT) <= 0) return;
  hid_t obj = H5Oopen(fid, obj_path, H5P_DEFAULT);
  if (obj < 0) return;
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  hid_t ft = make_type(t, r);
  hid_t sp = nd == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(nd, dims, NULL);
  hid_t a = ft >= 0 && sp >= 0 ? H5Acreate2(obj, name, ft, sp, H5P_DEFAULT, H5P_DEFAULT) : -1;
  if (a >= 0 && (t == T_CKSUM1 || t == T_CKSUM2)) {
    uint64_t s = dataset_checksum(obj, t == T_CKSUM2 ? 2 : 1);
    H5Awrite(a, H5T_NATIVE_UINT64, &s);
  } else if (a >= 0 && total > 0 && !(shape & 0x20 && nd > 0 && t >= T_VSTR_UTF8)) {
    static char strs[64 * 80];
    void *v = make_values(t, ft, total, r, fid, d, strs, sizeof strs);
    if (v) H5Awrite(a, ft, v);
    free(v);
  }
  if (a >= 0) H5Aclose(a);
  if (sp >= 0) H5Sclose(sp);
  if (ft >= 0) H5Tclose(ft);
  H5Oclose(obj);
}

static void op_link(hid_t fid, struct rd *r, const struct cf_fuzz_dict *d) {
  unsigned b = u8(r);
  const char *from = pick_path(d, u8(r)), *to = pick_path(d, u8(r));
  if (H5Lexists(fid, from, H5P_DEFAULT) > 0) return;
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  char target[512];
  snprintf(target, sizeof target, "%s%s", b & 2 ? "/" : "", b & 4 ? "/" : to);
  if (b & 1)
    H5Lcreate_soft(target, fid, from, lcpl, H5P_DEFAULT);
  else
    H5Lcreate_hard(fid, target, fid, from, lcpl, H5P_DEFAULT);
  H5Pclose(lcpl);
}

int cf_fuzz_h5_build(const char *path, const struct cf_fuzz_dict *dict, const uint8_t *data,
                     size_t n) {
  struct rd r = {data, n, 0};
  unsigned mode = u8(&r);
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  if (mode & 1) H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
  hid_t fid = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  if (fid < 0) {
    fprintf(stderr, "cf_fuzz: cannot create '%s'\n", path);
    return -1;
  }
  for (int ops = 0; ops < MAX_OPS && r.i < r.n; ops++) {
    switch (u8(&r) % 4) {
    case 0: {
      const char *g = pick_path(dict, u8(&r));
      hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
      H5Pset_create_intermediate_group(lcpl, 1);
      hid_t gid = H5Gcreate2(fid, g, lcpl, H5P_DEFAULT, H5P_DEFAULT);
      if (gid >= 0) H5Gclose(gid);
      H5Pclose(lcpl);
      break;
    }
    case 1:
      op_dataset(fid, &r, dict);
      break;
    case 2:
      op_attribute(fid, &r, dict);
      break;
    default:
      op_link(fid, &r, dict);
      break;
    }
  }
  H5Fclose(fid);
  return 0;
}
