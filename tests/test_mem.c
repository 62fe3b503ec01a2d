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
  /* the peak: the most held at once, not the sum and not the current */
  size_t pk = cf_alloc_peak();
  void *r = NULL;
  EXPECT(cf_alloc(&q, 100000, "q") == CF_OK && cf_alloc(&r, 50000, "r") == CF_OK, "two blocks");
  EXPECT(cf_alloc_peak() == (pk > 150000 ? pk : 150000), "peak %zu with 150000 held",
         cf_alloc_peak());
  cf_free(&q);
  cf_free(&r);
  EXPECT(cf_alloc(&q, 120000, "q") == CF_OK, "third block");
  EXPECT(cf_alloc_peak() == (pk > 150000 ? pk : 150000),
         "peak %zu after a free and a smaller "
         "block (want 150000)",
         cf_alloc_peak());
  cf_free(&q);
  /* sizes near SIZE_MAX: no wrap-around to a small block, and arenas saturate */
  cf_err_clear();
  EXPECT(cf_alloc(&q, SIZE_MAX - 8, "huge") == CF_ENOMEM && q == NULL && cf_alloc_bytes() == 0,
         "cf_alloc(SIZE_MAX - 8) did not fail cleanly");
  EXPECT(strstr(cf_errmsg(), "huge") != NULL, "message '%s' does not name the block", cf_errmsg());
  cf_err_clear();
  cf_arena_plan(&a);
  (void)cf_arena_floats(&a, 3);
  (void)cf_arena_floats(&a, SIZE_MAX / 2);
  (void)cf_arena_floats(&a, 3);
  EXPECT(a.used == SIZE_MAX, "a plan with an overflowing piece: used %zu, want SIZE_MAX", a.used);
  EXPECT(cf_arena_commit(&a, 0, "huge arena") == CF_ENOMEM, "committing an overflowing plan");
  cf_err_clear();
  cf_arena_plan(&a);
  (void)cf_arena_floats(&a, 16);
  EXPECT_OK(cf_arena_commit(&a, 0, "small arena"), "commit");
  EXPECT(cf_arena_floats(&a, SIZE_MAX / 4) == NULL && cf_arena_floats(&a, 16) != NULL,
         "a committed arena handed out an overflowing piece");
  cf_arena_release(&a);
  return cf_test_done("test_mem");
}
