/* vmath_tile.h: the vector math of layers.c for one vector width, included by layers.c with
 * VMT_W (8 or 16 floats) and VMT(x) (the name of x for that width) defined: load / store /
 * select, exp, erf, erfc, the normal CDF Phi, and the elementwise GELU forward / backward
 * kernels. Every element is computed from its own input alone by the same float operations
 * whatever the width (no lane mixes with another, no multiply-add contraction), so all
 * widths and instruction sets give the same bits (test_vmath checks). Not a public header. */
typedef float VMT(vm_f) __attribute__((vector_size(VMT_W * sizeof(float))));
typedef int32_t VMT(vm_i) __attribute__((vector_size(VMT_W * sizeof(int32_t))));

VM_INLINE VMT(vm_f) VMT(vm_load)(const float *p) {
  VMT(vm_f) v;
  memcpy(&v, p, sizeof v);
  return v;
}
VM_INLINE void VMT(vm_store)(float *p, VMT(vm_f) v) {
  memcpy(p, &v, sizeof v);
}
/* m ? a : b lane by lane (m from a vector comparison: all ones or zero). */
VM_INLINE VMT(vm_f) VMT(vm_sel)(VMT(vm_i) m, VMT(vm_f) a, VMT(vm_f) b) {
  return (VMT(vm_f))((m & (VMT(vm_i))a) | (~m & (VMT(vm_i))b));
}

/* exp(x) with a relative error of a few float ulps: x = n ln2 + r, |r| <= ln2/2 (ln2 split in
 * two so n ln2 is exact), exp(r) by a degree-6 minimax polynomial, 2^n as two power-of-two
 * factors (so n = 128 and the subnormal range need no special case). x > 88.7228 gives +inf,
 * x < -103.97 gives 0, NaN gives NaN. */
VM_INLINE VMT(vm_f) VMT(vm_exp)(VMT(vm_f) x) {
  const VMT(vm_f) hi = (VMT(vm_f)){0} + 88.72284f, lo = (VMT(vm_f)){0} - 103.97208f;
  const VMT(vm_i) big = x > hi, small = x < lo;
  const VMT(vm_f) xc = VMT(vm_sel)(big, hi, VMT(vm_sel)(small, lo, x));
  const VMT(vm_f) magic =
      (VMT(vm_f)){0} + 12582912.0f; /* 1.5 * 2^23: adding it rounds to integer */
  const VMT(vm_f) k = xc * 1.44269504f + magic;
  const VMT(vm_f) n = k - magic;
  const VMT(vm_i) ni = (VMT(vm_i))k - (VMT(vm_i))magic;
  const VMT(vm_f) r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  const VMT(vm_f) r2 = r * r; /* Estrin: short dependency chains */
  const VMT(vm_f) pa = 1.0f + 1.000000044e+00f * r, pb = 4.999999081e-01f + 1.666638840e-01f * r;
  const VMT(vm_f) pc = 4.166834603e-02f + 8.377312608e-03f * r;
  const VMT(vm_f) p = pa + r2 * (pb + r2 * (pc + r2 * 1.383778849e-3f));
  const VMT(vm_i) h = ni >> 1, l = ni - h;
  const VMT(vm_f) s1 = (VMT(vm_f))((h + 127) << 23), s2 = (VMT(vm_f))((l + 127) << 23);
  VMT(vm_f) y = (p * s1) * s2;
  y = VMT(vm_sel)(big, (VMT(vm_f)){0} + INFINITY, y);
  return VMT(vm_sel)(small, (VMT(vm_f)){0}, y);
}

/* erfc(a) for a >= 0 (or NaN): t P(t) exp(-a^2) with t = 1 / (1 + 0.375 a) and P of degree 8
 * (a least-squares fit of relative error 1.3e-8 on [0, 10]); large a and +inf give 0. */
VM_INLINE VMT(vm_f) VMT(vm_erfc_pos)(VMT(vm_f) a) {
  const VMT(vm_f) t = 1.0f / (1.0f + 0.375f * a);
  const VMT(vm_f) t2 = t * t, t4 = t2 * t2;
  const VMT(vm_f) q01 = 2.116134229e-01f + 2.106501607e-01f * t;
  const VMT(vm_f) q23 = 2.053127684e-01f + 1.214962726e-01f * t;
  const VMT(vm_f) q45 = 2.737715232e-01f - 2.295180651e-01f * t;
  const VMT(vm_f) q67 = 4.325207457e-01f - 2.874030415e-01f * t;
  const VMT(vm_f) q47 = q45 + t2 * (q67 + t2 * 6.155621824e-02f);
  const VMT(vm_f) q = (q01 + t2 * q23) + t4 * q47;
  return (t * q) * VMT(vm_exp)(-(a * a));
}

/* erf(a) for 0 <= a <= 0.75: a S(a^2) with S of degree 5 (relative error 1.6e-9). */
VM_INLINE VMT(vm_f) VMT(vm_erf_small)(VMT(vm_f) a) {
  const VMT(vm_f) z = a * a;
  const VMT(vm_f) z2 = z * z;
  const VMT(vm_f) sa = 1.128379165e+00f - 3.761261715e-01f * z;
  const VMT(vm_f) sb = 1.128335272e-01f - 2.683339279e-02f * z;
  const VMT(vm_f) sc = 5.111758857e-03f - 6.730561053e-04f * z;
  const VMT(vm_f) s = sa + z2 * (sb + z2 * sc);
  return a * s;
}

VM_INLINE VMT(vm_f) VMT(vm_abs)(VMT(vm_f) x) {
  return (VMT(vm_f))((VMT(vm_i))x & 0x7fffffff);
}
VM_INLINE VMT(vm_f) VMT(vm_copysign)(VMT(vm_f) m, VMT(vm_f) x) {
  return (VMT(vm_f))((VMT(vm_i))m | ((VMT(vm_i))x & (int32_t)0x80000000));
}

/* erf(x): the series fit below |x| = 0.75, 1 - erfc(|x|) above, with x's sign. */
VM_INLINE VMT(vm_f) VMT(vm_erf)(VMT(vm_f) x) {
  const VMT(vm_f) a = VMT(vm_abs)(x);
  const VMT(vm_f) e = VMT(vm_sel)(a < 0.75f, VMT(vm_erf_small)(a), 1.0f - VMT(vm_erfc_pos)(a));
  return VMT(vm_copysign)(e, x);
}

/* Phi(x) = 0.5 (1 + erf(x / sqrt 2)): 0.5 + 0.5 erf near zero; in the tails 0.5 erfc(|x| /
 * sqrt 2) below zero (no cancellation, so the lower tail keeps its relative accuracy) and
 * 1 - that above. */
VM_INLINE VMT(vm_f) VMT(vm_phi)(VMT(vm_f) x) {
  const VMT(vm_f) a = VMT(vm_abs)(x) * 0.70710678f;
  const VMT(vm_f) mid = 0.5f + VMT(vm_copysign)(0.5f * VMT(vm_erf_small)(a), x);
  const VMT(vm_f) e = 0.5f * VMT(vm_erfc_pos)(a);
  return VMT(vm_sel)(a < 0.75f, mid, VMT(vm_sel)((VMT(vm_i))x < 0, e, 1.0f - e));
}

/* Load / store the first c (<= 8) values; missing lanes read as fill. */
VM_INLINE VMT(vm_f) VMT(vm_loadn)(const float *p, size_t c, float fill) {
  if (c == VMT_W) return VMT(vm_load)(p);
  float b[VMT_W];
  for (size_t k = 0; k < VMT_W; k++)
    b[k] = k < c ? p[k] : fill;
  return VMT(vm_load)(b);
}
VM_INLINE void VMT(vm_storen)(float *p, VMT(vm_f) v, size_t c) {
  if (c == VMT_W) {
    VMT(vm_store)(p, v);
    return;
  }
  float b[VMT_W];
  VMT(vm_store)(b, v);
  memcpy(p, b, c * sizeof(float));
}

VM_INLINE void VMT(vm_gelu_fwd)(const float *x, float *y, float *cdf, size_t n) {
  for (size_t i = 0; i < n; i += VMT_W) {
    size_t c = n - i < VMT_W ? n - i : VMT_W;
    VMT(vm_f) v = VMT(vm_loadn)(x + i, c, 0.0f), p = VMT(vm_phi)(v);
    if (cdf != NULL) VMT(vm_storen)(cdf + i, p, c);
    VMT(vm_storen)(y + i, v * p, c);
  }
}

VM_INLINE void VMT(vm_gelu_bwd)(const float *x, const float *cdf, const float *dy, float *dx,
                                size_t n) {
  for (size_t i = 0; i < n; i += VMT_W) {
    size_t c = n - i < VMT_W ? n - i : VMT_W;
    VMT(vm_f) v = VMT(vm_loadn)(x + i, c, 0.0f);
    VMT(vm_f) p = cdf != NULL ? VMT(vm_loadn)(cdf + i, c, 0.0f) : VMT(vm_phi)(v);
    VMT(vm_f) pdf = 0.39894228f * VMT(vm_exp)((-0.5f * v) * v);
    VMT(vm_storen)(dx + i, VMT(vm_loadn)(dy + i, c, 0.0f) * (p + v * pdf), c);
  }
}

VM_INLINE void VMT(vm_map)(const float *x, float *y, size_t n, int which) {
  for (size_t i = 0; i < n; i += VMT_W) {
    size_t c = n - i < VMT_W ? n - i : VMT_W;
    VMT(vm_f) v = VMT(vm_loadn)(x + i, c, 0.0f);
    VMT(vm_f) r = which == 0 ? VMT(vm_exp)(v) : which == 1 ? VMT(vm_erf)(v) : VMT(vm_phi)(v);
    VMT(vm_storen)(y + i, r, c);
  }
}
