// HoloV's crops are m ~ 36-180 rows of d ~ 1024-4096: a Gram matrix with a long inner dimension and a tiny
// output. BLAS SGEMM packs both operands and computes both triangles; at m = 36, d = 4096 it runs at a third
// of one core's FMA rate. Here each entry is a dot product kept in a register (4 x 5 rows at a time, 20
// accumulators), only blocks on or above the diagonal are computed, and the inner dimension is cut into
// chunks so the 4 rows of a block stay in L1 while the other rows stream from L2.
#include "cpu/gram_avx512.h"

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace restore {
namespace {

constexpr int kRowsA = 4, kRowsB = 5;
constexpr int64_t kChunk = 1024;  // floats of each row per pass: 4 A rows x 4 KiB in L1

using Acc = __m512[kRowsA][kRowsB];

// The 20 accumulators as named locals: held in an array across the loop, GCC spills them every iteration.
#define RESTORE_ROWS_B(X, i) X(i, 0) X(i, 1) X(i, 2) X(i, 3) X(i, 4)
#define RESTORE_ACC(X) RESTORE_ROWS_B(X, 0) RESTORE_ROWS_B(X, 1) RESTORE_ROWS_B(X, 2) RESTORE_ROWS_B(X, 3)

__attribute__((target("avx512f"), always_inline)) inline void dot_block(const float* const* a,
                                                                         const float* const* b, int64_t k0,
                                                                         int64_t k1, Acc& acc) {
#define RESTORE_LOAD(i, j) __m512 c##i##j = acc[i][j];
  RESTORE_ACC(RESTORE_LOAD)
#undef RESTORE_LOAD
  const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  const float *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3], *b4 = b[4];
  for (int64_t k = k0; k < k1; k += 16) {
    const __m512 va0 = _mm512_loadu_ps(a0 + k), va1 = _mm512_loadu_ps(a1 + k), va2 = _mm512_loadu_ps(a2 + k),
                 va3 = _mm512_loadu_ps(a3 + k);
#define RESTORE_FMA(i, j) c##i##j = _mm512_fmadd_ps(va##i, vb, c##i##j);
#define RESTORE_COLUMN(j)                       \
  {                                             \
    const __m512 vb = _mm512_loadu_ps(b##j + k); \
    RESTORE_FMA(0, j) RESTORE_FMA(1, j) RESTORE_FMA(2, j) RESTORE_FMA(3, j) \
  }
    RESTORE_COLUMN(0) RESTORE_COLUMN(1) RESTORE_COLUMN(2) RESTORE_COLUMN(3) RESTORE_COLUMN(4)
#undef RESTORE_COLUMN
#undef RESTORE_FMA
  }
#define RESTORE_STORE(i, j) acc[i][j] = c##i##j;
  RESTORE_ACC(RESTORE_STORE)
#undef RESTORE_STORE
}

__attribute__((target("avx512f"), always_inline)) inline void dot_tail(const float* const* a,
                                                                        const float* const* b, int64_t k,
                                                                        __mmask16 mask, Acc& acc) {
  __m512 va[kRowsA];
#pragma GCC unroll 4
  for (int i = 0; i < kRowsA; ++i) va[i] = _mm512_maskz_loadu_ps(mask, a[i] + k);
#pragma GCC unroll 5
  for (int j = 0; j < kRowsB; ++j) {
    const __m512 vb = _mm512_maskz_loadu_ps(mask, b[j] + k);
#pragma GCC unroll 4
    for (int i = 0; i < kRowsA; ++i) acc[i][j] = _mm512_fmadd_ps(va[i], vb, acc[i][j]);
  }
}

__attribute__((target("avx512f"))) void gram_kernel(const float* x, int64_t m, int64_t d, float* gram) {
  const int64_t d_vec = d - d % 16;
  const __mmask16 tail = __mmask16((1u << (d % 16)) - 1u);
  // Rows past the end read the last row (results discarded), so every block has the full register shape.
  auto row = [&](int64_t r) { return x + std::min(r, m - 1) * d; };
  std::vector<float> saved;  // a block's accumulators between chunks (only when d > kChunk)
  // The m x d floats after x, which callers walking crops in order read next, pulled into L2 while these
  // products keep the core busy: otherwise each crop's first pass waits on memory and the rest leave it idle.
  // (addresses as integers: the range may run past the caller's tensor, where pointer arithmetic is undefined)
  const uintptr_t ahead = reinterpret_cast<uintptr_t>(x) + uintptr_t(m * d) * sizeof(float);
  const int64_t ahead_lines = m * d * 4 / 64;
  const int64_t calls = ((m + kRowsA - 1) / kRowsA) * ((m + kRowsB - 1) / kRowsB + 1) / 2 *
                        ((d_vec + kChunk - 1) / kChunk + 1);
  const int64_t lines_per_call = (ahead_lines + calls - 1) / calls;
  int64_t ahead_at = 0;
  for (int64_t i0 = 0; i0 < m; i0 += kRowsA) {
    const float* a[kRowsA];
    for (int i = 0; i < kRowsA; ++i) a[i] = row(i0 + i);
    const int64_t blocks = (m - i0 + kRowsB - 1) / kRowsB;  // j0 = i0, i0 + 5, ...: the diagonal and above
    if (d_vec > kChunk) saved.resize(size_t(blocks) * kRowsA * kRowsB * 16);
    for (int64_t k0 = 0;; k0 += kChunk) {
      const int64_t k1 = std::min(k0 + kChunk, d_vec);
      const bool first = k0 == 0, last = k1 == d_vec;
      for (int64_t jb = 0; jb < blocks; ++jb) {
        const int64_t j0 = i0 + jb * kRowsB;
        const float* b[kRowsB];
        for (int j = 0; j < kRowsB; ++j) b[j] = row(j0 + j);
        float* keep = last && first ? nullptr : saved.data() + jb * kRowsA * kRowsB * 16;
        for (int64_t l = 0; l < lines_per_call && ahead_at < ahead_lines; ++l, ++ahead_at)
          __builtin_prefetch(reinterpret_cast<const void*>(ahead + uintptr_t(ahead_at) * 64), 0, 2);
        Acc acc;
#pragma GCC unroll 4
        for (int i = 0; i < kRowsA; ++i)
#pragma GCC unroll 5
          for (int j = 0; j < kRowsB; ++j)
            acc[i][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(keep + (i * kRowsB + j) * 16);
        dot_block(a, b, k0, k1, acc);
        if (!last) {
#pragma GCC unroll 4
          for (int i = 0; i < kRowsA; ++i)
#pragma GCC unroll 5
            for (int j = 0; j < kRowsB; ++j) _mm512_storeu_ps(keep + (i * kRowsB + j) * 16, acc[i][j]);
          continue;
        }
        if (tail != 0) dot_tail(a, b, d_vec, tail, acc);
        for (int i = 0; i < kRowsA && i0 + i < m; ++i)
          for (int j = 0; j < kRowsB && j0 + j < m; ++j) {
            alignas(64) float lanes[16];
            _mm512_store_ps(lanes, acc[i][j]);
            double sum = 0.0;  // the lanes in double: one rounding, not four
            for (float lane : lanes) sum += lane;
            const float g = float(sum);
            gram[(i0 + i) * m + j0 + j] = g;
            gram[(j0 + j) * m + i0 + i] = g;
          }
      }
      if (last) break;
    }
  }
}

}  // namespace

bool gram_avx512(const float* x, int64_t m, int64_t d, float* gram) {
  static const bool supported =
      __builtin_cpu_supports("avx512f") && std::getenv("RESTORE_EXT_NO_AVX512") == nullptr;  // to test the fallback
  if (!supported || m <= 0) return false;
  gram_kernel(x, m, d, gram);
  return true;
}

}  // namespace restore
