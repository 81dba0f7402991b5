// Why not x / x.norm(): a float32 norm squares each element first, so a finite token with |x_i| ~ 2e19 has an
// infinite norm, every xn is 0 and DivPrune silently returns 0 .. k-1. Dividing by the token's largest |x_i|
// (s) first keeps every intermediate within the token's own range: y = x / s has ||y|| in [1, sqrt(D)], and
// x / max(||x||, 1e-12) = y / max(||y||, 1e-12 / s), where 1e-12 / s stays finite down to the smallest
// subnormal s. Float32 throughout: no float64 copy of (B, N, D), no FP64 work on the GPU.
#include "unit_tokens.h"

#include <ATen/ATen.h>

namespace restore {

at::Tensor unit_tokens(const at::Tensor& x, int64_t dim) {
  const at::Tensor s = x.abs().amax({dim}, /*keepdim=*/true);
  // An all-zero token (s = 0) divides by 1 instead: y = 0 and xn = 0, as the 1e-12 floor gives. A NaN s fails
  // s > 0 and leaves the token's NaN to propagate; docs/ops.md leaves NaN / inf tokens' picks undefined.
  const at::Tensor safe_s = at::where(s > 0, s, at::ones_like(s));
  const at::Tensor y = x / safe_s;
  return (y / at::maximum(y.norm(2, {dim}, /*keepdim=*/true), 1e-12 / safe_s)).contiguous();
}

}  // namespace restore
