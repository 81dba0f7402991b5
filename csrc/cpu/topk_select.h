#pragma once
// Top-k by the docs/ops.md §1 ranking, for the CPU kernels (topk_indices and anchor selection).
#include <algorithm>
#include <cstdint>
#include <numeric>

#include "restore/topk_order.h"

namespace restore {

// Writes to `out` the indices of the k best keys, in ascending index order. `scratch` holds n entries.
template <typename Key>
void select_top_k(const Key* keys, int64_t n, int64_t k, int64_t* scratch, int64_t* out) {
  std::iota(scratch, scratch + n, int64_t{0});
  auto before = [keys](int64_t a, int64_t b) { return ranks_before(keys[a], a, keys[b], b); };
  // The ranking is a strict total order (indices break every tie), so the first k after nth_element are
  // exactly the top k.
  if (k < n) std::nth_element(scratch, scratch + (k - 1), scratch + n, before);
  std::sort(scratch, scratch + k);
  std::copy(scratch, scratch + k, out);
}

}  // namespace restore
