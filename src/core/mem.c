/* mem.c: counted aligned allocation and two-pass arenas. */
#include "calmflow/mem.h"

#include <stdlib.h>
#include <string.h>

#define CF_ALIGN 64

static uint64_t g_count;
static size_t g_bytes, g_peak;

struct cf_block_head {
  size_t bytes;
  size_t pad[7]; /* keep the user pointer 64-byte aligned */
};

cf_status cf_alloc(void **p, size_t bytes, const char *what) {
  *p = NULL;
  /* the header is added with a check: bytes near SIZE_MAX must not wrap to a small block */
  CF_CHECK(bytes <= SIZE_MAX - sizeof(struct cf_block_head), CF_ENOMEM,
           "out of memory allocating %zu bytes for %s (more than the address space)", bytes, what);
  const size_t total = bytes + sizeof(struct cf_block_head);
  void *raw = NULL;
  if (posix_memalign(&raw, CF_ALIGN, total) != 0 || raw == NULL)
    return cf_err(CF_ENOMEM, "out of memory allocating %zu bytes for %s", bytes, what);
  memset(raw, 0, total);
  struct cf_block_head *h = raw;
  h->bytes = bytes;
  g_count++;
  g_bytes += bytes;
  if (g_bytes > g_peak) g_peak = g_bytes;
  *p = h + 1;
  return CF_OK;
}

void cf_free(void **p) {
  if (p == NULL || *p == NULL) return;
  struct cf_block_head *h = (struct cf_block_head *)*p - 1;
  g_bytes -= h->bytes;
  free(h);
  *p = NULL;
}

uint64_t cf_alloc_count(void) {
  return g_count;
}
size_t cf_alloc_bytes(void) {
  return g_bytes;
}
size_t cf_alloc_peak(void) {
  return g_peak;
}

cf_status cf_mul_size(size_t *out, size_t a, size_t b, const char *what) {
  if (a != 0 && b > SIZE_MAX / a) return cf_err(CF_EINVAL, "size of %s overflows", what);
  *out = a * b;
  return CF_OK;
}

void cf_arena_plan(struct cf_arena *a) {
  a->base = NULL;
  a->cap = 0;
  a->used = 0;
}

cf_status cf_arena_commit(struct cf_arena *a, size_t bytes, const char *what) {
  size_t need = a->used > bytes ? a->used : bytes;
  void *p = NULL;
  CF_TRY(cf_alloc(&p, need ? need : CF_ALIGN, what));
  a->base = p;
  a->cap = need;
  a->used = 0;
  return CF_OK;
}

float *cf_arena_floats(struct cf_arena *a, size_t n) {
  /* a size that overflows saturates the plan (its commit then fails) and never fits */
  const size_t most = (SIZE_MAX - CF_ALIGN) / sizeof(float);
  size_t bytes =
      n > most ? SIZE_MAX - CF_ALIGN + 1 : (n * sizeof(float) + CF_ALIGN - 1) / CF_ALIGN * CF_ALIGN;
  size_t off = a->used;
  if (a->base == NULL) {
    a->used = bytes > SIZE_MAX - off ? SIZE_MAX : off + bytes;
    return NULL;
  }
  if (bytes > a->cap || off > a->cap - bytes) return NULL;
  a->used += bytes;
  return (float *)(a->base + off);
}

void cf_arena_rewind(struct cf_arena *a) {
  a->used = 0;
}

void cf_arena_release(struct cf_arena *a) {
  void *p = a->base;
  cf_free(&p);
  a->base = NULL;
  a->cap = 0;
  a->used = 0;
}
