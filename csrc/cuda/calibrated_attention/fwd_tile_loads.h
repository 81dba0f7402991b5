#pragma once
// The tensor-core kernel's loads into shared memory, all by cp.async (16-byte chunks, rows past the end
// zero-filled): the block's Q tile once, then per key tile its K and V rows with the per-key bias inputs.
#include <cstdint>

#include "cuda/calibrated_attention/attention_params.h"
#include "cuda/calibrated_attention/fwd_block.h"
#include "cuda/calibrated_attention/fwd_traits.h"
#include "cuda/calibrated_attention/sm80_ptx.h"

namespace restore::attention {

// Copies rows [0, rows_valid) of a (rows x kHeadDim) tile whose row r starts at src + r * row_stride; the
// other rows of the tile become zeros. Any row stride works, 0 included (K or V expanded along L: every row
// reads the same memory).
template <typename Traits, int kRows>
__device__ __forceinline__ void load_tile(typename Traits::Element* dst, const typename Traits::Element* src,
                                          int64_t row_stride, int rows_valid) {
  for (int c = threadIdx.x; c < kRows * Traits::kChunksPerRow; c += Traits::kThreads) {
    const int r = c / Traits::kChunksPerRow, col = (c % Traits::kChunksPerRow) * 8;
    const bool valid = r < rows_valid;
    // An invalid row reads nothing, but still needs an address: row 0 exists whenever a tile is loaded.
    cp_async_16(dst + r * Traits::kRowStride + col, src + (valid ? r * row_stride : 0) + col, valid);
  }
}

// The block's kBlockM rows of Q; with packed GQA, consecutive rows are the heads of one query.
template <typename Traits, typename Position>
__device__ __forceinline__ void load_q_tile(const FwdSmem<Traits, Position>& sm, const AttentionParams& p,
                                            const FwdBlock& blk) {
  using Element = typename Traits::Element;
  const Element* q_batch = static_cast<const Element*>(p.q) + blk.b * p.q_batch_stride;
  for (int c = threadIdx.x; c < Traits::kBlockM * Traits::kChunksPerRow; c += Traits::kThreads) {
    const int r = blk.m0 + c / Traits::kChunksPerRow, col = (c % Traits::kChunksPerRow) * 8;
    const bool valid = r < blk.rows_total;
    const int rr = valid ? r : blk.m0;  // padding rows read nothing but need an address
    cp_async_16(sm.q_tile + (r - blk.m0) * Traits::kRowStride + col,
                q_batch + blk.query_of_row(rr) * p.q_row_stride + blk.head_of_row(rr) * p.q_head_stride + col, valid);
  }
}

// Key tile `tile` into stage `stage`: K and V rows, and each key's k_pos and log_size (0 where absent or
// past Lk). The plain shared stores of the bias inputs are published by the same __syncthreads that
// publishes the cp.async tile.
template <typename Traits, typename Position>
__device__ __forceinline__ void load_kv_tile(const FwdSmem<Traits, Position>& sm, const AttentionParams& p,
                                             const FwdBlock& blk, int tile, int stage) {
  using Element = typename Traits::Element;
  constexpr int BN = Traits::kBlockN;
  const Element* k_base = static_cast<const Element*>(p.k) + blk.b * p.k_batch_stride + blk.hk * p.k_head_stride;
  const Element* v_base = static_cast<const Element*>(p.v) + blk.b * p.v_batch_stride + blk.hk * p.v_head_stride;
  const int j0 = tile * BN, rows = min(BN, p.lk - j0);
  load_tile<Traits, BN>(sm.k(stage), k_base + j0 * p.k_row_stride, p.k_row_stride, rows);
  load_tile<Traits, BN>(sm.v(stage), v_base + j0 * p.v_row_stride, p.v_row_stride, rows);
  for (int c = threadIdx.x; c < BN; c += Traits::kThreads) {
    const int j = j0 + c;
    const bool in = j < p.lk;
    sm.k_pos(stage)[c] = (p.k_pos && in) ? position_at<Position>(p.k_pos, int64_t(blk.b) * p.lk + j) : Position{};
    sm.log_size(stage)[c] = (p.log_size && in) ? p.log_size[int64_t(blk.b) * p.lk + j] : 0.f;
  }
}

}  // namespace restore::attention
