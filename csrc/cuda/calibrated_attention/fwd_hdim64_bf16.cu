// Tensor-core calibrated attention, head dim 64, bf16: one instantiation per file so builds parallelise.
#include "cuda/calibrated_attention/fwd_launch.h"

RESTORE_INSTANTIATE_TENSOR_CORE_ATTENTION(64, __nv_bfloat16)
