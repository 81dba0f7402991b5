#pragma once
// Host stand-in for csrc/cuda/calibrated_attention/sm80_ptx.h (same path, found first on the include
// path), so fwd_kernel.h compiles with g++ and runs with one std::thread per CUDA thread. Warp-collective
// instructions exchange operands through per-warp arrays between two warp barriers; the register layouts
// are those of the PTX ISA (ldmatrix: lane l holds row l/4, columns 2(l%4), 2(l%4)+1 of each 8x8 matrix,
// the transposed matrix with .trans; mma.m16n8k16: a0..a3 = A[g][2t], A[g+8][2t], A[g][2t+8],
// A[g+8][2t+8], b0, b1 = B[2t][g], B[2t+8][g], c0..c3 = C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1],
// with g = lane/4, t = lane%4 and each 32-bit register holding two consecutive k, the lower in the low half).
#ifndef __shared__
#define __shared__  // fwd_kernel.h's only shared array is `extern __shared__`, defined by its emulator
#endif
#include "emulated_cuda.h"

#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

using __half = c10::Half;  // same 16 bits, round-to-nearest-even conversions
using __nv_bfloat16 = c10::BFloat16;
inline __half __float2half_rn(float x) { return __half(x); }
inline __nv_bfloat16 __float2bfloat16_rn(float x) { return __nv_bfloat16(x); }

struct float2 {
  float x, y;
};
inline float2 make_float2(float a, float b) { return {a, b}; }

namespace emu {
inline const void* addresses[kMaxWarps][32];
inline uint32_t operands[kMaxWarps][32][6];
}  // namespace emu

namespace restore::attention {

// cp.async in one of two timings, both legal on the hardware: eager (the copy lands at issue, so a stage
// overwritten while other warps still read it shows) or late (it lands only at the cp.async.wait_group
// that covers its group, so a read before the right wait sees the 0xff NaN fill the emulator leaves in
// shared memory).
}  // namespace restore::attention
namespace emu {
enum class CopyTiming { Eager, Late };
inline CopyTiming copy_timing = CopyTiming::Eager;
struct PendingCopy {
  void* dst;
  const void* src;
  bool valid;
};
inline thread_local std::vector<PendingCopy> open_group;
inline thread_local std::vector<std::vector<PendingCopy>> committed_groups;  // oldest first
inline void land(const PendingCopy& c) {
  if (c.valid) {
    std::memcpy(c.dst, c.src, 16);
  } else {
    std::memset(c.dst, 0, 16);
  }
}
}  // namespace emu
namespace restore::attention {

inline void cp_async_16(void* smem, const void* gmem, bool valid) {
  emu::race_check.access(smem, /*write=*/true);
  if (emu::copy_timing == emu::CopyTiming::Eager) {
    emu::land({smem, gmem, valid});
  } else {
    emu::open_group.push_back({smem, gmem, valid});
  }
}
inline void cp_async_commit() {
  if (emu::copy_timing == emu::CopyTiming::Late) {
    emu::committed_groups.push_back(std::move(emu::open_group));
    emu::open_group.clear();
  }
}
template <int kPending>
inline void cp_async_wait() {
  while (emu::committed_groups.size() > size_t(kPending)) {
    for (const auto& c : emu::committed_groups.front()) emu::land(c);
    emu::committed_groups.erase(emu::committed_groups.begin());
  }
}

inline uint16_t element_at(const void* row, int col) {
  uint16_t x;
  std::memcpy(&x, static_cast<const uint16_t*>(row) + col, 2);
  return x;
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* smem) {
  const int w = emu::warp(), l = emu::lane();
  emu::addresses[w][l] = smem;
  emu::warp_sync();
  for (int m = 0; m < 4; ++m) {
    const void* row = emu::addresses[w][m * 8 + l / 4];
    emu::race_check.access(row, /*write=*/false);
    r[m] = element_at(row, 2 * (l % 4)) | uint32_t(element_at(row, 2 * (l % 4) + 1)) << 16;
  }
  emu::warp_sync();
}

inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const int w = emu::warp(), l = emu::lane();
  emu::addresses[w][l] = smem;
  emu::warp_sync();
  for (int m = 0; m < 4; ++m) {
    emu::race_check.access(emu::addresses[w][m * 8 + 2 * (l % 4)], /*write=*/false);
    emu::race_check.access(emu::addresses[w][m * 8 + 2 * (l % 4) + 1], /*write=*/false);
    r[m] = element_at(emu::addresses[w][m * 8 + 2 * (l % 4)], l / 4) |
           uint32_t(element_at(emu::addresses[w][m * 8 + 2 * (l % 4) + 1], l / 4)) << 16;
  }
  emu::warp_sync();
}

template <typename Element>
float half_of(uint32_t reg, int upper) {
  const uint16_t bits = upper ? reg >> 16 : reg & 0xffff;
  Element e;
  std::memcpy(&e, &bits, 2);
  return float(e);
}

template <typename Element>
inline void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  const int w = emu::warp(), l = emu::lane();
  for (int i = 0; i < 4; ++i) emu::operands[w][l][i] = a[i];
  emu::operands[w][l][4] = b0;
  emu::operands[w][l][5] = b1;
  emu::warp_sync();
  auto A = [&](int row, int k) {
    return half_of<Element>(emu::operands[w][(row % 8) * 4 + (k % 8) / 2][(row >= 8) + 2 * (k >= 8)], k % 2);
  };
  auto B = [&](int k, int n) { return half_of<Element>(emu::operands[w][n * 4 + (k % 8) / 2][4 + (k >= 8)], k % 2); };
  for (int e = 0; e < 4; ++e) {
    const int row = l / 4 + 8 * (e / 2), col = 2 * (l % 4) + e % 2;
    float sum = 0.f;
    for (int k = 0; k < 16; ++k) sum += A(row, k) * B(k, col);
    c[e] += sum;
  }
  emu::warp_sync();
}

template <typename Element>
inline uint32_t pack2(float lo, float hi) {
  const Element a(lo), b(hi);
  uint16_t x, y;
  std::memcpy(&x, &a, 2);
  std::memcpy(&y, &b, 2);
  return x | uint32_t(y) << 16;
}

}  // namespace restore::attention
