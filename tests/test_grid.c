/* test_grid.c: the DP x PP x CP x TP process grid. At every layout that fits the world size:
 * coordinates follow rank = t + n_tp*(c + n_cp*(p + n_pp*d)), the four sub-communicators hold
 * exactly the right members in coordinate order, every owned communicator returns errors. The
 * layout check (each bad option named), the stage layer ranges, the balanced causal token
 * split, and release (idempotent, no communicator leaked, also when init fails half-way).
 *
 * Communicators are counted through the MPI profiling interface: this file defines the MPI
 * communicator constructors and MPI_Comm_free, counts live communicators, can make the n-th
 * constructor fail (on every rank at once, so nobody hangs), and forwards to PMPI_*. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/grid.h"
#include "cf_test.h"

/* ---- communicator accounting (PMPI interposition) ---- */

static long live_comms; /* communicators created and not yet freed */
static long n_created;  /* constructor calls so far */
static long fail_at;    /* make constructor call number fail_at fail (0: never) */

static int created(int e, MPI_Comm *c) {
  if (e == MPI_SUCCESS && *c != MPI_COMM_NULL) live_comms++;
  return e;
}
static int inject(void) {
  return ++n_created == fail_at;
}

int MPI_Comm_dup(MPI_Comm comm, MPI_Comm *newcomm) {
  if (inject()) return MPI_ERR_OTHER;
  return created(PMPI_Comm_dup(comm, newcomm), newcomm);
}
int MPI_Comm_dup_with_info(MPI_Comm comm, MPI_Info info, MPI_Comm *newcomm) {
  if (inject()) return MPI_ERR_OTHER;
  return created(PMPI_Comm_dup_with_info(comm, info, newcomm), newcomm);
}
int MPI_Comm_split(MPI_Comm comm, int color, int key, MPI_Comm *newcomm) {
  if (inject()) return MPI_ERR_OTHER;
  return created(PMPI_Comm_split(comm, color, key, newcomm), newcomm);
}
int MPI_Comm_split_type(MPI_Comm comm, int type, int key, MPI_Info info, MPI_Comm *newcomm) {
  if (inject()) return MPI_ERR_OTHER;
  return created(PMPI_Comm_split_type(comm, type, key, info, newcomm), newcomm);
}
int MPI_Comm_create(MPI_Comm comm, MPI_Group group, MPI_Comm *newcomm) {
  if (inject()) return MPI_ERR_OTHER;
  return created(PMPI_Comm_create(comm, group, newcomm), newcomm);
}
int MPI_Cart_create(MPI_Comm comm, int ndims, const int dims[], const int periods[], int reorder,
                    MPI_Comm *newcomm) {
  if (inject()) return MPI_ERR_OTHER;
  return created(PMPI_Cart_create(comm, ndims, dims, periods, reorder, newcomm), newcomm);
}
int MPI_Cart_sub(MPI_Comm comm, const int remain[], MPI_Comm *newcomm) {
  if (inject()) return MPI_ERR_OTHER;
  return created(PMPI_Cart_sub(comm, remain, newcomm), newcomm);
}
int MPI_Comm_free(MPI_Comm *comm) {
  int e = PMPI_Comm_free(comm);
  if (e == MPI_SUCCESS) live_comms--;
  return e;
}

/* ---- helpers ---- */

static int64_t rule(const int n[4], const int co[4]) { /* n, co: {dp, pp, cp, tp} */
  return co[3] + (int64_t)n[3] * (co[2] + (int64_t)n[2] * (co[1] + (int64_t)n[1] * co[0]));
}

static int all_null(const struct cf_grid *g) {
  return g->cart == MPI_COMM_NULL && g->tp == MPI_COMM_NULL && g->cp == MPI_COMM_NULL &&
         g->pp == MPI_COMM_NULL && g->dp == MPI_COMM_NULL && g->dpcp == MPI_COMM_NULL &&
         g->mp == MPI_COMM_NULL;
}

/* every (tp, pp, cp) with tp*pp*cp dividing world */
static int layouts(int world, int out[][3]) {
  int k = 0;
  for (int tp = 1; tp <= world; tp++)
    for (int pp = 1; pp <= world; pp++)
      for (int cp = 1; cp <= world; cp++)
        if (world % (tp * pp * cp) == 0) {
          out[k][0] = tp;
          out[k][1] = pp;
          out[k][2] = cp;
          k++;
        }
  return k;
}

/* ---- local: the layout check ---- */

static void expect_check(cf_status want, const char *sub, int world, int tp, int pp, int cp,
                         int64_t layers, int64_t heads, int64_t tokens, int64_t mb) {
  cf_status st = cf_grid_check(world, tp, pp, cp, layers, heads, tokens, mb);
  char what[160];
  snprintf(what, sizeof what,
           "cf_grid_check(world %d, tp %d, pp %d, cp %d, L %lld, H %lld, T %lld, M %lld)", world,
           tp, pp, cp, (long long)layers, (long long)heads, (long long)tokens, (long long)mb);
  if (want == CF_OK) {
    EXPECT_OK(st, what);
    return;
  }
  EXPECT(st == want, "%s: status %s, expected %s", what, cf_status_name(st), cf_status_name(want));
  EXPECT_FAIL(st, sub, what);
}

static void test_check(void) {
  expect_check(CF_ETOPO, "world size 6 is not divisible by -par_tp x -par_pp x -par_cp = 4", 6, 2,
               2, 1, 4, 4, 16, 4);
  expect_check(CF_ETOPO, "-par_tp x -par_pp x -par_cp", 4, 1, 1, 3, 4, 4, 16, 4);
  expect_check(CF_ETOPO, "-par_tp x -par_pp x -par_cp", 2, 4, 1, 1, 4, 4, 16, 4);
  expect_check(CF_EINVAL, "-par_tp", 4, 0, 1, 1, 4, 4, 16, 4);
  expect_check(CF_EINVAL, "-par_pp", 4, 1, -1, 1, 4, 4, 16, 4);
  expect_check(CF_EINVAL, "-par_cp", 4, 1, 1, 0, 4, 4, 16, 4);
  expect_check(CF_ETOPO, "-net_layers", 4, 1, 4, 1, 6, 4, 16, 4);
  expect_check(CF_ETOPO, "-net_layers", 2, 1, 2, 1, 3, 4, 16, 4);
  expect_check(CF_ETOPO, "-net_heads", 4, 2, 1, 1, 4, 3, 16, 4);
  expect_check(CF_ETOPO, "-net_heads", 4, 4, 1, 1, 4, 6, 16, 4);
  expect_check(CF_ETOPO, "-par_cp", 4, 1, 1, 4, 4, 4, 7, 4);
  expect_check(CF_ETOPO, "too short", 2, 1, 1, 2, 4, 4, 3, 4);
  expect_check(CF_ETOPO, "-train_microbatches", 4, 1, 2, 1, 4, 4, 16, 1);
  expect_check(CF_ETOPO, "-train_microbatches", 4, 1, 4, 1, 4, 4, 16, 3);
  expect_check(CF_EINVAL, "-net_layers", 1, 1, 1, 1, 0, 4, 16, 4);
  expect_check(CF_EINVAL, "-net_heads", 1, 1, 1, 1, 4, 0, 16, 4);
  expect_check(CF_EINVAL, "-train_microbatches", 1, 1, 1, 1, 4, 4, 16, 0);
  expect_check(CF_EINVAL, "world size", 0, 1, 1, 1, 4, 4, 16, 4);

  /* Over a range of worlds: OK exactly when tp*pp*cp divides the world (other sizes valid);
   * the boundary cases T = 2cp (OK) / 2cp - 1 and M = pp (OK) / pp - 1. */
  for (int world = 1; world <= 12; world++)
    for (int tp = 1; tp <= 13; tp++)
      for (int pp = 1; pp <= 13; pp++)
        for (int cp = 1; cp <= 13; cp++) {
          int fits = world % (tp * pp * cp) == 0;
          cf_status st = cf_grid_check(world, tp, pp, cp, 3 * pp, 2 * tp, 2 * cp, pp);
          EXPECT((st == CF_OK) == fits, "world %d tp %d pp %d cp %d: %s", world, tp, pp, cp,
                 st == CF_OK ? "accepted" : cf_errmsg());
          cf_err_clear();
          if (!fits) continue;
          expect_check(CF_ETOPO, "-par_cp", world, tp, pp, cp, 3 * pp, 2 * tp, 2 * cp - 1, pp);
          if (pp > 1)
            expect_check(CF_ETOPO, "-train_microbatches", world, tp, pp, cp, 3 * pp, 2 * tp, 2 * cp,
                         pp - 1);
          if (pp > 1)
            expect_check(CF_ETOPO, "-net_layers", world, tp, pp, cp, 3 * pp + 1, 2 * tp, 2 * cp,
                         pp);
          if (tp > 1)
            expect_check(CF_ETOPO, "-net_heads", world, tp, pp, cp, 3 * pp, 2 * tp + 1, 2 * cp, pp);
        }
}

/* ---- local: layer ranges and token chunks ---- */

static void test_stage_layers(void) {
  for (int64_t layers = 0; layers <= 40; layers++)
    for (int pp = 1; pp <= 10; pp++) {
      int64_t prev = 0, mn = INT64_MAX, mx = -1;
      for (int s = 0; s < pp; s++) {
        int64_t l0, l1;
        cf_grid_stage_layers(layers, pp, s, &l0, &l1);
        EXPECT(l0 == prev && l1 >= l0, "layers %lld pp %d stage %d: [%lld, %lld) after %lld",
               (long long)layers, pp, s, (long long)l0, (long long)l1, (long long)prev);
        prev = l1;
        if (l1 - l0 < mn) mn = l1 - l0;
        if (l1 - l0 > mx) mx = l1 - l0;
      }
      EXPECT(prev == layers, "layers %lld pp %d: stages end at %lld", (long long)layers, pp,
             (long long)prev);
      EXPECT(mx - mn <= 1, "layers %lld pp %d: stage sizes %lld..%lld", (long long)layers, pp,
             (long long)mn, (long long)mx);
      if (layers % pp == 0)
        EXPECT(mn == layers / pp && mx == layers / pp, "layers %lld pp %d: unequal stages",
               (long long)layers, pp);
    }
}

/* causal attention work of tokens [lo, hi): sum of (index + 1) */
static int64_t causal_work(int64_t lo, int64_t hi) {
  return (hi * (hi + 1) - lo * (lo + 1)) / 2;
}

static void test_cp_chunks(void) {
  enum { MAXCP = 16 };
  int bad_part = 0, bad_bal = 0;
  for (int cp = 1; cp <= MAXCP; cp++)
    for (int64_t T = 0; T <= 600; T++) {
      int n = 2 * cp;
      int64_t clo[2 * MAXCP], chi[2 * MAXCP], work[MAXCP], count[MAXCP];
      for (int c = 0; c < cp; c++) {
        int64_t lo[2], hi[2];
        cf_grid_cp_chunks(cp, c, T, lo, hi);
        clo[c] = lo[0];
        chi[c] = hi[0];
        clo[n - 1 - c] = lo[1];
        chi[n - 1 - c] = hi[1];
        work[c] = causal_work(lo[0], hi[0]) + causal_work(lo[1], hi[1]);
        count[c] = hi[0] - lo[0] + hi[1] - lo[1];
      }
      /* the 2cp chunks, placed by the rule "rank c owns c and 2cp-1-c", tile [0, T) in order */
      int64_t prev = 0, mn = INT64_MAX, mx = -1;
      int ok = 1;
      for (int k = 0; k < n; k++) {
        ok &= clo[k] == prev && chi[k] >= clo[k];
        prev = chi[k];
        if (chi[k] - clo[k] < mn) mn = chi[k] - clo[k];
        if (chi[k] - clo[k] > mx) mx = chi[k] - clo[k];
      }
      ok &= prev == T && mx - mn <= 1;
      int64_t cmn = INT64_MAX, cmx = -1, wmn = INT64_MAX, wmx = -1, wsum = 0;
      for (int c = 0; c < cp; c++) {
        if (count[c] < cmn) cmn = count[c];
        if (count[c] > cmx) cmx = count[c];
        if (work[c] < wmn) wmn = work[c];
        if (work[c] > wmx) wmx = work[c];
        wsum += work[c];
      }
      ok &= cmx - cmn <= 1 && wsum == causal_work(0, T);
      if (!ok && bad_part++ < 5)
        EXPECT(0,
               "cp %d T %lld: chunks do not partition [0, T) into near-equal pieces in order "
               "(sizes %lld..%lld, per-rank tokens %lld..%lld)",
               cp, (long long)T, (long long)mn, (long long)mx, (long long)cmn, (long long)cmx);
      /* balance: less than one token's work (<= T) apart, and within 25% of the mean at
       * T >= 8cp (a contiguous split would be about 2cp-1 times apart) */
      if (T >= 8 * cp) {
        double rel = (double)(wmx - wmn) / ((double)wsum / cp);
        if ((wmx - wmn > T || rel > 0.25) && bad_bal++ < 5)
          EXPECT(0, "cp %d T %lld: causal work %lld..%lld (%.3f of the mean) is unbalanced", cp,
                 (long long)T, (long long)wmn, (long long)wmx, rel);
      }
    }
  /* exact balance when 2cp divides T; a c outside [0, cp) owns nothing */
  for (int cp = 1; cp <= 8; cp++) {
    int64_t w0 = -1;
    for (int c = 0; c < cp; c++) {
      int64_t lo[2], hi[2];
      cf_grid_cp_chunks(cp, c, 48 * cp, lo, hi);
      EXPECT(hi[0] - lo[0] == 24 && hi[1] - lo[1] == 24 && lo[0] == 24 * c &&
                 lo[1] == 24 * (2 * cp - 1 - c),
             "cp %d c %d: chunks [%lld,%lld) [%lld,%lld)", cp, c, (long long)lo[0],
             (long long)hi[0], (long long)lo[1], (long long)hi[1]);
      int64_t w = causal_work(lo[0], hi[0]) + causal_work(lo[1], hi[1]);
      if (w0 < 0) w0 = w;
      EXPECT(w == w0, "cp %d c %d: work %lld != %lld", cp, c, (long long)w, (long long)w0);
    }
    int64_t lo[2], hi[2];
    cf_grid_cp_chunks(cp, cp, 100, lo, hi);
    EXPECT(lo[0] == hi[0] && lo[1] == hi[1], "cp %d: rank cp owns tokens", cp);
  }
}

/* ---- collective: one layout ---- */

static void expect_errors_return(MPI_Comm c, const char *name) {
  MPI_Errhandler eh;
  if (MPI_Comm_get_errhandler(c, &eh) != MPI_SUCCESS) {
    EXPECT(0, "%s: MPI_Comm_get_errhandler failed", name);
    return;
  }
  EXPECT(eh == MPI_ERRORS_RETURN, "%s: error handler is not MPI_ERRORS_RETURN", name);
  MPI_Errhandler_free(&eh);
}

static void test_layout(MPI_Comm comm, int tp, int pp, int cp) {
  int size, rank;
  MPI_Comm_size(comm, &size);
  MPI_Comm_rank(comm, &rank);
  long live0 = live_comms;
  struct cf_grid g;
  char what[96];
  snprintf(what, sizeof what, "grid tp %d pp %d cp %d on %d ranks", tp, pp, cp, size);
  MPI_Errhandler eh0, eh1;
  MPI_Comm_get_errhandler(comm, &eh0);
  cf_status st = cf_grid_init(&g, comm, tp, pp, cp);
  EXPECT_OK(st, what);
  MPI_Comm_get_errhandler(comm, &eh1);
  EXPECT(eh0 == eh1, "%s: init changed the error handler of the given comm", what);
  MPI_Errhandler_free(&eh0);
  MPI_Errhandler_free(&eh1);
  if (st != CF_OK) return;

  int dp = size / (tp * pp * cp);
  int n[4] = {dp, pp, cp, tp};
  int co[4] = {g.dp_rank, g.pp_rank, g.cp_rank, g.tp_rank};
  EXPECT(g.size == size && g.rank == rank, "%s: size/rank %d/%d, comm %d/%d", what, g.size, g.rank,
         size, rank);
  EXPECT(g.n_dp == dp && g.n_pp == pp && g.n_cp == cp && g.n_tp == tp,
         "%s: degrees dp%d pp%d cp%d tp%d", what, g.n_dp, g.n_pp, g.n_cp, g.n_tp);
  /* coordinates from the rule, decoded independently */
  EXPECT(g.tp_rank == rank % tp && g.cp_rank == rank / tp % cp &&
             g.pp_rank == rank / (tp * cp) % pp && g.dp_rank == rank / (tp * cp * pp),
         "%s: rank %d has coordinates d%d p%d c%d t%d", what, rank, co[0], co[1], co[2], co[3]);
  EXPECT(rule(n, co) == rank, "%s: rule gives %lld for rank %d", what, (long long)rule(n, co),
         rank);

  /* the Cartesian communicator itself */
  int topo = MPI_UNDEFINED, cdims[4] = {0}, cper[4] = {1, 1, 1, 1}, cco[4] = {0}, cmp = -1;
  MPI_Topo_test(g.cart, &topo);
  EXPECT(topo == MPI_CART, "%s: cart is not Cartesian", what);
  if (topo == MPI_CART) {
    MPI_Cart_get(g.cart, 4, cdims, cper, cco);
    for (int i = 0; i < 4; i++)
      EXPECT(cdims[i] == n[i] && cper[i] == 0 && cco[i] == co[i],
             "%s: Cart_get dim %d: size %d period %d coord %d", what, i, cdims[i], cper[i], cco[i]);
  }
  MPI_Comm_compare(g.cart, comm, &cmp);
  EXPECT(cmp == MPI_CONGRUENT, "%s: cart is not congruent to the given comm (%d)", what, cmp);

  /* sub-communicators: size = degree, rank = coordinate, members = the rule in order */
  MPI_Comm sub[4] = {g.dp, g.pp, g.cp, g.tp};
  const char *name[4] = {"dp", "pp", "cp", "tp"};
  for (int a = 0; a < 4; a++) {
    int ssize = -1, srank = -1;
    MPI_Comm_size(sub[a], &ssize);
    MPI_Comm_rank(sub[a], &srank);
    EXPECT(ssize == n[a] && srank == co[a], "%s: %s comm size %d rank %d, expected %d %d", what,
           name[a], ssize, srank, n[a], co[a]);
    long long want = 0, got = -1;
    int members[64];
    for (int v = 0; v < n[a]; v++) {
      int c2[4] = {co[0], co[1], co[2], co[3]};
      c2[a] = v;
      want += rule(n, c2);
    }
    long long mine = rank;
    MPI_Allreduce(&mine, &got, 1, MPI_LONG_LONG, MPI_SUM, sub[a]);
    EXPECT(got == want, "%s: %s group sum of world ranks %lld, rule says %lld", what, name[a], got,
           want);
    if (ssize == n[a] && n[a] <= 64) {
      MPI_Allgather(&rank, 1, MPI_INT, members, 1, MPI_INT, sub[a]);
      for (int v = 0; v < n[a]; v++) {
        int c2[4] = {co[0], co[1], co[2], co[3]};
        c2[a] = v;
        EXPECT(members[v] == rule(n, c2), "%s: %s group member %d is rank %d, rule says %lld", what,
               name[a], v, members[v], (long long)rule(n, c2));
      }
    }
    expect_errors_return(sub[a], name[a]);
  }
  expect_errors_return(g.cart, "cart");

  char buf[96], want[96];
  cf_grid_describe(&g, buf, sizeof buf);
  snprintf(want, sizeof want, "dp%d x pp%d x cp%d x tp%d (%d rank%s)", dp, pp, cp, tp, size,
           size == 1 ? "" : "s");
  EXPECT(strcmp(buf, want) == 0, "%s: describe '%s', expected '%s'", what, buf, want);
  /* the two combined groups: dp x cp (same parameters) and pp x tp (one whole model) */
  {
    int s1 = -1, s2 = -1;
    long long want1 = 0, want2 = 0, got1 = -1, got2 = -1, mine = rank;
    MPI_Comm_size(g.dpcp, &s1);
    MPI_Comm_size(g.mp, &s2);
    EXPECT(s1 == n[0] * n[2] && s2 == n[1] * n[3], "%s: dpcp size %d, mp size %d", what, s1, s2);
    for (int u = 0; u < n[0]; u++)
      for (int v = 0; v < n[2]; v++) {
        int c2[4] = {u, co[1], v, co[3]};
        want1 += rule(n, c2);
      }
    for (int u = 0; u < n[1]; u++)
      for (int v = 0; v < n[3]; v++) {
        int c2[4] = {co[0], u, co[2], v};
        want2 += rule(n, c2);
      }
    MPI_Allreduce(&mine, &got1, 1, MPI_LONG_LONG, MPI_SUM, g.dpcp);
    MPI_Allreduce(&mine, &got2, 1, MPI_LONG_LONG, MPI_SUM, g.mp);
    EXPECT(got1 == want1 && got2 == want2, "%s: dpcp / mp members wrong (%lld/%lld, %lld/%lld)",
           what, got1, want1, got2, want2);
  }
  EXPECT(live_comms == live0 + 7, "%s: grid holds %ld communicators, expected 7 (cart + 6)", what,
         live_comms - live0);

  cf_grid_release(&g);
  EXPECT(all_null(&g), "%s: handles not MPI_COMM_NULL after release", what);
  EXPECT(live_comms == live0, "%s: %ld communicators leaked by release", what, live_comms - live0);
  cf_grid_release(&g);
  EXPECT(live_comms == live0, "%s: second release changed the count", what);
}

/* ---- collective: release and failure paths ---- */

static void test_release(MPI_Comm comm, int world) {
  struct cf_grid z;
  memset(&z, 0, sizeof z);
  cf_grid_release(&z); /* zeroed grid: no-op */
  cf_grid_release(NULL);

  /* a bad layout fails before any communicator exists, with the option named */
  long live0 = live_comms;
  struct cf_grid g;
  EXPECT_FAIL(cf_grid_init(&g, comm, world + 1, 1, 1), "-par_tp x -par_pp x -par_cp",
              "init tp = world + 1");
  EXPECT(all_null(&g) && live_comms == live0, "failed init left communicators");
  cf_grid_release(&g);
  EXPECT_FAIL(cf_grid_init(&g, comm, 1, 0, 1), "-par_pp", "init pp = 0");
  cf_grid_release(&g);
  EXPECT(live_comms == live0, "release after failed init changed the count");

  /* an MPI failure at each constructor of init (dup, cart, 4 slices) frees what was built */
  for (int k = 1; k <= 6; k++) {
    fail_at = n_created + k;
    cf_status st = cf_grid_init(&g, comm, 1, 1, 1);
    fail_at = 0;
    EXPECT(st == CF_EMPI, "injected failure at constructor %d: status %s", k, cf_status_name(st));
    cf_err_clear();
    EXPECT(all_null(&g) && live_comms == live0,
           "injected failure at constructor %d: %ld communicators left", k, live_comms - live0);
    cf_grid_release(&g);
  }
  EXPECT(live_comms == live0, "failure paths leaked %ld communicators", live_comms - live0);

  /* many init/release cycles over all layouts: nothing accumulates */
  int lay[64][3];
  int nl = layouts(world, lay);
  int cycles = world <= 2 ? 2000 : 100, leaked = 0;
  for (int i = 0; i < cycles; i++) {
    const int *l = lay[i % nl];
    cf_status st = cf_grid_init(&g, comm, l[0], l[1], l[2]);
    if (st != CF_OK) {
      EXPECT_OK(st, "init/release cycle");
      break;
    }
    cf_grid_release(&g);
    if (live_comms != live0 && leaked++ == 0)
      EXPECT(0, "cycle %d: %ld communicators leaked", i, live_comms - live0);
  }
  EXPECT(live_comms == live0, "after %d cycles: %ld communicators leaked", cycles,
         live_comms - live0);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int world, rank;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  cf_test_rank = rank;

  test_check();
  test_stage_layers();
  test_cp_chunks();

  /* The layouts are built on communicators whose error handler is MPI_ERRORS_ARE_FATAL: the
   * grid must set MPI_ERRORS_RETURN on its own communicators rather than inherit the caller's. */
  MPI_Comm fatal;
  MPI_Comm_dup(MPI_COMM_WORLD, &fatal);
  MPI_Comm_set_errhandler(fatal, MPI_ERRORS_ARE_FATAL);
  int lay[64][3];
  int nl = layouts(world, lay);
  for (int i = 0; i < nl; i++)
    test_layout(fatal, lay[i][0], lay[i][1], lay[i][2]);
  MPI_Comm_free(&fatal);

  /* a grid on a sub-communicator: world split in two halves (the rank order reversed in the
   * second), each half gets its own grid and coordinates follow the half's ranks */
  if (world >= 2) {
    MPI_Comm half;
    int upper = rank >= world / 2;
    MPI_Comm_split(MPI_COMM_WORLD, upper, upper ? world - rank : rank, &half);
    MPI_Comm_set_errhandler(half, MPI_ERRORS_ARE_FATAL);
    int hs;
    MPI_Comm_size(half, &hs);
    int hl[64][3];
    int nh = layouts(hs, hl);
    for (int i = 0; i < nh; i++)
      test_layout(half, hl[i][0], hl[i][1], hl[i][2]);
    MPI_Comm_free(&half);
  }

  test_release(MPI_COMM_WORLD, world);

  MPI_Allreduce(MPI_IN_PLACE, &cf_test_fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  int rc = cf_test_done("test_grid");
  MPI_Finalize();
  return rc;
}
