#pragma once
// HoloV's crop statistic for one crop, shared by restore::holov_crop_variance and restore::holov_indices on the
// CPU (contract: restore_ext.reference.holov_crop_variance). The crop score needs every entry of the crop's
// m x m cosine matrix, so the Gram matmul is the floor: one BLAS call, then reduced in double while in cache.
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu/blas_gemm.h"
#include "cpu/gram_avx512.h"

namespace restore {
namespace holov {

constexpr double kNormEps = 1e-6;  // HoloV's f = x / (|x| + 1e-6)

// f = x / (|x| + eps), row by row; |x| in double, scaled by the row's largest magnitude so that no square
// overflows or underflows (float64 rows of any finite size). False if a value is NaN or inf.
template <typename T>
bool normalise_rows(const T* x, int64_t m, int64_t d, T* f) {
  for (int64_t i = 0; i < m; ++i) {
    const T* row = x + i * d;
    double peak = 0.0;
    bool finite = true;
    for (int64_t k = 0; k < d; ++k) {
      const double v = double(row[k]);
      finite &= (v - v) == 0.0;
      peak = std::max(peak, std::abs(v));
    }
    if (!finite) return false;
    double sum = 0.0;
    if (peak > 0.0)
      for (int64_t k = 0; k < d; ++k) {
        const double v = double(row[k]) / peak;
        sum += v * v;
      }
    const double inv = 1.0 / (peak * std::sqrt(sum) + kNormEps);
    for (int64_t k = 0; k < d; ++k) f[i * d + k] = T(double(row[k]) * inv);
  }
  return true;
}

// sum_j a[j] w[j] and sum_j (s a[j] w[j] - mu)^2 over j < n, in double; 8 independent lanes so that the
// compiler vectorises them (a single accumulator is a dependency chain it may not reorder).
template <typename T>
double weighted_sum(const T* a, const double* w, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += double(a[j + l]) * w[j + l];
  double sum = 0.0;
  for (; j < n; ++j) sum += double(a[j]) * w[j];
  for (int l = 0; l < 8; ++l) sum += acc[l];
  return sum;
}

template <typename T>
double squared_deviations(const T* a, const double* w, double s, double mu, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int l = 0; l < 8; ++l) {
      const double dev = s * double(a[j + l]) * w[j + l] - mu;
      acc[l] += dev * dev;
    }
  double sum = 0.0;
  for (; j < n; ++j) {
    const double dev = s * double(a[j]) * w[j] - mu;
    sum += dev * dev;
  }
  for (int l = 0; l < 8; ++l) sum += acc[l];
  return sum;
}

// Mean over the crop's tokens of var_i = sum_j (S_ij - mu_i)^2 / (m - 1), mu_i = sum_{j != i} S_ij / (m - 1),
// with S_ij = inv_i gram_ij inv_j off the diagonal and 0 on it (so the j = i term contributes mu_i^2, as the
// authors sum it). Two passes over each row in double: no cancellation between a sum of squares and a
// squared mean.
template <typename T>
double mean_similarity_variance(const T* gram, const double* inv, int64_t m) {
  double total = 0.0;
  for (int64_t i = 0; i < m; ++i) {
    const T* row = gram + i * m;
    const int64_t after = m - i - 1;
    const double sum = inv[i] * (weighted_sum(row, inv, i) + weighted_sum(row + i + 1, inv + i + 1, after));
    const double mu = sum / double(m - 1);
    const double squares = mu * mu + squared_deviations(row, inv, inv[i], mu, i) +
                           squared_deviations(row + i + 1, inv + i + 1, inv[i], mu, after);
    total += squares / double(m - 1);
  }
  return total / double(m);
}

// gram (m x m, row-major) = f f^T for f (m x d, row-major).
inline void crop_gram(const float* f, int64_t m, int64_t d, float* gram) {
  if (gram_avx512(f, m, d, gram)) return;
  // Row-major f is column-major f^T (d x m); f f^T = (f^T)^T f^T, symmetric, so either layout of the result.
  sgemm_colmajor(true, false, m, m, d, 1.f, f, d, f, d, 0.f, gram, m);
}

inline void crop_gram(const double* f, int64_t m, int64_t d, double* gram) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor ft = at::from_blob(const_cast<double*>(f), {m, d}, opts);
  at::Tensor out = at::from_blob(gram, {m, m}, opts);
  at::mm_out(out, ft, ft.t());
}


// One crop's mean similarity variance (mean_similarity_variance) from its m packed rows of d values; false if
// a value is NaN or inf. `f`, `gram` and `inv` are scratch the caller keeps between crops.
template <typename T>
bool crop_variance(const T* crop, int64_t m, int64_t d, std::vector<T>& f, std::vector<T>& gram,
                   std::vector<double>& inv, double* out) {
  gram.resize(m * m);
  inv.resize(m);
  // The product of the raw rows, scaled to cosines in the reduction, when every norm (read off the diagonal) is
  // far from the float range's ends; otherwise, or for a zero, NaN or inf row, the rows are normalised first.
  crop_gram(crop, m, d, gram.data());
  bool plain = true;
  for (int64_t i = 0; i < m; ++i) {
    const double norm = std::sqrt(double(gram[i * m + i]));
    plain &= norm > 1e-15 && norm < 1e15;  // false for NaN
    inv[i] = 1.0 / (norm + kNormEps);
  }
  if (!plain) {
    f.resize(m * d);
    if (!normalise_rows(crop, m, d, f.data())) return false;
    crop_gram(f.data(), m, d, gram.data());
    std::fill(inv.begin(), inv.end(), 1.0);
  }
  *out = mean_similarity_variance(gram.data(), inv.data(), m);
  return true;
}

}  // namespace holov
}  // namespace restore
