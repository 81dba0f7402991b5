#pragma once
// Tile shapes of the tensor-core kernel (fwd_kernel.h) and how its shared memory is carved: a block owns
// kBlockM queries and streams kBlockN-key tiles of K and V through two stages.
#include <cstddef>
#include <cstdint>

namespace restore::attention {

template <int kHeadDim_, int kBlockN_, typename Element_>
struct FwdTraits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kWarps = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kBlockM = 16 * kWarps;  // each warp owns 16 query rows
  static constexpr int kBlockN = kBlockN_;
  // 16 bytes of padding per row: consecutive rows then start in different banks, so ldmatrix (8 rows of
  // 16 bytes each) is conflict-free for every head dim here without a swizzle.
  static constexpr int kRowStride = kHeadDim + 8;
  static constexpr int kChunksPerRow = kHeadDim / 8;  // 16-byte cp.async chunks
  static_assert(kHeadDim % 16 == 0 && kBlockN % 16 == 0, "mma tiles are 16 wide");

  static constexpr int kQElems = kBlockM * kRowStride;
  static constexpr int kKVElems = kBlockN * kRowStride;  // one stage of K or of V
  // Q and the two stages of K and V, then per stage and key its Position (one int64, or three under M-RoPE)
  // and log_size.
  template <typename Position>
  static constexpr size_t smem_bytes() {
    return sizeof(Element) * (kQElems + 4 * kKVElems) + 2 * kBlockN * (sizeof(Position) + sizeof(float));
  }
};

// 64 keys per tile keeps a warp's S fragment at 32 registers; at head dim 256 the output accumulator
// alone takes 128, so the key tile halves.
template <int kHeadDim, typename Element>
using FwdTraitsFor = FwdTraits<kHeadDim, (kHeadDim > 128 ? 32 : 64), Element>;

// The dynamic shared memory of one block: Q, then [2 stages] of K, of V, and of the per-key bias inputs
// (k_pos as the position bias' Position, log_size) that ride along with their tile.
template <typename Traits, typename Position>
struct FwdSmem {
  using Element = typename Traits::Element;
  static constexpr int BN = Traits::kBlockN;
  Element* q_tile;
  Element* k_tiles;
  Element* v_tiles;
  Position* k_pos_tiles;
  float* log_size_tiles;

  __device__ explicit FwdSmem(unsigned char* smem)
      : q_tile(reinterpret_cast<Element*>(smem)),
        k_tiles(q_tile + Traits::kQElems),
        v_tiles(k_tiles + 2 * Traits::kKVElems),
        k_pos_tiles(reinterpret_cast<Position*>(v_tiles + 2 * Traits::kKVElems)),
        log_size_tiles(reinterpret_cast<float*>(k_pos_tiles + 2 * BN)) {}

  __device__ Element* k(int stage) const { return k_tiles + stage * Traits::kKVElems; }
  __device__ Element* v(int stage) const { return v_tiles + stage * Traits::kKVElems; }
  __device__ Position* k_pos(int stage) const { return k_pos_tiles + stage * BN; }
  __device__ float* log_size(int stage) const { return log_size_tiles + stage * BN; }
};

}  // namespace restore::attention
