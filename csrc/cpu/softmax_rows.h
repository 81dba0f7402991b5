#pragma once
// The element-wise hot loops of the CPU calibrated attention: bias, running max, exp and sum over a row of
// scores. Written as plain loops over contiguous floats so the compiler vectorises them, and cloned per
// instruction set (AVX-512, AVX2, baseline) with the best one picked at load time.
#include <cstdint>

#include "restore/score_bias.h"

namespace restore {

// One query's bias over a block of keys (the bias step, restore/score_bias.h): bias[c] = log_size[c] +
// position(q_pos, k_pos[c]) for c < visible. Computed once per query and added to the score rows of every head
// of its GQA group. log_size is required (zeros where the op got none).
void position_bias_row(float* bias, int64_t visible, const float* log_size, const int64_t* k_pos, int64_t q_pos,
                       const DistanceBias& position);

// The same with M-RoPE positions (§5b): the keys' (t, h, w) ids as three planar arrays (k_pos.axis[s][c]), so
// the loop reads each axis contiguously.
struct MropeKeyRows {
  const int64_t* axis[3];
};
void position_bias_row(float* bias, int64_t visible, const float* log_size, const MropeKeyRows& k_pos,
                       const MropePosition& q_pos, const MropeDistanceBias& position);

// The bias and mask step over one row of scores (keys c < visible are the causal prefix, see
// restore/causal_mask.h): row[c] += bias[c] (if bias is given) for c < visible, row[c] = -inf for
// visible <= c < n. Returns the row maximum.
float add_bias_and_max(float* row, int64_t n, int64_t visible, const float* bias);

// row[c] = exp(row[c] - offset), returns the sum. exp(-inf) is exactly 0.
float exp_and_sum(float* row, int64_t n, float offset);

void scale_row(float* row, int64_t n, float factor);

}  // namespace restore
