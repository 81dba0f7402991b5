#pragma once
// The device-side value check of calibrated_attention's log_size (log_size_check.cu launches it): +inf or
// NaN would turn every output of the row into NaN, so the op refuses them (restore::log_size_allowed, the
// predicate the CPU check uses). Reading the values on the host would cost a device sync per call -- per layer
// and decode step in an LLM -- so the check is a device assert instead, torch's way for value errors found in
// kernels (index out of range, ...): the message is printed by the kernel, and the next synchronising CUDA
// call raises "device-side assert triggered"; as with any device assert, the CUDA context cannot be used
// afterwards.
#include <cstdint>

#include "restore/score_bias.h"

#ifndef RESTORE_DEVICE_ASSERT  // the CPU emulation (tests/cuda_emulation) defines its own
#include <c10/macros/Macros.h>
#define RESTORE_DEVICE_ASSERT(cond, msg) CUDA_KERNEL_ASSERT_MSG(cond, msg)
#endif

namespace restore::attention {

constexpr int kLogSizeCheckThreads = 256;

// Grid: ceil(count / kLogSizeCheckThreads) blocks, grid-stride so any count fits the grid it is given.
__global__ void __launch_bounds__(kLogSizeCheckThreads)
    log_size_check_kernel(const float* __restrict__ log_size, int64_t count) {
  const int64_t stride = int64_t(gridDim.x) * kLogSizeCheckThreads;
  for (int64_t t = int64_t(blockIdx.x) * kLogSizeCheckThreads + threadIdx.x; t < count; t += stride)
    RESTORE_DEVICE_ASSERT(log_size_allowed(log_size[t]),
                          "calibrated_attention: log_size must hold finite values or -inf (a masked key), "
                          "got +inf or NaN");
}

}  // namespace restore::attention
