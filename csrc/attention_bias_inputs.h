#pragma once
// calibrated_attention's optional bias inputs in the layout every kernel reads (CPU and CUDA): contiguous,
// positions widened to int64 on the inputs' device (no host sync). Data preparation, after the checks of
// op_checks.h have passed. Host-only.
#include <ATen/core/Tensor.h>
#include <optional>

#include "op_checks.h"

namespace restore {

// The tensors own the memory behind the pointers; absent inputs leave both undefined / null.
struct AttentionBias {
  at::Tensor log_size, q_pos, k_pos, table;
  const float* log_size_data = nullptr;
  const int64_t* q_pos_data = nullptr;
  const int64_t* k_pos_data = nullptr;
  const float* table_data = nullptr;
};

AttentionBias contiguous_attention_bias(const AttentionShape& s, const std::optional<at::Tensor>& log_size,
                                        const std::optional<at::Tensor>& q_pos,
                                        const std::optional<at::Tensor>& k_pos,
                                        const std::optional<at::Tensor>& table);

}  // namespace restore
