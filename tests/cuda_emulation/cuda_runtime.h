#pragma once
// attention_params.h only needs the stream type from the CUDA runtime.
typedef struct CUstream_st* cudaStream_t;
