#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "cpu/topk_select.h"
#include "op_checks.h"

namespace restore {

at::Tensor topk_indices_cpu(const at::Tensor& scores, int64_t k) {
  check_topk_indices_args(scores, k);
  const int64_t batch = scores.size(0), n = scores.size(1);
  at::Tensor out = at::empty({batch, k}, scores.options().dtype(at::kLong));
  const at::Tensor s = scores.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "topk_indices_cpu", [&] {
    const scalar_t* src = s.const_data_ptr<scalar_t>();
    int64_t* dst = out.data_ptr<int64_t>();
    // Rows are independent; a grain of one row is enough work once N is in the hundreds.
    const int64_t grain = std::max<int64_t>(1, 4096 / n);
    at::parallel_for(0, batch, grain, [&](int64_t b0, int64_t b1) {
      std::vector<uint32_t> keys(n);
      std::vector<int64_t> scratch(n);
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t i = 0; i < n; ++i) keys[i] = score_key(static_cast<float>(src[b * n + i]));
        select_top_k(keys.data(), n, k, scratch.data(), dst + b * k);
      }
    });
  });
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) { m.impl("topk_indices", &topk_indices_cpu); }

}  // namespace restore
