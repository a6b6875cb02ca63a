// optim_math.h -- the per-element update rules of workbench.optim, written once.
//
// Included by the CPU driver (optim_cpu.cpp, compiled by the host compiler with OpenMP) and by
// the CUDA driver (optim_cuda.cu, compiled by nvcc).  It knows nothing of torch: plain floats
// in, plain floats out, so the same rule runs on both sides and the pure-torch reference path in
// workbench/optim/_functional.py can be checked against it.
//
// References
//   Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (AdamW), ICLR 2019.
//   Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
//   torch/optim/adam.py (_single_tensor_adam) and torch/optim/sgd.py: the operation order
//   below follows them so that fp32 results agree with torch.optim to a few ulps.
//   llm.c dev/cuda/adamw.cu: the shape of a fused AdamW kernel.
//
// Build: never on its own; see workbench/optim/_build.py (torch.utils.cpp_extension.load with
// -O3 -fno-math-errno -march=native -fopenmp; nvcc for the .cu when CUDA is present).
#pragma once

#if defined(__CUDACC__)
#define WB_HD __host__ __device__ __forceinline__
#define WB_SQRT(x) sqrtf(x)
#else
#include <cmath>
#define WB_HD inline __attribute__((always_inline))
// std::sqrt on a float vectorizes only with -fno-math-errno (GCC keeps the errno call path).
#define WB_SQRT(x) std::sqrt(x)
#endif

namespace wb {

// Per-call scalars of one AdamW / Adam update, already reduced on the host (in double, then
// rounded to float exactly as torch rounds its Python-float scalars).
struct AdamScalars {
  float beta1_c;     // 1 - beta1, the lerp weight of exp_avg
  float beta2;       // decay of exp_avg_sq
  float beta2_c;     // 1 - beta2
  float eps;
  float decay_mul;   // 1 - lr * weight_decay (decoupled), else 1
  float l2;          // weight_decay for classic Adam (added to the gradient), else 0
};

struct SgdScalars {
  float lr;
  float momentum;
  float dampening_c;  // 1 - dampening
  float weight_decay;
  int nesterov;
  int first;          // the momentum buffer is being created: buf = grad
};

// The gradient as the update sees it: clamped to [-clip, clip] (clip_grad_value_), then scaled
// by the global clip coefficient (clip_grad_norm_).  The comparisons are written so that a NaN
// gradient stays NaN, as torch.clamp_ leaves it.
WB_HD float effective_grad(float g, float clip_value, float scale) {
  g = g < -clip_value ? -clip_value : (g > clip_value ? clip_value : g);
  return g * scale;
}

// torch: coef = max_norm / (total_norm + 1e-6), clamped to at most 1; NaN propagates.
WB_HD float clip_coefficient(double sumsq, double max_norm) {
  if (max_norm < 0.0) return 1.0f;  // no norm clipping requested
  double c = max_norm / (sqrt(sumsq) + 1e-6);
  return (float)(c > 1.0 ? 1.0 : c);
}

// One element of Adam / AdamW.  step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t).
WB_HD void adam_update(float& p, float g, float& m, float& v, const AdamScalars& s,
                       float step_size, float bc2_sqrt) {
  p = p * s.decay_mul;
  g = g + s.l2 * p;
  // exp_avg.lerp_(grad, 1 - beta1), with torch's two-sided lerp formula
  m = s.beta1_c < 0.5f ? m + s.beta1_c * (g - m) : g - (g - m) * (1.0f - s.beta1_c);
  v = v * s.beta2 + s.beta2_c * g * g;  // exp_avg_sq.mul_(beta2).addcmul_(g, g, 1 - beta2)
  float denom = WB_SQRT(v) / bc2_sqrt + s.eps;
  p = p - step_size * (m / denom);
}

// One element of SGD with momentum, dampening, Nesterov and (L2) weight decay.
WB_HD void sgd_update(float& p, float g, float& buf, const SgdScalars& s) {
  g = g + s.weight_decay * p;
  if (s.momentum != 0.0f) {
    buf = s.first ? g : buf * s.momentum + s.dampening_c * g;
    g = s.nesterov ? g + s.momentum * buf : buf;
  }
  p = p - s.lr * g;
}

}  // namespace wb
