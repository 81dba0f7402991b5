#pragma once
// Input validation shared by the CPU and CUDA bodies of every op, so that both devices reject the same
// inputs with the same messages (docs/ops.md, Errors). Checks only: data preparation lives with what it
// prepares (attention_bias_inputs.h). Host-only: never included by device code.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>
#include <optional>

#include "restore/anchor_math.h"

namespace restore {

void check_topk_indices_args(const at::Tensor& scores, int64_t k);

void check_divprune_indices_args(const at::Tensor& x, int64_t k);

void check_vispruner_matching_args(const at::Tensor& sim, int64_t keep);

void check_holov_crop_variance_args(const at::Tensor& x, const char* op = "holov_crop_variance");

// Returns true for gram = "bf16", false for "exact"; "auto" is bf16 where the CPU has AMX-BF16 and the features are
// float32.
bool check_holov_indices_args(const at::Tensor& features, int64_t k, const at::Tensor& cls_attention,
                              c10::string_view gram, bool bf16_pays);

AnchorRule check_anchor_merge_args(const at::Tensor& x, int64_t num_anchors, c10::string_view rule);

struct AttentionShape {
  int64_t batch, lq, lk, heads, kv_heads, head_dim, table_len;
  int64_t pos_axes;  // 0: no position term; 1: (B, L) positions, (T,) table; 3: (B, L, 3) M-RoPE, (3, T)
  bool has_log_size, has_positions;
  float scale;
};

AttentionShape check_calibrated_attention_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& log_size, const std::optional<at::Tensor>& q_pos,
    const std::optional<at::Tensor>& k_pos, const std::optional<at::Tensor>& table,
    std::optional<double> scale);

// On the CPU: log_size holds no +inf or NaN (restore::log_size_allowed); reads every value, so the CUDA
// path checks on the device instead (cuda/calibrated_attention/log_size_check.cu).
void check_log_size_values(const at::Tensor& log_size);

// On the CPU: a (T,) table holds finite values; a (3, T) one decay shares in [-1, 1] whose row maxima add up
// to less than 2 (restore/score_bias.h). The CUDA path checks on the device (table_check.cu).
void check_table_values(const at::Tensor& table);

}  // namespace restore
