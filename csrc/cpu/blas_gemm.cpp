#include "cpu/blas_gemm.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <climits>

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                       const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
                       const float* beta, float* c, const int* ldc) __attribute__((weak));

namespace restore {
namespace {

// op(X) as a (rows x cols) view of column-major memory with leading dimension ld.
at::Tensor colmajor_view(const float* p, bool trans, int64_t rows, int64_t cols, int64_t ld) {
  const auto opts = at::TensorOptions().dtype(at::kFloat);
  return trans ? at::from_blob(const_cast<float*>(p), {rows, cols}, {ld, 1}, opts)
               : at::from_blob(const_cast<float*>(p), {rows, cols}, {1, ld}, opts);
}

// What the Fortran BLAS interface accepts: int sizes, and each leading dimension at least the rows of the
// matrix as stored (1 at least). Anything else -- a stride 0 from expand() above all -- goes to ATen's addmm,
// which takes any strides, instead of BLAS printing an error and leaving C wrong.
bool blas_accepts(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb,
                  int64_t ldc) {
  auto fits = [](int64_t v) { return v >= 0 && v <= INT_MAX; };
  auto ld_ok = [&](int64_t ld, int64_t rows) { return fits(ld) && ld >= std::max<int64_t>(1, rows); };
  return fits(m) && fits(n) && fits(k) && ld_ok(lda, trans_a ? k : m) && ld_ok(ldb, trans_b ? n : k) &&
         ld_ok(ldc, m);
}

}  // namespace

void sgemm_colmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (sgemm_ != nullptr && blas_accepts(trans_a, trans_b, m, n, k, lda, ldb, ldc)) {
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    const int mi = int(m), ni = int(n), ki = int(k), la = int(lda), lb = int(ldb), lc = int(ldc);
    sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
    return;
  }
  at::Tensor out = colmajor_view(c, false, m, n, ldc);
  const at::Tensor lhs = colmajor_view(a, trans_a, m, k, lda);
  const at::Tensor rhs = colmajor_view(b, trans_b, k, n, ldb);
  if (beta == 0.f) out.zero_();
  out.addmm_(lhs, rhs, beta == 0.f ? 1.f : beta, alpha);
}

}  // namespace restore
