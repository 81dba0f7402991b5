#pragma once
// The tensor-core kernel's two products per key tile, per warp on mma.m16n8k16 with float32 accumulators:
// S = Q K^T over the warp's 16 query rows, and O += P V with P taken straight from S's registers.
// Fragment layouts: sm80_ptx.h (PTX ISA "Matrix Fragments for mma.m16n8k16").
#include <cstdint>

#include "cuda/calibrated_attention/fwd_traits.h"
#include "cuda/calibrated_attention/sm80_ptx.h"

namespace restore::attention {

// s[n][e]: the thread's 4 scores of key columns n*8 .. n*8+7 (rows g and g + 8, see fwd_block.h).
template <typename Traits>
using ScoreFragment = float[Traits::kBlockN / 8][4];
// acc[n][e]: the thread's 4 outputs of head-dim columns n*8 .. n*8+7.
template <typename Traits>
using OutputFragment = float[Traits::kHeadDim / 8][4];

// S = Q K^T for the warp's rows `warp * 16 ..` of q_tile against the kBlockN keys of k_tile.
template <typename Traits>
__device__ __forceinline__ void gemm_qk(ScoreFragment<Traits>& s, const typename Traits::Element* q_tile,
                                        const typename Traits::Element* k_tile, int warp, int lane) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim, BN = Traits::kBlockN, LD = Traits::kRowStride;
#pragma unroll
  for (int n = 0; n < BN / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, q_tile + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
    for (int nn = 0; nn < BN / 16; ++nn) {
      uint32_t bk[4];
      ldmatrix_x4(bk, k_tile + (nn * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
      mma_16816<Element>(s[2 * nn], a, bk[0], bk[1]);
      mma_16816<Element>(s[2 * nn + 1], a, bk[2], bk[3]);
    }
  }
}

// O += P V: the S accumulators of two adjacent 8-key tiles are exactly the A fragment of a 16-key step, so P
// (rounded to Element) never leaves registers.
template <typename Traits>
__device__ __forceinline__ void gemm_pv(OutputFragment<Traits>& acc, const ScoreFragment<Traits>& p,
                                        const typename Traits::Element* v_tile, int lane) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim, BN = Traits::kBlockN, LD = Traits::kRowStride;
#pragma unroll
  for (int kk = 0; kk < BN / 16; ++kk) {
    const uint32_t a[4] = {pack2<Element>(p[2 * kk][0], p[2 * kk][1]), pack2<Element>(p[2 * kk][2], p[2 * kk][3]),
                           pack2<Element>(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                           pack2<Element>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
    for (int dn = 0; dn < D / 16; ++dn) {
      uint32_t bv[4];
      ldmatrix_x4_trans(bv, v_tile + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dn * 16 + (lane >> 4) * 8);
      mma_16816<Element>(acc[2 * dn], a, bv[0], bv[1]);
      mma_16816<Element>(acc[2 * dn + 1], a, bv[2], bv[3]);
    }
  }
}

}  // namespace restore::attention
