/* test_mem.c: counted allocation, arena planning and overflow checks. */
#include <stdint.h>
#include <stdio.h>

#include "calmflow/mem.h"

int main(void) {
  int fails = 0;
  struct cf_arena a;
  cf_arena_plan(&a);
  float *p0 = cf_arena_floats(&a, 3), *p1 = cf_arena_floats(&a, 100);
  if (p0 || p1 || a.used != 64 + 448) fails++, printf("FAIL plan used %zu\n", a.used);
  uint64_t c0 = cf_alloc_count();
  if (cf_arena_commit(&a, 0, "test") != CF_OK) fails++, printf("FAIL commit\n");
  if (cf_alloc_count() != c0 + 1) fails++, printf("FAIL count\n");
  p0 = cf_arena_floats(&a, 3);
  p1 = cf_arena_floats(&a, 100);
  if (!p0 || !p1 || ((uintptr_t)p1 % 64) != 0 || p1 - p0 != 16) fails++, printf("FAIL layout\n");
  if (cf_arena_floats(&a, 1) != NULL) fails++, printf("FAIL overflow not caught\n");
  cf_arena_release(&a);
  cf_arena_release(&a);
  size_t out;
  if (cf_mul_size(&out, SIZE_MAX / 2, 3, "big") != CF_EINVAL) fails++, printf("FAIL overflow\n");
  if (cf_errmsg()[0] == '\0') fails++, printf("FAIL no message\n");
  void *q = NULL;
  if (cf_alloc(&q, 10, "q") != CF_OK || cf_alloc_bytes() != 10) fails++, printf("FAIL bytes\n");
  cf_free(&q);
  if (q != NULL || cf_alloc_bytes() != 0) fails++, printf("FAIL free\n");
  printf(fails ? "test_mem: %d failures\n" : "test_mem: ok\n", fails);
  return fails != 0;
}
