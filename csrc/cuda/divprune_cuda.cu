// divprune_indices on the GPU (contract: restore_ext.reference.divprune_indices). Two launches:
//  1. the first pick's nearest-other similarity of every token, by the fused tiled similarity kernel
//     (never N x N; fixed summation order, so duplicate tokens tie exactly);
//  2. one cooperative kernel for all k greedy steps (cuda/divprune_greedy.cuh), sized here so that every
//     block of the grid is resident at once.
// The pick order (farther first, ties to the lower index) is restore/divprune_math.h, as on the CPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/divprune_greedy.cuh"
#include "cuda/similarity_tiles.cuh"
#include "op_checks.h"
#include "unit_tokens.h"

namespace restore {

using divprune::GreedyArgs;
using divprune::kGreedyThreads;
using divprune::kMinTokensPerBlock;
using divprune::kOnChipTokens;
using divprune::NearestOtherEpilogue;

namespace {

__global__ void __launch_bounds__(kGreedyThreads) divprune_greedy_kernel(GreedyArgs p) {
  extern __shared__ float near_smem[];
  __shared__ divprune::Candidate scratch[kGreedyThreads / divprune::kWarp];
  divprune::divprune_greedy_block(p, near_smem, scratch);
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

  const at::Tensor xn = unit_tokens(x.to(at::kFloat), 2);
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

TORCH_LIBRARY_IMPL(restore, CUDA, m) { m.impl("divprune_indices", &divprune_indices_cuda); }

}  // namespace restore
