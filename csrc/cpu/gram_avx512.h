#pragma once
// x x^T for a small block of float32 rows, exploiting symmetry, where the CPU has AVX-512.
#include <cstdint>

namespace restore {

// gram (m x m, row-major, both triangles) = x x^T for x (m x d, row-major): each entry 16 float32 lane sums
// of d / 16 products, added in double. False (and gram untouched) where the CPU lacks
// AVX-512F or the environment sets RESTORE_EXT_NO_AVX512 (read once); the caller then uses a BLAS GEMM. While
// it multiplies it prefetches the m x d floats after x (a hint, never read): the next crop, where the HoloV ops
// walk crops laid out back to back.
bool gram_avx512(const float* x, int64_t m, int64_t d, float* gram);

}  // namespace restore
