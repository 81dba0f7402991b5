#pragma once
// The per-score math of calibrated attention (SPEC §5) shared by the CPU and CUDA kernels:
// which keys a query sees, the RESTORE bias, and the -inf-safe steps of the online softmax.
#include <cmath>
#include <cstdint>
#include "restore/host_device.h"

namespace restore {

// FlashAttention's causal alignment: the last query sees every key, earlier ones one fewer each.
RESTORE_HD bool key_visible(int64_t q_index, int64_t k_index, int64_t lq, int64_t lk, bool causal) {
  return !causal || k_index <= q_index + lk - lq;
}

// Index of table[clamp(q_pos - k_pos, 0, T-1)]. The difference is taken in unsigned arithmetic once it is
// known to be positive, so extreme positions cannot overflow.
RESTORE_HD int64_t distance_index(int64_t q_pos, int64_t k_pos, int64_t table_len) {
  if (q_pos <= k_pos) return 0;
  const uint64_t d = static_cast<uint64_t>(q_pos) - static_cast<uint64_t>(k_pos);
  const uint64_t last = static_cast<uint64_t>(table_len - 1);
  return static_cast<int64_t>(d < last ? d : last);
}

// Subtracting the row maximum keeps exp() finite; a row whose maximum is still -inf (nothing visible yet,
// or only -inf keys) must subtract 0 instead, or exp(-inf - -inf) = NaN poisons the row.
RESTORE_HD float softmax_offset(float row_max) { return row_max == -INFINITY ? 0.f : row_max; }

// Factor that moves an accumulator from the old to the new running maximum.
RESTORE_HD float rescale_factor(float old_max, float new_max) {
  return expf(old_max - softmax_offset(new_max));
}

// 1/l, or 0 for a query whose weights are all zero (it saw no key): its output is zeros, never NaN.
RESTORE_HD float normalizer(float row_sum) { return row_sum > 0.f ? 1.f / row_sum : 0.f; }

}  // namespace restore
