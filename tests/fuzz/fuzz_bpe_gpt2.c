/* fuzz_bpe_gpt2.c: libFuzzer target for GPT-2's tokenizer files, encoder.json + vocab.bpe
 * (cf_bpe_load_gpt2, src/io/bpe.c). Input: encoder.json, the separator "\n----\n", vocab.bpe,
 * optionally the separator again and a text to encode with them (fuzz_bpe.h). */
#include <stdint.h>

#include "calmflow/bpe.h"
#include "calmflow/error.h"
#include "fuzz_bpe.h"
#include "fuzz_common.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n);

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  cf_fuzz_init(argc, argv);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
  const uint8_t *p = data, *end = data + n;
  const uint8_t *enc = p;
  size_t elen = fuzz_bpe_part(&p, end);
  const uint8_t *merges = p;
  size_t mlen = fuzz_bpe_part(&p, end);
  const char *ep = cf_fuzz_path("encoder.json"), *mp = cf_fuzz_path("vocab.bpe");
  cf_fuzz_write(ep, enc, elen);
  cf_fuzz_write(mp, merges, mlen);
  struct cf_bpe *b = NULL;
  if (cf_fuzz_note("cf_bpe_load_gpt2", cf_bpe_load_gpt2(&b, ep, mp)) == CF_OK) {
    fuzz_bpe_use(b, p, (size_t)(end - p));
    cf_bpe_free(&b);
  }
  cf_fuzz_after("bpe_gpt2");
  return 0;
}
