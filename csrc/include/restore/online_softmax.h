#pragma once
// The online-softmax step of calibrated attention (docs/ops.md §5), FlashAttention-2's softmax_rescale_o, shared
// by the CPU, SIMT and tensor-core kernels: scores arrive a block of keys at a time; a row keeps its running
// maximum and sum, and every new block moves the sum and the output accumulator to the new maximum.
#include <cmath>
#include "restore/host_device.h"

namespace restore {

// Subtracting the row maximum keeps exp() finite. A row whose maximum is still -inf (nothing visible yet, or
// only keys at -inf) must subtract 0 instead: exp(-inf - -inf) = exp(NaN) would poison the row, where
// exp(-inf - 0) = 0 gives those keys the zero weight they have.
RESTORE_HD float softmax_offset(float row_max) { return row_max == -INFINITY ? 0.f : row_max; }

// Factor that moves an accumulator from the old to the new running maximum: exp(-inf - offset) = 0 for a row
// that had seen nothing, 1 when the maximum stays.
RESTORE_HD float rescale_factor(float old_max, float new_max) {
  return expf(old_max - softmax_offset(new_max));
}

// 1/l, or 0 for a query whose weights are all zero (it saw no key): its output is zeros, never NaN.
RESTORE_HD float normalizer(float row_sum) { return row_sum > 0.f ? 1.f / row_sum : 0.f; }

// One row's running state. Per block of keys: `auto step = row.rescale(block_max)`, then the scores become
// exp(score - step.offset), the output accumulator is multiplied by step.factor, and `row.add(step, sum of
// the new weights)`. In the tensor-core kernel a thread holds part of a row: `sum` is then its columns' share,
// summed over the row's threads at the end, and block_max must already be the whole row's.
struct OnlineSoftmaxRow {
  struct Step {
    float offset;  // what this block's scores subtract before exp()
    float factor;  // what the earlier sum and output accumulator are multiplied by
  };
  float max = -INFINITY;
  float sum = 0.f;

  RESTORE_HD Step rescale(float block_max) {
    const float new_max = fmaxf(max, block_max);
    const Step step{softmax_offset(new_max), rescale_factor(max, new_max)};
    max = new_max;
    return step;
  }
  RESTORE_HD void add(const Step& step, float block_sum) { sum = sum * step.factor + block_sum; }
};

}  // namespace restore
