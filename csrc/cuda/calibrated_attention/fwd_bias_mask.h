#pragma once
// The tensor-core kernel's bias and mask step on the score fragment, in registers where each thread knows
// its rows and columns (FlashAttention-2's Mask::apply_mask): logit = scale * dot + log_size[j] +
// position(q_pos, k_pos[j]), or -inf where the key is invisible (past the row's causal horizon, or past Lk in
// the last tile). The per-score math is restore/score_bias.h and restore/causal_mask.h, as on the CPU.
#include <cmath>
#include <cstdint>

#include "cuda/calibrated_attention/fwd_block.h"
#include "cuda/calibrated_attention/fwd_gemm.h"
#include "restore/score_bias.h"

namespace restore::attention {

// PositionBias: restore::DistanceBias (1-D) or restore::MropeDistanceBias (t, h, w); its Position is loaded
// per row (FragmentRowPositions) and per key (the tile's k_pos in shared memory).
template <typename Traits, typename PositionBias>
struct FragmentBiasMask {
  float scale;
  bool has_log_size;
  PositionBias position;

  // tile_log_size, tile_k_pos: the tile's per-key inputs in shared memory; j0: its first key.
  __device__ __forceinline__ void apply(ScoreFragment<Traits>& s, const FragmentRows& rows,
                                        const FragmentRowPositions<typename PositionBias::Position>& row_pos, int j0,
                                        const float* tile_log_size, const typename PositionBias::Position* tile_k_pos,
                                        int lane) const {
    const int t4 = lane & 3;
#pragma unroll
    for (int n = 0; n < Traits::kBlockN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + t4 * 2 + (e & 1), hh = e >> 1;
        float x = s[n][e] * scale;
        if (j0 + c >= rows.key_end[hh]) {
          x = -INFINITY;
        } else {
          if (has_log_size) x += tile_log_size[c];
          if (position.enabled()) x += position(row_pos.q_pos[hh], tile_k_pos[c]);
        }
        s[n][e] = x;
      }
  }
};

}  // namespace restore::attention
