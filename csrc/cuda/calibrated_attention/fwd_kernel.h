#pragma once
// Tensor-core forward of calibrated attention (docs/ops.md §5), FlashAttention-2 style: a block owns kBlockM
// queries of one (batch, head) and streams kBlockN-key tiles of K and V through shared memory (cp.async, two
// stages). The main loop reads as its steps, each a small header beside this one:
//   load K/V tile (fwd_tile_loads.h) -> S = Q K^T (fwd_gemm.h) -> bias + mask (fwd_bias_mask.h)
//   -> softmax rescale (fwd_softmax.h) -> O += P V (fwd_gemm.h), and the epilogue (fwd_epilogue.h).
#include <cmath>

#include "cuda/calibrated_attention/attention_params.h"
#include "cuda/calibrated_attention/fwd_bias_mask.h"
#include "cuda/calibrated_attention/fwd_block.h"
#include "cuda/calibrated_attention/fwd_epilogue.h"
#include "cuda/calibrated_attention/fwd_gemm.h"
#include "cuda/calibrated_attention/fwd_softmax.h"
#include "cuda/calibrated_attention/fwd_tile_loads.h"
#include "cuda/calibrated_attention/fwd_traits.h"
#include "cuda/calibrated_attention/sm80_ptx.h"
#include "restore/online_softmax.h"
#include "restore/score_bias.h"

namespace restore::attention {

// Grid: x = row tile * num_splits + split, y = head (K/V head with pack_gqa), z = batch.
// PositionBias: DistanceBias (1-D positions) or MropeDistanceBias (t, h, w), restore/score_bias.h.
template <typename Traits, typename PositionBias>
__global__ void __launch_bounds__(Traits::kThreads)
    calibrated_attention_fwd_kernel(const AttentionParams p) {
  using Position = typename PositionBias::Position;
  extern __shared__ __align__(16) unsigned char smem[];
  const FwdSmem<Traits, Position> sm(smem);
  const FwdBlock blk = fwd_block<Traits>(p);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const FragmentRows rows = fragment_rows(p, blk, warp, lane);
  const FragmentRowPositions<Position> row_pos = fragment_row_positions<Position>(p, blk, rows);
  const FragmentBiasMask<Traits, PositionBias> bias_mask{p.scale, p.log_size != nullptr,
                                                         PositionBias{p.table, p.table_len}};

  OutputFragment<Traits> acc;
#pragma unroll
  for (int n = 0; n < Traits::kHeadDim / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
  OnlineSoftmaxRow softmax[2];

  if (blk.tile_begin < blk.tile_end) {
    load_q_tile(sm, p, blk);
    load_kv_tile(sm, p, blk, blk.tile_begin, 0);
    cp_async_commit();
  }

  for (int tile = blk.tile_begin; tile < blk.tile_end; ++tile) {
    const int stage = (tile - blk.tile_begin) & 1;
    if (tile + 1 < blk.tile_end) {
      load_kv_tile(sm, p, blk, tile + 1, stage ^ 1);  // overlaps this tile's math
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();

    ScoreFragment<Traits> s;
    gemm_qk<Traits>(s, sm.q_tile, sm.k(stage), warp, lane);
    bias_mask.apply(s, rows, row_pos, tile * Traits::kBlockN, sm.log_size(stage), sm.k_pos(stage), lane);
    softmax_rescale_o<Traits>(softmax, s, acc);
    gemm_pv<Traits>(acc, s, sm.v(stage), lane);
    __syncthreads();  // the next iteration's loads overwrite the stage just read
  }

  write_output<Traits>(p, blk, rows, softmax, acc, warp, lane);
}

}  // namespace restore::attention
