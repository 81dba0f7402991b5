// HoloV's crop statistic on the CPU (contract: restore_ext.reference.holov_crop_variance). As one batched
// matmul followed by torch reductions, the (B, C, m, m) matrix goes through memory five more times (scaling,
// diagonal, float64 row sums and sums of squares) and the features once more for their norms. Here each crop's
// Gram is reduced while it is in cache (cpu/holov_crop_math.h), crops in parallel, one BLAS call each.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "cpu/holov_crop_math.h"
#include "cpu/holov_variance_bounds.h"
#include "op_checks.h"

namespace restore {

at::Tensor holov_crop_variance_cpu(const at::Tensor& x) {
  check_holov_crop_variance_args(x);
  const int64_t batch = x.size(0), crops = x.size(1), m = x.size(2), d = x.size(3);
  at::Tensor out = at::empty({batch, crops}, x.options().dtype(at::kDouble));
  // holov_indices passes each crop length's tokens as a view of the features: rows packed, but the batch stride
  // spans every crop when N % 16 != 0. Use those strides rather than copying the features.
  const bool packed = (d == 1 || x.stride(3) == 1) && x.stride(2) == d;
  const at::Tensor src = packed ? x : x.contiguous();
  const int64_t batch_stride = src.stride(0), crop_stride = src.stride(1);
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "holov_crop_variance_cpu", [&] {
    const scalar_t* xs = src.const_data_ptr<scalar_t>();
    double* dst = out.data_ptr<double>();
    // One crop per task; BLAS inside a parallel region runs on the calling thread.
    at::parallel_for(0, batch * crops, 1, [&](int64_t c0, int64_t c1) {
      std::vector<scalar_t> f, gram;  // f: normalised rows, only for crops that need them
      std::vector<double> inv;
      for (int64_t c = c0; c < c1; ++c) {
        const scalar_t* crop = xs + (c / crops) * batch_stride + (c % crops) * crop_stride;
        if (!holov::crop_variance(crop, m, d, f, gram, inv, dst + c)) {
          finite = false;
          return;
        }
      }
    });
  });
  TORCH_CHECK(finite, "holov_crop_variance: x must be finite, got NaN or inf");
  return out;
}

// [lo, hi] around each crop's V from its bfloat16 Gram matrix (cpu/holov_variance_bounds.h): what
// holov_indices(gram="bf16") decides budgets with; an op of its own so that tests hold the bounds to the
// float64 reference directly.
at::Tensor holov_crop_variance_bounds_cpu(const at::Tensor& x) {
  check_holov_crop_variance_args(x, "holov_crop_variance_bounds");
  const at::Tensor src = x.contiguous();
  const int64_t batch = x.size(0), crops = x.size(1), m = x.size(2), d = x.size(3);
  at::Tensor out = at::empty({batch, crops, 2}, x.options().dtype(at::kDouble));
  std::atomic<bool> finite{true};
  AT_DISPATCH_FLOATING_TYPES(src.scalar_type(), "holov_crop_variance_bounds_cpu", [&] {
    const scalar_t* xs = src.const_data_ptr<scalar_t>();
    double* dst = out.data_ptr<double>();
    at::parallel_for(0, batch * crops, 1, [&](int64_t c0, int64_t c1) {
      holov::Bf16Scratch scratch;
      for (int64_t c = c0; c < c1; ++c) {
        holov::VarianceBounds v;
        if (!holov::crop_variance_bounds(xs + c * m * d, m, d, scratch, &v)) {
          finite = false;
          return;
        }
        dst[2 * c] = v.lo;
        dst[2 * c + 1] = v.hi;
      }
    });
  });
  TORCH_CHECK(finite, "holov_crop_variance_bounds: x must be finite, got NaN or inf");
  return out;
}

TORCH_LIBRARY_IMPL(restore, CPU, m) {
  m.impl("holov_crop_variance", &holov_crop_variance_cpu);
  m.impl("holov_crop_variance_bounds", &holov_crop_variance_bounds_cpu);
}

}  // namespace restore
