// Launcher of the device-side table check (table_check_kernel.h): queued on the op's stream before the
// attention kernels, no host sync.
#include <c10/cuda/CUDAException.h>

#include "cuda/calibrated_attention/attention_params.h"
#include "cuda/calibrated_attention/table_check_kernel.h"

namespace restore::attention {

void check_table_on_device(const float* table, int64_t table_len, int pos_axes, cudaStream_t stream) {
  table_check_kernel<<<1, kTableCheckThreads, 0, stream>>>(table, table_len, pos_axes);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace restore::attention
