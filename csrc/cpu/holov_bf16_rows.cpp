#include "cpu/holov_bf16_rows.h"

#include <cmath>
#include <cstring>

namespace restore {
namespace holov {
namespace {

// GCC vector types: each target clone compiles them to its own widest unit (SSE by default, AVX-512 on the
// avx512f clone), which plain loops with float reductions never get without -ffast-math.
typedef float v16f __attribute__((vector_size(64)));
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
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

template <typename V>
inline double lane_sum(const V& v) {
  double s = 0.0;
  for (int l = 0; l < int(sizeof(V) / sizeof(v[0])); ++l) s += v[l];
  return s;
}

// bfloat16(f), nearest, ties to even (f finite), as its bits; *as_float = the same value.
inline uint16_t to_bf16(float f, float* as_float) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  const uint32_t top = u & 0xFFFF0000u;
  std::memcpy(as_float, &top, 4);
  return uint16_t(u >> 16);
}

inline float from_bf16(uint16_t bits) {
  const uint32_t u = uint32_t(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

__attribute__((always_inline)) inline v16f widen(const v16h& bits) {
  return (v16f)(__builtin_convertvector(bits, v16u) << 16);
}

}  // namespace

// A row of d = 1024 floats is one 4 KiB page, and hardware prefetchers stop at page boundaries: without the
// prefetch of the next row alongside, every row would start with a DRAM stall.
__attribute__((target_clones("avx512f", "avx2", "default"))) bool split_row(const float* x, int64_t d, int64_t ld,
                                                                            uint16_t* hi, double* sums,
                                                                            const float* next) {
  v16f acc_h = {}, acc_l = {}, acc_x = {};
  v16i bad = {};
  int64_t k = 0;
  for (; k + 16 <= d; k += 16) {
    if (next != nullptr) __builtin_prefetch(next + k, 0, 2);
    const v16f f = load<v16f>(x + k);
    bad |= (f - f) != 0;  // NaN or inf
    v16u u = (v16u)f;
    u += 0x7FFFu + ((u >> 16) & 1u);
    const v16f h = (v16f)(u & 0xFFFF0000u);
    store(hi + k, __builtin_convertvector(u >> 16, v16h));
    const v16f lo = f - h;
    acc_h += h * h;
    acc_l += lo * lo;
    acc_x += h * lo;
  }
  double s0 = 0, s1 = 0, s2 = 0;
  bool finite = true;
  for (; k < d; ++k) {
    float h;
    hi[k] = to_bf16(x[k], &h);
    const float lo = x[k] - h;
    finite &= std::isfinite(x[k]);
    s0 += double(h) * h;
    s1 += double(lo) * lo;
    s2 += double(h) * lo;
  }
  for (; k < ld; ++k) hi[k] = 0;
  for (int l = 0; l < 16; ++l) finite &= bad[l] == 0;
  sums[0] = s0 + lane_sum(acc_h);
  sums[1] = s1 + lane_sum(acc_l);
  sums[2] = s2 + lane_sum(acc_x);
  return finite;
}

bool split_row(const double* x, int64_t d, int64_t ld, uint16_t* hi, double* sums, const double* /*next*/) {
  double s0 = 0, s1 = 0, s2 = 0;
  bool finite = true;
  for (int64_t k = 0; k < d; ++k) {
    finite &= std::isfinite(x[k]);
    float h;
    hi[k] = to_bf16(float(x[k]), &h);
    const double lo = x[k] - double(h);  // exact: h is x to 8 bits, rounded twice
    s0 += double(h) * h;
    s1 += lo * lo;
    s2 += double(h) * lo;
  }
  for (int64_t k = d; k < ld; ++k) hi[k] = 0;
  sums[0] = s0;
  sums[1] = s1;
  sums[2] = s2;
  return finite;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void add_to_column_sums(const float* x,
                                                                                    const uint16_t* hi, int64_t d,
                                                                                    float scale, float* hi_sum,
                                                                                    float* lo_sum) {
  int64_t k = 0;
  for (; k + 16 <= d; k += 16) {
    const v16f h = widen(load<v16h>(hi + k));
    store(hi_sum + k, load<v16f>(hi_sum + k) + scale * h);
    store(lo_sum + k, load<v16f>(lo_sum + k) + scale * (load<v16f>(x + k) - h));
  }
  for (; k < d; ++k) {
    const float h = from_bf16(hi[k]);
    hi_sum[k] += scale * h;
    lo_sum[k] += scale * (x[k] - h);
  }
}

void add_to_column_sums(const double* x, const uint16_t* hi, int64_t d, float scale, float* hi_sum,
                        float* lo_sum) {
  for (int64_t k = 0; k < d; ++k) {
    const float h = from_bf16(hi[k]);
    hi_sum[k] += scale * h;
    lo_sum[k] += scale * float(x[k] - double(h));
  }
}

// Two accumulators per dot product: one would wait on the FMA latency every iteration.
__attribute__((target_clones("avx512f", "avx2", "default"))) void row_dots(const float* x, const uint16_t* hi,
                                                                          int64_t d, const float* hi_sum,
                                                                          const float* lo_sum, double* dots) {
  v16f a0 = {}, a1 = {}, b0 = {}, b1 = {};
  int64_t k = 0;
  for (; k + 32 <= d; k += 32) {
    const v16f h0 = widen(load<v16h>(hi + k)), h1 = widen(load<v16h>(hi + k + 16));
    a0 += h0 * load<v16f>(lo_sum + k);
    a1 += h1 * load<v16f>(lo_sum + k + 16);
    b0 += (load<v16f>(x + k) - h0) * load<v16f>(hi_sum + k);
    b1 += (load<v16f>(x + k + 16) - h1) * load<v16f>(hi_sum + k + 16);
  }
  double ta = 0, tb = 0;
  for (; k < d; ++k) {
    const float h = from_bf16(hi[k]);
    ta += double(h) * lo_sum[k];
    tb += double(x[k] - h) * hi_sum[k];
  }
  dots[0] = ta + lane_sum(a0) + lane_sum(a1);
  dots[1] = tb + lane_sum(b0) + lane_sum(b1);
}

void row_dots(const double* x, const uint16_t* hi, int64_t d, const float* hi_sum, const float* lo_sum,
              double* dots) {
  double ta = 0, tb = 0;
  for (int64_t k = 0; k < d; ++k) {
    const double h = from_bf16(hi[k]);
    ta += h * lo_sum[k];
    tb += (x[k] - h) * hi_sum[k];
  }
  dots[0] = ta;
  dots[1] = tb;
}

__attribute__((target_clones("avx512f", "avx2", "default"))) void pair_sums(const float* raw, int64_t m,
                                                                           int64_t stride, const double* inv,
                                                                           const double* hn, const double* ln,
                                                                           PairSums out) {
  for (int64_t i = 0; i < m; ++i) {
    const float* row = raw + i * stride;
    const double s = inv[i], hn_i = hn[i], ln_i = ln[i];
    v8d sq = {}, sum = {}, ab = {}, ah = {}, al = {};
    int64_t j = i + 1;
    for (; j + 8 <= m; j += 8) {
      const v8d g = __builtin_convertvector(load<v8f>(row + j), v8d) * s * load<v8d>(inv + j);
      const v8d a = g < 0 ? -g : g;
      sq += g * g;
      sum += g;
      ab += a;
      ah += a * load<v8d>(hn + j);
      al += a * load<v8d>(ln + j);
      store(out.sq + j, load<v8d>(out.sq + j) + g * g);
      store(out.sum + j, load<v8d>(out.sum + j) + g);
      store(out.abs + j, load<v8d>(out.abs + j) + a);
      store(out.abs_hn + j, load<v8d>(out.abs_hn + j) + a * hn_i);
      store(out.abs_ln + j, load<v8d>(out.abs_ln + j) + a * ln_i);
    }
    double t_sq = lane_sum(sq), t_sum = lane_sum(sum), t_ab = lane_sum(ab), t_ah = lane_sum(ah),
           t_al = lane_sum(al);
    for (; j < m; ++j) {
      const double g = double(row[j]) * s * inv[j], a = std::abs(g);
      t_sq += g * g;
      t_sum += g;
      t_ab += a;
      t_ah += a * hn[j];
      t_al += a * ln[j];
      out.sq[j] += g * g;
      out.sum[j] += g;
      out.abs[j] += a;
      out.abs_hn[j] += a * hn_i;
      out.abs_ln[j] += a * ln_i;
    }
    out.sq[i] += t_sq;
    out.sum[i] += t_sum;
    out.abs[i] += t_ab;
    out.abs_hn[i] += t_ah;
    out.abs_ln[i] += t_al;
  }
}

}  // namespace holov
}  // namespace restore
