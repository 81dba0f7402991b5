#pragma once
// Host stand-in for CUB's BlockScan (only ExclusiveSum with a block aggregate, as block_topk.cuh uses it).
// Like the real one it does not synchronise after reading its TempStorage: a caller that reuses the storage
// without a __syncthreads() in between races here too.
namespace cub {

template <typename T, int kThreads>
class BlockScan {
 public:
  struct TempStorage {
    T values[kThreads];
  };
  explicit BlockScan(TempStorage& storage) : storage_(storage) {}

  void ExclusiveSum(T input, T& output, T& block_aggregate) {
    storage_.values[threadIdx.x] = input;
    __syncthreads();
    T before{}, total{};
    for (int t = 0; t < kThreads; ++t) {
      if (t < threadIdx.x) before += storage_.values[t];
      total += storage_.values[t];
    }
    output = before;
    block_aggregate = total;
  }

 private:
  TempStorage& storage_;
};

}  // namespace cub
