#pragma once
// The tensor-core kernel's epilogue: each row's output O / l in Element, zeros for a row that saw no key;
// with flash-decoding splits, the split's normalised float32 partial and its log-sum-exp for the combine
// (combine_kernel.h) instead.
#include <cmath>
#include <cstdint>

#include "cuda/calibrated_attention/attention_params.h"
#include "cuda/calibrated_attention/fwd_block.h"
#include "cuda/calibrated_attention/fwd_gemm.h"
#include "cuda/calibrated_attention/fwd_softmax.h"
#include "cuda/calibrated_attention/sm80_ptx.h"
#include "restore/online_softmax.h"

namespace restore::attention {

template <typename Traits>
__device__ __forceinline__ void write_output(const AttentionParams& p, const FwdBlock& blk, const FragmentRows& rows,
                                             const OnlineSoftmaxRow (&softmax)[2], const OutputFragment<Traits>& acc,
                                             int warp, int lane) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim;
  const int t4 = lane & 3;
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const float total = quad_sum(softmax[hh].sum);  // all four threads of the row take part
    const float inv = normalizer(total);
    const int i = rows.query[hh];
    if (i >= p.lq) continue;
    const int64_t r = (int64_t(blk.b) * p.lq + i) * p.heads + blk.head_of_row(blk.m0 + fragment_row(warp, lane, hh));
    if (p.num_splits > 1) {
      float* o = p.partial_out + (int64_t(blk.split) * p.batch * p.lq * p.heads + r) * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int d = n * 8 + t4 * 2;
        *reinterpret_cast<float2*>(o + d) = make_float2(acc[n][2 * hh] * inv, acc[n][2 * hh + 1] * inv);
      }
      // A split that saw no key (total 0) has lse -inf and weighs nothing in the combine.
      if (t4 == 0)
        p.partial_lse[int64_t(blk.split) * p.batch * p.lq * p.heads + r] =
            total > 0.f ? softmax[hh].max + logf(total) : -INFINITY;
    } else {
      Element* o = static_cast<Element*>(p.out) + r * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const uint32_t packed = pack2<Element>(acc[n][2 * hh] * inv, acc[n][2 * hh + 1] * inv);
        *reinterpret_cast<uint32_t*>(o + n * 8 + t4 * 2) = packed;
      }
    }
  }
}

}  // namespace restore::attention
