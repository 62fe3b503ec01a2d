/* fuzz_bpe_json.c: libFuzzer target for the Hugging Face tokenizer.json reader of the BPE
 * tokenizer (cf_bpe_load_hf, src/io/bpe.c). Input: the file, optionally followed by the
 * separator "\n----\n" and a text to encode with it (fuzz_bpe.h). */
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
  size_t flen = fuzz_bpe_part(&p, end);
  const char *path = cf_fuzz_path("tokenizer.json");
  cf_fuzz_write(path, data, flen);
  struct cf_bpe *b = NULL;
  if (cf_fuzz_note("cf_bpe_load_hf", cf_bpe_load_hf(&b, path)) == CF_OK) {
    fuzz_bpe_use(b, p, (size_t)(end - p));
    cf_bpe_free(&b);
  }
  cf_fuzz_after("bpe_json");
  return 0;
}
