// Launcher of the SIMT calibrated-attention kernel (simt_kernel.h) for float32, float16 and bfloat16.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/calibrated_attention/simt_kernel.h"

namespace restore::attention {

template <typename scalar_t>
void run_simt_attention(const AttentionParams& params, cudaStream_t stream) {
  const dim3 grid((params.lq + kWarpsPerBlock - 1) / kWarpsPerBlock, params.heads, params.batch);
  if (params.pos_axes == 3)
    simt_attention_kernel<scalar_t, MropeDistanceBias><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(params);
  else
    simt_attention_kernel<scalar_t, DistanceBias><<<grid, 32 * kWarpsPerBlock, 0, stream>>>(params);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void run_simt_attention<float>(const AttentionParams&, cudaStream_t);
template void run_simt_attention<c10::Half>(const AttentionParams&, cudaStream_t);
template void run_simt_attention<c10::BFloat16>(const AttentionParams&, cudaStream_t);

}  // namespace restore::attention
