#pragma once
// anchor_merge's device code (anchor_merge_cuda.cu launches it in this order): float64 normalisation,
// column sums and density rounded to float32; the nearest-better and token -> anchor epilogues of the
// tiled similarity kernel; the anchors' radix top-K; the per-slot mean. Kept apart from the launcher so
// tests/cuda_emulation can run it on the CPU.
#include <cstdint>

#include "cuda/block_topk.cuh"
#include "cuda/similarity_tiles.cuh"
#include "restore/anchor_math.h"
#include "restore/topk_order.h"

namespace restore::anchor_kernels {

constexpr int kWarp = 32;
constexpr int kDensityThreads = 256;
constexpr int kTopkThreads = 512;
constexpr int kMeanThreads = 256;

// Normalisation and density are the CPU kernel's (cpu/normalise_density.h): float64 math, then density
// rounded to float32 before any decision, so values equal in exact arithmetic (N = 2, mirrored tokens)
// compare equal. inv_norm[b, i] = 1 / max(||x_i||, 1e-12) in float64 and xn = float(x * inv_norm); one warp
// per token.
__global__ void __launch_bounds__(kDensityThreads)
    normalise_kernel(const float* __restrict__ xf, int64_t tokens, int64_t d, double* __restrict__ inv_norm,
                     float* __restrict__ xn) {
  const int64_t token = (static_cast<int64_t>(blockIdx.x) * kDensityThreads + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (token >= tokens) return;  // whole warps leave together: token is uniform within a warp
  const float* row = xf + token * d;
  double acc = 0.0;
  for (int64_t c = lane; c < d; c += kWarp) acc += static_cast<double>(row[c]) * row[c];
  for (int mask = kWarp / 2; mask >= 1; mask >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, mask);
  const double inv = 1.0 / fmax(sqrt(acc), 1e-12);
  for (int64_t c = lane; c < d; c += kWarp) xn[token * d + c] = static_cast<float>(row[c] * inv);
  if (lane == 0) inv_norm[token] = inv;
}

// colsum[b, c] = sum_i x[b, i, c] * inv_norm[b, i] in float64, tokens in ascending order.
// Grid (ceil(D/256), B).
__global__ void __launch_bounds__(kDensityThreads)
    colsum_kernel(const float* __restrict__ xf, const double* __restrict__ inv_norm, int64_t n, int64_t d,
                  double* __restrict__ colsum) {
  const int64_t b = blockIdx.y, c = static_cast<int64_t>(blockIdx.x) * kDensityThreads + threadIdx.x;
  if (c >= d) return;
  const float* x = xf + b * n * d + c;
  const double* inv = inv_norm + b * n;
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i * d]) * inv[i];
  colsum[b * d + c] = acc;
}

// density[b, i] = float(inv_norm[b, i] * sum_c x[b, i, c] * colsum[b, c]): docs/ops.md §2 step 2 via
// sum_j sim[i, j] = xn_i . sum_j xn_j, O(N * D). One warp per token.
__global__ void __launch_bounds__(kDensityThreads)
    density_kernel(const float* __restrict__ xf, const double* __restrict__ inv_norm, const double* __restrict__ colsum,
                   int64_t batch, int64_t n, int64_t d, float* __restrict__ density) {
  const int64_t token = (static_cast<int64_t>(blockIdx.x) * kDensityThreads + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (token >= batch * n) return;
  const int64_t b = token / n;
  const float* row = xf + token * d;
  const double* cs = colsum + b * d;
  double acc = 0.0;
  for (int64_t c = lane; c < d; c += kWarp) acc += static_cast<double>(row[c]) * cs[c];
  for (int mask = kWarp / 2; mask >= 1; mask >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, mask);
  if (lane == 0) density[token] = static_cast<float>(inv_norm[token] * acc);
}

// docs/ops.md §2 step 4: nearest[i] = max over better j of sim[i, j], 0 where no j is better.
struct NearestBetterEpilogue {
  using State = float;
  const float* density;  // (B, N)
  int64_t n;
  AnchorRule rule;
  float* nearest;  // (B, N)

  __device__ State init() const { return -INFINITY; }
  __device__ void update(State& s, int64_t b, int64_t i, int64_t j, float sim) const {
    if (is_better(rule, density[b * n + i], density[b * n + j])) s = fmaxf(s, sim);
  }
  static __device__ State combine(State x, State y) { return fmaxf(x, y); }
  static __device__ State shfl_xor(State s, int mask) { return __shfl_xor_sync(0xffffffffu, s, mask); }
  __device__ void finish(int64_t b, int64_t i, State s) const { nearest[b * n + i] = s == -INFINITY ? 0.f : s; }
};

// docs/ops.md §2 step 7: assign[i] = argmax_s sim[i, anchors[s]], ties to the lower slot.
struct AssignEpilogue {
  using State = ArgmaxState;
  int64_t n;
  int64_t* assign;  // (B, N)

  // Index 0, not a sentinel: a token whose similarities are all NaN (a NaN or inf feature, e.g. an fp16
  // overflow) never beats the initial state, and an out-of-range slot would make the size scatter_add_
  // fail a device-side assert. As on the CPU and in the reference, a NaN similarity never wins and a row
  // without any number gets slot 0.
  __device__ State init() const { return {-INFINITY, 0}; }
  __device__ void update(State& s, int64_t, int64_t, int64_t slot, float sim) const {
    s = argmax_combine(s, State{sim, slot});
  }
  static __device__ State combine(State x, State y) { return argmax_combine(x, y); }
  static __device__ State shfl_xor(State s, int mask) { return argmax_shfl_xor(s, mask); }
  __device__ void finish(int64_t b, int64_t i, State s) const { assign[b * n + i] = s.index; }
};

__device__ __forceinline__ uint32_t anchor_key(const float* density, const float* nearest, int64_t i) {
  return score_key(static_cast<float>(
      distinctive_score(static_cast<double>(density[i]), static_cast<double>(nearest[i]))));
}

// docs/ops.md §2 step 6, one block per row, on the float32-rounded score the CPU ranks.
__global__ void __launch_bounds__(kTopkThreads)
    anchor_topk_kernel(const float* __restrict__ density, const float* __restrict__ nearest, int64_t n,
                       int64_t k, int64_t* __restrict__ anchors) {
  const float* dens = density + static_cast<int64_t>(blockIdx.x) * n;
  const float* near = nearest + static_cast<int64_t>(blockIdx.x) * n;
  block_topk_ascending<kTopkThreads>([&](int64_t i) { return anchor_key(dens, near, i); }, n, k,
                                     anchors + static_cast<int64_t>(blockIdx.x) * k);
}

// docs/ops.md §2 step 8: merged[b, s] = mean of x over slot s, summed in float64 in ascending token order
// (deterministic, and no overflow to inf for features near the float32 limit), divided in float64, rounded to
// float32 -- the CPU kernel's mean_per_slot. `members` (B, N) lists each row's tokens sorted by slot, `start`
// (B, K) where each slot's run begins. Grid (K, B, ceil(D / kMeanThreads)).
template <typename scalar_t>
__global__ void __launch_bounds__(kMeanThreads)
    segmented_mean_kernel(const float* __restrict__ xf, const int64_t* __restrict__ members,
                          const int64_t* __restrict__ start, const int64_t* __restrict__ size, int64_t n,
                          int64_t k, int64_t d, scalar_t* __restrict__ merged) {
  const int64_t slot = blockIdx.x, b = blockIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.z) * kMeanThreads + threadIdx.x;
  if (c >= d) return;
  const int64_t first = start[b * k + slot], count = size[b * k + slot];
  const int64_t* mem = members + b * n + first;
  const float* x = xf + b * n * d + c;
  double acc = 0.0;
  for (int64_t m = 0; m < count; ++m) acc += static_cast<double>(x[mem[m] * d]);
  merged[(b * k + slot) * d + c] = static_cast<scalar_t>(static_cast<float>(acc / static_cast<double>(count)));
}

}  // namespace restore::anchor_kernels
