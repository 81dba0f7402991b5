// divprune_indices on the GPU (contract: restore_ext.reference.divprune_indices). Two launches:
//  1. the first pick's nearest-other similarity of every token, by the fused tiled similarity kernel
//     (never N x N; fixed summation order, so duplicate tokens tie exactly);
//  2. one cooperative kernel runs all k greedy steps. Each batch row is split over `blocks_per_row` blocks;
//     a block keeps its tokens' running max similarity to the chosen set on chip (shared memory; global
//     memory when a block's share exceeds kOnChipTokens) and, per step, folds in the similarity to the
//     newly chosen token (one warp per token) and proposes its best candidate; after a grid-wide barrier
//     every block reduces the row's proposals to the same next pick.
// The pick order (farther first, ties to the lower index) is restore/divprune_math.h, as on the CPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cooperative_groups.h>

#include "cuda/similarity_tiles.cuh"
#include "op_checks.h"
#include "restore/divprune_math.h"

namespace restore {
namespace {

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

__global__ void __launch_bounds__(kGreedyThreads) divprune_greedy_kernel(GreedyArgs p) {
  extern __shared__ float near_smem[];
  __shared__ Candidate scratch[kGreedyThreads / kWarp];
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

}  // namespace

at::Tensor divprune_indices_cuda(const at::Tensor& x, int64_t k) {
  check_divprune_indices_args(x, k);
  const at::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2);
  const auto long_opts = x.options().dtype(at::kLong);
  if (batch == 0) return at::empty({0, k}, long_opts);
  if (k == n) return at::arange(n, long_opts).expand({batch, n}).contiguous();  // every token, ascending
  TORCH_CHECK(batch <= 65535, "divprune_indices: batch ", batch, " exceeds the CUDA grid limit 65535");
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  const at::Tensor xf = x.to(at::kFloat).contiguous();
  const at::Tensor xn = (xf / xf.norm(2, {2}, /*keepdim=*/true).clamp_min(1e-12)).contiguous();
  at::Tensor near_first = at::empty({batch, n}, x.options().dtype(at::kFloat));
  row_reduce_similarity_kernel<<<similarity_grid(batch, n), kSimThreads, 0, stream>>>(
      xn.const_data_ptr<float>(), n, xn.const_data_ptr<float>(), n, d,
      NearestOtherEpilogue{n, near_first.data_ptr<float>()});
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  // Cooperative launch: every block of the grid must be resident at once. Split each row over as many
  // blocks as fit (at least kMinTokensPerBlock tokens each), and the batch over several launches if needed.
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(prop->cooperativeLaunch, "divprune_indices: the CUDA device does not support cooperative launches");
  auto capacity = [&](int64_t blocks_per_row) {
    const int64_t chunk = (n + blocks_per_row - 1) / blocks_per_row;
    const size_t smem = chunk <= kOnChipTokens ? size_t(chunk) * sizeof(float) : 0;
    int per_sm = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, divprune_greedy_kernel, kGreedyThreads,
                                                                 smem));
    return int64_t(per_sm) * prop->multiProcessorCount;
  };
  int64_t blocks_per_row = std::max<int64_t>(1, std::min<int64_t>((n + kMinTokensPerBlock - 1) / kMinTokensPerBlock,
                                                                  capacity(1) / batch));
  int64_t cap = capacity(blocks_per_row);
  TORCH_CHECK(cap >= blocks_per_row, "divprune_indices: no cooperative grid fits on this device");
  const int64_t rows_per_launch = std::min<int64_t>(batch, cap / blocks_per_row);
  const int64_t chunk = (n + blocks_per_row - 1) / blocks_per_row;
  const bool on_chip = chunk <= kOnChipTokens;

  at::Tensor order = at::empty({batch, k}, long_opts);
  at::Tensor near_global = at::empty({on_chip ? 0 : rows_per_launch, n}, x.options().dtype(at::kFloat));
  at::Tensor cand_near = at::empty({2 * rows_per_launch * blocks_per_row}, x.options().dtype(at::kFloat));
  at::Tensor cand_index = at::empty({2 * rows_per_launch * blocks_per_row}, long_opts);
  for (int64_t row0 = 0; row0 < batch; row0 += rows_per_launch) {
    const int64_t rows = std::min(rows_per_launch, batch - row0);
    GreedyArgs args{xn.const_data_ptr<float>() + row0 * n * d,
                    near_first.const_data_ptr<float>() + row0 * n,
                    on_chip ? nullptr : near_global.data_ptr<float>(),
                    cand_near.data_ptr<float>(),
                    cand_index.data_ptr<int64_t>(),
                    order.data_ptr<int64_t>() + row0 * k,
                    rows, n, d, k, chunk,
                    static_cast<int>(blocks_per_row),
                    on_chip};
    void* kernel_args[] = {&args};
    C10_CUDA_CHECK(cudaLaunchCooperativeKernel(
        reinterpret_cast<void*>(divprune_greedy_kernel), dim3(static_cast<unsigned>(blocks_per_row), rows),
        dim3(kGreedyThreads), kernel_args, on_chip ? size_t(chunk) * sizeof(float) : 0, stream));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return std::get<0>(at::sort(order, /*stable=*/false, /*dim=*/1));
}

}  // namespace restore
