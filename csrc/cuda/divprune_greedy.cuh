#pragma once
// DivPrune's device code (divprune_cuda.cu wraps and launches it): the first pick's nearest-other epilogue
// for the tiled similarity kernel, and the body of the cooperative greedy kernel that runs all k steps. Each batch row is split
// over `blocks_per_row` blocks; a block keeps its tokens' running max similarity to the chosen set on chip
// (shared memory; global memory when a block's share exceeds kOnChipTokens) and, per step, folds in the
// similarity to the newly chosen token (one warp per token) and proposes its best candidate; after a
// grid-wide barrier every block reduces the row's proposals to the same next pick. The body takes its
// shared memory as arguments (the __global__ wrapper in divprune_cuda.cu declares it) so
// tests/cuda_emulation can run several blocks at once.
#include <cooperative_groups.h>

#include <cstdint>

#include "restore/divprune_math.h"

namespace restore::divprune {

namespace cg = cooperative_groups;

constexpr int kWarp = 32;
constexpr int kGreedyThreads = 512;
constexpr int64_t kOnChipTokens = 12000;  // 47 KiB of float + the static scratch: under the 48 KiB default
constexpr int64_t kMinTokensPerBlock = 64;  // 4 tokens per warp per step: spread a row over many SMs

// Nearest-other similarity: near_first[b, i] = max_{j != i} sim[i, j] (-inf when N == 1).
struct NearestOtherEpilogue {
  using State = float;
  int64_t n;
  float* near_first;

  __device__ State init() const { return -INFINITY; }
  __device__ void update(State& s, int64_t, int64_t i, int64_t j, float sim) const {
    if (i != j) s = fmaxf(s, sim);
  }
  static __device__ State combine(State x, State y) { return fmaxf(x, y); }
  static __device__ State shfl_xor(State s, int mask) { return __shfl_xor_sync(0xffffffffu, s, mask); }
  __device__ void finish(int64_t b, int64_t i, State s) const { near_first[b * n + i] = s; }
};

struct Candidate {
  float near;
  int64_t index;
};

__device__ __forceinline__ Candidate farther(Candidate a, Candidate b) {
  return divprune_before(b.near, b.index, a.near, a.index) ? b : a;
}

// The block's best candidate, returned to every thread.
__device__ Candidate block_farthest(Candidate c, Candidate* scratch) {
  for (int mask = kWarp / 2; mask >= 1; mask >>= 1) {
    Candidate o{__shfl_xor_sync(0xffffffffu, c.near, mask),
                static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(c.index), mask))};
    c = farther(c, o);
  }
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) scratch[warp] = c;
  __syncthreads();
  Candidate best = scratch[0];
  for (int w = 1; w < kGreedyThreads / kWarp; ++w) best = farther(best, scratch[w]);
  __syncthreads();  // scratch is reused by the next call
  return best;
}

struct GreedyArgs {
  const float* xn;          // (rows, n, d) normalised tokens
  const float* near_first;  // (rows, n)
  float* near_global;       // (rows, n), used when a block's share does not fit on chip
  float* cand_near;         // (2, rows, blocks_per_row): proposals, double-buffered by step parity
  int64_t* cand_index;
  int64_t* order;  // (rows, k): picks in pick order
  int64_t rows, n, d, k, chunk;
  int blocks_per_row;
  bool on_chip;
};

// One block's part of the greedy loop. near_smem: the block's dynamic shared memory (chunk floats when
// p.on_chip); scratch: kGreedyThreads / kWarp shared Candidates.
__device__ void divprune_greedy_block(const GreedyArgs& p, float* near_smem, Candidate* scratch) {
  cg::grid_group grid = cg::this_grid();
  const int64_t b = blockIdx.y;
  const int blk = blockIdx.x;
  const int64_t begin = blk * p.chunk, end = min(p.n, begin + p.chunk);
  float* near = p.on_chip ? near_smem : p.near_global + b * p.n + begin;
  const float* x = p.xn + b * p.n * p.d;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const Candidate none{kDivPruneChosen, p.n};

  auto propose = [&](int parity, Candidate mine) {
    const Candidate best = block_farthest(mine, scratch);
    if (threadIdx.x == 0) {
      const int64_t slot = (parity * p.rows + b) * p.blocks_per_row + blk;
      p.cand_near[slot] = best.near;
      p.cand_index[slot] = best.index;
    }
    grid.sync();
    Candidate pick = none;
    for (int o = 0; o < p.blocks_per_row; ++o) {
      const int64_t slot = (parity * p.rows + b) * p.blocks_per_row + o;
      pick = farther(pick, Candidate{p.cand_near[slot], p.cand_index[slot]});
    }
    return pick.index;
  };

  // Step 0: the token whose nearest other token is farthest (token 0 when n == 1).
  Candidate mine = none;
  for (int64_t i = begin + threadIdx.x; i < end; i += kGreedyThreads) {
    near[i - begin] = -INFINITY;
    mine = farther(mine, Candidate{p.near_first[b * p.n + i], i});
  }
  int64_t c = propose(0, mine);
  if (blk == 0 && threadIdx.x == 0) p.order[b * p.k] = c;

  for (int64_t t = 1; t < p.k; ++t) {
    if (threadIdx.x == 0 && c >= begin && c < end) near[c - begin] = kDivPruneChosen;
    __syncthreads();
    const float* xc = x + c * p.d;
    for (int64_t i = begin + warp; i < end; i += kGreedyThreads / kWarp) {
      if (near[i - begin] == kDivPruneChosen) continue;  // uniform over the warp
      const float* xi = x + i * p.d;
      float acc = 0.f;
      for (int64_t f = lane; f < p.d; f += kWarp) acc = fmaf(xi[f], xc[f], acc);
      for (int mask = kWarp / 2; mask >= 1; mask >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, mask);
      if (lane == 0) near[i - begin] = fmaxf(near[i - begin], acc);
    }
    __syncthreads();
    mine = none;
    for (int64_t i = begin + threadIdx.x; i < end; i += kGreedyThreads)
      if (near[i - begin] != kDivPruneChosen) mine = farther(mine, Candidate{near[i - begin], i});
    c = propose(int(t % 2), mine);
    if (blk == 0 && threadIdx.x == 0) p.order[b * p.k + t] = c;
  }
}

}  // namespace restore::divprune
