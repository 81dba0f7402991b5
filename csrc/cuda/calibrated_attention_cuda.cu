// calibrated_attention on the GPU (docs/ops.md §5): checks, bias inputs in the kernels' layout, and the choice of
// kernel. float16/bfloat16 with head dim 64, 96, 128 or 256 on sm_80+ run the tensor-core kernel
// (calibrated_attention/fwd_kernel.h, flash-decoding splits when Lq <= 16); everything else up to head
// dim 256 runs the SIMT kernel (calibrated_attention/simt_attention.cu).
#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>

#include "cuda/calibrated_attention/attention_params.h"
#include "attention_bias_inputs.h"
#include "op_checks.h"

namespace restore {
namespace {

using attention::AttentionParams;

// cp.async moves 16-byte chunks, so the tensor-core kernel needs 16-byte aligned rows; a view that is not
// (an odd offset or stride) is copied once, contiguously.
at::Tensor rows_16b_aligned(const at::Tensor& t) {
  const int64_t elem = t.element_size();
  const bool aligned = reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0 &&
                       (t.stride(0) * elem) % 16 == 0 && (t.stride(1) * elem) % 16 == 0 &&
                       (t.stride(2) * elem) % 16 == 0;
  return aligned ? t : t.clone(at::MemoryFormat::Contiguous);
}

template <typename Element>
bool run_tensor_core(int64_t head_dim, const AttentionParams& params, cudaStream_t stream) {
  switch (head_dim) {
    case 64: return attention::run_tensor_core_attention<64, Element>(params, stream);
    case 96: return attention::run_tensor_core_attention<96, Element>(params, stream);
    case 128: return attention::run_tensor_core_attention<128, Element>(params, stream);
    case 256: return attention::run_tensor_core_attention<256, Element>(params, stream);
    default: return false;
  }
}

at::Tensor calibrated_attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                     const std::optional<at::Tensor>& log_size,
                                     const std::optional<at::Tensor>& q_pos, const std::optional<at::Tensor>& k_pos,
                                     const std::optional<at::Tensor>& table, bool causal,
                                     std::optional<double> scale) {
  const AttentionShape s = check_calibrated_attention_args(q_in, k_in, v_in, log_size, q_pos, k_pos, table, scale);
  constexpr const char* op = "calibrated_attention";
  TORCH_CHECK(s.head_dim <= attention::kSimtMaxHeadDim, op, ": head dim Dh = ", s.head_dim,
              " is not supported on CUDA (supported: Dh <= ", attention::kSimtMaxHeadDim,
              ", on tensor cores for float16/bfloat16 Dh in {64, 96, 128, 256}), got q of shape ", q_in.sizes());
  TORCH_CHECK(s.heads <= 65535 && s.batch <= 65535, op, ": CUDA supports at most 65535 heads and batch, got H = ",
              s.heads, ", B = ", s.batch);
  TORCH_CHECK(s.lq < (int64_t(1) << 31) / 64 && s.lk < (int64_t(1) << 31) - 64, op,
              ": sequence lengths must fit the CUDA grid, got Lq = ", s.lq, ", Lk = ", s.lk);
  const at::cuda::CUDAGuard guard(q_in.device());
  at::Tensor out = at::empty({s.batch, s.lq, s.heads, s.head_dim}, q_in.options());
  if (out.numel() == 0) return out;
  if (s.lk == 0) return out.zero_();  // no key is visible to any query

  const bool half_like = q_in.scalar_type() != at::kFloat;
  const at::Tensor q = half_like ? rows_16b_aligned(q_in) : q_in;
  const at::Tensor k = half_like ? rows_16b_aligned(k_in) : k_in;
  const at::Tensor v = half_like ? rows_16b_aligned(v_in) : v_in;

  AttentionParams p{};
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  p.out = out.data_ptr();
  p.q_batch_stride = q.stride(0), p.q_row_stride = q.stride(1), p.q_head_stride = q.stride(2);
  p.k_batch_stride = k.stride(0), p.k_row_stride = k.stride(1), p.k_head_stride = k.stride(2);
  p.v_batch_stride = v.stride(0), p.v_row_stride = v.stride(1), p.v_head_stride = v.stride(2);
  p.batch = int(s.batch), p.lq = int(s.lq), p.lk = int(s.lk), p.heads = int(s.heads);
  p.kv_heads = int(s.kv_heads), p.head_dim = int(s.head_dim);
  p.scale = s.scale;
  p.causal = causal;

  // Kept alive until the launches are queued; int32 positions widen on the device (no host sync).
  const AttentionBias bias = contiguous_attention_bias(s, log_size, q_pos, k_pos, table);
  p.log_size = bias.log_size_data;
  p.q_pos = bias.q_pos_data;
  p.k_pos = bias.k_pos_data;
  p.table = bias.table_data;
  p.pos_axes = s.pos_axes == 3 ? 3 : 1;
  if (s.has_positions) p.table_len = s.table_len;

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (s.has_log_size) attention::check_log_size_on_device(p.log_size, s.batch * s.lk, stream);
  if (s.has_positions) attention::check_table_on_device(p.table, p.table_len, p.pos_axes, stream);
  bool done = false;
  if (q.scalar_type() == at::kHalf) done = run_tensor_core<__half>(s.head_dim, p, stream);
  if (q.scalar_type() == at::kBFloat16) done = run_tensor_core<__nv_bfloat16>(s.head_dim, p, stream);
  if (!done) {
    // float64 never gets here: the argument checks admit float16, bfloat16 and float32 only.
    switch (q.scalar_type()) {
      case at::kHalf: attention::run_simt_attention<c10::Half>(p, stream); break;
      case at::kBFloat16: attention::run_simt_attention<c10::BFloat16>(p, stream); break;
      default: attention::run_simt_attention<float>(p, stream); break;
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(restore, CUDA, m) { m.impl("calibrated_attention", &calibrated_attention_cuda); }

}  // namespace restore
