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

// Reductions over 16 independent lanes: without -ffast-math the compiler may not reorder a single running
// sum or max, but it vectorises lane-wise updates of an array.
constexpr int64_t kLanes = 16;

}  // namespace

RESTORE_CPU_CLONES
float add_bias_and_max(float* row, int64_t n, int64_t visible, const float* log_size, const int64_t* k_pos,
                       int64_t q_pos, const DistanceBias& position) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  if (position.enabled()) {
    // The bias step of every kernel (restore/score_bias.h): the same saturating distance as on the GPU.
    const DistanceBias bias = position;
    for (int64_t c = 0; c < visible; ++c) row[c] += log_size[c] + bias(q_pos, k_pos[c]);
  } else if (log_size != nullptr) {
    for (int64_t c = 0; c < visible; ++c) row[c] += log_size[c];
  }
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
