#pragma once
// Which query rows and key tiles one block of the tensor-core kernel owns, and the two rows each thread
// holds in the mma accumulator layout. Grid: x = row tile * num_splits + split, y = head (K/V head with
// pack_gqa), z = batch.
#include <cstdint>

#include "cuda/calibrated_attention/attention_params.h"
#include "cuda/calibrated_attention/sm80_ptx.h"
#include "restore/causal_mask.h"

namespace restore::attention {

struct FwdBlock {
  int b, hk, group, split;
  int m0;          // first row of the block's tile
  int rows_total;  // Lq, or Lq * group when the heads of a group are packed as rows (decode with GQA)
  bool pack_gqa;
  int tile_begin, tile_end;  // key tiles this block (this split) visits

  // Row r is query r / group of head hk * group + r % group when packed, query r of head blockIdx.y if not.
  __device__ int query_of_row(int r) const { return pack_gqa ? r / group : r; }
  __device__ int head_of_row(int r) const { return pack_gqa ? hk * group + r % group : int(blockIdx.y); }
};

template <typename Traits>
__device__ __forceinline__ FwdBlock fwd_block(const AttentionParams& p) {
  constexpr int BM = Traits::kBlockM, BN = Traits::kBlockN;
  FwdBlock blk;
  blk.split = blockIdx.x % p.num_splits;
  blk.m0 = (blockIdx.x / p.num_splits) * BM;
  blk.b = blockIdx.z;
  blk.group = p.heads / p.kv_heads;
  blk.pack_gqa = p.pack_gqa;
  blk.hk = p.pack_gqa ? blockIdx.y : blockIdx.y / blk.group;
  blk.rows_total = p.pack_gqa ? p.lq * blk.group : p.lq;
  // Keys past the causal horizon of the tile's last query are invisible to the whole tile: never loaded.
  const int last_query = blk.query_of_row(min(blk.m0 + BM, blk.rows_total) - 1);
  const int key_end = int(visible_key_end(last_query, p.lq, p.lk, p.causal));
  const int tiles = (key_end + BN - 1) / BN;
  blk.tile_begin = 0, blk.tile_end = tiles;
  if (p.num_splits > 1) {
    blk.tile_begin = min(tiles, blk.split * p.tiles_per_split);
    blk.tile_end = min(tiles, blk.tile_begin + p.tiles_per_split);
  }
  return blk;
}

// The two rows a thread holds in the mma.m16n8k16 accumulator layout: g and g + 8 of its warp's 16, with
// g = lane / 4 (hh = 0, 1), counted from the block's first row.
__device__ __forceinline__ int fragment_row(int warp, int lane, int hh) { return warp * 16 + (lane >> 2) + 8 * hh; }

// What the bias, mask and epilogue steps need of those rows. Padding rows of the last tile get query index
// Lq (never written).
struct FragmentRows {
  int query[2];
  int64_t key_end[2];  // visible_key_end of the row: keys at or past it are masked
};

__device__ __forceinline__ FragmentRows fragment_rows(const AttentionParams& p, const FwdBlock& blk, int warp,
                                                      int lane) {
  FragmentRows rows;
  for (int hh = 0; hh < 2; ++hh) {
    const int r = blk.m0 + fragment_row(warp, lane, hh);
    const int i = r < blk.rows_total ? blk.query_of_row(r) : p.lq;
    rows.query[hh] = i;
    rows.key_end[hh] = visible_key_end(i, p.lq, p.lk, p.causal);
  }
  return rows;
}

// The positions of those two rows, as the position bias reads them (Position{} where absent or padding).
template <typename Position>
struct FragmentRowPositions {
  Position q_pos[2];
};

template <typename Position>
__device__ __forceinline__ FragmentRowPositions<Position> fragment_row_positions(const AttentionParams& p,
                                                                                 const FwdBlock& blk,
                                                                                 const FragmentRows& rows) {
  FragmentRowPositions<Position> pos;
  for (int hh = 0; hh < 2; ++hh) {
    const int i = rows.query[hh];
    pos.q_pos[hh] = (p.q_pos && i < p.lq) ? position_at<Position>(p.q_pos, int64_t(blk.b) * p.lq + i) : Position{};
  }
  return pos;
}

}  // namespace restore::attention
