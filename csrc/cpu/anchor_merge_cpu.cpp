// Distinctive anchor merging on the CPU (docs/ops.md §2). The N x N similarity is never held whole: density is
// one matrix-vector product (sum_j sim[i,j] = xn_i . sum_j xn_j), and the two passes that need pairwise
// similarities (nearest better token, token -> anchor) stream it in tiles through BLAS.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "cpu/normalise_density.h"
#include "cpu/symmetric_tiles.h"
#include "cpu/topk_select.h"
#include "op_checks.h"
#include "restore/anchor_math.h"

namespace restore {
namespace {

// Rows per similarity tile: about 16 MiB of float32 scores, whatever N is.
int64_t tile_rows(int64_t n_cols) { return std::max<int64_t>(1, std::min<int64_t>(n_cols, (int64_t{1} << 22) / n_cols)); }

// nearest[i] = max over better j of sim[i, j], or 0 where no j is better (docs/ops.md §2 step 4).
std::vector<float> nearest_better_similarity(const at::Tensor& xn, const std::vector<float>& density,
                                            AnchorRule rule) {
  std::vector<float> nearest = masked_similarity_row_max(
      xn.const_data_ptr<float>(), xn.size(0), xn.size(1),
      [&](int64_t i, int64_t j) { return is_better(rule, density[i], density[j]); });
  for (float& v : nearest) v = std::isinf(v) ? 0.f : v;  // similarities are finite: -inf means no better token
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
        // As the CUDA kernel: a NaN similarity never wins, a row without any number gets slot 0.
        int64_t best = 0;
        float best_sim = -std::numeric_limits<float>::infinity();
        for (int64_t a = 0; a < num_anchors; ++a)
          if (row[a] > best_sim) best_sim = row[a], best = a;
        assign[i] = best;
      }
    });
  }
  for (int64_t a = 0; a < num_anchors; ++a) assign[anchors[a]] = a;
}

// Per-slot member counts and plain mean of x (docs/ops.md §2 step 8), accumulated in float64 in ascending token
// order: a float32 sum overflows to inf for features near the float32 limit (~3e38) although their mean is
// finite, and float64 holds any sum of float32 values exactly enough to round the mean as the reference does.
// The CUDA segmented_mean_kernel computes the same sum and division.
void mean_per_slot(const at::Tensor& xf, const int64_t* assign, int64_t num_slots, int64_t* size,
                   at::Tensor merged_row) {
  const int64_t n = xf.size(0), d = xf.size(1);
  std::vector<int64_t> start(num_slots + 1, 0), members(n);
  for (int64_t i = 0; i < n; ++i) ++start[assign[i] + 1];
  for (int64_t a = 0; a < num_slots; ++a) start[a + 1] += start[a];
  std::vector<int64_t> fill(start.begin(), start.end() - 1);
  for (int64_t i = 0; i < n; ++i) members[fill[assign[i]]++] = i;

  at::Tensor mean = at::empty({num_slots, d}, xf.options());
  const float* x = xf.const_data_ptr<float>();
  float* out = mean.data_ptr<float>();
  at::parallel_for(0, num_slots, std::max<int64_t>(1, 4096 / (d * (n / num_slots + 1))), [&](int64_t a0, int64_t a1) {
    std::vector<double> acc(d);
    for (int64_t a = a0; a < a1; ++a) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t m = start[a]; m < start[a + 1]; ++m) {
        const float* row = x + members[m] * d;
        for (int64_t c = 0; c < d; ++c) acc[c] += row[c];
      }
      const double count = double(start[a + 1] - start[a]);
      for (int64_t c = 0; c < d; ++c) out[a * d + c] = static_cast<float>(acc[c] / count);
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

  std::vector<uint32_t> keys(n);
  std::vector<int64_t> scratch(n);
  for (int64_t b = 0; b < batch; ++b) {
    const at::Tensor xf = x[b].to(at::kFloat).contiguous();
    at::Tensor xn = at::empty_like(xf);
    std::vector<float> density(n);
    normalise_and_density(xf.const_data_ptr<float>(), n, d, xn.data_ptr<float>(), density.data());

    const std::vector<float> nearest = nearest_better_similarity(xn, density, rule);
    for (int64_t i = 0; i < n; ++i)
      keys[i] = score_key(static_cast<float>(distinctive_score(double(density[i]), double(nearest[i]))));

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
