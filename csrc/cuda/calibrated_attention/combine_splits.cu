// Launcher of the flash-decoding combine kernel (combine_kernel.h).
#include <c10/cuda/CUDAException.h>

#include "cuda/calibrated_attention/combine_kernel.h"

namespace restore::attention {

template <typename Element>
void run_combine_splits(const AttentionParams& params, cudaStream_t stream) {
  const int64_t rows = int64_t(params.batch) * params.lq * params.heads;
  combine_splits_kernel<Element><<<static_cast<unsigned>(rows), kCombineThreads, 0, stream>>>(params, rows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template void run_combine_splits<__half>(const AttentionParams&, cudaStream_t);
template void run_combine_splits<__nv_bfloat16>(const AttentionParams&, cudaStream_t);

}  // namespace restore::attention
