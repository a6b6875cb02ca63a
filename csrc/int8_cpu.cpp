// Int8 weights for CPU decoding: one scale and one offset per group of G columns, quantized
// from float32, multiplied with float32 activations, dequantized to bfloat16, and fingerprinted.
//
//   w[n, k] ≈ s[n, g] * q[n, k] + m[n, g]          (g = k / G; q int8; s, m float32)
//   y[m, n] = sum_g s[n, g] * (x_g · q_g[n]) + m[n, g] * sum(x_g)
//
// Each group is quantized two ways and keeps the one with the smaller largest error:
// symmetric (m = 0, s = max|w| / 127) and asymmetric (255 levels from min to max). Why: weights
// that came from a Q4_1 file (16 levels from min to max per block of 32) are on the asymmetric
// grid exactly (255 = 15 * 17), and Q8_0 ones (symmetric, 32 per block) on the symmetric grid,
// so SmolLM2-135M's shipped weights round-trip to float rounding and the copy's greedy answers
// follow float32's. After an update the weights leave the grid, and the error is at most half a
// step of the better of the two grids. Norm gains are not folded into the weights: folding
// moved the weights off those grids and SmolLM2's chat answer lost "Paris".
//
// Activations and accumulation are float32 throughout (decode reads each weight once and is
// memory-bound, so int8 activations would only add error here).
//
// Reference: workbench/models/fast.py (`quantize_rows`, `int8_linear_reference`);
// tests/models/test_fast_kernel.py compares them on random inputs. Built with decode_cpu.cpp
// (one library) by workbench/models/_decode_build.py.

#include "int8_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace workbench_decode {
namespace {

// Sums of each group of x's columns: the offsets multiply them.
void group_sums(const float* x, int64_t K, int64_t G, float* out) {
  for (int64_t g = 0; g < K / G; ++g) {
    float t = 0.f;
    for (int64_t k = g * G; k < (g + 1) * G; ++k) t += x[k];
    out[g] = t;
  }
}

// Rows n0..n1 of y = x (one row) @ w^T; xs holds x's group sums.
void rows_scalar(const float* x, const float* xs, const Lin& w, float* y, int64_t n0, int64_t n1) {
  const int64_t ng = w.K / w.G;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* qn = w.q + n * w.K;
    float out = 0.f;
    for (int64_t g = 0; g < ng; ++g) {
      float part = 0.f;
      for (int64_t k = g * w.G; k < (g + 1) * w.G; ++k) part += x[k] * static_cast<float>(qn[k]);
      out += part * w.s[n * ng + g] + w.m[n * ng + g] * xs[g];
    }
    y[n] = w.bias ? out + w.bias[n] : out;
  }
}

#if defined(__AVX512F__)
// R weight rows from n on (independent accumulator chains, R fixed at compile time so they stay
// in registers); G % 16 == 0. The group's scale multiplies its 16-lane partial sums; the offset
// term is added from the rows' offsets and x's group sums, 16 groups a vector.
// Why by hand: this loop is the whole decode step, and it is bound by streaming the weights from
// memory. A core's hardware prefetch alone keeps too few lines in flight: SmolLM2-135M's step
// took 10.7 ms on 2 cores without the software prefetch (PREFETCH_ROWS rows ahead), 6.1 with it
// (R = 4 rows a block, in registers). Int8 activations (VNNI, as llama.cpp) were no faster once
// prefetched (6.2 ms) and made greedy continuations leave float32's (65% of positions kept).
constexpr int64_t PREFETCH_ROWS = 8;
template <int R>
void rows_block(const float* x, const float* xs, const Lin& w, float* y, int64_t n) {
  const int64_t K = w.K, G = w.G, ng = K / G;
  __m512 total[R];
  for (int r = 0; r < R; ++r) total[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m512 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = g * G; k < (g + 1) * G; k += 16) {
      const __m512 xv = _mm512_loadu_ps(x + k);
      for (int r = 0; r < R; ++r) {
        const int8_t* row = w.q + (n + r) * K;
        if ((k & 63) == 0)  // a hint: it never faults, so past the matrix's end is fine
          _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(row) +
                                                     PREFETCH_ROWS * K + k),
                       _MM_HINT_T0);
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), xv, acc[r]);
      }
    }
    for (int r = 0; r < R; ++r)
      total[r] = _mm512_fmadd_ps(acc[r], _mm512_set1_ps(w.s[(n + r) * ng + g]), total[r]);
  }
  for (int r = 0; r < R; ++r) {
    const float* m = w.m + (n + r) * ng;
    for (int64_t g = 0; g < ng; g += 16) {
      const __mmask16 k = ng - g >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (ng - g)) - 1);
      total[r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, m + g), _mm512_maskz_loadu_ps(k, xs + g),
                                 total[r]);
    }
    const float out = _mm512_reduce_add_ps(total[r]);
    y[n + r] = w.bias ? out + w.bias[n + r] : out;
  }
}

void rows_avx512(const float* x, const float* xs, const Lin& w, float* y, int64_t n0,
                 int64_t n1) {
  constexpr int64_t NR = 4;
  int64_t n = n0;
  for (; n + NR <= n1; n += NR) rows_block<NR>(x, xs, w, y, n);
  for (; n < n1; ++n) rows_block<1>(x, xs, w, y, n);
}
#endif

// One group of G floats into q, s, m: the better of the symmetric and the asymmetric grid (by
// the largest error; ties keep symmetric). Plain float ops in a fixed order (no contraction), so
// fast.py's `quantize_rows` gives the same bits.
void quantize_group(const float* w, int64_t G, int8_t* q, float* s, float* m) {
  float lo = w[0], hi = w[0];
  for (int64_t k = 0; k < G; ++k) {
    lo = std::min(lo, w[k]);
    hi = std::max(hi, w[k]);
  }
  const float amax = std::max(-lo, hi);
  const float s1 = std::max(amax, 1e-12f) / 127.f, r1 = 1.f / s1;
  const float s2 = std::max(hi - lo, 1e-12f) / 255.f, r2 = 1.f / s2;
  const float m2 = lo + 128.f * s2;
  float e1 = 0.f, e2 = 0.f;
  for (int64_t k = 0; k < G; ++k) {
    const float q1 = std::min(127.f, std::max(-127.f, std::nearbyint(w[k] * r1)));
    const float q2 = std::min(127.f, std::max(-128.f, std::nearbyint((w[k] - lo) * r2) - 128.f));
    e1 = std::max(e1, std::fabs(q1 * s1 - w[k]));
    e2 = std::max(e2, std::fabs((q2 * s2 + m2) - w[k]));
  }
  const bool asym = e2 < e1;
  *s = asym ? s2 : s1;
  *m = asym ? m2 : 0.f;
  for (int64_t k = 0; k < G; ++k) {
    const float r = asym ? std::nearbyint((w[k] - lo) * r2) - 128.f : std::nearbyint(w[k] * r1);
    q[k] = static_cast<int8_t>(std::min(127.f, std::max(asym ? -128.f : -127.f, r)));
  }
}

#if defined(__AVX512F__)
// quantize_group for G == 32 (two vectors), the same operations lane by lane, so the same bits:
// re-quantizing SmolLM2-135M after every update is this loop over 134M weights.
void quantize_group32(const float* w, int8_t* q, float* s, float* m) {
  const __m512 a = _mm512_loadu_ps(w), b = _mm512_loadu_ps(w + 16);
  const float lo = _mm512_reduce_min_ps(_mm512_min_ps(a, b));
  const float hi = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
  const float amax = std::max(-lo, hi);
  const float s1 = std::max(amax, 1e-12f) / 127.f, r1 = 1.f / s1;
  const float s2 = std::max(hi - lo, 1e-12f) / 255.f, r2 = 1.f / s2;
  const float m2 = lo + 128.f * s2;
  const __m512 vs1 = _mm512_set1_ps(s1), vs2 = _mm512_set1_ps(s2), vm2 = _mm512_set1_ps(m2);
  const __m512 vr1 = _mm512_set1_ps(r1), vr2 = _mm512_set1_ps(r2);
  const __m512 vlo = _mm512_set1_ps(lo), c128 = _mm512_set1_ps(128.f);
  const __m512 p127 = _mm512_set1_ps(127.f), n127 = _mm512_set1_ps(-127.f);
  const __m512 n128 = _mm512_set1_ps(-128.f);
  constexpr int RN = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  __m512 q1[2], q2[2], e1 = _mm512_setzero_ps(), e2 = _mm512_setzero_ps();
  const __m512 x[2] = {a, b};
  for (int h = 0; h < 2; ++h) {
    q1[h] = _mm512_min_ps(p127, _mm512_max_ps(n127, _mm512_roundscale_ps(_mm512_mul_ps(x[h], vr1), RN)));
    const __m512 r2 = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(x[h], vlo), vr2), RN);
    q2[h] = _mm512_min_ps(p127, _mm512_max_ps(n128, _mm512_sub_ps(r2, c128)));
    e1 = _mm512_max_ps(e1, _mm512_abs_ps(_mm512_sub_ps(_mm512_mul_ps(q1[h], vs1), x[h])));
    const __m512 back = _mm512_add_ps(_mm512_mul_ps(q2[h], vs2), vm2);
    e2 = _mm512_max_ps(e2, _mm512_abs_ps(_mm512_sub_ps(back, x[h])));
  }
  const bool asym = _mm512_reduce_max_ps(e2) < _mm512_reduce_max_ps(e1);
  *s = asym ? s2 : s1;
  *m = asym ? m2 : 0.f;
  for (int h = 0; h < 2; ++h) {
    const __m128i packed = _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(asym ? q2[h] : q1[h]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16 * h), packed);
  }
}
#endif

// A 64-bit fingerprint of t's bytes: sum over 8-byte words of word * (2 i + 1), mod 2^64 (plus
// the tail bytes). Any change of one word changes it (odd factors are invertible), and sums over
// any split of the words add up to the same value, so threads need no fixed order. The fast
// copy re-quantizes only the matrices whose fingerprint moved (an edit changes one): torch's
// tensor versions miss writes made by the fused optimizers.
uint64_t fingerprint_words(const unsigned char* p, int64_t b, int64_t e, uint64_t acc) {
  for (int64_t i = b; i < e; ++i) {
    uint64_t w;
    std::memcpy(&w, p + 8 * i, 8);
    acc += w * (2 * static_cast<uint64_t>(i) + 1);
  }
  return acc;
}

int64_t fingerprint_tail(const unsigned char* p, int64_t bytes, uint64_t words_sum) {
  uint64_t tail = static_cast<uint64_t>(bytes);
  for (int64_t i = bytes / 8 * 8; i < bytes; ++i) tail = tail * 131 + p[i];
  return static_cast<int64_t>(words_sum ^ (tail * 0x9E3779B97F4A7C15ull));
}

}  // namespace

Lin as_lin(const at::Tensor& q, const at::Tensor& s, const at::Tensor& m, const at::Tensor& bias,
           int64_t K) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous() && q.is_cpu(),
              "int8 weights must be contiguous int8 (N, K) CPU tensors");
  TORCH_CHECK(q.size(1) == K, "int8 weights have ", q.size(1), " columns, expected ", K);
  const int64_t N = q.size(0);
  TORCH_CHECK(s.dim() == 2 && s.size(0) == N && s.size(1) > 0 && K % s.size(1) == 0 &&
                  s.scalar_type() == at::kFloat && s.is_contiguous(),
              "scales must be contiguous float32 (N, K / group)");
  TORCH_CHECK(m.sizes() == s.sizes() && m.scalar_type() == at::kFloat && m.is_contiguous(),
              "offsets must be contiguous float32 like the scales");
  const bool has_bias = bias.defined() && bias.numel() > 0;
  TORCH_CHECK(!has_bias || (bias.numel() == N && bias.scalar_type() == at::kFloat &&
                            bias.is_contiguous()),
              "bias must be float32 (N,) or empty");
  return {q.data_ptr<int8_t>(), s.data_ptr<float>(), m.data_ptr<float>(),
          has_bias ? bias.data_ptr<float>() : nullptr, N, K, K / s.size(1)};
}

// y (M, N) = x (M, K) @ w^T (+ bias), rows of x one after another. Threads take blocks of 64
// weight rows from a shared counter instead of a fixed half each: on a shared machine a thread
// that is descheduled then holds up the step by one block, not by its whole share.
void linear(const float* x, int64_t M, const Lin& w, float* y) {
  const int64_t ng = w.K / w.G;
  std::vector<float> xs(M * ng);
  for (int64_t i = 0; i < M; ++i) group_sums(x + i * w.K, w.K, w.G, xs.data() + i * ng);
  constexpr int64_t BLOCK = 64;
  const int64_t blocks = (w.N + BLOCK - 1) / BLOCK;
  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), blocks);
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t blk = next.fetch_add(1); blk < blocks; blk = next.fetch_add(1)) {
      const int64_t n0 = blk * BLOCK, n1 = std::min(w.N, n0 + BLOCK);
      for (int64_t i = 0; i < M; ++i) {
#if defined(__AVX512F__)
        if (w.G % 16 == 0) {
          rows_avx512(x + i * w.K, xs.data() + i * ng, w, y + i * w.N, n0, n1);
          continue;
        }
#endif
        rows_scalar(x + i * w.K, xs.data() + i * ng, w, y + i * w.N, n0, n1);
      }
    }
  });
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& s,
                       const at::Tensor& m, const at::Tensor& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.is_cpu(),
              "int8_linear: x must be a contiguous float32 (M, K) CPU tensor");
  const Lin w = as_lin(q, s, m, bias, x.size(1));
  at::Tensor y = at::empty({x.size(0), w.N}, x.options());
  linear(x.data_ptr<float>(), x.size(0), w, y.data_ptr<float>());
  return y;
}

// The weights as bfloat16, w = q * s + m rounded once (to nearest even): a prompt of many tokens
// is compute-bound, and a bfloat16 matmul (AMX where the CPU has it) beats int8_linear there.
at::Tensor int8_dequant_bf16(const at::Tensor& q, const at::Tensor& s, const at::Tensor& m) {
  const Lin w = as_lin(q, s, m, at::Tensor(), q.size(1));
  at::Tensor out = at::empty({w.N, w.K}, q.options().dtype(at::kBFloat16));
  c10::BFloat16* op = out.data_ptr<c10::BFloat16>();
  const int64_t ng = w.K / w.G;
  at::parallel_for(0, w.N * ng, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {  // group i: row i / ng
      for (int64_t k = 0; k < w.G; ++k)
        op[i * w.G + k] = c10::BFloat16(static_cast<float>(w.q[i * w.G + k]) * w.s[i] + w.m[i]);
    }
  });
  return out;
}

// How many threads at::parallel_for runs on (1 in a library built without OpenMP).
int64_t parallel_width() {
  std::atomic<uint64_t> seen{0};
  at::parallel_for(0, 4096, 1, [&](int64_t, int64_t) {
    seen.fetch_or(uint64_t(1) << std::min(at::get_thread_num(), 63));
  });
  return __builtin_popcountll(seen.load());
}

int64_t fingerprint(const at::Tensor& t) {
  TORCH_CHECK(t.is_contiguous() && t.is_cpu(), "fingerprint: a contiguous CPU tensor");
  const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
  const auto* p = static_cast<const unsigned char*>(t.data_ptr());
  const uint64_t total = at::parallel_reduce(
      0, bytes / 8, 1 << 16, uint64_t(0),
      [&](int64_t b, int64_t e, uint64_t acc) { return fingerprint_words(p, b, e, acc); },
      [](uint64_t a, uint64_t b) { return a + b; });
  return fingerprint_tail(p, bytes, total);
}

// Quantize w (N, K) float32 into q (N, K) int8, s and m (N, K / G) float32; outputs may be row
// slices of bigger buffers; returns `fingerprint(w)`, computed in the same pass. One pass over
// w: the learner re-quantizes after every update.
int64_t int8_quantize_(const at::Tensor& w, at::Tensor& q, at::Tensor& s, at::Tensor& m,
                    int64_t group) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.is_cpu(),
              "int8_quantize_: w must be a contiguous float32 CPU matrix");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(group > 0 && K % group == 0, "int8_quantize_: group ", group, " must divide ", K);
  TORCH_CHECK(q.sizes() == w.sizes(), "int8_quantize_: q must be (N, K)");
  TORCH_CHECK(s.size(0) == N && s.size(1) == K / group, "int8_quantize_: s must be (N, K/group)");
  const Lin out = as_lin(q, s, m, at::Tensor(), K);
  const float* wp = w.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = s.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  (void)out;
  const auto* bytes = reinterpret_cast<const unsigned char*>(wp);
  std::atomic<uint64_t> print{0};
  at::parallel_for(0, N * (K / group), 512, [&](int64_t b, int64_t e) {
    // the words of groups b..e (a group of floats may end inside a word when G is odd)
    const int64_t w0 = (b * group * 4 + 7) / 8, w1 = (e * group * 4 + 7) / 8;
    print.fetch_add(fingerprint_words(bytes, w0, std::min(w1, N * K * 4 / 8), 0));
    for (int64_t i = b; i < e; ++i) {
#if defined(__AVX512F__)
      if (group == 32) {
        quantize_group32(wp + i * group, qp + i * group, sp + i, mp + i);
        continue;
      }
#endif
      quantize_group(wp + i * group, group, qp + i * group, sp + i, mp + i);
    }
  });
  return fingerprint_tail(bytes, N * K * 4, print.load());
}

}  // namespace workbench_decode
