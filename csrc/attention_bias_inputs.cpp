#include "attention_bias_inputs.h"

namespace restore {

AttentionBias contiguous_attention_bias(const AttentionShape& s, const std::optional<at::Tensor>& log_size,
                                        const std::optional<at::Tensor>& q_pos,
                                        const std::optional<at::Tensor>& k_pos,
                                        const std::optional<at::Tensor>& table) {
  AttentionBias b;
  if (s.has_log_size) {
    b.log_size = log_size->contiguous();
    b.log_size_data = b.log_size.const_data_ptr<float>();
  }
  if (s.has_positions) {
    b.q_pos = q_pos->to(at::kLong).contiguous();
    b.k_pos = k_pos->to(at::kLong).contiguous();
    b.table = table->contiguous();
    b.q_pos_data = b.q_pos.const_data_ptr<int64_t>();
    b.k_pos_data = b.k_pos.const_data_ptr<int64_t>();
    b.table_data = b.table.const_data_ptr<float>();
  }
  return b;
}

}  // namespace restore
