/* test_mem.c: counted allocation, arena planning and overflow checks. */
#include <stdint.h>
#include <stdio.h>

#include "calmflow/mem.h"
#include "cf_test.h"

int main(void) {
  struct cf_arena a;
  cf_arena_plan(&a);
  float *p0 = cf_arena_floats(&a, 3), *p1 = cf_arena_floats(&a, 100);
  EXPECT(!p0 && !p1 && a.used == 64 + 448, "plan used %zu", a.used);
  uint64_t c0 = cf_alloc_count();
  EXPECT_OK(cf_arena_commit(&a, 0, "test"), "commit");
  EXPECT(cf_alloc_count() == c0 + 1, "count");
  p0 = cf_arena_floats(&a, 3);
  p1 = cf_arena_floats(&a, 100);
  EXPECT(p0 && p1 && ((uintptr_t)p1 % 64) == 0 && p1 - p0 == 16, "layout");
  EXPECT(cf_arena_floats(&a, 1) == NULL, "overflow not caught");
  cf_arena_release(&a);
  cf_arena_release(&a);
  size_t out;
  EXPECT(cf_mul_size(&out, SIZE_MAX / 2, 3, "big") == CF_EINVAL, "overflow");
  EXPECT(cf_errmsg()[0] != '\0', "no message");
  void *q = NULL;
  EXPECT(cf_alloc(&q, 10, "q") == CF_OK && cf_alloc_bytes() == 10, "bytes");
  cf_free(&q);
  EXPECT(q == NULL && cf_alloc_bytes() == 0, "free");
  return cf_test_done("test_mem");
}
