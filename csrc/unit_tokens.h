#pragma once
// DivPrune's token normalisation (docs/ops.md §1b), shared by the CPU and CUDA bodies so both devices pick from
// the same xn. Host-only (ATen ops): never included by device code.
#include <ATen/core/Tensor.h>

namespace restore {

// xn = x / max(||x||, 1e-12) along `dim` of float32 `x`, contiguous. Finite for every finite x: see the .cpp.
at::Tensor unit_tokens(const at::Tensor& x, int64_t dim);

}  // namespace restore
