// HoloV's whole selection on the CPU (contract: restore_ext.reference.holov_indices, docs/ops.md §3d): the
// crops' similarity variances (cpu/holov_crop_math.h, crops in parallel), then per row the crop scores, the
// authors' budget loop and the in-crop choice. As torch ops those last steps are ~40 small calls (sorts over
// (B, 16) and (B, 16, m)), as long as the crops' matmuls at N = 576; here they are a few microseconds a row.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <numeric>
#include <vector>

#include "cpu/holov_crop_math.h"
#include "op_checks.h"

namespace restore {
namespace {

constexpr int64_t kNumCrops = 16;
constexpr double kAlpha = 0.09;           // weight of the similarity variance in a token's score
constexpr double kAttentionScale = 1e3;
constexpr double kEps = 1e-6;

struct Crop {
  int64_t start, size;
};

// 16 contiguous runs of tokens in raster order, the first N % 16 one token longer; only the non-empty ones.
std::vector<Crop> crops_of(int64_t n) {
  const int64_t base = n / kNumCrops, extra = n % kNumCrops;
  std::vector<Crop> crops;
  for (int64_t c = 0, start = 0; c < kNumCrops; ++c) {
    const int64_t size = base + (c < extra ? 1 : 0);
    if (size > 0) crops.push_back({start, size});
    start += size;
  }
  return crops;
}

// The authors' budget loop: floor(w k) each, the shortfall one each to the highest-weight crops, then, while
// some crop is given more than it holds, clamp and hand out one per round to the highest-weight crops with
// room. Ties go to the lower crop index (their topk leaves them unspecified).
void crop_budgets(const std::vector<double>& scores, const std::vector<Crop>& crops, int64_t k,
                  std::vector<int64_t>& budget) {
  const int64_t count = int64_t(crops.size());
  const double total = std::accumulate(scores.begin(), scores.end(), 0.0) + kEps;
  std::vector<double> weight(count);
  int64_t given = 0;
  for (int64_t c = 0; c < count; ++c) {
    weight[c] = scores[c] / total;
    budget[c] = int64_t(std::floor(weight[c] * double(k)));
    given += budget[c];
  }
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return weight[a] > weight[b]; });
  for (int64_t r = 0; r < std::min(k - given, count); ++r) budget[order[r]] += 1;
  for (int64_t round = 0; round < k; ++round) {
    int64_t sum = 0, room = 0;
    for (int64_t c = 0; c < count; ++c) {
      budget[c] = std::min(budget[c], crops[c].size);
      sum += budget[c];
      room += budget[c] < crops[c].size;
    }
    if (sum >= k || room == 0) break;
    int64_t hand_out = std::min(k - sum, room);
    for (int64_t r = 0; r < count && hand_out > 0; ++r) {
      const int64_t c = order[r];
      if (budget[c] < crops[c].size) {
        budget[c] += 1;
        --hand_out;
      }
    }
  }
}

// Each crop's `budget` highest-attention tokens (ties to the lower index), ascending, written to `out` in crop
// order, so the row is ascending.
void choose_in_crops(const double* att, const std::vector<Crop>& crops, const std::vector<int64_t>& budget,
                     int64_t* out) {
  std::vector<int64_t> slot;
  for (size_t c = 0; c < crops.size(); ++c) {
    const int64_t take = budget[c], start = crops[c].start;
    if (take <= 0) continue;
    slot.resize(crops[c].size);
    std::iota(slot.begin(), slot.end(), start);
    if (take < crops[c].size) {
      std::partial_sort(slot.begin(), slot.begin() + take, slot.end(), [&](int64_t a, int64_t b) {
        return att[a] > att[b] || (att[a] == att[b] && a < b);
      });
      std::sort(slot.begin(), slot.begin() + take);
    }
    out = std::copy(slot.begin(), slot.begin() + take, out);
  }
}

}  // namespace

at::Tensor holov_indices_cpu(const at::Tensor& features_in, int64_t k, const at::Tensor& cls_attention) {
  check_holov_indices_args(features_in, k, cls_attention);
  const at::Tensor features = features_in.contiguous();
  // One float64 copy of the attention (B x N), so that every comparison below is in one type.
  const at::Tensor att = cls_attention.to(at::kDouble).contiguous();
  const int64_t batch = features.size(0), n = features.size(1), d = features.size(2);
  at::Tensor out = at::empty({batch, k}, features.options().dtype(at::kLong));
  if (batch == 0) return out;
  const double* a = att.const_data_ptr<double>();
  bool valid = true;
  for (int64_t i = 0; i < batch * n; ++i) valid &= std::isfinite(a[i]) && a[i] >= 0.0;
  TORCH_CHECK(valid, "holov_indices: cls_attention must be finite and >= 0 (attention weights), got a NaN, inf "
              "or negative value");

  const std::vector<Crop> crops = crops_of(n);
  const int64_t count = int64_t(crops.size());
  // V of every crop of m >= 2 tokens: one task per crop.
  std::vector<double> variance(batch * count, 0.0);
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "holov_indices_cpu", [&] {
    const scalar_t* x = features.const_data_ptr<scalar_t>();
    at::parallel_for(0, batch * count, 1, [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> f, gram;
      std::vector<double> inv;
      for (int64_t t = t0; t < t1; ++t) {
        const Crop& crop = crops[t % count];
        if (crop.size < 2) continue;
        const scalar_t* rows = x + ((t / count) * n + crop.start) * d;
        if (!holov::crop_variance(rows, crop.size, d, f, gram, inv, &variance[t])) {
          finite = false;
          return;
        }
      }
    });
  });
  TORCH_CHECK(finite, "holov_indices: features must be finite, got NaN or inf");

  int64_t* dst = out.data_ptr<int64_t>();
  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> scores(count);
    std::vector<int64_t> budget(count);
    for (int64_t b = b0; b < b1; ++b) {
      const double* row_att = a + b * n;
      for (int64_t c = 0; c < count; ++c) {
        const Crop& crop = crops[c];
        double mean = 0.0;
        for (int64_t i = 0; i < crop.size; ++i) mean += row_att[crop.start + i];
        mean /= double(crop.size);
        if (crop.size < 2) {
          scores[c] = mean;  // a one-token crop scores its attention, unscaled, as the authors' loop does
          continue;
        }
        // With a >= 0 and var >= 0, the mean of the token scores 1e3 a + 0.09 var mean|1e3 a| / (mean|var| +
        // 1e-6) is 1e3 mean(a) (1 + 0.09 V / (V + 1e-6)), V the crop's mean variance.
        const double v = variance[b * count + c];
        scores[c] = kAttentionScale * mean * (1.0 + kAlpha * v / (v + kEps));
      }
      crop_budgets(scores, crops, k, budget);
      choose_in_crops(row_att, crops, budget, dst + b * k);
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("holov_indices", &holov_indices_cpu); }

}  // namespace restore
