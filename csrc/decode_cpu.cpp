// A whole decode step for CPU decoding (every layer, one token per row) in one call, on the int8
// weights of int8_cpu.h (that file says how they are quantized and why).
//
// Activations and accumulation are float32 throughout (decode reads each weight once and is
// memory-bound, so int8 activations would only add error here).
//
// Reference: workbench/models/fast.py (the torch forward of `FastTransformer`);
// tests/models/test_fast_kernel.py compares them on random inputs. Build: JIT by
// workbench/models/_decode_build.py (torch.utils.cpp_extension, -O3 -march=native,
// -ffp-contract=off), this file and int8_cpu.cpp as one library.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "int8_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

using workbench_decode::Lin;
using workbench_decode::as_lin;
using workbench_decode::linear;

// a · b over n floats, and y += a * x (attention's inner loops: a head is 64 wide).
float dot(const float* a, const float* b, int64_t n) {
  int64_t e = 0;
  float d = 0.f;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; e + 16 <= n; e += 16)
    acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + e), _mm512_loadu_ps(b + e), acc);
  d = _mm512_reduce_add_ps(acc);
#endif
  for (; e < n; ++e) d += a[e] * b[e];
  return d;
}

void axpy(float a, const float* x, float* y, int64_t n) {
  int64_t e = 0;
#if defined(__AVX512F__)
  const __m512 va = _mm512_set1_ps(a);
  for (; e + 16 <= n; e += 16)
    _mm512_storeu_ps(y + e, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + e), _mm512_loadu_ps(y + e)));
#endif
  for (; e < n; ++e) y[e] += a * x[e];
}

void rms_norm(const float* x, const float* gain, int64_t C, float eps, float* out) {
  const float ss = dot(x, x, C);
  const float r = 1.f / std::sqrt(ss / static_cast<float>(C) + eps);
  for (int64_t c = 0; c < C; ++c) out[c] = (x[c] * r) * gain[c];
}

// x * cos + roll(x, hd / 2) * sin, with the sine's first half negated (rotate_half).
void rope(float* x, const float* cos, const float* sin, int64_t hd) {
  const int64_t half = hd / 2;
  float tmp[512];
  for (int64_t d = 0; d < hd; ++d) tmp[d] = x[d] * cos[d] + x[(d + half) % hd] * sin[d];
  for (int64_t d = 0; d < hd; ++d) x[d] = tmp[d];
}

// out (B, C) += the nearest entry's residual for each row of keys (B, W) within the threshold
// (cosine, keys normalized as F.normalize: by max(|k|, 1e-12)); as EditMemory.apply.
void apply_memory(const float* keys, int64_t B, int64_t W, int64_t C, const at::Tensor& dirs,
                  const at::Tensor& values, float threshold, float* out) {
  const int64_t E = dirs.size(0);
  const float* d = dirs.data_ptr<float>();
  const float* v = values.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const float* k = keys + b * W;
    const float norm = std::max(std::sqrt(dot(k, k, W)), 1e-12f);
    int64_t best = -1;
    float best_sim = -INFINITY;
    for (int64_t e = 0; e < E; ++e) {
      const float sim = dot(k, d + e * W, W) / norm;
      if (sim > best_sim) best_sim = sim, best = e;
    }
    if (best >= 0 && best_sim >= threshold)
      for (int64_t c = 0; c < C; ++c) out[b * C + c] += v[best * C + c];
  }
}

constexpr int64_t PER_LAYER = 15;  // tensors per layer in the weight list (see decode_step)

// Logits (B, V) of one new token per row: ids (B,) int64 at position `pos` of every row's cache.
// w: per layer [attn_gain, qkv q/s/m/bias, out q/s/m, mlp_gain, gate_up q/s/m, down q/s/m]
// (bias may be empty), then [final_gain, emb q/s/m, head q/s/m] (the head may be the
// embedding's tensors again). kc, vc: per layer (B, n_kv, max_len, hd) float32 caches, written
// at `pos`. cos, sin: (n_ctx, hd) rotary tables (sine's first half negated).
// mem_dirs (E, W) unit key directions and mem_values (E, C) residuals of the edit memory at
// layer mem_layer (-1: none; workbench/models/memory.py): a row whose MLP key (the down
// projection's input) has cosine >= mem_threshold to its nearest direction gets that entry's
// residual added to the MLP's output.
at::Tensor decode_step(const at::Tensor& ids, at::TensorList w, at::TensorList kc,
                       at::TensorList vc, int64_t pos, const at::Tensor& cos,
                       const at::Tensor& sin, int64_t n_head, int64_t n_kv, double eps,
                       double attn_scale, const at::Tensor& mem_dirs,
                       const at::Tensor& mem_values, int64_t mem_layer, double mem_threshold) {
  const int64_t L = static_cast<int64_t>(kc.size());
  TORCH_CHECK(L > 0 && static_cast<int64_t>(vc.size()) == L &&
                  static_cast<int64_t>(w.size()) == L * PER_LAYER + 7,
              "decode_step: expected ", L * PER_LAYER + 7, " weights for ", L, " layers");
  TORCH_CHECK(ids.dim() == 1 && ids.scalar_type() == at::kLong && ids.is_contiguous(),
              "decode_step: ids must be int64 (B,)");
  const int64_t B = ids.size(0);
  const at::Tensor& emb_q = w[L * PER_LAYER + 1];
  const int64_t V = emb_q.size(0), C = emb_q.size(1);
  const Lin emb = as_lin(emb_q, w[L * PER_LAYER + 2], w[L * PER_LAYER + 3], at::Tensor(), C);
  const Lin head = as_lin(w[L * PER_LAYER + 4], w[L * PER_LAYER + 5], w[L * PER_LAYER + 6],
                          at::Tensor(), C);
  const at::Tensor& final_gain = w[L * PER_LAYER];
  TORCH_CHECK(final_gain.numel() == C && final_gain.scalar_type() == at::kFloat,
              "decode_step: final gain must be float32 (C,)");
  TORCH_CHECK(cos.dim() == 2 && cos.sizes() == sin.sizes() && cos.is_contiguous() &&
                  sin.is_contiguous() && cos.scalar_type() == at::kFloat &&
                  sin.scalar_type() == at::kFloat && pos >= 0 && pos < cos.size(0),
              "decode_step: rotary tables must be float32 (n_ctx, hd) and pos inside them");
  const int64_t hd = cos.size(1);
  TORCH_CHECK(hd <= 512 && hd % 2 == 0 && n_kv > 0 && n_head % n_kv == 0,
              "decode_step: head width ", hd, " or head counts not supported");
  const int64_t nqkv = (n_head + 2 * n_kv) * hd;
  const int64_t* idp = ids.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(idp[b] >= 0 && idp[b] < V, "decode_step: token id ", idp[b], " out of range");

  struct LayerW {
    const float *attn_gain, *mlp_gain;
    Lin qkv, out, gate_up, down;
    float *k, *v;
    int64_t max_len;
  };
  std::vector<LayerW> layers(L);
  int64_t W = 0;
  for (int64_t l = 0; l < L; ++l) {
    const at::Tensor* t = w.data() + l * PER_LAYER;
    LayerW& lw = layers[l];
    TORCH_CHECK(t[0].numel() == C && t[8].numel() == C && t[0].scalar_type() == at::kFloat &&
                    t[8].scalar_type() == at::kFloat,
                "decode_step: norm gains must be float32 (C,)");
    lw.attn_gain = t[0].data_ptr<float>();
    lw.qkv = as_lin(t[1], t[2], t[3], t[4], C);
    TORCH_CHECK(lw.qkv.N == nqkv, "decode_step: qkv has ", lw.qkv.N, " rows, expected ", nqkv);
    lw.out = as_lin(t[5], t[6], t[7], at::Tensor(), n_head * hd);
    TORCH_CHECK(lw.out.N == C, "decode_step: out projection must give C rows");
    lw.mlp_gain = t[8].data_ptr<float>();
    lw.gate_up = as_lin(t[9], t[10], t[11], at::Tensor(), C);
    W = lw.gate_up.N / 2;
    lw.down = as_lin(t[12], t[13], t[14], at::Tensor(), W);
    TORCH_CHECK(lw.down.N == C && lw.gate_up.N == 2 * W, "decode_step: MLP shapes disagree");
    for (const at::Tensor* c : {&kc[l], &vc[l]}) {
      TORCH_CHECK(c->dim() == 4 && c->size(0) == B && c->size(1) == n_kv && c->size(3) == hd &&
                      c->size(2) > pos && c->scalar_type() == at::kFloat && c->is_contiguous(),
                  "decode_step: caches must be contiguous float32 (B, n_kv, > pos, hd)");
    }
    TORCH_CHECK(kc[l].size(2) == vc[l].size(2), "decode_step: key and value caches differ");
    lw.k = kc[l].data_ptr<float>();
    lw.v = vc[l].data_ptr<float>();
    lw.max_len = kc[l].size(2);
  }

  const bool has_memory = mem_layer >= 0;
  if (has_memory) {
    TORCH_CHECK(mem_layer < L && mem_dirs.dim() == 2 && mem_dirs.size(1) == W &&
                    mem_values.dim() == 2 && mem_values.size(0) == mem_dirs.size(0) &&
                    mem_values.size(1) == C && mem_dirs.scalar_type() == at::kFloat &&
                    mem_values.scalar_type() == at::kFloat && mem_dirs.is_contiguous() &&
                    mem_values.is_contiguous(),
                "decode_step: the edit memory must be float32 (E, ", W, ") directions and (E, ",
                C, ") residuals at a layer of the model");
  }
  const float scale = static_cast<float>(attn_scale), feps = static_cast<float>(eps);
  const float* cp = cos.data_ptr<float>() + pos * hd;
  const float* sp = sin.data_ptr<float>() + pos * hd;
  std::vector<float> x(B * C), xn(B * C), qkv(B * nqkv), att(B * n_head * hd), gu(B * 2 * W),
      act(B * W), tmp(B * std::max(C, W));
  for (int64_t b = 0; b < B; ++b) {  // embedding lookup: dequantize one row
    const int64_t id = idp[b], ng = C / emb.G;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t g = id * ng + c / emb.G;
      x[b * C + c] = static_cast<float>(emb.q[id * C + c]) * emb.s[g] + emb.m[g];
    }
  }
  const int64_t group = n_head / n_kv;
  for (int64_t l = 0; l < L; ++l) {
    const LayerW& lw = layers[l];
    for (int64_t b = 0; b < B; ++b)
      rms_norm(x.data() + b * C, lw.attn_gain, C, feps, xn.data() + b * C);
    linear(xn.data(), B, lw.qkv, qkv.data());
    for (int64_t b = 0; b < B; ++b) {
      float* row = qkv.data() + b * nqkv;
      for (int64_t h = 0; h < n_head + n_kv; ++h) rope(row + h * hd, cp, sp, hd);
      for (int64_t h = 0; h < n_kv; ++h) {
        const int64_t at_pos = ((b * n_kv + h) * lw.max_len + pos) * hd;
        std::copy_n(row + (n_head + h) * hd, hd, lw.k + at_pos);
        std::copy_n(row + (n_head + n_kv + h) * hd, hd, lw.v + at_pos);
      }
    }
    at::parallel_for(0, B * n_head, 1, [&](int64_t h0, int64_t h1) {
      std::vector<float> p(pos + 1);
      for (int64_t bh = h0; bh < h1; ++bh) {
        const int64_t b = bh / n_head, h = bh % n_head, kvh = h / group;
        const float* qv = qkv.data() + b * nqkv + h * hd;
        const float* kb = lw.k + (b * n_kv + kvh) * lw.max_len * hd;
        const float* vb = lw.v + (b * n_kv + kvh) * lw.max_len * hd;
        float mx = -INFINITY;
        for (int64_t t = 0; t <= pos; ++t) {
          p[t] = dot(qv, kb + t * hd, hd) * scale;
          mx = std::max(mx, p[t]);
        }
        float sum = 0.f;
        for (int64_t t = 0; t <= pos; ++t) sum += (p[t] = std::exp(p[t] - mx));
        float* out = att.data() + (b * n_head + h) * hd;
        std::fill_n(out, hd, 0.f);
        for (int64_t t = 0; t <= pos; ++t) axpy(p[t] / sum, vb + t * hd, out, hd);
      }
    });
    linear(att.data(), B, lw.out, tmp.data());
    for (int64_t i = 0; i < B * C; ++i) x[i] += tmp[i];
    for (int64_t b = 0; b < B; ++b)
      rms_norm(x.data() + b * C, lw.mlp_gain, C, feps, xn.data() + b * C);
    linear(xn.data(), B, lw.gate_up, gu.data());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < W; ++j) {
        const float g = gu[b * 2 * W + j], u = gu[b * 2 * W + W + j];
        act[b * W + j] = g / (1.f + std::exp(-g)) * u;
      }
    linear(act.data(), B, lw.down, tmp.data());
    if (has_memory && l == mem_layer) apply_memory(act.data(), B, W, C, mem_dirs, mem_values,
                                                   static_cast<float>(mem_threshold), tmp.data());
    for (int64_t i = 0; i < B * C; ++i) x[i] += tmp[i];
  }
  for (int64_t b = 0; b < B; ++b)
    rms_norm(x.data() + b * C, final_gain.data_ptr<float>(), C, feps, xn.data() + b * C);
  at::Tensor logits = at::empty({B, head.N}, ids.options().dtype(at::kFloat));
  linear(xn.data(), B, head, logits.data_ptr<float>());
  return logits;
}

}  // namespace

TORCH_LIBRARY(workbench_decode, m) {
  m.def("int8_quantize_(Tensor w, Tensor(a!) q, Tensor(b!) s, Tensor(c!) m, int group) -> int");
  m.def("int8_linear(Tensor x, Tensor q, Tensor s, Tensor m, Tensor bias) -> Tensor");
  m.def("int8_dequant_bf16(Tensor q, Tensor s, Tensor m) -> Tensor");
  m.def("fingerprint(Tensor t) -> int");
  m.def("parallel_width() -> int");
  m.def(
      "decode_step(Tensor ids, Tensor[] w, Tensor[] k, Tensor[] v, int pos, Tensor cos, "
      "Tensor sin, int n_head, int n_kv, float eps, float scale, Tensor mem_dirs, "
      "Tensor mem_values, int mem_layer, float mem_threshold) -> Tensor");
}

TORCH_LIBRARY_IMPL(workbench_decode, CPU, m) {
  m.impl("int8_linear", &workbench_decode::int8_linear);
  m.impl("int8_dequant_bf16", &workbench_decode::int8_dequant_bf16);
  m.impl("int8_quantize_", &workbench_decode::int8_quantize_);
  m.impl("decode_step", &decode_step);
  m.impl("fingerprint", &workbench_decode::fingerprint);
}

TORCH_LIBRARY_IMPL(workbench_decode, CompositeExplicitAutograd, m) {
  m.impl("parallel_width", &workbench_decode::parallel_width);
}
