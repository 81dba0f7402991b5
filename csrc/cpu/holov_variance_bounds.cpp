// V bracketed from a bfloat16 Gram matrix (see the header; docs/ops.md §3d). With f the crop's normalised rows
// (float64), hi their bfloat16 rounding and lo = f - hi, the cosine matrix is S = hi hi^T + hi lo^T + lo hi^T +
// lo lo^T; the GEMM returns G = fl32(hi hi^T), within gamma |hi_i| |hi_j| of the exact product for any
// summation order (gamma = 1.01 d 2^-24; bfloat16 products are exact in float32). V = (sum_{i!=j} S_ij^2 -
// c sum_i t_i^2) / (m (m - 1)), t_i = sum_{j!=i} S_ij, c = (m - 2) / (m - 1)^2. Bounding each correction
// entry by entry (Cauchy-Schwarz) would leave V_lo at 0 for crops whose tokens share a direction, as real patch
// features do (the t_i are then ~m / 2 and the corrections to them add up); so the first-order parts that such
// a direction inflates are computed exactly (a second pass over the crop's rows, in cache) and only the rest is
// bounded: sigma >= ||hi||_2 (Gershgorin on G) for sum_{i!=j} (G_ij - mean G) (hi_i . lo_j), norms for lo lo^T
// and the rounding of every float32 sum.
#include "cpu/holov_variance_bounds.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/blas_gemm.h"

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
constexpr double kTiny = 1e-30;                    // covers flushed denormals, per entry
constexpr int kLanes = 16;

// bfloat16(f), nearest, ties to even (f finite), as its bits and as a float.
inline uint16_t to_bf16(float f, float* as_float) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  const uint32_t top = u & 0xFFFF0000u;
  std::memcpy(as_float, &top, 4);
  return uint16_t(u >> 16);
}

// GCC vector types: each target clone below compiles them to its own widest unit (SSE by default, AVX-512 on
// the avx512f clone), which plain loops with float reductions never get without -ffast-math.
typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));
typedef float v8f __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));

// Always inlined into the clones that use them, so the ABI of a vector return (-Wpsabi) never applies.
#pragma GCC diagnostic ignored "-Wpsabi"
template <typename V>
__attribute__((always_inline)) inline V load(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
__attribute__((always_inline)) inline void store(void* p, const V& v) {
  std::memcpy(p, &v, sizeof(V));
}

inline float lane_sum(const v16f& v) {
  double s = 0.0;
  for (int l = 0; l < 16; ++l) s += v[l];
  return float(s);
}

// One value of split_row's scalar tail: its bfloat16 part into hi, its sums (double) into sums[0..2].
inline void split_one(float f, int64_t k, uint16_t* hi, float* hi_sum, float* lo_sum, double* sums) {
  float h;
  hi[k] = to_bf16(f, &h);
  const float lo = f - h;
  sums[0] += double(h) * h;
  sums[1] += double(lo) * lo;
  sums[2] += double(h) * lo;
  hi_sum[k] += h;
  lo_sum[k] += lo;
}

// One row of float32 features: hi = bfloat16(f), lo = f - hi (exact: Sterbenz); float32 lane sums of hi^2,
// lo^2 and hi lo into sums[0..2], and hi and lo added into the crop's column sums (float32).
// `next` (the next row, or null) is prefetched line by line alongside: a row of d = 1024 floats is one 4 KiB
// page, and hardware prefetchers stop at page boundaries, so without it every row starts with a DRAM stall.
__attribute__((target_clones("avx512f", "avx2", "default"))) void split_row(const float* x, int64_t d, double inv,
                                                                           uint16_t* hi, float* hi_sum,
                                                                           float* lo_sum, double* sums,
                                                                           const float* next) {
  const float inv32 = float(inv);
  v16f acc_h = {}, acc_l = {}, acc_x = {};
  int64_t k = 0;
  for (; k + 16 <= d; k += 16) {
    if (next != nullptr) __builtin_prefetch(next + k);
    const v16f f = load<v16f>(x + k) * inv32;
    v16u u = (v16u)f;
    u += 0x7FFFu + ((u >> 16) & 1u);
    const v16f h = (v16f)(u & 0xFFFF0000u);
    store(hi + k, __builtin_convertvector(u >> 16, v16h));
    const v16f lo = f - h;
    acc_h += h * h;
    acc_l += lo * lo;
    acc_x += h * lo;
    store(hi_sum + k, load<v16f>(hi_sum + k) + h);
    store(lo_sum + k, load<v16f>(lo_sum + k) + lo);
  }
  sums[0] = sums[1] = sums[2] = 0.0;
  for (; k < d; ++k) split_one(x[k] * inv32, k, hi, hi_sum, lo_sum, sums);
  sums[0] += lane_sum(acc_h);
  sums[1] += lane_sum(acc_l);
  sums[2] += lane_sum(acc_x);
}

// The same for float64 features (f rounded once from x * inv in double).
void split_row(const double* x, int64_t d, double inv, uint16_t* hi, float* hi_sum, float* lo_sum, double* sums,
               const double* /*next*/) {
  sums[0] = sums[1] = sums[2] = 0.0;
  for (int64_t k = 0; k < d; ++k) split_one(float(x[k] * inv), k, hi, hi_sum, lo_sum, sums);
}

// hi . lo_sum and lo . hi_sum for one row (lo recomputed as split_row made it), float32 lanes.
__attribute__((target_clones("avx512f", "avx2", "default"))) void row_dots(const float* x, int64_t d, double inv,
                                                                          const float* hi_sum,
                                                                          const float* lo_sum, double* dots) {
  const float inv32 = float(inv);
  v16f acc_a = {}, acc_b = {};
  int64_t k = 0;
  for (; k + 16 <= d; k += 16) {
    const v16f f = load<v16f>(x + k) * inv32;
    v16u u = (v16u)f;
    u += 0x7FFFu + ((u >> 16) & 1u);
    const v16f h = (v16f)(u & 0xFFFF0000u);
    acc_a += h * load<v16f>(lo_sum + k);
    acc_b += (f - h) * load<v16f>(hi_sum + k);
  }
  double ta = 0, tb = 0;
  for (; k < d; ++k) {
    const float f = x[k] * inv32;
    float h;
    to_bf16(f, &h);
    ta += double(h) * lo_sum[k];
    tb += double(f - h) * hi_sum[k];
  }
  dots[0] = lane_sum(acc_a) + ta;
  dots[1] = lane_sum(acc_b) + tb;
}

void row_dots(const double* x, int64_t d, double inv, const float* hi_sum, const float* lo_sum, double* dots) {
  double ta = 0, tb = 0;
  for (int64_t k = 0; k < d; ++k) {
    const float f = float(x[k] * inv);
    float h;
    to_bf16(f, &h);
    ta += double(h) * lo_sum[k];
    tb += double(f - h) * hi_sum[k];
  }
  dots[0] = ta;
  dots[1] = tb;
}

// |x| from float32 lane sums of squares, within (d / 16 + 18) 2^-24 / 2 of the exact norm (squares of one
// sign: the lane sums' rounding is relative); in double where float32 squares could overflow or underflow.
// False for NaN or inf.
__attribute__((target_clones("avx512f", "avx2", "default"))) bool row_norm(const float* x, int64_t d,
                                                                          double* norm) {
  v16f acc = {};
  int64_t k = 0;
  for (; k + 16 <= d; k += 16) {
    const v16f v = load<v16f>(x + k);
    acc += v * v;
  }
  double ss = 0.0;
  for (; k < d; ++k) ss += double(x[k]) * double(x[k]);
  for (int l = 0; l < 16; ++l) ss += acc[l];
  if (!(ss > 1e-28 && ss < 1e36)) {  // also NaN and inf; float32 squares cannot overflow or underflow a double
    ss = 0.0;
    for (k = 0; k < d; ++k) ss += double(x[k]) * double(x[k]);
  }
  *norm = std::sqrt(ss);
  return std::isfinite(ss);
}

bool row_norm(const double* x, int64_t d, double* norm) {
  double peak = 0.0;
  bool finite = true;
  for (int64_t k = 0; k < d; ++k) {
    finite &= (x[k] - x[k]) == 0.0;
    peak = std::max(peak, std::abs(x[k]));
  }
  double ss = 0.0;
  if (peak > 0.0)
    for (int64_t k = 0; k < d; ++k) ss += (x[k] / peak) * (x[k] / peak);
  *norm = peak * std::sqrt(ss);
  return finite;
}

// Sums over row i of G with its diagonal read as 0: of G_ij^2, G_ij, |G_ij|, |G_ij| hn_j, |G_ij| ln_j; and
// col_sq[j] += G_ij^2, col_sum[j] += G_ij. Lanes for vectorisation.
struct RowSums {
  double sq, sum, abs, abs_hn, abs_ln;
};

__attribute__((target_clones("avx512f", "avx2", "default"))) RowSums row_sums(const float* row, int64_t m,
                                                                             const double* hn, const double* ln,
                                                                             double* col_sq, double* col_sum) {
  v8d sq = {}, sum = {}, ab = {}, ah = {}, al = {};
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    const v8d g = __builtin_convertvector(load<v8f>(row + j), v8d);
    const v8d a = g < 0 ? -g : g;
    sq += g * g;
    sum += g;
    ab += a;
    ah += a * load<v8d>(hn + j);
    al += a * load<v8d>(ln + j);
    store(col_sq + j, load<v8d>(col_sq + j) + g * g);
    store(col_sum + j, load<v8d>(col_sum + j) + g);
  }
  RowSums r{0, 0, 0, 0, 0};
  for (; j < m; ++j) {
    const double g = row[j], a = std::abs(g);
    r.sq += g * g;
    r.sum += g;
    r.abs += a;
    r.abs_hn += a * hn[j];
    r.abs_ln += a * ln[j];
    col_sq[j] += g * g;
    col_sum[j] += g;
  }
  for (int l = 0; l < 8; ++l) {
    r.sq += sq[l];
    r.sum += sum[l];
    r.abs += ab[l];
    r.abs_hn += ah[l];
    r.abs_ln += al[l];
  }
  return r;
}

double norm2(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += double(x) * double(x);
  return std::sqrt(s);
}

template <typename T>
bool bounds_impl(const T* x, int64_t m, int64_t d, Bf16Scratch& s, VarianceBounds* out) {
  constexpr double kInf = std::numeric_limits<double>::infinity();
  const size_t ms = size_t(m), ds = size_t(d);
  s.hi.resize(ms * ds);
  s.gram.resize(ms * ms);
  s.inv.resize(ms);
  s.hn.resize(ms);
  s.ln.resize(ms);
  s.hl.resize(ms);
  s.col_sq.assign(ms, 0.0);
  s.col_sum.assign(ms, 0.0);
  s.hi_sum.assign(ds, 0.0);
  s.lo_sum.assign(ds, 0.0);
  // Float32 lane sums of d / 16 squares each: relative error below (d / 16 + 16) 2^-24 (sqrt halves it).
  const double sum_rel = (double(d) / kLanes + kLanes + 2) * kUnit32;
  // |lo_true - lo| for lo = fl32(x * fl32(inv)) - hi against the float64 f (|f| < 1): the two roundings, the
  // norm's relative error (float32 lanes, row_norm), a denormal.
  const double eps = 2.01 * kUnit32 + 0.51 * sum_rel + std::sqrt(double(d)) * 1e-44;
  for (int64_t i = 0; i < m; ++i) {
    double norm, sums[3];
    if (!row_norm(x + i * d, d, &norm)) return false;
    s.inv[i] = 1.0 / (norm + kNormEps);
    split_row(x + i * d, d, s.inv[i], s.hi.data() + i * d, s.hi_sum.data(), s.lo_sum.data(), sums,
              i + 1 < m ? x + (i + 1) * d : nullptr);
    s.hn[i] = std::sqrt(sums[0] * (1 + sum_rel));
    s.ln[i] = std::sqrt(sums[1] * (1 + sum_rel)) + eps;
    s.hl[i] = sums[2];
  }
  // hi_i . lo_sum and lo_i . hi_sum now, while the crop's rows are still in cache (the GEMM's packing evicts them)
  s.dots.resize(2 * ms);
  for (int64_t i = 0; i < m; ++i)
    row_dots(x + i * d, d, s.inv[i], s.hi_sum.data(), s.lo_sum.data(), s.dots.data() + 2 * i);
  if (d > (1 << 22)) {  // gamma would exceed ~0.25: no useful bound
    *out = {0.0, kInf};
    return true;
  }
  if (cblas_gemm_bf16bf16f32 != nullptr && m <= INT_MAX && d <= INT_MAX) {
    cblas_gemm_bf16bf16f32(kCblasRowMajor, kCblasNoTrans, kCblasTrans, int(m), int(m), int(d), 1.f, s.hi.data(),
                           int(d), s.hi.data(), int(d), 0.f, s.gram.data(), int(m));
  } else {  // the same products of bfloat16 values, in a float32 GEMM
    s.hi_float.resize(ms * ds);
    for (size_t k = 0; k < ms * ds; ++k) {
      const uint32_t bits = uint32_t(s.hi[k]) << 16;
      std::memcpy(&s.hi_float[k], &bits, 4);
    }
    sgemm_colmajor(true, false, m, m, d, 1.f, s.hi_float.data(), d, s.hi_float.data(), d, 0.f, s.gram.data(), m);
  }
  const double gamma = 1.01 * double(d) * kUnit32;  // float32 accumulation of d exact products, any order
  // float32 lane dot products of length d (and hi . lo): relative to the sum of |terms|
  const double dot_rel = sum_rel;
  double hsum = 0, lsum = 0, h2 = 0, h4 = 0, l2 = 0;
  for (int64_t i = 0; i < m; ++i) {
    hsum += s.hn[i];
    lsum += s.ln[i];
    h2 += s.hn[i] * s.hn[i];
    h4 += s.hn[i] * s.hn[i] * s.hn[i] * s.hn[i];
    l2 += s.ln[i] * s.ln[i];
  }
  // The float32 column sums are within gamma_m sum_j |hi_j| (resp. |lo_j|) of the exact ones.
  const double gamma_m = 1.01 * double(m) * kUnit32;
  const double hs_norm = norm2(s.hi_sum) + gamma_m * hsum, ls_norm = norm2(s.lo_sum) + gamma_m * lsum;
  // Row sums of G (diagonal read as 0) and the terms of sum_{i != j} G_ij (hi_i . lo_j) that are exact.
  std::vector<RowSums> rows(ms);
  s.t_centre.resize(ms);
  double t_sum = 0, x_sum = 0, x_err = 0;
  for (int64_t i = 0; i < m; ++i) {
    float* row = s.gram.data() + i * m;
    row[i] = 0.f;  // S's diagonal is 0 (the authors zero it)
    rows[i] = row_sums(row, m, s.hn.data(), s.ln.data(), s.col_sq.data(), s.col_sum.data());
    t_sum += rows[i].sum;
    const double* dots = s.dots.data() + 2 * i;  // hi_i . lo_sum, lo_i . hi_sum
    // t_i's centre: fl(t_i) + hi_i . (sum_{j != i} lo_j) + lo_i . (sum_{j != i} hi_j)
    const double a = dots[0] - s.hl[i], b = dots[1] - s.hl[i];
    x_sum += a;
    x_err += dot_rel * (s.hn[i] * ls_norm + s.ln[i] * hs_norm + 2 * s.hn[i] * s.ln[i]);
    s.t_centre[i] = rows[i].sum + a + b;
  }
  const double pairs = double(m) * double(m - 1);
  const double mu = t_sum / pairs;  // mean off-diagonal entry of G
  x_err += eps * double(m - 1) * hsum + gamma_m * hsum * lsum;
  double q = 0, t2 = 0, lambda = 0, sr = 0, sl = 0, cross = 0, et = 0;
  for (int64_t i = 0; i < m; ++i) {
    const RowSums& r = rows[i];
    const double hn = s.hn[i], ln = s.ln[i], h_other = hsum - hn;
    q += r.sq;
    // Gershgorin on hi hi^T, whose entries are within gamma hn_i hn_j (+ a flushed denormal) of G's
    lambda = std::max(lambda, hn * hn + r.abs + gamma * hn * h_other + kTiny * double(m));
    sr += gamma * hn * r.abs_hn + kTiny * r.abs;
    sl += ln * r.abs_ln;
    // |sum_j (G_ij - mu) (lo_i . hi_j)| <= ln_i sigma |G_i. - mu| (and the same by columns, below)
    const double dev_row = std::max(0.0, r.sq - 2 * mu * r.sum + double(m - 1) * mu * mu);
    const double dev_col = std::max(0.0, s.col_sq[i] - 2 * mu * s.col_sum[i] + double(m - 1) * mu * mu);
    cross += ln * (std::sqrt(dev_row) + std::sqrt(dev_col));
    // |t_i - centre_i|: the rounding of G, lo against the float64 lo, sum_{j != i} lo_i . lo_j, the dots
    const double dt = gamma * hn * h_other + kTiny * double(m) + hn * double(m - 1) * eps + eps * (hs_norm + hn) +
                      ln * (ls_norm + double(m) * eps + ln) +
                      dot_rel * (hn * ls_norm + ln * hs_norm + 2 * hn * ln) + gamma_m * (hn * lsum + ln * hsum);
    const double centre = s.t_centre[i];
    t2 += centre * centre;
    et += 2 * std::abs(centre) * dt + dt * dt;
  }
  const double sigma = std::sqrt(lambda);
  const double r_frob = gamma * std::sqrt(std::max(0.0, h2 * h2 - h4)) + kTiny * double(m);
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

bool have_bf16_gemm() { return cblas_gemm_bf16bf16f32 != nullptr; }

bool crop_variance_bounds(const float* x, int64_t m, int64_t d, Bf16Scratch& s, VarianceBounds* out) {
  return bounds_impl(x, m, d, s, out);
}

bool crop_variance_bounds(const double* x, int64_t m, int64_t d, Bf16Scratch& s, VarianceBounds* out) {
  return bounds_impl(x, m, d, s, out);
}

}  // namespace holov
}  // namespace restore
