#pragma once
// docs/ops.md §5 in float64, read through an AttentionParams: what every emulated attention kernel must
// produce. Written without the kernels' shared steps (restore/causal_mask.h, score_bias.h), so a bug there
// shows as a mismatch instead of being reproduced by the reference.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/calibrated_attention/attention_params.h"

// table index clamp(q_pos - k_pos, 0, T-1) in 128-bit arithmetic: exact for any int64 positions.
inline int64_t reference_distance_index(int64_t q_pos, int64_t k_pos, int64_t table_len) {
  const __int128 d = static_cast<__int128>(q_pos) - static_cast<__int128>(k_pos);
  return static_cast<int64_t>(std::clamp<__int128>(d, 0, table_len - 1));
}

// Positions at the ends of int64 (the distance must saturate, not wrap): queries near INT64_MAX, keys near
// INT64_MIN, a few at INT64_MAX (later than every query: distance 0) and a few ordinary ones.
inline void set_extreme_positions(std::vector<int64_t>& q_pos, std::vector<int64_t>& k_pos) {
  const int64_t hi = INT64_MAX, lo = INT64_MIN;
  for (size_t i = 0; i < q_pos.size(); ++i) q_pos[i] = i % 5 == 4 ? int64_t(i) : hi - int64_t(i % 7);
  for (size_t j = 0; j < k_pos.size(); ++j) k_pos[j] = j % 3 == 0 ? lo + int64_t(j) : (j % 3 == 1 ? hi : -int64_t(j));
}

// Returns out[((b * Lq + i) * H + h) * Dh + d]; E is the element type of q, k and v.
template <typename E>
std::vector<double> reference_attention(const restore::attention::AttentionParams& p) {
  const E* q = static_cast<const E*>(p.q);
  const E* k = static_cast<const E*>(p.k);
  const E* v = static_cast<const E*>(p.v);
  const int D = p.head_dim, group = p.heads / p.kv_heads;
  std::vector<double> out(size_t(p.batch) * p.lq * p.heads * D, 0.0);
  std::vector<double> w(p.lk);
  for (int b = 0; b < p.batch; ++b)
    for (int h = 0; h < p.heads; ++h)
      for (int i = 0; i < p.lq; ++i) {
        const int hk = h / group;
        const E* qi = q + b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride;
        double m = -INFINITY, total = 0;
        for (int j = 0; j < p.lk; ++j) {
          const E* kj = k + b * p.k_batch_stride + j * p.k_row_stride + hk * p.k_head_stride;
          double x = 0;
          for (int d = 0; d < D; ++d) x += double(float(qi[d])) * double(float(kj[d]));
          x *= double(p.scale);
          if (p.log_size) x += p.log_size[int64_t(b) * p.lk + j];
          if (p.q_pos)
            x += p.table[reference_distance_index(p.q_pos[int64_t(b) * p.lq + i], p.k_pos[int64_t(b) * p.lk + j],
                                                  p.table_len)];
          if (p.causal && j > i + p.lk - p.lq) x = -INFINITY;  // query i sees keys j <= i + Lk - Lq
          w[j] = x, m = std::max(m, x);
        }
        for (auto& x : w) total += x = std::exp(x - (std::isfinite(m) ? m : 0));
        double* o = out.data() + ((size_t(b) * p.lq + i) * p.heads + h) * D;
        for (int j = 0; j < p.lk; ++j) {
          if (w[j] == 0) continue;
          const E* vj = v + b * p.v_batch_stride + j * p.v_row_stride + hk * p.v_head_stride;
          for (int d = 0; d < D; ++d) o[d] += w[j] * double(float(vj[d]));
        }
        for (int d = 0; d < D; ++d) o[d] = total > 0 ? o[d] / total : 0;
      }
  return out;
}

// Largest |got - want| over all outputs; NaN anywhere counts as infinite.
template <typename E>
double max_abs_error(const std::vector<E>& got, const std::vector<double>& want) {
  double err = 0;
  for (size_t t = 0; t < want.size(); ++t) {
    const double g = float(got[t]);
    err = std::isnan(g) ? INFINITY : std::max(err, std::abs(g - want[t]));
  }
  return err;
}
