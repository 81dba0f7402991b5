// DivPrune selection on the CPU (contract: restore_ext.reference.divprune_indices). Memory is O(N * D) per
// row: the first pick's nearest-other similarity streams the N x N similarity in symmetric cache-sized tiles
// through BLAS (half the products), and each greedy step is one matrix-vector product against the newly
// chosen token, folded into a running per-token maximum similarity to the chosen set.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "cpu/blas_gemm.h"
#include "cpu/fixed_order_sum.h"
#include "cpu/symmetric_tiles.h"
#include "op_checks.h"
#include "restore/divprune_math.h"
#include "unit_tokens.h"

namespace restore {
namespace {

float nearest_other_exact(const float* xn, int64_t n, int64_t d, int64_t i) {
  float best = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < n; ++j)
    if (j != i) best = std::max(best, dot_fixed_order(xn + i * d, xn + j * d, d));
  return best;
}

// The first pick: the token whose nearest other token is farthest. Symmetric cache-sized BLAS tiles find it up
// to rounding; the tokens within `kSlack` of the best are then re-scored with the fixed-order dot, so ties
// are exact.
int64_t first_pick(const at::Tensor& xn) {
  const int64_t n = xn.size(0), d = xn.size(1);
  if (n == 1) return 0;
  const float* x = xn.const_data_ptr<float>();
  const std::vector<float> nearest =
      masked_similarity_row_max(x, n, d, [](int64_t i, int64_t j) { return i != j; });
  constexpr float kSlack = 1e-4f;  // far above float32 GEMM rounding of unit-vector dot products
  const float lowest = *std::min_element(nearest.begin(), nearest.end());
  std::vector<int64_t> candidates;
  for (int64_t i = 0; i < n; ++i)
    if (nearest[i] <= lowest + kSlack) candidates.push_back(i);
  std::vector<float> exact(candidates.size());
  at::parallel_for(0, int64_t(candidates.size()), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) exact[c] = nearest_other_exact(x, n, d, candidates[c]);
  });
  int64_t best = 0;
  for (size_t c = 1; c < candidates.size(); ++c)
    if (divprune_before(exact[c], candidates[c], exact[best], candidates[best])) best = int64_t(c);
  return candidates[best];
}

// Greedy farthest-point selection of k tokens from the rows of xn (n, d); writes them in ascending order.
void divprune_row(const at::Tensor& xn, int64_t k, int64_t* out) {
  const int64_t n = xn.size(0), d = xn.size(1);
  const float* x = xn.const_data_ptr<float>();
  std::vector<float> near(n, -std::numeric_limits<float>::infinity());
  std::vector<int64_t> chosen{first_pick(xn)};
  const int64_t grain = std::max<int64_t>(1, 32768 / d);
  const int threads = at::get_num_threads();
  std::vector<std::pair<float, int64_t>> best_of(threads);
  while (int64_t(chosen.size()) < k) {
    const int64_t c = chosen.back();
    near[c] = kDivPruneChosen;
    std::fill(best_of.begin(), best_of.end(), std::make_pair(kDivPruneChosen, n));
    at::parallel_for(0, n, grain, [&](int64_t i0, int64_t i1) {
      auto& best = best_of[at::get_thread_num()];
      for (int64_t i = i0; i < i1; ++i) {
        if (near[i] == kDivPruneChosen) continue;
        near[i] = std::max(near[i], dot_fixed_order(x + i * d, x + c * d, d));
        if (divprune_before(near[i], i, best.first, best.second)) best = {near[i], i};
      }
    });
    auto best = best_of[0];
    for (const auto& b : best_of)
      if (divprune_before(b.first, b.second, best.first, best.second)) best = b;
    chosen.push_back(best.second);
  }
  std::sort(chosen.begin(), chosen.end());
  std::copy(chosen.begin(), chosen.end(), out);
}

}  // namespace

at::Tensor divprune_indices_cpu(const at::Tensor& x, int64_t k) {
  check_divprune_indices_args(x, k);
  const int64_t batch = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({batch, k}, x.options().dtype(at::kLong));
  if (k == n) {  // every token is chosen; the set, in ascending order, does not depend on the greedy order
    out.copy_(at::arange(n, out.options()).expand({batch, n}));
    return out;
  }
  for (int64_t b = 0; b < batch; ++b) {
    const at::Tensor xn = unit_tokens(x[b].to(at::kFloat), 1);
    divprune_row(xn, k, out.data_ptr<int64_t>() + b * k);
  }
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("divprune_indices", &divprune_indices_cpu); }

}  // namespace restore
