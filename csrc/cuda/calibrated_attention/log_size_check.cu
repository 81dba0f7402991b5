// Launcher of the device-side log_size check (log_size_check_kernel.h): queued on the op's stream before the
// attention kernels, no host sync.
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "cuda/calibrated_attention/attention_params.h"
#include "cuda/calibrated_attention/log_size_check_kernel.h"

namespace restore::attention {

void check_log_size_on_device(const float* log_size, int64_t count, cudaStream_t stream) {
  if (count == 0) return;
  const int64_t blocks = std::min<int64_t>((count + kLogSizeCheckThreads - 1) / kLogSizeCheckThreads, 1 << 16);
  log_size_check_kernel<<<static_cast<unsigned>(blocks), kLogSizeCheckThreads, 0, stream>>>(log_size, count);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace restore::attention
