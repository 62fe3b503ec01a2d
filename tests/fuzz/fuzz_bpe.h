/* fuzz_bpe.h: the part of the two tokenizer fuzz targets (fuzz_bpe_json.c, fuzz_bpe_gpt2.c)
 * that runs once a tokenizer is loaded: encode fixed texts and the input's own text, decode
 * what came out and ids taken from the input. Oracles besides ASan/UBSan (bpe.h's contract):
 * counting and encoding agree on the number of ids, which stays within cf_bpe_max_ids; every
 * id lies in 0..vocab_size-1 and decodes; decoding counts as many bytes as it writes. */
#ifndef CALMFLOW_FUZZ_BPE_H
#define CALMFLOW_FUZZ_BPE_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calmflow/bpe.h"

#define FUZZ_BPE_SEP "\n----\n" /* between the files and the text of an input */

static void fuzz_bpe_fail(const char *what) {
  fprintf(stderr, "cf_fuzz bpe: %s\n", what);
  abort();
}

/* The part of [*p, end) before the next separator (or all of it); *p moves past it. */
static size_t fuzz_bpe_part(const uint8_t **p, const uint8_t *end) {
  const size_t sl = sizeof FUZZ_BPE_SEP - 1;
  for (const uint8_t *q = *p; q + sl <= end; q++)
    if (memcmp(q, FUZZ_BPE_SEP, sl) == 0) {
      size_t n = (size_t)(q - *p);
      *p = q + sl;
      return n;
    }
  size_t n = (size_t)(end - *p);
  *p = end;
  return n;
}

static void fuzz_bpe_decode(const struct cf_bpe *b, const int32_t *ids, size_t n, int must) {
  size_t len = 0, len2 = 0;
  cf_status st = cf_bpe_decode(b, ids, n, NULL, 0, &len);
  if (st != CF_OK) {
    if (must) fuzz_bpe_fail("an id that encode returned does not decode");
    return;
  }
  char *text = malloc(len + 1);
  if (text == NULL) return;
  if (cf_bpe_decode(b, ids, n, text, len + 1, &len2) != CF_OK || len2 != len || text[len] != '\0')
    fuzz_bpe_fail("decoding writes a different length than it counts");
  if (len > 0 && cf_bpe_decode(b, ids, n, text, len, &len2) == CF_OK)
    fuzz_bpe_fail("decoding into a buffer one byte short succeeded");
  free(text);
}

static void fuzz_bpe_encode(struct cf_bpe *b, const char *text, size_t len) {
  size_t need = 0, got = 0;
  if (cf_bpe_encode(b, text, len, NULL, 0, &need) != CF_OK) return;
  if (need > cf_bpe_max_ids(b, len)) fuzz_bpe_fail("more ids than cf_bpe_max_ids");
  int32_t *ids = malloc((need + 1) * sizeof *ids);
  if (ids == NULL) return;
  if (cf_bpe_encode(b, text, len, ids, need, &got) != CF_OK || got != need)
    fuzz_bpe_fail("encoding gives a different count than counting");
  int32_t vs = cf_bpe_vocab_size(b);
  for (size_t i = 0; i < got; i++)
    if (ids[i] < 0 || ids[i] >= vs) fuzz_bpe_fail("an id outside the vocabulary");
  fuzz_bpe_decode(b, ids, got, 1);
  if (need > 0 && cf_bpe_encode(b, text, len, ids, need - 1, &got) == CF_OK)
    fuzz_bpe_fail("encoding into one id too few succeeded");
  free(ids);
}

/* Everything after a successful load; text / tlen: the input's own text (may be empty). */
static void fuzz_bpe_use(struct cf_bpe *b, const uint8_t *text, size_t tlen) {
  static const char *const fixed[] = {"Hello, world! It's 2024.",
                                      "  two  spaces\tand\ttabs\n\nnewlines  ",
                                      "<|endoftext|>after<|endoftext|>",
                                      ("caf\xc3\xa9 na\xc3\xafve \xe6\x97\xa5\xe6\x9c\xac "
                                       "\xf0\x9f\x98\x80"),
                                      "e\xcc\x81 combining",
                                      "\xff\xfe invalid utf-8",
                                      ""};
  (void)cf_bpe_vocab_size(b);
  (void)cf_bpe_token_id(b, "<|endoftext|>");
  (void)cf_bpe_token_id(b, "\xc4\xa0the");
  (void)cf_bpe_token_id(b, "");
  for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
    fuzz_bpe_encode(b, fixed[i], strlen(fixed[i]));
  fuzz_bpe_encode(b, (const char *)text, tlen);
  /* ids straight from the input */
  int32_t ids[16];
  size_t n = tlen / 4 < 16 ? tlen / 4 : 16;
  if (n > 0) {
    memcpy(ids, text, n * 4);
    fuzz_bpe_decode(b, ids, n, 0);
  }
}

#endif
