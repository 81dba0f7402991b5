#pragma once
// Math headers are compiled by both g++ (CPU kernels, exercised by the CPU tests) and nvcc (CUDA kernels).
#if defined(__CUDACC__)
#define RESTORE_HD __host__ __device__ __forceinline__
#else
#define RESTORE_HD inline
#endif

namespace restore {

// A load through the read-only data cache on the GPU (inputs no kernel writes); a plain load elsewhere.
template <typename T>
RESTORE_HD T read_only(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

}  // namespace restore
