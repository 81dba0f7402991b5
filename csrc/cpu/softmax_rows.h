#pragma once
// The element-wise hot loops of the CPU calibrated attention: bias, running max, exp and sum over a row of
// scores. Written as plain loops over contiguous floats so the compiler vectorises them, and cloned per
// instruction set (AVX-512, AVX2, baseline) with the best one picked at load time.
#include <cstdint>

namespace restore {

// row[c] += log_size[c] (if given) + table[clamp(q_pos - k_pos[c], 0, table_len-1)] (if given) for
// c < visible, row[c] = -inf for visible <= c < n. Returns the row maximum.
float add_bias_and_max(float* row, int64_t n, int64_t visible, const float* log_size, const int64_t* k_pos,
                       int64_t q_pos, const float* table, int64_t table_len);

// row[c] = exp(row[c] - offset), returns the sum. exp(-inf) is exactly 0.
float exp_and_sum(float* row, int64_t n, float offset);

void scale_row(float* row, int64_t n, float factor);

}  // namespace restore
