#include "cpu/softmax_rows.h"

#include <cstring>
#include <cmath>
#include <limits>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RESTORE_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RESTORE_CPU_CLONES
#endif

namespace restore {
namespace {

// exp(x) as 2^n * p(r), n = round(x / ln 2), |r| <= ln(2)/2, with Cephes' expf polynomial (relative error
// ~1e-7). Branch-free so that loops over it vectorise; inputs below -87 (including -inf) give exactly 0.
// C++17 bit casts (older torch builds extensions as C++17); compilers turn these memcpys into moves.
inline int32_t float_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof(i));
  return i;
}

inline float bits_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
}

inline float exp_poly(float x) {
  float xc = x < -87.0f ? -87.0f : x;  // ternaries, not std::fmin/fmax/floor: those are library calls that
  xc = xc > 88.0f ? 88.0f : xc;         // block vectorisation
  // Round to nearest by adding 1.5 * 2^23: the integer lands in the low mantissa bits.
  const float shifted = xc * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t n_int = float_bits(shifted) - 0x4B400000;
  const float two_n = bits_float((n_int + 127) << 23);
  return x < -87.0f ? 0.0f : p * two_n;
}

// log(x) for positive normal x (all the M-RoPE bias needs: 2 - decay lies in [2^-23, 5]) as e * ln 2 +
// log(m), m in [sqrt(1/2), sqrt(2)), with Cephes' logf polynomial (relative error ~1e-7). Branch-free, so that
// the bias loop vectorises; std::log would be a library call per score.
inline float log_poly(float x) {
  const int32_t bits = float_bits(x);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = bits_float((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  m = low ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return m + y + 0.693359375f * e;
}

// Reductions over 16 independent lanes: without -ffast-math the compiler may not reorder a single running
// sum or max, but it vectorises lane-wise updates of an array.
constexpr int64_t kLanes = 16;

// -inf past `visible`, and the maximum of the row: the tail of both add_bias_and_max forms.
inline float mask_and_max(float* row, int64_t n, int64_t visible) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t c = visible; c < n; ++c) row[c] = neg_inf;
  float lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = neg_inf;
  int64_t c = 0;
  for (; c + kLanes <= visible; c += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = row[c + l] > lanes[l] ? row[c + l] : lanes[l];
  float m = neg_inf;
  for (; c < visible; ++c) m = row[c] > m ? row[c] : m;
  for (int64_t l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

}  // namespace

// The position-bias loops run over chunks of keys in two passes: table indices (int64 distance math, saturating)
// narrowed to int32, then the table reads. GCC vectorises a float gather only with 32-bit indices (a fused loop
// with the int64 index stays scalar), and only where it knows the output does not alias the table: the
// __restrict parameters of these inlined helpers say so. The op refuses tables of 2^31 entries or more, so the
// narrowing is exact.
constexpr int64_t kChunk = 64;

inline void table_reads(float* __restrict out, int64_t m, const float* __restrict log_size,
                        const int32_t* __restrict idx, const float* __restrict table) {
  for (int64_t c = 0; c < m; ++c) out[c] = log_size[c] + table[idx[c]];
}

inline void log_of_decay(float* __restrict out, int64_t m, const float* __restrict log_size,
                         const int32_t* __restrict it, const int32_t* __restrict ih, const int32_t* __restrict iw,
                         const float* __restrict t_row, const float* __restrict h_row, const float* __restrict w_row) {
  for (int64_t c = 0; c < m; ++c)
    out[c] = log_size[c] + log_poly(2.f - MropeDistanceBias::decay_sum(t_row[it[c]], h_row[ih[c]], w_row[iw[c]]));
}

RESTORE_CPU_CLONES
void position_bias_row(float* bias, int64_t visible, const float* log_size, const int64_t* k_pos, int64_t q_pos,
                       const DistanceBias& position) {
  // The bias step of every kernel (restore/score_bias.h): the same saturating distance as on the GPU.
  const int64_t len = position.table_len;
  int32_t idx[kChunk];
  for (int64_t c0 = 0; c0 < visible; c0 += kChunk) {
    const int64_t m = visible - c0 < kChunk ? visible - c0 : kChunk;
    for (int64_t c = 0; c < m; ++c) idx[c] = static_cast<int32_t>(distance_index(q_pos, k_pos[c0 + c], len));
    table_reads(bias + c0, m, log_size + c0, idx, position.table);
  }
}

RESTORE_CPU_CLONES
void position_bias_row(float* bias, int64_t visible, const float* log_size, const MropeKeyRows& k_pos,
                       const MropePosition& q_pos, const MropeDistanceBias& position) {
  // MropeDistanceBias's decay (restore/score_bias.h) in two passes; only the log is this file's own.
  const MropeDistanceBias mrope = position;
  const int64_t qt = q_pos.axis[0], qh = q_pos.axis[1], qw = q_pos.axis[2];
  int32_t it[kChunk], ih[kChunk], iw[kChunk];
  for (int64_t c0 = 0; c0 < visible; c0 += kChunk) {
    const int64_t m = visible - c0 < kChunk ? visible - c0 : kChunk;
    const int64_t *kt = k_pos.axis[0] + c0, *kh = k_pos.axis[1] + c0, *kw = k_pos.axis[2] + c0;
    for (int64_t c = 0; c < m; ++c) it[c] = static_cast<int32_t>(mrope.index(0, qt, kt[c]));
    for (int64_t c = 0; c < m; ++c) ih[c] = static_cast<int32_t>(mrope.index(1, qh, kh[c]));
    for (int64_t c = 0; c < m; ++c) iw[c] = static_cast<int32_t>(mrope.index(2, qw, kw[c]));
    log_of_decay(bias + c0, m, log_size + c0, it, ih, iw, mrope.row(0), mrope.row(1), mrope.row(2));
  }
}

RESTORE_CPU_CLONES
float add_bias_and_max(float* row, int64_t n, int64_t visible, const float* bias) {
  if (bias != nullptr)
    for (int64_t c = 0; c < visible; ++c) row[c] += bias[c];
  return mask_and_max(row, n, visible);
}

RESTORE_CPU_CLONES
float exp_and_sum(float* row, int64_t n, float offset) {
  for (int64_t c = 0; c < n; ++c) row[c] = exp_poly(row[c] - offset);
  float lanes[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += row[c + l];
  float sum = 0.f;
  for (; c < n; ++c) sum += row[c];
  for (int64_t l = 0; l < kLanes; ++l) sum += lanes[l];
  return sum;
}

RESTORE_CPU_CLONES
void scale_row(float* row, int64_t n, float factor) {
  for (int64_t c = 0; c < n; ++c) row[c] *= factor;
}

}  // namespace restore
