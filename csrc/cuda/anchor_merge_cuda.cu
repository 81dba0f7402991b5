// anchor_merge on the GPU (SPEC §2), a handful of launches on the current stream and no host sync:
//   normalise, column sums and density_i = xn_i . sum_j xn_j in float64, density rounded to float32 (as the
//   CPU kernel and the reference) -> nearest better similarity (fused tiled kernel, never N x N) -> top-K of
//   the float32-rounded score by radix select (one block per row) -> token -> anchor argmax (fused tiled
//   kernel) -> per-slot sizes and float32 segmented means.
// The ranking, the better-rule and the score formula are restore/topk_order.h and restore/anchor_math.h,
// the very code the CPU kernel runs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/block_topk.cuh"
#include "cuda/similarity_tiles.cuh"
#include "op_checks.h"
#include "restore/anchor_math.h"
#include "restore/topk_order.h"

namespace restore {
namespace {

constexpr int kWarp = 32;
constexpr int kDensityThreads = 256;
constexpr int kTopkThreads = 512;
constexpr int kMeanThreads = 256;

// Normalisation and density follow the CPU kernel and the reference: float64 math, then density rounded to
// float32 before any decision, so values equal in exact arithmetic (N = 2, mirrored tokens) compare equal.
// denom[b, i] = max(||x_i||, 1e-12) in float64 and xn = float(x / denom); one warp per token.
__global__ void __launch_bounds__(kDensityThreads)
    normalise_kernel(const float* __restrict__ xf, int64_t tokens, int64_t d, double* __restrict__ denom,
                     float* __restrict__ xn) {
  const int64_t token = (static_cast<int64_t>(blockIdx.x) * kDensityThreads + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (token >= tokens) return;  // whole warps leave together: token is uniform within a warp
  const float* row = xf + token * d;
  double acc = 0.0;
  for (int64_t c = lane; c < d; c += kWarp) acc += static_cast<double>(row[c]) * row[c];
  for (int mask = kWarp / 2; mask >= 1; mask >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, mask);
  const double den = fmax(sqrt(acc), 1e-12);
  for (int64_t c = lane; c < d; c += kWarp) xn[token * d + c] = static_cast<float>(row[c] / den);
  if (lane == 0) denom[token] = den;
}

// colsum[b, c] = sum_i x[b, i, c] / denom[b, i] in float64, tokens in ascending order. Grid (ceil(D/256), B).
__global__ void __launch_bounds__(kDensityThreads)
    colsum_kernel(const float* __restrict__ xf, const double* __restrict__ denom, int64_t n, int64_t d,
                  double* __restrict__ colsum) {
  const int64_t b = blockIdx.y, c = static_cast<int64_t>(blockIdx.x) * kDensityThreads + threadIdx.x;
  if (c >= d) return;
  const float* x = xf + b * n * d + c;
  const double* den = denom + b * n;
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i * d]) / den[i];
  colsum[b * d + c] = acc;
}

// density[b, i] = float(sum_c (x[b, i, c] / denom[b, i]) * colsum[b, c]): SPEC §2 step 2 via
// sum_j sim[i, j] = xn_i . sum_j xn_j, O(N * D). One warp per token.
__global__ void __launch_bounds__(kDensityThreads)
    density_kernel(const float* __restrict__ xf, const double* __restrict__ denom, const double* __restrict__ colsum,
                   int64_t batch, int64_t n, int64_t d, float* __restrict__ density) {
  const int64_t token = (static_cast<int64_t>(blockIdx.x) * kDensityThreads + threadIdx.x) / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (token >= batch * n) return;
  const int64_t b = token / n;
  const float* row = xf + token * d;
  const double* cs = colsum + b * d;
  const double den = denom[token];
  double acc = 0.0;
  for (int64_t c = lane; c < d; c += kWarp) acc += (static_cast<double>(row[c]) / den) * cs[c];
  for (int mask = kWarp / 2; mask >= 1; mask >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, mask);
  if (lane == 0) density[token] = static_cast<float>(acc);
}

// SPEC §2 step 4: nearest[i] = max over better j of sim[i, j], 0 where no j is better.
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

// SPEC §2 step 7: assign[i] = argmax_s sim[i, anchors[s]], ties to the lower slot.
struct AssignEpilogue {
  using State = ArgmaxState;
  int64_t n;
  int64_t* assign;  // (B, N)

  // Index 0, not a sentinel: a token whose similarities are all NaN (a NaN or inf feature, e.g. an fp16
  // overflow) never beats the initial state, and an out-of-range slot would make the size scatter_add_
  // below fail a device-side assert. Slot 0 is what the CPU kernel and the reference (argmax) give such a
  // row. Finite similarities always beat -inf, so every other row is unchanged.
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

// SPEC §2 step 6, one block per row, on the float32-rounded score the CPU ranks.
__global__ void __launch_bounds__(kTopkThreads)
    anchor_topk_kernel(const float* __restrict__ density, const float* __restrict__ nearest, int64_t n,
                       int64_t k, int64_t* __restrict__ anchors) {
  const float* dens = density + static_cast<int64_t>(blockIdx.x) * n;
  const float* near = nearest + static_cast<int64_t>(blockIdx.x) * n;
  block_topk_ascending<kTopkThreads>([&](int64_t i) { return anchor_key(dens, near, i); }, n, k,
                                     anchors + static_cast<int64_t>(blockIdx.x) * k);
}

// SPEC §2 step 8: merged[b, s] = mean of x over slot s, float32 accumulation in ascending token order
// (deterministic). `members` (B, N) lists each row's tokens sorted by slot, `start` (B, K) where each slot's
// run begins. Grid (K, B, ceil(D / kMeanThreads)).
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
  float acc = 0.f;
  for (int64_t m = 0; m < count; ++m) acc += x[mem[m] * d];
  merged[(b * k + slot) * d + c] = static_cast<scalar_t>(acc * (1.f / static_cast<float>(count)));  // as the CPU
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> anchor_merge_cuda(const at::Tensor& x,
                                                                             int64_t num_anchors,
                                                                             c10::string_view rule_name) {
  const AnchorRule rule = check_anchor_merge_args(x, num_anchors, rule_name);
  const at::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2), k = num_anchors;
  const auto long_opts = x.options().dtype(at::kLong);
  at::Tensor merged = at::empty({batch, k, d}, x.options());
  at::Tensor size = at::zeros({batch, k}, long_opts);
  at::Tensor assign = at::empty({batch, n}, long_opts);
  at::Tensor anchors = at::empty({batch, k}, long_opts);
  if (batch == 0) return {merged, size, assign, anchors};
  TORCH_CHECK(batch <= 65535, "anchor_merge: batch ", batch, " exceeds the CUDA grid limit 65535");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const auto f64 = x.options().dtype(at::kDouble);
  at::Tensor denom = at::empty({batch, n}, f64);
  at::Tensor xn = at::empty({batch, n, d}, x.options().dtype(at::kFloat));
  const int64_t warps_per_block = kDensityThreads / kWarp;
  const unsigned token_blocks = static_cast<unsigned>((batch * n + warps_per_block - 1) / warps_per_block);
  normalise_kernel<<<token_blocks, kDensityThreads, 0, stream>>>(xf.const_data_ptr<float>(), batch * n, d,
                                                                  denom.data_ptr<double>(), xn.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor colsum = at::empty({batch, d}, f64);
  colsum_kernel<<<dim3(static_cast<unsigned>((d + kDensityThreads - 1) / kDensityThreads), batch), kDensityThreads,
                  0, stream>>>(xf.const_data_ptr<float>(), denom.const_data_ptr<double>(), n, d,
                               colsum.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor density = at::empty({batch, n}, x.options().dtype(at::kFloat));
  density_kernel<<<token_blocks, kDensityThreads, 0, stream>>>(xf.const_data_ptr<float>(),
                                                                denom.const_data_ptr<double>(),
                                                                colsum.const_data_ptr<double>(), batch, n, d,
                                                                density.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor nearest = at::empty({batch, n}, x.options().dtype(at::kFloat));
  row_reduce_similarity_kernel<<<similarity_grid(batch, n), kSimThreads, 0, stream>>>(
      xn.const_data_ptr<float>(), n, xn.const_data_ptr<float>(), n, d,
      NearestBetterEpilogue{density.const_data_ptr<float>(), n, rule, nearest.data_ptr<float>()});
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  anchor_topk_kernel<<<static_cast<unsigned>(batch), kTopkThreads, 0, stream>>>(
      density.const_data_ptr<float>(), nearest.const_data_ptr<float>(), n, k, anchors.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor anchor_xn = xn.gather(1, anchors.unsqueeze(-1).expand({batch, k, d})).contiguous();
  row_reduce_similarity_kernel<<<similarity_grid(batch, n), kSimThreads, 0, stream>>>(
      xn.const_data_ptr<float>(), n, anchor_xn.const_data_ptr<float>(), k, d,
      AssignEpilogue{n, assign.data_ptr<int64_t>()});
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  assign.scatter_(1, anchors, at::arange(k, long_opts).expand({batch, k}));  // an anchor keeps its own slot

  size.scatter_add_(1, assign, at::ones_like(assign));
  // Tokens grouped by slot, ascending index within a slot (stable sort).
  const at::Tensor members = std::get<1>(at::sort(assign, /*stable=*/true, /*dim=*/1)).contiguous();
  const at::Tensor start = (size.cumsum(1) - size).contiguous();
  const dim3 mean_grid(static_cast<unsigned>(k), static_cast<unsigned>(batch),
                       static_cast<unsigned>((d + kMeanThreads - 1) / kMeanThreads));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "anchor_merge_cuda", [&] {
    segmented_mean_kernel<scalar_t><<<mean_grid, kMeanThreads, 0, stream>>>(
        xf.const_data_ptr<float>(), members.const_data_ptr<int64_t>(), start.const_data_ptr<int64_t>(),
        size.const_data_ptr<int64_t>(), n, k, d, merged.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {merged, size, assign, anchors};
}

at::Tensor divprune_indices_cuda(const at::Tensor& x, int64_t k);  // divprune_cuda.cu

TORCH_LIBRARY_IMPL(restore, CUDA, m) {
  m.impl("anchor_merge", &anchor_merge_cuda);
  m.impl("divprune_indices", &divprune_indices_cuda);
}

}  // namespace restore
