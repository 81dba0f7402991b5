#pragma once
// Math headers are compiled by both g++ (CPU kernels, exercised by the CPU tests) and nvcc (CUDA kernels).
#if defined(__CUDACC__)
#define RESTORE_HD __host__ __device__ __forceinline__
#else
#define RESTORE_HD inline
#endif
