#pragma once
// Launch template of the tensor-core kernel, included only by the fwd_hdim*_*.cu instantiation files:
// tile sizes per head dim, the opt-in to more than 48 KiB of shared memory, and flash-decoding splits.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "cuda/calibrated_attention/fwd_kernel.h"

namespace restore::attention {

// Flash-decoding: a few query rows give too few blocks to fill the GPU, so the keys are split until there
// are about two blocks per SM (at most 128 splits, at least one key tile each).
inline int choose_num_splits(int blocks, int key_tiles, int sm_count) {
  if (blocks >= sm_count || key_tiles <= 1) return 1;
  const int want = (2 * sm_count + blocks - 1) / blocks;
  return std::max(1, std::min({want, key_tiles, 128}));
}

// The kernel of the params' position form and its shared memory.
template <typename Traits, typename PositionBias>
void launch_fwd_kernel(const AttentionParams& params, dim3 grid, cudaStream_t stream) {
  constexpr size_t smem = Traits::template smem_bytes<typename PositionBias::Position>();
  auto kernel = calibrated_attention_fwd_kernel<Traits, PositionBias>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  kernel<<<grid, Traits::kThreads, smem, stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <int kHeadDim, typename Element>
bool run_tensor_core_attention(AttentionParams params, cudaStream_t stream) {
  using Traits = FwdTraitsFor<kHeadDim, Element>;
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  const size_t smem = params.pos_axes == 3 ? Traits::template smem_bytes<MropePosition>()
                                           : Traits::template smem_bytes<int64_t>();
  if (prop->major < 8 || smem > prop->sharedMemPerBlockOptin) return false;

  const bool decode = params.lq <= 16;
  const int group = params.heads / params.kv_heads;
  params.pack_gqa = decode && group > 1;
  const int rows = params.pack_gqa ? params.lq * group : params.lq;
  const int head_blocks = params.pack_gqa ? params.kv_heads : params.heads;
  const int m_blocks = (rows + Traits::kBlockM - 1) / Traits::kBlockM;
  at::Tensor partial_out, partial_lse;
  params.num_splits = 1;
  if (decode) {
    const int key_tiles = (params.lk + Traits::kBlockN - 1) / Traits::kBlockN;
    const int splits =
        choose_num_splits(params.batch * head_blocks * m_blocks, key_tiles, prop->multiProcessorCount);
    if (splits > 1) {
      params.tiles_per_split = (key_tiles + splits - 1) / splits;
      params.num_splits = (key_tiles + params.tiles_per_split - 1) / params.tiles_per_split;
      const int64_t out_rows = int64_t(params.batch) * params.lq * params.heads;
      // The op entry's CUDAGuard made q's device current.
      const auto opts = at::TensorOptions().device(at::kCUDA, at::cuda::current_device()).dtype(at::kFloat);
      partial_out = at::empty({params.num_splits, out_rows, kHeadDim}, opts);
      partial_lse = at::empty({params.num_splits, out_rows}, opts);
      params.partial_out = partial_out.data_ptr<float>();
      params.partial_lse = partial_lse.data_ptr<float>();
    }
  }

  const dim3 grid(static_cast<unsigned>(m_blocks * params.num_splits), head_blocks, params.batch);
  if (params.pos_axes == 3)
    launch_fwd_kernel<Traits, MropeDistanceBias>(params, grid, stream);
  else
    launch_fwd_kernel<Traits, DistanceBias>(params, grid, stream);
  if (params.num_splits > 1) run_combine_splits<Element>(params, stream);
  // partial_out / partial_lse are freed here, which is safe: the caching allocator reuses a block only
  // for work queued later on the same stream.
  return true;
}

}  // namespace restore::attention

#define RESTORE_INSTANTIATE_TENSOR_CORE_ATTENTION(HEAD_DIM, ELEMENT) \
  template bool restore::attention::run_tensor_core_attention<HEAD_DIM, ELEMENT>(  \
      restore::attention::AttentionParams, cudaStream_t);
