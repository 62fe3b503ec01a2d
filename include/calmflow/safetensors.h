/* safetensors.h: reading Hugging Face safetensors weight files as float32 blocks — one file,
 * or a sharded set named by model.safetensors.index.json.
 *
 * The format (parsed here, no library): an 8-byte little-endian unsigned header length N, then
 * N bytes of UTF-8 JSON (an object; trailing spaces allowed), then the data section. The header
 * maps each tensor name to {"dtype": "F16", "shape": [d0, d1, ...], "data_offsets": [begin,
 * end]}, begin and end counting bytes from the start of the data section; an optional
 * "__metadata__" object (strings) is skipped. Tensors are row-major and little-endian.
 *
 * cf_st_open checks the whole header before anything is read: the length against the file size,
 * well-formed JSON, every entry's dtype (one of the format's names), shape (non-negative
 * integers, at most CF_ST_MAX_DIMS) and offsets (begin <= end inside the data section, end -
 * begin = the product of the shape times the element size), no duplicate names and no two
 * tensors sharing bytes. Every error is one line naming the file and the tensor.
 *
 * Values are read on demand with pread (plain POSIX I/O, nothing mapped, no communication): a
 * caller reads only the blocks it needs, so every rank of a parallel job reads its own part of
 * each tensor straight from the file. Only F32, F16 and BF16 tensors can be read (converted to
 * float32, exactly); reading any other dtype, or a block holding a NaN or an infinity, fails
 * with one line. All functions are Local.
 */
#ifndef CALMFLOW_SAFETENSORS_H
#define CALMFLOW_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"

#define CF_ST_MAX_DIMS 8
#define CF_ST_MAX_HEADER ((uint64_t)100 << 20) /* the format's limit on N (100 MB) */

struct cf_st_tensor {
  const char *name;
  const char *dtype; /* as in the file: "F32", "F16", "BF16", "I64", ... */
  int esize;         /* bytes per element */
  int ndim;          /* 0 .. CF_ST_MAX_DIMS */
  int64_t shape[CF_ST_MAX_DIMS];
  uint64_t begin, end; /* bytes from the start of the file's data section */
  int file;            /* index into cf_st.paths */
};

/* One file or a sharded set. Owns every buffer and descriptor; cf_st_close releases them. */
struct cf_st {
  int n_files;
  char **paths;           /* (n_files) */
  int *fds;               /* (n_files) */
  uint64_t *data_off;     /* (n_files) file offset of the data section: 8 + N */
  int n;                  /* tensors over all files */
  struct cf_st_tensor *t; /* (n) sorted by name */
  void **pools;           /* (n_files) names and dtypes of each file's tensors */
};

/* Local. Open and check one .safetensors file. On failure *s is released. */
cf_status cf_st_open(struct cf_st *s, const char *path);
/* Local. The weights of a Hugging Face model directory: dir/model.safetensors.index.json
 * ({"weight_map": {tensor: shard file name}}; every shard is opened and checked, each mapped
 * tensor must be in its shard, no tensor in two shards) or else dir/model.safetensors. */
cf_status cf_st_open_dir(struct cf_st *s, const char *dir);
void cf_st_close(struct cf_st *s); /* idempotent; *s all-zero after */

/* Local. The tensor called name, or NULL. */
const struct cf_st_tensor *cf_st_find(const struct cf_st *s, const char *name);
/* Local. The file a tensor is in (for messages). */
const char *cf_st_path(const struct cf_st *s, const struct cf_st_tensor *t);

/* Local. Tensor t seen as a matrix: rows = shape[0] (1 for a scalar), cols = the product of
 * the other dimensions (1 for a vector). */
int64_t cf_st_rows(const struct cf_st_tensor *t);
int64_t cf_st_cols(const struct cf_st_tensor *t);

/* Local. The block rows [r0, r0 + nr), columns [c0, c0 + nc) of t (as cf_st_rows x cf_st_cols)
 * into out (nr, nc) as float32. Errors: a dtype other than F32, F16, BF16; a block outside the
 * tensor; a read error or a file shorter than its header said; a NaN or infinity in the block
 * (naming its element). */
cf_status cf_st_read(const struct cf_st *s, const struct cf_st_tensor *t, int64_t r0, int64_t nr,
                     int64_t c0, int64_t nc, float *out);

#endif
