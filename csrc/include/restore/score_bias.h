#pragma once
// The RESTORE bias that calibrated attention adds to scale * <q, k> (docs/ops.md §5), shared by the CPU,
// SIMT and tensor-core kernels: log_size of the key (-inf masks it) plus a term of the query's and the key's
// positions. The position term is a small struct with one call, bias(q_pos, k_pos), so another form is one
// more struct beside DistanceBias: issue 12's multi-axis M-RoPE term, log(2 - sum_s table[s, min(|dq_s - dk_s|,
// T-1)]) over (t, h, w) positions, takes a 3-axis position type and a (3, T) table and reuses
// saturating_distance below per axis.
#include <cmath>
#include <cstdint>
#include "restore/host_device.h"

namespace restore {

// min(max(a - b, 0), cap) for any int64 a and b, cap >= 0, without overflow: the difference of two int64
// values is exact modulo 2^64 in uint64, and exact there whenever a > b (it is then in [1, 2^64 - 1]); a wrapped
// signed difference would turn q_pos near INT64_MAX minus a negative k_pos into a negative distance.
// Branch-free (selects only), so the CPU loop over a row of keys still vectorises.
RESTORE_HD int64_t saturating_distance(int64_t a, int64_t b, int64_t cap) {
  const uint64_t d = static_cast<uint64_t>(a) - static_cast<uint64_t>(b);
  const uint64_t c = static_cast<uint64_t>(cap);
  const uint64_t clamped = d < c ? d : c;
  return a > b ? static_cast<int64_t>(clamped) : 0;
}

// Index of table[clamp(q_pos - k_pos, 0, T-1)], T >= 1.
RESTORE_HD int64_t distance_index(int64_t q_pos, int64_t k_pos, int64_t table_len) {
  return saturating_distance(q_pos, k_pos, table_len - 1);
}

// 1-D RoPE (docs/ops.md §4): table[clamp(q_pos - k_pos, 0, T-1)], the attention RoPE's decay takes from a
// key that far back, given back.
struct DistanceBias {
  using Position = int64_t;
  const float* table = nullptr;  // (T,), or null: no position term
  int64_t table_len = 0;

  RESTORE_HD bool enabled() const { return table != nullptr; }
  RESTORE_HD float operator()(Position q_pos, Position k_pos) const {
    return read_only(table + distance_index(q_pos, k_pos, table_len));
  }
};

// What log_size may hold: a finite log(size), or -inf to mask a key. +inf would make every weight of the row
// inf / inf and NaN poisons the row, so the op refuses both (op_checks.h on the CPU, log_size_check.cu on
// CUDA) rather than return NaN.
RESTORE_HD bool log_size_allowed(float x) { return x == x && x != INFINITY; }

}  // namespace restore
