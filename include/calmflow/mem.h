/* mem.h: counted allocation and arenas.
 *
 * All long-lived buffers come from cf_alloc (checked, 64-byte aligned, counted)
 * so tests can assert that a training or sampling step allocates nothing:
 * read cf_alloc_count() before and after the step.
 *
 * An arena is one allocation carved into aligned pieces; planning a layout is
 * two passes over the same code: first with base == NULL to count bytes
 * (cf_arena_plan), then for real.
 */
#ifndef CALMFLOW_MEM_H
#define CALMFLOW_MEM_H

#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"

/* Local. *p = 64-byte-aligned zeroed block of `bytes`; CF_ENOMEM with a message naming `what`. */
cf_status cf_alloc(void **p, size_t bytes, const char *what);
/* Local. Free a block from cf_alloc and set *p = NULL (NULL is fine). */
void cf_free(void **p);
/* Local. Number of successful cf_alloc calls so far, and bytes currently held. */
uint64_t cf_alloc_count(void);
size_t cf_alloc_bytes(void);
/* Local. The most bytes held at once so far (the heap calmflow itself asked for). */
size_t cf_alloc_peak(void);

/* Local. Multiply sizes with an overflow check; CF_EINVAL naming `what` on overflow. */
cf_status cf_mul_size(size_t *out, size_t a, size_t b, const char *what);

struct cf_arena {
  char *base; /* NULL while planning */
  size_t cap; /* bytes owned */
  size_t used;
};

/* Local. Planning arena: counts bytes, hands out NULL pointers. */
void cf_arena_plan(struct cf_arena *a);
/* Local. Allocate a planned arena of a->used bytes (or `bytes` if larger) and rewind it. */
cf_status cf_arena_commit(struct cf_arena *a, size_t bytes, const char *what);
/* Local. Next n floats (64-byte aligned). NULL while planning; NULL + never overflows
 * in a committed arena only if the plan was followed (checked: returns NULL on overflow). */
float *cf_arena_floats(struct cf_arena *a, size_t n);
void cf_arena_rewind(struct cf_arena *a);
void cf_arena_release(struct cf_arena *a);

#endif
