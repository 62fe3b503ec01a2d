/* neox.h: a pretrained GPT-NeoX / Pythia backbone from a Hugging Face model directory
 * (config.json + model.safetensors, or a sharded set with model.safetensors.index.json) loaded
 * into calmflow's transformer (train layer, src/train/neox.c; docs/pretrained.md).
 *
 * config.json must say "model_type": "gpt_neox" with use_parallel_residual true (calmflow's
 * blocks are x += attn(ln1(x)) + mlp(ln2(x))), hidden_act "gelu" (exact erf GELU), no
 * rope_scaling, layer_norm_eps 1e-5 (calmflow's LayerNorms) and an even number of rotary
 * dimensions int(rotary_pct * head_size). It gives the backbone's shape: hidden_size -> H,
 * num_attention_heads -> heads, num_hidden_layers -> layers, intermediate_size -> ffn,
 * rotary_pct -> rotary_pct, rotary_emb_base (or rope_theta) -> rotary_base; vocab_size is kept
 * for the token embedding.
 *
 * The tensor mapping (HF names under the "gpt_neox." prefix, or none):
 *   layers.L.input_layernorm.{weight,bias}          -> layers.L.ln1.{weight,bias}
 *   layers.L.post_attention_layernorm.{weight,bias} -> layers.L.ln2.{weight,bias}
 *   layers.L.attention.query_key_value.{weight,bias} (3H, H) -> layers.L.attn.qkv.{weight,bias}
 *       as is: both lay the rows out per head as [q (dh) | k (dh) | v (dh)]
 *   layers.L.attention.dense.{weight,bias}          -> layers.L.attn.out.{weight,bias}
 *   layers.L.mlp.dense_h_to_4h.{weight,bias}        -> layers.L.mlp.fc1.{weight,bias}
 *   layers.L.mlp.dense_4h_to_h.{weight,bias}        -> layers.L.mlp.fc2.{weight,bias}
 *   final_layer_norm.{weight,bias}                  -> lnf.{weight,bias}
 *   embed_in.weight (V', H)  -> prompt.wte.weight (V, H), its first V <= V' rows, when the model
 *                               has that tensor (text prompts); otherwise not read
 *   embed_out.weight (the language-model head) and the attention buffers (attention.bias,
 *   masked_bias, rotary_emb.inv_freq) are not read.
 * Every other calmflow tensor (encoder, output head, decoder) keeps calmflow's own
 * initialization. With "attention_bias": false the attention biases are absent and stay zero.
 */
#ifndef CALMFLOW_NEOX_H
#define CALMFLOW_NEOX_H

#include <mpi.h>
#include <stdint.h>

#include "calmflow/error.h"
#include "calmflow/model.h"

struct cf_neox_cfg {
  int64_t hidden, heads, layers, ffn, vocab;
  double rotary_pct, rotary_base, ln_eps;
  int attention_bias; /* 1: qkv and dense carry biases (the default) */
};

/* Local. Read and check dir/config.json (see above); errors are one line naming the file and
 * the key. */
cf_status cf_neox_config_read(const char *dir, struct cf_neox_cfg *nc);

/* Local. Whether the model configuration's backbone is nc's (H, heads, layers, ffn, rotary
 * dimensions and base); CF_EINVAL naming the first -net_ option that differs. */
cf_status cf_neox_check_model(const struct cf_neox_cfg *nc, const struct cf_model_cfg *mc,
                              const char *dir);

/* Collective on comm. Everything cf_neox_load checks, without a model: config.json against mc,
 * every safetensors header, the presence, shape and dtype of every backbone tensor a model of
 * configuration mc has (in their global shapes), and their values (a NaN or infinity; the ranks
 * read a share of the tensors each, a block of 4 MiB at a time). Every rank returns the same
 * status and message (the lowest failing rank's). For callers that must refuse a bad directory
 * before they change anything (calmflow train, before it prepares the run directory). */
cf_status cf_neox_check(MPI_Comm comm, const struct cf_model_cfg *mc, const char *dir);

struct cf_neox_info {
  int n_loaded;    /* calmflow tensors filled from the file (whole model, not only this rank's) */
  int wte;         /* 1: prompt.wte.weight was among them */
  char prefix[16]; /* the HF name prefix found: "gpt_neox." or "" */
};

/* Collective on comm (every rank holding a part of m: the grid's communicator). Load the
 * backbone of the model directory into m, whose cfg must match config.json: every rank checks
 * config.json, the safetensors headers and the presence, shape and dtype of every tensor the
 * whole model needs, then reads only the blocks its part holds (cf_tensor_info start / count:
 * its pipeline stage's layers, its tensor-parallel rows or columns) straight from the files.
 * Every rank returns the same status and message (the lowest failing rank's). On failure m's
 * parameters may be partly overwritten. info may be NULL. */
cf_status cf_neox_load(MPI_Comm comm, struct cf_model *m, const char *dir,
                       struct cf_neox_info *info);

#endif
