// Calibrated attention on the CPU (SPEC §5), FlashAttention-style as ATen's CPU flash attention: a work
// item is (batch, head, block of queries); it streams blocks of keys, computes Q K^T and P V through BLAS
// (BLAS sgemm), adds the RESTORE bias on the fly and keeps an online softmax, so extra memory is
// O(block), never O(Lq x Lk). GQA maps a query head to its K/V head; K/V are never repeated.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <vector>

#include "cpu/blas_gemm.h"
#include "op_checks.h"
#include "restore/attention_math.h"

namespace restore {
namespace {

constexpr int64_t kQueryBlock = 64;
constexpr int64_t kKeyBlock = 256;

struct BiasInputs {
  const float* log_size = nullptr;  // (B, Lk) contiguous, or null
  const int64_t* q_pos = nullptr;   // (B, Lq) contiguous, or null (then k_pos and table are null too)
  const int64_t* k_pos = nullptr;
  const float* table = nullptr;
};

// Rows of a (rows x dh) block as float32 with row stride `ld`: a view for float inputs, a converted copy
// into `buf` (row stride dh) for half/bfloat16.
template <typename scalar_t>
const float* rows_as_float(const scalar_t* src, int64_t src_stride, int64_t rows, int64_t dh, float* buf,
                           int64_t& ld) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    ld = src_stride;
    return src;
  } else {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < dh; ++c) buf[r * dh + c] = static_cast<float>(src[r * src_stride + c]);
    ld = dh;
    return buf;
  }
}

template <typename scalar_t>
void attention_cpu_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const BiasInputs& bias,
                          const AttentionShape& s, bool causal, at::Tensor& out) {
  const int64_t dh = s.head_dim, lq = s.lq, lk = s.lk;
  const int64_t group = s.heads / s.kv_heads;
  const int64_t q_blocks = (lq + kQueryBlock - 1) / kQueryBlock;
  const scalar_t* q_base = q.const_data_ptr<scalar_t>();
  const scalar_t* k_base = k.const_data_ptr<scalar_t>();
  const scalar_t* v_base = v.const_data_ptr<scalar_t>();
  scalar_t* o_base = out.data_ptr<scalar_t>();
  const float neg_inf = -std::numeric_limits<float>::infinity();

  at::parallel_for(0, s.batch * s.heads * q_blocks, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> q_buf(kQueryBlock * dh), k_buf(kKeyBlock * dh), v_buf(kKeyBlock * dh);
    std::vector<float> scores(kQueryBlock * kKeyBlock), acc(kQueryBlock * dh);
    std::vector<float> row_max(kQueryBlock), row_sum(kQueryBlock);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t qb = w % q_blocks, h = (w / q_blocks) % s.heads, b = w / (q_blocks * s.heads);
      const int64_t hk = h / group;
      const int64_t i0 = qb * kQueryBlock, nq = std::min(kQueryBlock, lq - i0);
      int64_t ldq;
      const float* qf = rows_as_float(q_base + b * q.stride(0) + i0 * q.stride(1) + h * q.stride(2), q.stride(1),
                                      nq, dh, q_buf.data(), ldq);
      std::fill(acc.begin(), acc.begin() + nq * dh, 0.f);
      std::fill(row_max.begin(), row_max.begin() + nq, neg_inf);
      std::fill(row_sum.begin(), row_sum.begin() + nq, 0.f);
      // Keys past the block's last query's horizon are invisible to the whole block: skip them.
      const int64_t key_end = causal ? std::min(lk, std::max<int64_t>(0, i0 + nq + lk - lq)) : lk;

      for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, key_end - j0);
        int64_t ldk, ldv;
        const float* kf = rows_as_float(k_base + b * k.stride(0) + j0 * k.stride(1) + hk * k.stride(2),
                                        k.stride(1), nk, dh, k_buf.data(), ldk);
        const float* vf = rows_as_float(v_base + b * v.stride(0) + j0 * v.stride(1) + hk * v.stride(2),
                                        v.stride(1), nk, dh, v_buf.data(), ldv);
        // scores (nq x nk, row-major) = scale * Q K^T; BLAS is column-major, hence the swapped operands.
        sgemm_colmajor(true, false, nk, nq, dh, s.scale, kf, ldk, qf, ldq, 0.f, scores.data(), nk);
        for (int64_t r = 0; r < nq; ++r) {
          const int64_t i = i0 + r;
          float* row = scores.data() + r * nk;
          float block_max = neg_inf;
          for (int64_t c = 0; c < nk; ++c) {
            const int64_t j = j0 + c;
            float val = row[c];
            if (!key_visible(i, j, lq, lk, causal)) {
              val = neg_inf;
            } else {
              if (bias.log_size) val += bias.log_size[b * lk + j];
              if (bias.table)
                val += bias.table[distance_index(bias.q_pos[b * lq + i], bias.k_pos[b * lk + j], s.table_len)];
            }
            row[c] = val;
            block_max = std::max(block_max, val);
          }
          const float new_max = std::max(row_max[r], block_max);
          const float offset = softmax_offset(new_max);
          float sum = 0.f;
          for (int64_t c = 0; c < nk; ++c) {
            row[c] = std::exp(row[c] - offset);
            sum += row[c];
          }
          const float factor = rescale_factor(row_max[r], new_max);
          row_sum[r] = row_sum[r] * factor + sum;
          row_max[r] = new_max;
          float* a = acc.data() + r * dh;
          for (int64_t c = 0; c < dh; ++c) a[c] *= factor;
        }
        // acc (nq x dh) += P V
        sgemm_colmajor(false, false, dh, nq, nk, 1.f, vf, ldv, scores.data(), nk, 1.f, acc.data(), dh);
      }
      for (int64_t r = 0; r < nq; ++r) {
        const float inv = normalizer(row_sum[r]);
        scalar_t* o = o_base + ((b * lq + i0 + r) * s.heads + h) * dh;
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

  // Keep the contiguous copies alive for the kernel's raw pointers.
  at::Tensor ls, qp, kp, tb;
  BiasInputs bias;
  if (s.has_log_size) {
    ls = log_size->contiguous();
    bias.log_size = ls.const_data_ptr<float>();
  }
  if (s.has_positions) {
    qp = q_pos->to(at::kLong).contiguous();
    kp = k_pos->to(at::kLong).contiguous();
    tb = table->contiguous();
    bias.q_pos = qp.const_data_ptr<int64_t>();
    bias.k_pos = kp.const_data_ptr<int64_t>();
    bias.table = tb.const_data_ptr<float>();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "calibrated_attention_cpu",
                                  [&] { attention_cpu_kernel<scalar_t>(q, k, v, bias, s, causal, out); });
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("calibrated_attention", &calibrated_attention_cpu); }

}  // namespace restore
