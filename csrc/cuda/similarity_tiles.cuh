#pragma once
// A fused tiled "similarity then per-row reduction" kernel: for every row i of `rows` (B, M, D) and column j
// of `cols` (B, C, D), both float32 contiguous, it feeds sim = <rows_i, cols_j> to an epilogue that folds it
// into a per-row state. The M x C similarity is never written: a block owns 32 rows and streams all columns
// through shared memory in 32 x 32 tiles, so memory stays O((M + C) * D) for any N.
//
// Every pair is summed over D in the same order with fmaf, which is symmetric in its two factors: when
// rows == cols, sim(i, j) == sim(j, i) bit for bit and duplicate tokens tie exactly, so ties are decided by
// index, as on the CPU.
#include <cstdint>

namespace restore {

constexpr int kSimTile = 32;      // rows and columns per tile
constexpr int kSimChunk = 32;     // features per shared-memory stage
constexpr int kSimThreads = 256;  // 16 x 16 threads; thread (ty, tx) owns rows ty, ty+16 and columns tx, tx+16

// Epi provides: State; State init(); void update(State&, int64_t b, int64_t i, int64_t j, float sim);
// State combine(State, State) (associative, commutative); State shfl_xor(State, int lane_mask);
// void finish(int64_t b, int64_t i, State).
template <class Epi>
__global__ void __launch_bounds__(kSimThreads)
    row_reduce_similarity_kernel(const float* __restrict__ rows, int64_t m, const float* __restrict__ cols,
                                 int64_t ncol, int64_t d, Epi epi) {
  __shared__ float a_s[kSimChunk][kSimTile + 1];  // +1: the transposing stores hit distinct banks
  __shared__ float c_s[kSimChunk][kSimTile + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t b = blockIdx.y;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kSimTile;
  const float* a = rows + b * m * d;
  const float* c = cols + b * ncol * d;
  const int64_t ri[2] = {row0 + ty, row0 + ty + 16};
  typename Epi::State state[2] = {epi.init(), epi.init()};

  for (int64_t col0 = 0; col0 < ncol; col0 += kSimTile) {
    float acc[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
    for (int64_t k0 = 0; k0 < d; k0 += kSimChunk) {
      for (int e = threadIdx.x; e < kSimTile * kSimChunk; e += kSimThreads) {
        const int r = e / kSimChunk, kk = e % kSimChunk;
        const int64_t gk = k0 + kk;
        a_s[kk][r] = (row0 + r < m && gk < d) ? a[(row0 + r) * d + gk] : 0.f;
        c_s[kk][r] = (col0 + r < ncol && gk < d) ? c[(col0 + r) * d + gk] : 0.f;
      }
      __syncthreads();
#pragma unroll 8
      for (int kk = 0; kk < kSimChunk; ++kk) {
        const float a0 = a_s[kk][ty], a1 = a_s[kk][ty + 16];
        const float c0 = c_s[kk][tx], c1 = c_s[kk][tx + 16];
        acc[0][0] = fmaf(a0, c0, acc[0][0]);
        acc[0][1] = fmaf(a0, c1, acc[0][1]);
        acc[1][0] = fmaf(a1, c0, acc[1][0]);
        acc[1][1] = fmaf(a1, c1, acc[1][1]);
      }
      __syncthreads();
    }
    for (int r = 0; r < 2; ++r)
      for (int q = 0; q < 2; ++q) {
        const int64_t j = col0 + tx + 16 * q;
        if (ri[r] < m && j < ncol) epi.update(state[r], b, ri[r], j, acc[r][q]);
      }
  }
  // The 16 threads sharing a row are 16 consecutive lanes of one warp.
  for (int r = 0; r < 2; ++r)
    for (int mask = 8; mask >= 1; mask >>= 1) state[r] = Epi::combine(state[r], Epi::shfl_xor(state[r], mask));
  if (tx == 0)
    for (int r = 0; r < 2; ++r)
      if (ri[r] < m) epi.finish(b, ri[r], state[r]);
}

// Grid for row_reduce_similarity_kernel over `batch` rows of m tokens.
inline dim3 similarity_grid(int64_t batch, int64_t m) {
  return dim3(static_cast<unsigned>((m + kSimTile - 1) / kSimTile), static_cast<unsigned>(batch));
}

// Epilogue state of an argmax over columns, ties to the lower column.
struct ArgmaxState {
  float value;
  int64_t index;
};

__device__ __forceinline__ ArgmaxState argmax_combine(ArgmaxState x, ArgmaxState y) {
  return (y.value > x.value || (y.value == x.value && y.index < x.index)) ? y : x;
}

__device__ __forceinline__ ArgmaxState argmax_shfl_xor(ArgmaxState s, int mask) {
  return {__shfl_xor_sync(0xffffffffu, s.value, mask),
          static_cast<int64_t>(__shfl_xor_sync(0xffffffffu, static_cast<long long>(s.index), mask))};
}

}  // namespace restore
