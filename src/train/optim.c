/* optim.c: AdamW (decoupled weight decay, the default) and the authors' Adam with coupled L2
 * (weight decay added to the gradient, which heads-experiment.md shows kills attention),
 * the learning-rate schedule and global-norm gradient clipping. */
#include <math.h>
#include <string.h>

#include "calmflow/mem.h"
#include "calmflow/train.h"

cf_status cf_optim_init(struct cf_optim *o, size_t n) {
  memset(o, 0, sizeof *o);
  void *m = NULL, *v = NULL;
  CF_TRY(cf_alloc(&m, n * sizeof(float), "optimizer first moments"));
  cf_status st = cf_alloc(&v, n * sizeof(float), "optimizer second moments");
  if (st != CF_OK) {
    cf_free(&m);
    return st;
  }
  o->n = n;
  o->m = m;
  o->v = v;
  return CF_OK;
}

void cf_optim_release(struct cf_optim *o) {
  void *m = o->m, *v = o->v;
  cf_free(&m);
  cf_free(&v);
  memset(o, 0, sizeof *o);
}

double cf_train_lr(const struct cf_train_cfg *c, int64_t step) {
  if (c->warmup > 0 && step < c->warmup) return c->lr * (double)(step + 1) / (double)c->warmup;
  int64_t span = c->steps - c->warmup;
  if (c->decay == CF_DECAY_CONSTANT || span <= 1) return c->lr;
  double f = (double)(step - c->warmup) / (double)(span - 1);
  if (f > 1) f = 1;
  double w = c->decay == CF_DECAY_COSINE ? 0.5 * (1.0 + cos(3.14159265358979323846 * f)) : 1.0 - f;
  return c->lr_min + (c->lr - c->lr_min) * w;
}

float cf_clip_scale(double norm, double maxnorm) {
  return maxnorm > 0 && norm > maxnorm ? (float)(maxnorm / (norm + 1e-6)) : 1.0f;
}

void cf_clip_apply(float *g, size_t n, double norm, double maxnorm) {
  float k = cf_clip_scale(norm, maxnorm);
  if (k != 1.0f)
    for (size_t i = 0; i < n; i++)
      g[i] *= k;
}

double cf_clip_grad(float *g, size_t n, double maxnorm) {
  double s = 0;
  for (size_t i = 0; i < n; i++)
    s += (double)g[i] * g[i];
  double norm = sqrt(s);
  cf_clip_apply(g, n, norm, maxnorm);
  return norm;
}

/* The update loops, one per optimizer, without branches or aliasing so the compiler vectorizes
 * them (this file is built with -fno-math-errno: sqrtf of a second moment, never negative,
 * then compiles to one instruction). Memory bound: 28 bytes a parameter. */
static void adamw_loop(size_t n, float *restrict p, const float *restrict g, float *restrict m,
                       float *restrict v, float gscale, float b1, float omb1, float b2, float omb2,
                       float lrwd, float step, float sbc2, float eps) {
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] * gscale;
    float pi = p[i] - lrwd * p[i];
    float mi = b1 * m[i] + omb1 * gi;
    float vi = b2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    /* torch's form: p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) */
    p[i] = pi - step * mi / (sqrtf(vi) / sbc2 + eps);
  }
}

static void adam_l2_loop(size_t n, float *restrict p, const float *restrict g, float *restrict m,
                         float *restrict v, float gscale, float b1, float omb1, float b2,
                         float omb2, float wd, float step, float sbc2, float eps) {
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] * gscale + wd * p[i];
    float mi = b1 * m[i] + omb1 * gi;
    float vi = b2 * v[i] + omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] -= step * mi / (sqrtf(vi) / sbc2 + eps);
  }
}

void cf_optim_step_scaled(struct cf_optim *o, const struct cf_train_cfg *c, float *p,
                          const float *g, double lr, float gscale) {
  o->t++;
  const float b1 = (float)c->beta1, b2 = (float)c->beta2, eps = (float)c->adam_eps;
  /* 1 - beta in double, as torch does: (1.0f - (float)0.999) is off by 1.3e-5 relative and
   * would no longer match the bias correction computed in double */
  const float omb1 = (float)(1.0 - c->beta1), omb2 = (float)(1.0 - c->beta2);
  const float wd = (float)c->weight_decay;
  const float bc1 = (float)(1.0 - pow(c->beta1, (double)o->t));
  const float bc2 = (float)(1.0 - pow(c->beta2, (double)o->t));
  const float lrf = (float)lr, sbc2 = sqrtf(bc2);
  if (c->optimizer == CF_OPT_ADAM_L2)
    adam_l2_loop(o->n, p, g, o->m, o->v, gscale, b1, omb1, b2, omb2, wd, lrf / bc1, sbc2, eps);
  else
    adamw_loop(o->n, p, g, o->m, o->v, gscale, b1, omb1, b2, omb2, lrf * wd, lrf / bc1, sbc2, eps);
}

void cf_optim_step(struct cf_optim *o, const struct cf_train_cfg *c, float *p, const float *g,
                   double lr) {
  cf_optim_step_scaled(o, c, p, g, lr, 1.0f);
}

static const char *g_opt_names[] = {"adamw", "adam_l2"};
static const char *g_decay_names[] = {"cosine", "linear", "constant"};
static const char *g_nan_names[] = {"stop", "skip"};

const char *cf_nan_policy_name(enum cf_nan_policy p) {
  return g_nan_names[p];
}

cf_status cf_nan_policy_parse(const char *s, enum cf_nan_policy *p) {
  for (int i = 0; i < 2; i++)
    if (strcmp(s, g_nan_names[i]) == 0) {
      *p = (enum cf_nan_policy)i;
      return CF_OK;
    }
  return cf_err(CF_EINVAL, "option -train_nan_policy: unknown policy '%s' (expected stop or skip)",
                s);
}

const char *cf_optimizer_name(enum cf_optimizer o) {
  return g_opt_names[o];
}
const char *cf_decay_name(enum cf_decay d) {
  return g_decay_names[d];
}

cf_status cf_optimizer_parse(const char *s, enum cf_optimizer *o) {
  for (int i = 0; i < 2; i++)
    if (strcmp(s, g_opt_names[i]) == 0) {
      *o = (enum cf_optimizer)i;
      return CF_OK;
    }
  return cf_err(CF_EINVAL,
                "option -train_optimizer: unknown optimizer '%s' (expected adamw or adam_l2)", s);
}

cf_status cf_decay_parse(const char *s, enum cf_decay *d) {
  for (int i = 0; i < 3; i++)
    if (strcmp(s, g_decay_names[i]) == 0) {
      *d = (enum cf_decay)i;
      return CF_OK;
    }
  return cf_err(CF_EINVAL,
                "option -train_decay: unknown schedule '%s' (expected cosine, linear or constant)",
                s);
}
