#pragma once
// Per-row maxima of a masked cosine-similarity matrix, without holding the N x N matrix: sim = X X^T is
// symmetric, so only tile pairs (I, J >= I) go through BLAS, each serving the rows of I over J and the rows
// of J over I (half the O(N^2 D) products). Each thread keeps its own maxima; they are combined at the end.
// Used by anchor merging (nearest better token) and DivPrune (nearest other token).
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "cpu/blas_gemm.h"

namespace restore {

// result[i] = max over j with include(i, j) of <x_i, x_j>, or -inf where no j is included.
// x: (n, d) row-major float32.
template <typename Include>
std::vector<float> masked_similarity_row_max(const float* x, int64_t n, int64_t d, Include include) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  // 256 x 256 float32 (256 KiB) stays in a core's L2; below N = 2048 smaller tiles keep enough pairs to
  // split evenly across threads.
  const int64_t tile = n < 2048 ? 96 : 256;
  const int64_t tiles = (n + tile - 1) / tile;
  std::vector<std::pair<int64_t, int64_t>> pairs;
  for (int64_t ti = 0; ti < tiles; ++ti)
    for (int64_t tj = ti; tj < tiles; ++tj) pairs.emplace_back(ti, tj);

  const int64_t threads = at::get_num_threads();
  std::vector<float> partial(threads * n, neg_inf);
  at::parallel_for(0, static_cast<int64_t>(pairs.size()), 1, [&](int64_t p0, int64_t p1) {
    float* best = partial.data() + at::get_thread_num() * n;
    std::vector<float> sim(tile * tile);
    for (int64_t p = p0; p < p1; ++p) {
      const auto [ti, tj] = pairs[p];
      const int64_t i0 = ti * tile, ni = std::min(tile, n - i0);
      const int64_t j0 = tj * tile, nj = std::min(tile, n - j0);
      // Row-major sim (ni x nj) is column-major sim^T = X_J (nj x d) . X_I^T.
      sgemm_colmajor(true, false, nj, ni, d, 1.f, x + j0 * d, d, x + i0 * d, d, 0.f, sim.data(), nj);
      for (int64_t r = 0; r < ni; ++r) {
        const int64_t i = i0 + r;
        const float* row = sim.data() + r * nj;
        float best_i = best[i];
        for (int64_t c = 0; c < nj; ++c) {
          const int64_t j = j0 + c;
          if (include(i, j)) best_i = std::max(best_i, row[c]);
          if (ti != tj && include(j, i)) best[j] = std::max(best[j], row[c]);
        }
        best[i] = best_i;
      }
    }
  });
  std::vector<float> result(partial.begin(), partial.begin() + n);
  for (int64_t t = 1; t < threads; ++t)
    for (int64_t i = 0; i < n; ++i) result[i] = std::max(result[i], partial[t * n + i]);
  return result;
}

}  // namespace restore
