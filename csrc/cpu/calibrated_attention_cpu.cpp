// Calibrated attention on the CPU (SPEC §5), FlashAttention-style as ATen's CPU flash attention: a work
// item is (batch, K/V head, block of query rows); it streams blocks of keys, computes Q K^T and P V through
// BLAS sgemm, adds the RESTORE bias on the fly and keeps an online softmax, so extra memory is O(block),
// never O(Lq x Lk).
//
// GQA: the rows of a block are (query, head) pairs of all query heads that share one K/V head, so each K/V
// block is read once per group, and a decode step (Lq = 1) still gives BLAS a matrix, not a vector.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <vector>

#include "cpu/blas_gemm.h"
#include "cpu/softmax_rows.h"
#include "op_checks.h"
#include "restore/attention_math.h"

namespace restore {
namespace {

constexpr int64_t kRowBlock = 128;
constexpr int64_t kKeyBlock = 256;

// Q, K, V as float32 with a contiguous last dim; O written in `out`'s dtype.
template <typename scalar_t>
void attention_cpu_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const AttentionBias& bias,
                          const AttentionShape& s, bool causal, at::Tensor& out) {
  const int64_t dh = s.head_dim, lq = s.lq, lk = s.lk;
  const int64_t group = s.heads / s.kv_heads;
  const int64_t rows_total = lq * group;
  const int64_t row_blocks = (rows_total + kRowBlock - 1) / kRowBlock;
  const scalar_t* q_base = q.const_data_ptr<scalar_t>();
  const float* k_base = k.const_data_ptr<float>();
  const float* v_base = v.const_data_ptr<float>();
  scalar_t* o_base = out.data_ptr<scalar_t>();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  std::vector<float> zero_log_size(bias.table_data && !bias.log_size_data ? kKeyBlock : 0, 0.f);

  at::parallel_for(0, s.batch * s.kv_heads * row_blocks, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> q_buf(kRowBlock * dh), scores(kRowBlock * kKeyBlock), acc(kRowBlock * dh);
    std::vector<float> row_max(kRowBlock), row_sum(kRowBlock);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t rb = w % row_blocks, hk = (w / row_blocks) % s.kv_heads, b = w / (row_blocks * s.kv_heads);
      const int64_t r0 = rb * kRowBlock, nr = std::min(kRowBlock, rows_total - r0);
      // Row r is query r / group of head hk * group + r % group.
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = (r0 + r) / group, h = hk * group + (r0 + r) % group;
        const scalar_t* src = q_base + b * q.stride(0) + i * q.stride(1) + h * q.stride(2);
        for (int64_t c = 0; c < dh; ++c) q_buf[r * dh + c] = static_cast<float>(src[c]);
      }
      std::fill(acc.begin(), acc.begin() + nr * dh, 0.f);
      std::fill(row_max.begin(), row_max.begin() + nr, neg_inf);
      std::fill(row_sum.begin(), row_sum.begin() + nr, 0.f);
      const int64_t last_query = (r0 + nr - 1) / group;
      // Keys past the last query's horizon are invisible to the whole block: skip them.
      const int64_t key_end = causal ? std::min(lk, std::max<int64_t>(0, last_query + 1 + lk - lq)) : lk;

      for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, key_end - j0);
        const float* kf = k_base + b * k.stride(0) + j0 * k.stride(1) + hk * k.stride(2);
        const float* vf = v_base + b * v.stride(0) + j0 * v.stride(1) + hk * v.stride(2);
        // scores (nr x nk, row-major) = scale * Q K^T; BLAS is column-major, hence the swapped operands.
        sgemm_colmajor(true, false, nk, nr, dh, s.scale, kf, k.stride(1), q_buf.data(), dh, 0.f, scores.data(), nk);
        const float* ls = bias.log_size_data ? bias.log_size_data + b * lk + j0 : zero_log_size.data();
        const int64_t* kp = bias.k_pos_data ? bias.k_pos_data + b * lk + j0 : nullptr;
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = (r0 + r) / group;
          // Keys j <= i + lk - lq are visible: a prefix of the block.
          const int64_t visible =
              causal ? std::clamp<int64_t>(i + lk - lq + 1 - j0, 0, nk) : nk;
          float* row = scores.data() + r * nk;
          const float block_max =
              add_bias_and_max(row, nk, visible, bias.log_size_data || bias.table_data ? ls : nullptr, kp,
                               bias.q_pos_data ? bias.q_pos_data[b * lq + i] : 0, bias.table_data, s.table_len);
          const float new_max = std::max(row_max[r], block_max);
          const float sum = exp_and_sum(row, nk, softmax_offset(new_max));
          const float factor = rescale_factor(row_max[r], new_max);
          row_sum[r] = row_sum[r] * factor + sum;
          row_max[r] = new_max;
          scale_row(acc.data() + r * dh, dh, factor);
        }
        // acc (nr x dh) += P V
        sgemm_colmajor(false, false, dh, nr, nk, 1.f, vf, v.stride(1), scores.data(), nk, 1.f, acc.data(), dh);
      }
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = (r0 + r) / group, h = hk * group + (r0 + r) % group;
        const float inv = normalizer(row_sum[r]);
        scalar_t* o = o_base + ((b * lq + i) * s.heads + h) * dh;
        const float* a = acc.data() + r * dh;
        for (int64_t c = 0; c < dh; ++c) o[c] = static_cast<scalar_t>(a[c] * inv);
      }
    }
  });
}

}  // namespace

at::Tensor calibrated_attention_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    const std::optional<at::Tensor>& log_size,
                                    const std::optional<at::Tensor>& q_pos, const std::optional<at::Tensor>& k_pos,
                                    const std::optional<at::Tensor>& table, bool causal,
                                    std::optional<double> scale) {
  const AttentionShape s = check_calibrated_attention_args(q, k, v, log_size, q_pos, k_pos, table, scale);
  at::Tensor out = at::empty({s.batch, s.lq, s.heads, s.head_dim}, q.options());
  if (out.numel() == 0) return out;
  if (s.lk == 0) return out.zero_();

  // K and V in float32 once (a no-op for float32 inputs): every query block reads them, and BLAS wants
  // float32. O(Lk x Dh) extra memory for half/bfloat16, never O(Lq x Lk).
  const at::Tensor kf = k.to(at::kFloat), vf = v.to(at::kFloat);
  const AttentionBias bias = contiguous_attention_bias(s, log_size, q_pos, k_pos, table);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "calibrated_attention_cpu",
                                  [&] { attention_cpu_kernel<scalar_t>(q, kf, vf, bias, s, causal, out); });
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("calibrated_attention", &calibrated_attention_cpu); }

}  // namespace restore
