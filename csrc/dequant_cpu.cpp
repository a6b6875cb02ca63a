// GGUF block dequantization on the CPU: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K
// and Q6_K blocks into float32 or bfloat16, for every tensor of a file in one call.
//
// Each block decodes to floats with gguf-py's arithmetic, operation by operation: the scale
// products in the same order (d * sc, then * q; dmin * m, then subtracted), float32
// throughout, no fused multiply-add (the build passes -ffp-contract=off), so the results are
// bit-exact against gguf.quants and against our numpy/torch ports. bfloat16 output rounds each
// float32 to nearest-even, as torch's cast does.
//
// Threads: one call takes all of a file's tensors, cut into chunks of ~32K output elements that
// `threads` workers (the calling thread among them) take from one atomic counter. On a machine
// shared with other work a descheduled worker then delays only its own chunk, not a static
// share of the work (OpenMP's static split made whole loads wait on one descheduled thread).
//
// Finiteness: a block decodes to NaN or Inf exactly when one of its float16 scales is NaN or
// Inf (the integers are small), so each chunk counts the blocks with such a scale while it
// decodes, and the op returns those counts per tensor; the caller refuses the file.
//
// References: ggml's ggml-quants.c (dequantize_row_*), gguf-py's gguf/quants.py.
// Reference path: workbench/formats/gguf_quants.py (numpy/torch ports); the tests in
// tests/formats/test_dequant_kernel.py compare both with gguf.quants on random blocks.
// Build: JIT by workbench/formats/_dequant_build.py (torch.utils.cpp_extension, -O3
// -march=native -ffp-contract=off).

#include <ATen/core/Tensor.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t QK_K = 256;
constexpr int64_t CHUNK_ELEMENTS = 32768;

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return c10::detail::fp16_ieee_to_fp32_value(h);
}

inline bool f16_nonfinite(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return (h & 0x7C00) == 0x7C00;
}

// float32 -> bfloat16 bits, round to nearest even; NaN stays a quiet NaN.
inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

template <typename Out>
inline void store(Out* dst, const float* v, int64_t n) {
  if constexpr (std::is_same_v<Out, float>) {
    std::memcpy(dst, v, n * sizeof(float));
  } else {
    auto* bits = reinterpret_cast<uint16_t*>(dst);
    for (int64_t i = 0; i < n; ++i) bits[i] = bf16_bits(v[i]);
  }
}

// One block each: bytes `b` -> 32 or 256 float32 in `y`.

void q4_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(static_cast<int8_t>(qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>(static_cast<int8_t>(qs[j] >> 4) - 8);
  }
}

void q4_1(const uint8_t* b, float* y) {
  const float d = f16(b), m = f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

void q5_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  uint32_t qh;
  std::memcpy(&qh, b + 2, 4);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo - 16);
    y[j + 16] = d * static_cast<float>(hi - 16);
  }
}

void q5_1(const uint8_t* b, float* y) {
  const float d = f16(b), m = f16(b + 2);
  uint32_t qh;
  std::memcpy(&qh, b + 4, 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int lo = (qs[j] & 0x0F) | (((qh >> j) & 1) << 4);
    const int hi = (qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
    y[j] = d * static_cast<float>(lo) + m;
    y[j + 16] = d * static_cast<float>(hi) + m;
  }
}

void q8_0(const uint8_t* b, float* y) {
  const float d = f16(b);
  const auto* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(qs[j]) * d;
}

// Q2_K: scales[16] | qs[64] | d | dmin. Element e: sub-block e/16; 2-bit value from byte
// (e/128)*32 + e%32, shifted by 2*((e%128)/32).
void q2_k(const uint8_t* b, float* y) {
  const uint8_t* sc = b;
  const uint8_t* qs = b + 16;
  const float d = f16(b + 80), dmin = f16(b + 82);
  for (int s = 0; s < 16; ++s) {
    const float dl = d * static_cast<float>(sc[s] & 0x0F);
    const float ml = dmin * static_cast<float>(sc[s] >> 4);
    for (int i = 0; i < 16; ++i) {
      const int e = s * 16 + i;
      const int q = (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      y[e] = dl * static_cast<float>(q) - ml;
    }
  }
}

// Q3_K: hmask[32] | qs[64] | scales[12] | d. Sixteen 6-bit scales (low nibbles in bytes 0-7,
// high 2-bit pairs in bytes 8-11) offset by 32; a clear hmask bit subtracts 4 from the value.
void q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = f16(b + 108);
  for (int s = 0; s < 16; ++s) {
    const int low = (sc[s % 8] >> (4 * (s / 8))) & 0x0F;
    const int high = (sc[8 + s % 4] >> (2 * (s / 4))) & 0x03;
    const float dl = d * static_cast<float>(static_cast<int8_t>(low | (high << 4)) - 32);
    for (int i = 0; i < 16; ++i) {
      const int e = s * 16 + i;
      const int ql = (qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
      const int qh = (hmask[e % 32] >> (e / 32)) & 1;
      y[e] = dl * static_cast<float>(ql - ((qh ^ 1) << 2));
    }
  }
}

// Q4_K/Q5_K: the 12-byte 6-bit scales and mins of the 8 sub-blocks of 32.
inline void k_scale_min(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 0x3F;
    *mn = s[4 + j] & 0x3F;
  } else {
    *sc = (s[8 + j - 4] & 0x0F) | ((s[j - 4] >> 2) & 0x30);
    *mn = (s[8 + j - 4] >> 4) | ((s[j] >> 2) & 0x30);
  }
}

// Q4_K: d | dmin | scales[12] | qs[128]; sub-block j takes nibble j%2 of bytes (j/2)*32 + l.
void q4_k(const uint8_t* b, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    int sc, mn;
    k_scale_min(b + 4, j, &sc, &mn);
    const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
    const uint8_t* q = qs + (j / 2) * 32;
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      y[j * 32 + l] = dl * static_cast<float>((q[l] >> shift) & 0x0F) - ml;
    }
  }
}

// Q5_K: d | dmin | scales[12] | qh[32] | qs[128]; the fifth bit of sub-block j is bit j of qh[l].
void q5_k(const uint8_t* b, float* y) {
  const float d = f16(b), dmin = f16(b + 2);
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int j = 0; j < 8; ++j) {
    int sc, mn;
    k_scale_min(b + 4, j, &sc, &mn);
    const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(mn);
    const uint8_t* q = qs + (j / 2) * 32;
    const int shift = 4 * (j % 2);
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4);
      y[j * 32 + l] = dl * static_cast<float>(v) - ml;
    }
  }
}

// Q6_K: ql[128] | qh[64] | scales[16] (int8) | d. Element e = h*128 + r: low nibble
// (r/64) of ql[h*64 + r%64], high 2 bits from qh[h*32 + r%32] >> 2*(r/32); minus 32.
void q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = f16(b + 208);
  for (int s = 0; s < 16; ++s) {
    const float dl = d * static_cast<float>(sc[s]);
    for (int i = 0; i < 16; ++i) {
      const int e = s * 16 + i, h = e / 128, r = e % 128;
      const int lo = (ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
      const int hi = (qh[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
      y[e] = dl * static_cast<float>(static_cast<int8_t>(lo | (hi << 4)) - 32);
    }
  }
}

struct Type {
  int64_t block;      // elements per block
  int64_t size;       // bytes per block
  void (*fn)(const uint8_t*, float*);
  int scales[2];      // byte offsets of the float16 scales (-1: none)
};

bool type_of(int64_t id, Type* t) {
  switch (id) {
    case 2: *t = {32, 18, q4_0, {0, -1}}; return true;
    case 3: *t = {32, 20, q4_1, {0, 2}}; return true;
    case 6: *t = {32, 22, q5_0, {0, -1}}; return true;
    case 7: *t = {32, 24, q5_1, {0, 2}}; return true;
    case 8: *t = {32, 34, q8_0, {0, -1}}; return true;
    case 10: *t = {QK_K, 84, q2_k, {80, 82}}; return true;
    case 11: *t = {QK_K, 110, q3_k, {108, -1}}; return true;
    case 12: *t = {QK_K, 144, q4_k, {0, 2}}; return true;
    case 13: *t = {QK_K, 176, q5_k, {0, 2}}; return true;
    case 14: *t = {QK_K, 210, q6_k, {208, -1}}; return true;
    default: return false;
  }
}

// Blocks [b0, b1) of one tensor in output order; returns how many had a non-finite scale.
// Output block ob reads source block rows[ob / per_row] * per_row + ob % per_row when the
// tensor's rows are reordered, ob itself otherwise.
template <typename Out>
int64_t decode_blocks(const Type& t, const uint8_t* src, Out* dst, const int64_t* rows,
                      int64_t per_row, int64_t b0, int64_t b1) {
  float y[QK_K];
  int64_t bad = 0;
  for (int64_t ob = b0; ob < b1; ++ob) {
    const int64_t sb = rows ? rows[ob / per_row] * per_row + ob % per_row : ob;
    const uint8_t* blk = src + sb * t.size;
    bad += f16_nonfinite(blk + t.scales[0]) || (t.scales[1] >= 0 && f16_nonfinite(blk + t.scales[1]));
    t.fn(blk, y);
    store(dst + ob * t.block, y, t.block);
  }
  return bad;
}

struct Job {
  Type type;
  const uint8_t* src;
  void* dst;
  const int64_t* rows;
  int64_t per_row;
  int64_t n_blocks;
};

struct Chunk {
  int64_t job, b0, b1;
};

// Decode raws[i] (uint8, one tensor of types[i]) into outs[i] (float32 or bfloat16, contiguous),
// output rows taken in the order rows[i] gives when it is defined. Returns int64 counts of blocks
// with a non-finite scale, one per tensor.
at::Tensor dequantize_many_(at::TensorList raws, at::IntArrayRef types, at::TensorList outs,
                            const c10::List<std::optional<at::Tensor>>& rows, int64_t threads) {
  const int64_t n = static_cast<int64_t>(raws.size());
  TORCH_CHECK(static_cast<int64_t>(types.size()) == n && static_cast<int64_t>(outs.size()) == n &&
                  static_cast<int64_t>(rows.size()) == n,
              "dequantize_many_: raws, types, outs and rows differ in length");
  std::vector<Job> jobs(n);
  std::vector<Chunk> chunks;
  bool bf16 = false;
  for (int64_t i = 0; i < n; ++i) {
    Type t{};
    TORCH_CHECK(type_of(types[i], &t), "dequantize_many_: no kernel for ggml type ", types[i]);
    const at::Tensor& raw = raws[i];
    const at::Tensor& out = outs[i];
    TORCH_CHECK(raw.scalar_type() == at::kByte && raw.is_contiguous() && raw.device().is_cpu(),
                "dequantize_many_: raw bytes must be contiguous uint8 on the CPU");
    TORCH_CHECK(out.is_contiguous() && out.device().is_cpu() &&
                    (out.scalar_type() == at::kFloat || out.scalar_type() == at::kBFloat16),
                "dequantize_many_: outputs must be contiguous float32 or bfloat16 on the CPU");
    TORCH_CHECK(i == 0 || (out.scalar_type() == at::kBFloat16) == bf16,
                "dequantize_many_: outputs must share one dtype");
    bf16 = out.scalar_type() == at::kBFloat16;
    const int64_t n_blocks = out.numel() / t.block;
    TORCH_CHECK(out.numel() % t.block == 0 && raw.numel() == n_blocks * t.size,
                "dequantize_many_: tensor ", i, " has ", raw.numel(), " bytes for ", out.numel(),
                " elements");
    const int64_t* order = nullptr;
    int64_t per_row = 1;
    std::optional<at::Tensor> r = rows.get(i);
    if (r.has_value() && r->defined()) {
      TORCH_CHECK(r->scalar_type() == at::kLong && r->is_contiguous() && r->numel() > 0 &&
                      n_blocks % r->numel() == 0,
                  "dequantize_many_: rows must be int64 and divide the tensor into whole blocks");
      order = r->data_ptr<int64_t>();
      per_row = n_blocks / r->numel();
      for (int64_t k = 0; k < r->numel(); ++k) {
        TORCH_CHECK(order[k] >= 0 && order[k] < r->numel(), "dequantize_many_: row out of range");
      }
    }
    jobs[i] = {t, raw.data_ptr<uint8_t>(), out.data_ptr(), order, per_row, n_blocks};
    const int64_t step = std::max<int64_t>(1, CHUNK_ELEMENTS / t.block);
    for (int64_t b0 = 0; b0 < n_blocks; b0 += step) {
      chunks.push_back({i, b0, std::min(n_blocks, b0 + step)});
    }
  }
  std::vector<int64_t> bad(chunks.size(), 0);
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) <
                    static_cast<int64_t>(chunks.size());) {
      const Chunk& ch = chunks[c];
      const Job& j = jobs[ch.job];
      bad[c] = bf16 ? decode_blocks(j.type, j.src, static_cast<c10::BFloat16*>(j.dst), j.rows,
                                    j.per_row, ch.b0, ch.b1)
                    : decode_blocks(j.type, j.src, static_cast<float*>(j.dst), j.rows,
                                    j.per_row, ch.b0, ch.b1);
    }
  };
  const int64_t n_threads =
      std::clamp<int64_t>(threads, 1, std::max<int64_t>(1, static_cast<int64_t>(chunks.size())));
  std::vector<std::thread> pool;
  pool.reserve(n_threads - 1);
  for (int64_t k = 1; k < n_threads; ++k) pool.emplace_back(work);
  work();
  for (auto& th : pool) th.join();
  at::Tensor counts = at::zeros({n}, at::kLong);
  auto* cnt = counts.data_ptr<int64_t>();
  for (size_t c = 0; c < chunks.size(); ++c) cnt[chunks[c].job] += bad[c];
  return counts;
}

}  // namespace

TORCH_LIBRARY(workbench_dequant, m) {
  m.def(
      "dequantize_many_(Tensor[] raws, int[] types, Tensor(a!)[] outs, Tensor?[] rows, "
      "int threads) -> Tensor");
}

TORCH_LIBRARY_IMPL(workbench_dequant, CPU, m) { m.impl("dequantize_many_", &dequantize_many_); }
