#pragma once
// The tensor-core kernel's online-softmax step on the score fragment (FlashAttention-2's
// softmax_rescale_o): per row, the tile maximum over the row's four threads, P = exp(S - offset) in place,
// and the row's sum and output accumulator moved to the new maximum. The step itself is
// restore/online_softmax.h, as on the CPU and in the SIMT kernel.
#include <cmath>

#include "cuda/calibrated_attention/fwd_gemm.h"
#include "cuda/calibrated_attention/sm80_ptx.h"
#include "restore/online_softmax.h"

namespace restore::attention {

// A row's columns live on the four consecutive lanes with the same g = lane / 4.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// softmax[hh] is the thread's share of row hh (g, g + 8): the maximum is the whole row's, the sum only this
// thread's columns (quad_sum at the end, fwd_epilogue.h).
template <typename Traits>
__device__ __forceinline__ void softmax_rescale_o(OnlineSoftmaxRow (&softmax)[2], ScoreFragment<Traits>& s,
                                                  OutputFragment<Traits>& acc) {
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    float tile_max = -INFINITY;
#pragma unroll
    for (int n = 0; n < Traits::kBlockN / 8; ++n) tile_max = fmaxf(tile_max, fmaxf(s[n][2 * hh], s[n][2 * hh + 1]));
    const OnlineSoftmaxRow::Step step = softmax[hh].rescale(quad_max(tile_max));
    float sum = 0.f;
#pragma unroll
    for (int n = 0; n < Traits::kBlockN / 8; ++n)
#pragma unroll
      for (int e = 2 * hh; e < 2 * hh + 2; ++e) {
        s[n][e] = expf(s[n][e] - step.offset);
        sum += s[n][e];
      }
    softmax[hh].add(step, sum);
#pragma unroll
    for (int n = 0; n < Traits::kHeadDim / 8; ++n) {
      acc[n][2 * hh] *= step.factor;
      acc[n][2 * hh + 1] *= step.factor;
    }
  }
}

}  // namespace restore::attention
