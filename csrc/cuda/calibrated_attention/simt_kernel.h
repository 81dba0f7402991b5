#pragma once
// Calibrated attention without tensor cores (simt_attention.cu launches it): float32 inputs, and head dims
// or devices the tensor-core kernel does not cover. One warp per (query, head, batch) walks the visible
// keys with a scalar online softmax; each lane holds Dh/32 columns of q and of the output. Simple and
// exact rather than fast.
#include <cstdint>

#include "cuda/calibrated_attention/attention_params.h"
#include "restore/causal_mask.h"
#include "restore/online_softmax.h"
#include "restore/score_bias.h"

namespace restore::attention {

constexpr int kWarpsPerBlock = 4;
constexpr int kColsPerLane = kSimtMaxHeadDim / 32;

// Grid: x = ceil(Lq / kWarpsPerBlock), y = head, z = batch. PositionBias: DistanceBias or MropeDistanceBias.
template <typename scalar_t, typename PositionBias>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) simt_attention_kernel(const AttentionParams p) {
  const int lane = threadIdx.x % 32;
  const int i = blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int h = blockIdx.y, b = blockIdx.z;
  if (i >= p.lq) return;  // a whole warp leaves together, so the shuffles below stay full-warp
  const int hk = h / (p.heads / p.kv_heads);
  const scalar_t* q = static_cast<const scalar_t*>(p.q) + b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride;
  const scalar_t* k = static_cast<const scalar_t*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
  const scalar_t* v = static_cast<const scalar_t*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;

  float qf[kColsPerLane], acc[kColsPerLane];
#pragma unroll
  for (int u = 0; u < kColsPerLane; ++u) {
    const int d = lane + 32 * u;
    qf[u] = d < p.head_dim ? static_cast<float>(q[d]) : 0.f;
    acc[u] = 0.f;
  }
  using Position = typename PositionBias::Position;
  const Position q_pos = p.q_pos ? position_at<Position>(p.q_pos, int64_t(b) * p.lq + i) : Position{};
  const int key_end = int(visible_key_end(i, p.lq, p.lk, p.causal));  // keys past it are never read
  const PositionBias position{p.table, p.table_len};

  OnlineSoftmaxRow softmax;
  for (int j = 0; j < key_end; ++j) {
    // S = q . k_j, summed over the warp
    const scalar_t* kj = k + j * p.k_row_stride;
    float dot = 0.f;
#pragma unroll
    for (int u = 0; u < kColsPerLane; ++u) {
      const int d = lane + 32 * u;
      if (d < p.head_dim) dot += qf[u] * static_cast<float>(kj[d]);
    }
    for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    // Bias (the mask is the loop bound)
    float x = dot * p.scale;
    if (p.log_size) x += p.log_size[int64_t(b) * p.lk + j];
    if (position.enabled()) x += position(q_pos, position_at<Position>(p.k_pos, int64_t(b) * p.lk + j));
    // Softmax rescale, one key at a time, then O += p v_j
    const OnlineSoftmaxRow::Step step = softmax.rescale(x);
    const float weight = expf(x - step.offset);
    softmax.add(step, weight);
    const scalar_t* vj = v + j * p.v_row_stride;
#pragma unroll
    for (int u = 0; u < kColsPerLane; ++u) {
      const int d = lane + 32 * u;
      if (d < p.head_dim) acc[u] = acc[u] * step.factor + weight * static_cast<float>(vj[d]);
    }
  }
  const float inv = normalizer(softmax.sum);
  scalar_t* out = static_cast<scalar_t*>(p.out) + ((int64_t(b) * p.lq + i) * p.heads + h) * p.head_dim;
#pragma unroll
  for (int u = 0; u < kColsPerLane; ++u) {
    const int d = lane + 32 * u;
    if (d < p.head_dim) out[d] = static_cast<scalar_t>(acc[u] * inv);
  }
}

}  // namespace restore::attention
