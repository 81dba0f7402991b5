// topk_indices on the GPU (docs/ops.md §1): one thread block per row (cuda/block_topk.cuh), one launch for the
// batch; the keys of restore/topk_order.h make NaN and -0.0 rank exactly as on the CPU.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/block_topk.cuh"
#include "op_checks.h"
#include "restore/topk_order.h"

namespace restore {
namespace {

constexpr int kThreads = 512;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    topk_indices_kernel(const scalar_t* __restrict__ scores, int64_t n, int64_t k, int64_t* __restrict__ out) {
  const scalar_t* row = scores + static_cast<int64_t>(blockIdx.x) * n;
  block_topk_ascending<kThreads>([&](int64_t i) { return score_key(static_cast<float>(row[i])); }, n, k,
                                 out + static_cast<int64_t>(blockIdx.x) * k);
}

at::Tensor topk_indices_cuda(const at::Tensor& scores, int64_t k) {
  check_topk_indices_args(scores, k);
  const at::cuda::CUDAGuard guard(scores.device());
  const int64_t batch = scores.size(0), n = scores.size(1);
  at::Tensor out = at::empty({batch, k}, scores.options().dtype(at::kLong));
  if (batch == 0) return out;
  TORCH_CHECK(batch <= 0x7fffffff, "topk_indices: batch ", batch, " exceeds the CUDA grid limit 2^31-1");
  const at::Tensor s = scores.contiguous();
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "topk_indices_cuda", [&] {
    topk_indices_kernel<scalar_t><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(
        s.const_data_ptr<scalar_t>(), n, k, out.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(restore, CUDA, m) { m.impl("topk_indices", &topk_indices_cuda); }

}  // namespace restore
