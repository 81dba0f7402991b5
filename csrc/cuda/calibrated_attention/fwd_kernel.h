#pragma once
// Tensor-core forward of calibrated attention, FlashAttention-2 style: a block owns kBlockM queries of one
// (batch, head) and streams kBlockN-key tiles of K and V through shared memory (cp.async, two stages).
// Each warp owns 16 query rows: S = Q K^T and O += P V run on mma.m16n8k16, and the RESTORE bias, the
// masks and the online softmax are applied to S in registers, where each thread knows its rows and columns.
#include <cmath>

#include "cuda/calibrated_attention/attention_params.h"
#include "cuda/calibrated_attention/sm80_ptx.h"
#include "restore/attention_math.h"

namespace restore::attention {

template <int kHeadDim_, int kBlockN_, typename Element_>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps;
  static constexpr int kBlockN = kBlockN_;
  // 16 bytes of padding per row: consecutive rows then start in different banks, so ldmatrix (8 rows of
  // 16 bytes each) is conflict-free for every head dim here without a swizzle.
  static constexpr int kRowStride = kHeadDim + 8;
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte cp.async chunks
  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "mma tiles are 16 wide");

  static constexpr int kQElems = kBlockM * kRowStride;
  static constexpr int kKVElems = kBlockN * kRowStride;  // one stage of K or of V
  static constexpr size_t kSmemBytes = sizeof(Element) * (kQElems + 4 * kKVElems) +
                                       2 * kBlockN * (sizeof(int64_t) + sizeof(float));
};

// 64 keys per tile keeps a warp's S fragment at 32 registers; at head dim 256 the output accumulator
// alone takes 128, so the key tile halves.
template <int kHeadDim, typename Element>
using FwdTraitsFor = FwdTraits<kHeadDim, (kHeadDim > 128 ? 32 : 64), Element>;

// Copies rows [0, rows_valid) of a (rows x kHeadDim) tile whose row r starts at src + r * row_stride; the
// other rows of the tile become zeros.
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

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Grid: x = row tile * num_splits + split, y = head (K/V head with pack_gqa), z = batch.
template <typename Traits>
__global__ void __launch_bounds__(Traits::kThreads)
    calibrated_attention_fwd_kernel(const AttentionParams p) {
  using Element = typename Traits::Element;
  constexpr int D = Traits::kHeadDim, BM = Traits::kBlockM, BN = Traits::kBlockN, LD = Traits::kRowStride;
  extern __shared__ __align__(16) unsigned char smem[];
  Element* s_q = reinterpret_cast<Element*>(smem);
  Element* s_k = s_q + Traits::kQElems;       // [2 stages][BN][LD]
  Element* s_v = s_k + 2 * Traits::kKVElems;  // [2 stages][BN][LD]
  int64_t* s_kpos = reinterpret_cast<int64_t*>(s_v + 2 * Traits::kKVElems);  // [2][BN]
  float* s_log_size = reinterpret_cast<float*>(s_kpos + 2 * BN);              // [2][BN]

  const int split = blockIdx.x % p.num_splits, m_block = blockIdx.x / p.num_splits;
  const int b = blockIdx.z, group = p.heads / p.kv_heads;
  const int hk = p.pack_gqa ? blockIdx.y : blockIdx.y / group;
  const int rows_total = p.pack_gqa ? p.lq * group : p.lq;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int m0 = m_block * BM;
  auto query_of_row = [&](int r) { return p.pack_gqa ? r / group : r; };
  auto head_of_row = [&](int r) { return p.pack_gqa ? hk * group + r % group : int(blockIdx.y); };

  // Keys past the causal horizon of the tile's last query are invisible to the whole tile: never loaded.
  const int64_t horizon = int64_t(query_of_row(min(m0 + BM, rows_total) - 1)) + 1 + p.lk - p.lq;
  const int key_end = p.causal ? int(horizon < 0 ? 0 : (horizon < p.lk ? horizon : p.lk)) : p.lk;
  const int tiles = (key_end + BN - 1) / BN;
  int tile_begin = 0, tile_end = tiles;
  if (p.num_splits > 1) {
    tile_begin = min(tiles, split * p.tiles_per_split);
    tile_end = min(tiles, tile_begin + p.tiles_per_split);
  }

  const Element* q_batch = static_cast<const Element*>(p.q) + b * p.q_batch_stride;
  const Element* k_base = static_cast<const Element*>(p.k) + b * p.k_batch_stride + hk * p.k_head_stride;
  const Element* v_base = static_cast<const Element*>(p.v) + b * p.v_batch_stride + hk * p.v_head_stride;

  auto load_kv_tile = [&](int tile, int stage) {
    const int j0 = tile * BN, rows = min(BN, p.lk - j0);
    load_tile<Traits, BN>(s_k + stage * Traits::kKVElems, k_base + j0 * p.k_row_stride, p.k_row_stride, rows);
    load_tile<Traits, BN>(s_v + stage * Traits::kKVElems, v_base + j0 * p.v_row_stride, p.v_row_stride, rows);
    // The per-key bias inputs ride along with their tile; the __syncthreads that publishes the tile
    // publishes them too.
    for (int c = tid; c < BN; c += Traits::kThreads) {
      const int j = j0 + c;
      const bool in = j < p.lk;
      s_kpos[stage * BN + c] = (p.k_pos && in) ? p.k_pos[int64_t(b) * p.lk + j] : 0;
      s_log_size[stage * BN + c] = (p.log_size && in) ? p.log_size[int64_t(b) * p.lk + j] : 0.f;
    }
  };

  // Rows this thread holds in the mma accumulator layout: g and g + 8 of the warp's 16.
  const int g = lane >> 2, t4 = lane & 3;
  int row[2];  // query index of the row, which is past Lq for the padding rows of the last tile
  int64_t q_pos[2];
  for (int hh = 0; hh < 2; ++hh) {
    const int r = m0 + warp * 16 + g + 8 * hh;
    row[hh] = r < rows_total ? query_of_row(r) : p.lq;
    q_pos[hh] = (p.q_pos && row[hh] < p.lq) ? p.q_pos[int64_t(b) * p.lq + row[hh]] : 0;
  }

  float acc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.f;
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};

  if (tile_begin < tile_end) {
    for (int c = tid; c < BM * Traits::kChunksPerRow; c += Traits::kThreads) {
      const int r = m0 + c / Traits::kChunksPerRow, col = (c % Traits::kChunksPerRow) * 8;
      const bool valid = r < rows_total;
      const int rr = valid ? r : m0;  // padding rows read nothing but need an address
      cp_async_16(s_q + (r - m0) * LD + col,
                  q_batch + query_of_row(rr) * p.q_row_stride + head_of_row(rr) * p.q_head_stride + col, valid);
    }
    load_kv_tile(tile_begin, 0);
    cp_async_commit();
  }

  for (int tile = tile_begin; tile < tile_end; ++tile) {
    const int stage = (tile - tile_begin) & 1;
    if (tile + 1 < tile_end) {
      load_kv_tile(tile + 1, stage ^ 1);  // overlaps this tile's math
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const Element* sk = s_k + stage * Traits::kKVElems;
    const Element* sv = s_v + stage * Traits::kKVElems;

    float s[BN / 8][4];
#pragma unroll
    for (int n = 0; n < BN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      uint32_t a[4];
      ldmatrix_x4(a, s_q + (warp * 16 + (lane & 15)) * LD + kk * 16 + (lane >> 4) * 8);
#pragma unroll
      for (int nn = 0; nn < BN / 16; ++nn) {
        uint32_t bk[4];
        ldmatrix_x4(bk, sk + (nn * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8);
        mma_16816<Element>(s[2 * nn], a, bk[0], bk[1]);
        mma_16816<Element>(s[2 * nn + 1], a, bk[2], bk[3]);
      }
    }

    // Logit = scale * dot + log_size[j] + table[clamp(q_pos - k_pos)], or -inf where the key is invisible
    // (causal, or a column past Lk in the last tile).
    const int j0 = tile * BN;
    const float* kls = s_log_size + stage * BN;
    const int64_t* kpos = s_kpos + stage * BN;
#pragma unroll
    for (int n = 0; n < BN / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = n * 8 + t4 * 2 + (e & 1), j = j0 + c, hh = e >> 1;
        float x = s[n][e] * p.scale;
        if (j >= p.lk || !key_visible(row[hh], j, p.lq, p.lk, p.causal)) {
          x = -INFINITY;
        } else {
          if (p.log_size) x += kls[c];
          if (p.table) x += __ldg(p.table + distance_index(q_pos[hh], kpos[c], p.table_len));
        }
        s[n][e] = x;
      }

    // Online softmax; a row's four threads (same g) hold its columns and agree on the maximum.
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float tile_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) tile_max = fmaxf(tile_max, fmaxf(s[n][2 * hh], s[n][2 * hh + 1]));
      const float new_max = fmaxf(row_max[hh], quad_max(tile_max));
      const float offset = softmax_offset(new_max);
      const float factor = rescale_factor(row_max[hh], new_max);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < BN / 8; ++n)
#pragma unroll
        for (int e = 2 * hh; e < 2 * hh + 2; ++e) {
          s[n][e] = expf(s[n][e] - offset);
          sum += s[n][e];
        }
      row_sum[hh] = row_sum[hh] * factor + sum;  // this thread's columns only; summed over the quad at the end
      row_max[hh] = new_max;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        acc[n][2 * hh] *= factor;
        acc[n][2 * hh + 1] *= factor;
      }
    }

    // O += P V: the S accumulators of two adjacent 8-key tiles are exactly the A fragment of a 16-key step.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint32_t a[4] = {pack2<Element>(s[2 * kk][0], s[2 * kk][1]), pack2<Element>(s[2 * kk][2], s[2 * kk][3]),
                             pack2<Element>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                             pack2<Element>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dn = 0; dn < D / 16; ++dn) {
        uint32_t bv[4];
        ldmatrix_x4_trans(bv, sv + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + dn * 16 + (lane >> 4) * 8);
        mma_16816<Element>(acc[2 * dn], a, bv[0], bv[1]);
        mma_16816<Element>(acc[2 * dn + 1], a, bv[2], bv[3]);
      }
    }
    __syncthreads();  // the next iteration's loads overwrite the stage just read
  }

#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const float total = quad_sum(row_sum[hh]);
    const float inv = normalizer(total);
    const int i = row[hh];
    if (i >= p.lq) continue;
    const int64_t r = (int64_t(b) * p.lq + i) * p.heads + head_of_row(m0 + warp * 16 + g + 8 * hh);
    if (p.num_splits > 1) {
      float* o = p.partial_out + (int64_t(split) * p.batch * p.lq * p.heads + r) * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        const int d = n * 8 + t4 * 2;
        *reinterpret_cast<float2*>(o + d) = make_float2(acc[n][2 * hh] * inv, acc[n][2 * hh + 1] * inv);
      }
      // A split that saw no key (total 0) has lse -inf and weighs nothing in the combine.
      if (t4 == 0)
        p.partial_lse[int64_t(split) * p.batch * p.lq * p.heads + r] =
            total > 0.f ? row_max[hh] + logf(total) : -INFINITY;
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
