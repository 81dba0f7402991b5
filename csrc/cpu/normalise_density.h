#pragma once
// docs/ops.md §2 steps 1-2 for one batch row, in the CUDA kernel's three steps: float64 norms, column sums and
// density (sum_j sim[i, j] = xn_i . sum_j xn_j, O(N * D)), xn and density rounded to float32 at the end so
// values equal in exact arithmetic (N = 2, mirrored tokens) compare equal. Parallel passes over x rather
// than float64 tensor copies of it.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/fixed_order_sum.h"

namespace restore {

// x: (n, d) row-major float32. Writes xn (n, d) and density (n).
inline void normalise_and_density(const float* x, int64_t n, int64_t d, float* xn, float* density) {
  // inv[i] = 1 / max(||x_i||, 1e-12): a product per element instead of a float64 division (the divisions
  // were most of this function's time), still a fixed function of the row alone.
  std::vector<double> inv(n), colsum(d);
  at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* row = x + i * d;
      const double sq = sum_8_lanes<double>(d, [&](int64_t c) { return double(row[c]) * row[c]; });
      const double r = 1.0 / std::max(std::sqrt(sq), 1e-12);
      inv[i] = r;
      for (int64_t c = 0; c < d; ++c) xn[i * d + c] = static_cast<float>(row[c] * r);
    }
  });
  // Columns in chunks, tokens in ascending order within each: the sum does not depend on the thread count.
  at::parallel_for(0, d, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t i = 0; i < n; ++i) {
      const float* row = x + i * d;
      const double r = inv[i];
      for (int64_t c = c0; c < c1; ++c) colsum[c] += row[c] * r;
    }
  });
  at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float* row = x + i * d;
      density[i] = static_cast<float>(inv[i] * sum_8_lanes<double>(d, [&](int64_t c) { return row[c] * colsum[c]; }));
    }
  });
}

}  // namespace restore
