#pragma once
// Small float32 row kernels of the CPU bodies, written so the compiler vectorises them (8 independent lanes)
// while every call sums in the same fixed order.
#include <algorithm>
#include <cstdint>
#include <limits>

namespace restore {

// <a, b> with a fixed summation order, symmetric in (a, b): bit-identical rows get bit-identical
// similarities, so exact ties stay exact and are decided by index.
inline float dot_fixed_order(const float* a, const float* b, int64_t d) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t c = 0;
  for (; c + 8 <= d; c += 8)
    for (int l = 0; l < 8; ++l) acc[l] += a[c + l] * b[c + l];
  for (int l = 0; c + l < d; ++l) acc[l] += a[c + l] * b[c + l];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// max of v[0 .. n), -inf when n == 0.
inline float row_max(const float* v, int64_t n) {
  float acc[8];
  std::fill(acc, acc + 8, -std::numeric_limits<float>::infinity());
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int l = 0; l < 8; ++l) acc[l] = acc[l] > v[c + l] ? acc[l] : v[c + l];
  for (int l = 0; c + l < n; ++l) acc[l] = std::max(acc[l], v[c + l]);
  return *std::max_element(acc, acc + 8);
}

}  // namespace restore
