#pragma once
// The CUDA execution model on the host, for tests/cuda_emulation: one std::thread per CUDA thread,
// __syncthreads as a block barrier, warp shuffles through per-warp arrays between two warp barriers, and
// for cooperative launches every block at once with grid.sync() as a barrier over all threads. Each
// emulator defines __shared__ before including this: `static` makes a kernel's shared variables one object
// for all threads, which is right only while blocks run one after another (so a cooperative kernel gets
// its shared memory passed in by the emulator).
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cstdio>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __align__(x) __attribute__((aligned(x)))

struct Dim3 {
  int x = 0, y = 0, z = 0;
};
inline thread_local Dim3 threadIdx, blockIdx, gridDim;
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
inline int min(int a, int b) { return a < b ? a : b; }
template <typename T>
T __ldg(const T* p) {
  return *p;
}

namespace emu {
constexpr int kMaxWarps = 16;

// What the threads of one block share: its barrier (and how many times it has opened: the epoch),
// its warps' barriers and shuffle slots.
struct Block {
  struct Tick {
    std::atomic<int>* epoch;
    void operator()() noexcept { ++*epoch; }
  };
  std::atomic<int> epoch{0};
  std::barrier<Tick> barrier;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  uint64_t values[kMaxWarps][32];
  explicit Block(int threads) : barrier(threads, Tick{&epoch}) {
    for (int w = 0; w < (threads + 31) / 32; ++w) warps.push_back(std::make_unique<std::barrier<>>(std::min(32, threads - 32 * w)));
  }
};
inline thread_local Block* block;           // the calling thread's block
inline std::barrier<>* grid_barrier;        // every thread of a cooperative launch
inline int warp() { return threadIdx.x / 32; }
inline int lane() { return threadIdx.x % 32; }
inline void warp_sync() { block->warps[warp()]->arrive_and_wait(); }

// Shared-memory race check over the accesses an emulated instruction reports (16-byte granules): two
// threads touching one granule between the same two __syncthreads, at least one of them writing. The
// order in which the threads happen to run does not matter, so a missing barrier is caught every time.
struct RaceCheck {
  struct Granule {
    int write_epoch = -1, writer = -1, read_epoch = -1, reader = -1;  // reader -2: several threads
  };
  std::mutex lock;
  std::unordered_map<uintptr_t, Granule> granules;
  int races = 0;

  void clear() {
    std::lock_guard<std::mutex> guard(lock);
    granules.clear();
  }
  void access(const void* address, bool write) {
    const int e = block->epoch.load(), t = threadIdx.x;
    std::lock_guard<std::mutex> guard(lock);
    Granule& g = granules[reinterpret_cast<uintptr_t>(address) / 16];
    const bool conflict = (g.write_epoch == e && g.writer != t) || (write && g.read_epoch == e && g.reader != t);
    if (conflict && ++races <= 5)
      std::printf("shared-memory race: thread %d %s granule %p in barrier epoch %d (writer %d, reader %d)\n", t,
                  write ? "writes" : "reads", address, e, g.writer, g.reader);
    if (write) {
      g.write_epoch = e, g.writer = t;
    } else if (g.read_epoch != e) {
      g.read_epoch = e, g.reader = t;
    } else if (g.reader != t) {
      g.reader = -2;
    }
  }
};
inline RaceCheck race_check;

// Runs body() as every thread of every block of `grid`. Cooperative: all blocks at once (grid.sync()
// works). Otherwise one block after another on one set of threads, a barrier between blocks (what a block
// leaves in shared memory is the next one's garbage, as on the hardware).
inline void launch(dim3 grid, int threads, const std::function<void()>& body, bool cooperative = false) {
  const unsigned blocks = grid.x * grid.y * grid.z;
  auto index_of = [&](unsigned id) {
    return Dim3{int(id % grid.x), int(id / grid.x % grid.y), int(id / (grid.x * grid.y))};
  };
  const Dim3 grid_dim{int(grid.x), int(grid.y), int(grid.z)};
  std::vector<std::thread> pool;
  if (!cooperative) {
    Block blk(threads);
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        block = &blk, threadIdx = Dim3{t, 0, 0}, gridDim = grid_dim;
        for (unsigned id = 0; id < blocks; ++id) {
          blockIdx = index_of(id);
          body();
          blk.barrier.arrive_and_wait();
        }
      });
    for (auto& t : pool) t.join();
    return;
  }
  std::barrier<> everyone(std::ptrdiff_t(blocks) * threads);
  grid_barrier = &everyone;
  std::vector<std::unique_ptr<Block>> state;
  for (unsigned id = 0; id < blocks; ++id) {
    state.push_back(std::make_unique<Block>(threads));
    Block* blk = state.back().get();
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&body, blk, idx = index_of(id), t, grid_dim] {
        block = blk, threadIdx = Dim3{t, 0, 0}, blockIdx = idx, gridDim = grid_dim;
        body();
      });
  }
  for (auto& t : pool) t.join();
  grid_barrier = nullptr;
}
}  // namespace emu

inline void __syncthreads() { emu::block->barrier.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::warp_sync(); }

template <typename T>
T __shfl_xor_sync(unsigned, T x, int mask) {
  static_assert(sizeof(T) <= sizeof(uint64_t));
  const int w = emu::warp(), l = emu::lane();
  std::memcpy(&emu::block->values[w][l], &x, sizeof(T));
  emu::warp_sync();
  T r;
  std::memcpy(&r, &emu::block->values[w][l ^ mask], sizeof(T));
  emu::warp_sync();
  return r;
}

// Atomics: one lock is plenty for tests.
inline unsigned atomicAdd(unsigned* address, unsigned v) {
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  const unsigned old = *address;
  *address = old + v;
  return old;
}
