// Calibrated attention on the CPU (docs/ops.md §5), FlashAttention-style as ATen's CPU flash attention: a work
// item is (batch, K/V head, block of query rows); it streams blocks of keys, computes Q K^T and P V through
// BLAS sgemm, adds the RESTORE bias on the fly and keeps an online softmax, so extra memory is O(block),
// never O(Lq x Lk). The per-score steps -- causal horizon, bias, softmax rescale -- are the headers in
// restore/ that the CUDA kernels run too.
//
// GQA: the rows of a block are (query, head) pairs of all query heads that share one K/V head, so each K/V
// block is read once per group, and a decode step (Lq = 1) still gives BLAS a matrix, not a vector.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <climits>
#include <limits>
#include <optional>
#include <vector>

#include "attention_bias_inputs.h"
#include "cpu/blas_gemm.h"
#include "cpu/softmax_rows.h"
#include "op_checks.h"
#include "restore/causal_mask.h"
#include "restore/online_softmax.h"
#include "restore/score_bias.h"

namespace restore {
namespace {

constexpr int64_t kRowBlock = 128;
constexpr int64_t kKeyBlock = 256;

// K or V as float32 rows BLAS can read: a leading dimension (the stride along L) of at least Dh that fits an
// int. A view whose rows repeat or overlap -- stride 0 from expand(), a stride below Dh -- or whose stride
// overflows int is copied once (O(Lk x Dh), never O(Lq x Lk)); BLAS would reject it (MKL prints an error and
// leaves the output wrong). clone(Contiguous), not contiguous(): a (B, 1, H, Dh) view with stride 0 along L
// already counts as contiguous.
at::Tensor blas_rows(const at::Tensor& t) {
  const at::Tensor f = t.to(at::kFloat);  // a no-op for float32
  const int64_t ld = f.stride(1);
  return ld >= std::max<int64_t>(1, f.size(3)) && ld <= INT_MAX ? f : f.clone(at::MemoryFormat::Contiguous);
}

// The position inputs as the row loop reads them: a query's position, and a block of keys' positions from key
// j0 on. 1-D: (B, L) rows; no position term is a DistanceBias without a table.
struct DistancePositions {
  DistanceBias bias;
  const int64_t *q, *k;
  int64_t lq, lk;
  int64_t query(int64_t b, int64_t i) const { return q ? q[b * lq + i] : 0; }
  const int64_t* keys(int64_t b, int64_t j0) const { return k ? k + b * lk + j0 : nullptr; }
};

// M-RoPE: queries (B, Lq, 3) as given, keys planar (B, 3, Lk) so the bias loop reads each axis contiguously.
struct MropePositions {
  MropeDistanceBias bias;
  const int64_t *q, *k;
  int64_t lq, lk;
  MropePosition query(int64_t b, int64_t i) const {
    const int64_t* p = q + (b * lq + i) * 3;
    return MropePosition{{p[0], p[1], p[2]}};
  }
  MropeKeyRows keys(int64_t b, int64_t j0) const {
    const int64_t* t = k + b * 3 * lk + j0;
    return MropeKeyRows{{t, t + lk, t + 2 * lk}};
  }
};

// Q, K, V as float32 with a contiguous last dim; O written in `out`'s dtype.
template <typename scalar_t, typename Positions>
void attention_cpu_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const float* log_size,
                          const Positions& position, const AttentionShape& s, bool causal, at::Tensor& out) {
  const int64_t dh = s.head_dim, lq = s.lq, lk = s.lk;
  const int64_t group = s.heads / s.kv_heads;
  const int64_t rows_total = lq * group;
  const int64_t row_blocks = (rows_total + kRowBlock - 1) / kRowBlock;
  const scalar_t* q_base = q.const_data_ptr<scalar_t>();
  const float* k_base = k.const_data_ptr<float>();
  const float* v_base = v.const_data_ptr<float>();
  scalar_t* o_base = out.data_ptr<scalar_t>();
  std::vector<float> zero_log_size(position.bias.enabled() && !log_size ? kKeyBlock : 0, 0.f);

  at::parallel_for(0, s.batch * s.kv_heads * row_blocks, 1, [&](int64_t w0, int64_t w1) {
    std::vector<float> q_buf(kRowBlock * dh), scores(kRowBlock * kKeyBlock), acc(kRowBlock * dh);
    std::vector<float> bias_row(kKeyBlock);
    std::vector<OnlineSoftmaxRow> softmax(kRowBlock);
    for (int64_t w = w0; w < w1; ++w) {
      const int64_t rb = w % row_blocks, hk = (w / row_blocks) % s.kv_heads, b = w / (row_blocks * s.kv_heads);
      const int64_t r0 = rb * kRowBlock, nr = std::min(kRowBlock, rows_total - r0);
      // Load Q: row r is query r / group of head hk * group + r % group.
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = (r0 + r) / group, h = hk * group + (r0 + r) % group;
        const scalar_t* src = q_base + b * q.stride(0) + i * q.stride(1) + h * q.stride(2);
        for (int64_t c = 0; c < dh; ++c) q_buf[r * dh + c] = static_cast<float>(src[c]);
      }
      std::fill(acc.begin(), acc.begin() + nr * dh, 0.f);
      std::fill(softmax.begin(), softmax.begin() + nr, OnlineSoftmaxRow{});
      // Keys past the last query's horizon are invisible to the whole block: skip them.
      const int64_t key_end = visible_key_end((r0 + nr - 1) / group, lq, lk, causal);

      for (int64_t j0 = 0; j0 < key_end; j0 += kKeyBlock) {
        const int64_t nk = std::min(kKeyBlock, key_end - j0);
        const float* kf = k_base + b * k.stride(0) + j0 * k.stride(1) + hk * k.stride(2);
        const float* vf = v_base + b * v.stride(0) + j0 * v.stride(1) + hk * v.stride(2);
        // S (nr x nk, row-major) = scale * Q K^T; BLAS is column-major, hence the swapped operands.
        sgemm_colmajor(true, false, nk, nr, dh, s.scale, kf, k.stride(1), q_buf.data(), dh, 0.f, scores.data(), nk);
        const float* ls = log_size ? log_size + b * lk + j0 : zero_log_size.data();
        const auto kp = position.keys(b, j0);
        int64_t bias_query = -1;  // the query whose bias bias_row holds (rows of one GQA group share it)
        for (int64_t r = 0; r < nr; ++r) {
          const int64_t i = (r0 + r) / group;
          // Bias and mask: the visible keys are a prefix of the block.
          const int64_t visible = std::clamp<int64_t>(visible_key_end(i, lq, lk, causal) - j0, 0, nk);
          const float* bias = log_size ? ls : nullptr;
          if (position.bias.enabled()) {
            if (i != bias_query)
              position_bias_row(bias_row.data(), visible, ls, kp, position.query(b, i), position.bias);
            bias_query = i;
            bias = bias_row.data();
          }
          float* row = scores.data() + r * nk;
          const float block_max = add_bias_and_max(row, nk, visible, bias);
          // Softmax rescale: P = exp(S - offset); the row's earlier sum and output move to the new maximum.
          const OnlineSoftmaxRow::Step step = softmax[r].rescale(block_max);
          softmax[r].add(step, exp_and_sum(row, nk, step.offset));
          scale_row(acc.data() + r * dh, dh, step.factor);
        }
        // O (nr x dh) += P V
        sgemm_colmajor(false, false, dh, nr, nk, 1.f, vf, v.stride(1), scores.data(), nk, 1.f, acc.data(), dh);
      }
      // Epilogue: O / l, zeros for a row that saw no key.
      for (int64_t r = 0; r < nr; ++r) {
        const int64_t i = (r0 + r) / group, h = hk * group + (r0 + r) % group;
        const float inv = normalizer(softmax[r].sum);
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
  if (s.has_log_size) check_log_size_values(*log_size);
  if (s.has_positions) check_table_values(*table);
  at::Tensor out = at::empty({s.batch, s.lq, s.heads, s.head_dim}, q.options());
  if (out.numel() == 0) return out;
  if (s.lk == 0) return out.zero_();

  // K and V in float32 once (a no-op for float32 inputs BLAS can read): every query block reads them, and
  // BLAS wants float32. O(Lk x Dh) extra memory for half/bfloat16, never O(Lq x Lk).
  const at::Tensor kf = blas_rows(k), vf = blas_rows(v);
  const AttentionBias bias = contiguous_attention_bias(s, log_size, q_pos, k_pos, table);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "calibrated_attention_cpu", [&] {
    if (s.pos_axes == 3) {
      // Keys' positions planar, (B, 3, Lk): O(Lk) once, never O(Lq x Lk).
      const at::Tensor k_planar = bias.k_pos.transpose(1, 2).contiguous();
      const MropePositions position{MropeDistanceBias{bias.table_data, s.table_len}, bias.q_pos_data,
                                    k_planar.const_data_ptr<int64_t>(), s.lq, s.lk};
      attention_cpu_kernel<scalar_t>(q, kf, vf, bias.log_size_data, position, s, causal, out);
    } else {
      const DistancePositions position{DistanceBias{bias.table_data, s.table_len}, bias.q_pos_data, bias.k_pos_data,
                                       s.lq, s.lk};
      attention_cpu_kernel<scalar_t>(q, kf, vf, bias.log_size_data, position, s, causal, out);
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("calibrated_attention", &calibrated_attention_cpu); }

}  // namespace restore
