#pragma once
// The ranking of docs/ops.md §1, shared by topk_indices and anchor selection on every device:
// higher score first, ties to the lower index, NaN below every number (-inf included), -0.0 == +0.0.
#include <cstdint>
#include <cstring>
#include "restore/host_device.h"

namespace restore {

// Order-preserving unsigned key: a > b as scores <=> key(a) > key(b); NaN maps to 0, the lowest key.
RESTORE_HD uint32_t score_key(float v) {
#if defined(__CUDA_ARCH__)
  uint32_t u = __float_as_uint(v);
#else
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0u;  // NaN
  if (u == 0x80000000u) u = 0u;                      // -0.0 ties with +0.0
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

RESTORE_HD uint64_t score_key(double v) {
#if defined(__CUDA_ARCH__)
  uint64_t u = static_cast<uint64_t>(__double_as_longlong(v));
#else
  uint64_t u;
  std::memcpy(&u, &v, sizeof(u));
#endif
  if ((u & 0x7fffffffffffffffull) > 0x7ff0000000000000ull) return 0ull;
  if (u == 0x8000000000000000ull) u = 0ull;
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Whether the element (key_a, index_a) is kept before (key_b, index_b).
template <typename Key>
RESTORE_HD bool ranks_before(Key key_a, int64_t index_a, Key key_b, int64_t index_b) {
  return key_a > key_b || (key_a == key_b && index_a < index_b);
}

}  // namespace restore
