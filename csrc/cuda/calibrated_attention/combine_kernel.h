#pragma once
// Flash-decoding combine (combine_splits.cu launches it): out = sum_s exp(lse_s - lse) * out_s with
// lse = log sum_s exp(lse_s). A split that saw no visible key has lse_s = -inf and weighs zero; a row where
// every split has -inf is zeros.
#include <cstdint>
#include <type_traits>

#include "cuda/calibrated_attention/attention_params.h"
#include "cuda/calibrated_attention/sm80_ptx.h"
#include "restore/online_softmax.h"

namespace restore::attention {

constexpr int kCombineThreads = 128;
constexpr int kMaxSplits = 128;  // choose_num_splits never exceeds it

template <typename Element>
__device__ __forceinline__ Element to_element(float x) {
  if constexpr (std::is_same_v<Element, __half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

// One block per output row r = (b * Lq + i) * H + h.
template <typename Element>
__global__ void __launch_bounds__(kCombineThreads) combine_splits_kernel(const AttentionParams p, int64_t rows) {
  __shared__ float weight[kMaxSplits];
  const int64_t r = blockIdx.x;
  if (threadIdx.x < 32) {
    float m = -INFINITY;
    for (int s = threadIdx.x; s < p.num_splits; s += 32) m = fmaxf(m, p.partial_lse[s * rows + r]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const float offset = softmax_offset(m);
    float total = 0.f;
    for (int s = threadIdx.x; s < p.num_splits; s += 32) {
      weight[s] = expf(p.partial_lse[s * rows + r] - offset);
      total += weight[s];
    }
    for (int o = 16; o > 0; o >>= 1) total += __shfl_xor_sync(0xffffffffu, total, o);
    const float inv = normalizer(total);
    __syncwarp();
    for (int s = threadIdx.x; s < p.num_splits; s += 32) weight[s] *= inv;
  }
  __syncthreads();
  Element* out = static_cast<Element*>(p.out) + r * p.head_dim;
  for (int d = threadIdx.x; d < p.head_dim; d += kCombineThreads) {
    float x = 0.f;
    for (int s = 0; s < p.num_splits; ++s) x += weight[s] * p.partial_out[(s * rows + r) * p.head_dim + d];
    out[d] = to_element<Element>(x);
  }
}

}  // namespace restore::attention
