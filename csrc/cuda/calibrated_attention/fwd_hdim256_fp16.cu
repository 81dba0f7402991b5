// Tensor-core calibrated attention, head dim 256, fp16: one instantiation per file so builds parallelise.
#include "cuda/calibrated_attention/fwd_launch.h"

RESTORE_INSTANTIATE_TENSOR_CORE_ATTENTION(256, __half)
