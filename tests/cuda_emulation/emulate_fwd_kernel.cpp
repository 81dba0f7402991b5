// Runs the tensor-core kernel of csrc/cuda/calibrated_attention/fwd_kernel.h on the CPU, one std::thread
// per CUDA thread, with cp.async, ldmatrix, mma.sync and shuffles emulated per the PTX ISA fragment layouts
// (cuda/calibrated_attention/sm80_ptx.h here shadows the real one). It checks the kernel's indexing --
// fragments, masks, causal tile skipping, GQA packing, split-KV partials -- against a float64 reference on
// machines without a GPU, and, with cp.async copies landing as late as the PTX allows, a missing or
// too-lax cp.async.wait_group; every cp.async and ldmatrix is checked for shared-memory races (another
// thread's access to the same 16 bytes between the same two __syncthreads). It cannot see real timing,
// races on plain shared-memory stores, or compiler/PTX issues.
// Usage: emulate_fwd_kernel [head_dim [eager|late]]; exit status 1 if any case is off. The second argument
// is when cp.async copies land (sm80_ptx.h here): at issue, or only at the wait that covers them.
#include "cuda/calibrated_attention/sm80_ptx.h"
#include "cuda/calibrated_attention/fwd_kernel.h"
#include "attention_reference.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace restore::attention {
alignas(16) unsigned char smem[1 << 18];  // the kernel's `extern __shared__` array; blocks run one at a time
}
using namespace restore::attention;

struct Case {
  int B, Lq, Lk, H, Hkv;
  bool causal, log_size, pos;
  int tiles_per_split;  // 0: no split
  bool masked_tile, bhld_q;
  int T;
  bool pack_gqa;
  char expanded = 0;  // 'k' or 'v': that tensor has stride 0 along L (expand()), every row is row 0
  bool extreme_pos = false;  // positions near INT64_MAX / INT64_MIN: the distance index must saturate
  bool mrope = false;        // (t, h, w) positions and a (3, T) table of decay shares (docs/ops.md §5b)
};

template <int D, typename E>
double run_case(const Case& c, uint32_t seed) {
  using Traits = FwdTraitsFor<D, E>;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  const int B = c.B, Lq = c.Lq, Lk = c.Lk, H = c.H, Hkv = c.Hkv;
  std::vector<E> q(size_t(B) * Lq * H * D), k(size_t(B) * Lk * Hkv * D), v(k.size());
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = E(nd(rng));
  std::vector<float> ls(size_t(B) * Lk), table(c.T);
  std::vector<int64_t> qp(size_t(B) * Lq), kp(size_t(B) * Lk);
  for (auto& x : ls) x = 0.5f * nd(rng);
  if (c.masked_tile)
    for (int b = 0; b < B; ++b)
      for (int j = 64; j < std::min(Lk, 133); ++j) ls[b * Lk + j] = -INFINITY;
  if (B > 1)
    for (int j = 0; j < Lk; ++j) ls[(B - 1) * Lk + j] = -INFINITY;  // the last batch sees no key at all
  for (auto& x : table) x = 0.3f * nd(rng);
  for (int b = 0; b < B; ++b) {  // gaps and repeats
    for (int j = 0; j < Lk; ++j) kp[b * Lk + j] = j / 2 + (j > Lk / 2 ? 7 : 0);
    for (int i = 0; i < Lq; ++i) qp[b * Lq + i] = (Lk - Lq + i) / 2 + 9;
  }
  if (c.extreme_pos) set_extreme_positions(qp, kp);
  if (c.mrope) set_mrope_inputs(B, Lq, Lk, c.T, c.extreme_pos, qp, kp, table);
  std::vector<E> out(size_t(B) * Lq * H * D, E(123.f));

  AttentionParams p{};
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data();
  if (c.bhld_q) {
    p.q_batch_stride = int64_t(H) * Lq * D, p.q_head_stride = int64_t(Lq) * D, p.q_row_stride = D;
  } else {
    p.q_batch_stride = int64_t(Lq) * H * D, p.q_row_stride = int64_t(H) * D, p.q_head_stride = D;
  }
  p.k_batch_stride = p.v_batch_stride = int64_t(Lk) * Hkv * D;
  p.k_row_stride = p.v_row_stride = int64_t(Hkv) * D;
  p.k_head_stride = p.v_head_stride = D;
  if (c.expanded == 'k') p.k_row_stride = 0;
  if (c.expanded == 'v') p.v_row_stride = 0;
  if (c.log_size) p.log_size = ls.data();
  if (c.pos) p.q_pos = qp.data(), p.k_pos = kp.data(), p.table = table.data(), p.table_len = c.T;
  p.pos_axes = c.mrope ? 3 : 1;
  p.batch = B, p.lq = Lq, p.lk = Lk, p.heads = H, p.kv_heads = Hkv, p.head_dim = D;
  p.scale = 1.f / std::sqrt(float(D));
  p.causal = c.causal;
  p.pack_gqa = c.pack_gqa;

  // Same grid as run_tensor_core_attention (fwd_launch.h), with the split size given by the case.
  const int rows = c.pack_gqa ? Lq * (H / Hkv) : Lq, head_blocks = c.pack_gqa ? Hkv : H;
  const int m_blocks = (rows + Traits::kBlockM - 1) / Traits::kBlockM;
  const int64_t out_rows = int64_t(B) * Lq * H;
  std::vector<float> partial_out, partial_lse;
  if (c.tiles_per_split > 0) {
    const int tiles = (Lk + Traits::kBlockN - 1) / Traits::kBlockN;
    p.tiles_per_split = c.tiles_per_split;
    p.num_splits = (tiles + c.tiles_per_split - 1) / c.tiles_per_split;
    partial_out.assign(p.num_splits * out_rows * D, 777.f);
    partial_lse.assign(p.num_splits * out_rows, 777.f);
    p.partial_out = partial_out.data(), p.partial_lse = partial_lse.data();
  }
  emu::Block block(Traits::kThreads);
  for (int bz = 0; bz < B; ++bz)
    for (int by = 0; by < head_blocks; ++by)
      for (int bx = 0; bx < m_blocks * p.num_splits; ++bx) {
        std::memset(smem, 0xff, sizeof(smem));  // NaN garbage, so a missing zero fill shows
        emu::race_check.clear();
        std::vector<std::thread> threads;
        for (int t = 0; t < Traits::kThreads; ++t)
          threads.emplace_back([&, t] {
            emu::block = &block, threadIdx.x = t, blockIdx.x = bx, blockIdx.y = by, blockIdx.z = bz;
            if (c.mrope)
              calibrated_attention_fwd_kernel<Traits, restore::MropeDistanceBias>(p);
            else
              calibrated_attention_fwd_kernel<Traits, restore::DistanceBias>(p);
          });
        for (auto& t : threads) t.join();
      }
  if (p.num_splits > 1) {  // the math of combine_splits.cu
    for (int64_t r = 0; r < out_rows; ++r) {
      float m = -INFINITY, total = 0.f;
      for (int s = 0; s < p.num_splits; ++s) m = std::max(m, partial_lse[s * out_rows + r]);
      std::vector<float> w(p.num_splits);
      for (int s = 0; s < p.num_splits; ++s) total += w[s] = std::exp(partial_lse[s * out_rows + r] - restore::softmax_offset(m));
      for (int d = 0; d < D; ++d) {
        float x = 0.f;
        for (int s = 0; s < p.num_splits; ++s) x += w[s] * restore::normalizer(total) * partial_out[(s * out_rows + r) * D + d];
        out[r * D + d] = E(x);
      }
    }
  }

  const double err = max_abs_error(out, reference_attention<E>(p));
  return emu::race_check.races ? INFINITY : err;
}

template <int D, typename E>
int sweep(const char* name) {
  const std::vector<Case> cases = {
      // B, Lq, Lk, H, Hkv, causal, log_size, pos, tiles_per_split, masked_tile, bhld_q, T, pack_gqa
      {1, 64, 64, 1, 1, false, false, false, 0, false, false, 8, false},
      {1, 70, 70, 2, 1, true, true, true, 0, false, false, 8, false},
      {2, 130, 150, 4, 1, true, true, true, 0, true, true, 16, false},
      {1, 100, 40, 1, 1, true, true, false, 0, false, false, 8, false},  // Lq > Lk: early rows see nothing
      {2, 5, 300, 2, 2, false, true, true, 2, true, false, 500, false},   // splits
      {1, 1, 200, 8, 1, true, true, false, 1, false, false, 8, false},    // one tile per split
      {1, 1, 200, 8, 1, true, true, true, 0, false, false, 50, true},     // GQA 8 packed
      {2, 5, 300, 8, 2, true, true, true, 2, true, true, 100, true},      // packed, splits, strided q
      {1, 16, 150, 8, 1, true, true, true, 2, false, true, 100, true},    // packed: 128 rows, two row tiles
      {1, 70, 130, 2, 1, true, true, true, 0, false, false, 8, false, 'k', true},  // expanded K, extreme positions
      {2, 3, 200, 4, 2, false, true, true, 2, false, false, 16, true, 'k', true},   // the same, packed, splits
      {1, 20, 90, 2, 2, true, true, true, 0, false, false, 8, false, 'v'},  // expanded V
      // M-RoPE (t, h, w): prefill over two tiles, decode packed with splits, extreme ids, no log_size
      {2, 70, 130, 2, 1, true, true, true, 0, false, true, 40, false, 0, false, true},
      {2, 3, 200, 8, 2, true, true, true, 2, true, false, 64, true, 0, false, true},
      {1, 40, 100, 2, 2, false, false, true, 0, false, false, 16, false, 'k', true, true},
  };
  int bad = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    // bf16 keeps 8 bits of mantissa: P rounded to it moves outputs by ~1e-2 at worst here.
    const double err = run_case<D, E>(cases[i], 1234 + i), tol = std::is_same_v<E, __half> ? 5e-3 : 3e-2;
    std::printf("%s case %zu: max error %.3e%s\n", name, i, err, err <= tol ? "" : "  <-- exceeds tolerance");
    bad += !(err <= tol);
  }
  return bad;
}

int main(int argc, char** argv) {
  const int head_dim = argc > 1 ? std::atoi(argv[1]) : 0;
  if (argc > 2 && std::string(argv[2]) == "late") emu::copy_timing = emu::CopyTiming::Late;
  int bad = 0;
  if (head_dim == 0 || head_dim == 64) bad += sweep<64, __half>("hdim64 fp16") + sweep<64, __nv_bfloat16>("hdim64 bf16");
  if (head_dim == 0 || head_dim == 96) bad += sweep<96, __half>("hdim96 fp16");
  if (head_dim == 0 || head_dim == 128) bad += sweep<128, __nv_bfloat16>("hdim128 bf16") + sweep<128, __half>("hdim128 fp16");
  if (head_dim == 0 || head_dim == 256) bad += sweep<256, __half>("hdim256 fp16");
  return bad ? 1 : 0;
}
