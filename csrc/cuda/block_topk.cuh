#pragma once
// Top-k of one row by one thread block, in the docs/ops.md §1 ranking (restore/topk_order.h keys): an 8-bit-digit
// radix select finds the k-th best key, then a pass in index order emits every key above it and the
// lowest-index keys equal to it, which gives ascending output and ties to the lower index for free.
// Used by topk_indices and by anchor_merge's anchor choice.
#include <cstdint>

#include <cub/block/block_scan.cuh>

namespace restore {

// key_of(i) returns the uint32 ranking key of element i < n; writes the k chosen indices to out, ascending.
// Every thread of the block must call it.
template <int kThreads, typename KeyOf>
__device__ void block_topk_ascending(KeyOf key_of, int64_t n, int64_t k, int64_t* __restrict__ out) {
  using BlockScan = cub::BlockScan<int, kThreads>;
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ unsigned int hist[256];
  __shared__ uint32_t chosen_prefix;
  __shared__ int64_t chosen_remaining;

  // Invariant: the k-th best key starts with `prefix` on the bits in `mask`, and `remaining` of the top k
  // are still to be found among the keys with that prefix.
  uint32_t prefix = 0, mask = 0;
  int64_t remaining = k;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int d = threadIdx.x; d < 256; d += kThreads) hist[d] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const uint32_t key = key_of(i);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xffu], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t rem = remaining;
      int digit = 255;
      for (; digit > 0 && hist[digit] < rem; --digit) rem -= hist[digit];
      chosen_prefix = prefix | (static_cast<uint32_t>(digit) << shift);
      chosen_remaining = rem;
    }
    __syncthreads();
    prefix = chosen_prefix;
    remaining = chosen_remaining;
    mask |= 0xffu << shift;
    __syncthreads();  // chosen_* and hist are rewritten by the next pass
  }
  const uint32_t threshold = prefix;  // the k-th best key; `remaining` of the keys equal to it are kept

  int64_t equal_seen = 0, written = 0;
  for (int64_t base = 0; base < n && written < k; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const bool valid = i < n;
    const uint32_t key = valid ? key_of(i) : 0u;
    const int is_equal = valid && key == threshold;
    int equal_rank, equal_total;
    BlockScan(scan_storage).ExclusiveSum(is_equal, equal_rank, equal_total);
    __syncthreads();
    const int take = valid && (key > threshold || (is_equal && equal_seen + equal_rank < remaining));
    int slot, taken;
    BlockScan(scan_storage).ExclusiveSum(take, slot, taken);
    __syncthreads();
    if (take) out[written + slot] = i;
    equal_seen += equal_total;
    written += taken;
  }
}

}  // namespace restore
