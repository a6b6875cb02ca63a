// optim_cpu_loops.h -- the loops of the CPU optimizer ops: one span of memory each, no torch.
//
// Included by optim_cpu.cpp only (its ops cut tensors into chunks and call these per chunk);
// kept apart so the walking (prefetch, lanes, streaming stores) reads on its own.  The update
// rules themselves live in optim_math.h.  Build flags: see optim_cpu.cpp.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "optim_math.h"

namespace {

// Element conversions.  bf16 and fp16 are handled as raw bits / _Float16 so that the loops stay
// plain C++ that GCC vectorizes (c10::BFloat16's operators do not).
inline float load(float x) { return x; }
inline float load(_Float16 x) { return static_cast<float>(x); }
inline float load(uint16_t bits) {
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
template <typename T>
inline T store(float f);
template <>
inline float store<float>(float f) { return f; }
template <>
inline _Float16 store<_Float16>(float f) { return static_cast<_Float16>(f); }
template <>
inline uint16_t store<uint16_t>(float f) {
  // Round to nearest even, as c10::BFloat16 does; NaN stays a quiet NaN.
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(f != f ? 0x7fc0u : rounded);
}

// Software prefetch, a fixed distance ahead of every stream the loops walk: with the hardware
// prefetcher alone each core stayed ~10-20% below the bandwidth it reaches with it (measured
// on a 2-core Xeon VM, bench/optim.py).  A prefetch past the end of an array is harmless.
constexpr int64_t kAheadBytes = 2048;
template <typename T>
inline void ahead(const T* x) {
  __builtin_prefetch(reinterpret_cast<const char*>(x) + kAheadBytes, 0);
}
template <typename T>
inline void ahead_rw(T* x) {
  __builtin_prefetch(reinterpret_cast<const char*>(x) + kAheadBytes, 1);
}
// The loops walk 16 elements (one cache line of float32) per prefetch.
constexpr int64_t kLine = 16;

// Squares in float64 (the contract of grad_sumsq: a sharded step's norm must equal the
// unsharded one to ~1e-12, which float32 partial sums miss), over 32 independent lanes: a single
// accumulator chain made this pass bound by the latency of the add, not by memory.  The lanes
// are summed in a fixed order, so the result depends only on the chunking, never on the thread
// count.
template <bool kClamp, typename T>
double sumsq_lanes(const T* __restrict g, int64_t n, float clip) {
  constexpr int64_t kLanes = 32;
  double acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    ahead(g + i);
    ahead(g + i + kLine);
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) {
      const double x = kClamp ? wb::effective_grad(load(g[i + j]), clip, 1.0f) : load(g[i + j]);
      acc[j] += x * x;
    }
  }
  for (; i < n; ++i) {
    const double x = wb::effective_grad(load(g[i]), clip, 1.0f);
    acc[i % kLanes] += x * x;
  }
  double total = 0.0;
  for (int64_t j = 0; j < kLanes; ++j) total += acc[j];
  return total;
}

// Without value clipping (the common case) the clamp is left out of the loop: it is three of
// the few vector operations per element, and the identity it computes then is exact anyway.
template <typename T>
double sumsq_span(const T* __restrict g, int64_t n, float clip) {
  return std::isinf(clip) ? sumsq_lanes<false>(g, n, clip) : sumsq_lanes<true>(g, n, clip);
}

template <typename T>
void adam_span(T* __restrict p, const T* __restrict g, float* __restrict m, float* __restrict v,
               int64_t n, const wb::AdamScalars s, float step_size, float bc2_sqrt, float clip,
               float scale) {
  for (int64_t b = 0; b < n; b += kLine) {
    ahead_rw(p + b);
    ahead(g + b);
    ahead_rw(m + b);
    ahead_rw(v + b);
    const int64_t e = b + kLine < n ? b + kLine : n;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      float pf = load(p[i]);
      float mf = m[i];
      float vf = v[i];
      wb::adam_update(pf, wb::effective_grad(load(g[i]), clip, scale), mf, vf, s, step_size,
                      bc2_sqrt);
      p[i] = store<T>(pf);
      m[i] = mf;
      v[i] = vf;
    }
  }
}

// adam_span out of place: reads p, m, v and writes the updated values to po, mo, vo (other
// memory), leaving the inputs as they were.  Plain stores to lines not in cache would first
// read them (read-for-ownership): +12 B a param, which made this 1.5x the in-place step
// (GPT-2-small list, 2 cores).  With AVX-512 whole float32 lines are written with streaming
// stores instead, which skip that read; the caller fences once after the parallel region.
// (Its own loop, not adam_span's with out == in: __restrict forbids that call, and without
// __restrict GCC versions the loop on an alias check that in-place calls would fail.)
template <typename T>
void adam_span_into(const T* __restrict p, const T* __restrict g, const float* __restrict m,
                    const float* __restrict v, T* __restrict po, float* __restrict mo,
                    float* __restrict vo, int64_t n, const wb::AdamScalars s, float step_size,
                    float bc2_sqrt, float clip, float scale) {
  int64_t b = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) {
    const bool lines = ((reinterpret_cast<uintptr_t>(mo) | reinterpret_cast<uintptr_t>(vo) |
                         reinterpret_cast<uintptr_t>(po)) & 63) == 0;
    for (; lines && b + kLine <= n; b += kLine) {
      ahead(p + b);
      ahead(g + b);
      ahead(m + b);
      ahead(v + b);
      alignas(64) float tp[kLine], tm[kLine], tv[kLine];
#pragma omp simd
      for (int64_t j = 0; j < kLine; ++j) {
        float pf = load(p[b + j]);
        float mf = m[b + j];
        float vf = v[b + j];
        wb::adam_update(pf, wb::effective_grad(load(g[b + j]), clip, scale), mf, vf, s,
                        step_size, bc2_sqrt);
        tp[j] = pf;
        tm[j] = mf;
        tv[j] = vf;
      }
      _mm512_stream_ps(po + b, _mm512_load_ps(tp));
      _mm512_stream_ps(mo + b, _mm512_load_ps(tm));
      _mm512_stream_ps(vo + b, _mm512_load_ps(tv));
    }
  }
#endif
  for (; b < n; b += kLine) {
    ahead(p + b);
    ahead(g + b);
    ahead(m + b);
    ahead(v + b);
    ahead_rw(po + b);
    ahead_rw(mo + b);
    ahead_rw(vo + b);
    const int64_t e = b + kLine < n ? b + kLine : n;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      float pf = load(p[i]);
      float mf = m[i];
      float vf = v[i];
      wb::adam_update(pf, wb::effective_grad(load(g[i]), clip, scale), mf, vf, s, step_size,
                      bc2_sqrt);
      po[i] = store<T>(pf);
      mo[i] = mf;
      vo[i] = vf;
    }
  }
}

template <typename T>
void sgd_span(T* __restrict p, const T* __restrict g, float* __restrict buf, int64_t n,
              const wb::SgdScalars s, float clip, float scale) {
  if (buf == nullptr) {
    for (int64_t b = 0; b < n; b += kLine) {
      ahead_rw(p + b);
      ahead(g + b);
      const int64_t e = b + kLine < n ? b + kLine : n;
#pragma omp simd
      for (int64_t i = b; i < e; ++i) {
        float pf = load(p[i]);
        float unused = 0.0f;
        wb::sgd_update(pf, wb::effective_grad(load(g[i]), clip, scale), unused, s);
        p[i] = store<T>(pf);
      }
    }
    return;
  }
  for (int64_t b = 0; b < n; b += kLine) {
    ahead_rw(p + b);
    ahead(g + b);
    ahead_rw(buf + b);
    const int64_t e = b + kLine < n ? b + kLine : n;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      float pf = load(p[i]);
      float bf = buf[i];
      wb::sgd_update(pf, wb::effective_grad(load(g[i]), clip, scale), bf, s);
      p[i] = store<T>(pf);
      buf[i] = bf;
    }
  }
}

template <typename T>
void probe_span(T* __restrict p, const T* __restrict g, float* __restrict m,
                float* __restrict v, int64_t n) {
  for (int64_t b = 0; b < n; b += kLine) {
    ahead_rw(p + b);
    ahead(g + b);
    ahead_rw(m + b);
    ahead_rw(v + b);
    const int64_t e = b + kLine < n ? b + kLine : n;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) {
      const float gf = load(g[i]);
      p[i] = store<T>(load(p[i]) + gf);
      m[i] = m[i] + gf;
      v[i] = v[i] + gf;
    }
  }
}

// Read-only probe: the norm pass's pattern (one stream read, chunked, prefetched) with a sum too
// cheap to matter; bench/optim.py charges the norm pass at this bandwidth.
template <typename T>
double read_span(const T* __restrict g, int64_t n) {
  constexpr int64_t kLanes = 32;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    ahead(g + i);
    ahead(g + i + kLine);
#pragma omp simd
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += load(g[i + j]);
  }
  double total = 0.0;
  for (; i < n; ++i) total += load(g[i]);
  for (int64_t j = 0; j < kLanes; ++j) total += acc[j];
  return total;
}

}  // namespace
