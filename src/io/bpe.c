/* bpe.c: byte-level BPE tokenizer (GPT-2, GPT-NeoX, Pythia). Reads a Hugging Face
 * tokenizer.json or GPT-2's encoder.json + vocab.bpe (JSON through cJSON), encodes UTF-8
 * text to ids (added tokens, GPT-2's pre-tokenizer written out by hand, merges by rank with
 * a cache) and decodes ids to bytes. See include/calmflow/bpe.h for the contract. */
#include "calmflow/bpe.h"

#include <cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "calmflow/mem.h"
#include "io/bpe_unicode.h"

enum { CC_OTHER, CC_L, CC_N, CC_NO, CC_WS, CC_M, CC_PC };

#define CACHE_SLOTS 16384u         /* power of two; cleared at half full */
#define CACHE_KEY_BYTES (1u << 20) /* bytes of cached words */
#define CACHE_IDS (1u << 18)       /* ids of cached words */
#define CACHE_MAX_WORD 64u         /* longer words are not cached */

struct cf_bpe_added {
  uint32_t off, len; /* content in pool */
  int32_t id;
  bool special, normalized, lstrip, rstrip, single_word;
};

struct cf_bpe_cslot {
  uint64_t h;
  uint32_t koff, klen, ioff, nid; /* klen 0: empty */
};

struct cf_bpe {
  char src[512]; /* the file(s), for messages */
  /* vocabulary: entry e spells pool[voff[e] .. + vlen[e]) (byte-level symbols) -> vid[e] */
  char *pool;
  size_t pool_len, pool_cap;
  uint32_t *voff, *vlen;
  int32_t *vid;
  size_t nv;
  uint32_t *vmap; /* open addressing over entries: e + 1, 0 empty */
  size_t vmask;
  /* merges: (left id << 32 | right id) -> rank, merged id */
  uint64_t *mkey;
  uint32_t *mrank;
  int32_t *mres;
  size_t mmask, nm;
  /* added tokens, longest first */
  struct cf_bpe_added *added;
  size_t nadded;
  /* by id: what decode writes */
  int32_t vocab_size;
  uint32_t *doff, *dlen; /* bytes in dec; dlen UINT32_MAX: no such id */
  char *dec;
  int32_t byte_id[256]; /* id of each byte's symbol, -1 when the vocabulary lacks it */
  bool add_prefix_space, nfc, ignore_merges;
  int32_t unk_id;
  /* cache of merged words */
  struct cf_bpe_cslot *cslot;
  char *ckey;
  int32_t *cids;
  size_t ccount, ckey_len, cids_len;
  /* scratch */
  int32_t *sym;
  size_t sym_cap;
  char *buf; /* merges' concatenations, ignore_merges' spellings */
  size_t buf_cap;
  char *pbuf; /* a piece with its prefix space */
  size_t pbuf_cap;
};

/* ---- small helpers ---- */

static uint64_t hash_bytes(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ s[i]) * 1099511628211ull;
  return h ^ (h >> 29);
}

static uint64_t hash_pair(uint64_t k) {
  k ^= k >> 33;
  k *= 0xff51afd7ed558ccdull;
  k ^= k >> 33;
  k *= 0xc4ceb9fe1a85ec53ull;
  return k ^ (k >> 33);
}

static size_t pow2_at_least(size_t n) {
  size_t p = 16;
  while (p < n)
    p <<= 1;
  return p;
}

/* Grow a cf_alloc block to hold `need` elements of `elem` bytes (contents kept). */
static cf_status grow(void **p, size_t *cap, size_t need, size_t elem, const char *what) {
  if (need <= *cap) return CF_OK;
  size_t ncap = *cap ? *cap : 64;
  while (ncap < need)
    ncap *= 2;
  size_t bytes;
  CF_TRY(cf_mul_size(&bytes, ncap, elem, what));
  void *q = NULL;
  CF_TRY(cf_alloc(&q, bytes, what));
  if (*p && *cap) memcpy(q, *p, *cap * elem);
  cf_free(p);
  *p = q;
  *cap = ncap;
  return CF_OK;
}

/* Decode one code point of valid UTF-8 at s; *adv = its length. */
static uint32_t u8get(const unsigned char *s, size_t *adv) {
  if (s[0] < 0x80) {
    *adv = 1;
    return s[0];
  }
  if (s[0] < 0xE0) {
    *adv = 2;
    return (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F);
  }
  if (s[0] < 0xF0) {
    *adv = 3;
    return (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
  }
  *adv = 4;
  return (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
         (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
}

static size_t u8put(uint32_t c, char *o) {
  if (c < 0x80) {
    o[0] = (char)c;
    return 1;
  }
  if (c < 0x800) {
    o[0] = (char)(0xC0 | c >> 6);
    o[1] = (char)(0x80 | (c & 0x3F));
    return 2;
  }
  if (c < 0x10000) {
    o[0] = (char)(0xE0 | c >> 12);
    o[1] = (char)(0x80 | (c >> 6 & 0x3F));
    o[2] = (char)(0x80 | (c & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | c >> 18);
  o[1] = (char)(0x80 | (c >> 12 & 0x3F));
  o[2] = (char)(0x80 | (c >> 6 & 0x3F));
  o[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}

size_t cf_utf8_check(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k;
    uint32_t min;
    if (c >= 0xC2 && c <= 0xDF) {
      k = 1;
      min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
      k = 2;
      min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
      k = 3;
      min = 0x10000;
    } else {
      return i;
    }
    if (n - i <= k) return i;
    for (size_t j = 1; j <= k; j++)
      if ((s[i + j] & 0xC0) != 0x80) return i;
    size_t adv;
    uint32_t cp = u8get(s + i, &adv);
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += adv;
  }
  return n;
}

/* GPT-2's byte -> symbol map: the printable Latin-1 bytes ('!'..'~', 0xA1..0xAC,
 * 0xAE..0xFF) stand for themselves, the other 68 (0x00..0x20, 0x7F..0xA0, 0xAD) for
 * U+0100 .. U+0143 in byte order. */
static uint32_t byte_symbol(unsigned b) {
  if (b <= 0x20) return 0x100 + b;
  if (b >= 0x7F && b <= 0xA0) return 0x100 + 33 + (b - 0x7F);
  if (b == 0xAD) return 0x100 + 67;
  return b;
}

/* The byte a symbol stands for, or -1 when c is no byte symbol. */
static int symbol_byte(uint32_t c) {
  if (c < 0x100) return (c <= 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD) ? -1 : (int)c;
  if (c < 0x100 + 33) return (int)(c - 0x100);
  if (c < 0x100 + 67) return (int)(c - 0x100 - 33 + 0x7F);
  if (c == 0x100 + 67) return 0xAD;
  return -1;
}

/* ---- Unicode classes ---- */

static int uni_class(uint32_t c) {
  if (c < 0x80) {
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return CC_L;
    if (c >= '0' && c <= '9') return CC_N;
    if (c == ' ' || (c >= 0x09 && c <= 0x0D)) return CC_WS;
    if (c == '_') return CC_PC;
    return CC_OTHER;
  }
  size_t lo = 0, hi = sizeof cf_bpe_uni_class / sizeof cf_bpe_uni_class[0];
  while (hi - lo > 1) { /* last entry whose first <= c */
    size_t mid = (lo + hi) / 2;
    if ((cf_bpe_uni_class[mid] >> 3) <= c)
      lo = mid;
    else
      hi = mid;
  }
  return (int)(cf_bpe_uni_class[lo] & 7);
}

static bool is_letter(int k) {
  return k == CC_L;
}
static bool is_number(int k) {
  return k == CC_N || k == CC_NO;
}
static bool is_space(int k) {
  return k == CC_WS;
}
static bool is_other(int k) {
  return !is_letter(k) && !is_number(k) && !is_space(k);
}

static int uni_ccc(uint32_t c) {
  if (c < 0x300) return 0;
  size_t lo = 0, hi = sizeof cf_bpe_uni_ccc / sizeof cf_bpe_uni_ccc[0];
  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if ((cf_bpe_uni_ccc[mid] >> 8) <= c)
      lo = mid;
    else
      hi = mid;
  }
  return (int)(cf_bpe_uni_ccc[lo] & 0xFF);
}

static bool nfc_no(uint32_t c) {
  size_t lo = 0, hi = sizeof cf_bpe_uni_nfc_no / sizeof cf_bpe_uni_nfc_no[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (cf_bpe_uni_nfc_no[mid][1] < c)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < sizeof cf_bpe_uni_nfc_no / sizeof cf_bpe_uni_nfc_no[0] &&
         cf_bpe_uni_nfc_no[lo][0] <= c;
}

static bool nfc_maybe(uint32_t c) {
  if ((c >= 0x1161 && c <= 0x1175) || (c >= 0x11A8 && c <= 0x11C2)) return true;
  size_t lo = 0, hi = sizeof cf_bpe_uni_nfc_maybe / sizeof cf_bpe_uni_nfc_maybe[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (cf_bpe_uni_nfc_maybe[mid] < c)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < sizeof cf_bpe_uni_nfc_maybe / sizeof cf_bpe_uni_nfc_maybe[0] &&
         cf_bpe_uni_nfc_maybe[lo] == c;
}

/* Whether NFC composes a followed by b into one code point. */
static bool nfc_composes(uint32_t a, uint32_t b) {
  if (a >= 0x1100 && a <= 0x1112 && b >= 0x1161 && b <= 0x1175) return true;
  if (a >= 0xAC00 && a <= 0xD7A3 && (a - 0xAC00) % 28 == 0 && b >= 0x11A8 && b <= 0x11C2)
    return true;
  size_t lo = 0, hi = sizeof cf_bpe_uni_comp / sizeof cf_bpe_uni_comp[0];
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    const uint32_t *e = cf_bpe_uni_comp[mid];
    if (e[0] < a || (e[0] == a && e[1] < b))
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < sizeof cf_bpe_uni_comp / sizeof cf_bpe_uni_comp[0] && cf_bpe_uni_comp[lo][0] == a &&
         cf_bpe_uni_comp[lo][1] == b;
}

/* Offset of the first code point at which valid UTF-8 text might not be NFC, or n. Exact
 * for NFC_Quick_Check = No, canonical order and starters that compose with the character
 * before them; conservative for combining marks (ccc > 0) that NFC may compose. */
static size_t nfc_check(const unsigned char *s, size_t n) {
  uint32_t prev = 0;
  int prev_ccc = 0;
  bool have_prev = false;
  size_t i = 0, adv;
  while (i < n) {
    uint32_t c = u8get(s + i, &adv);
    if (c >= 0x300) {
      int cc = uni_ccc(c);
      if (nfc_no(c)) return i;
      if (cc != 0 && prev_ccc > cc) return i;
      if (nfc_maybe(c) && (cc != 0 || (have_prev && nfc_composes(prev, c)))) return i;
      prev_ccc = cc;
    } else {
      prev_ccc = 0;
    }
    prev = c;
    have_prev = true;
    i += adv;
  }
  return n;
}

/* ---- vocabulary and merges ---- */

static int32_t vocab_find(const struct cf_bpe *b, const char *s, size_t n) {
  if (b->vmap == NULL) return -1;
  size_t i = hash_bytes(s, n) & b->vmask;
  for (;;) {
    uint32_t e = b->vmap[i];
    if (e == 0) return -1;
    e--;
    if (b->vlen[e] == n && memcmp(b->pool + b->voff[e], s, n) == 0) return b->vid[e];
    i = (i + 1) & b->vmask;
  }
}

/* Append bytes to the string pool; *off = where they went. */
static cf_status pool_add(struct cf_bpe *b, const char *s, size_t n, uint32_t *off) {
  CF_CHECK(b->pool_len + n < UINT32_MAX, CF_ECORRUPT, "%s: vocabulary strings exceed 4 GiB",
           b->src);
  CF_TRY(grow((void **)&b->pool, &b->pool_cap, b->pool_len + n + 1, 1, "bpe strings"));
  memcpy(b->pool + b->pool_len, s, n);
  *off = (uint32_t)b->pool_len;
  b->pool_len += n;
  return CF_OK;
}

/* Size the vocabulary for nv entries. */
static cf_status vocab_init(struct cf_bpe *b, size_t nv, size_t bytes) {
  CF_TRY(grow((void **)&b->pool, &b->pool_cap, bytes + 1, 1, "bpe strings"));
  size_t cap = nv ? nv : 1;
  CF_TRY(cf_alloc((void **)&b->voff, cap * sizeof(uint32_t), "bpe vocabulary"));
  CF_TRY(cf_alloc((void **)&b->vlen, cap * sizeof(uint32_t), "bpe vocabulary"));
  CF_TRY(cf_alloc((void **)&b->vid, cap * sizeof(int32_t), "bpe vocabulary"));
  size_t slots = pow2_at_least(2 * cap);
  CF_TRY(cf_alloc((void **)&b->vmap, slots * sizeof(uint32_t), "bpe vocabulary index"));
  b->vmask = slots - 1;
  return CF_OK;
}

/* Add one vocabulary entry (a repeated spelling keeps its first id). */
static cf_status vocab_add(struct cf_bpe *b, const char *s, size_t n, double id, const char *what) {
  CF_CHECK(id >= 0 && id < 2147483647.0 && id == (double)(int32_t)id, CF_ECORRUPT,
           "%s: %s \"%.64s\" has id %g; expected an integer in [0, 2^31 - 1)", b->src, what, s, id);
  if (vocab_find(b, s, n) >= 0) return CF_OK;
  size_t e = b->nv++;
  CF_TRY(pool_add(b, s, n, &b->voff[e]));
  b->vlen[e] = (uint32_t)n;
  b->vid[e] = (int32_t)id;
  size_t i = hash_bytes(s, n) & b->vmask;
  while (b->vmap[i] != 0)
    i = (i + 1) & b->vmask;
  b->vmap[i] = (uint32_t)e + 1;
  return CF_OK;
}

static cf_status merges_init(struct cf_bpe *b, size_t nm) {
  size_t slots = pow2_at_least(2 * (nm ? nm : 1));
  CF_TRY(cf_alloc((void **)&b->mkey, slots * sizeof(uint64_t), "bpe merges"));
  CF_TRY(cf_alloc((void **)&b->mrank, slots * sizeof(uint32_t), "bpe merges"));
  CF_TRY(cf_alloc((void **)&b->mres, slots * sizeof(int32_t), "bpe merges"));
  for (size_t i = 0; i < slots; i++)
    b->mkey[i] = UINT64_MAX;
  b->mmask = slots - 1;
  return CF_OK;
}

static size_t merge_slot(const struct cf_bpe *b, uint64_t key) {
  size_t i = hash_pair(key) & b->mmask;
  while (b->mkey[i] != UINT64_MAX && b->mkey[i] != key)
    i = (i + 1) & b->mmask;
  return i;
}

/* Add merge number `rank`, "l r" (byte-level spellings); `where` names it in messages. */
static cf_status merge_add(struct cf_bpe *b, const char *l, size_t ln, const char *r, size_t rn,
                           const char *where) {
  int32_t a = vocab_find(b, l, ln), c = vocab_find(b, r, rn);
  CF_CHECK(a >= 0, CF_ECORRUPT, "%s: %s: \"%.*s\" is not in the vocabulary", b->src, where,
           (int)(ln > 64 ? 64 : ln), l);
  CF_CHECK(c >= 0, CF_ECORRUPT, "%s: %s: \"%.*s\" is not in the vocabulary", b->src, where,
           (int)(rn > 64 ? 64 : rn), r);
  CF_TRY(grow((void **)&b->buf, &b->buf_cap, ln + rn + 1, 1, "bpe scratch"));
  memcpy(b->buf, l, ln);
  memcpy(b->buf + ln, r, rn);
  int32_t m = vocab_find(b, b->buf, ln + rn);
  CF_CHECK(m >= 0, CF_ECORRUPT, "%s: %s: the merged token \"%.*s\" is not in the vocabulary",
           b->src, where, (int)(ln + rn > 64 ? 64 : ln + rn), b->buf);
  uint64_t key = (uint64_t)(uint32_t)a << 32 | (uint32_t)c;
  size_t i = merge_slot(b, key);
  if (b->mkey[i] == key) return CF_OK; /* a repeated pair keeps its first rank */
  b->mkey[i] = key;
  b->mrank[i] = (uint32_t)b->nm++;
  b->mres[i] = m;
  return CF_OK;
}

/* Add a token to the added vocabulary. Its id is the one Hugging Face gives it, whatever the
 * file says: an earlier added token's with the same content, else the vocabulary's, else the
 * next free id past the vocabulary (the model's entry count, or one more than the largest
 * added id when that is already past it). Files Hugging Face wrote agree with this. */
static cf_status added_add(struct cf_bpe *b, const char *content, bool special, bool normalized,
                           bool lstrip, bool rstrip, bool single_word, const char *where) {
  size_t n = strlen(content);
  CF_CHECK(n > 0, CF_ECORRUPT, "%s: %s: empty content", b->src, where);
  struct cf_bpe_added *t = NULL;
  int64_t maxid = -1;
  for (size_t k = 0; k < b->nadded; k++) {
    if (b->added[k].len == n && memcmp(b->pool + b->added[k].off, content, n) == 0)
      t = &b->added[k];
    if (b->added[k].id > maxid) maxid = b->added[k].id;
  }
  if (t == NULL) {
    int32_t id = vocab_find(b, content, n);
    if (id < 0) {
      int64_t next = maxid < (int64_t)b->nv ? (int64_t)b->nv : maxid + 1;
      CF_CHECK(next < INT32_MAX, CF_ECORRUPT, "%s: %s: too many ids", b->src, where);
      id = (int32_t)next;
    }
    t = &b->added[b->nadded++];
    CF_TRY(pool_add(b, content, n, &t->off));
    t->len = (uint32_t)n;
    t->id = id;
  }
  t->special = special;
  t->normalized = normalized;
  t->lstrip = lstrip;
  t->rstrip = rstrip;
  t->single_word = single_word;
  return CF_OK;
}

static int added_longer_first(const void *pa, const void *pb) {
  const struct cf_bpe_added *a = pa, *b = pb;
  if (a->len != b->len) return a->len > b->len ? -1 : 1;
  return a->id < b->id ? -1 : a->id > b->id;
}

/* After loading: ids, decode table, byte symbols, cache and the added-token order. */
static cf_status finish(struct cf_bpe *b) {
  int64_t maxid = -1;
  for (size_t e = 0; e < b->nv; e++)
    if (b->vid[e] > maxid) maxid = b->vid[e];
  for (size_t t = 0; t < b->nadded; t++)
    if (b->added[t].id > maxid) maxid = b->added[t].id;
  CF_CHECK(maxid >= 0, CF_ECORRUPT, "%s: the vocabulary is empty", b->src);
  /* the decode tables hold one entry per id up to the largest: ids must number the tokens
   * (densely in every tokenizer file seen; twice the tokens plus 1024 tolerated), or a small
   * file could claim id 2^31 - 2 and make them take gigabytes */
  const int64_t ntok = (int64_t)(b->nv + b->nadded);
  CF_CHECK(maxid < 2 * ntok + 1024, CF_ECORRUPT,
           "%s: token id %lld is far beyond the %lld tokens (ids are expected to number the "
           "tokens from 0)",
           b->src, (long long)maxid, (long long)ntok);
  b->vocab_size = (int32_t)(maxid + 1);
  size_t nid = (size_t)b->vocab_size;
  CF_TRY(cf_alloc((void **)&b->doff, nid * sizeof(uint32_t), "bpe decode table"));
  CF_TRY(cf_alloc((void **)&b->dlen, nid * sizeof(uint32_t), "bpe decode table"));
  for (size_t i = 0; i < nid; i++)
    b->dlen[i] = UINT32_MAX;
  /* decoded bytes are never longer than the spellings */
  CF_TRY(cf_alloc((void **)&b->dec, b->pool_len + 1, "bpe decode table"));
  size_t used = 0;
  for (size_t t = 0; t < b->nadded; t++) { /* added tokens decode to their content */
    struct cf_bpe_added *a = &b->added[t];
    if (b->dlen[a->id] != UINT32_MAX) continue;
    memcpy(b->dec + used, b->pool + a->off, a->len);
    b->doff[a->id] = (uint32_t)used;
    b->dlen[a->id] = a->len;
    used += a->len;
  }
  for (size_t e = 0; e < b->nv; e++) {
    int32_t id = b->vid[e];
    if (b->dlen[id] != UINT32_MAX) continue;
    const unsigned char *s = (const unsigned char *)b->pool + b->voff[e];
    size_t n = b->vlen[e], i = 0, o = used, adv;
    CF_CHECK(cf_utf8_check(s, n) == n, CF_ECORRUPT, "%s: vocabulary entry %d is not valid UTF-8",
             b->src, id);
    while (i < n) {
      uint32_t c = u8get(s + i, &adv);
      int byte = symbol_byte(c);
      if (byte >= 0)
        b->dec[o++] = (char)byte;
      else
        o += u8put(c, b->dec + o);
      i += adv;
    }
    b->doff[id] = (uint32_t)used;
    b->dlen[id] = (uint32_t)(o - used);
    used = o;
  }
  for (unsigned c = 0; c < 256; c++) {
    char sym[4];
    size_t n = u8put(byte_symbol(c), sym);
    b->byte_id[c] = vocab_find(b, sym, n);
  }
  if (b->nadded > 1) qsort(b->added, b->nadded, sizeof *b->added, added_longer_first);
  CF_TRY(cf_alloc((void **)&b->cslot, CACHE_SLOTS * sizeof *b->cslot, "bpe cache"));
  CF_TRY(cf_alloc((void **)&b->ckey, CACHE_KEY_BYTES, "bpe cache"));
  CF_TRY(cf_alloc((void **)&b->cids, CACHE_IDS * sizeof(int32_t), "bpe cache"));
  return CF_OK;
}

/* ---- files ---- */

/* Read a whole file into a malloc'd NUL-terminated buffer; `expected` names what it should be
 * ("a tokenizer.json file") for a path that is a directory. */
static cf_status read_file(const char *path, const char *expected, char **out, size_t *len) {
  *out = NULL;
  FILE *f = fopen(path, "rb");
  CF_CHECK(f != NULL, CF_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
    fclose(f);
    return cf_err(CF_EIO, "%s: it is a directory, expected %s", path, expected);
  }
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  while (buf != NULL) {
    n += fread(buf + n, 1, cap - n - 1, f);
    if (n < cap - 1) break;
    char *nb = realloc(buf, cap * 2);
    if (nb == NULL) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = nb;
    cap *= 2;
  }
  cf_status st = buf == NULL ? CF_ENOMEM : ferror(f) ? CF_EIO : CF_OK;
  fclose(f);
  if (st != CF_OK) {
    free(buf);
    return cf_err(st, "%s: cannot read the file", path);
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return CF_OK;
}

static cf_status parse_json(const char *path, const char *text, size_t len, cJSON **out) {
  *out = cJSON_ParseWithLength(text, len);
  if (*out == NULL) {
    const char *at = cJSON_GetErrorPtr();
    size_t off = at != NULL && at >= text && at <= text + len ? (size_t)(at - text) : 0;
    return cf_err(CF_ECORRUPT, "%s: not valid JSON (near byte %zu)", path, off);
  }
  return CF_OK;
}

static cf_status bpe_new(struct cf_bpe **out, const char *src) {
  *out = NULL;
  struct cf_bpe *b = NULL;
  CF_TRY(cf_alloc((void **)&b, sizeof *b, "bpe tokenizer"));
  snprintf(b->src, sizeof b->src, "%s", src);
  b->unk_id = -1;
  *out = b;
  return CF_OK;
}

/* A boolean field: absent or null gives def. */
static cf_status json_bool(const struct cf_bpe *b, const cJSON *obj, const char *key, bool def,
                           const char *where, bool *v) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(obj, key);
  *v = def;
  if (x == NULL || cJSON_IsNull(x)) return CF_OK;
  CF_CHECK(cJSON_IsBool(x), CF_ECORRUPT, "%s: %s.%s is not true or false", b->src, where, key);
  *v = cJSON_IsTrue(x);
  return CF_OK;
}

/* The "type" string of a component object, or NULL. */
static const char *json_type(const cJSON *obj) {
  const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
  return cJSON_IsString(t) ? t->valuestring : NULL;
}

static cf_status hf_normalizer(struct cf_bpe *b, const cJSON *norm) {
  if (norm == NULL || cJSON_IsNull(norm)) return CF_OK;
  const char *type = json_type(norm);
  CF_CHECK(type != NULL, CF_ECORRUPT, "%s: normalizer has no \"type\"", b->src);
  if (strcmp(type, "NFC") == 0) {
    b->nfc = true;
    return CF_OK;
  }
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(norm, "normalizers"), *x;
    CF_CHECK(cJSON_IsArray(list), CF_ECORRUPT, "%s: normalizer Sequence has no \"normalizers\"",
             b->src);
    cJSON_ArrayForEach(x, list) CF_TRY(hf_normalizer(b, x));
    return CF_OK;
  }
  return cf_err(CF_ECORRUPT,
                "%s: normalizer \"%s\" is not supported (only NFC or none, as GPT-2, GPT-NeoX "
                "and Pythia use)",
                b->src, type);
}

static cf_status hf_pretokenizer(struct cf_bpe *b, const cJSON *pt) {
  CF_CHECK(pt != NULL && !cJSON_IsNull(pt), CF_ECORRUPT,
           "%s: pre_tokenizer is null; only byte-level BPE (the ByteLevel pre-tokenizer) is "
           "supported",
           b->src);
  const char *type = json_type(pt);
  CF_CHECK(type != NULL, CF_ECORRUPT, "%s: pre_tokenizer has no \"type\"", b->src);
  if (strcmp(type, "Sequence") == 0) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pt, "pretokenizers");
    CF_CHECK(cJSON_IsArray(list) && cJSON_GetArraySize(list) == 1, CF_ECORRUPT,
             "%s: pre_tokenizer Sequence: only a sequence of one ByteLevel is supported", b->src);
    return hf_pretokenizer(b, cJSON_GetArrayItem(list, 0));
  }
  CF_CHECK(strcmp(type, "ByteLevel") == 0, CF_ECORRUPT,
           "%s: pre_tokenizer \"%s\" is not supported (need ByteLevel)", b->src, type);
  bool use_regex;
  CF_TRY(json_bool(b, pt, "add_prefix_space", true, "pre_tokenizer", &b->add_prefix_space));
  CF_TRY(json_bool(b, pt, "use_regex", true, "pre_tokenizer", &use_regex));
  CF_CHECK(use_regex, CF_ECORRUPT,
           "%s: pre_tokenizer ByteLevel with use_regex false is not supported (only GPT-2's "
           "pattern)",
           b->src);
  return CF_OK;
}

/* Is the optional string field absent, null or ""? */
static bool json_empty_string(const cJSON *obj, const char *key) {
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(obj, key);
  return x == NULL || cJSON_IsNull(x) || (cJSON_IsString(x) && x->valuestring[0] == '\0');
}

static cf_status hf_model(struct cf_bpe *b, const cJSON *model) {
  CF_CHECK(cJSON_IsObject(model), CF_ECORRUPT, "%s: no \"model\" object", b->src);
  const char *type = json_type(model);
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  CF_CHECK(type != NULL || merges != NULL, CF_ECORRUPT, "%s: model has no \"type\"", b->src);
  CF_CHECK(type == NULL || strcmp(type, "BPE") == 0, CF_ECORRUPT,
           "%s: model.type is \"%s\"; only \"BPE\" is supported", b->src, type);
  CF_CHECK(cJSON_IsObject(vocab), CF_ECORRUPT, "%s: model.vocab is missing or not an object",
           b->src);
  CF_CHECK(merges != NULL, CF_ECORRUPT, "%s: model.merges is missing", b->src);
  CF_CHECK(cJSON_IsArray(merges), CF_ECORRUPT, "%s: model.merges is not an array", b->src);
  const cJSON *x = cJSON_GetObjectItemCaseSensitive(model, "dropout");
  CF_CHECK(x == NULL || cJSON_IsNull(x) || (cJSON_IsNumber(x) && x->valuedouble == 0), CF_ECORRUPT,
           "%s: model.dropout is set; BPE dropout is not supported", b->src);
  CF_CHECK(json_empty_string(model, "continuing_subword_prefix") &&
               json_empty_string(model, "end_of_word_suffix"),
           CF_ECORRUPT,
           "%s: model.continuing_subword_prefix / end_of_word_suffix are not supported", b->src);
  bool byte_fallback;
  CF_TRY(json_bool(b, model, "byte_fallback", false, "model", &byte_fallback));
  CF_CHECK(!byte_fallback, CF_ECORRUPT, "%s: model.byte_fallback is not supported", b->src);
  CF_TRY(json_bool(b, model, "ignore_merges", false, "model", &b->ignore_merges));

  size_t nv = 0, bytes = 0;
  cJSON_ArrayForEach(x, vocab) {
    nv++;
    bytes += strlen(x->string);
  }
  CF_TRY(vocab_init(b, nv, bytes));
  cJSON_ArrayForEach(x, vocab) {
    CF_CHECK(cJSON_IsNumber(x), CF_ECORRUPT, "%s: model.vocab[\"%.64s\"] is not a number", b->src,
             x->string);
    CF_TRY(vocab_add(b, x->string, strlen(x->string), x->valuedouble, "model.vocab entry"));
  }
  x = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
  if (cJSON_IsString(x)) {
    b->unk_id = vocab_find(b, x->valuestring, strlen(x->valuestring));
    CF_CHECK(b->unk_id >= 0, CF_ECORRUPT, "%s: model.unk_token \"%.64s\" is not in the vocabulary",
             b->src, x->valuestring);
  }

  CF_TRY(merges_init(b, (size_t)cJSON_GetArraySize(merges)));
  size_t k = 0;
  cJSON_ArrayForEach(x, merges) {
    char where[64];
    snprintf(where, sizeof where, "model.merges[%zu]", k++);
    if (cJSON_IsString(x)) {
      const char *s = x->valuestring, *sp = strchr(s, ' ');
      CF_CHECK(sp != NULL && sp != s && sp[1] != '\0' && strchr(sp + 1, ' ') == NULL, CF_ECORRUPT,
               "%s: %s \"%.64s\" is not two tokens separated by one space", b->src, where, s);
      CF_TRY(merge_add(b, s, (size_t)(sp - s), sp + 1, strlen(sp + 1), where));
    } else {
      const cJSON *l = cJSON_GetArrayItem(x, 0), *r = cJSON_GetArrayItem(x, 1);
      CF_CHECK(cJSON_IsArray(x) && cJSON_GetArraySize(x) == 2 && cJSON_IsString(l) &&
                   cJSON_IsString(r),
               CF_ECORRUPT, "%s: %s is neither \"a b\" nor a pair of strings", b->src, where);
      CF_TRY(merge_add(b, l->valuestring, strlen(l->valuestring), r->valuestring,
                       strlen(r->valuestring), where));
    }
  }
  return CF_OK;
}

static cf_status hf_added(struct cf_bpe *b, const cJSON *list) {
  if (list == NULL || cJSON_IsNull(list)) return CF_OK;
  CF_CHECK(cJSON_IsArray(list), CF_ECORRUPT, "%s: added_tokens is not an array", b->src);
  size_t n = (size_t)cJSON_GetArraySize(list), k = 0;
  CF_TRY(cf_alloc((void **)&b->added, (n ? n : 1) * sizeof *b->added, "bpe added tokens"));
  const cJSON *x;
  cJSON_ArrayForEach(x, list) {
    char where[64];
    snprintf(where, sizeof where, "added_tokens[%zu]", k++);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(x, "id");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(x, "content");
    CF_CHECK(cJSON_IsNumber(id) && cJSON_IsString(content), CF_ECORRUPT,
             "%s: %s needs a numeric \"id\" and a string \"content\"", b->src, where);
    bool special, normalized, lstrip, rstrip, single_word;
    CF_TRY(json_bool(b, x, "special", false, where, &special));
    CF_TRY(json_bool(b, x, "normalized", !special, where, &normalized));
    CF_TRY(json_bool(b, x, "lstrip", false, where, &lstrip));
    CF_TRY(json_bool(b, x, "rstrip", false, where, &rstrip));
    CF_TRY(json_bool(b, x, "single_word", false, where, &single_word));
    /* the file's id is not used: see added_add */
    CF_TRY(added_add(b, content->valuestring, special, normalized, lstrip, rstrip, single_word,
                     where));
  }
  return CF_OK;
}

static cf_status load_hf(struct cf_bpe *b, const cJSON *root) {
  CF_CHECK(cJSON_IsObject(root), CF_ECORRUPT, "%s: not a JSON object", b->src);
  CF_TRY(hf_model(b, cJSON_GetObjectItemCaseSensitive(root, "model")));
  CF_TRY(hf_normalizer(b, cJSON_GetObjectItemCaseSensitive(root, "normalizer")));
  CF_TRY(hf_pretokenizer(b, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")));
  CF_TRY(hf_added(b, cJSON_GetObjectItemCaseSensitive(root, "added_tokens")));
  return finish(b);
}

cf_status cf_bpe_load_hf(struct cf_bpe **bpe, const char *path) {
  *bpe = NULL;
  char *text;
  size_t len;
  CF_TRY(read_file(path, "a tokenizer.json file", &text, &len));
  cJSON *root = NULL;
  struct cf_bpe *b = NULL;
  cf_status st = parse_json(path, text, len, &root);
  free(text);
  if (st == CF_OK) st = bpe_new(&b, path);
  if (st == CF_OK) st = load_hf(b, root);
  cJSON_Delete(root);
  if (st != CF_OK) {
    cf_bpe_free(&b);
    return st;
  }
  *bpe = b;
  return CF_OK;
}

static cf_status load_gpt2(struct cf_bpe *b, const char *enc_path, const cJSON *enc,
                           const char *bpe_path, char *merges, size_t mlen) {
  CF_CHECK(cJSON_IsObject(enc), CF_ECORRUPT, "%s: not a JSON object of token -> id", enc_path);
  size_t nv = 0, bytes = 0;
  const cJSON *x;
  cJSON_ArrayForEach(x, enc) {
    nv++;
    bytes += strlen(x->string);
  }
  CF_CHECK(nv > 0, CF_ECORRUPT, "%s: no tokens", enc_path);
  snprintf(b->src, sizeof b->src, "%s", enc_path);
  CF_TRY(vocab_init(b, nv, bytes));
  cJSON_ArrayForEach(x, enc) {
    CF_CHECK(cJSON_IsNumber(x), CF_ECORRUPT, "%s: the id of \"%.64s\" is not a number", enc_path,
             x->string);
    CF_TRY(vocab_add(b, x->string, strlen(x->string), x->valuedouble, "token"));
  }
  size_t lines = 1;
  for (size_t i = 0; i < mlen; i++)
    lines += merges[i] == '\n';
  snprintf(b->src, sizeof b->src, "%s", bpe_path);
  CF_TRY(merges_init(b, lines));
  size_t lineno = 0;
  char *p = merges, *end = merges + mlen;
  while (p < end) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    char *e = nl ? nl : end;
    lineno++;
    size_t n = (size_t)(e - p);
    if (n > 0 && p[n - 1] == '\r') n--;
    bool skip = n == 0 || (lineno == 1 && n >= 8 && memcmp(p, "#version", 8) == 0);
    if (!skip) {
      char where[64];
      snprintf(where, sizeof where, "line %zu", lineno);
      char *sp = memchr(p, ' ', n);
      CF_CHECK(sp != NULL && sp != p && sp != p + n - 1 &&
                   memchr(sp + 1, ' ', (size_t)(p + n - sp - 1)) == NULL,
               CF_ECORRUPT, "%s: line %zu is not two tokens separated by one space", bpe_path,
               lineno);
      CF_TRY(merge_add(b, p, (size_t)(sp - p), sp + 1, (size_t)(p + n - sp - 1), where));
    }
    p = e + 1;
  }
  CF_CHECK(b->nm > 0, CF_ECORRUPT, "%s: no merges", bpe_path);
  snprintf(b->src, sizeof b->src, "%s", enc_path);
  CF_TRY(cf_alloc((void **)&b->added, sizeof *b->added, "bpe added tokens"));
  int32_t eot = vocab_find(b, "<|endoftext|>", 13);
  if (eot >= 0) CF_TRY(added_add(b, "<|endoftext|>", true, false, false, false, false, ""));
  return finish(b);
}

cf_status cf_bpe_load_gpt2(struct cf_bpe **bpe, const char *encoder_json, const char *vocab_bpe) {
  *bpe = NULL;
  char *text = NULL, *merges = NULL;
  size_t len, mlen;
  CF_TRY(read_file(encoder_json, "GPT-2's encoder.json file", &text, &len));
  cf_status st = read_file(vocab_bpe, "GPT-2's vocab.bpe file", &merges, &mlen);
  cJSON *root = NULL;
  struct cf_bpe *b = NULL;
  if (st == CF_OK) st = parse_json(encoder_json, text, len, &root);
  free(text);
  if (st == CF_OK) st = bpe_new(&b, encoder_json);
  if (st == CF_OK) st = load_gpt2(b, encoder_json, root, vocab_bpe, merges, mlen);
  cJSON_Delete(root);
  free(merges);
  if (st != CF_OK) {
    cf_bpe_free(&b);
    return st;
  }
  *bpe = b;
  return CF_OK;
}

static bool is_file(const char *path) {
  struct stat s;
  return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

cf_status cf_bpe_load(struct cf_bpe **bpe, const char *path) {
  *bpe = NULL;
  struct stat s;
  CF_CHECK(stat(path, &s) == 0, CF_EIO, "%s: tokenizer not found: %s", path, strerror(errno));
  if (!S_ISDIR(s.st_mode)) return cf_bpe_load_hf(bpe, path);
  char a[4096], c[4096];
  snprintf(a, sizeof a, "%s/tokenizer.json", path);
  if (is_file(a)) return cf_bpe_load_hf(bpe, a);
  snprintf(a, sizeof a, "%s/encoder.json", path);
  snprintf(c, sizeof c, "%s/vocab.bpe", path);
  if (is_file(a) && is_file(c)) return cf_bpe_load_gpt2(bpe, a, c);
  return cf_err(CF_EIO, "%s: no tokenizer.json, nor encoder.json with vocab.bpe, in the directory",
                path);
}

void cf_bpe_free(struct cf_bpe **bpe) {
  struct cf_bpe *b = *bpe;
  if (b == NULL) return;
  cf_free((void **)&b->pool);
  cf_free((void **)&b->voff);
  cf_free((void **)&b->vlen);
  cf_free((void **)&b->vid);
  cf_free((void **)&b->vmap);
  cf_free((void **)&b->mkey);
  cf_free((void **)&b->mrank);
  cf_free((void **)&b->mres);
  cf_free((void **)&b->added);
  cf_free((void **)&b->doff);
  cf_free((void **)&b->dlen);
  cf_free((void **)&b->dec);
  cf_free((void **)&b->cslot);
  cf_free((void **)&b->ckey);
  cf_free((void **)&b->cids);
  cf_free((void **)&b->sym);
  cf_free((void **)&b->buf);
  cf_free((void **)&b->pbuf);
  cf_free((void **)bpe);
}

int32_t cf_bpe_vocab_size(const struct cf_bpe *bpe) {
  return bpe->vocab_size;
}

int32_t cf_bpe_token_id(const struct cf_bpe *bpe, const char *token) {
  size_t n = strlen(token);
  for (size_t t = 0; t < bpe->nadded; t++)
    if (bpe->added[t].len == n && memcmp(bpe->pool + bpe->added[t].off, token, n) == 0)
      return bpe->added[t].id;
  return vocab_find(bpe, token, n);
}

size_t cf_bpe_max_ids(const struct cf_bpe *bpe, size_t len) {
  return bpe->add_prefix_space ? 2 * len + 1 : len;
}

/* ---- encoding ---- */

struct cf_bpe_out {
  int32_t *ids;
  size_t cap, n;
};

static void out_push(struct cf_bpe_out *o, int32_t id) {
  if (o->ids != NULL && o->n < o->cap) o->ids[o->n] = id;
  o->n++;
}

static uint32_t pair_rank(const struct cf_bpe *b, int32_t l, int32_t r, int32_t *res) {
  uint64_t key = (uint64_t)(uint32_t)l << 32 | (uint32_t)r;
  size_t i = merge_slot(b, key);
  if (b->mkey[i] != key) return UINT32_MAX;
  *res = b->mres[i];
  return b->mrank[i];
}

static void cache_clear(struct cf_bpe *b) {
  memset(b->cslot, 0, CACHE_SLOTS * sizeof *b->cslot);
  b->ccount = b->ckey_len = b->cids_len = 0;
}

/* Merge one pre-tokenized word (raw bytes) and append its ids. */
static cf_status bpe_word(struct cf_bpe *b, const unsigned char *w, size_t n,
                          struct cf_bpe_out *o) {
  uint64_t h = hash_bytes(w, n);
  size_t slot = h & (CACHE_SLOTS - 1);
  if (n <= CACHE_MAX_WORD) {
    for (;;) {
      struct cf_bpe_cslot *c = &b->cslot[slot];
      if (c->klen == 0) break;
      if (c->h == h && c->klen == n && memcmp(b->ckey + c->koff, w, n) == 0) {
        for (uint32_t k = 0; k < c->nid; k++)
          out_push(o, b->cids[c->ioff + k]);
        return CF_OK;
      }
      slot = (slot + 1) & (CACHE_SLOTS - 1);
    }
  }
  CF_TRY(grow((void **)&b->sym, &b->sym_cap, n, sizeof(int32_t), "bpe scratch"));
  int32_t *s = b->sym;
  size_t m = 0;
  if (b->ignore_merges) { /* a word the vocabulary holds whole is one token */
    CF_TRY(grow((void **)&b->buf, &b->buf_cap, 2 * n + 1, 1, "bpe scratch"));
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
      k += u8put(byte_symbol(w[i]), b->buf + k);
    int32_t id = vocab_find(b, b->buf, k);
    if (id >= 0) s[m++] = id;
  }
  if (m == 0) {
    for (size_t i = 0; i < n; i++) {
      int32_t id = b->byte_id[w[i]];
      if (id < 0) id = b->unk_id;
      CF_CHECK(id >= 0, CF_EINVAL,
               "bpe encode: byte 0x%02x has no symbol in the vocabulary of %s (and no unk_token)",
               w[i], b->src);
      s[m++] = id;
    }
    for (;;) { /* merge the lowest-ranked pair everywhere, left to right, until none is left */
      uint32_t best = UINT32_MAX;
      int32_t l = 0, r = 0, res = 0, rr;
      for (size_t i = 0; i + 1 < m; i++) {
        uint32_t rank = pair_rank(b, s[i], s[i + 1], &rr);
        if (rank < best) {
          best = rank;
          l = s[i];
          r = s[i + 1];
          res = rr;
        }
      }
      if (best == UINT32_MAX) break;
      size_t j = 0;
      for (size_t i = 0; i < m;) {
        if (i + 1 < m && s[i] == l && s[i + 1] == r) {
          s[j++] = res;
          i += 2;
        } else {
          s[j++] = s[i++];
        }
      }
      m = j;
    }
  }
  for (size_t i = 0; i < m; i++)
    out_push(o, s[i]);
  if (n <= CACHE_MAX_WORD) {
    if (2 * (b->ccount + 1) > CACHE_SLOTS || b->ckey_len + n > CACHE_KEY_BYTES ||
        b->cids_len + m > CACHE_IDS) {
      cache_clear(b);
      slot = h & (CACHE_SLOTS - 1);
    }
    struct cf_bpe_cslot *c = &b->cslot[slot];
    c->h = h;
    c->koff = (uint32_t)b->ckey_len;
    c->klen = (uint32_t)n;
    c->ioff = (uint32_t)b->cids_len;
    c->nid = (uint32_t)m;
    memcpy(b->ckey + b->ckey_len, w, n);
    memcpy(b->cids + b->cids_len, s, m * sizeof(int32_t));
    b->ckey_len += n;
    b->cids_len += m;
    b->ccount++;
  }
  return CF_OK;
}

/* Class of the code point at s[i] (i < n), and its length. */
static int class_at(const unsigned char *s, size_t i, size_t *adv) {
  return uni_class(u8get(s + i, adv));
}

/* Length of GPT-2's pre-token starting at s[i] (i < n):
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static size_t pretoken(const unsigned char *s, size_t n, size_t i) {
  size_t adv, adv2;
  if (s[i] == '\'' && i + 1 < n) {
    static const char *const tail[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    for (int k = 0; k < 7; k++) {
      size_t tl = strlen(tail[k]);
      if (i + 1 + tl <= n && memcmp(s + i + 1, tail[k], tl) == 0) return 1 + tl;
    }
  }
  int k0 = class_at(s, i, &adv);
  size_t j = i;
  int want = -1; /* 0 letters, 1 numbers, 2 others */
  if (s[i] == ' ' && i + 1 < n) {
    int k1 = class_at(s, i + 1, &adv2);
    want = is_letter(k1) ? 0 : is_number(k1) ? 1 : is_other(k1) ? 2 : -1;
    if (want >= 0) j = i + 1;
  }
  if (want < 0) want = is_letter(k0) ? 0 : is_number(k0) ? 1 : is_other(k0) ? 2 : -1;
  if (want >= 0) {
    while (j < n) {
      int k = class_at(s, j, &adv);
      if (!(want == 0 ? is_letter(k) : want == 1 ? is_number(k) : is_other(k))) break;
      j += adv;
    }
    return j - i;
  }
  /* whitespace: the run, less its last character when something follows the run and the
   * run has more than one character */
  size_t last = i;
  j = i;
  while (j < n && is_space(class_at(s, j, &adv))) {
    last = j;
    j += adv;
  }
  if (j < n && last > i) return last - i;
  return j - i;
}

/* Pre-tokenize and merge one piece of text (no added tokens in it). */
static cf_status encode_piece(struct cf_bpe *b, const unsigned char *s, size_t n,
                              struct cf_bpe_out *o) {
  if (n == 0) return CF_OK;
  if (b->add_prefix_space && s[0] != ' ') {
    CF_TRY(grow((void **)&b->pbuf, &b->pbuf_cap, n + 1, 1, "bpe scratch"));
    b->pbuf[0] = ' ';
    memcpy(b->pbuf + 1, s, n);
    s = (const unsigned char *)b->pbuf;
    n++;
  }
  for (size_t i = 0; i < n;) {
    size_t k = pretoken(s, n, i);
    CF_TRY(bpe_word(b, s + i, k, o));
    i += k;
  }
  return CF_OK;
}

/* Rust regex's \w, which single_word tests, less Other_Alphabetic symbols such as
 * circled letters: letters, marks, Nd and Nl numbers, connector punctuation, ZWNJ, ZWJ. */
static bool word_char(const unsigned char *s, size_t i) {
  size_t adv;
  uint32_t c = u8get(s + i, &adv);
  if (c == 0x200C || c == 0x200D) return true;
  int k = uni_class(c);
  return k == CC_L || k == CC_N || k == CC_M || k == CC_PC;
}

/* Start of the code point that ends just before s[i]. */
static size_t prev_char(const unsigned char *s, size_t i) {
  do
    i--;
  while (i > 0 && (s[i] & 0xC0) == 0x80);
  return i;
}

/* Leftmost-longest added token (of the given normalized kind) in s[from .. to), a part of
 * the piece s[lo .. to): its span after lstrip / rstrip in *ms, *me, its id in *id.
 * single_word looks at the piece's characters; lstrip stops at from. */
static bool find_added(const struct cf_bpe *b, const unsigned char *s, size_t lo, size_t from,
                       size_t to, bool normalized, size_t *ms, size_t *me, int32_t *id) {
  size_t pos = from;
  while (pos < to) {
    const struct cf_bpe_added *hit = NULL;
    size_t at = to;
    for (size_t i = pos; i < to && hit == NULL; i++) {
      for (size_t t = 0; t < b->nadded; t++) { /* longest first */
        const struct cf_bpe_added *a = &b->added[t];
        if (a->normalized != normalized || a->len > to - i) continue;
        if (memcmp(s + i, b->pool + a->off, a->len) == 0) {
          hit = a;
          at = i;
          break;
        }
      }
    }
    if (hit == NULL) return false;
    size_t start = at, stop = at + hit->len, adv;
    if (hit->single_word &&
        ((start > lo && word_char(s, prev_char(s, start))) || (stop < to && word_char(s, stop)))) {
      pos = stop; /* not a match; search on after it */
      continue;
    }
    if (hit->lstrip)
      while (start > from && is_space(class_at(s, prev_char(s, start), &adv)))
        start = prev_char(s, start);
    if (hit->rstrip)
      while (stop < to && is_space(class_at(s, stop, &adv)))
        stop += adv;
    *ms = start;
    *me = stop;
    *id = hit->id;
    return true;
  }
  return false;
}

/* Split s[from .. to) around added tokens: first those matched on the raw text, then within
 * each remaining piece those matched on the normalized text (the same text here). */
static cf_status encode_split(struct cf_bpe *b, const unsigned char *s, size_t from, size_t to,
                              bool normalized, struct cf_bpe_out *o) {
  size_t pos = from, ms, me;
  int32_t id;
  while (pos < to && b->nadded > 0 && find_added(b, s, from, pos, to, normalized, &ms, &me, &id)) {
    if (normalized)
      CF_TRY(encode_piece(b, s + pos, ms - pos, o));
    else
      CF_TRY(encode_split(b, s, pos, ms, true, o));
    out_push(o, id);
    pos = me;
  }
  if (normalized) return encode_piece(b, s + pos, to - pos, o);
  return encode_split(b, s, pos, to, true, o);
}

cf_status cf_bpe_encode(struct cf_bpe *bpe, const char *text, size_t len, int32_t *ids, size_t cap,
                        size_t *n) {
  *n = 0;
  const unsigned char *s = (const unsigned char *)text;
  size_t bad = cf_utf8_check(s, len);
  CF_CHECK(bad == len, CF_EINVAL,
           "bpe encode: the text is not valid UTF-8 (byte 0x%02x at offset %zu)", s[bad], bad);
  if (bpe->nfc) {
    bad = nfc_check(s, len);
    if (bad != len) {
      size_t adv;
      return cf_err(CF_EINVAL,
                    "bpe encode: the text is not NFC, or may not be (U+%04X at byte %zu); %s "
                    "normalizes to NFC, which calmflow checks but does not apply: normalize the "
                    "text first",
                    u8get(s + bad, &adv), bad, bpe->src);
    }
  }
  struct cf_bpe_out o = {ids, cap, 0};
  CF_TRY(encode_split(bpe, s, 0, len, false, &o));
  *n = o.n;
  CF_CHECK(ids == NULL || o.n <= cap, CF_EINVAL,
           "bpe encode: the text needs %zu ids, the output holds %zu", o.n, cap);
  return CF_OK;
}

cf_status cf_bpe_decode(const struct cf_bpe *bpe, const int32_t *ids, size_t n, char *text,
                        size_t cap, size_t *len) {
  size_t total = 0;
  *len = 0;
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    CF_CHECK(id >= 0 && id < bpe->vocab_size && bpe->dlen[id] != UINT32_MAX, CF_EINVAL,
             "bpe decode: id %d (position %zu) is not in the vocabulary of %s", id, i, bpe->src);
    if (text != NULL && total + bpe->dlen[id] < cap)
      memcpy(text + total, bpe->dec + bpe->doff[id], bpe->dlen[id]);
    total += bpe->dlen[id];
  }
  *len = total;
  if (text == NULL) return CF_OK;
  CF_CHECK(total < cap, CF_EINVAL,
           "bpe decode: the text needs %zu bytes and a NUL, the output holds %zu", total, cap);
  text[total] = '\0';
  return CF_OK;
}
