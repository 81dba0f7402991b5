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

// min(|a - b|, T-1) in 128-bit arithmetic (M-RoPE, one axis).
inline int64_t reference_abs_distance_index(int64_t a, int64_t b, int64_t table_len) {
  const __int128 d = static_cast<__int128>(a) - static_cast<__int128>(b);
  return static_cast<int64_t>(std::min<__int128>(d < 0 ? -d : d, table_len - 1));
}

// M-RoPE inputs (docs/ops.md §5b) for B rows of Lq queries and Lk keys: (t, h, w) ids of a sequence of text
// runs, 3 x 4 image grids and a 2-frame video (temporal stride 2), every 4th token dropped (reduced, gapped
// positions); the queries are the sequence's last Lq tokens (so a query inside a grid has earlier keys with
// a larger w or h). extreme: some ids at the ends of int64 (the |distance| must saturate). The (3, T) table
// holds decay shares (rope_decay_tables) of 16 frequencies in sections [4, 6, 6].
inline void set_mrope_inputs(int B, int Lq, int Lk, int T, bool extreme, std::vector<int64_t>& q_pos,
                             std::vector<int64_t>& k_pos, std::vector<float>& table) {
  const int L = std::max(Lq, Lk);
  std::vector<int64_t> seq;  // (L, 3)
  int64_t next = 0;          // the next text position
  for (int token = 0; int(seq.size()) < 3 * L; ++token) {
    const int segment = (token / 12) % 4;  // text, image, text, video
    int64_t t = next, h = next, w = next;
    if (segment == 1) t = next, h = next + (token % 12) / 4, w = next + token % 4;
    if (segment == 3) t = next + 2 * ((token % 12) / 6), h = next + (token % 6) / 3, w = next + token % 3;
    if ((segment == 1 || segment == 3) && token % 12 == 11) next += 4;  // text resumes past the grid
    if (segment == 0 || segment == 2) ++next;
    if (token % 4 != 3) seq.insert(seq.end(), {t, h, w});
  }
  q_pos.assign(size_t(B) * Lq * 3, 0);
  k_pos.assign(size_t(B) * Lk * 3, 0);
  for (int b = 0; b < B; ++b) {
    for (int j = 0; j < Lk; ++j)
      for (int s = 0; s < 3; ++s) k_pos[(size_t(b) * Lk + j) * 3 + s] = seq[size_t(j) * 3 + s] + b;
    for (int i = 0; i < Lq; ++i)
      for (int s = 0; s < 3; ++s) q_pos[(size_t(b) * Lq + i) * 3 + s] = seq[size_t(L - Lq + i) * 3 + s] + b;
  }
  if (extreme) {
    for (size_t t = 0; t < q_pos.size(); t += 7) q_pos[t] = INT64_MAX - int64_t(t % 5);
    for (size_t t = 1; t < k_pos.size(); t += 5) k_pos[t] = INT64_MIN + int64_t(t % 3);
  }
  table.assign(size_t(3) * T, 0.f);
  const int F = 16, section[3] = {4, 6, 6};
  for (int d = 0; d < T; ++d)
    for (int i = 0, s = 0, in_s = 0; i < F; ++i) {
      table[size_t(s) * T + d] += float(std::cos(d * std::pow(10000.0, -double(i) / F)) / F);
      if (++in_s == section[s]) ++s, in_s = 0;
    }
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
          if (p.q_pos && p.pos_axes == 3) {  // §5b: log(2 - sum_s table[s, min(|dq_s - dk_s|, T-1)])
            double decay = 0;
            for (int s = 0; s < 3; ++s)
              decay += p.table[s * p.table_len +
                               reference_abs_distance_index(p.q_pos[(int64_t(b) * p.lq + i) * 3 + s],
                                                            p.k_pos[(int64_t(b) * p.lk + j) * 3 + s], p.table_len)];
            x += std::log(2 - decay);
          } else if (p.q_pos) {
            x += p.table[reference_distance_index(p.q_pos[int64_t(b) * p.lq + i], p.k_pos[int64_t(b) * p.lk + j],
                                                  p.table_len)];
          }
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
