#pragma once
// Which keys a query of calibrated attention sees (docs/ops.md §5): the one causal-horizon function of the
// CPU, SIMT and tensor-core kernels (and of the emulation's float64 reference through them).
#include <cstdint>
#include "restore/host_device.h"

namespace restore {

// FlashAttention's causal alignment, to the end of the sequences: query i of Lq sees keys j < i + 1 + Lk - Lq,
// so the last query sees every key and earlier ones one fewer each. Returns that end clamped to [0, Lk]
// (0 for a query before every key when Lq > Lk), or Lk without causal masking. Keys past it are invisible:
// a kernel skips the key tiles past the horizon of its last query and masks the rest to -inf.
RESTORE_HD int64_t visible_key_end(int64_t q_index, int64_t lq, int64_t lk, bool causal) {
  if (!causal) return lk;
  const int64_t end = q_index + 1 + lk - lq;
  return end < 0 ? 0 : (end < lk ? end : lk);
}

RESTORE_HD bool key_visible(int64_t q_index, int64_t k_index, int64_t lq, int64_t lk, bool causal) {
  return k_index < visible_key_end(q_index, lq, lk, causal);
}

}  // namespace restore
