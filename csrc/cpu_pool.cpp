// A pool of big CPU blocks for the threads that opt in (the learner's worker).
//
// Why by hand: PyTorch keeps no cache of freed CPU memory (only its CUDA allocator caches).
// glibc hands a big tensor's memory back to the kernel when it is freed, so a training step that
// frees and re-allocates the same gradients and activations every time faults every page in
// again: SmolLM2-135M's forward + backward touched ~900 MB of fresh pages per step, 220k page
// faults, and system time was 40-70% of user time on the worker thread (mallopt cannot help:
// a thread's own arena maps anything over 64 MB directly, whatever the thresholds).
//
// The pool wraps torch's CPU allocator once (SetCPUAllocator). A thread that entered the pool
// (pool_enter, counted per thread) takes its allocations of kMinBytes or more from blocks freed
// earlier (the smallest cached block that fits with at most a quarter to spare), else from
// torch's allocator; such a block goes back to the pool when freed, from any thread, while the
// pool holds less than its cap, else back to the system. Every other thread, and every small
// allocation, goes straight to torch's allocator and gets its DataPtr untouched.
// A pooled block is never zeroed or reused while a tensor holds it: torch fills what it needs.

#include <ATen/core/Tensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr size_t kMinBytes = size_t{1} << 20;  // smaller blocks stay with malloc's own bins
constexpr size_t kRound = size_t{1} << 16;     // block sizes, so near sizes share blocks

thread_local int64_t tls_depth = 0;  // > 0: this thread's big allocations use the pool

struct Block {
  size_t bytes;
  c10::DataPtr base;  // torch's own allocation, freed when the block leaves the pool
  bool cached;
};

class Pool final : public c10::Allocator {
 public:
  explicit Pool(c10::Allocator* base) : base_(base) {}

  c10::DataPtr allocate(size_t n) override {
    if (tls_depth <= 0 || n < kMinBytes) return base_->allocate(n);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(n);
      if (it != free_.end() && it->first - n <= n / 4) {
        void* p = it->second;
        cached_bytes_ -= it->first;
        free_.erase(it);
        blocks_.at(p).cached = false;
        ++hits_;
        return {p, p, &Pool::release, c10::Device(c10::DeviceType::CPU)};
      }
      ++misses_;
    }
    size_t bytes = (n + kRound - 1) / kRound * kRound;
    c10::DataPtr d = base_->allocate(bytes);
    void* p = d.get();
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks_.emplace(p, Block{bytes, std::move(d), false});
    }
    return {p, p, &Pool::release, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Pool::release_raw; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // A pooled block's deleter: back to the pool, or to the system past the cap.
  static void release(void* p) {
    Pool& pool = *instance();
    c10::DataPtr drop;  // freed after the lock is released
    {
      std::lock_guard<std::mutex> lock(pool.mu_);
      auto it = pool.blocks_.find(p);
      if (it == pool.blocks_.end()) return;  // (release_raw checked)
      Block& b = it->second;
      if (pool.cached_bytes_ + b.bytes <= pool.cap_) {
        b.cached = true;
        pool.cached_bytes_ += b.bytes;
        pool.free_.emplace(b.bytes, p);
        return;
      }
      drop = std::move(b.base);
      pool.blocks_.erase(it);
    }
  }

  // raw_allocate's memory, which torch frees through raw_deleter(): ours or the base's.
  static void release_raw(void* p) {
    Pool& pool = *instance();
    bool ours;
    {
      std::lock_guard<std::mutex> lock(pool.mu_);
      ours = pool.blocks_.count(p) != 0;
    }
    if (ours) {
      release(p);
    } else if (auto d = pool.base_->raw_deleter()) {
      d(p);
    }
  }

  // Free every cached block (blocks in use stay); returns the bytes freed.
  int64_t flush() {
    std::vector<c10::DataPtr> drop;
    int64_t freed = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [bytes, p] : free_) {
        auto it = blocks_.find(p);
        drop.push_back(std::move(it->second.base));
        blocks_.erase(it);
        freed += static_cast<int64_t>(bytes);
      }
      free_.clear();
      cached_bytes_ = 0;
    }
    return freed;
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {static_cast<int64_t>(cached_bytes_), static_cast<int64_t>(cap_),
            static_cast<int64_t>(blocks_.size()), static_cast<int64_t>(free_.size()), hits_,
            misses_};
  }

  void set_cap(size_t cap) {
    bool over;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cap_ = cap;
      over = cached_bytes_ > cap_;
    }
    if (over) flush();
  }

  static Pool* instance() {
    // Installed once, never destroyed: DataPtrs handed out may outlive any scope.
    static Pool* pool = [] {
      auto* p = new Pool(c10::GetCPUAllocator());
      c10::SetCPUAllocator(p, /*priority=*/200);
      return p;
    }();
    return pool;
  }

 private:
  c10::Allocator* base_;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;        // cached blocks by size
  std::unordered_map<void*, Block> blocks_;  // every pooled block, in use or cached
  size_t cached_bytes_ = 0;
  size_t cap_ = size_t{1} << 30;
  int64_t hits_ = 0, misses_ = 0;
};

int64_t pool_enter() {
  Pool::instance();
  return ++tls_depth;
}

int64_t pool_exit() {
  TORCH_CHECK(tls_depth > 0, "pool_exit without pool_enter on this thread");
  return --tls_depth;
}

int64_t pool_flush() { return Pool::instance()->flush(); }

std::vector<int64_t> pool_stats() { return Pool::instance()->stats(); }

void pool_set_cap(int64_t cap) {
  TORCH_CHECK(cap >= 0, "pool cap must be >= 0 bytes, got ", cap);
  Pool::instance()->set_cap(static_cast<size_t>(cap));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(workbench_optim, m) {
  m.def("pool_enter() -> int", &pool_enter);
  m.def("pool_exit() -> int", &pool_exit);
  m.def("pool_flush() -> int", &pool_flush);
  m.def("pool_stats() -> int[]", &pool_stats);
  m.def("pool_set_cap(int cap) -> ()", &pool_set_cap);
}
