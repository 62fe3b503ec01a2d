/* fault.c: the CF_FAULT parser and the actions behind cf_fault_point (see fault.h).
 *
 * The armed entries live in a small static table (no cf_alloc, so injecting faults does not
 * change allocation counts). One arrival counter per distinct site named in CF_FAULT. */
#include "calmflow/fault.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* The known sites; keep in step with the list in fault.h. */
static const char *const sites[] = {"grad_allreduce", "ckpt_write",    "ckpt_rename", "h5_write",
                                    "sample_batch",   "pipeline_send", "nan_grad",    "nan_loss"};
#define NSITES ((int)(sizeof sites / sizeof sites[0]))
#define FIRST_VALUE_SITE 6 /* sites[6..] hand a value to cf_fault_poison */

enum fault_action {
  ACT_HANG,
  ACT_KILL,
  ACT_EXIT,
  ACT_EIO,
  ACT_ENOSPC,
  ACT_DELAY,
  ACT_NAN,
  ACT_INF
};

#define MAX_ENTRIES 32
#define MAX_SPEC 4096

struct fault_entry {
  int site;           /* index into sites[] */
  int64_t occurrence; /* >= 1, or 0 for '*' */
  enum fault_action action;
  double delay_s; /* ACT_DELAY */
};

int cf_fault_armed_;
static struct fault_entry g_entries[MAX_ENTRIES];
static int g_nentries;
static int64_t g_count[NSITES]; /* arrivals per site since cf_fault_init */
static int g_rank;

void cf_fault_reset(void) {
  cf_fault_armed_ = 0;
  g_nentries = 0;
  memset(g_count, 0, sizeof g_count);
}

/* Parse a whole decimal integer >= lo from s (no sign, no spaces); 0 on failure. */
static int parse_int(const char *s, int64_t lo, int64_t *out) {
  if (*s == '\0') return 0;
  int64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return 0;
    if (v > (INT64_MAX - 9) / 10) return 0;
    v = v * 10 + (*p - '0');
  }
  if (v < lo) return 0;
  *out = v;
  return 1;
}

/* Parse one entry "site:rank:occurrence:action" (modified in place). */
static cf_status parse_entry(char *e, int idx, int rank, const char *orig) {
  char *field[4];
  int n = 0;
  field[n++] = e;
  for (char *p = e; *p; p++)
    if (*p == ':') {
      if (n == 4) {
        n = 5;
        break;
      }
      *p = '\0';
      field[n++] = p + 1;
    }
  CF_CHECK(n == 4, CF_EINVAL,
           "CF_FAULT: entry %d '%s' has %s fields; expected site:rank:occurrence:action", idx, orig,
           n < 4 ? "too few" : "too many");

  int site = -1;
  for (int s = 0; s < NSITES; s++)
    if (strcmp(field[0], sites[s]) == 0) site = s;
  if (site < 0) {
    char known[256] = "";
    for (int s = 0; s < NSITES; s++) {
      strncat(known, s ? ", " : "", sizeof known - strlen(known) - 1);
      strncat(known, sites[s], sizeof known - strlen(known) - 1);
    }
    return cf_err(CF_EINVAL, "CF_FAULT: entry %d '%s': unknown site '%s' (expected one of: %s)",
                  idx, orig, field[0], known);
  }

  int64_t r = -1;
  CF_CHECK(strcmp(field[1], "*") == 0 || parse_int(field[1], 0, &r), CF_EINVAL,
           "CF_FAULT: entry %d '%s': rank '%s' is not a rank number >= 0 or '*'", idx, orig,
           field[1]);

  int64_t occ = 0;
  CF_CHECK(strcmp(field[2], "*") == 0 || parse_int(field[2], 1, &occ), CF_EINVAL,
           "CF_FAULT: entry %d '%s': occurrence '%s' is not a count >= 1 or '*'", idx, orig,
           field[2]);

  struct fault_entry fe = {.site = site, .occurrence = occ, .delay_s = 0};
  const char *a = field[3];
  if (strcmp(a, "hang") == 0)
    fe.action = ACT_HANG;
  else if (strcmp(a, "kill") == 0)
    fe.action = ACT_KILL;
  else if (strcmp(a, "exit") == 0)
    fe.action = ACT_EXIT;
  else if (strcmp(a, "eio") == 0)
    fe.action = ACT_EIO;
  else if (strcmp(a, "enospc") == 0)
    fe.action = ACT_ENOSPC;
  else if (strcmp(a, "nan") == 0 || strcmp(a, "inf") == 0) {
    CF_CHECK(site >= FIRST_VALUE_SITE, CF_EINVAL,
             "CF_FAULT: entry %d '%s': action '%s' needs a value site (nan_grad or nan_loss), "
             "not '%s'",
             idx, orig, a, field[0]);
    fe.action = a[0] == 'n' ? ACT_NAN : ACT_INF;
  } else if (strncmp(a, "delay=", 6) == 0) {
    char *end = NULL;
    errno = 0;
    double d = strtod(a + 6, &end);
    CF_CHECK(a[6] != '\0' && *end == '\0' && errno == 0 && isfinite(d) && d >= 0 && d <= 1e6,
             CF_EINVAL,
             "CF_FAULT: entry %d '%s': delay '%s' is not a number of seconds in [0, 1e6]", idx,
             orig, a + 6);
    fe.action = ACT_DELAY;
    fe.delay_s = d;
  } else
    return cf_err(CF_EINVAL,
                  "CF_FAULT: entry %d '%s': unknown action '%s' (expected hang, kill, exit, eio, "
                  "enospc, delay=<seconds>, nan or inf)",
                  idx, orig, a);

  if (r >= 0 && r != rank) return CF_OK; /* valid, but for another rank */
  CF_CHECK(g_nentries < MAX_ENTRIES, CF_EINVAL, "CF_FAULT: more than %d entries", MAX_ENTRIES);
  g_entries[g_nentries++] = fe;
  return CF_OK;
}

cf_status cf_fault_init(int rank) {
  cf_fault_reset();
  g_rank = rank;
  const char *env = getenv("CF_FAULT");
  if (env == NULL || env[0] == '\0') return CF_OK;
  size_t len = strlen(env);
  CF_CHECK(len < MAX_SPEC, CF_EINVAL, "CF_FAULT: value is %zu characters; at most %d allowed", len,
           MAX_SPEC - 1);
  char buf[MAX_SPEC], orig[MAX_SPEC];
  memcpy(buf, env, len + 1);
  int idx = 0;
  char *p = buf;
  for (;;) {
    char *comma = strchr(p, ',');
    if (comma) *comma = '\0';
    idx++;
    memcpy(orig, p, strlen(p) + 1);
    cf_status st = parse_entry(p, idx, rank, orig);
    if (st != CF_OK) {
      cf_fault_reset();
      return st;
    }
    if (!comma) break;
    p = comma + 1;
  }
  cf_fault_armed_ = g_nentries > 0;
  return CF_OK;
}

static void say(const char *what, const char *site, int64_t n) {
  char line[256];
  int k =
      snprintf(line, sizeof line, "calmflow: injected fault: rank %d %s at %s (occurrence %lld)\n",
               g_rank, what, site, (long long)n);
  if (k > 0) {
    ssize_t w = write(STDERR_FILENO, line, (size_t)k < sizeof line ? (size_t)k : sizeof line - 1);
    (void)w;
  }
}

static void sleep_seconds(double s) {
  struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - floor(s)) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* One arrival at site; x (NULL at a plain site) receives the nan / inf actions. */
static cf_status hit(const char *site, double *x) {
  int s = -1;
  for (int i = 0; i < NSITES; i++)
    if (strcmp(site, sites[i]) == 0) s = i;
  if (s < 0) return CF_OK; /* a site no entry can name */
  int64_t n = ++g_count[s];
  for (int i = 0; i < g_nentries; i++) {
    const struct fault_entry *e = &g_entries[i];
    if (e->site != s || (e->occurrence != 0 && e->occurrence != n)) continue;
    switch (e->action) {
    case ACT_HANG:
      say("hangs", site, n);
      for (;;)
        sleep(1000);
    case ACT_KILL:
      say("kills itself (SIGKILL)", site, n);
      raise(SIGKILL);
      _exit(1); /* not reached */
    case ACT_EXIT:
      say("exits (_exit 1)", site, n);
      _exit(1);
    case ACT_EIO:
      errno = EIO;
      return cf_err(CF_EIO, "injected fault at %s (eio)", site);
    case ACT_ENOSPC:
      errno = ENOSPC;
      return cf_err(CF_EIO, "injected fault at %s (enospc)", site);
    case ACT_DELAY:
      sleep_seconds(e->delay_s);
      break;
    case ACT_NAN:
    case ACT_INF:
      if (x != NULL) *x = e->action == ACT_NAN ? (double)NAN : (double)INFINITY;
      break;
    }
  }
  return CF_OK;
}

cf_status cf_fault_hit_(const char *site) {
  return hit(site, NULL);
}

cf_status cf_fault_poison_(const char *site, double *x) {
  return hit(site, x);
}
