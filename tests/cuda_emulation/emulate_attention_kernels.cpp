// Runs the other calibrated_attention kernels on the CPU (emulated_cuda.h): the SIMT kernel (simt_kernel.h:
// float32, and head dims or devices without the tensor-core path) against the float64 reference, the
// flash-decoding combine (combine_kernel.h) against the same merge done in float64, and the device-side
// log_size check (log_size_check_kernel.h) against a host scan.
// Usage: emulate_attention_kernels [simt|combine|log_size_check]; exit status 1 if any case is off.
#define __shared__ static  // one object per kernel instantiation: what the threads of a block share
#include "cuda/calibrated_attention/sm80_ptx.h"

#include <atomic>
// The device assert, counted instead of aborting.
namespace emu {
inline std::atomic<int> device_asserts{0};
}
#define RESTORE_DEVICE_ASSERT(cond, msg) \
  if (!(cond)) ++emu::device_asserts
#include "cuda/calibrated_attention/log_size_check_kernel.h"
#include "cuda/calibrated_attention/table_check_kernel.h"

#include "cuda/calibrated_attention/combine_kernel.h"
#include "cuda/calibrated_attention/simt_kernel.h"
#include "attention_reference.h"

#include <cstdio>
#include <random>
#include <string>

using namespace restore::attention;

struct SimtCase {
  int B, Lq, Lk, H, Hkv, D;
  bool causal, bias, bhld_q;
  int T;
  char expanded = 0;  // 'k' or 'v': that tensor has stride 0 along L (expand()), every row is row 0
  bool extreme_pos = false;  // positions near INT64_MAX / INT64_MIN: the distance index must saturate
  bool mrope = false;        // (t, h, w) positions and a (3, T) table of decay shares (docs/ops.md §5b)
};

template <typename E>
double simt_case(const SimtCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  std::vector<E> q(size_t(c.B) * c.Lq * c.H * c.D), k(size_t(c.B) * c.Lk * c.Hkv * c.D), v(k.size());
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = E(nd(rng));
  std::vector<float> ls(size_t(c.B) * c.Lk), table(c.T);
  std::vector<int64_t> qp(size_t(c.B) * c.Lq), kp(size_t(c.B) * c.Lk);
  for (auto& x : ls) x = 0.5f * nd(rng);
  for (int j = 0; j < c.Lk; j += 3) ls[j] = -INFINITY;  // masked keys in batch 0
  if (c.B > 1)
    for (int j = 0; j < c.Lk; ++j) ls[(c.B - 1) * c.Lk + j] = -INFINITY;  // the last batch sees no key at all
  for (auto& x : table) x = 0.3f * nd(rng);
  for (int b = 0; b < c.B; ++b) {  // gaps and repeats; positions past the table clamp
    for (int j = 0; j < c.Lk; ++j) kp[b * c.Lk + j] = j / 2 + (j > c.Lk / 2 ? 7 : 0);
    for (int i = 0; i < c.Lq; ++i) qp[b * c.Lq + i] = (c.Lk - c.Lq + i) / 2 + 9;
  }
  if (c.extreme_pos) set_extreme_positions(qp, kp);
  if (c.mrope) set_mrope_inputs(c.B, c.Lq, c.Lk, c.T, c.extreme_pos, qp, kp, table);
  std::vector<E> out(size_t(c.B) * c.Lq * c.H * c.D, E(123.f));

  AttentionParams p{};
  p.q = q.data(), p.k = k.data(), p.v = v.data(), p.out = out.data();
  if (c.bhld_q) {
    p.q_batch_stride = int64_t(c.H) * c.Lq * c.D, p.q_head_stride = int64_t(c.Lq) * c.D, p.q_row_stride = c.D;
  } else {
    p.q_batch_stride = int64_t(c.Lq) * c.H * c.D, p.q_row_stride = int64_t(c.H) * c.D, p.q_head_stride = c.D;
  }
  p.k_batch_stride = p.v_batch_stride = int64_t(c.Lk) * c.Hkv * c.D;
  p.k_row_stride = p.v_row_stride = int64_t(c.Hkv) * c.D;
  p.k_head_stride = p.v_head_stride = c.D;
  if (c.expanded == 'k') p.k_row_stride = 0;
  if (c.expanded == 'v') p.v_row_stride = 0;
  if (c.bias) p.log_size = ls.data(), p.q_pos = qp.data(), p.k_pos = kp.data(), p.table = table.data(), p.table_len = c.T;
  p.pos_axes = c.mrope ? 3 : 1;
  p.batch = c.B, p.lq = c.Lq, p.lk = c.Lk, p.heads = c.H, p.kv_heads = c.Hkv, p.head_dim = c.D;
  p.scale = 1.f / std::sqrt(float(c.D));
  p.causal = c.causal;

  // The grid of run_simt_attention (simt_attention.cu).
  const dim3 grid((c.Lq + kWarpsPerBlock - 1) / kWarpsPerBlock, c.H, c.B);
  emu::launch(grid, 32 * kWarpsPerBlock, [&] {
    if (c.mrope)
      simt_attention_kernel<E, restore::MropeDistanceBias>(p);
    else
      simt_attention_kernel<E, restore::DistanceBias>(p);
  });
  return max_abs_error(out, reference_attention<E>(p));
}

template <typename E>
int simt_sweep(const char* name, double tol) {
  const std::vector<SimtCase> cases = {
      // B, Lq, Lk, H, Hkv, D, causal, bias, bhld_q, T
      {1, 9, 9, 1, 1, 32, false, false, false, 4},
      {2, 7, 20, 4, 1, 64, true, true, true, 6},    // GQA 4, Lq < Lk, strided q, table clamps
      {1, 13, 5, 2, 2, 40, true, true, false, 50},  // Lq > Lk: early rows see nothing; Dh not a multiple of 32
      {1, 1, 33, 8, 2, 128, true, true, false, 64}, // decode
      {1, 5, 6, 2, 1, 256, false, true, true, 8},   // the largest head dim
      {1, 6, 6, 1, 1, 8, true, true, false, 3},     // Dh below a warp
      {2, 9, 21, 4, 2, 64, true, true, false, 8, 'k', true},  // expanded K, extreme positions
      {1, 7, 12, 2, 1, 40, false, true, true, 8, 'v'},        // expanded V
      {2, 9, 40, 4, 2, 64, true, true, false, 16, 0, false, true},  // M-RoPE (t, h, w), GQA
      {1, 1, 50, 8, 1, 128, true, true, true, 64, 'k', true, true},  // M-RoPE decode, extreme ids
  };
  int bad = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const double err = simt_case<E>(cases[i], 99 + i);
    std::printf("simt %s case %zu: max error %.3e%s\n", name, i, err, err <= tol ? "" : "  <-- exceeds tolerance");
    bad += !(err <= tol);
  }
  return bad;
}

template <typename Element>
int combine_sweep(const char* name, double tol) {
  struct Case {
    int B, Lq, H, D, splits;
  };
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  int bad = 0;
  for (const Case c : {Case{1, 1, 4, 64, 2}, Case{2, 3, 2, 128, 5}, Case{1, 2, 3, 256, 40}, Case{1, 1, 2, 96, 128}}) {
    AttentionParams p{};
    p.batch = c.B, p.lq = c.Lq, p.heads = c.H, p.kv_heads = c.H, p.head_dim = c.D, p.num_splits = c.splits;
    const int64_t rows = int64_t(c.B) * c.Lq * c.H;
    std::vector<float> partial_out(c.splits * rows * c.D), partial_lse(c.splits * rows);
    for (auto& x : partial_out) x = nd(rng);
    for (auto& x : partial_lse) x = 3.f * nd(rng);
    for (int s = 0; s < c.splits; s += 3) partial_lse[s * rows + 0] = -INFINITY;  // splits that saw no key
    for (int s = 0; s < c.splits; ++s) partial_lse[s * rows + rows - 1] = -INFINITY;  // a row that saw none
    std::vector<Element> out(rows * c.D, Element(123.f));
    p.partial_out = partial_out.data(), p.partial_lse = partial_lse.data(), p.out = out.data();
    emu::launch(dim3(unsigned(rows)), kCombineThreads, [&] { combine_splits_kernel<Element>(p, rows); });

    std::vector<double> want(rows * c.D, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      double m = -INFINITY, total = 0;
      for (int s = 0; s < c.splits; ++s) m = std::max(m, double(partial_lse[s * rows + r]));
      if (m == -INFINITY) continue;  // zeros
      for (int s = 0; s < c.splits; ++s) total += std::exp(partial_lse[s * rows + r] - m);
      for (int s = 0; s < c.splits; ++s) {
        const double w = std::exp(partial_lse[s * rows + r] - m) / total;
        for (int d = 0; d < c.D; ++d) want[r * c.D + d] += w * partial_out[(s * rows + r) * c.D + d];
      }
    }
    const double err = max_abs_error(out, want);
    std::printf("combine %s splits %d, Dh %d: max error %.3e%s\n", name, c.splits, c.D, err,
                err <= tol ? "" : "  <-- exceeds tolerance");
    bad += !(err <= tol);
  }
  return bad;
}

// Finite values and -inf pass; exactly the +inf and the NaN assert, wherever they sit (grid-stride over a grid
// smaller than the data).
int log_size_check_cases() {
  int bad = 0;
  for (const int64_t count : {int64_t(1), int64_t(255), int64_t(1000), int64_t(5000)})
    for (const unsigned blocks : {1u, 3u}) {
      std::vector<float> ls(count);
      for (int64_t t = 0; t < count; ++t) ls[t] = t % 5 == 0 ? -INFINITY : 0.25f * float(t % 11) - 1.f;
      auto asserts = [&] {
        emu::device_asserts = 0;
        emu::launch(dim3(blocks), kLogSizeCheckThreads, [&] { log_size_check_kernel(ls.data(), count); });
        return emu::device_asserts.load();
      };
      const int clean = asserts();
      ls[count - 1] = INFINITY;
      ls[count / 3] = NAN;
      const int poisoned = asserts(), want = count / 3 == count - 1 ? 1 : 2;
      const bool ok = clean == 0 && poisoned == want;
      std::printf("log_size check count %ld, %u blocks: %d asserts when clean, %d of %d with +inf/NaN%s\n",
                  long(count), blocks, clean, poisoned, want, ok ? "" : "  <-- wrong");
      bad += !ok;
    }
  return bad;
}

// The device-side table check: clean tables pass; a 1-D table with +inf / NaN, an M-RoPE table with a share
// outside [-1, 1] (or NaN), or one whose row maxima add up to 2 or more asserts. The block reduction of the
// maxima is checked with each row's maximum at a different place (len > the block, so grid-stride too).
int table_check_cases() {
  auto asserts = [](const std::vector<float>& table, int64_t len, int axes) {
    emu::device_asserts = 0;
    emu::launch(dim3(1), kTableCheckThreads, [&] { table_check_kernel(table.data(), len, axes); });
    return emu::device_asserts.load();
  };
  int bad = 0;
  auto expect = [&](const char* what, bool ok) {
    std::printf("table check: %s%s\n", what, ok ? "" : "  <-- wrong");
    bad += !ok;
  };
  for (const int64_t len : {int64_t(1), int64_t(300), int64_t(1000)}) {
    std::vector<float> t1(len);
    for (int64_t d = 0; d < len; ++d) t1[d] = 0.01f * float(d % 97) - 0.3f;
    t1[0] = -INFINITY;  // masks the keys at distance 0
    expect("1-D finite and -inf pass", asserts(t1, len, 1) == 0);
    t1[len - 1] = INFINITY;
    expect("1-D +inf asserts", asserts(t1, len, 1) == 1);
    t1[len - 1] = NAN;
    expect("1-D NaN asserts", asserts(t1, len, 1) == 1);

    std::vector<float> t3(3 * len);
    for (int64_t d = 0; d < 3 * len; ++d) t3[d] = 0.2f * std::cos(0.1f * float(d));
    const int64_t spot[3] = {0, len / 2, len - 1};
    for (int s = 0; s < 3; ++s) t3[s * len + spot[s]] = 0.6f;  // maxima 0.6 * 3 = 1.8 < 2
    expect("M-RoPE decay shares pass", asserts(t3, len, 3) == 0);
    t3[2 * len + spot[2]] = 0.85f;  // 0.6 + 0.6 + 0.85 = 2.05
    expect("M-RoPE maxima adding up to >= 2 assert", asserts(t3, len, 3) == 1);
    t3[2 * len + spot[2]] = 0.6f;
    t3[len + spot[1]] = -1.5f;  // below -1 (the h maximum falls to 0.2: still < 2)
    expect("M-RoPE share below -1 asserts", asserts(t3, len, 3) == 1);
    t3[len + spot[1]] = NAN;
    expect("M-RoPE NaN share asserts", asserts(t3, len, 3) >= 1);
  }
  return bad;
}

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "";
  int bad = 0;
  if (which.empty() || which == "simt")
    bad += simt_sweep<float>("fp32", 1e-5) + simt_sweep<__half>("fp16", 5e-3) + simt_sweep<__nv_bfloat16>("bf16", 3e-2);
  // Outputs are |x| <~ 3: half of an fp16/bf16 ulp there, plus float32 accumulation.
  if (which.empty() || which == "combine") bad += combine_sweep<__half>("fp16", 2e-3) + combine_sweep<__nv_bfloat16>("bf16", 1.6e-2);
  if (which.empty() || which == "log_size_check") bad += log_size_check_cases();
  if (which.empty() || which == "table_check") bad += table_check_cases();
  return bad ? 1 : 0;
}
