/* h5ad.c: the AnnData .h5ad reader (see calmflow/h5ad.h): opening and checking the layout,
 * X rows as dense float32 from CSR, CSC or dense storage in bounded pieces with collective
 * transfers, the streaming scan, and obs / var columns (array, string-array, categorical old
 * and new, nullable) as strings, numbers or codes. */
#include "calmflow/h5ad.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/mem.h"
#include "io/h5util.h"

#define PIECE_DEFAULT ((int64_t)1 << 20)
#define SCAN_FLOATS ((int64_t)1 << 24)
#define ATTR_MAX 256
#define WHERE_MAX 512

/* ---- element kinds: the numeric types the reader converts ---- */

enum nk { NK_NONE, NK_I8, NK_U8, NK_I16, NK_U16, NK_I32, NK_U32, NK_I64, NK_U64, NK_F32, NK_F64 };
static const char *const nk_names[] = {"?",      "int8",  "uint8",  "int16",   "uint16", "int32",
                                       "uint32", "int64", "uint64", "float32", "float64"};
static const size_t nk_sizes[] = {1, 1, 1, 2, 2, 4, 4, 8, 8, 4, 8};

static hid_t nk_mem(int k) {
  switch (k) {
  case NK_I8:
    return H5T_NATIVE_INT8;
  case NK_U8:
    return H5T_NATIVE_UINT8;
  case NK_I16:
    return H5T_NATIVE_INT16;
  case NK_U16:
    return H5T_NATIVE_UINT16;
  case NK_I32:
    return H5T_NATIVE_INT32;
  case NK_U32:
    return H5T_NATIVE_UINT32;
  case NK_I64:
    return H5T_NATIVE_INT64;
  case NK_U64:
    return H5T_NATIVE_UINT64;
  case NK_F32:
    return H5T_NATIVE_FLOAT;
  default:
    return H5T_NATIVE_DOUBLE;
  }
}

static int nk_is_int(int k) {
  return k >= NK_I8 && k <= NK_U64;
}

/* The element kind of HDF5 type t (NK_NONE: not a number). Enums count as their base
 * integer; *is_bool says whether t is h5py's bool (an enum of two members over one byte). */
static int nk_of(hid_t t, int *is_bool) {
  if (is_bool) *is_bool = 0;
  H5T_class_t c = H5Tget_class(t);
  size_t s = H5Tget_size(t);
  if (c == H5T_ENUM) {
    hid_t base = H5Tget_super(t);
    int k = base >= 0 ? nk_of(base, NULL) : NK_NONE;
    if (base >= 0) H5Tclose(base);
    if (is_bool && s == 1 && H5Tget_nmembers(t) == 2) *is_bool = 1;
    return k;
  }
  if (c == H5T_INTEGER) {
    int sgn = H5Tget_sign(t) != H5T_SGN_NONE;
    switch (s) {
    case 1:
      return sgn ? NK_I8 : NK_U8;
    case 2:
      return sgn ? NK_I16 : NK_U16;
    case 4:
      return sgn ? NK_I32 : NK_U32;
    case 8:
      return sgn ? NK_I64 : NK_U64;
    default:
      return NK_NONE;
    }
  }
  if (c == H5T_FLOAT) return s == 4 ? NK_F32 : s == 8 ? NK_F64 : NK_NONE;
  return NK_NONE;
}

/* A few words on an HDF5 type, for messages. */
static const char *type_words(hid_t t) {
  switch (H5Tget_class(t)) {
  case H5T_INTEGER:
    return "an integer type of unusual size";
  case H5T_FLOAT:
    return "a float type of unusual size (float16?)";
  case H5T_STRING:
    return "strings";
  case H5T_COMPOUND:
    return "a compound type";
  case H5T_REFERENCE:
    return "references";
  case H5T_ENUM:
    return "an enum over a non-integer type";
  case H5T_VLEN:
    return "variable-length sequences";
  case H5T_ARRAY:
    return "an array type";
  case H5T_OPAQUE:
    return "an opaque type";
  default:
    return "an unknown type";
  }
}

static double nk_get(const void *b, int k, size_t i) {
  switch (k) {
  case NK_I8:
    return ((const int8_t *)b)[i];
  case NK_U8:
    return ((const uint8_t *)b)[i];
  case NK_I16:
    return ((const int16_t *)b)[i];
  case NK_U16:
    return ((const uint16_t *)b)[i];
  case NK_I32:
    return ((const int32_t *)b)[i];
  case NK_U32:
    return ((const uint32_t *)b)[i];
  case NK_I64:
    return (double)((const int64_t *)b)[i];
  case NK_U64:
    return (double)((const uint64_t *)b)[i];
  case NK_F32:
    return ((const float *)b)[i];
  default:
    return ((const double *)b)[i];
  }
}

/* Integer element i (index arrays); a uint64 above INT64_MAX reads as -1 (out of range). */
static int64_t nk_geti(const void *b, int k, size_t i) {
  switch (k) {
  case NK_I8:
    return ((const int8_t *)b)[i];
  case NK_U8:
    return ((const uint8_t *)b)[i];
  case NK_I16:
    return ((const int16_t *)b)[i];
  case NK_U16:
    return ((const uint16_t *)b)[i];
  case NK_I32:
    return ((const int32_t *)b)[i];
  case NK_U32:
    return ((const uint32_t *)b)[i];
  case NK_I64:
    return ((const int64_t *)b)[i];
  case NK_U64: {
    uint64_t u = ((const uint64_t *)b)[i];
    return u > (uint64_t)INT64_MAX ? -1 : (int64_t)u;
  }
  default:
    return -1;
  }
}

/* ---- small HDF5 helpers ---- */

static void close_id(int64_t *id) {
  if (*id >= 0) {
    H5Oclose((hid_t)*id);
    *id = -1;
  }
}

/* Does link `name` exist under loc (intermediate links included)? */
static int has_link(hid_t loc, const char *name) {
  return H5Lexists(loc, name, H5P_DEFAULT) > 0;
}

/* The type of the object at `name` under loc: H5I_GROUP, H5I_DATASET, or H5I_BADID (missing,
 * unreadable or something else). Works the same on HDF5 1.10 and 1.12+. */
static H5I_type_t obj_type(hid_t loc, const char *name) {
  if (!has_link(loc, name)) return H5I_BADID;
  hid_t o = H5Oopen(loc, name, H5P_DEFAULT);
  if (o < 0) return H5I_BADID;
  H5I_type_t t = H5Iget_type(o);
  H5Oclose(o);
  return t == H5I_GROUP || t == H5I_DATASET ? t : H5I_BADID;
}

/* Read string attribute key of obj into buf ("" and *present = 0 when absent): one string,
 * variable or fixed length, ASCII or UTF-8 (h5py writes UTF-8, which the io layer's ASCII
 * reader cannot convert). */
static cf_status attr_str(hid_t obj, const char *key, const char *file, const char *where,
                          char *buf, size_t cap, int *present) {
  buf[0] = '\0';
  if (present) *present = 0;
  if (H5Aexists(obj, key) <= 0) return CF_OK;
  hid_t at = H5Aopen(obj, key, H5P_DEFAULT);
  hid_t ft = at >= 0 ? H5Aget_type(at) : -1, sp = at >= 0 ? H5Aget_space(at) : -1;
  hid_t mt = H5Tcopy(H5T_C_S1);
  hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
  cf_status st = CF_OK;
  if (ft < 0 || mt < 0 || H5Tget_class(ft) != H5T_STRING || np != 1) {
    st = cf_err(CF_ECORRUPT, "'%s' %s attribute '%s' is not a single string", file, where, key);
  } else if (H5Tis_variable_str(ft) > 0) {
    char *v = NULL;
    if (H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Tset_cset(mt, H5Tget_cset(ft)) < 0 ||
        H5Aread(at, mt, &v) < 0)
      st = cf_err(CF_ECORRUPT, "'%s': cannot read %s attribute '%s'", file, where, key);
    else if (v && strlen(v) >= cap)
      st = cf_err(CF_ECORRUPT, "'%s' %s attribute '%s' is too long (%zu bytes)", file, where, key,
                  strlen(v));
    else
      snprintf(buf, cap, "%s", v ? v : "");
    if (v) H5free_memory(v);
  } else {
    size_t w = H5Tget_size(ft);
    char tmp[ATTR_MAX + 1] = {0};
    if (w == 0 || w >= cap || w > ATTR_MAX)
      st = cf_err(CF_ECORRUPT, "'%s' %s attribute '%s' is too long (%zu bytes)", file, where, key,
                  w);
    else if (H5Tset_size(mt, w) < 0 || H5Tset_cset(mt, H5Tget_cset(ft)) < 0 ||
             H5Tset_strpad(mt, H5Tget_strpad(ft)) < 0 || H5Aread(at, mt, tmp) < 0)
      st = cf_err(CF_ECORRUPT, "'%s': cannot read %s attribute '%s'", file, where, key);
    else
      snprintf(buf, cap, "%.*s", (int)w, tmp);
  }
  if (mt >= 0) H5Tclose(mt);
  if (sp >= 0) H5Sclose(sp);
  if (ft >= 0) H5Tclose(ft);
  if (at >= 0) H5Aclose(at);
  if (st == CF_OK && present) *present = 1;
  return st;
}

/* encoding-type / encoding-version of obj ("" when absent; a type without a version is an
 * error). */
static cf_status encoding(hid_t obj, const char *file, const char *where, char *type, char *ver) {
  int has_t, has_v;
  CF_TRY(attr_str(obj, "encoding-type", file, where, type, ATTR_MAX, &has_t));
  CF_TRY(attr_str(obj, "encoding-version", file, where, ver, ATTR_MAX, &has_v));
  CF_CHECK(!has_t || has_v, CF_ECORRUPT,
           "'%s' %s: encoding-type '%s' without an encoding-version attribute", file, where, type);
  return CF_OK;
}

/* The version of encoding `type` must be one of the listed ones ("a" or "a or b"). */
static cf_status check_version(const char *file, const char *where, const char *type,
                               const char *ver, const char *v1, const char *v2) {
  if (strcmp(ver, v1) == 0 || (v2 && strcmp(ver, v2) == 0)) return CF_OK;
  return cf_err(CF_ECORRUPT, "'%s' %s: %s encoding-version '%s' not supported (expected %s%s%s)",
                file, where, type, ver, v1, v2 ? " or " : "", v2 ? v2 : "");
}

/* Integer attribute key of obj with exactly n elements (shape, h5sparse_shape). */
static cf_status attr_i64s(hid_t obj, const char *key, int n, const char *file, const char *where,
                           int64_t *out) {
  CF_CHECK(H5Aexists(obj, key) > 0, CF_ECORRUPT, "'%s' %s has no attribute '%s'", file, where, key);
  hid_t at = H5Aopen(obj, key, H5P_DEFAULT);
  hid_t ft = at >= 0 ? H5Aget_type(at) : -1, sp = at >= 0 ? H5Aget_space(at) : -1;
  hssize_t np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
  cf_status st = CF_OK;
  if (ft < 0 || H5Tget_class(ft) != H5T_INTEGER || np != n)
    st = cf_err(CF_ECORRUPT, "'%s' %s attribute '%s' is not %d integers", file, where, key, n);
  else if (H5Aread(at, H5T_NATIVE_INT64, out) < 0)
    st = cf_err(CF_ECORRUPT, "'%s': cannot read %s attribute '%s'", file, where, key);
  if (sp >= 0) H5Sclose(sp);
  if (ft >= 0) H5Tclose(ft);
  if (at >= 0) H5Aclose(at);
  return st;
}

/* Open dataset `name` under loc (where = its full path, for messages); it must have `ndim`
 * dimensions, written to dims. */
static cf_status open_dset(hid_t loc, const char *name, const char *file, const char *where,
                           int ndim, hsize_t *dims, hid_t *d) {
  *d = -1;
  CF_CHECK(has_link(loc, name), CF_ECORRUPT, "'%s' has no %s", file, where);
  CF_CHECK(obj_type(loc, name) == H5I_DATASET, CF_ECORRUPT, "'%s' %s is not a dataset", file,
           where);
  *d = H5Dopen2(loc, name, H5P_DEFAULT);
  CF_CHECK(*d >= 0, CF_ECORRUPT, "'%s': cannot open %s", file, where);
  hid_t sp = H5Dget_space(*d);
  int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  if (nd == ndim) H5Sget_simple_extent_dims(sp, dims, NULL);
  if (sp >= 0) H5Sclose(sp);
  cf_status st = nd == ndim ? cf_io_check_dset(*d, file, where, NULL) /* extent vs the file */
                            : cf_err(CF_ECORRUPT, "'%s' %s has %d dimensions, expected %d", file,
                                     where, nd, ndim);
  if (st != CF_OK) {
    H5Dclose(*d);
    *d = -1;
  }
  return st;
}

/* The element kind of dataset d (numbers only); `ints` requires an integer type. */
static cf_status dset_kind(hid_t d, const char *file, const char *where, int ints, int *kind,
                           int *is_bool) {
  hid_t t = H5Dget_type(d);
  CF_CHECK(t >= 0, CF_ECORRUPT, "'%s': cannot read the type of %s", file, where);
  int k = nk_of(t, is_bool);
  const char *words = type_words(t);
  H5Tclose(t);
  if (ints)
    CF_CHECK(nk_is_int(k), CF_ECORRUPT, "'%s' %s holds %s, expected integers", file, where,
             k ? nk_names[k] : words);
  else
    CF_CHECK(k != NK_NONE, CF_ECORRUPT, "'%s' %s holds %s, expected numbers", file, where, words);
  *kind = k;
  return CF_OK;
}

/* Collective (a transfer with the collective property). The whole of dataset d in memtype. */
static cf_status read_whole(hid_t d, hid_t memtype, void *buf, const char *file,
                            const char *where) {
  char why[256];
  hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
  herr_t e = dxpl >= 0 ? H5Pset_dxpl_mpio(dxpl, H5FD_MPIO_COLLECTIVE) : -1;
  if (e >= 0) e = H5Dread(d, memtype, H5S_ALL, H5S_ALL, dxpl, buf);
  if (dxpl >= 0) H5Pclose(dxpl);
  CF_CHECK(e >= 0, CF_ECORRUPT, "cannot read %s of '%s': %s", where, file,
           cf_io_h5_reason(why, sizeof why));
  return CF_OK;
}

/* ---- string arrays: one cf_alloc block, n pointers then the bytes ---- */

static cf_status pack_strings(char *const *src, const size_t *len, int64_t n, char ***out) {
  size_t total = (size_t)n * sizeof(char *);
  for (int64_t i = 0; i < n; i++)
    total += len[i] + 1;
  char **p = NULL;
  CF_TRY(cf_alloc((void **)&p, total ? total : 1, "string array"));
  char *bytes = (char *)(p + n);
  for (int64_t i = 0; i < n; i++) {
    p[i] = bytes;
    if (len[i]) memcpy(bytes, src[i], len[i]);
    bytes[len[i]] = '\0';
    bytes += len[i] + 1;
  }
  *out = p;
  return CF_OK;
}

/* Collective. 1-D string dataset d of n entries (variable or fixed length) into *out. */
static cf_status read_strings_dset(hid_t d, hid_t ft, int64_t n, const char *file,
                                   const char *where, char ***out) {
  *out = NULL;
  char **raw = NULL;
  size_t *len = NULL;
  char *fixed = NULL;
  size_t nb = 0;
  cf_status st = cf_io_check_alloc((uint64_t)(n ? n : 1), sizeof(char *), file, where, &nb);
  if (st == CF_OK) st = cf_alloc((void **)&raw, nb, "string pointers");
  if (st == CF_OK) st = cf_alloc((void **)&len, (size_t)(n ? n : 1) * sizeof(size_t), "lengths");
  hid_t mt = H5Tcopy(H5T_C_S1);
  int vlen = H5Tis_variable_str(ft) > 0;
  if (st == CF_OK && mt < 0) st = cf_err(CF_EIO, "cannot make a string type for %s", where);
  if (st == CF_OK && vlen) {
    if (H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Tset_cset(mt, H5Tget_cset(ft)) < 0)
      st = cf_err(CF_EIO, "cannot make a string type for %s", where);
    if (st == CF_OK && n > 0) st = read_whole(d, mt, raw, file, where);
    for (int64_t i = 0; st == CF_OK && i < n; i++)
      len[i] = raw[i] ? strlen(raw[i]) : 0;
    if (st == CF_OK) st = pack_strings(raw, len, n, out);
    for (int64_t i = 0; raw && i < n; i++) /* the strings HDF5 allocated */
      if (raw[i]) H5free_memory(raw[i]);
  } else if (st == CF_OK) {
    size_t w = H5Tget_size(ft);
    H5T_str_t pad = H5Tget_strpad(ft);
    if (H5Tset_size(mt, w) < 0 || H5Tset_strpad(mt, pad) < 0 ||
        H5Tset_cset(mt, H5Tget_cset(ft)) < 0)
      st = cf_err(CF_EIO, "cannot make a string type for %s", where);
    size_t bytes = 0;
    if (st == CF_OK) st = cf_io_check_alloc((uint64_t)n, w, file, where, &bytes);
    if (st == CF_OK) st = cf_alloc((void **)&fixed, bytes ? bytes : 1, "fixed-length strings");
    if (st == CF_OK && n > 0) st = read_whole(d, mt, fixed, file, where);
    for (int64_t i = 0; st == CF_OK && i < n; i++) {
      raw[i] = fixed + (size_t)i * w;
      size_t l = 0;
      while (l < w && raw[i][l] != '\0')
        l++;
      if (pad == H5T_STR_SPACEPAD)
        while (l > 0 && raw[i][l - 1] == ' ')
          l--;
      len[i] = l;
    }
    if (st == CF_OK) st = pack_strings(raw, len, n, out);
  }
  if (mt >= 0) H5Tclose(mt);
  cf_free((void **)&fixed);
  cf_free((void **)&len);
  cf_free((void **)&raw);
  return st;
}

/* ---- values: a 1-D dataset of numbers, booleans or strings ---- */

struct vals {
  enum cf_h5ad_kind kind; /* NUMERIC, BOOLEAN or STRING */
  int64_t n;
  int nk;      /* numbers: element kind on disk */
  double *num; /* (n) NUMERIC / BOOLEAN */
  char **str;  /* (n) STRING */
};

static void vals_free(struct vals *v) {
  cf_free((void **)&v->num);
  cf_free((void **)&v->str);
}

/* Kind of 1-D dataset d without reading it; *n its length. */
static cf_status vals_kind(hid_t d, const char *file, const char *where, enum cf_h5ad_kind *kind,
                           int64_t *n) {
  hid_t sp = H5Dget_space(d);
  int nd = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
  hsize_t dim = 0;
  if (nd == 1) H5Sget_simple_extent_dims(sp, &dim, NULL);
  if (sp >= 0) H5Sclose(sp);
  CF_CHECK(nd == 1, CF_ECORRUPT, "'%s' %s has %d dimensions, expected 1", file, where, nd);
  CF_TRY(cf_io_check_dset(d, file, where, NULL)); /* before anything is sized by it */
  *n = (int64_t)dim;
  hid_t t = H5Dget_type(d);
  CF_CHECK(t >= 0, CF_ECORRUPT, "'%s': cannot read the type of %s", file, where);
  int is_bool = 0;
  int k = nk_of(t, &is_bool);
  H5T_class_t c = H5Tget_class(t);
  const char *words = type_words(t);
  H5Tclose(t);
  if (c == H5T_STRING)
    *kind = CF_H5AD_STRING;
  else if (k != NK_NONE)
    *kind = is_bool ? CF_H5AD_BOOLEAN : CF_H5AD_NUMERIC;
  else
    return cf_err(CF_ECORRUPT, "'%s' %s holds %s, expected numbers, booleans or strings", file,
                  where, words);
  return CF_OK;
}

/* Collective. Read 1-D dataset d; expect_n >= 0 requires that many entries (`of` names what
 * it must match, e.g. "n_obs"). */
static cf_status vals_read(hid_t d, const char *file, const char *where, int64_t expect_n,
                           const char *of, struct vals *v) {
  memset(v, 0, sizeof *v);
  CF_TRY(vals_kind(d, file, where, &v->kind, &v->n));
  CF_CHECK(expect_n < 0 || v->n == expect_n, CF_ECORRUPT,
           "'%s' %s has %lld entries, expected %lld (%s)", file, where, (long long)v->n,
           (long long)expect_n, of);
  hid_t t = H5Dget_type(d);
  CF_CHECK(t >= 0, CF_ECORRUPT, "'%s': cannot read the type of %s", file, where);
  cf_status st = CF_OK;
  if (v->kind == CF_H5AD_STRING) {
    st = read_strings_dset(d, t, v->n, file, where, &v->str);
  } else {
    v->nk = nk_of(t, NULL);
    void *raw = NULL;
    size_t n = (size_t)(v->n ? v->n : 1), bytes = 0;
    st = cf_io_check_alloc(n, sizeof(double), file, where, &bytes);
    if (st == CF_OK) st = cf_alloc(&raw, n * nk_sizes[v->nk], "column values");
    if (st == CF_OK) st = cf_alloc((void **)&v->num, bytes, "column values");
    if (st == CF_OK && v->n > 0) st = read_whole(d, nk_mem(v->nk), raw, file, where);
    for (int64_t i = 0; st == CF_OK && i < v->n; i++)
      v->num[i] = nk_get(raw, v->nk, (size_t)i);
    cf_free(&raw);
  }
  H5Tclose(t);
  if (st != CF_OK) vals_free(v);
  return st;
}

/* Shortest text of number x that reads back to the stored value. */
static void fmt_num(char *buf, size_t cap, double x, int nk, int is_bool) {
  if (is_bool) {
    snprintf(buf, cap, "%s", x != 0 ? "True" : "False");
  } else if (isnan(x)) {
    snprintf(buf, cap, "nan");
  } else if (isinf(x)) {
    snprintf(buf, cap, "%s", x > 0 ? "inf" : "-inf");
  } else if (nk_is_int(nk)) {
    snprintf(buf, cap, "%.0f", x);
  } else {
    int maxp = nk == NK_F32 ? 9 : 17;
    for (int p = 1; p <= maxp; p++) {
      snprintf(buf, cap, "%.*g", p, x);
      double back = strtod(buf, NULL);
      if (nk == NK_F32 ? (float)back == (float)x : back == x) break;
    }
  }
}

/* Entry i of v as text into buf (strings point into v, numbers into buf). */
static const char *vals_text(const struct vals *v, int64_t i, char *buf, size_t cap) {
  if (v->kind == CF_H5AD_STRING) return v->str[i];
  fmt_num(buf, cap, v->num[i], v->nk, v->kind == CF_H5AD_BOOLEAN);
  return buf;
}

/* String s as a number; 0 when it is not one. */
static int parse_num(const char *s, double *x) {
  if (s == NULL || s[0] == '\0') return 0;
  char *end = NULL;
  errno = 0;
  *x = strtod(s, &end);
  return end != NULL && *end == '\0' && end != s;
}

/* ---- columns ---- */

enum layout { L_PLAIN = 1, L_CAT, L_OLDCAT, L_NULLABLE };

struct colref {
  enum layout layout;
  enum cf_h5ad_kind kind;
  hid_t values;          /* PLAIN: the dataset; CAT / OLDCAT: codes; NULLABLE: values */
  hid_t aux;             /* CAT / OLDCAT: categories; NULLABLE: mask */
  hid_t group;           /* CAT / NULLABLE: the column's group */
  int64_t n;             /* entries */
  int64_t expect;        /* n_obs or n_var */
  const char *of;        /* "n_obs" / "n_var" */
  char where[WHERE_MAX]; /* "/obs/Well" */
};

static void col_close(struct colref *c) {
  if (c->values >= 0) H5Dclose(c->values);
  if (c->aux >= 0) H5Dclose(c->aux);
  if (c->group >= 0) H5Gclose(c->group);
  c->values = c->aux = c->group = -1;
}

static cf_status frame_check(const struct cf_h5ad *a, const char *frame) {
  CF_CHECK(a->file >= 0, CF_EINVAL, "h5ad reader used after close");
  CF_CHECK(frame != NULL && (strcmp(frame, "obs") == 0 || strcmp(frame, "var") == 0), CF_EINVAL,
           "'%s': h5ad frame '%s' is not obs or var", a->path, frame ? frame : "(null)");
  return CF_OK;
}

/* Local (metadata reads, identical on all ranks). The name of frame's index dataset. */
static cf_status frame_index_name(hid_t fid, const char *file, const char *frame, char *name) {
  char where[WHERE_MAX];
  snprintf(where, sizeof where, "/%s", frame);
  hid_t g = H5Gopen2(fid, frame, H5P_DEFAULT);
  CF_CHECK(g >= 0, CF_ECORRUPT, "'%s': cannot open %s", file, where);
  int present = 0;
  cf_status st = attr_str(g, "_index", file, where, name, ATTR_MAX, &present);
  if (st == CF_OK && !present)
    snprintf(name, ATTR_MAX, "%s", has_link(g, "index") ? "index" : "_index");
  H5Gclose(g);
  return st;
}

/* Open column `name` of frame (NULL: the index) and classify it. */
static cf_status col_open(struct cf_h5ad *a, const char *frame, const char *name,
                          struct colref *c) {
  memset(c, 0, sizeof *c);
  c->values = c->aux = c->group = -1;
  CF_TRY(frame_check(a, frame));
  hid_t fid = (hid_t)a->file;
  const char *file = a->path;
  c->expect = frame[0] == 'o' ? a->n_obs : a->n_var;
  c->of = frame[0] == 'o' ? "n_obs" : "n_var";
  char idx[ATTR_MAX];
  if (name == NULL) {
    CF_TRY(frame_index_name(fid, file, frame, idx));
    name = idx;
  }
  CF_CHECK(name[0] != '\0' && strchr(name, '/') == NULL && strcmp(name, ".") != 0 &&
               strcmp(name, "..") != 0,
           CF_EINVAL, "'%s': column name '%s' of %s is not a plain name", file, name, frame);
  snprintf(c->where, sizeof c->where, "/%s/%s", frame, name);
  char rel[WHERE_MAX];
  snprintf(rel, sizeof rel, "%s/%s", frame, name);
  CF_CHECK(has_link(fid, frame) && has_link(fid, rel), CF_EINVAL, "'%s' has no column %s", file,
           c->where);
  H5I_type_t ot = obj_type(fid, rel);
  char type[ATTR_MAX], ver[ATTR_MAX];
  cf_status st = CF_OK;
  if (ot == H5I_GROUP) {
    c->group = H5Gopen2(fid, rel, H5P_DEFAULT);
    CF_CHECK(c->group >= 0, CF_ECORRUPT, "'%s': cannot open %s", file, c->where);
    st = encoding(c->group, file, c->where, type, ver);
    char sub[WHERE_MAX + 16];
    hsize_t dim;
    if (st == CF_OK && strcmp(type, "categorical") == 0) {
      c->layout = L_CAT;
      c->kind = CF_H5AD_CATEGORICAL;
      st = check_version(file, c->where, type, ver, "0.2.0", NULL);
      if (st == CF_OK) snprintf(sub, sizeof sub, "%s/codes", c->where);
      if (st == CF_OK) st = open_dset(c->group, "codes", file, sub, 1, &dim, &c->values);
      if (st == CF_OK) snprintf(sub, sizeof sub, "%s/categories", c->where);
      if (st == CF_OK) st = open_dset(c->group, "categories", file, sub, 1, &dim, &c->aux);
    } else if (st == CF_OK &&
               (strcmp(type, "nullable-integer") == 0 || strcmp(type, "nullable-boolean") == 0)) {
      c->layout = L_NULLABLE;
      c->kind = type[9] == 'i' ? CF_H5AD_NUMERIC : CF_H5AD_BOOLEAN;
      st = check_version(file, c->where, type, ver, "0.1.0", NULL);
      if (st == CF_OK) snprintf(sub, sizeof sub, "%s/values", c->where);
      if (st == CF_OK) st = open_dset(c->group, "values", file, sub, 1, &dim, &c->values);
      if (st == CF_OK) snprintf(sub, sizeof sub, "%s/mask", c->where);
      if (st == CF_OK) st = open_dset(c->group, "mask", file, sub, 1, &dim, &c->aux);
    } else if (st == CF_OK) {
      st = cf_err(CF_ECORRUPT,
                  "'%s' %s: encoding-type '%s' not supported (expected categorical, "
                  "nullable-integer or nullable-boolean for a group column)",
                  file, c->where, type[0] ? type : "(none)");
    }
  } else if (ot == H5I_DATASET) {
    hsize_t dim;
    st = open_dset(fid, rel, file, c->where, 1, &dim, &c->values);
    if (st == CF_OK) st = encoding(c->values, file, c->where, type, ver);
    if (st == CF_OK && H5Aexists(c->values, "categories") > 0) {
      /* dataframe 0.1.0: codes whose attribute "categories" references __categories/<name> */
      c->layout = L_OLDCAT;
      c->kind = CF_H5AD_CATEGORICAL;
      hid_t at = H5Aopen(c->values, "categories", H5P_DEFAULT);
      hid_t t = at >= 0 ? H5Aget_type(at) : -1, asp = at >= 0 ? H5Aget_space(at) : -1;
      hssize_t np = asp >= 0 ? H5Sget_simple_extent_npoints(asp) : -1;
      hobj_ref_t ref; /* one reference: the attribute must hold exactly one */
      if (t < 0 || H5Tget_class(t) != H5T_REFERENCE || np != 1 ||
          H5Aread(at, H5T_STD_REF_OBJ, &ref) < 0 ||
          (c->aux = H5Rdereference2(c->values, H5P_DEFAULT, H5R_OBJECT, &ref)) < 0 ||
          H5Iget_type(c->aux) != H5I_DATASET) {
        if (c->aux >= 0) H5Oclose(c->aux); /* a group or named type: col_close would leak it */
        c->aux = -1;
        st = cf_err(CF_ECORRUPT,
                    "'%s' %s: attribute 'categories' is not a reference to a categories dataset",
                    file, c->where);
      }
      if (asp >= 0) H5Sclose(asp);
      if (t >= 0) H5Tclose(t);
      if (at >= 0) H5Aclose(at);
    } else if (st == CF_OK) {
      c->layout = L_PLAIN;
      if (type[0] && strcmp(type, "array") != 0 && strcmp(type, "string-array") != 0)
        st = cf_err(CF_ECORRUPT,
                    "'%s' %s: encoding-type '%s' not supported (expected array or string-array "
                    "for a dataset column)",
                    file, c->where, type);
      else if (type[0])
        st = check_version(file, c->where, type, ver, "0.2.0", NULL);
    }
  } else {
    st = cf_err(CF_ECORRUPT, "'%s' %s is neither a group nor a dataset", file, c->where);
  }
  /* kinds and lengths */
  enum cf_h5ad_kind k;
  int64_t n = 0;
  char sub[WHERE_MAX + 16];
  if (st == CF_OK && c->layout == L_PLAIN) {
    st = vals_kind(c->values, file, c->where, &c->kind, &c->n);
    if (st == CF_OK && c->kind == CF_H5AD_STRING && strcmp(type, "array") == 0)
      st = cf_err(CF_ECORRUPT, "'%s' %s holds strings but its encoding-type is 'array'", file,
                  c->where);
    if (st == CF_OK && c->kind != CF_H5AD_STRING && strcmp(type, "string-array") == 0)
      st = cf_err(CF_ECORRUPT, "'%s' %s has encoding-type 'string-array' but holds numbers", file,
                  c->where);
  } else if (st == CF_OK && (c->layout == L_CAT || c->layout == L_OLDCAT)) {
    int kind, is_bool;
    snprintf(sub, sizeof sub, "%s/codes", c->where);
    st = dset_kind(c->values, file, c->layout == L_CAT ? sub : c->where, 1, &kind, &is_bool);
    if (st == CF_OK)
      st = vals_kind(c->values, file, c->layout == L_CAT ? sub : c->where, &k, &c->n);
    snprintf(sub, sizeof sub, "%s/categories", c->where);
    if (st == CF_OK) st = vals_kind(c->aux, file, sub, &k, &n);
  } else if (st == CF_OK && c->layout == L_NULLABLE) {
    int kind, is_bool;
    snprintf(sub, sizeof sub, "%s/values", c->where);
    st = dset_kind(c->values, file, sub, 0, &kind, &is_bool);
    if (st == CF_OK) st = vals_kind(c->values, file, sub, &k, &c->n);
    snprintf(sub, sizeof sub, "%s/mask", c->where);
    if (st == CF_OK) st = dset_kind(c->aux, file, sub, 0, &kind, &is_bool);
    if (st == CF_OK) st = vals_kind(c->aux, file, sub, &k, &n);
    if (st == CF_OK && n != c->n)
      st = cf_err(CF_ECORRUPT, "'%s' %s has %lld entries, expected %lld", file, sub, (long long)n,
                  (long long)c->n);
  }
  if (st == CF_OK && c->n != c->expect)
    st = cf_err(CF_ECORRUPT, "'%s' %s has %lld entries, expected %lld (%s)", file, c->where,
                (long long)c->n, (long long)c->expect, c->of);
  if (st != CF_OK) col_close(c);
  return st;
}

/* A loaded column. */
struct column {
  enum cf_h5ad_kind kind;
  int64_t n;
  struct vals v;       /* PLAIN / NULLABLE: the values; categorical: the categories */
  int64_t *codes;      /* categorical: (n), -1 missing */
  unsigned char *mask; /* NULLABLE: (n), 1 missing */
  char where[WHERE_MAX];
};

static void column_free(struct column *c) {
  vals_free(&c->v);
  cf_free((void **)&c->codes);
  cf_free((void **)&c->mask);
}

/* Collective. Open and read column `name` (NULL: the index) of frame. */
static cf_status column_load(struct cf_h5ad *a, const char *frame, const char *name,
                             struct column *col) {
  memset(col, 0, sizeof *col);
  struct colref c;
  CF_TRY(col_open(a, frame, name, &c));
  const char *file = a->path;
  col->kind = c.kind;
  col->n = c.n;
  snprintf(col->where, sizeof col->where, "%s", c.where);
  char sub[WHERE_MAX + 16];
  cf_status st = CF_OK;
  if (c.layout == L_PLAIN) {
    st = vals_read(c.values, file, c.where, c.expect, c.of, &col->v);
  } else if (c.layout == L_NULLABLE) {
    struct vals m;
    snprintf(sub, sizeof sub, "%s/values", c.where);
    st = vals_read(c.values, file, sub, c.expect, c.of, &col->v);
    snprintf(sub, sizeof sub, "%s/mask", c.where);
    if (st == CF_OK) st = vals_read(c.aux, file, sub, c.expect, c.of, &m);
    if (st == CF_OK) {
      st = cf_alloc((void **)&col->mask, (size_t)(c.n ? c.n : 1), "column mask");
      for (int64_t i = 0; st == CF_OK && i < c.n; i++) {
        col->mask[i] = m.num[i] != 0;
        if (col->mask[i]) col->v.num[i] = NAN;
      }
      vals_free(&m);
    }
  } else {
    struct vals codes;
    snprintf(sub, sizeof sub, "%s/codes", c.where);
    const char *cw = c.layout == L_CAT ? sub : c.where;
    st = vals_read(c.values, file, cw, c.expect, c.of, &codes);
    char csub[WHERE_MAX + 16];
    snprintf(csub, sizeof csub, "%s/categories", c.where);
    if (st == CF_OK) {
      st = vals_read(c.aux, file, csub, -1, NULL, &col->v);
      if (st == CF_OK) st = cf_alloc((void **)&col->codes, (size_t)(c.n ? c.n : 1) * 8, "codes");
      for (int64_t i = 0; st == CF_OK && i < c.n; i++) {
        double x = codes.num[i];
        if (!(x >= -1 && x < (double)col->v.n))
          st = cf_err(CF_ECORRUPT, "'%s' %s: code %.0f of row %lld is outside -1..%lld", file, cw,
                      x, (long long)i, (long long)col->v.n - 1);
        else
          col->codes[i] = (int64_t)x;
      }
      vals_free(&codes);
    }
  }
  col_close(&c);
  if (st != CF_OK) column_free(col);
  return st;
}

/* Column as strings (one block). */
static cf_status column_strings(const struct column *col, char ***out) {
  char **ptr = NULL;
  size_t *len = NULL;
  char *txt = NULL; /* 40 bytes per number: the formatted values */
  int64_t n = col->n, nv = col->v.n;
  cf_status st = cf_alloc((void **)&ptr, (size_t)(n ? n : 1) * sizeof(char *), "strings");
  if (st == CF_OK) st = cf_alloc((void **)&len, (size_t)(n ? n : 1) * sizeof(size_t), "lengths");
  if (st == CF_OK && col->v.kind != CF_H5AD_STRING)
    st = cf_alloc((void **)&txt, (size_t)(nv ? nv : 1) * 40, "formatted numbers");
  for (int64_t i = 0; st == CF_OK && i < nv && txt; i++)
    vals_text(&col->v, i, txt + i * 40, 40);
  for (int64_t i = 0; st == CF_OK && i < n; i++) {
    int64_t j = col->codes ? col->codes[i] : i;
    if (j < 0 || (col->mask && col->mask[i]))
      ptr[i] = "";
    else
      ptr[i] = col->v.kind == CF_H5AD_STRING ? col->v.str[j] : txt + j * 40;
    len[i] = strlen(ptr[i]);
  }
  if (st == CF_OK) st = pack_strings(ptr, len, n, out);
  cf_free((void **)&txt);
  cf_free((void **)&len);
  cf_free((void **)&ptr);
  return st;
}

/* Column as numbers. */
static cf_status column_numbers(const struct column *col, const char *file, double **out) {
  int64_t n = col->n, nv = col->v.n;
  double *vals = NULL, *res = NULL;
  cf_status st = CF_OK;
  if (col->v.kind == CF_H5AD_STRING) {
    st = cf_alloc((void **)&vals, (size_t)(nv ? nv : 1) * sizeof(double), "parsed strings");
    for (int64_t i = 0; st == CF_OK && i < nv; i++)
      if (!parse_num(col->v.str[i], &vals[i]))
        st = cf_err(CF_EINVAL, "'%s' %s: %s '%s' (%s %lld) is not a number", file, col->where,
                    col->codes ? "category" : "value", col->v.str[i],
                    col->codes ? "category" : "row", (long long)i);
  }
  const double *src = vals ? vals : col->v.num;
  if (st == CF_OK) st = cf_alloc((void **)&res, (size_t)(n ? n : 1) * sizeof(double), "numbers");
  for (int64_t i = 0; st == CF_OK && i < n; i++) {
    int64_t j = col->codes ? col->codes[i] : i;
    res[i] = (j < 0 || (col->mask && col->mask[i])) ? NAN : src[j];
  }
  cf_free((void **)&vals);
  if (st == CF_OK)
    *out = res;
  else
    cf_free((void **)&res);
  return st;
}

static const char *kind_name(enum cf_h5ad_kind k) {
  switch (k) {
  case CF_H5AD_NUMERIC:
    return "numeric";
  case CF_H5AD_BOOLEAN:
    return "boolean";
  case CF_H5AD_STRING:
    return "string";
  default:
    return "categorical";
  }
}

cf_status cf_h5ad_column_kind(struct cf_h5ad *a, const char *frame, const char *name,
                              enum cf_h5ad_kind *kind) {
  cf_io_h5_quiet();
  struct colref c;
  cf_status st = name ? col_open(a, frame, name, &c) : cf_err(CF_EINVAL, "column name is NULL");
  if (st == CF_OK) {
    *kind = c.kind;
    col_close(&c);
  }
  return cf_agree(a->comm, st);
}

cf_status cf_h5ad_read_index(struct cf_h5ad *a, const char *frame, char ***s, int64_t *n) {
  *s = NULL;
  *n = 0;
  cf_io_h5_quiet();
  struct column col;
  cf_status st = column_load(a, frame, NULL, &col);
  if (st == CF_OK) {
    st = column_strings(&col, s);
    *n = col.n;
    column_free(&col);
  }
  st = cf_agree(a->comm, st);
  if (st != CF_OK) {
    cf_free((void **)s);
    *n = 0;
  }
  return st;
}

cf_status cf_h5ad_read_strings(struct cf_h5ad *a, const char *frame, const char *name, char ***s,
                               int64_t *n) {
  *s = NULL;
  *n = 0;
  cf_io_h5_quiet();
  struct column col;
  cf_status st =
      name ? column_load(a, frame, name, &col) : cf_err(CF_EINVAL, "column name is NULL");
  if (st == CF_OK) {
    st = column_strings(&col, s);
    *n = col.n;
    column_free(&col);
  }
  st = cf_agree(a->comm, st);
  if (st != CF_OK) {
    cf_free((void **)s);
    *n = 0;
  }
  return st;
}

cf_status cf_h5ad_read_numbers(struct cf_h5ad *a, const char *frame, const char *name, double **v,
                               int64_t *n) {
  *v = NULL;
  *n = 0;
  cf_io_h5_quiet();
  struct column col;
  cf_status st =
      name ? column_load(a, frame, name, &col) : cf_err(CF_EINVAL, "column name is NULL");
  if (st == CF_OK) {
    st = column_numbers(&col, a->path, v);
    *n = col.n;
    column_free(&col);
  }
  st = cf_agree(a->comm, st);
  if (st != CF_OK) {
    cf_free((void **)v);
    *n = 0;
  }
  return st;
}

cf_status cf_h5ad_read_categorical(struct cf_h5ad *a, const char *frame, const char *name,
                                   int32_t **codes, int64_t *n, char ***categories, int64_t *ncat) {
  *codes = NULL;
  *categories = NULL;
  *n = *ncat = 0;
  cf_io_h5_quiet();
  struct column col;
  cf_status st =
      name ? column_load(a, frame, name, &col) : cf_err(CF_EINVAL, "column name is NULL");
  if (st == CF_OK) {
    if (col.kind != CF_H5AD_CATEGORICAL)
      st = cf_err(CF_EINVAL, "'%s' %s is a %s column, not categorical", a->path, col.where,
                  kind_name(col.kind));
    if (st == CF_OK && col.v.n > INT32_MAX)
      st = cf_err(CF_ECORRUPT, "'%s' %s has %lld categories, more than int32 codes hold", a->path,
                  col.where, (long long)col.v.n);
    if (st == CF_OK)
      st = cf_alloc((void **)codes, (size_t)(col.n ? col.n : 1) * sizeof(int32_t), "codes");
    for (int64_t i = 0; st == CF_OK && i < col.n; i++)
      (*codes)[i] = (int32_t)col.codes[i];
    if (st == CF_OK) {
      /* the categories as a plain column of strings */
      struct column cats = {.kind = CF_H5AD_STRING, .n = col.v.n, .v = col.v};
      st = column_strings(&cats, categories);
      *ncat = col.v.n;
    }
    *n = col.n;
    column_free(&col);
  }
  st = cf_agree(a->comm, st);
  if (st != CF_OK) {
    cf_free((void **)codes);
    cf_free((void **)categories);
    *n = *ncat = 0;
  }
  return st;
}

/* Collective. Names in column-order of frame. */
static cf_status columns_body(struct cf_h5ad *a, const char *frame, char ***names, int64_t *n) {
  CF_TRY(frame_check(a, frame));
  const char *file = a->path;
  char where[WHERE_MAX];
  snprintf(where, sizeof where, "/%s", frame);
  CF_CHECK(has_link((hid_t)a->file, frame), CF_ECORRUPT, "'%s' has no %s", file, where);
  hid_t g = H5Gopen2((hid_t)a->file, frame, H5P_DEFAULT);
  CF_CHECK(g >= 0, CF_ECORRUPT, "'%s': cannot open %s", file, where);
  cf_status st = CF_OK;
  char **raw = NULL;
  size_t *len = NULL;
  hid_t at = -1, t = -1, sp = -1, mt = -1;
  hssize_t np = 0;
  if (H5Aexists(g, "column-order") > 0) {
    at = H5Aopen(g, "column-order", H5P_DEFAULT);
    t = at >= 0 ? H5Aget_type(at) : -1;
    sp = at >= 0 ? H5Aget_space(at) : -1;
    np = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    if (t < 0 || np < 0)
      st = cf_err(CF_ECORRUPT, "'%s': cannot read %s attribute 'column-order'", file, where);
    /* anndata writes an empty column-order as an empty float64 array */
    if (st == CF_OK && np > 0 && (H5Tget_class(t) != H5T_STRING || H5Tis_variable_str(t) <= 0))
      st = cf_err(CF_ECORRUPT, "'%s' %s attribute 'column-order' is not variable-length strings",
                  file, where);
  }
  if (st == CF_OK) st = cf_alloc((void **)&raw, (size_t)(np ? np : 1) * sizeof(char *), "names");
  if (st == CF_OK) st = cf_alloc((void **)&len, (size_t)(np ? np : 1) * sizeof(size_t), "names");
  if (st == CF_OK && np > 0) {
    mt = H5Tcopy(H5T_C_S1);
    if (mt < 0 || H5Tset_size(mt, H5T_VARIABLE) < 0 || H5Tset_cset(mt, H5Tget_cset(t)) < 0 ||
        H5Aread(at, mt, raw) < 0)
      st = cf_err(CF_ECORRUPT, "'%s': cannot read %s attribute 'column-order'", file, where);
    for (hssize_t i = 0; st == CF_OK && i < np; i++)
      len[i] = raw[i] ? strlen(raw[i]) : 0;
    if (st == CF_OK) st = pack_strings(raw, len, (int64_t)np, names);
    for (hssize_t i = 0; i < np; i++)
      if (raw[i]) H5free_memory(raw[i]);
  } else if (st == CF_OK) {
    st = pack_strings(raw, len, 0, names);
  }
  if (st == CF_OK) *n = (int64_t)np;
  if (mt >= 0) H5Tclose(mt);
  if (sp >= 0) H5Sclose(sp);
  if (t >= 0) H5Tclose(t);
  if (at >= 0) H5Aclose(at);
  H5Gclose(g);
  cf_free((void **)&len);
  cf_free((void **)&raw);
  return st;
}

cf_status cf_h5ad_columns(struct cf_h5ad *a, const char *frame, char ***names, int64_t *n) {
  *names = NULL;
  *n = 0;
  cf_io_h5_quiet();
  cf_status st = cf_agree(a->comm, columns_body(a, frame, names, n));
  if (st != CF_OK) {
    cf_free((void **)names);
    *n = 0;
  }
  return st;
}

/* ---- open ---- */

const char *cf_h5ad_x_name(enum cf_h5ad_x e) {
  switch (e) {
  case CF_H5AD_X_CSR:
    return "csr_matrix";
  case CF_H5AD_X_CSC:
    return "csc_matrix";
  case CF_H5AD_X_DENSE:
    return "array";
  default:
    return "none";
  }
}

void cf_h5ad_rows(const struct cf_h5ad *a, int64_t *lo, int64_t *hi) {
  cf_io_row_range(a->n_obs, a->rank, a->size, lo, hi);
}

/* The number of rows of frame (its index length), -1 when the file has no such group. */
static cf_status frame_len(struct cf_h5ad *a, const char *frame, int64_t *n) {
  *n = -1;
  hid_t fid = (hid_t)a->file;
  const char *file = a->path;
  if (!has_link(fid, frame)) return CF_OK;
  char where[WHERE_MAX], type[ATTR_MAX], ver[ATTR_MAX], idx[ATTR_MAX];
  snprintf(where, sizeof where, "/%s", frame);
  CF_CHECK(obj_type(fid, frame) == H5I_GROUP, CF_ECORRUPT,
           "'%s' %s is a dataset (the anndata < 0.7 record-array layout), not supported (expected "
           "a dataframe group)",
           file, where);
  hid_t g = H5Gopen2(fid, frame, H5P_DEFAULT);
  CF_CHECK(g >= 0, CF_ECORRUPT, "'%s': cannot open %s", file, where);
  cf_status st = encoding(g, file, where, type, ver);
  H5Gclose(g);
  CF_TRY(st);
  if (type[0]) {
    CF_CHECK(strcmp(type, "dataframe") == 0, CF_ECORRUPT,
             "'%s' %s: encoding-type '%s' not supported (expected dataframe)", file, where, type);
    CF_TRY(check_version(file, where, type, ver, "0.2.0", "0.1.0"));
  }
  CF_TRY(frame_index_name(fid, file, frame, idx));
  char rel[WHERE_MAX], at[WHERE_MAX + 8];
  snprintf(rel, sizeof rel, "%s/%s", frame, idx);
  snprintf(at, sizeof at, "/%s", rel);
  hsize_t dim = 0;
  hid_t d;
  CF_TRY(open_dset(fid, rel, file, at, 1, &dim, &d));
  H5Dclose(d);
  *n = (int64_t)dim;
  return CF_OK;
}

/* Open a sparse X group g (major = rows for CSR, columns for CSC). */
static cf_status open_sparse(struct cf_h5ad *a, hid_t g, int64_t major) {
  const char *file = a->path;
  hsize_t nd, ni, np;
  hid_t d;
  CF_TRY(open_dset(g, "data", file, "/X/data", 1, &nd, &d));
  a->x_data = d;
  CF_TRY(open_dset(g, "indices", file, "/X/indices", 1, &ni, &d));
  a->x_indices = d;
  CF_TRY(open_dset(g, "indptr", file, "/X/indptr", 1, &np, &d));
  a->x_indptr = d;
  int is_bool;
  CF_TRY(dset_kind((hid_t)a->x_data, file, "/X/data", 0, &a->x_data_kind, &is_bool));
  snprintf(a->x_dtype, sizeof a->x_dtype, "%s", is_bool ? "bool" : nk_names[a->x_data_kind]);
  CF_TRY(dset_kind((hid_t)a->x_indices, file, "/X/indices", 1, &a->x_indices_kind, NULL));
  CF_TRY(dset_kind((hid_t)a->x_indptr, file, "/X/indptr", 1, &a->x_indptr_kind, NULL));
  snprintf(a->x_index_dtype, sizeof a->x_index_dtype, "%s", nk_names[a->x_indptr_kind]);
  CF_CHECK(nd == ni, CF_ECORRUPT, "'%s' /X/data has %llu entries but /X/indices has %llu", file,
           (unsigned long long)nd, (unsigned long long)ni);
  CF_CHECK((int64_t)np == major + 1, CF_ECORRUPT,
           "'%s' /X/indptr has %llu entries, expected %lld (%s + 1)", file, (unsigned long long)np,
           (long long)(major + 1), a->x_encoding == CF_H5AD_X_CSR ? "rows" : "columns");
  a->x_nnz = (int64_t)nd;
  if (a->x_encoding == CF_H5AD_X_CSC) {
    /* the column starts, read once by every rank (n_var + 1 entries) */
    void *raw = NULL;
    int k = a->x_indptr_kind;
    CF_TRY(cf_alloc((void **)&a->csc_indptr, (size_t)(major + 1) * sizeof(int64_t), "indptr"));
    CF_TRY(cf_alloc(&raw, (size_t)(major + 1) * nk_sizes[k], "indptr"));
    cf_status st = read_whole((hid_t)a->x_indptr, nk_mem(k), raw, file, "/X/indptr");
    for (int64_t j = 0; st == CF_OK && j <= major; j++) {
      int64_t v = nk_geti(raw, k, (size_t)j);
      a->csc_indptr[j] = v;
      if (v < 0 || v > a->x_nnz || (j > 0 && v < a->csc_indptr[j - 1]))
        st = cf_err(CF_ECORRUPT,
                    "'%s' /X/indptr[%lld] = %lld: expected nondecreasing values in 0..%lld", file,
                    (long long)j, (long long)v, (long long)a->x_nnz);
    }
    cf_free(&raw);
    CF_TRY(st);
  }
  return CF_OK;
}

static cf_status open_x(struct cf_h5ad *a) {
  hid_t fid = (hid_t)a->file;
  const char *file = a->path;
  if (!has_link(fid, "X")) return CF_OK;
  H5I_type_t ot = obj_type(fid, "X");
  char type[ATTR_MAX], ver[ATTR_MAX];
  if (ot == H5I_DATASET) {
    hsize_t dims[2];
    hid_t d;
    CF_TRY(open_dset(fid, "X", file, "/X", 2, dims, &d));
    a->x_data = d;
    CF_TRY(encoding(d, file, "/X", type, ver));
    if (type[0]) {
      CF_CHECK(strcmp(type, "array") == 0, CF_ECORRUPT,
               "'%s' /X: encoding-type '%s' not supported (expected csr_matrix, csc_matrix or "
               "array)",
               file, type);
      CF_TRY(check_version(file, "/X", type, ver, "0.2.0", NULL));
    }
    int is_bool;
    CF_TRY(dset_kind(d, file, "/X", 0, &a->x_data_kind, &is_bool));
    snprintf(a->x_dtype, sizeof a->x_dtype, "%s", is_bool ? "bool" : nk_names[a->x_data_kind]);
    a->x_encoding = CF_H5AD_X_DENSE;
    a->n_obs = (int64_t)dims[0];
    a->n_var = (int64_t)dims[1];
    a->x_nnz = a->n_obs * a->n_var;
    return CF_OK;
  }
  CF_CHECK(ot == H5I_GROUP, CF_ECORRUPT, "'%s' /X is neither a group nor a dataset", file);
  hid_t g = H5Gopen2(fid, "X", H5P_DEFAULT);
  CF_CHECK(g >= 0, CF_ECORRUPT, "'%s': cannot open /X", file);
  cf_status st = encoding(g, file, "/X", type, ver);
  int64_t shape[2] = {0, 0};
  if (st == CF_OK && type[0]) {
    if (strcmp(type, "csr_matrix") == 0 || strcmp(type, "csc_matrix") == 0) {
      a->x_encoding = strcmp(type, "csr_matrix") == 0 ? CF_H5AD_X_CSR : CF_H5AD_X_CSC;
      st = check_version(file, "/X", type, ver, "0.1.0", NULL);
      if (st == CF_OK) st = attr_i64s(g, "shape", 2, file, "/X", shape);
    } else {
      st = cf_err(CF_ECORRUPT,
                  "'%s' /X: encoding-type '%s' not supported (expected csr_matrix, csc_matrix or "
                  "array)",
                  file, type);
    }
  } else if (st == CF_OK) {
    /* anndata < 0.7: h5sparse_format "csr" / "csc" and h5sparse_shape */
    char fmt[ATTR_MAX];
    int present = 0;
    st = attr_str(g, "h5sparse_format", file, "/X", fmt, sizeof fmt, &present);
    if (st == CF_OK && !present)
      st = cf_err(CF_ECORRUPT,
                  "'%s' /X is a group without encoding-type or h5sparse_format (expected "
                  "csr_matrix, csc_matrix or array)",
                  file);
    else if (st == CF_OK && strcmp(fmt, "csr") != 0 && strcmp(fmt, "csc") != 0)
      st = cf_err(CF_ECORRUPT, "'%s' /X: h5sparse_format '%s' not supported (expected csr or csc)",
                  file, fmt);
    if (st == CF_OK) {
      a->x_encoding = strcmp(fmt, "csr") == 0 ? CF_H5AD_X_CSR : CF_H5AD_X_CSC;
      st = attr_i64s(g, "h5sparse_shape", 2, file, "/X", shape);
    }
  }
  if (st == CF_OK && (shape[0] < 0 || shape[1] < 0))
    st = cf_err(CF_ECORRUPT, "'%s' /X shape (%lld, %lld) is negative", file, (long long)shape[0],
                (long long)shape[1]);
  if (st == CF_OK) {
    a->n_obs = shape[0];
    a->n_var = shape[1];
    st = open_sparse(a, g, a->x_encoding == CF_H5AD_X_CSR ? shape[0] : shape[1]);
  }
  H5Gclose(g);
  return st;
}

static cf_status open_body(struct cf_h5ad *a) {
  hid_t fid = (hid_t)a->file;
  const char *file = a->path;
  char type[ATTR_MAX], ver[ATTR_MAX];
  CF_TRY(encoding(fid, file, "/", type, ver));
  if (type[0]) {
    CF_CHECK(strcmp(type, "anndata") == 0, CF_ECORRUPT,
             "'%s' /: encoding-type '%s' is not an AnnData file (expected anndata)", file, type);
    CF_TRY(check_version(file, "/", type, ver, "0.1.0", NULL));
  }
  CF_TRY(open_x(a));
  int64_t nobs, nvar;
  CF_TRY(frame_len(a, "obs", &nobs));
  CF_TRY(frame_len(a, "var", &nvar));
  if (a->x_encoding == CF_H5AD_X_NONE) {
    CF_CHECK(nobs >= 0 && nvar >= 0, CF_ECORRUPT,
             "'%s' has no X and no obs / var index to size it (not an .h5ad file?)", file);
    a->n_obs = nobs;
    a->n_var = nvar;
  } else {
    CF_CHECK(nobs < 0 || nobs == a->n_obs, CF_ECORRUPT,
             "'%s': X has %lld rows but the obs index has %lld entries", file, (long long)a->n_obs,
             (long long)nobs);
    CF_CHECK(nvar < 0 || nvar == a->n_var, CF_ECORRUPT,
             "'%s': X has %lld columns but the var index has %lld entries", file,
             (long long)a->n_var, (long long)nvar);
    /* only the shape attribute gives a sparse X's other dimension (CSR columns, CSC rows),
     * which sizes every read: the index must confirm it, or a small file could claim billions */
    CF_CHECK(a->x_encoding != CF_H5AD_X_CSR || nvar >= 0, CF_ECORRUPT,
             "'%s': X is a csr_matrix of %lld columns but the file has no var index to confirm "
             "them (expected a var dataframe)",
             file, (long long)a->n_var);
    CF_CHECK(a->x_encoding != CF_H5AD_X_CSC || nobs >= 0, CF_ECORRUPT,
             "'%s': X is a csc_matrix of %lld rows but the file has no obs index to confirm them "
             "(expected an obs dataframe)",
             file, (long long)a->n_obs);
  }
  return CF_OK;
}

static void release(struct cf_h5ad *a) {
  close_id(&a->x_data);
  close_id(&a->x_indices);
  close_id(&a->x_indptr);
  cf_free((void **)&a->csc_indptr);
  if (a->file >= 0) H5Fclose((hid_t)a->file);
  a->file = -1;
}

cf_status cf_h5ad_open(struct cf_h5ad *a, MPI_Comm comm, const char *path) {
  cf_io_h5_quiet();
  memset(a, 0, sizeof *a);
  a->file = a->x_data = a->x_indices = a->x_indptr = -1;
  a->comm = comm;
  MPI_Comm_rank(comm, &a->rank);
  MPI_Comm_size(comm, &a->size);
  cf_status st = CF_OK;
  if (path != NULL && strlen(path) >= sizeof a->path)
    st = cf_err(CF_EINVAL, "h5ad file name '%.64s...' is too long", path);
  CF_TRY(cf_agree(comm, st));
  snprintf(a->path, sizeof a->path, "%s", path ? path : "");
  hid_t fid;
  CF_TRY(cf_io_open_read(comm, path, &fid));
  a->file = fid;
  st = cf_agree(comm, open_body(a));
  if (st != CF_OK) release(a);
  return st;
}

void cf_h5ad_close(struct cf_h5ad *a) {
  release(a);
}

/* ---- X ---- */

/* Output columns: var j goes to pos[j] (-1: not read); cols[c] is the var of column c. */
struct xsel {
  int64_t ncols;
  int64_t *pos;        /* (n_var) */
  const int64_t *cols; /* NULL: all */
};

static cf_status sel_make(const struct cf_h5ad *a, const int64_t *cols, int64_t ncols,
                          struct xsel *s) {
  memset(s, 0, sizeof *s);
  s->cols = cols;
  s->ncols = cols ? ncols : a->n_var;
  CF_CHECK(cols == NULL || ncols >= 0, CF_EINVAL, "column subset of '%s': %lld columns", a->path,
           (long long)ncols);
  CF_TRY(cf_alloc((void **)&s->pos, (size_t)(a->n_var ? a->n_var : 1) * sizeof(int64_t),
                  "column map"));
  for (int64_t j = 0; j < a->n_var; j++)
    s->pos[j] = cols ? -1 : j;
  for (int64_t c = 0; cols && c < ncols; c++) {
    int64_t j = cols[c];
    if (j < 0 || j >= a->n_var) {
      cf_free((void **)&s->pos);
      return cf_err(CF_EINVAL,
                    "column subset of '%s': var index %lld (entry %lld) is outside 0..%lld",
                    a->path, (long long)j, (long long)c, (long long)a->n_var - 1);
    }
    if (s->pos[j] >= 0) {
      int64_t first = s->pos[j];
      cf_free((void **)&s->pos);
      return cf_err(CF_EINVAL,
                    "column subset of '%s': var index %lld is listed twice (entries %lld and %lld)",
                    a->path, (long long)j, (long long)first, (long long)c);
    }
    s->pos[j] = c;
  }
  return CF_OK;
}

static int64_t piece_of(const struct cf_h5ad *a) {
  return a->max_read > 0 ? a->max_read : PIECE_DEFAULT;
}

/* Collective. The largest of every rank's piece count. */
static cf_status max_count(MPI_Comm comm, int64_t mine, int64_t *all) {
  long long m = mine, r = 0;
  CF_MPI(MPI_Allreduce(&m, &r, 1, MPI_LONG_LONG, MPI_MAX, comm));
  *all = r;
  return CF_OK;
}

/* Value k of data buffer raw as float into *out (a float64 outside the float32 range fails). */
static cf_status put_value(const struct cf_h5ad *a, const void *raw, size_t k, int64_t at,
                           float *out) {
  double v = nk_get(raw, a->x_data_kind, k);
  if (a->x_data_kind == NK_F64 && isfinite(v) && fabs(v) > FLT_MAX)
    return cf_err(CF_ECORRUPT, "'%s' %s[%lld] = %g is outside the float32 range", a->path,
                  a->x_encoding == CF_H5AD_X_DENSE ? "/X" : "/X/data", (long long)at, v);
  *out += (float)v;
  return CF_OK;
}

/* Collective. One-dimensional slice [off, off + cnt) of d (cnt == 0: take part only). */
static cf_status slice(hid_t d, int64_t off, int64_t cnt, int kind, void *buf, const char *file,
                       const char *what) {
  return cf_io_read_block(d, 1, &off, &cnt, nk_mem(kind), buf, file, what);
}

/* Collective. Rows [b0, b1) of a CSR X added into out (b1 - b0, ncols); local status. */
static cf_status csr_block(struct cf_h5ad *a, const struct xsel *s, int64_t b0, int64_t b1,
                           float *out) {
  const char *file = a->path;
  int64_t n = b1 - b0, P = piece_of(a), ncols = s->ncols;
  void *ipraw = NULL, *iraw = NULL, *draw = NULL;
  int64_t *ip = NULL;
  cf_status st = cf_alloc(&ipraw, (size_t)(n + 1) * nk_sizes[a->x_indptr_kind], "indptr");
  if (st == CF_OK) st = cf_alloc((void **)&ip, (size_t)(n + 1) * sizeof(int64_t), "indptr");
  int64_t cnt0 = st == CF_OK && n > 0 ? n + 1 : 0;
  cf_status e = slice((hid_t)a->x_indptr, b0, cnt0, a->x_indptr_kind, ipraw, file, "/X/indptr");
  if (st == CF_OK) st = e;
  for (int64_t i = 0; st == CF_OK && i < cnt0; i++) {
    ip[i] = nk_geti(ipraw, a->x_indptr_kind, (size_t)i);
    if (ip[i] < 0 || ip[i] > a->x_nnz || (i > 0 && ip[i] < ip[i - 1]))
      st = cf_err(CF_ECORRUPT,
                  "'%s' /X/indptr[%lld] = %lld: expected nondecreasing values in 0..%lld", file,
                  (long long)(b0 + i), (long long)ip[i], (long long)a->x_nnz);
  }
  int64_t lo = st == CF_OK && n > 0 ? ip[0] : 0, hi = st == CF_OK && n > 0 ? ip[n] : 0;
  int64_t mine = (hi - lo + P - 1) / P, pieces = 0;
  int64_t cap = hi - lo < P ? hi - lo : P;
  if (st == CF_OK) st = cf_alloc(&iraw, (size_t)(cap ? cap : 1) * 8, "indices");
  if (st == CF_OK) st = cf_alloc(&draw, (size_t)(cap ? cap : 1) * 8, "data");
  cf_status em = max_count(a->comm, st == CF_OK ? mine : 0, &pieces);
  if (st == CF_OK) st = em;
  int64_t r = 0;
  for (int64_t p = 0; p < pieces; p++) {
    int64_t off = lo + p * P, cnt = st == CF_OK && off < hi ? (hi - off < P ? hi - off : P) : 0;
    e = slice((hid_t)a->x_indices, off, cnt, a->x_indices_kind, iraw, file, "/X/indices");
    if (st == CF_OK) st = e;
    e = slice((hid_t)a->x_data, off, st == CF_OK ? cnt : 0, a->x_data_kind, draw, file, "/X/data");
    if (st == CF_OK) st = e;
    for (int64_t k = 0; st == CF_OK && k < cnt; k++) {
      int64_t g = off + k;
      while (ip[r + 1] <= g)
        r++;
      int64_t j = nk_geti(iraw, a->x_indices_kind, (size_t)k);
      if (j < 0 || j >= a->n_var)
        st = cf_err(CF_ECORRUPT, "'%s' /X/indices[%lld] = %lld (row %lld) is outside 0..%lld", file,
                    (long long)g, (long long)j, (long long)(b0 + r), (long long)a->n_var - 1);
      else if (s->pos[j] >= 0)
        st = put_value(a, draw, (size_t)k, g, out + r * ncols + s->pos[j]);
    }
  }
  cf_free(&draw);
  cf_free(&iraw);
  cf_free((void **)&ip);
  cf_free(&ipraw);
  return st;
}

/* Collective. Rows [b0, b1) of a CSC X added into out: a pass over the selected columns. */
static cf_status csc_block(struct cf_h5ad *a, const struct xsel *s, int64_t b0, int64_t b1,
                           float *out) {
  const char *file = a->path;
  const int64_t *cp = a->csc_indptr;
  int64_t P = piece_of(a), ncols = s->ncols, npc = 0, cap = 0;
  int64_t *pc = NULL; /* (npc, 2): start, count of each piece */
  void *iraw = NULL, *draw = NULL;
  cf_status st = CF_OK;
  if (b1 > b0) {
    int64_t most = a->n_var + a->x_nnz / P + 2;
    st = cf_alloc((void **)&pc, (size_t)most * 2 * sizeof(int64_t), "pieces");
    int64_t ps = -1, pe = -1;
    for (int64_t j = 0; st == CF_OK && j < a->n_var; j++) {
      int64_t cs = cp[j], ce = cp[j + 1];
      if (s->pos[j] < 0 || ce == cs) continue;
      if (ps >= 0 && ce - ps <= P) { /* extend the piece (entries between are skipped) */
        pe = ce;
        continue;
      }
      if (ps >= 0) {
        pc[2 * npc] = ps;
        pc[2 * npc++ + 1] = pe - ps;
      }
      for (; ce - cs > P; cs += P) {
        pc[2 * npc] = cs;
        pc[2 * npc++ + 1] = P;
      }
      ps = cs;
      pe = ce;
    }
    if (ps >= 0) {
      pc[2 * npc] = ps;
      pc[2 * npc++ + 1] = pe - ps;
    }
    for (int64_t p = 0; p < npc; p++)
      if (pc[2 * p + 1] > cap) cap = pc[2 * p + 1];
  }
  if (st == CF_OK) st = cf_alloc(&iraw, (size_t)(cap ? cap : 1) * 8, "indices");
  if (st == CF_OK) st = cf_alloc(&draw, (size_t)(cap ? cap : 1) * 8, "data");
  int64_t pieces = 0;
  cf_status em = max_count(a->comm, st == CF_OK ? npc : 0, &pieces);
  if (st == CF_OK) st = em;
  int64_t j = 0;
  for (int64_t p = 0; p < pieces; p++) {
    int64_t off = p < npc ? pc[2 * p] : 0, cnt = st == CF_OK && p < npc ? pc[2 * p + 1] : 0;
    cf_status e = slice((hid_t)a->x_indices, off, cnt, a->x_indices_kind, iraw, file, "/X/indices");
    if (st == CF_OK) st = e;
    e = slice((hid_t)a->x_data, off, st == CF_OK ? cnt : 0, a->x_data_kind, draw, file, "/X/data");
    if (st == CF_OK) st = e;
    for (int64_t k = 0; st == CF_OK && k < cnt; k++) {
      int64_t g = off + k;
      while (cp[j + 1] <= g)
        j++;
      if (s->pos[j] < 0) continue;
      int64_t row = nk_geti(iraw, a->x_indices_kind, (size_t)k);
      if (row < 0 || row >= a->n_obs)
        st = cf_err(CF_ECORRUPT, "'%s' /X/indices[%lld] = %lld (column %lld) is outside 0..%lld",
                    file, (long long)g, (long long)row, (long long)j, (long long)a->n_obs - 1);
      else if (row >= b0 && row < b1)
        st = put_value(a, draw, (size_t)k, g, out + (row - b0) * ncols + s->pos[j]);
    }
  }
  cf_free(&draw);
  cf_free(&iraw);
  cf_free((void **)&pc);
  return st;
}

/* Collective. Rows [b0, b1) of a dense X into out, in pieces of whole rows. */
static cf_status dense_block(struct cf_h5ad *a, const struct xsel *s, int64_t b0, int64_t b1,
                             float *out) {
  const char *file = a->path;
  int64_t nv = a->n_var, ncols = s->ncols, n = b1 - b0;
  int64_t rp = nv > 0 ? piece_of(a) / nv : n;
  if (rp < 1) rp = 1;
  int fast = s->cols == NULL && a->x_data_kind == NK_F32;
  void *tmp = NULL;
  cf_status st = CF_OK;
  if (!fast && n > 0)
    st = cf_alloc(&tmp, (size_t)((rp < n ? rp : n) * (nv ? nv : 1)) * nk_sizes[a->x_data_kind],
                  "dense rows");
  int64_t pieces = 0;
  cf_status em = max_count(a->comm, st == CF_OK && nv > 0 ? (n + rp - 1) / rp : 0, &pieces);
  if (st == CF_OK) st = em;
  for (int64_t p = 0; p < pieces; p++) {
    int64_t r0 = b0 + p * rp, cnt = st == CF_OK && r0 < b1 ? (b1 - r0 < rp ? b1 - r0 : rp) : 0;
    int64_t start[2] = {r0 < b1 ? r0 : 0, 0}, count[2] = {cnt, nv};
    void *buf = fast && cnt > 0 ? (void *)(out + (r0 - b0) * ncols) : tmp;
    cf_status e = cf_io_read_block((hid_t)a->x_data, 2, start, count, nk_mem(a->x_data_kind), buf,
                                   file, "/X");
    if (st == CF_OK) st = e;
    for (int64_t i = 0; st == CF_OK && !fast && i < cnt; i++)
      for (int64_t c = 0; st == CF_OK && c < ncols; c++) {
        int64_t jj = s->cols ? s->cols[c] : c;
        size_t k = (size_t)(i * nv + jj);
        st = put_value(a, tmp, k, (r0 + i) * nv + jj, out + (r0 - b0 + i) * ncols + c);
      }
  }
  cf_free(&tmp);
  return st;
}

/* Collective. Rows [b0, b1) of X into out (zeroed here); local status. */
static cf_status x_block(struct cf_h5ad *a, const struct xsel *s, int64_t b0, int64_t b1,
                         float *out) {
  if (b1 > b0) memset(out, 0, (size_t)(b1 - b0) * (size_t)s->ncols * sizeof(float));
  switch (a->x_encoding) {
  case CF_H5AD_X_CSR:
    return csr_block(a, s, b0, b1, out);
  case CF_H5AD_X_CSC:
    return csc_block(a, s, b0, b1, out);
  default:
    return dense_block(a, s, b0, b1, out);
  }
}

/* Local. Arguments of a read of rows [lo, hi). */
static cf_status x_args(const struct cf_h5ad *a, int64_t lo, int64_t hi) {
  CF_CHECK(a->file >= 0, CF_EINVAL, "h5ad reader used after close");
  CF_CHECK(a->x_encoding != CF_H5AD_X_NONE, CF_EINVAL, "'%s' has no X", a->path);
  CF_CHECK(lo >= 0 && lo <= hi && hi <= a->n_obs, CF_EINVAL,
           "rows %lld..%lld of '%s' X: expected a range within 0..%lld", (long long)lo,
           (long long)hi, a->path, (long long)a->n_obs);
  return CF_OK;
}

cf_status cf_h5ad_read_x(struct cf_h5ad *a, int64_t lo, int64_t hi, const int64_t *cols,
                         int64_t ncols, float **x, int64_t *ncols_out) {
  cf_io_h5_quiet();
  *x = NULL;
  struct xsel s = {0};
  cf_status st = x_args(a, lo, hi);
  if (st == CF_OK) st = sel_make(a, cols, ncols, &s);
  size_t total = 0;
  if (st == CF_OK) st = cf_mul_size(&total, (size_t)(hi - lo), (size_t)s.ncols, "X rows");
  if (st == CF_OK)
    st = cf_io_check_alloc(total ? total : 1, sizeof(float), a->path, "/X rows", &total);
  if (st == CF_OK) st = cf_alloc((void **)x, total, "X rows");
  st = cf_agree(a->comm, st);
  if (st == CF_OK) st = cf_agree(a->comm, x_block(a, &s, lo, hi, *x));
  cf_free((void **)&s.pos);
  if (st != CF_OK) cf_free((void **)x);
  if (st == CF_OK && ncols_out) *ncols_out = s.ncols;
  return st;
}

cf_status cf_h5ad_scan(struct cf_h5ad *a, int64_t lo, int64_t hi, int64_t block_rows,
                       const int64_t *cols, int64_t ncols, cf_h5ad_block_fn fn, void *ctx) {
  cf_io_h5_quiet();
  struct xsel s = {0};
  float *blk = NULL;
  cf_status st = x_args(a, lo, hi);
  if (st == CF_OK && fn == NULL) st = cf_err(CF_EINVAL, "scan of '%s' without a callback", a->path);
  if (st == CF_OK) st = sel_make(a, cols, ncols, &s);
  if (st == CF_OK && block_rows <= 0) {
    block_rows = s.ncols > 0 ? SCAN_FLOATS / s.ncols : hi - lo;
    if (block_rows < 1) block_rows = 1;
  }
  int64_t n = hi - lo, rows = st == CF_OK ? (block_rows < n ? block_rows : n) : 0;
  size_t total = 0;
  if (st == CF_OK) st = cf_mul_size(&total, (size_t)(rows ? rows : 1), (size_t)s.ncols, "block");
  if (st == CF_OK) st = cf_alloc((void **)&blk, (total ? total : 1) * sizeof(float), "X block");
  st = cf_agree(a->comm, st);
  int64_t blocks = 0;
  if (st == CF_OK) st = max_count(a->comm, n > 0 ? (n + block_rows - 1) / block_rows : 0, &blocks);
  for (int64_t b = 0; st == CF_OK && b < blocks; b++) {
    int64_t b0 = lo + b * block_rows;
    if (b0 > hi) b0 = hi;
    int64_t b1 = b0 + block_rows < hi ? b0 + block_rows : hi;
    cf_status e = x_block(a, &s, b0, b1, blk);
    if (e == CF_OK && b1 > b0) e = fn(ctx, b0, b1 - b0, s.ncols, blk);
    st = cf_agree(a->comm, e);
  }
  cf_free((void **)&blk);
  cf_free((void **)&s.pos);
  return st;
}
