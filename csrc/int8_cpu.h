// Int8 weights for CPU decoding (one scale and one offset per group of G columns): the
// matrix type the decode step reads, and the ops that make and use it. Defined in int8_cpu.cpp;
// csrc/decode_cpu.cpp uses them and registers every op under torch.ops.workbench_decode.

#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace workbench_decode {

// One quantized matrix (N, K) with G columns per group; bias may be null.
struct Lin {
  const int8_t* q;
  const float* s;
  const float* m;
  const float* bias;
  int64_t N, K, G;
};

// Checks q, s, m (and bias, which may be empty) against K columns and views them as a Lin.
Lin as_lin(const at::Tensor& q, const at::Tensor& s, const at::Tensor& m, const at::Tensor& bias,
           int64_t K);

// y (M, N) = x (M, K) @ w^T (+ bias), on at::parallel_for's threads.
void linear(const float* x, int64_t M, const Lin& w, float* y);

// The ops (schemas in decode_cpu.cpp).
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& q, const at::Tensor& s,
                       const at::Tensor& m, const at::Tensor& bias);
at::Tensor int8_dequant_bf16(const at::Tensor& q, const at::Tensor& s, const at::Tensor& m);
int64_t int8_quantize_(const at::Tensor& w, at::Tensor& q, at::Tensor& s, at::Tensor& m,
                       int64_t group);
int64_t fingerprint(const at::Tensor& t);
int64_t parallel_width();

}  // namespace workbench_decode
