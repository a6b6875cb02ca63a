// optim_cuda.cu -- multi-tensor CUDA driver of the fused optimizer updates in optim_math.h.
//
// Free of torch headers on purpose: plain extern "C" launchers take arrays of raw pointers and
// sizes (optim_cuda_ops.cpp turns torch tensors into them), so `nvcc -c` can compile-check this
// file on a machine without a GPU or a CUDA build of torch
// (tests/optim/test_api.py::test_cuda_driver_compiles_with_nvcc).  On a GPU, the `gpu`-marked
// tests in tests/optim/test_parity.py compare it with the CPU driver and torch.optim.AdamW.
//
// Layout: the tensors of one launch (at most kMaxTensors, passed by value in the kernel
// parameters, like torch's multi_tensor_apply) are cut into chunks of kChunk elements; blocks
// walk the chunks grid-stride and find a chunk's tensor by binary search over the prefix of
// chunk counts.  Each thread moves 4 elements per iteration with one 16-byte load/store per
// fp32 array (8 bytes for bf16/fp16 params and grads) when the tensor base is aligned.
//
// References: llm.c dev/cuda/adamw.cu; apex/PyTorch multi_tensor_apply.cuh;
//   torch/optim/adam.py and sgd.py for the operation order (see optim_math.h).
// Build: compiled by nvcc through torch.utils.cpp_extension.load (workbench/optim/_build.py);
//   check alone with `nvcc -std=c++17 -O3 -c csrc/optim_cuda.cu -o /tmp/optim_cuda.o`.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "optim_math.h"

namespace {

constexpr int kMaxTensors = 48;
constexpr int64_t kChunk = 4096;
constexpr int kThreads = 256;

template <typename T>
struct alignas(4 * sizeof(T)) Vec4 {
  T v[4];
};

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x);
template <>
__device__ __forceinline__ float from_f<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

struct Batch {
  void* p[kMaxTensors];
  const void* g[kMaxTensors];
  float* s0[kMaxTensors];  // exp_avg or momentum buffer (nullptr when unused)
  float* s1[kMaxTensors];  // exp_avg_sq
  int64_t size[kMaxTensors];
  int64_t chunk_start[kMaxTensors + 1];  // prefix sums of chunks per tensor
  float step_size[kMaxTensors];
  float bc2_sqrt[kMaxTensors];
  int n;
};

__device__ __forceinline__ int find_tensor(const Batch& b, int64_t chunk) {
  int lo = 0, hi = b.n - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (b.chunk_start[mid] <= chunk) lo = mid; else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ bool aligned16(const void* a, const void* b, const void* c,
                                          const void* d) {
  return ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b) |
           reinterpret_cast<uintptr_t>(c) | reinterpret_cast<uintptr_t>(d)) & 15) == 0;
}

// Op::apply(p, g, s0, s1, tensor) updates one element held in registers.
struct AdamOp {
  wb::AdamScalars s;
  __device__ __forceinline__ void apply(const Batch& b, int t, float& p, float g, float& m,
                                        float& v) const {
    wb::adam_update(p, g, m, v, s, b.step_size[t], b.bc2_sqrt[t]);
  }
};

struct SgdOp {
  wb::SgdScalars s;
  __device__ __forceinline__ void apply(const Batch&, int, float& p, float g, float& buf,
                                        float&) const {
    wb::sgd_update(p, g, buf, s);
  }
};

// Bandwidth probe (bench/optim.py): AdamW's access pattern with trivial arithmetic.
struct ProbeOp {
  __device__ __forceinline__ void apply(const Batch&, int, float& p, float g, float& m,
                                        float& v) const {
    p += g;
    m += g;
    v += g;
  }
};

template <typename T, typename Op, bool kS0, bool kS1>
__global__ void __launch_bounds__(kThreads) update_kernel(Batch b, Op op, float clip,
                                                          const double* sumsq,
                                                          double max_norm) {
  const float scale = sumsq ? wb::clip_coefficient(*sumsq, max_norm) : 1.0f;
  const int64_t total = b.chunk_start[b.n];
  float dummy = 0.0f;
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    const int t = find_tensor(b, c);
    const int64_t begin = (c - b.chunk_start[t]) * kChunk;
    const int64_t end = begin + kChunk < b.size[t] ? begin + kChunk : b.size[t];
    T* p = static_cast<T*>(b.p[t]);
    const T* g = static_cast<const T*>(b.g[t]);
    float* s0 = b.s0[t];
    float* s1 = b.s1[t];
    int64_t scalar_from = begin;
    if (aligned16(kS0 ? s0 : nullptr, kS1 ? s1 : nullptr, nullptr, nullptr) &&
        ((reinterpret_cast<uintptr_t>(p) | reinterpret_cast<uintptr_t>(g)) %
         sizeof(Vec4<T>)) == 0) {
      const int64_t vec_end = begin + ((end - begin) & ~int64_t{3});
      for (int64_t i = begin + 4 * threadIdx.x; i < vec_end; i += 4 * blockDim.x) {
        Vec4<T> pv = *reinterpret_cast<const Vec4<T>*>(p + i);
        const Vec4<T> gv = *reinterpret_cast<const Vec4<T>*>(g + i);
        float4 m4 = kS0 ? *reinterpret_cast<const float4*>(s0 + i) : float4{};
        float4 v4 = kS1 ? *reinterpret_cast<const float4*>(s1 + i) : float4{};
        float* mm = reinterpret_cast<float*>(&m4);
        float* vv = reinterpret_cast<float*>(&v4);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          float pf = to_f(pv.v[k]);
          op.apply(b, t, pf, wb::effective_grad(to_f(gv.v[k]), clip, scale), mm[k], vv[k]);
          pv.v[k] = from_f<T>(pf);
        }
        *reinterpret_cast<Vec4<T>*>(p + i) = pv;
        if (kS0) *reinterpret_cast<float4*>(s0 + i) = m4;
        if (kS1) *reinterpret_cast<float4*>(s1 + i) = v4;
      }
      scalar_from = vec_end;
    }
    for (int64_t i = scalar_from + threadIdx.x; i < end; i += blockDim.x) {
      float pf = to_f(p[i]);
      float m = kS0 ? s0[i] : 0.0f;
      float v = kS1 ? s1[i] : 0.0f;
      op.apply(b, t, pf, wb::effective_grad(to_f(g[i]), clip, scale), kS0 ? m : dummy, v);
      p[i] = from_f<T>(pf);
      if (kS0) s0[i] = m;
      if (kS1) s1[i] = v;
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sumsq_kernel(Batch b, float clip, double* out) {
  __shared__ double warp_sums[kThreads / 32];
  double acc = 0.0;
  const int64_t total = b.chunk_start[b.n];
  for (int64_t c = blockIdx.x; c < total; c += gridDim.x) {
    const int t = find_tensor(b, c);
    const int64_t begin = (c - b.chunk_start[t]) * kChunk;
    const int64_t end = begin + kChunk < b.size[t] ? begin + kChunk : b.size[t];
    const T* g = static_cast<const T*>(b.g[t]);
    int64_t scalar_from = begin;
    if ((reinterpret_cast<uintptr_t>(g) % sizeof(Vec4<T>)) == 0) {
      const int64_t vec_end = begin + ((end - begin) & ~int64_t{3});
      for (int64_t i = begin + 4 * threadIdx.x; i < vec_end; i += 4 * blockDim.x) {
        const Vec4<T> gv = *reinterpret_cast<const Vec4<T>*>(g + i);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const double x = wb::effective_grad(to_f(gv.v[k]), clip, 1.0f);
          acc += x * x;
        }
      }
      scalar_from = vec_end;
    }
    for (int64_t i = scalar_from + threadIdx.x; i < end; i += blockDim.x) {
      const double x = wb::effective_grad(to_f(g[i]), clip, 1.0f);
      acc += x * x;
    }
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_down_sync(0xffffffffu, acc, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double s = 0.0;
    for (int w = 0; w < kThreads / 32; ++w) s += warp_sums[w];
    atomicAdd(out, s);
  }
}

int grid_for(int64_t chunks) {
  static int sms[64] = {0};
  int dev = 0;
  cudaGetDevice(&dev);
  if (dev < 64 && sms[dev] == 0) {
    cudaDeviceGetAttribute(&sms[dev], cudaDevAttrMultiProcessorCount, dev);
  }
  const int64_t cap = static_cast<int64_t>(dev < 64 && sms[dev] > 0 ? sms[dev] : 80) * 16;
  return static_cast<int>(chunks < cap ? (chunks > 0 ? chunks : 1) : cap);
}

// Fills `b` with tensors [from, from + n) and returns how many it took.
int fill_batch(Batch& b, int from, int n, void* const* p, const void* const* g,
               float* const* s0, float* const* s1, const int64_t* sizes,
               const float* step_size, const float* bc2_sqrt) {
  b.n = 0;
  b.chunk_start[0] = 0;
  for (int i = from; i < n && b.n < kMaxTensors; ++i) {
    const int k = b.n++;
    b.p[k] = p ? p[i] : nullptr;
    b.g[k] = g[i];
    b.s0[k] = s0 ? s0[i] : nullptr;
    b.s1[k] = s1 ? s1[i] : nullptr;
    b.size[k] = sizes[i];
    b.step_size[k] = step_size ? step_size[i] : 0.0f;
    b.bc2_sqrt[k] = bc2_sqrt ? bc2_sqrt[i] : 0.0f;
    b.chunk_start[k + 1] = b.chunk_start[k] + (sizes[i] + kChunk - 1) / kChunk;
  }
  return b.n;
}

template <typename T, typename Op, bool kS0, bool kS1>
int launch_updates(int n, void* const* p, const void* const* g, float* const* s0,
                   float* const* s1, const int64_t* sizes, const float* step_size,
                   const float* bc2_sqrt, Op op, float clip, const double* sumsq,
                   double max_norm, cudaStream_t stream) {
  Batch b;
  for (int from = 0; from < n;) {
    from += fill_batch(b, from, n, p, g, s0, s1, sizes, step_size, bc2_sqrt);
    if (b.chunk_start[b.n] == 0) continue;
    update_kernel<T, Op, kS0, kS1><<<grid_for(b.chunk_start[b.n]), kThreads, 0, stream>>>(
        b, op, clip, sumsq, max_norm);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  return 0;
}

template <typename T>
int launch_sumsq(int n, const void* const* g, const int64_t* sizes, float clip, double* out,
                 cudaStream_t stream) {
  Batch b;
  for (int from = 0; from < n;) {
    from += fill_batch(b, from, n, nullptr, g, nullptr, nullptr, sizes, nullptr, nullptr);
    if (b.chunk_start[b.n] == 0) continue;
    sumsq_kernel<T><<<grid_for(b.chunk_start[b.n]), kThreads, 0, stream>>>(b, clip, out);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return static_cast<int>(err);
  }
  return 0;
}

template <typename T>
struct Type {
  using type = T;
};

// The one dtype ladder of this file: returns fn(Type<T>{}) with T the element type of the
// launcher's dtype code (0 float32, 1 bfloat16, anything else float16).
template <typename Fn>
int dispatch_dtype(int dtype, Fn&& fn) {
  switch (dtype) {
    case 0: return fn(Type<float>{});
    case 1: return fn(Type<__nv_bfloat16>{});
    default: return fn(Type<__half>{});
  }
}

}  // namespace

extern "C" {

const char* wb_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

// dtype: 0 float32, 1 bfloat16, 2 float16.  `out` must hold 0.0 on entry; sums are added to it.
int wb_cuda_grad_sumsq(int n, const void* const* grads, const int64_t* sizes, int dtype,
                       float clip_value, double* out, void* stream) {
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    return launch_sumsq<T>(n, grads, sizes, clip_value, out, static_cast<cudaStream_t>(stream));
  });
}

int wb_cuda_adam_step(int n, void* const* params, const void* const* grads,
                      float* const* exp_avgs, float* const* exp_avg_sqs, const int64_t* sizes,
                      const float* step_sizes, const float* bc2_sqrts, int dtype,
                      const wb::AdamScalars* scalars, float clip_value, const double* sumsq,
                      double max_norm, void* stream) {
  const AdamOp op{*scalars};
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    return launch_updates<T, AdamOp, true, true>(n, params, grads, exp_avgs, exp_avg_sqs, sizes,
                                                 step_sizes, bc2_sqrts, op, clip_value, sumsq,
                                                 max_norm, s);
  });
}

int wb_cuda_stream_probe(int n, void* const* params, const void* const* grads, float* const* a,
                         float* const* b, const int64_t* sizes, int dtype, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    return launch_updates<T, ProbeOp, true, true>(n, params, grads, a, b, sizes, nullptr,
                                                  nullptr, ProbeOp{}, 3.0e38f, nullptr, -1.0, s);
  });
}

// `bufs` is nullptr when momentum == 0.
int wb_cuda_sgd_step(int n, void* const* params, const void* const* grads, float* const* bufs,
                     const int64_t* sizes, int dtype, const wb::SgdScalars* scalars,
                     float clip_value, const double* sumsq, double max_norm, void* stream) {
  const SgdOp op{*scalars};
  auto s = static_cast<cudaStream_t>(stream);
  return dispatch_dtype(dtype, [&](auto type) {
    using T = typename decltype(type)::type;
    if (bufs != nullptr) {
      return launch_updates<T, SgdOp, true, false>(n, params, grads, bufs, nullptr, sizes,
                                                   nullptr, nullptr, op, clip_value, sumsq,
                                                   max_norm, s);
    }
    return launch_updates<T, SgdOp, false, false>(n, params, grads, nullptr, nullptr, sizes,
                                                  nullptr, nullptr, op, clip_value, sumsq,
                                                  max_norm, s);
  });
}

}  // extern "C"
