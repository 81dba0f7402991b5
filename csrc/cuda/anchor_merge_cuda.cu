// anchor_merge on the GPU (docs/ops.md §2), a handful of launches on the current stream and no host sync:
//   normalise, column sums and density_i = xn_i . sum_j xn_j in float64, density rounded to float32 (as the
//   CPU kernel and the reference) -> nearest better similarity (fused tiled kernel, never N x N) -> top-K of
//   the float32-rounded score by radix select (one block per row) -> token -> anchor argmax (fused tiled
//   kernel) -> per-slot sizes and segmented means (float64 sums).
// The ranking, the better-rule and the score formula are restore/topk_order.h and restore/anchor_math.h,
// the very code the CPU kernel runs.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/anchor_merge_kernels.cuh"
#include "op_checks.h"

namespace restore {

using namespace anchor_kernels;

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
  at::Tensor inv_norm = at::empty({batch, n}, f64);
  at::Tensor xn = at::empty({batch, n, d}, x.options().dtype(at::kFloat));
  const int64_t warps_per_block = kDensityThreads / kWarp;
  const unsigned token_blocks = static_cast<unsigned>((batch * n + warps_per_block - 1) / warps_per_block);
  normalise_kernel<<<token_blocks, kDensityThreads, 0, stream>>>(xf.const_data_ptr<float>(), batch * n, d,
                                                                  inv_norm.data_ptr<double>(), xn.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor colsum = at::empty({batch, d}, f64);
  colsum_kernel<<<dim3(static_cast<unsigned>((d + kDensityThreads - 1) / kDensityThreads), batch), kDensityThreads,
                  0, stream>>>(xf.const_data_ptr<float>(), inv_norm.const_data_ptr<double>(), n, d,
                               colsum.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor density = at::empty({batch, n}, x.options().dtype(at::kFloat));
  density_kernel<<<token_blocks, kDensityThreads, 0, stream>>>(xf.const_data_ptr<float>(),
                                                                inv_norm.const_data_ptr<double>(),
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

TORCH_LIBRARY_IMPL(restore, CUDA, m) { m.impl("anchor_merge", &anchor_merge_cuda); }

}  // namespace restore
