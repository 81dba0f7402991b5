// VisPruner's duplicate-removal rounds on the CPU (contract: restore_ext.reference.vispruner_matching).
// The rounds are sequential and each does little work (|A| masked row maxima, a sort of |A| scores), so as a
// composite of torch ops they cost a dozen op launches each; here one call runs them all. Each A token's
// closest B token is a masked maximum over its row of the similarity "frame"; once the residual shrinks to
// half the frame, the frame is compacted to the residual so that rows stay at most twice as long as needed.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <utility>
#include <vector>

#include "op_checks.h"

namespace restore {
namespace {

constexpr int64_t kRoundLimit = 8;  // VisPruner drops at most this many A tokens per round

// max_j (row[j] + bias[j]) with bias 0 for B tokens and -inf otherwise (sim is finite, checked); 8 independent
// lanes so the compiler vectorises it.
template <typename T>
T masked_row_max(const T* row, const T* bias, int64_t n) {
  constexpr T lowest = -std::numeric_limits<T>::infinity();
  T acc[8] = {lowest, lowest, lowest, lowest, lowest, lowest, lowest, lowest};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) {
      const T v = row[j + l] + bias[j + l];
      acc[l] = v > acc[l] ? v : acc[l];
    }
  for (; j < n; ++j) acc[0] = std::max(acc[0], row[j] + bias[j]);
  return std::max({acc[0], acc[1], acc[2], acc[3], acc[4], acc[5], acc[6], acc[7]});
}

// v - v is 0 for a finite v and NaN for inf or NaN; one branch-free pass the compiler vectorises.
template <typename T>
bool all_finite(const T* p, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) ok &= (p[i] - p[i]) == T(0);
  return ok;
}

// One row: sim (r0, r0); writes the `keep` surviving positions, ascending, to out.
template <typename T>
void matching_row(const T* sim, int64_t r0, int64_t keep, int64_t* out) {
  // A NaN or inf would break the masked maximum (inf + -inf) and the ordering; cosines never are.
  TORCH_CHECK(all_finite(sim, r0 * r0), "vispruner_matching: sim must be finite, got NaN or inf");
  std::vector<int64_t> order(r0), ids(r0);  // current residual order (frame rows); frame row -> position
  std::iota(order.begin(), order.end(), 0);
  std::iota(ids.begin(), ids.end(), 0);
  std::vector<T> store, bias(r0);
  const T* frame = sim;
  int64_t width = r0;
  std::vector<std::pair<T, int64_t>> scored;
  std::vector<int64_t> next;
  while (int64_t(order.size()) > keep) {
    const int64_t count = order.size();
    const int64_t r = std::min(kRoundLimit, count - keep);
    if (count <= width / 2) {  // compact the frame to the residual, in the current order
      std::vector<T> packed(count * count);
      std::vector<int64_t> packed_ids(count);
      for (int64_t i = 0; i < count; ++i) {
        const T* src = frame + order[i] * width;
        for (int64_t j = 0; j < count; ++j) packed[i * count + j] = src[order[j]];
        packed_ids[i] = ids[order[i]];
      }
      store.swap(packed);
      ids.swap(packed_ids);
      frame = store.data();
      width = count;
      std::iota(order.begin(), order.end(), 0);
    }
    std::fill(bias.begin(), bias.begin() + width, -std::numeric_limits<T>::infinity());
    for (int64_t j = 1; j < count; j += 2) bias[order[j]] = T(0);
    const int64_t na = (count + 1) / 2;
    scored.resize(na);
    const int64_t grain = std::max<int64_t>(1, 16384 / width);
    at::parallel_for(0, na, grain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        scored[i] = {masked_row_max(frame + order[2 * i] * width, bias.data(), width), i};
      }
    });
    // Highest first; equal scores keep the earlier A position (a stable sort of pairs built in that order).
    std::stable_sort(scored.begin(), scored.end(), [](const auto& x, const auto& y) { return x.first > y.first; });
    next.clear();
    for (int64_t t = std::min(r, na); t < na; ++t) next.push_back(order[2 * scored[t].second]);
    for (int64_t j = 1; j < count; j += 2) next.push_back(order[j]);
    order.swap(next);
  }
  for (int64_t i = 0; i < keep; ++i) out[i] = ids[order[i]];
  std::sort(out, out + keep);
}

}  // namespace

at::Tensor vispruner_matching_cpu(const at::Tensor& sim, int64_t keep) {
  check_vispruner_matching_args(sim, keep);
  const int64_t batch = sim.size(0), r0 = sim.size(1);
  at::Tensor out = at::empty({batch, keep}, sim.options().dtype(at::kLong));
  const at::Tensor s = sim.contiguous();
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "vispruner_matching_cpu", [&] {
    const scalar_t* src = s.const_data_ptr<scalar_t>();
    int64_t* dst = out.data_ptr<int64_t>();
    // Rows in parallel when there are several; a single row parallelises its rounds' row maxima instead
    // (parallel_for nested in a parallel region runs inline).
    at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) matching_row(src + b * r0 * r0, r0, keep, dst + b * keep);
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("vispruner_matching", &vispruner_matching_cpu); }

}  // namespace restore
