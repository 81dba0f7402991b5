#pragma once
// Single-precision GEMM for the CPU kernels' per-block products. ATen's cpublas::gemm is not exported from
// libtorch_cpu, but the BLAS that torch links (MKL on x86_64) exports sgemm_; use it when present, and
// ATen's addmm on borrowed memory otherwise.
#include <cstdint>

namespace restore {

// Column-major, as BLAS: C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C.
void sgemm_colmajor(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace restore
