// V bracketed from a bfloat16 Gram matrix (see the header; docs/ops.md §3d). Each row x_i is split unscaled,
// hi'_i = bfloat16(x_i), lo'_i = x_i - hi'_i (exact), and scaled afterwards in double: with inv_i = 1 / (|x_i| +
// 1e-6), f_i = inv_i x_i = hi_i + lo_i. The cosine matrix is S = hi hi^T + hi lo^T + lo hi^T + lo lo^T; the
// Gram of the bfloat16 rows is within gamma |hi'_i| |hi'_j| of the exact product for any summation order
// (gamma = 1.01 d 2^-24; bfloat16 products are exact in float32). V = (sum_{i!=j} S_ij^2 - c sum_i t_i^2) /
// (m (m - 1)), t_i = sum_{j!=i} S_ij, c = (m - 2) / (m - 1)^2. Bounding each correction entry by entry
// (Cauchy-Schwarz) would leave V_lo at 0 for crops whose tokens share a direction, as real patch features do
// (the t_i are then ~m / 2 and the corrections to them add up); so the first-order parts that such a direction
// inflates are computed (dot products with the column sums, a second pass over the crop's rows, in cache) and
// only the rest is bounded: sigma >= ||hi||_2 (Gershgorin on G) for sum_{i!=j} (G_ij - mean G) (hi_i . lo_j),
// norms for lo lo^T, and the rounding of every float32 sum. The per-row sweeps are in cpu/holov_bf16_rows.cpp.

#include "cpu/holov_variance_bounds.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/blas_gemm.h"
#include "cpu/gram_amx_bf16.h"
#include "cpu/holov_bf16_rows.h"

// MKL's mixed-precision GEMM (AMX or AVX512-BF16 where present); absent from other BLAS builds.
extern "C" void cblas_gemm_bf16bf16f32(int layout, int transa, int transb, int m, int n, int k, float alpha,
                                       const uint16_t* a, int lda, const uint16_t* b, int ldb, float beta,
                                       float* c, int ldc) __attribute__((weak));

namespace restore {
namespace holov {
namespace {

constexpr double kNormEps = 1e-6;                  // HoloV's f = x / (|x| + 1e-6)
constexpr int kCblasRowMajor = 101, kCblasNoTrans = 111, kCblasTrans = 112;
constexpr double kUnit32 = 1.0 / 16777216.0;       // 2^-24, float32's unit roundoff
constexpr double kMinNormal32 = 1.1754943508222875e-38;  // 2^-126: below it float32 may flush to zero
constexpr int kLanes = 16;

double norm2(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += double(x) * double(x);
  return std::sqrt(s);
}

// raw (rows x rows, rows `stride` apart) = hi' hi'^T, at least on and above the diagonal.
void bf16_gram(const uint16_t* hi, int64_t m, int64_t d, int64_t ld, int64_t stride, Bf16Scratch& s) {
  float* raw = s.gram.data();
  if (gram_amx_bf16(hi, m, ld, raw, stride, s.amx)) return;
  if (cblas_gemm_bf16bf16f32 != nullptr && m <= INT_MAX && ld <= INT_MAX) {
    cblas_gemm_bf16bf16f32(kCblasRowMajor, kCblasNoTrans, kCblasTrans, int(m), int(m), int(d), 1.f, hi, int(ld),
                           hi, int(ld), 0.f, raw, int(stride));
    return;
  }
  // the same products of bfloat16 values, in a float32 GEMM
  s.hi_float.resize(size_t(m * d));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t k = 0; k < d; ++k) {
      const uint32_t bits = uint32_t(hi[i * ld + k]) << 16;
      std::memcpy(&s.hi_float[i * d + k], &bits, 4);
    }
  sgemm_colmajor(true, false, m, m, d, 1.f, s.hi_float.data(), d, s.hi_float.data(), d, 0.f, raw, stride);
}

template <typename T>
bool bounds_impl(const T* x, int64_t m, int64_t d, Bf16Scratch& s, VarianceBounds* out) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const size_t ms = size_t(m), ds = size_t(d);
  // hi' padded with zero rows and columns to whole AMX tiles
  const int64_t ld = (d + kAmxDepth - 1) / kAmxDepth * kAmxDepth;
  const int64_t rows = (m + kAmxRowBlock - 1) / kAmxRowBlock * kAmxRowBlock;
  s.hi.resize(size_t(rows * ld));
  std::fill(s.hi.begin() + m * ld, s.hi.end(), uint16_t(0));
  s.gram.resize(size_t(rows * rows));
  s.inv.resize(ms);
  s.hn.resize(ms);
  s.ln.resize(ms);
  s.hl.resize(ms);
  s.hi_sum.assign(ds, 0.f);
  s.lo_sum.assign(ds, 0.f);
  // Float32 lane sums (FMA or not, one or two accumulators per lane) of at most d / 16 terms of one sign:
  // relative error below (d / 16 + 40) 2^-24; squares below 2^-126 may flush, 2 d 2^-126 in all.
  const double sum_rel = (double(d) / kLanes + 40) * kUnit32;
  const double tiny_sum = 2.0 * double(d) * kMinNormal32;
  // |f_true - f| <= eps for f = inv x, inv from our norm: |x|^2 = hi'^2 + 2 hi'.lo' + lo'^2, each sum within
  // sum_rel (|hi'.lo'| <= 2^-8 hi'^2) and tiny_sum; then the double arithmetic.
  const double eps = 0.52 * sum_rel + std::sqrt(3.0 * tiny_sum) / kNormEps + 1e-15;
  bool representable = true;  // the float32 sums, and the Gram's entries (|G_ij| <= max_i |hi'_i|^2), are finite
  double inv_max = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    const T* row = x + i * d;
    double sums[3];
    if (!split_row(row, d, ld, s.hi.data() + i * ld, sums, i + 2 < m ? row + 2 * d : nullptr)) return false;
    representable &= sums[0] < 1e37 && std::isfinite(sums[1]) && std::isfinite(sums[2]);
    const double norm2_x = std::max(0.0, sums[0] + 2.0 * sums[2] + sums[1]);
    const double inv = 1.0 / (std::sqrt(norm2_x) + kNormEps);
    s.inv[i] = inv;
    inv_max = std::max(inv_max, inv);
    s.hn[i] = inv * std::sqrt(sums[0] * (1 + sum_rel) + tiny_sum) * (1 + 1e-15);
    s.ln[i] = inv * std::sqrt(sums[1] * (1 + sum_rel) + tiny_sum) * (1 + 1e-15) + eps;
    s.hl[i] = inv * inv * sums[2];
    add_to_column_sums(row, s.hi.data() + i * ld, d, float(inv), s.hi_sum.data(), s.lo_sum.data());
  }
  if (!representable || d > (1 << 22)) {  // past float32's range; or gamma would exceed ~0.25
    *out = {0.0, kInf};
    return true;
  }
  // hi_i . lo_sum and lo_i . hi_sum while the crop's rows are still in cache (the Gram's packing evicts them)
  s.dots.resize(2 * ms);
  for (int64_t i = 0; i < m; ++i) {
    double* dots = s.dots.data() + 2 * i;
    row_dots(x + i * d, s.hi.data() + i * ld, d, s.hi_sum.data(), s.lo_sum.data(), dots);
    dots[0] *= s.inv[i];
    dots[1] *= s.inv[i];
  }
  bf16_gram(s.hi.data(), m, d, ld, rows, s);
  // float32 accumulation of d exact products in any order, then two scalings in double
  const double gamma = 1.01 * double(d) * kUnit32 + 4e-16;
  // a product with a flushed bfloat16 operand (|a b| < 2^-126 (|a| + |b|), summed: 2^-126 sqrt(d) (|hi'_i| +
  // |hi'_j|)) or a flushed partial sum (2^-126 each), scaled by inv_i inv_j (inv |hi'| = hn <= 1.01)
  const double tiny_entry =
      kMinNormal32 * (2.02 * std::sqrt(double(d)) * inv_max + double(d) * inv_max * inv_max);
  // float32 lane dot products of length d (and hi . lo): relative to the sum of |terms|
  const double dot_rel = sum_rel + 4 * kUnit32 * kUnit32;
  double hsum = 0, lsum = 0, h2 = 0, h4 = 0, l2 = 0;
  for (int64_t i = 0; i < m; ++i) {
    hsum += s.hn[i];
    lsum += s.ln[i];
    h2 += s.hn[i] * s.hn[i];
    h4 += s.hn[i] * s.hn[i] * s.hn[i] * s.hn[i];
    l2 += s.ln[i] * s.ln[i];
  }
  // The float32 column sums (terms float(inv_j) x', rounded, then added) are within gamma_m sum_j |hi_j|
  // (resp. |lo_j|) of the exact ones, plus flushed terms.
  const double gamma_m = 1.01 * double(m) * kUnit32 + 3.01 * kUnit32;
  const double col_tiny = std::sqrt(double(d)) * double(m) * kMinNormal32;
  const double hs_norm = norm2(s.hi_sum) + gamma_m * hsum + col_tiny;
  const double ls_norm = norm2(s.lo_sum) + gamma_m * lsum + col_tiny;
  // Row sums of G (diagonal read as 0), from its upper triangle
  s.row_stats.assign(5 * ms, 0.0);
  double* st = s.row_stats.data();
  const PairSums rs{st, st + ms, st + 2 * ms, st + 3 * ms, st + 4 * ms};
  pair_sums(s.gram.data(), m, rows, s.inv.data(), s.hn.data(), s.ln.data(), rs);
  // ... and the terms of sum_{i != j} G_ij (hi_i . lo_j) that are computed
  s.t_centre.resize(ms);
  double t_sum = 0, x_sum = 0, x_err = 0;
  for (int64_t i = 0; i < m; ++i) {
    t_sum += rs.sum[i];
    const double* dots = s.dots.data() + 2 * i;  // hi_i . lo_sum, lo_i . hi_sum
    // t_i's centre: fl(t_i) + hi_i . (sum_{j != i} lo_j) + lo_i . (sum_{j != i} hi_j)
    const double a = dots[0] - s.hl[i], b = dots[1] - s.hl[i];
    x_sum += a;
    x_err += dot_rel * (s.hn[i] * ls_norm + s.ln[i] * hs_norm + 2 * s.hn[i] * s.ln[i]);
    s.t_centre[i] = rs.sum[i] + a + b;
  }
  const double pairs = double(m) * double(m - 1);
  const double mu = t_sum / pairs;  // mean off-diagonal entry of G
  x_err += eps * double(m - 1) * hsum + gamma_m * hsum * lsum;
  double q = 0, t2 = 0, lambda = 0, sr = 0, sl = 0, cross = 0, et = 0;
  for (int64_t i = 0; i < m; ++i) {
    const double hn = s.hn[i], ln = s.ln[i], h_other = hsum - hn;
    q += rs.sq[i];
    // Gershgorin on hi hi^T, whose entries are within gamma hn_i hn_j (+ flushed terms) of G's
    lambda = std::max(lambda, hn * hn + rs.abs[i] + gamma * hn * h_other + tiny_entry * double(m));
    sr += gamma * hn * rs.abs_hn[i] + tiny_entry * rs.abs[i];
    sl += ln * rs.abs_ln[i];
    // |sum_j (G_ij - mu) (lo_i . hi_j)| <= ln_i sigma |G_i. - mu|, and the same by columns (G is symmetric)
    const double dev = std::max(0.0, rs.sq[i] - 2 * mu * rs.sum[i] + double(m - 1) * mu * mu);
    cross += 2 * ln * std::sqrt(dev);
    // |t_i - centre_i|: the rounding of G, lo against the float64 lo, sum_{j != i} lo_i . lo_j, the dots
    const double dt = gamma * hn * h_other + tiny_entry * double(m) + hn * double(m - 1) * eps +
                      eps * (hs_norm + hn) + ln * (ls_norm + double(m) * eps + ln) +
                      dot_rel * (hn * ls_norm + ln * hs_norm + 2 * hn * ln) + gamma_m * (hn * lsum + ln * hsum);
    const double centre = s.t_centre[i];
    t2 += centre * centre;
    et += 2 * std::abs(centre) * dt + dt * dt;
  }
  const double sigma = std::sqrt(lambda);
  const double r_frob = gamma * std::sqrt(std::max(0.0, h2 * h2 - h4)) + tiny_entry * double(m);
  const double delta_frob = r_frob + 2 * sigma * std::sqrt(l2) + l2;
  // sum_{i != j} S_ij^2 = Q + 2 sum G (R + X + X^T + L) + |Delta|^2, with sum G (X + X^T) = 2 mu X + the rest
  const double q_centre = q + 4 * mu * x_sum;
  const double eq = 2 * (sr + sigma * cross + sl) + 4 * std::abs(mu) * x_err + delta_frob * delta_frob;
  const double c = double(m - 2) / (double(m - 1) * double(m - 1));
  const double mm = double(m) * double(m);
  const double slack = (1e-12 + 1e-15 * mm) * (std::abs(q_centre) + eq + c * (t2 + et)) + 1e-25;
  const double lower = q_centre - eq - c * (t2 + et) - slack;
  const double upper = q_centre + eq - c * std::max(0.0, t2 - et) + slack;
  *out = {std::max(0.0, lower) / pairs, std::max(0.0, upper) / pairs};
  return true;
}

}  // namespace

bool crop_variance_bounds(const float* x, int64_t m, int64_t d, Bf16Scratch& s, VarianceBounds* out) {
  return bounds_impl(x, m, d, s, out);
}

bool crop_variance_bounds(const double* x, int64_t m, int64_t d, Bf16Scratch& s, VarianceBounds* out) {
  return bounds_impl(x, m, d, s, out);
}

}  // namespace holov
}  // namespace restore
