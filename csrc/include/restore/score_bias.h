#pragma once
// The RESTORE bias that calibrated attention adds to scale * <q, k> (docs/ops.md §5), shared by the CPU,
// SIMT and tensor-core kernels: log_size of the key (-inf masks it) plus a term of the query's and the key's
// positions. The position term is a small struct with one call, bias(q_pos, k_pos), and a Position type:
// DistanceBias for 1-D RoPE (§5), MropeDistanceBias for (t, h, w) positions under M-RoPE (§5b). Kernels are
// templates over it, so the 1-D form compiles exactly as before the multi-axis one existed.
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

// |a - b| clamped to cap >= 0, for any int64 a and b: one of the two saturating distances is 0.
RESTORE_HD int64_t saturating_abs_distance(int64_t a, int64_t b, int64_t cap) {
  return saturating_distance(a, b, cap) + saturating_distance(b, a, cap);
}

// A token's M-RoPE position ids (t, h, w), as the (B, L, 3) position tensors hold them.
struct MropePosition {
  int64_t axis[3];
};

// Multi-axis RoPE (docs/ops.md §5b): log(2 - decay) with decay = sum_s table[s, min(|dq_s - dk_s|, T-1)] over
// a (3, T) table of decay shares (rope_decay_tables). Under M-RoPE an earlier key can have a larger h or w
// than its query, hence the absolute distance per axis. The op admits only tables with every share in
// [-1, 1] whose row maxima add up (in float32, t + h then + w, as decay() adds) to less than 2
// (mrope_table_allowed), so 2 - decay lies in (0, 5] and the log is finite for any positions.
struct MropeDistanceBias {
  using Position = MropePosition;
  static constexpr int kAxes = 3;
  const float* table = nullptr;  // (3, T) contiguous, or null: no position term
  int64_t table_len = 0;

  RESTORE_HD bool enabled() const { return table != nullptr; }
  // Row s of the table, and the index into it of a pair's distance along axis s.
  RESTORE_HD const float* row(int s) const { return table + s * table_len; }
  RESTORE_HD int64_t index(int s, int64_t q_id, int64_t k_id) const {
    return saturating_abs_distance(q_id, k_id, table_len - 1);
  }
  // The shares added in this order everywhere (t + h, then + w): what mrope_table_allowed bounds.
  RESTORE_HD static float decay_sum(float t, float h, float w) { return (t + h) + w; }
  RESTORE_HD float decay(const Position& q_pos, const Position& k_pos) const {
    return decay_sum(read_only(row(0) + index(0, q_pos.axis[0], k_pos.axis[0])),
                     read_only(row(1) + index(1, q_pos.axis[1], k_pos.axis[1])),
                     read_only(row(2) + index(2, q_pos.axis[2], k_pos.axis[2])));
  }
  RESTORE_HD float operator()(const Position& q_pos, const Position& k_pos) const {
    return logf(2.f - decay(q_pos, k_pos));
  }
};

// What a 1-D table may hold: as log_size, finite values or -inf (it masks the keys at that distance); +inf or
// NaN would turn whole rows into NaN.
RESTORE_HD bool distance_table_entry_allowed(float x) { return x == x && x != INFINITY; }

// What a (3, T) table of decay shares may hold (MropeDistanceBias): each entry in [-1, 1] (NaN is not) ...
RESTORE_HD bool mrope_share_allowed(float x) { return x >= -1.f && x <= 1.f; }
// ... and row maxima whose sum, added as decay() adds, stays below 2, so that 2 - decay > 0 for any positions
// (float addition is monotone: no sum of entries rounds above the sum of the maxima).
RESTORE_HD bool mrope_maxima_allowed(float max_t, float max_h, float max_w) {
  return MropeDistanceBias::decay_sum(max_t, max_h, max_w) < 2.f;
}

// What log_size may hold: a finite log(size), or -inf to mask a key. +inf would make every weight of the row
// inf / inf and NaN poisons the row, so the op refuses both (op_checks.h on the CPU, log_size_check.cu on
// CUDA) rather than return NaN.
RESTORE_HD bool log_size_allowed(float x) { return x == x && x != INFINITY; }

}  // namespace restore
