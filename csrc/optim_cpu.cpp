// optim_cpu.cpp -- CPU driver and torch registration of the fused optimizer ops.
//
// The update rules live in optim_math.h, the per-span loops in optim_cpu_loops.h; this file cuts
// tensors into chunks, runs the loops over them and registers the ops.  All tensors of a call
// are cut into chunks of equal length and the chunks are shared among OpenMP threads, so a
// list of ~150 tensors of mixed sizes balances across cores as well as one flat tensor does.
// Every op is a single pass: the clip coefficient is applied as a scale inside the update, so
// clipped gradients are never written back.
//
// A call smaller than two chunks stays on the calling thread: waking a team costs more than
// the work, and on a loaded machine a descheduled team member stalls the whole step.
//
// Ops (torch.ops.workbench_optim.*), dispatched on the device of their tensors:
//   grad_sumsq(grads, clip_value) -> float64 0-d tensor: sum of squares of the clamped grads
//   adam_step(...), sgd_step(...): in-place updates of params and their fp32 state
//   adam_multi(...): every group's AdamW update and the global clipping norm in one region
//     (CPU only; the CUDA driver keeps the per-group ops), in place or into output tensors
//   stream_probe(...), read_probe(grads): bandwidth probes for bench/optim.py (read_probe: CPU)
//
// Build: workbench/optim/_build.py, torch.utils.cpp_extension.load(...,
//   extra_cflags=["-O3", "-fno-math-errno", "-ffp-contract=off", "-march=native",
//   "-mprefer-vector-width=512", "-fopenmp"]);
//   no FMA contraction, so results round like torch's separate ops (free: memory-bound).  Only
//   <torch/library.h> and ATen headers are included (no pybind11), which keeps the build short.
// References: torch/optim/adam.py, torch/optim/sgd.py, torch/nn/utils/clip_grad.py.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/scalar_tensor.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "optim_cpu_loops.h"  // the per-span loops (and optim_math.h, the update rules)

namespace {

// ~1 MB of traffic per chunk for AdamW: small enough to balance, large enough that the
// per-chunk bookkeeping is noise.
constexpr int64_t kChunk = 1 << 15;

struct Chunk {
  int32_t tensor;
  int64_t begin;
  int64_t end;
};

std::vector<Chunk> make_chunks(at::TensorList ts) {
  std::vector<Chunk> out;
  for (size_t t = 0; t < ts.size(); ++t) {
    const int64_t n = ts[t].numel();
    for (int64_t b = 0; b < n; b += kChunk) {
      out.push_back({static_cast<int32_t>(t), b, std::min(n, b + kChunk)});
    }
  }
  return out;
}

void check_param(const at::Tensor& p, const at::Tensor& g, const char* op) {
  TORCH_CHECK(p.is_contiguous() && g.is_contiguous(), op, ": tensors must be contiguous");
  TORCH_CHECK(p.scalar_type() == g.scalar_type(), op, ": grad dtype ", g.scalar_type(),
              " differs from param dtype ", p.scalar_type());
  TORCH_CHECK(p.numel() == g.numel(), op, ": grad and param sizes differ");
  const auto st = p.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op,
              ": unsupported dtype ", st, " (float32, bfloat16, float16 only)");
}

void check_state(const at::Tensor& p, const at::Tensor& s, const char* op) {
  TORCH_CHECK(s.is_contiguous() && s.scalar_type() == at::kFloat && s.numel() == p.numel(), op,
              ": optimizer state must be contiguous float32 of the param's size");
}

template <typename Fn>
void dispatch_dtype(at::ScalarType st, Fn&& fn) {
  switch (st) {
    case at::kFloat: fn(float{}); break;
    case at::kBFloat16: fn(uint16_t{}); break;
    case at::kHalf: fn(_Float16{}); break;
    default: TORCH_CHECK(false, "unsupported dtype ", st);
  }
}

// The one parallel loop of this file: fn(c, chunk, tag) for every chunk c of `chunks` (cut from
// `ts`), shared among OpenMP threads, with `tag` a value of the element type of the chunk's
// tensor (float, uint16_t for bfloat16 bits, _Float16).  Callers check dtypes and sizes first:
// nothing may throw inside the parallel region.
template <typename Fn>
void for_each_chunk(at::TensorList ts, const std::vector<Chunk>& chunks, Fn&& fn) {
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for schedule(static) num_threads(at::get_num_threads()) if (nc > 1)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk ch = chunks[c];
    dispatch_dtype(ts[ch.tensor].scalar_type(), [&](auto tag) { fn(c, ch, tag); });
  }
}

template <typename Fn>
void for_each_chunk(at::TensorList ts, Fn&& fn) {
  for_each_chunk(ts, make_chunks(ts), std::forward<Fn>(fn));
}

// Typed pointer to the first element of `ch` in `t` (whose dtype the caller has checked).
template <typename T>
T* at_chunk(const at::Tensor& t, const Chunk& ch) {
  return static_cast<T*>(t.data_ptr()) + ch.begin;
}
template <typename T>
const T* at_chunk_const(const at::Tensor& t, const Chunk& ch) {
  return static_cast<const T*>(t.const_data_ptr()) + ch.begin;
}

at::Tensor grad_sumsq_cpu(at::TensorList grads, double clip_value) {
  const auto chunks = make_chunks(grads);
  std::vector<double> partial(chunks.size(), 0.0);
  const float clip = static_cast<float>(clip_value);
  for_each_chunk(grads, chunks, [&](int64_t c, const Chunk& ch, auto tag) {
    using T = decltype(tag);
    partial[c] = sumsq_span(at_chunk_const<T>(grads[ch.tensor], ch), ch.end - ch.begin, clip);
  });
  // Summed in chunk order, so the result does not depend on the thread count.
  double total = 0.0;
  for (double x : partial) total += x;
  return at::scalar_tensor(total, at::TensorOptions().dtype(at::kDouble));
}

float scale_from(const std::optional<at::Tensor>& sumsq, double max_norm) {
  if (!sumsq.has_value()) return 1.0f;
  return wb::clip_coefficient(sumsq->item<double>(), max_norm);
}

}  // namespace

// Shared with the CUDA binding: per-call scalars and per-tensor bias corrections, reduced in
// double and rounded to float exactly as torch rounds its Python-float scalars.
wb::AdamScalars wb_adam_scalars(double lr, double beta1, double beta2, double eps,
                                double weight_decay, bool decoupled) {
  wb::AdamScalars s;
  s.beta1_c = static_cast<float>(1.0 - beta1);
  s.beta2 = static_cast<float>(beta2);
  s.beta2_c = static_cast<float>(1.0 - beta2);
  s.eps = static_cast<float>(eps);
  s.decay_mul = decoupled ? static_cast<float>(1.0 - lr * weight_decay) : 1.0f;
  s.l2 = decoupled ? 0.0f : static_cast<float>(weight_decay);
  return s;
}

// Shared with the CUDA binding: the list-length check of sgd_step and its per-call scalars.
wb::SgdScalars wb_sgd_scalars(size_t n_params, size_t n_grads, size_t n_bufs, double lr,
                              double momentum, double dampening, double weight_decay,
                              bool nesterov, bool first) {
  TORCH_CHECK(n_grads == n_params && (momentum == 0.0 || n_bufs == n_params),
              "sgd_step: list lengths differ");
  wb::SgdScalars s;
  s.lr = static_cast<float>(lr);
  s.momentum = static_cast<float>(momentum);
  s.dampening_c = static_cast<float>(1.0 - dampening);
  s.weight_decay = static_cast<float>(weight_decay);
  s.nesterov = nesterov ? 1 : 0;
  s.first = first ? 1 : 0;
  return s;
}

// Increments each param's `step` (a float32 CPU scalar, as torch keeps it) and derives the bias
// corrections from it; done here because 150 tiny torch ops from Python cost more than the step.
void wb_bias_corrections(at::TensorList steps, double lr, double beta1, double beta2,
                         std::vector<float>& step_size, std::vector<float>& bc2_sqrt) {
  step_size.resize(steps.size());
  bc2_sqrt.resize(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    TORCH_CHECK(steps[i].device().is_cpu() && steps[i].scalar_type() == at::kFloat &&
                    steps[i].numel() == 1,
                "adam_step: each step must be a float32 CPU scalar tensor");
    float* st = steps[i].data_ptr<float>();
    *st += 1.0f;
    const double t = *st;
    step_size[i] = static_cast<float>(lr / (1.0 - std::pow(beta1, t)));
    bc2_sqrt[i] = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
  }
}

namespace {

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                   at::TensorList exp_avg_sqs, at::TensorList steps, double lr,
                   double beta1, double beta2, double eps, double weight_decay, bool decoupled,
                   double clip_value, const std::optional<at::Tensor>& sumsq, double max_norm) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n,
              "adam_step: list lengths differ");
  for (size_t i = 0; i < n; ++i) {
    check_param(params[i], grads[i], "adam_step");
    check_state(params[i], exp_avgs[i], "adam_step");
    check_state(params[i], exp_avg_sqs[i], "adam_step");
  }
  const wb::AdamScalars s = wb_adam_scalars(lr, beta1, beta2, eps, weight_decay, decoupled);
  std::vector<float> step_size, bc2_sqrt;
  wb_bias_corrections(steps, lr, beta1, beta2, step_size, bc2_sqrt);
  const float scale = scale_from(sumsq, max_norm);
  const float clip = static_cast<float>(clip_value);
  for_each_chunk(params, [&](int64_t, const Chunk& ch, auto tag) {
    using T = decltype(tag);
    const int t = ch.tensor;
    adam_span(at_chunk<T>(params[t], ch), at_chunk_const<T>(grads[t], ch),
              at_chunk<float>(exp_avgs[t], ch), at_chunk<float>(exp_avg_sqs[t], ch),
              ch.end - ch.begin, s, step_size[t], bc2_sqrt[t], clip, scale);
  });
}

// adam_multi: AdamW / Adam over every tensor of a step (all param groups) in one parallel
// region, with the global norm for clipping computed in the same region: the threads sum the
// squares of their chunks, one of them reduces the partial sums in chunk order and derives the
// clip coefficient, and after the barrier every thread updates the same chunks it has just
// read.  Python makes one call per step instead of a norm call and one call per group.
//
// `hyper` holds six numbers per group (lr, beta1, beta2, eps, weight_decay, decoupled) and
// `group_ends[k]` is one past the last tensor of group k.  Returns the float64 sum of squares
// (0 when max_norm < 0), or an empty tensor, having changed nothing, when some tensor is not
// one the kernels take (dtype, layout, sparse grad, other device): the caller then takes the
// per-group path, which routes such tensors to the reference implementation.
//
// With the three output lists non-empty the update is out of place: the new params and
// moments go to the outputs and the inputs keep the values from before the step (the undo
// point of the learner swaps the two sets instead of copying one; the steps still advance).
bool multi_ok(const at::Tensor& p, const at::Tensor& g, const at::Tensor& m, const at::Tensor& v,
              const at::Tensor& st) {
  const auto dt = p.scalar_type();
  if (!(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf)) return false;
  if (!p.device().is_cpu() || !p.is_contiguous() || p.layout() != at::kStrided) return false;
  if (!g.defined() || g.layout() != at::kStrided || !g.device().is_cpu() || !g.is_contiguous() ||
      g.scalar_type() != dt || !g.sizes().equals(p.sizes()))
    return false;
  for (const at::Tensor* s : {&m, &v}) {
    if (!s->device().is_cpu() || !s->is_contiguous() || s->scalar_type() != at::kFloat ||
        s->numel() != p.numel())
      return false;
  }
  return st.device().is_cpu() && st.scalar_type() == at::kFloat && st.numel() == 1;
}

// The out-of-place form's outputs: same dtype and size as their input, contiguous, on the
// CPU, and sharing no memory with any input or other output.
bool out_ok(const at::Tensor& in, const at::Tensor& out) {
  if (!out.device().is_cpu() || !out.is_contiguous() || out.layout() != at::kStrided ||
      out.scalar_type() != in.scalar_type() || out.numel() != in.numel())
    return false;
  return out.numel() == 0 || !out.storage().is_alias_of(in.storage());
}

at::Tensor adam_multi_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                          at::TensorList exp_avg_sqs, at::TensorList steps,
                          at::IntArrayRef group_ends, at::ArrayRef<double> hyper,
                          double clip_value, double max_norm, at::TensorList out_params,
                          at::TensorList out_exp_avgs, at::TensorList out_exp_avg_sqs) {
  const size_t n = params.size();
  const bool into = !out_params.empty();
  TORCH_CHECK(!into || (out_params.size() == n && out_exp_avgs.size() == n &&
                        out_exp_avg_sqs.size() == n),
              "adam_multi: the output lists must be empty or as long as the inputs");
  TORCH_CHECK(grads.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n &&
                  steps.size() == n,
              "adam_multi: list lengths differ");
  TORCH_CHECK(hyper.size() == 6 * group_ends.size(),
              "adam_multi: hyper must hold 6 numbers per group");
  TORCH_CHECK(group_ends.empty() ? n == 0 : group_ends.back() == static_cast<int64_t>(n),
              "adam_multi: group_ends must end at the number of tensors");
  for (size_t i = 0; i < n; ++i) {
    if (!multi_ok(params[i], grads[i], exp_avgs[i], exp_avg_sqs[i], steps[i]) ||
        (into && !(out_ok(params[i], out_params[i]) && out_ok(exp_avgs[i], out_exp_avgs[i]) &&
                   out_ok(exp_avg_sqs[i], out_exp_avg_sqs[i])))) {
      return at::empty({0}, at::TensorOptions().dtype(at::kDouble));
    }
  }
  // Per-tensor scalars: the group's constants and the bias corrections of the tensor's step.
  std::vector<wb::AdamScalars> scalars(n);
  std::vector<float> step_size(n), bc2_sqrt(n);
  size_t t = 0;
  for (size_t k = 0; k < group_ends.size(); ++k) {
    const double* h = hyper.data() + 6 * k;
    const wb::AdamScalars s = wb_adam_scalars(h[0], h[1], h[2], h[3], h[4], h[5] != 0.0);
    for (; t < static_cast<size_t>(group_ends[k]); ++t) {
      float* st = steps[t].data_ptr<float>();
      *st += 1.0f;
      const double step = *st;
      scalars[t] = s;
      step_size[t] = static_cast<float>(h[0] / (1.0 - std::pow(h[1], step)));
      bc2_sqrt[t] = static_cast<float>(std::sqrt(1.0 - std::pow(h[2], step)));
    }
  }
  const auto chunks = make_chunks(params);
  const int64_t nc = static_cast<int64_t>(chunks.size());
  const bool norm = max_norm >= 0.0;
  const float clip = static_cast<float>(clip_value);
  std::vector<double> partial(norm ? nc : 0, 0.0);
  double total = 0.0;
  float scale = 1.0f;
#pragma omp parallel num_threads(at::get_num_threads()) if (nc > 1)
  {
    if (norm) {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < nc; ++c) {
        const Chunk ch = chunks[c];
        dispatch_dtype(grads[ch.tensor].scalar_type(), [&](auto tag) {
          using T = decltype(tag);
          partial[c] = sumsq_span(at_chunk_const<T>(grads[ch.tensor], ch), ch.end - ch.begin,
                                  clip);
        });
      }
#pragma omp single
      {
        for (double x : partial) total += x;  // chunk order: independent of the thread count
        scale = wb::clip_coefficient(total, max_norm);
      }
    }
#pragma omp for schedule(static)
    for (int64_t c = 0; c < nc; ++c) {
      const Chunk ch = chunks[c];
      const int i = ch.tensor;
      dispatch_dtype(params[i].scalar_type(), [&](auto tag) {
        using T = decltype(tag);
        if (into) {
          adam_span_into(at_chunk_const<T>(params[i], ch), at_chunk_const<T>(grads[i], ch),
                         at_chunk_const<float>(exp_avgs[i], ch),
                         at_chunk_const<float>(exp_avg_sqs[i], ch), at_chunk<T>(out_params[i], ch),
                         at_chunk<float>(out_exp_avgs[i], ch),
                         at_chunk<float>(out_exp_avg_sqs[i], ch), ch.end - ch.begin, scalars[i],
                         step_size[i], bc2_sqrt[i], clip, scale);
        } else {
          adam_span(at_chunk<T>(params[i], ch), at_chunk_const<T>(grads[i], ch),
                    at_chunk<float>(exp_avgs[i], ch), at_chunk<float>(exp_avg_sqs[i], ch),
                    ch.end - ch.begin, scalars[i], step_size[i], bc2_sqrt[i], clip, scale);
        }
      });
    }
#if defined(__AVX512F__)
    if (into) _mm_sfence();  // each thread's streaming stores, visible before the region ends
#endif
  }
  return at::scalar_tensor(total, at::TensorOptions().dtype(at::kDouble));
}

void sgd_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList bufs, double lr,
                  double momentum, double dampening, double weight_decay, bool nesterov,
                  bool first, double clip_value, const std::optional<at::Tensor>& sumsq,
                  double max_norm) {
  const wb::SgdScalars s = wb_sgd_scalars(params.size(), grads.size(), bufs.size(), lr,
                                          momentum, dampening, weight_decay, nesterov, first);
  const bool with_buf = momentum != 0.0;
  for (size_t i = 0; i < params.size(); ++i) {
    check_param(params[i], grads[i], "sgd_step");
    if (with_buf) check_state(params[i], bufs[i], "sgd_step");
  }
  const float scale = scale_from(sumsq, max_norm);
  const float clip = static_cast<float>(clip_value);
  for_each_chunk(params, [&](int64_t, const Chunk& ch, auto tag) {
    using T = decltype(tag);
    const int t = ch.tensor;
    sgd_span(at_chunk<T>(params[t], ch), at_chunk_const<T>(grads[t], ch),
             with_buf ? at_chunk<float>(bufs[t], ch) : nullptr, ch.end - ch.begin, s, clip,
             scale);
  });
}

// Bandwidth probe for bench/optim.py: AdamW's access pattern (read p, g, m, v; write p, m, v)
// through the same chunking and threads, with arithmetic too cheap to matter.
double read_probe_cpu(at::TensorList grads) {
  for (const auto& g : grads) {
    TORCH_CHECK(g.is_contiguous(), "read_probe: tensors must be contiguous");
    const auto st = g.scalar_type();
    TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf,
                "read_probe: unsupported dtype ", st);
  }
  const auto chunks = make_chunks(grads);
  std::vector<double> partial(chunks.size(), 0.0);
  for_each_chunk(grads, chunks, [&](int64_t c, const Chunk& ch, auto tag) {
    using T = decltype(tag);
    partial[c] = read_span(at_chunk_const<T>(grads[ch.tensor], ch), ch.end - ch.begin);
  });
  double total = 0.0;
  for (double x : partial) total += x;
  return total;
}

void stream_probe_cpu(at::TensorList params, at::TensorList grads, at::TensorList a,
                      at::TensorList b) {
  for (size_t i = 0; i < params.size(); ++i) {
    check_param(params[i], grads[i], "stream_probe");
    check_state(params[i], a[i], "stream_probe");
    check_state(params[i], b[i], "stream_probe");
  }
  for_each_chunk(params, [&](int64_t, const Chunk& ch, auto tag) {
    using T = decltype(tag);
    const int t = ch.tensor;
    probe_span(at_chunk<T>(params[t], ch), at_chunk_const<T>(grads[t], ch),
               at_chunk<float>(a[t], ch), at_chunk<float>(b[t], ch), ch.end - ch.begin);
  });
}

}  // namespace

TORCH_LIBRARY(workbench_optim, m) {
  m.def("grad_sumsq(Tensor[] grads, float clip_value) -> Tensor");
  m.def(
      "adam_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] steps, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, bool decoupled, float clip_value, Tensor? grad_sumsq, "
      "float max_norm) -> ()");
  m.def(
      "sgd_step(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, float lr, "
      "float momentum, float dampening, float weight_decay, bool nesterov, bool first, "
      "float clip_value, Tensor? grad_sumsq, float max_norm) -> ()");
  m.def(
      "adam_multi(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] steps, int[] group_ends, float[] hyper, "
      "float clip_value, float max_norm, Tensor(e!)[] out_params, Tensor(f!)[] out_exp_avgs, "
      "Tensor(g!)[] out_exp_avg_sqs) -> Tensor");
  m.def(
      "stream_probe(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] a, Tensor(c!)[] b) -> ()");
  m.def("read_probe(Tensor[] grads) -> float");
}

TORCH_LIBRARY_IMPL(workbench_optim, CPU, m) {
  m.impl("grad_sumsq", &grad_sumsq_cpu);
  m.impl("adam_step", &adam_step_cpu);
  m.impl("sgd_step", &sgd_step_cpu);
  m.impl("adam_multi", &adam_multi_cpu);
  m.impl("stream_probe", &stream_probe_cpu);
  m.impl("read_probe", &read_probe_cpu);
}
