/* bpe.h: byte-level BPE tokenizer, as GPT-2, GPT-NeoX and Pythia use, for text conditions.
 *
 * Loads a Hugging Face tokenizer.json (model.type "BPE" with the ByteLevel pre-tokenizer) or
 * GPT-2's encoder.json + vocab.bpe, encodes UTF-8 text to token ids exactly as those
 * tokenizers do, and decodes ids back to bytes.
 *
 * Encoding: added tokens (tokenizer.json's added_tokens; for GPT-2's files <|endoftext|>)
 * are cut out of the text first, leftmost-longest, honouring lstrip / rstrip / single_word
 * (those matched on the raw text first, then the "normalized" ones; their ids are numbered
 * as Hugging Face numbers them on loading, which for files it wrote are the file's ids);
 * each remaining piece (with a space in front when add_prefix_space is set and the piece
 * does not start with one) is split by GPT-2's pre-tokenizer pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * (implemented by hand; \s is Unicode White_Space, \p{L} and \p{N} the general categories
 * of Unicode 14.0, see src/io/bpe_unicode.h), each part's bytes are mapped to GPT-2's
 * printable byte symbols and merged by rank. Results per part are cached.
 *
 * Limits: a tokenizer.json whose normalizer is NFC (Pythia's) is accepted, but the text is
 * not normalized: encoding checks that the text is already NFC and fails otherwise (it
 * also refuses, conservatively, the combining marks that NFC might compose with the
 * character before them, such as U+0301). Other normalizers, pre-tokenizers other than
 * ByteLevel, dropout, continuing_subword_prefix / end_of_word_suffix and byte_fallback are
 * refused at load time. The post_processor and decoder are not used: encode adds no BOS /
 * EOS ids (append them with cf_bpe_token_id), and decode maps byte symbols back to bytes and
 * added tokens to their content (special ones included). Code points assigned after
 * Unicode 14.0 count as neither letters nor numbers (newer tables, as Hugging Face's, may
 * class them otherwise); single_word's word characters approximate Rust's \w (letters,
 * marks, Nd / Nl numbers, connector punctuation, ZWNJ / ZWJ). Not thread-safe (encode
 * fills a cache); one per rank.
 */
#ifndef CALMFLOW_BPE_H
#define CALMFLOW_BPE_H

#include <stddef.h>
#include <stdint.h>

#include "calmflow/error.h"

struct cf_bpe; /* opaque; owns everything it allocates */

/* Local. *bpe = the tokenizer in the Hugging Face tokenizer.json at path. CF_EIO when the
 * file cannot be read, CF_ECORRUPT (message naming the file and the field) when it is not
 * a byte-level BPE tokenizer this module supports. */
cf_status cf_bpe_load_hf(struct cf_bpe **bpe, const char *path);

/* Local. *bpe = GPT-2's tokenizer from encoder.json (token -> id) and vocab.bpe (merges by
 * rank, an optional "#version" first line). No prefix space, no normalizer; <|endoftext|>,
 * when encoder.json has it, is a special added token. */
cf_status cf_bpe_load_gpt2(struct cf_bpe **bpe, const char *encoder_json, const char *vocab_bpe);

/* Local. Load from a path: a tokenizer.json file, or a directory holding tokenizer.json,
 * else encoder.json and vocab.bpe (a Hugging Face model directory, for example). */
cf_status cf_bpe_load(struct cf_bpe **bpe, const char *path);

/* Local. Free the tokenizer and set *bpe = NULL (NULL is fine). */
void cf_bpe_free(struct cf_bpe **bpe);

/* Local. One more than the largest id of the vocabulary and the added tokens. */
int32_t cf_bpe_vocab_size(const struct cf_bpe *bpe);

/* Local. The id of an added token by its content ("<|endoftext|>"), else of a vocabulary
 * entry by its byte-level spelling ("Ġthe"); -1 when there is none. */
int32_t cf_bpe_token_id(const struct cf_bpe *bpe, const char *token);

/* Local. The most ids that encoding len bytes of text can give (len without
 * add_prefix_space; 2 len + 1 with it). */
size_t cf_bpe_max_ids(const struct cf_bpe *bpe, size_t len);

/* Local. Encode len bytes of UTF-8 text (NUL bytes allowed) into ids[0 .. *n). With
 * ids == NULL only counts. CF_EINVAL when the text is not valid UTF-8, not NFC for an NFC
 * tokenizer, needs a byte symbol the vocabulary lacks, or needs more than cap ids (*n then
 * holds how many it needs). */
cf_status cf_bpe_encode(struct cf_bpe *bpe, const char *text, size_t len, int32_t *ids, size_t cap,
                        size_t *n);

/* Local. Decode n ids into text[0 .. *len) plus a terminating NUL; the bytes need not be
 * valid UTF-8 when the ids split a character. With text == NULL only counts (*len without
 * the NUL). CF_EINVAL for an id outside the vocabulary, or when cap < *len + 1. */
cf_status cf_bpe_decode(const struct cf_bpe *bpe, const int32_t *ids, size_t n, char *text,
                        size_t cap, size_t *len);

/* Local. The offset of the first invalid byte of s[0 .. n) as strict UTF-8 (no overlong forms,
 * no surrogates, nothing past U+10FFFF, no cut sequence at the end), or n when all is valid. */
size_t cf_utf8_check(const unsigned char *s, size_t n);

#endif
