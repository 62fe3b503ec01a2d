/* cfm_ode.c: integration of dx/dt = F(t, x) with PETSc TS (adaptive Dormand-Prince 5(4) by
 * default, anything else through the options database), and CFM sampling on it: the learned
 * velocity field (under each point's condition, for a conditional model) integrated from
 * t = 0 to 1 for a batch of points. */
#include <math.h>
#include <petscts.h>
#include <string.h>

#include "calmflow/cfm.h"
#include "calmflow/cfpetsc.h"
#include "calmflow/mem.h"
#include "flow/cfm_impl.h"

void cf_ode_opts_default(struct cf_ode_opts *o) {
  memset(o, 0, sizeof *o);
  o->prefix = "cfm_";
  o->t0 = 0.0;
  o->t1 = 1.0;
  o->atol = 1e-4;
  o->rtol = 1e-4;
  o->dt0 = 1e-2;
  o->max_steps = 100000;
}

struct ode_ctx {
  cf_ode_rhs_fn rhs;
  void *ctx;
  int64_t n;
  int64_t nfe;
  cf_status st; /* the first failure of rhs */
};

static PetscErrorCode ode_rhs(TS ts, PetscReal t, Vec X, Vec F, void *p) {
  struct ode_ctx *c = p;
  const PetscScalar *x;
  PetscScalar *f;
  PetscFunctionBeginUser;
  PetscCall(VecGetArrayRead(X, &x));
  PetscCall(VecGetArray(F, &f));
  cf_status st = c->rhs(c->ctx, (double)t, c->n, x, f);
  c->nfe++;
  PetscCall(VecRestoreArray(F, &f));
  PetscCall(VecRestoreArrayRead(X, &x));
  if (st != CF_OK) {
    if (c->st == CF_OK) c->st = st;
    SETERRQ(PETSC_COMM_SELF, PETSC_ERR_USER, "the ODE right-hand side failed");
  }
  PetscFunctionReturn(0);
}

/* Set up ts (created by the caller) with our defaults, then the options; solve X in place. */
static PetscErrorCode ode_run(TS ts, struct ode_ctx *c, const struct cf_ode_opts *o, Vec X) {
  TSAdapt adapt;
  PetscFunctionBeginUser;
  PetscCall(TSSetOptionsPrefix(ts, o->prefix));
  PetscCall(TSSetProblemType(ts, TS_NONLINEAR));
  PetscCall(TSSetRHSFunction(ts, NULL, ode_rhs, c));
  PetscCall(TSSetType(ts, TSRK));
  PetscCall(TSRKSetType(ts, TSRK5DP));
  PetscCall(TSGetAdapt(ts, &adapt));
  PetscCall(TSAdaptSetType(adapt, TSADAPTBASIC));
  PetscCall(TSSetTime(ts, (PetscReal)o->t0));
  PetscCall(TSSetMaxTime(ts, (PetscReal)o->t1));
  PetscCall(TSSetTimeStep(ts, (PetscReal)o->dt0));
  PetscCall(TSSetMaxSteps(ts, (PetscInt)o->max_steps));
  PetscCall(TSSetExactFinalTime(ts, TS_EXACTFINALTIME_MATCHSTEP));
  PetscCall(TSSetTolerances(ts, (PetscReal)o->atol, NULL, (PetscReal)o->rtol, NULL));
  PetscCall(TSSetFromOptions(ts));
  PetscCall(TSSolve(ts, X));
  PetscFunctionReturn(0);
}

/* Statistics of a finished (or failed) solve. */
static PetscErrorCode ode_stats(TS ts, struct cf_ode_stats *st, TSConvergedReason *reason) {
  PetscInt steps = 0, rej = 0;
  PetscReal t = 0;
  TSType type = NULL;
  PetscFunctionBeginUser;
  PetscCall(TSGetStepNumber(ts, &steps));
  PetscCall(TSGetStepRejections(ts, &rej));
  PetscCall(TSGetTime(ts, &t));
  PetscCall(TSGetType(ts, &type));
  PetscCall(TSGetConvergedReason(ts, reason));
  st->steps = steps;
  st->rejected = rej;
  st->t_final = (double)t;
  snprintf(st->type, sizeof st->type, "%s", type ? type : "?");
  if (type != NULL && strcmp(type, TSRK) == 0) {
    TSRKType rk = NULL;
    PetscCall(TSRKGetType(ts, &rk));
    snprintf(st->type, sizeof st->type, "%s/%s", type, rk ? rk : "?");
  }
  PetscFunctionReturn(0);
}

cf_status cf_ode_solve(cf_ode_rhs_fn rhs, void *ctx, int64_t n, double *x,
                       const struct cf_ode_opts *o, struct cf_ode_stats *st) {
  struct cf_ode_opts def;
  if (o == NULL) {
    cf_ode_opts_default(&def);
    o = &def;
  }
  struct cf_ode_stats mine;
  if (st == NULL) st = &mine;
  memset(st, 0, sizeof *st);
  CF_CHECK(rhs != NULL && x != NULL, CF_EINVAL, "ode: no right-hand side or state");
  CF_CHECK(n >= 1 && n <= (int64_t)PETSC_MAX_INT, CF_EINVAL,
           "ode: state of %lld values; expected 1 .. %lld (PETSc's index range)", (long long)n,
           (long long)PETSC_MAX_INT);
  CF_CHECK(o->t1 > o->t0, CF_EINVAL, "ode: end time %g is not after the start %g", o->t1, o->t0);
  CF_CHECK(o->atol > 0 && o->rtol > 0, CF_EINVAL,
           "ode: tolerances atol %g, rtol %g; expected both positive", o->atol, o->rtol);
  CF_CHECK(o->dt0 > 0, CF_EINVAL, "ode: first step %g; expected a positive step", o->dt0);
  CF_CHECK(o->max_steps >= 1 && o->max_steps <= (int64_t)PETSC_MAX_INT, CF_EINVAL,
           "ode: step limit %lld; expected 1 .. %lld", (long long)o->max_steps,
           (long long)PETSC_MAX_INT);
  struct ode_ctx c = {.rhs = rhs, .ctx = ctx, .n = n, .nfe = 0, .st = CF_OK};
  Vec X = NULL;
  TS ts = NULL;
  CF_PETSC(VecCreateSeqWithArray(PETSC_COMM_SELF, 1, (PetscInt)n, x, &X));
  PetscErrorCode e = TSCreate(PETSC_COMM_SELF, &ts);
  if (e == 0) e = ode_run(ts, &c, o, X);
  TSConvergedReason reason = TS_CONVERGED_ITERATING;
  if (ts != NULL) (void)ode_stats(ts, st, &reason);
  st->nfe = c.nfe;
  TSDestroy(&ts);
  VecDestroy(&X);
  if (c.st != CF_OK) return c.st; /* rhs recorded its own message */
  const char *pfx = o->prefix ? o->prefix : "";
  CF_CHECK(e == 0, CF_EPETSC,
           "ode: PETSc TS %s failed at t = %g (PETSc error %d; see its message above; options "
           "-%sts_...)",
           st->type[0] ? st->type : "setup", st->t_final, (int)e, pfx);
  int short_of_t1 = st->t_final < o->t1 - 1e-9 * fmax(1.0, fabs(o->t1));
  CF_CHECK(reason > 0 && !short_of_t1, CF_EPETSC,
           "ode: PETSc TS %s stopped at t = %g of %g after %lld steps (%s); raise -%sts_max_steps "
           "or loosen -%sts_atol / -%sts_rtol",
           st->type, st->t_final, o->t1, (long long)st->steps, TSConvergedReasons[reason], pfx, pfx,
           pfx);
  return CF_OK;
}

/* The network and the points' conditions (NULL for an unconditional model). */
struct cfm_rhs_ctx {
  struct cf_cfm *m;
  const float *c; /* (n / D, C) */
};

/* dx/dt = v_theta(x, t[, c]) for the n / D points of x, max_batch at a time. Staging: im->dv
 * holds the float points, im->g[0] their times (both unused outside training's backward). */
static cf_status cfm_rhs(void *ctx, double t, int64_t n, const double *x, double *f) {
  const struct cfm_rhs_ctx *rc = ctx;
  struct cf_cfm *m = rc->m;
  struct cf_cfm_impl *im = m->impl;
  int64_t D = m->cfg.D, np = n / D;
  float *xs = im->dv, *ts = im->g[0];
  for (int64_t p0 = 0; p0 < np; p0 += m->max_batch) {
    int64_t B = np - p0 < m->max_batch ? np - p0 : m->max_batch;
    const double *xb = x + p0 * D;
    for (int64_t i = 0; i < B * D; i++)
      xs[i] = (float)xb[i];
    for (int64_t i = 0; i < B; i++)
      ts[i] = (float)t;
    const float *cb = rc->c ? rc->c + p0 * m->cfg.cond_dim : NULL;
    CF_TRY(cf_cfm_forward_c(m, B, xs, ts, cb, NULL));
    double *fb = f + p0 * D;
    for (int64_t i = 0; i < B * D; i++)
      fb[i] = (double)im->v[i];
  }
  im->last_B = 0; /* the staging buffers overwrote what a backward would need */
  return CF_OK;
}

cf_status cf_cfm_sample(struct cf_cfm *m, int64_t n, float *x, const struct cf_ode_opts *o,
                        struct cf_ode_stats *st) {
  return cf_cfm_sample_c(m, n, x, NULL, o, st);
}

cf_status cf_cfm_sample_c(struct cf_cfm *m, int64_t n, float *x, const float *c,
                          const struct cf_ode_opts *o, struct cf_ode_stats *st) {
  CF_CHECK(m != NULL && m->impl != NULL, CF_EINVAL, "cfm: sampling from an uninitialized model");
  CF_CHECK(m->cfg.cond_dim == 0 || c != NULL, CF_EINVAL,
           "cfm: sampling a model conditioned on %lld features without a condition",
           (long long)m->cfg.cond_dim);
  CF_CHECK(n >= 1, CF_EINVAL, "cfm: sampling %lld points; expected at least 1", (long long)n);
  size_t nv;
  CF_TRY(cf_mul_size(&nv, (size_t)n, (size_t)m->cfg.D, "cfm sampling state"));
  void *p = NULL;
  CF_TRY(cf_mul_size(&nv, nv, sizeof(double), "cfm sampling state"));
  CF_TRY(cf_alloc(&p, nv, "cfm sampling state"));
  double *y = p;
  size_t nval = nv / sizeof(double);
  for (size_t i = 0; i < nval; i++)
    y[i] = (double)x[i];
  struct cfm_rhs_ctx rc = {m, c};
  cf_status s = cf_ode_solve(cfm_rhs, &rc, (int64_t)nval, y, o, st);
  if (s == CF_OK) {
    size_t bad = nval;
    for (size_t i = 0; i < nval && bad == nval; i++)
      if (!isfinite(y[i])) bad = i;
    if (bad < nval) {
      s = cf_err(CF_ENUM, "cfm: sampled point %lld is not finite",
                 (long long)(bad / (size_t)m->cfg.D));
    } else {
      for (size_t i = 0; i < nval; i++)
        x[i] = (float)y[i];
    }
  }
  cf_free(&p);
  return s;
}
