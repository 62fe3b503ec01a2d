/* cfm_impl.h: private to src/flow/cfm*.c — the CFM network's layer table and saved
 * activations behind struct cf_cfm.impl. */
#ifndef CALMFLOW_FLOW_CFM_IMPL_H
#define CALMFLOW_FLOW_CFM_IMPL_H

#include <stdint.h>

#include "calmflow/mem.h"
#include "model/layers.h"

struct cf_cfm_impl {
  int64_t I0;         /* input features D + 1 + 2K */
  struct cf_lin *lin; /* (layers + 1): fc1 .. fcL, out */
  char *names;        /* tensor name storage */
  int64_t *fan_in;    /* (n_tensors) for the init bound */
  /* activations for max_batch points */
  struct cf_arena arena;
  float *in;        /* (B, I0) network input */
  float **xh, **rs; /* (layers) of (B, W) normalized pre-activation, (B) its 1/std */
  float **h;        /* (layers) of (B, W) hidden outputs */
  float *g[2];      /* (B, W) backward ping-pong */
  float *v, *dv;    /* (B, D) output and d loss / d output */
  int64_t last_B;   /* points of the last forward (0: none to differentiate) */
};

#endif
