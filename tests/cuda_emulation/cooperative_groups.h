#pragma once
// Host stand-in for <cooperative_groups.h> (grid.sync() only), for kernels launched by
// emu::launch(..., cooperative = true).
#include "emulated_cuda.h"

namespace cooperative_groups {
struct grid_group {
  void sync() const { emu::grid_barrier->arrive_and_wait(); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups
