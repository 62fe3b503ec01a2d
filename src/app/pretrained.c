/* pretrained.c: -model_init_hf DIR for `calmflow train` — the backbone's -net_ options taken
 * from a Hugging Face GPT-NeoX config.json (neox.h), so config.yaml and every checkpoint record
 * the shape the loaded weights have, and with text prompts its tokenizer.json as -tok_file
 * unless a tokenizer is named; the weights themselves are loaded by cf_train_run. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "app.h"
#include "calmflow/neox.h"

/* Local. The shortest of %.15g / %.17g that reads back as v. */
static void print_real(char *buf, size_t cap, double v) {
  snprintf(buf, cap, "%.15g", v);
  if (strtod(buf, NULL) != v) snprintf(buf, cap, "%.17g", v);
}

cf_status cf_app_pretrained_options(struct cf_opts *o) {
  const char *dir = cf_opt_str(o, "model_init_hf");
  if (dir[0] == '\0') return CF_OK;
  CF_CHECK(strcmp(cf_opt_str(o, "model"), "calmflow") == 0, CF_EINVAL,
           "option -model_init_hf: a pretrained GPT-NeoX backbone is for -model calmflow (got "
           "-model %s)",
           cf_opt_str(o, "model"));
  struct cf_neox_cfg nc;
  CF_TRY(cf_neox_config_read(dir, &nc));
  static const char *const opt[6] = {"net_layers", "net_hidden",     "net_heads",
                                     "net_ffn",    "net_rotary_pct", "net_rotary_base"};
  static const char *const key[6] = {"num_hidden_layers", "hidden_size", "num_attention_heads",
                                     "intermediate_size", "rotary_pct",  "rotary_emb_base"};
  const double want[6] = {(double)nc.layers, (double)nc.hidden, (double)nc.heads,
                          (double)nc.ffn,    nc.rotary_pct,     nc.rotary_base};
  for (int i = 0; i < 6; i++) {
    char v[64];
    if (i < 4)
      snprintf(v, sizeof v, "%lld", (long long)want[i]);
    else
      print_real(v, sizeof v, want[i]);
    if (cf_opt_given(o, opt[i])) {
      const char *s = cf_opt_str(o, opt[i]);
      char *end = NULL;
      double got = strtod(s, &end);
      if (i == 3 && end != s && *end == '\0' && got == 0.0) got = 4.0 * (double)nc.hidden;
      CF_CHECK(end != s && *end == '\0' && fabs(got - want[i]) <= 1e-12 * fabs(want[i]), CF_EINVAL,
               "option -%s %s conflicts with -model_init_hf '%s' (config.json %s %s); leave -%s "
               "out, the pretrained model sets it",
               opt[i], s, dir, key[i], v, opt[i]);
    }
    CF_TRY(cf_opt_set(o, opt[i], v));
  }
  /* text prompts: the pretrained model's own tokenizer unless another one is named */
  if (cf_opt_str(o, "data_prompt")[0] != '\0' && cf_opt_str(o, "tok_file")[0] == '\0' &&
      cf_opt_str(o, "tok_encoder")[0] == '\0') {
    char tok[CF_OPT_LEN];
    struct stat sb;
    int n = snprintf(tok, sizeof tok, "%s/tokenizer.json", dir);
    if (n > 0 && (size_t)n < sizeof tok && stat(tok, &sb) == 0)
      CF_TRY(cf_opt_set(o, "tok_file", tok));
  }
  return CF_OK;
}
