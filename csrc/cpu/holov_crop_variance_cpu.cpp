// HoloV's crop statistic on the CPU (contract: restore_ext.reference.holov_crop_variance). The crop score
// needs every entry of each crop's m x m cosine matrix, so the Gram matmul is the floor; as one batched matmul
// followed by torch reductions, the (B, C, m, m) matrix then goes through memory five more times (scaling,
// diagonal, float64 row sums and sums of squares) and the features once more for their norms. Here each
// crop's Gram is reduced while it is in cache, crops in parallel, one BLAS call each.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "cpu/blas_gemm.h"
#include "op_checks.h"

namespace restore {
namespace {

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
void crop_gram(const float* f, int64_t m, int64_t d, float* gram) {
  // Row-major f is column-major f^T (d x m); f f^T = (f^T)^T f^T, symmetric, so either layout of the result.
  sgemm_colmajor(true, false, m, m, d, 1.f, f, d, f, d, 0.f, gram, m);
}

void crop_gram(const double* f, int64_t m, int64_t d, double* gram) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor ft = at::from_blob(const_cast<double*>(f), {m, d}, opts);
  at::Tensor out = at::from_blob(gram, {m, m}, opts);
  at::mm_out(out, ft, ft.t());
}

}  // namespace

at::Tensor holov_crop_variance_cpu(const at::Tensor& x) {
  check_holov_crop_variance_args(x);
  const int64_t batch = x.size(0), crops = x.size(1), m = x.size(2), d = x.size(3);
  at::Tensor out = at::empty({batch, crops}, x.options().dtype(at::kDouble));
  // holov_indices passes each crop length's tokens as a view of the features: rows packed, but the batch stride
  // spans every crop when N % 16 != 0. Use those strides rather than copying the features.
  const bool packed = (d == 1 || x.stride(3) == 1) && x.stride(2) == d;
  const at::Tensor src = packed ? x : x.contiguous();
  const int64_t batch_stride = src.stride(0), crop_stride = src.stride(1);
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "holov_crop_variance_cpu", [&] {
    const scalar_t* xs = src.const_data_ptr<scalar_t>();
    double* dst = out.data_ptr<double>();
    // One crop per task; BLAS inside a parallel region runs on the calling thread.
    at::parallel_for(0, batch * crops, 1, [&](int64_t c0, int64_t c1) {
      std::vector<scalar_t> f, gram(m * m);  // f: normalised rows, only for crops that need them
      std::vector<double> inv(m);
      for (int64_t c = c0; c < c1; ++c) {
        const scalar_t* crop = xs + (c / crops) * batch_stride + (c % crops) * crop_stride;
        // The product of the raw rows, scaled to cosines in the reduction, when every norm (read off the
        // diagonal) is far from the float range's ends; otherwise, or for a zero, NaN or inf row, the rows
        // are normalised first.
        crop_gram(crop, m, d, gram.data());
        bool plain = true;
        for (int64_t i = 0; i < m; ++i) {
          const double norm = std::sqrt(double(gram[i * m + i]));
          plain &= norm > 1e-15 && norm < 1e15;  // false for NaN
          inv[i] = 1.0 / (norm + kNormEps);
        }
        if (!plain) {
          f.resize(m * d);
          if (!normalise_rows(crop, m, d, f.data())) {
            finite = false;
            return;
          }
          crop_gram(f.data(), m, d, gram.data());
          std::fill(inv.begin(), inv.end(), 1.0);
        }
        dst[c] = mean_similarity_variance(gram.data(), inv.data(), m);
      }
    });
  });
  TORCH_CHECK(finite, "holov_crop_variance: x must be finite, got NaN or inf");
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("holov_crop_variance", &holov_crop_variance_cpu); }

}  // namespace restore
