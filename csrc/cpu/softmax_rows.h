#pragma once
// The element-wise hot loops of the CPU calibrated attention: bias, running max, exp and sum over a row of
// scores. Written as plain loops over contiguous floats so the compiler vectorises them, and cloned per
// instruction set (AVX-512, AVX2, baseline) with the best one picked at load time.
#include <cstdint>

#include "restore/score_bias.h"

namespace restore {

// The bias and mask step over one row of scores (keys c < visible are the causal prefix, see
// restore/causal_mask.h): row[c] += log_size[c] (if given) + position(q_pos, k_pos[c]) (if enabled) for
// c < visible, row[c] = -inf for visible <= c < n. Returns the row maximum.
float add_bias_and_max(float* row, int64_t n, int64_t visible, const float* log_size, const int64_t* k_pos,
                       int64_t q_pos, const DistanceBias& position);

// row[c] = exp(row[c] - offset), returns the sum. exp(-inf) is exactly 0.
float exp_and_sum(float* row, int64_t n, float offset);

void scale_row(float* row, int64_t n, float factor);

}  // namespace restore
