#pragma once
// Input validation shared by the CPU and CUDA bodies of every op, so that both devices reject the same
// inputs with the same messages (SPEC "Errors"). Host-only: never included by device code.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <optional>

#include "restore/anchor_math.h"

namespace restore {

void check_topk_indices_args(const at::Tensor& scores, int64_t k);

void check_divprune_indices_args(const at::Tensor& x, int64_t k);

AnchorRule check_anchor_merge_args(const at::Tensor& x, int64_t num_anchors, c10::string_view rule);

struct AttentionShape {
  int64_t batch, lq, lk, heads, kv_heads, head_dim, table_len;
  bool has_log_size, has_positions;
  float scale;
};

AttentionShape check_calibrated_attention_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& log_size, const std::optional<at::Tensor>& q_pos,
    const std::optional<at::Tensor>& k_pos, const std::optional<at::Tensor>& table,
    std::optional<double> scale);

// calibrated_attention's optional bias inputs as the kernels read them: contiguous, positions widened to int64
// (on the inputs' device, no host sync). The tensors own the memory behind the pointers; absent inputs leave
// both undefined / null.
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
