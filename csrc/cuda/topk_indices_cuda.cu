// topk_indices on the GPU (SPEC §1): one thread block per row, one launch for the batch. The k-th best
// key is found by an 8-bit-digit radix select over the order-preserving keys of restore/topk_order.h
// (so NaN and -0.0 rank exactly as on the CPU); a final pass in index order emits every key above it and
// the lowest-index keys equal to it, which gives ascending output and ties to the lower index for free.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_scan.cuh>

#include "op_checks.h"
#include "restore/topk_order.h"

namespace restore {
namespace {

constexpr int kThreads = 512;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    topk_indices_kernel(const scalar_t* __restrict__ scores, int64_t n, int64_t k, int64_t* __restrict__ out) {
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ unsigned int hist[256];
  __shared__ uint32_t chosen_prefix;
  __shared__ int64_t chosen_remaining;

  const scalar_t* row = scores + static_cast<int64_t>(blockIdx.x) * n;
  int64_t* row_out = out + static_cast<int64_t>(blockIdx.x) * k;

  // Invariant: the k-th best key starts with `prefix` on the bits in `mask`, and `remaining` of the top k
  // are still to be found among the keys with that prefix.
  uint32_t prefix = 0, mask = 0;
  int64_t remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += kThreads) hist[d] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const uint32_t key = score_key(static_cast<float>(row[i]));
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t rem = remaining;
      int digit = 255;
      for (; digit > 0 && hist[digit] < rem; --digit) rem -= hist[digit];
      chosen_prefix = prefix | (static_cast<uint32_t>(digit) << shift);
      chosen_remaining = rem;
    }
    __syncthreads();
    prefix = chosen_prefix;
    remaining = chosen_remaining;
    mask |= 0xffu << shift;
  }
  const uint32_t threshold = prefix;  // the k-th best key; `remaining` of the keys equal to it are kept

  int64_t equal_seen = 0, written = 0;
  for (int64_t base = 0; base < n && written < k; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const uint32_t key = i < n ? score_key(static_cast<float>(row[i])) : 0u;
    const bool valid = i < n;
    const int is_equal = valid && key == threshold;
    int equal_rank, equal_total;
    BlockScan(scan_storage).ExclusiveSum(is_equal, equal_rank, equal_total);
    __syncthreads();
    const int take = valid && (key > threshold || (is_equal && equal_seen + equal_rank < remaining));
    int slot, taken;
    BlockScan(scan_storage).ExclusiveSum(take, slot, taken);
    __syncthreads();
    if (take) row_out[written + slot] = i;
    equal_seen += equal_total;
    written += taken;
  }
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
