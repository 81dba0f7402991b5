#pragma once
// DivPrune's greedy choice (restore_ext.reference.divprune_indices is its contract), shared by the CPU and CUDA kernels. Both track, per token, the
// largest cosine similarity to the chosen set (`near`); the farthest token is the one with the smallest
// `near`, because dist = 1 - cos is decreasing in cos. Comparing similarities (not 1 - sim) avoids a rounding
// step that could create ties the float64 reference does not have.
#include <cstdint>
#include <limits>
#include "restore/host_device.h"

namespace restore {

// A chosen token's `near` is set to +inf, so max(near, sim) keeps it out of every later step.
constexpr float kDivPruneChosen = std::numeric_limits<float>::infinity();

// Whether token a (with similarity near_a to the chosen set) is picked before token b: farther first,
// ties to the lower index.
RESTORE_HD bool divprune_before(float near_a, int64_t a, float near_b, int64_t b) {
  return near_a < near_b || (near_a == near_b && a < b);
}

}  // namespace restore
