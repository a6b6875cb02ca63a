// Weight-only int8 linear for CPU decoding, with one scale per group of columns.
//
//   y[m, n] = sum_g s[n, g] * sum_{k in group g} x[m, k] * q[n, k]
//
// x (M, K) float32, q (N, K) int8, s (N, K / G) float32, y (M, N) float32. A decode step has
// M = 1: the op reads each weight once (a quarter of the fp32 bytes) and is memory-bound; rows of
// x are taken 4 at a time so a prompt reuses each converted weight vector 4 times, and 4 weight
// rows at a time so the float32 accumulators form independent chains.
//
// Why groups: one scale per output row (torch's _weight_int8pack_mm) rounds SmolLM2-135M's
// small weights too coarsely: greedy next tokens agreed with fp32 on 94% of probe positions,
// with groups of 64 columns on 97% (bench/generate.py). Accumulation is float32 throughout.
//
// Reference: workbench/models/fast.py `int8_linear_reference` (dequantize, then F.linear);
// tests/models/test_fast_kernel.py compares the two on random inputs.
// Build: JIT by workbench/models/_decode_build.py (torch.utils.cpp_extension, -O3 -march=native).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t MB = 4;  // rows of x per pass over the weights
constexpr int64_t NR = 4;  // weight rows per pass: independent accumulators hide FMA latency

// Any shape: scalar loops (also the path without AVX-512).
void block_scalar(const float* x, int64_t K, const int8_t* q, const float* s, int64_t G,
                  float* y, int64_t N, int64_t n0, int64_t n1, int64_t m0, int64_t mb) {
  const int64_t ng = K / G;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* qn = q + n * K;
    for (int64_t i = 0; i < mb; ++i) {
      const float* xm = x + (m0 + i) * K;
      float out = 0.f;
      for (int64_t g = 0; g < ng; ++g) {
        float part = 0.f;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) part += xm[k] * static_cast<float>(qn[k]);
        out += part * s[n * ng + g];
      }
      y[(m0 + i) * N + n] = out;
    }
  }
}

#if defined(__AVX512F__)
// Rows n0..n0+nr-1 (nr <= NR) of the weights against rows m0..m0+mb-1 of x; G % 16 == 0.
// Each group's scale multiplies the converted weights, so one accumulator per (n, m) pair.
void block_avx512(const float* x, int64_t K, const int8_t* q, const float* s, int64_t G,
                  float* y, int64_t N, int64_t n0, int64_t nr, int64_t m0, int64_t mb) {
  const int64_t ng = K / G;
  __m512 acc[NR][MB];
  for (int64_t r = 0; r < NR; ++r)
    for (int64_t i = 0; i < MB; ++i) acc[r][i] = _mm512_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m512 scale[NR];
    for (int64_t r = 0; r < nr; ++r) scale[r] = _mm512_set1_ps(s[(n0 + r) * ng + g]);
    for (int64_t k = g * G; k < (g + 1) * G; k += 16) {
      __m512 xs[MB];
      for (int64_t i = 0; i < mb; ++i) xs[i] = _mm512_loadu_ps(x + (m0 + i) * K + k);
      for (int64_t r = 0; r < nr; ++r) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + (n0 + r) * K + k));
        const __m512 w = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), scale[r]);
        for (int64_t i = 0; i < mb; ++i) acc[r][i] = _mm512_fmadd_ps(w, xs[i], acc[r][i]);
      }
    }
  }
  for (int64_t r = 0; r < nr; ++r)
    for (int64_t i = 0; i < mb; ++i) y[(m0 + i) * N + n0 + r] = _mm512_reduce_add_ps(acc[r][i]);
}

// One row of x (a decode step): the group scale is applied once per group to the group's
// partial sums, and 8 weight rows give 8 independent accumulator chains.
constexpr int64_t NR1 = 8;
void row_avx512(const float* x, int64_t K, const int8_t* q, const float* s, int64_t G, float* y,
                int64_t n0, int64_t nr) {
  const int64_t ng = K / G;
  __m512 total[NR1];
  for (int64_t r = 0; r < NR1; ++r) total[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m512 acc[NR1];
    for (int64_t r = 0; r < NR1; ++r) acc[r] = _mm512_setzero_ps();
    for (int64_t k = g * G; k < (g + 1) * G; k += 16) {
      const __m512 xs = _mm512_loadu_ps(x + k);
      for (int64_t r = 0; r < nr; ++r) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + (n0 + r) * K + k));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), xs, acc[r]);
      }
    }
    for (int64_t r = 0; r < nr; ++r)
      total[r] = _mm512_fmadd_ps(acc[r], _mm512_set1_ps(s[(n0 + r) * ng + g]), total[r]);
  }
  for (int64_t r = 0; r < nr; ++r) y[n0 + r] = _mm512_reduce_add_ps(total[r]);
}
#endif

void block(const float* x, int64_t K, const int8_t* q, const float* s, int64_t G, float* y,
           int64_t N, int64_t n0, int64_t n1, int64_t m0, int64_t mb) {
#if defined(__AVX512F__)
  if (G % 16 == 0 && mb == 1) {
    for (int64_t n = n0; n < n1; n += NR1)
      row_avx512(x + m0 * K, K, q, s, G, y + m0 * N, n, std::min(NR1, n1 - n));
    return;
  }
  if (G % 16 == 0) {
    for (int64_t n = n0; n < n1; n += NR)
      block_avx512(x, K, q, s, G, y, N, n, std::min(NR, n1 - n), m0, mb);
    return;
  }
#endif
  block_scalar(x, K, q, s, G, y, N, n0, n1, m0, mb);
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& s,
                       int64_t group) {
  TORCH_CHECK(x.dim() == 2 && q.dim() == 2 && s.dim() == 2, "int8_linear: x, q, s must be 2-D");
  TORCH_CHECK(x.scalar_type() == at::kFloat && q.scalar_type() == at::kChar &&
                  s.scalar_type() == at::kFloat,
              "int8_linear: x float32, q int8, s float32");
  TORCH_CHECK(x.is_cpu() && q.is_cpu() && s.is_cpu(), "int8_linear: CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && q.is_contiguous() && s.is_contiguous(),
              "int8_linear: contiguous tensors only");
  const int64_t M = x.size(0), K = x.size(1), N = q.size(0);
  TORCH_CHECK(q.size(1) == K, "int8_linear: x has ", K, " columns, q ", q.size(1));
  TORCH_CHECK(group > 0 && K % group == 0, "int8_linear: group ", group, " must divide ", K);
  TORCH_CHECK(s.size(0) == N && s.size(1) == K / group, "int8_linear: s must be (N, K/group)");
  at::Tensor y = at::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = s.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t m0 = 0; m0 < M; m0 += MB)
      block(xp, K, qp, sp, group, yp, N, n0, n1, m0, std::min(MB, M - m0));
  });
  return y;
}

// The weights as bfloat16, w[n, k] = q[n, k] * s[n, k / G] rounded once (to nearest even):
// a prompt of many tokens is compute-bound, and a bfloat16 matmul (AMX where the CPU has it) on
// freshly dequantized weights beats int8_linear there by far.
at::Tensor int8_dequant_bf16(const at::Tensor& q, const at::Tensor& s, int64_t group) {
  TORCH_CHECK(q.dim() == 2 && s.dim() == 2 && q.scalar_type() == at::kChar &&
                  s.scalar_type() == at::kFloat && q.is_contiguous() && s.is_contiguous() &&
                  q.is_cpu() && s.is_cpu(),
              "int8_dequant_bf16: q int8 (N, K), s float32 (N, K/group), contiguous, CPU");
  const int64_t N = q.size(0), K = q.size(1);
  TORCH_CHECK(group > 0 && K % group == 0 && s.size(0) == N && s.size(1) == K / group,
              "int8_dequant_bf16: group ", group, " must divide ", K, " and s be (N, K/group)");
  at::Tensor w = at::empty({N, K}, q.options().dtype(at::kBFloat16));
  const int8_t* qp = q.data_ptr<int8_t>();
  const float* sp = s.data_ptr<float>();
  c10::BFloat16* wp = w.data_ptr<c10::BFloat16>();
  const int64_t ng = K / group;
  at::parallel_for(0, N * ng, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {  // group i: row i / ng
      const int8_t* src = qp + i * group;
      c10::BFloat16* dst = wp + i * group;
      const float scale = sp[i];
      int64_t k = 0;
#if defined(__AVX512BF16__)
      const __m512 vs = _mm512_set1_ps(scale);
      for (; k + 16 <= group; k += 16) {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
        const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(raw)), vs);
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + k), (__m256i)_mm512_cvtneps_pbh(v));
      }
#endif
      for (; k < group; ++k) dst[k] = c10::BFloat16(static_cast<float>(src[k]) * scale);
    }
  });
  return w;
}

// Quantize w (N, K) float32, times gain (K,) when gain is not empty, into q (N, K) int8 and
// s (N, K / G) float32 (outputs may be row slices of bigger buffers): per group, the scale is
// max|w| / 127 (at least 1e-12 / 127) and q = round_half_even(w / scale) clamped to +-127,
// as workbench/models/fast.py `quantize_rows` does. One pass over w: the learner re-quantizes
// all weights after every update, and this is that cost.
void int8_quantize_(const at::Tensor& w, const at::Tensor& gain, at::Tensor& q, at::Tensor& s,
                    int64_t group) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat && w.is_contiguous() && w.is_cpu(),
              "int8_quantize_: w must be a contiguous float32 CPU matrix");
  const int64_t N = w.size(0), K = w.size(1);
  TORCH_CHECK(group > 0 && K % group == 0, "int8_quantize_: group ", group, " must divide ", K);
  TORCH_CHECK(q.scalar_type() == at::kChar && q.is_contiguous() && q.size(0) == N &&
                  q.size(1) == K,
              "int8_quantize_: q must be contiguous int8 (N, K)");
  TORCH_CHECK(s.scalar_type() == at::kFloat && s.is_contiguous() && s.size(0) == N &&
                  s.size(1) == K / group,
              "int8_quantize_: s must be contiguous float32 (N, K/group)");
  const bool scaled = gain.numel() > 0;
  TORCH_CHECK(!scaled || (gain.numel() == K && gain.scalar_type() == at::kFloat &&
                          gain.is_contiguous()),
              "int8_quantize_: gain must be float32 (K,) or empty");
  const float* wp = w.data_ptr<float>();
  const float* gp = scaled ? gain.data_ptr<float>() : nullptr;
  int8_t* qp = q.data_ptr<int8_t>();
  float* sp = s.data_ptr<float>();
  const int64_t ng = K / group;
  at::parallel_for(0, N * ng, 256, [&](int64_t b, int64_t e) {
    std::vector<float> buf(group);
    for (int64_t i = b; i < e; ++i) {
      const int64_t col = (i % ng) * group;
      const float* src = wp + i * group;
      float amax = 0.f;
      for (int64_t k = 0; k < group; ++k) {
        const float v = scaled ? src[k] * gp[col + k] : src[k];
        buf[k] = v;
        amax = std::max(amax, std::fabs(v));
      }
      const float scale = std::max(amax, 1e-12f) / 127.f;
      sp[i] = scale;
      int8_t* dst = qp + i * group;
      for (int64_t k = 0; k < group; ++k) {
        const float r = std::nearbyint(buf[k] / scale);
        dst[k] = static_cast<int8_t>(std::min(127.f, std::max(-127.f, r)));
      }
    }
  });
}

}  // namespace

TORCH_LIBRARY(workbench_decode, m) {
  m.def("int8_quantize_(Tensor w, Tensor gain, Tensor(a!) q, Tensor(b!) s, int group) -> ()");
  m.def("int8_linear(Tensor x, Tensor q, Tensor s, int group) -> Tensor");
  m.def("int8_dequant_bf16(Tensor q, Tensor s, int group) -> Tensor");
}

TORCH_LIBRARY_IMPL(workbench_decode, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int8_dequant_bf16", &int8_dequant_bf16);
  m.impl("int8_quantize_", &int8_quantize_);
}
