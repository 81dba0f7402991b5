// HoloV's whole selection on the CPU (contract: restore_ext.reference.holov_indices, docs/ops.md §3d): the
// crops' similarity variances V (crops in parallel), then per row the crop scores, the authors' budget loop and
// the in-crop choice. As torch ops those last steps are ~40 small calls, as long as the crops' matmuls at
// N = 576; here they are microseconds a row.
//
// gram = "bf16": V only enters a score as 1e3 mean(a) (1 + 0.09 V / (V + 1e-6)), so an interval for V from
// a bfloat16 Gram matrix (cpu/holov_variance_bounds.h; on AMX 1.7-2x faster than float32 at 180-token crops)
// is an interval for the score ~1e-4 as wide as V's. The budgets are taken from the intervals only when every
// decision of the authors' loop (each floor, each choice of the highest-weight crops) is the same for every
// score in them; otherwise that row's V are computed exactly, as gram = "exact" does. Either way the tokens
// are the ones the exact scores give.
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
#include "cpu/holov_variance_bounds.h"
#include "op_checks.h"

namespace restore {
namespace {

constexpr int64_t kNumCrops = 16;
constexpr double kAlpha = 0.09;  // weight of the similarity variance in a token's score
constexpr double kAttentionScale = 1e3;
constexpr double kEps = 1e-6;
constexpr double kMargin = 1e-12;  // relative: what the reference's own float64 rounding could move
constexpr int64_t kBf16MinCrop = 80;

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

// Crop scores known to lie in [lo, hi] (lo == hi: known exactly).
struct ScoreRange {
  std::vector<double> lo, hi;
};

// The authors' budget loop: floor(w k) each, w = score / (sum + 1e-6); the shortfall one each to the
// highest-weight crops; then, while some crop is given more than it holds, clamp and hand out one per round to
// the highest-weight crops with room. Ties go to the lower crop index (their topk leaves them unspecified).
// With exact scores it always succeeds. With ranges it returns false as soon as a decision depends on where
// the scores lie in them: a floor whose value differs across the range, or a choice of the r highest of a set
// of crops whose lowest chosen lower bound is not above every unchosen upper bound.
bool crop_budgets(const ScoreRange& s, const std::vector<Crop>& crops, int64_t k, bool exact,
                  std::vector<int64_t>& budget) {
  const int64_t count = int64_t(crops.size());
  const double sum_lo = std::accumulate(s.lo.begin(), s.lo.end(), 0.0);
  const double sum_hi = std::accumulate(s.hi.begin(), s.hi.end(), 0.0);
  std::vector<double> key(count);  // the order of the weights (their midpoints when not exact)
  int64_t given = 0;
  for (int64_t c = 0; c < count; ++c) {
    if (exact) {
      key[c] = s.lo[c] / (sum_lo + kEps);
      budget[c] = int64_t(std::floor(key[c] * double(k)));
    } else {
      const double lo = s.lo[c] / (s.lo[c] + (sum_hi - s.hi[c]) + kEps);
      const double hi = s.hi[c] / (s.hi[c] + (sum_lo - s.lo[c]) + kEps);
      budget[c] = int64_t(std::floor(lo * double(k) * (1 - kMargin)));
      if (budget[c] != int64_t(std::floor(hi * double(k) * (1 + kMargin)))) return false;
      key[c] = 0.5 * (s.lo[c] + s.hi[c]);
    }
    given += budget[c];
  }
  std::vector<int64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return key[a] > key[b]; });
  // +1 to the `take` first crops in `order` that `eligible` admits; false if that choice is not certain.
  std::vector<char> chosen(count);
  auto hand_out = [&](int64_t take, auto eligible) {
    double lowest_chosen = INFINITY, highest_other = -INFINITY;
    for (int64_t r = 0; r < count; ++r) {
      const int64_t c = order[r];
      if (!eligible(c)) continue;
      if (take > 0) {
        budget[c] += 1;
        lowest_chosen = std::min(lowest_chosen, s.lo[c]);
        --take;
      } else {
        highest_other = std::max(highest_other, s.hi[c]);
      }
    }
    return exact || lowest_chosen * (1 - kMargin) > highest_other * (1 + kMargin);
  };
  if (!hand_out(std::min(k - given, count), [](int64_t) { return true; })) return false;
  for (int64_t round = 0; round < k; ++round) {
    int64_t sum = 0, room = 0;
    for (int64_t c = 0; c < count; ++c) {
      budget[c] = std::min(budget[c], crops[c].size);
      sum += budget[c];
      room += budget[c] < crops[c].size;
    }
    if (sum >= k || room == 0) break;
    std::vector<int64_t> before(budget);
    if (!hand_out(std::min(k - sum, room), [&](int64_t c) { return before[c] < crops[c].size; })) return false;
  }
  return true;
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

// A crop's score 1e3 mean(a) (1 + 0.09 V / (V + 1e-6)), increasing in V.
double crop_score(double mean_attention, double v) {
  const double share = std::isinf(v) ? 1.0 : v / (v + kEps);
  return kAttentionScale * mean_attention * (1.0 + kAlpha * share);
}


}  // namespace

at::Tensor holov_indices_cpu(const at::Tensor& features_in, int64_t k, const at::Tensor& cls_attention,
                             c10::string_view gram) {
  // "auto": bfloat16 on AMX where the crops are long enough (N >= 1265) that their Gram matrices outweigh the
  // bounds' extra passes over the features (measured on one thread against the AVX-512 float32 kernel: 1.7x
  // slower at 36 tokens, a wash at 72-96, 1.7-2x faster at 180).
  const bool bf16_pays = cpu_has_amx_bf16() && features_in.dim() == 3 &&
                         (features_in.size(1) + kNumCrops - 1) / kNumCrops >= kBf16MinCrop;
  const bool bf16 = check_holov_indices_args(features_in, k, cls_attention, gram, bf16_pays);
  const at::Tensor features = features_in.contiguous();
  // One float64 copy of the attention (B x N), so that every comparison below is in one type.
  const at::Tensor att = cls_attention.to(at::kDouble).contiguous();
  const int64_t batch = features.size(0), n = features.size(1), d = features.size(2);
  at::Tensor out = at::empty({batch, k}, features.options().dtype(at::kLong));
  if (batch == 0) return out;
  const double* a = att.const_data_ptr<double>();
  bool finite_att = true, nonnegative = true;
  for (int64_t i = 0; i < batch * n; ++i) {
    finite_att &= std::isfinite(a[i]);
    nonnegative &= !(a[i] < 0.0);
  }
  TORCH_CHECK(finite_att, "holov_indices: cls_attention must be finite, got NaN or inf");
  TORCH_CHECK(nonnegative, "holov_indices: cls_attention must be >= 0 (attention weights), got a negative value");

  const std::vector<Crop> crops = crops_of(n);
  const int64_t count = int64_t(crops.size());
  // [lo, hi] around V of every crop of m >= 2 tokens, one task per crop; lo == hi when exact.
  std::vector<holov::VarianceBounds> variance(batch * count, holov::VarianceBounds{0.0, 0.0});
  std::atomic<bool> finite{true};
  int64_t* dst = out.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "holov_indices_cpu", [&] {
    const scalar_t* x = features.const_data_ptr<scalar_t>();
    auto rows_of = [&](int64_t b, const Crop& crop) { return x + (b * n + crop.start) * d; };
    auto exact_variance = [&](int64_t b, const Crop& crop, std::vector<scalar_t>& f, std::vector<scalar_t>& g,
                              std::vector<double>& inv, holov::VarianceBounds* v) {
      double value;
      if (!holov::crop_variance(rows_of(b, crop), crop.size, d, f, g, inv, &value)) return false;
      *v = {value, value};
      return true;
    };
    at::parallel_for(0, batch * count, 1, [&](int64_t t0, int64_t t1) {
      std::vector<scalar_t> f, g;
      std::vector<double> inv;
      holov::Bf16Scratch scratch;
      for (int64_t t = t0; t < t1; ++t) {
        const Crop& crop = crops[t % count];
        if (crop.size < 2) continue;
        const bool ok = bf16 ? holov::crop_variance_bounds(rows_of(t / count, crop), crop.size, d, scratch,
                                                           &variance[t])
                             : exact_variance(t / count, crop, f, g, inv, &variance[t]);
        if (!ok) {
          finite = false;
          return;
        }
      }
    });
    if (!finite) return;

    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      ScoreRange scores{std::vector<double>(count), std::vector<double>(count)};
      std::vector<double> mean(count);
      std::vector<int64_t> budget(count);
      std::vector<scalar_t> f, g;
      std::vector<double> inv;
      for (int64_t b = b0; b < b1; ++b) {
        const double* row_att = a + b * n;
        holov::VarianceBounds* v = variance.data() + b * count;
        bool exact = true;
        for (int64_t c = 0; c < count; ++c) {
          const Crop& crop = crops[c];
          mean[c] = 0.0;
          for (int64_t i = 0; i < crop.size; ++i) mean[c] += row_att[crop.start + i];
          mean[c] /= double(crop.size);
          // A one-token crop scores its attention, unscaled, as the authors' loop does. Otherwise, with a >= 0
          // and var >= 0, the mean of the token scores 1e3 a + 0.09 var mean|1e3 a| / (mean|var| + 1e-6) is
          // 1e3 mean(a) (1 + 0.09 V / (V + 1e-6)).
          scores.lo[c] = crop.size < 2 ? mean[c] : crop_score(mean[c], v[c].lo);
          scores.hi[c] = crop.size < 2 ? mean[c] : crop_score(mean[c], v[c].hi);
          exact &= scores.lo[c] == scores.hi[c];
        }
        if (!crop_budgets(scores, crops, k, exact, budget)) {
          for (int64_t c = 0; c < count; ++c) {
            if (crops[c].size < 2) continue;
            exact_variance(b, crops[c], f, g, inv, &v[c]);  // finite: its bounds were computed
            scores.lo[c] = scores.hi[c] = crop_score(mean[c], v[c].lo);
          }
          crop_budgets(scores, crops, k, true, budget);
        }
        choose_in_crops(row_att, crops, budget, dst + b * k);
      }
    });
  });
  TORCH_CHECK(finite, "holov_indices: features must be finite, got NaN or inf");
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("holov_indices", &holov_indices_cpu); }

}  // namespace restore
