/* test_noalloc.c: no allocation inside a training or sampling step after warm-up.
 * The program is linked with -Wl,--wrap for malloc, calloc, realloc, free, posix_memalign and
 * aligned_alloc (tests/cmake/train.cmake), which redirects every call from the objects of this
 * link -- the test and calmflow's static libraries (cf_alloc included) -- to the counters
 * below; calls made inside shared libraries (OpenBLAS, MPI, libc) are not seen, so the count
 * covers calmflow's own code. For every head, a training step as src/train/loop.c does it
 * (zero_grad, forward with dropout, backward, gradient norm, clipping, AdamW) runs 6 times and
 * steps 3..6 must not allocate or free; a KV-cached rollout (extend the newest point, sample
 * it) and a recomputing one (reset, extend the whole prefix, sample) must not allocate after
 * their first step. A canary allocation inside a counted region checks that the counting
 * works. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/model.h"
#include "calmflow/rng.h"
#include "calmflow/train.h"
#include "cf_test.h"

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t m);
void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);
void *__wrap_malloc(size_t n);
void *__wrap_calloc(size_t n, size_t m);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);
int __wrap_posix_memalign(void **p, size_t a, size_t n);
void *__wrap_aligned_alloc(size_t a, size_t n);

/* volatile: GCC assumes malloc and free touch no user memory, so it would keep these in
 * registers across the calls */
static volatile int g_on;          /* counting */
static volatile unsigned long g_n; /* calls counted */

void *__wrap_malloc(size_t n) {
  g_n += g_on;
  return __real_malloc(n);
}
void *__wrap_calloc(size_t n, size_t m) {
  g_n += g_on;
  return __real_calloc(n, m);
}
void *__wrap_realloc(void *p, size_t n) {
  g_n += g_on;
  return __real_realloc(p, n);
}
void __wrap_free(void *p) {
  g_n += g_on && p != NULL;
  __real_free(p);
}
int __wrap_posix_memalign(void **p, size_t a, size_t n) {
  g_n += g_on;
  return __real_posix_memalign(p, a, n);
}
void *__wrap_aligned_alloc(size_t a, size_t n) {
  g_n += g_on;
  return __real_aligned_alloc(a, n);
}

static void fill(float *x, size_t n, uint64_t index) {
  struct cf_rng r = {.seed = 5, .domain = CF_RNG_DATA, .step = 0, .index = index};
  cf_rng_normal(&r, 0, x, n);
}

static void run(enum cf_head head) {
  const struct cf_model_cfg cfg = {.D = 3,
                                   .S = 2,
                                   .P = 2,
                                   .N = 4,
                                   .H = 16,
                                   .layers = 2,
                                   .heads = 2,
                                   .ffn = 64,
                                   .rotary_pct = 0.5,
                                   .rotary_base = 10000.0,
                                   .head = head,
                                   .dropout = 0.1f,
                                   .logstd_min = -7,
                                   .logstd_max = 5,
                                   .gmm_k = 4,
                                   .fm_width = 12,
                                   .fm_draws = 2,
                                   .fm_steps = 3,
                                   .cvae_dz = 3};
  const char *name = cf_head_name(head);
  const int64_t B = 3, D = cfg.D, P = cfg.P, N = cfg.N, S = cfg.S, H = cfg.H;
  const int64_t J = N * P, T = J * S, W = cf_head_noise_width(&cfg);
  struct cf_model m;
  cf_status st = cf_model_init(&m, &cfg, B);
  EXPECT(st == CF_OK, "%s: init: %s", name, cf_errmsg());
  if (st != CF_OK) return;
  cf_model_init_weights(&m, 3);
  struct cf_train_cfg tc = {.steps = 6,
                            .batch = B * P,
                            .lr = 1e-3,
                            .optimizer = CF_OPT_ADAMW,
                            .weight_decay = 0.01,
                            .beta1 = 0.9,
                            .beta2 = 0.999,
                            .adam_eps = 1e-8,
                            .clip = 1.0};
  struct cf_optim opt;
  EXPECT_OK(cf_optim_init(&opt, m.n_params), "optimizer init");
  size_t nz = (size_t)(B * J * D), nh = (size_t)(B * T * H);
  float *z = cf_test_floats(nz), *y = cf_test_floats(nz), *eps = cf_test_floats(nh);
  fill(z, nz, 1), fill(y, nz, 2), fill(eps, nh, 3);

  /* training: steps 1, 2 warm up, steps 3..6 counted */
  unsigned long train_n = 0;
  for (int64_t step = 0; step < 6; step++) {
    g_n = 0, g_on = step >= 2;
    struct cf_dropkey dk = {.seed = 11, .step = (uint32_t)step, .seq0 = 0};
    struct cf_loss loss;
    cf_model_zero_grad(&m);
    st = cf_model_forward(&m, B, z, y, head == CF_HEAD_VAE ? eps : NULL, &dk, (double)(B * J), 1.0f,
                          &loss);
    if (st == CF_OK) st = cf_model_backward(&m);
    if (st == CF_OK) {
      double norm = sqrt(cf_model_grad_sqnorm(&m, NULL));
      cf_clip_apply(m.grads, m.n_params, norm, tc.clip);
      cf_optim_step(&opt, &tc, m.params, m.grads, cf_train_lr(&tc, step));
    }
    g_on = 0;
    train_n += g_n;
    EXPECT(st == CF_OK && isfinite(loss.loss), "%s: training step %lld: %s", name,
           (long long)step + 1, cf_errmsg());
  }
  printf("  %s: %lu allocation calls in training steps 3..6\n", name, train_n);
  EXPECT(train_n == 0, "%s: training steps 3..6 made %lu allocation calls", name, train_n);

  /* sampling: a KV-cached rollout (np = P per call) and a recomputing one (the whole prefix
   * every step), both after their first step */
  struct cf_kvcache kv, rc;
  g_n = 0, g_on = 1; /* the libraries' calls are counted too: cache init allocates */
  EXPECT_OK(cf_kvcache_init(&kv, &m, B, T, P * S), "kv cache init");
  g_on = 0;
  EXPECT(g_n > 0, "%s: cf_kvcache_init made no allocation call the counter saw", name);
  EXPECT_OK(cf_kvcache_init(&rc, &m, B, T, T), "recompute cache init");
  float *zn = cf_test_floats((size_t)(B * J * D)), *hn = cf_test_floats(nh);
  float *noise = cf_test_floats((size_t)(B * J * W)), *ys = cf_test_floats((size_t)(B * J * D));
  fill(noise, (size_t)(B * J * W), 4);
  unsigned long kv_n = 0, rc_n = 0;
  for (int64_t t = 0; t + 1 < N; t++) {
    for (int64_t b = 0; b < B; b++)
      memcpy(zn + b * P * D, z + (b * J + t * P) * D, (size_t)(P * D) * sizeof(float));
    g_n = 0, g_on = t >= 1;
    st = cf_model_extend(&m, &kv, zn, P, hn);
    if (st == CF_OK) st = cf_head_sample(&m, &kv, P, hn, noise, 1.0f, ys);
    g_on = 0;
    kv_n += g_n;
    EXPECT(st == CF_OK, "%s: kv rollout step %lld: %s", name, (long long)t + 1, cf_errmsg());
    /* recompute: points 0 .. t of every sequence, the head on all of them */
    const int64_t np = (t + 1) * P;
    for (int64_t b = 0; b < B; b++)
      memcpy(zn + b * np * D, z + b * J * D, (size_t)(np * D) * sizeof(float));
    g_n = 0, g_on = t >= 1;
    cf_kvcache_reset(&rc);
    st = cf_model_extend(&m, &rc, zn, np, hn);
    if (st == CF_OK) st = cf_head_sample(&m, &rc, np, hn, noise, 1.0f, ys);
    g_on = 0;
    rc_n += g_n;
    EXPECT(st == CF_OK, "%s: recompute rollout step %lld: %s", name, (long long)t + 1, cf_errmsg());
  }
  printf("  %s: %lu allocation calls in KV-cached rollout steps 2..%lld, %lu recomputing\n", name,
         kv_n, (long long)(N - 1), rc_n);
  EXPECT(kv_n == 0, "%s: KV-cached rollout steps after the first made %lu allocation calls", name,
         kv_n);
  EXPECT(rc_n == 0, "%s: recomputing rollout steps after the first made %lu allocation calls", name,
         rc_n);
  cf_kvcache_release(&kv);
  cf_kvcache_release(&rc);
  cf_optim_release(&opt);
  cf_model_release(&m);
  free(z), free(y), free(eps), free(zn), free(hn), free(noise), free(ys);
}

int main(void) {
  /* the canary: an allocation inside a counted region must be seen */
  g_n = 0, g_on = 1;
  void *volatile p = malloc(16);
  free(p);
  g_on = 0;
  EXPECT(g_n == 2, "the allocation counter saw %lu of 2 calls (is -Wl,--wrap in effect?)", g_n);
  const enum cf_head heads[] = {CF_HEAD_VAE, CF_HEAD_GAUSS, CF_HEAD_GMM, CF_HEAD_FM, CF_HEAD_CVAE};
  for (int h = 0; h < 5; h++)
    run(heads[h]);
  return cf_test_done("test_noalloc");
}
