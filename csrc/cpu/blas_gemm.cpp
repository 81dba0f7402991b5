#include "cpu/blas_gemm.h"

#include <ATen/ATen.h>

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

}  // namespace

void sgemm_colmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (sgemm_ != nullptr) {
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
