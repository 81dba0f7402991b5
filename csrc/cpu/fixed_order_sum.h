#pragma once
// The one fixed-order sum of the CPU kernels: 8 independent lanes the compiler vectorises (without
// -ffast-math it may not reorder a single running sum), combined in a fixed tree, so every call with the same
// terms gives the same bits whatever the thread count.
#include <cstdint>

namespace restore {

// sum_{c < n} term(c) in Acc: lane l takes c = l, l + 8, ...; the tail continues lanes 0, 1, ...
template <typename Acc, typename Term>
Acc sum_8_lanes(int64_t n, Term term) {
  Acc acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int l = 0; l < 8; ++l) acc[l] += term(c + l);
  for (int l = 0; c + l < n; ++l) acc[l] += term(c + l);
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// <a, b> in float32, symmetric in (a, b): bit-identical rows get bit-identical similarities, so exact ties
// stay exact and are decided by index (DivPrune).
inline float dot_fixed_order(const float* a, const float* b, int64_t d) {
  return sum_8_lanes<float>(d, [&](int64_t c) { return a[c] * b[c]; });
}

}  // namespace restore
