#pragma once
// What every calibrated_attention CUDA kernel reads (docs/ops.md §5), filled once by the op entry, and the
// launchers the op entry picks from. Host and device; no ATen types so the kernels stay light.
#include <cuda_runtime.h>
#include <cstdint>

#include "restore/score_bias.h"

namespace restore::attention {

struct AttentionParams {
  const void* q;  // (B, Lq, H, Dh), strides below in elements, last dim contiguous
  const void* k;  // (B, Lk, Hkv, Dh)
  const void* v;
  void* out;      // (B, Lq, H, Dh) contiguous
  int64_t q_batch_stride, q_row_stride, q_head_stride;
  int64_t k_batch_stride, k_row_stride, k_head_stride;
  int64_t v_batch_stride, v_row_stride, v_head_stride;

  const float* log_size;  // (B, Lk) contiguous, or null
  const int64_t* q_pos;   // (B, Lq, pos_axes) contiguous, or null; k_pos and table are null with it
  const int64_t* k_pos;   // (B, Lk, pos_axes) contiguous
  const float* table;     // (T,) for 1-D positions, (3, T) decay shares for M-RoPE
  int64_t table_len;      // T
  int pos_axes;           // 1: DistanceBias (docs/ops.md §5); 3: MropeDistanceBias (§5b)

  int batch, lq, lk, heads, kv_heads, head_dim;
  float scale;
  bool causal;

  // Decode with GQA: the query heads sharing a K/V head are stacked as rows of one tile (row r is query
  // r / group of head hk * group + r % group), so a K/V tile is read once per K/V head, not once per head.
  bool pack_gqa = false;

  // Flash-decoding: with num_splits > 1 each block covers tiles_per_split key tiles and writes its
  // normalised partial output and log-sum-exp here, row r = (b * Lq + i) * H + h, split-major.
  int num_splits = 1, tiles_per_split = 0;
  float* partial_out = nullptr;  // (num_splits, B * Lq * H, Dh)
  float* partial_lse = nullptr;  // (num_splits, B * Lq * H)
};

// Token `index` of a (rows, pos_axes) position array, as the position bias' Position type.
template <typename Position>
__device__ __forceinline__ Position position_at(const int64_t* pos, int64_t index);
template <>
__device__ __forceinline__ int64_t position_at<int64_t>(const int64_t* pos, int64_t index) {
  return pos[index];
}
template <>
__device__ __forceinline__ MropePosition position_at<MropePosition>(const int64_t* pos, int64_t index) {
  const int64_t* p = pos + 3 * index;
  return MropePosition{{p[0], p[1], p[2]}};
}

// Tensor-core path: Element is __half or __nv_bfloat16; one explicit instantiation per (head dim, dtype)
// in fwd_hdim*_*.cu. Returns false (launching nothing) when the device cannot hold its tiles, so the
// caller falls back to the SIMT kernel.
template <int kHeadDim, typename Element>
bool run_tensor_core_attention(AttentionParams params, cudaStream_t stream);

// Any head dim <= kSimtMaxHeadDim, any float dtype; float32 inputs and the fallback of the above.
constexpr int kSimtMaxHeadDim = 256;
template <typename scalar_t>
void run_simt_attention(const AttentionParams& params, cudaStream_t stream);

// Device-side assert that the table holds what the bias of its form admits (restore/score_bias.h): finite
// values (pos_axes 1), or decay shares in [-1, 1] with row maxima adding up to less than 2 (pos_axes 3).
void check_table_on_device(const float* table, int64_t table_len, int pos_axes, cudaStream_t stream);

// Device-side assert that log_size (count contiguous float32 values) holds no +inf or NaN; no host sync
// (log_size_check_kernel.h says why).
void check_log_size_on_device(const float* log_size, int64_t count, cudaStream_t stream);

// Merges the num_splits partial results of flash-decoding into params.out.
template <typename Element>
void run_combine_splits(const AttentionParams& params, cudaStream_t stream);

}  // namespace restore::attention
