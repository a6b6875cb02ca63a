// optim_cuda_ops.cpp -- registers the CUDA implementations of torch.ops.workbench_optim.*.
//
// Turns tensor lists into the raw pointer arrays that the torch-free launchers in
// optim_cuda.cu take, one launcher call per param dtype, on torch's current stream.  Compiled
// only when a CUDA device and nvcc are present (-DWB_WITH_CUDA; see workbench/optim/_build.py).
#ifdef WB_WITH_CUDA
#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "optim_math.h"

extern "C" {
const char* wb_cuda_error_string(int code);
int wb_cuda_grad_sumsq(int n, const void* const* grads, const int64_t* sizes, int dtype,
                       float clip_value, double* out, void* stream);
int wb_cuda_adam_step(int n, void* const* params, const void* const* grads,
                      float* const* exp_avgs, float* const* exp_avg_sqs, const int64_t* sizes,
                      const float* step_sizes, const float* bc2_sqrts, int dtype,
                      const wb::AdamScalars* scalars, float clip_value, const double* sumsq,
                      double max_norm, void* stream);
int wb_cuda_sgd_step(int n, void* const* params, const void* const* grads, float* const* bufs,
                     const int64_t* sizes, int dtype, const wb::SgdScalars* scalars,
                     float clip_value, const double* sumsq, double max_norm, void* stream);
int wb_cuda_stream_probe(int n, void* const* params, const void* const* grads, float* const* a,
                         float* const* b, const int64_t* sizes, int dtype, void* stream);
}

// Defined in optim_cpu.cpp, shared so that both drivers check and round arguments alike.
wb::AdamScalars wb_adam_scalars(double lr, double beta1, double beta2, double eps,
                                double weight_decay, bool decoupled);
wb::SgdScalars wb_sgd_scalars(size_t n_params, size_t n_grads, size_t n_bufs, double lr,
                              double momentum, double dampening, double weight_decay,
                              bool nesterov, bool first);
void wb_bias_corrections(at::TensorList steps, double lr, double beta1, double beta2,
                         std::vector<float>& step_size, std::vector<float>& bc2_sqrt);

namespace {

int dtype_code(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return 0;
    case at::kBFloat16: return 1;
    case at::kHalf: return 2;
    default: TORCH_CHECK(false, "unsupported dtype ", st, " (float32, bfloat16, float16 only)");
  }
}

void check(int err) { TORCH_CHECK(err == 0, "workbench_optim CUDA: ", wb_cuda_error_string(err)); }

void check_same_device(at::TensorList ts, const at::Device& dev, const char* op) {
  for (const auto& t : ts) {
    TORCH_CHECK(t.device() == dev && t.is_contiguous(), op,
                ": all tensors must be contiguous and on ", dev);
  }
}

void check_pair(const at::Tensor& p, const at::Tensor& g, const char* op) {
  TORCH_CHECK(p.scalar_type() == g.scalar_type() && p.numel() == g.numel(), op,
              ": grad dtype/size differs from its param");
}

void check_state(const at::Tensor& p, const at::Tensor& s, const char* op) {
  TORCH_CHECK(s.scalar_type() == at::kFloat && s.numel() == p.numel(), op,
              ": optimizer state must be float32 of the param's size");
}

// Indices of the tensors of each dtype code, so each launcher call sees one dtype.
std::vector<std::vector<size_t>> by_dtype(at::TensorList ts) {
  std::vector<std::vector<size_t>> out(3);
  for (size_t i = 0; i < ts.size(); ++i) out[dtype_code(ts[i].scalar_type())].push_back(i);
  return out;
}

const double* sumsq_ptr(const std::optional<at::Tensor>& sumsq, const at::Device& dev) {
  if (!sumsq.has_value()) return nullptr;
  TORCH_CHECK(sumsq->scalar_type() == at::kDouble && sumsq->device() == dev,
              "grad_sumsq must be a float64 tensor on ", dev);
  return sumsq->const_data_ptr<double>();
}

at::Tensor grad_sumsq_cuda(at::TensorList grads, double clip_value) {
  const at::Device dev = grads[0].device();
  check_same_device(grads, dev, "grad_sumsq");
  c10::cuda::CUDAGuard guard(dev);
  auto out = at::zeros({}, at::TensorOptions().dtype(at::kDouble).device(dev));
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto groups = by_dtype(grads);
  for (int code = 0; code < 3; ++code) {
    std::vector<const void*> g;
    std::vector<int64_t> sizes;
    for (size_t i : groups[code]) {
      g.push_back(grads[i].const_data_ptr());
      sizes.push_back(grads[i].numel());
    }
    if (g.empty()) continue;
    check(wb_cuda_grad_sumsq(static_cast<int>(g.size()), g.data(), sizes.data(), code,
                             static_cast<float>(clip_value), out.data_ptr<double>(), stream));
  }
  return out;
}

void adam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList steps, double lr,
                    double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                    double clip_value, const std::optional<at::Tensor>& sumsq,
                    double max_norm) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n,
              "adam_step: list lengths differ");
  const at::Device dev = params[0].device();
  for (auto list : {params, grads, exp_avgs, exp_avg_sqs}) check_same_device(list, dev, "adam_step");
  for (size_t i = 0; i < n; ++i) {
    check_pair(params[i], grads[i], "adam_step");
    check_state(params[i], exp_avgs[i], "adam_step");
    check_state(params[i], exp_avg_sqs[i], "adam_step");
  }
  c10::cuda::CUDAGuard guard(dev);
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  const wb::AdamScalars s = wb_adam_scalars(lr, beta1, beta2, eps, weight_decay, decoupled);
  std::vector<float> step_size, bc2_sqrt;
  wb_bias_corrections(steps, lr, beta1, beta2, step_size, bc2_sqrt);
  const double* ss = sumsq_ptr(sumsq, dev);
  const auto groups = by_dtype(params);
  for (int code = 0; code < 3; ++code) {
    std::vector<void*> p;
    std::vector<const void*> g;
    std::vector<float*> m, v;
    std::vector<int64_t> sizes;
    std::vector<float> ssz, bc2;
    for (size_t i : groups[code]) {
      p.push_back(params[i].data_ptr());
      g.push_back(grads[i].const_data_ptr());
      m.push_back(exp_avgs[i].data_ptr<float>());
      v.push_back(exp_avg_sqs[i].data_ptr<float>());
      sizes.push_back(params[i].numel());
      ssz.push_back(step_size[i]);
      bc2.push_back(bc2_sqrt[i]);
    }
    if (p.empty()) continue;
    check(wb_cuda_adam_step(static_cast<int>(p.size()), p.data(), g.data(), m.data(), v.data(),
                            sizes.data(), ssz.data(), bc2.data(), code, &s,
                            static_cast<float>(clip_value), ss, max_norm, stream));
  }
}

void sgd_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr,
                   double momentum, double dampening, double weight_decay, bool nesterov,
                   bool first, double clip_value, const std::optional<at::Tensor>& sumsq,
                   double max_norm) {
  const wb::SgdScalars s = wb_sgd_scalars(params.size(), grads.size(), bufs.size(), lr,
                                          momentum, dampening, weight_decay, nesterov, first);
  const bool with_buf = momentum != 0.0;
  const at::Device dev = params[0].device();
  for (auto list : {params, grads, bufs}) check_same_device(list, dev, "sgd_step");
  for (size_t i = 0; i < params.size(); ++i) {
    check_pair(params[i], grads[i], "sgd_step");
    if (with_buf) check_state(params[i], bufs[i], "sgd_step");
  }
  c10::cuda::CUDAGuard guard(dev);
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  const double* ss = sumsq_ptr(sumsq, dev);
  const auto groups = by_dtype(params);
  for (int code = 0; code < 3; ++code) {
    std::vector<void*> p;
    std::vector<const void*> g;
    std::vector<float*> b;
    std::vector<int64_t> sizes;
    for (size_t i : groups[code]) {
      p.push_back(params[i].data_ptr());
      g.push_back(grads[i].const_data_ptr());
      if (with_buf) b.push_back(bufs[i].data_ptr<float>());
      sizes.push_back(params[i].numel());
    }
    if (p.empty()) continue;
    check(wb_cuda_sgd_step(static_cast<int>(p.size()), p.data(), g.data(),
                           with_buf ? b.data() : nullptr, sizes.data(), code, &s,
                           static_cast<float>(clip_value), ss, max_norm, stream));
  }
}

void stream_probe_cuda(at::TensorList params, at::TensorList grads, at::TensorList a,
                       at::TensorList b) {
  const at::Device dev = params[0].device();
  for (auto list : {params, grads, a, b}) check_same_device(list, dev, "stream_probe");
  c10::cuda::CUDAGuard guard(dev);
  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  const auto groups = by_dtype(params);
  for (int code = 0; code < 3; ++code) {
    std::vector<void*> p;
    std::vector<const void*> g;
    std::vector<float*> x, y;
    std::vector<int64_t> sizes;
    for (size_t i : groups[code]) {
      check_pair(params[i], grads[i], "stream_probe");
      check_state(params[i], a[i], "stream_probe");
      check_state(params[i], b[i], "stream_probe");
      p.push_back(params[i].data_ptr());
      g.push_back(grads[i].const_data_ptr());
      x.push_back(a[i].data_ptr<float>());
      y.push_back(b[i].data_ptr<float>());
      sizes.push_back(params[i].numel());
    }
    if (p.empty()) continue;
    check(wb_cuda_stream_probe(static_cast<int>(p.size()), p.data(), g.data(), x.data(),
                               y.data(), sizes.data(), code, stream));
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(workbench_optim, CUDA, m) {
  m.impl("grad_sumsq", &grad_sumsq_cuda);
  m.impl("adam_step", &adam_step_cuda);
  m.impl("sgd_step", &sgd_step_cuda);
  m.impl("stream_probe", &stream_probe_cuda);
}
#endif  // WB_WITH_CUDA
