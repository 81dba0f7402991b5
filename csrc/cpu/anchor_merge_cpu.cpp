// Distinctive anchor merging on the CPU (SPEC §2). The N x N similarity is never held whole: density is
// one matrix-vector product (sum_j sim[i,j] = xn_i . sum_j xn_j), and the two passes that need pairwise
// similarities (nearest better token, token -> anchor) stream it in tiles through BLAS; the first computes
// only the half of it that the better-rule can use.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "cpu/blas_gemm.h"
#include "cpu/row_reductions.h"
#include "cpu/topk_select.h"
#include "op_checks.h"
#include "restore/anchor_math.h"

namespace restore {
namespace {

// Rows per similarity tile: about 16 MiB of float32 scores, whatever N is.
int64_t tile_rows(int64_t n_cols) { return std::max<int64_t>(1, std::min<int64_t>(n_cols, (int64_t{1} << 22) / n_cols)); }

// Similarity blocks of the nearest-better pass: kRowBlock x kColBlock float32 (256 KiB) stays in L2.
constexpr int64_t kRowBlock = 64;
constexpr int64_t kColBlock = 1024;

// nearest[i] = max over better j of sim[i, j], or 0 where no j is better (SPEC §2 step 4).
// "Better" is a strict order on density, so with the tokens sorted better-first, token i's better tokens
// are exactly a prefix of that order: only that prefix of its similarity row is computed (half of the
// N x N products), in cache-sized blocks through BLAS, and reduced by a branch-free row maximum.
std::vector<float> nearest_better_similarity(const at::Tensor& xn, const std::vector<double>& density,
                                            AnchorRule rule) {
  const int64_t n = xn.size(0), d = xn.size(1);
  std::vector<int64_t> order(n);
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return is_better(rule, density[b], density[a]); });
  // better_count[s]: tokens strictly better than order[s]; they are order[0 .. better_count[s]).
  std::vector<int64_t> better_count(n, 0);
  for (int64_t s = 1; s < n; ++s)
    better_count[s] = is_better(rule, density[order[s]], density[order[s - 1]]) ? s : better_count[s - 1];

  const at::Tensor sorted_xn =
      xn.index_select(0, at::from_blob(order.data(), {n}, at::TensorOptions().dtype(at::kLong))).contiguous();
  const float* x = sorted_xn.const_data_ptr<float>();
  std::vector<float> nearest(n);
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  // Late blocks have long prefixes: interleave first and last blocks so each thread's share is balanced.
  auto block_at = [blocks](int64_t q) { return q % 2 == 0 ? q / 2 : blocks - 1 - q / 2; };
  at::parallel_for(0, blocks, 1, [&](int64_t q0, int64_t q1) {
    std::vector<float> sim(kRowBlock * kColBlock);
    float best[kRowBlock];
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r0 = block_at(q) * kRowBlock, rows = std::min(kRowBlock, n - r0);
      std::fill(best, best + rows, -std::numeric_limits<float>::infinity());
      const int64_t needed = better_count[r0 + rows - 1];  // the longest prefix in the block
      for (int64_t c0 = 0; c0 < needed; c0 += kColBlock) {
        const int64_t cols = std::min(kColBlock, needed - c0);
        // Row-major sim (rows x cols) is column-major sim^T = X[c0:] (cols x d) . X[r0:]^T.
        sgemm_colmajor(true, false, cols, rows, d, 1.f, x + c0 * d, d, x + r0 * d, d, 0.f, sim.data(), cols);
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t limit = std::min(cols, better_count[r0 + r] - c0);
          if (limit > 0) best[r] = std::max(best[r], row_max(sim.data() + r * cols, limit));
        }
      }
      for (int64_t r = 0; r < rows; ++r) nearest[order[r0 + r]] = better_count[r0 + r] > 0 ? best[r] : 0.f;
    }
  });
  return nearest;
}

// assign[i] = argmax_s sim[i, anchors[s]] (ties to the lower slot); anchors take their own slot.
void assign_to_anchors(const at::Tensor& xn, const int64_t* anchors, int64_t num_anchors, int64_t* assign) {
  const int64_t n = xn.size(0);
  const at::Tensor anchor_t = xn.index_select(0, at::from_blob(const_cast<int64_t*>(anchors), {num_anchors},
                                                               at::TensorOptions().dtype(at::kLong)))
                                  .t();
  const int64_t rows = tile_rows(num_anchors);
  for (int64_t r0 = 0; r0 < n; r0 += rows) {
    const int64_t r1 = std::min(n, r0 + rows);
    const at::Tensor sim = at::mm(xn.slice(0, r0, r1), anchor_t).contiguous();
    const float* s = sim.const_data_ptr<float>();
    at::parallel_for(r0, r1, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const float* row = s + (i - r0) * num_anchors;
        int64_t best = 0;
        for (int64_t a = 1; a < num_anchors; ++a) best = row[a] > row[best] ? a : best;
        assign[i] = best;
      }
    });
  }
  for (int64_t a = 0; a < num_anchors; ++a) assign[anchors[a]] = a;
}

// Per-slot member counts and plain mean of x, accumulated in float32.
void mean_per_slot(const at::Tensor& xf, const int64_t* assign, int64_t num_slots, int64_t* size,
                   at::Tensor merged_row) {
  const int64_t n = xf.size(0), d = xf.size(1);
  std::vector<int64_t> start(num_slots + 1, 0), members(n);
  for (int64_t i = 0; i < n; ++i) ++start[assign[i] + 1];
  for (int64_t a = 0; a < num_slots; ++a) start[a + 1] += start[a];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < n; ++i) members[fill[assign[i]]++] = i;

  at::Tensor mean = at::zeros({num_slots, d}, xf.options());
  const float* x = xf.const_data_ptr<float>();
  float* out = mean.data_ptr<float>();
  at::parallel_for(0, num_slots, std::max<int64_t>(1, 4096 / (d * (n / num_slots + 1))), [&](int64_t a0, int64_t a1) {
    for (int64_t a = a0; a < a1; ++a) {
      float* acc = out + a * d;
      for (int64_t m = start[a]; m < start[a + 1]; ++m) {
        const float* row = x + members[m] * d;
        for (int64_t c = 0; c < d; ++c) acc[c] += row[c];
      }
      const float inv = 1.f / float(start[a + 1] - start[a]);
      for (int64_t c = 0; c < d; ++c) acc[c] *= inv;
      size[a] = start[a + 1] - start[a];
    }
  });
  merged_row.copy_(mean);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> anchor_merge_cpu(const at::Tensor& x,
                                                                            int64_t num_anchors,
                                                                            c10::string_view rule_name) {
  const AnchorRule rule = check_anchor_merge_args(x, num_anchors, rule_name);
  const int64_t batch = x.size(0), n = x.size(1), d = x.size(2);
  const auto long_opts = x.options().dtype(at::kLong);
  at::Tensor merged = at::empty({batch, num_anchors, d}, x.options());
  at::Tensor size = at::empty({batch, num_anchors}, long_opts);
  at::Tensor assign = at::empty({batch, n}, long_opts);
  at::Tensor anchors = at::empty({batch, num_anchors}, long_opts);

  std::vector<uint64_t> keys(n);
  std::vector<int64_t> scratch(n);
  for (int64_t b = 0; b < batch; ++b) {
    const at::Tensor xf = x[b].to(at::kFloat).contiguous();
    const at::Tensor xn = xf / xf.norm(2, {1}, /*keepdim=*/true).clamp_min(1e-12);

    // Density in float64: it is a sum of N similarities, and anchor choice hinges on its exact order.
    const at::Tensor xn64 = xn.to(at::kDouble);
    const at::Tensor density_t = at::mv(xn64, xn64.sum(0)).contiguous();
    const std::vector<double> density(density_t.const_data_ptr<double>(), density_t.const_data_ptr<double>() + n);

    const std::vector<float> nearest = nearest_better_similarity(xn, density, rule);
    for (int64_t i = 0; i < n; ++i) keys[i] = score_key(distinctive_score(density[i], double(nearest[i])));

    int64_t* anchors_b = anchors.data_ptr<int64_t>() + b * num_anchors;
    select_top_k(keys.data(), n, num_anchors, scratch.data(), anchors_b);
    int64_t* assign_b = assign.data_ptr<int64_t>() + b * n;
    assign_to_anchors(xn, anchors_b, num_anchors, assign_b);
    mean_per_slot(xf, assign_b, num_anchors, size.data_ptr<int64_t>() + b * num_anchors, merged[b]);
  }
  return {merged, size, assign, anchors};
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("anchor_merge", &anchor_merge_cpu); }

}  // namespace restore
