#pragma once
// Distinctive anchor scoring (docs/ops.md §2 steps 3-5) and the lower median of restore_reduce (docs/ops.md §3).
#include <cstdint>
#include "restore/host_device.h"

namespace restore {

// "reference" follows the authors' released code (a token's candidates are the LESS dense ones);
// "dpc" is textbook density-peak clustering (candidates are the MORE dense ones).
enum class AnchorRule : int { Reference = 0, Dpc = 1 };

template <typename T>
RESTORE_HD bool is_better(AnchorRule rule, T density_i, T density_j) {
  return rule == AnchorRule::Reference ? density_j < density_i : density_j > density_i;
}

// Dense (large density) and distinct (far from its nearest better token) tokens score high.
// A token with no better token has nearest = 0, so its score is its density.
template <typename T>
RESTORE_HD T distinctive_score(T density, T nearest_better_sim) {
  return density * (T(1) - nearest_better_sim);
}

// Offset of the lower median in a sorted run of m >= 1 members: element (m-1)//2.
RESTORE_HD int64_t lower_median_offset(int64_t members) { return (members - 1) / 2; }

}  // namespace restore
