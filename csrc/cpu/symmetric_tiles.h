#pragma once
// Per-row maxima of a masked cosine-similarity matrix, without holding the N x N matrix: sim = X X^T is
// symmetric, so only the upper triangle goes through BLAS, as panels of rows I against columns J >= I; each
// product serves the rows of I over J and, off the diagonal block, the rows of J over I (half the O(N^2 D)
// products, and thin panels keep the diagonal blocks' double work small). Each thread keeps its own
// maxima; they are combined at the end.
// Used by anchor merging (nearest better token) and DivPrune (nearest other token).
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "cpu/blas_gemm.h"

namespace restore {

// result[i] = max over j with include(i, j) of <x_i, x_j>, or -inf where no j is included.
// x: (n, d) row-major float32.
template <typename Include>
std::vector<float> masked_similarity_row_max(const float* x, int64_t n, int64_t d, Include include) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  // 128-row panels run MKL's sgemm at ~97% of its square-matrix rate here; column chunks bound the
  // per-thread score buffer (2 MiB) whatever N is.
  constexpr int64_t kPanelRows = 128, kChunkCols = 4096;
  struct Block {
    int64_t i0, ni, j0, nj;
  };
  std::vector<Block> blocks;
  for (int64_t i0 = 0; i0 < n; i0 += kPanelRows)
    for (int64_t j0 = i0; j0 < n; j0 += kChunkCols)
      blocks.push_back({i0, std::min(kPanelRows, n - i0), j0, std::min(kChunkCols, n - j0)});
  // The triangle's panels shrink down the rows, so a static split would leave threads idle: the largest
  // blocks go first, each to whichever thread is free.
  std::stable_sort(blocks.begin(), blocks.end(),
                   [](const Block& a, const Block& b) { return a.ni * a.nj > b.ni * b.nj; });

  const int64_t threads = at::get_num_threads();
  std::vector<float> partial(threads * n, neg_inf);
  std::atomic<size_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    float* best = partial.data() + at::get_thread_num() * n;
    std::vector<float> sim(kPanelRows * std::min(n, kChunkCols));
    for (size_t k; (k = next.fetch_add(1)) < blocks.size();) {
      const auto [i0, ni, j0, nj] = blocks[k];
      // Row-major sim (ni x nj) is column-major sim^T = X_J (nj x d) . X_I^T.
      sgemm_colmajor(true, false, nj, ni, d, 1.f, x + j0 * d, d, x + i0 * d, d, 0.f, sim.data(), nj);
      // Columns of the diagonal block are rows of this panel too: their own pass covers them.
      const int64_t mirrored_from = i0 + ni;
      for (int64_t r = 0; r < ni; ++r) {
        const int64_t i = i0 + r;
        const float* row = sim.data() + r * nj;
        float best_i = best[i];
        for (int64_t c = 0; c < nj; ++c) {
          const int64_t j = j0 + c;
          if (include(i, j)) best_i = std::max(best_i, row[c]);
          if (j >= mirrored_from && include(j, i)) best[j] = std::max(best[j], row[c]);
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
