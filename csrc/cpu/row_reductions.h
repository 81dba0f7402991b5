#pragma once
// A float32 dot product the compiler vectorises (8 independent lanes) while every call sums in the same
// fixed order.
#include <cstdint>

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

}  // namespace restore
