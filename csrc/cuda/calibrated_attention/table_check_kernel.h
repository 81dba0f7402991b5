#pragma once
// The device-side value check of calibrated_attention's table (table_check.cu launches it), a device assert
// for the reason log_size_check_kernel.h gives (no host sync per layer and decode step). What a table may
// hold is restore/score_bias.h's, the predicates the CPU check uses: finite values or -inf for a (T,) table; for a
// (3, T) table of M-RoPE decay shares, every entry in [-1, 1] and row maxima adding up to less than 2, so
// log(2 - decay) is finite for any positions.
#include <cstdint>

#include "restore/score_bias.h"

#ifndef RESTORE_DEVICE_ASSERT  // the CPU emulation (tests/cuda_emulation) defines its own
#include <c10/macros/Macros.h>
#define RESTORE_DEVICE_ASSERT(cond, msg) CUDA_KERNEL_ASSERT_MSG(cond, msg)
#endif

namespace restore::attention {

constexpr int kTableCheckThreads = 256;

// One block of kTableCheckThreads threads; axes is 1 or 3, the table (axes, len) contiguous.
__global__ void __launch_bounds__(kTableCheckThreads)
    table_check_kernel(const float* __restrict__ table, int64_t len, int axes) {
  __shared__ float maxima[3][kTableCheckThreads];
  float local[3] = {-1.f, -1.f, -1.f};
  for (int a = 0; a < axes; ++a)
    for (int64_t d = threadIdx.x; d < len; d += kTableCheckThreads) {
      const float x = table[a * len + d];
      if (axes == 1) {
        RESTORE_DEVICE_ASSERT(distance_table_entry_allowed(x),
                              "calibrated_attention: table must hold finite values or -inf, got +inf or NaN");
      } else {
        RESTORE_DEVICE_ASSERT(mrope_share_allowed(x),
                              "calibrated_attention: an M-RoPE table holds decay shares in [-1, 1]");
        local[a] = x > local[a] ? x : local[a];
      }
    }
  if (axes == 1) return;  // uniform across the block: no barrier below is skipped by only some threads
  for (int a = 0; a < 3; ++a) maxima[a][threadIdx.x] = local[a];
  __syncthreads();
  for (int stride = kTableCheckThreads / 2; stride > 0; stride >>= 1) {
    if (int(threadIdx.x) < stride)
      for (int a = 0; a < 3; ++a) {
        const float other = maxima[a][threadIdx.x + stride];
        maxima[a][threadIdx.x] = other > maxima[a][threadIdx.x] ? other : maxima[a][threadIdx.x];
      }
    __syncthreads();
  }
  if (threadIdx.x == 0)
    RESTORE_DEVICE_ASSERT(mrope_maxima_allowed(maxima[0][0], maxima[1][0], maxima[2][0]),
                          "calibrated_attention: the row maxima of an M-RoPE table must add up to less than 2");
}

}  // namespace restore::attention
