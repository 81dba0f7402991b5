// Runs the reduction kernels' device code on the CPU (emulated_cuda.h: one std::thread per CUDA thread):
// the radix-select top-k of csrc/cuda/block_topk.cuh (topk_indices, anchor_merge's anchors), the fused
// tiled similarity + row reduction of csrc/cuda/similarity_tiles.cuh (anchor_merge's nearest-better and
// token -> anchor passes, DivPrune's first pick) and DivPrune's cooperative greedy kernel
// (csrc/cuda/divprune_greedy.cuh, every block at once, grid.sync() as a barrier), against plain host loops.
// It checks indexing, tile edges, barriers between phases, warp-shuffle combines and the cross-block
// proposal exchange; it cannot see timing, races that the barriers hide, or compiler issues.
// The whole anchor_merge pipeline (csrc/cuda/anchor_merge_kernels.cuh, launched as anchor_merge_cuda.cu
// does, its ATen steps done on the host) is checked against docs/ops.md §2 in float64.
// Usage: emulate_reduction_kernels [topk|similarity|divprune|anchor_merge]; exit status 1 if any case is off.
#define __shared__ static  // one object per kernel instantiation: what the threads of a block share
#include "emulated_cuda.h"

#include "cuda/anchor_merge_kernels.cuh"
#include "cuda/block_topk.cuh"
#include "cuda/divprune_greedy.cuh"
#include "cuda/similarity_tiles.cuh"
#include "restore/topk_order.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <string>

using namespace restore;

constexpr int kTopkThreads = 512;  // topk_indices_cuda.cu and anchor_merge_cuda.cu launch 512

// The body of topk_indices_kernel: one block per batch row.
void topk_kernel(const float* scores, int64_t n, int64_t k, int64_t* out) {
  const float* row = scores + int64_t(blockIdx.x) * n;
  block_topk_ascending<kTopkThreads>([&](int64_t i) { return score_key(row[i]); }, n, k, out + int64_t(blockIdx.x) * k);
}

std::vector<int64_t> topk_expected(const float* row, int64_t n, int64_t k) {
  std::vector<int64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
    return ranks_before(score_key(row[a]), a, score_key(row[b]), b);
  });
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

int topk_cases() {
  std::mt19937 rng(7);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  int bad = 0;
  for (int64_t n : {1, 7, 513, 4099})  // one block: 512 threads
    for (const char* dist : {"normal", "ties", "special"})
      for (int64_t k : {int64_t(1), std::max<int64_t>(1, n / 3), n}) {
        const int64_t batch = 2;
        std::vector<float> s(batch * n);
        for (auto& v : s) {
          const std::string d = dist;
          if (d == "normal") v = std::normal_distribution<float>()(rng);
          if (d == "ties") v = float(rng() % 4);  // a quarter of the row shares each value
          if (d == "special") {
            const float pool[] = {nan, -inf, inf, 0.f, -0.f, 1.f, -1.f, nan};
            v = pool[rng() % 8];
          }
        }
        std::vector<int64_t> out(batch * k + 8, -1);  // 8 guard entries: no write past the last row
        emu::launch(dim3(unsigned(batch)), kTopkThreads, [&] { topk_kernel(s.data(), n, k, out.data()); });
        if (std::any_of(out.end() - 8, out.end(), [](int64_t v) { return v != -1; })) {
          std::printf("topk n=%ld k=%ld %s: wrote past the output\n", long(n), long(k), dist);
          ++bad;
        }
        for (int64_t b = 0; b < batch; ++b) {
          const auto want = topk_expected(s.data() + b * n, n, k);
          if (!std::equal(want.begin(), want.end(), out.begin() + b * k)) {
            std::printf("topk n=%ld k=%ld %s row %ld: mismatch\n", long(n), long(k), dist, long(b));
            ++bad;
          }
        }
      }
  std::printf("topk: %s\n", bad ? "FAILED" : "all cases match");
  return bad;
}

// anchor_merge_cuda.cu's token -> anchor epilogue over all columns (DivPrune's NearestOtherEpilogue is
// used as it is).
struct ArgmaxEpilogue {
  using State = ArgmaxState;
  int64_t* out;
  int64_t m;
  State init() const { return {-INFINITY, 0}; }
  void update(State& s, int64_t, int64_t, int64_t j, float sim) const { s = argmax_combine(s, State{sim, j}); }
  static State combine(State x, State y) { return argmax_combine(x, y); }
  static State shfl_xor(State s, int mask) { return argmax_shfl_xor(s, mask); }
  void finish(int64_t b, int64_t i, State s) const { out[b * m + i] = s.index; }
};

int similarity_cases() {
  std::mt19937 rng(11);
  int bad = 0;
  struct Shape {
    int64_t batch, m, ncol, d;
    bool same;  // rows and columns are the same tokens (nearest-other), as in DivPrune and anchor_merge
  };
  for (const Shape sh : {Shape{2, 45, 70, 37, false}, Shape{1, 32, 32, 32, true}, Shape{1, 1, 1, 5, true},
                         Shape{2, 100, 3, 64, false}, Shape{1, 97, 97, 70, true}, Shape{3, 33, 65, 1, false}}) {
    std::vector<float> rows(sh.batch * sh.m * sh.d), cols(sh.batch * sh.ncol * sh.d);
    for (auto& v : rows) v = std::normal_distribution<float>()(rng);
    for (auto& v : cols) v = std::normal_distribution<float>()(rng);
    const float* c = sh.same ? rows.data() : cols.data();
    const int64_t ncol = sh.same ? sh.m : sh.ncol;
    std::vector<float> max_other(sh.batch * sh.m, 123.f);
    std::vector<int64_t> argmax(sh.batch * sh.m, -1);
    const dim3 grid = similarity_grid(sh.batch, sh.m);
    emu::launch(grid, kSimThreads, [&] {
      row_reduce_similarity_kernel(rows.data(), sh.m, c, ncol, sh.d, divprune::NearestOtherEpilogue{sh.m, max_other.data()});
    });
    emu::launch(grid, kSimThreads, [&] {
      row_reduce_similarity_kernel(rows.data(), sh.m, c, ncol, sh.d, ArgmaxEpilogue{argmax.data(), sh.m});
    });
    int shape_bad = 0;
    for (int64_t b = 0; b < sh.batch; ++b)
      for (int64_t i = 0; i < sh.m; ++i) {
        std::vector<double> sim(ncol);
        for (int64_t j = 0; j < ncol; ++j) {
          double acc = 0;
          for (int64_t f = 0; f < sh.d; ++f) acc += double(rows[(b * sh.m + i) * sh.d + f]) * c[(b * ncol + j) * sh.d + f];
          sim[j] = acc;
        }
        double want_max = -INFINITY;
        for (int64_t j = 0; j < ncol; ++j)
          if (j != i) want_max = std::max(want_max, sim[j]);
        const double got_max = max_other[b * sh.m + i];
        const bool max_ok = std::isinf(want_max) ? got_max == want_max
                                                 : std::abs(got_max - want_max) <= 1e-4 * (1 + std::abs(want_max));
        // Random Gaussian data: the best column wins by far more than float32 rounding.
        const int64_t want_arg = std::max_element(sim.begin(), sim.end()) - sim.begin();
        if (!max_ok || argmax[b * sh.m + i] != want_arg) ++shape_bad;
      }
    if (shape_bad)
      std::printf("similarity B=%ld M=%ld C=%ld D=%ld: %d rows off\n", long(sh.batch), long(sh.m), long(ncol),
                  long(sh.d), shape_bad);
    bad += shape_bad;
  }
  std::printf("similarity: %s\n", bad ? "FAILED" : "all cases match");
  return bad;
}

// Host DivPrune in float64: the pick order (farthest first, ties to the lower index).
std::vector<int64_t> divprune_expected(const float* xn, int64_t n, int64_t d, int64_t k) {
  auto sim = [&](int64_t i, int64_t j) {
    double acc = 0;
    for (int64_t f = 0; f < d; ++f) acc += double(xn[i * d + f]) * xn[j * d + f];
    return acc;
  };
  std::vector<double> near(n, -INFINITY);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j)
      if (j != i) near[i] = std::max(near[i], sim(i, j));
  std::vector<int64_t> order{std::min_element(near.begin(), near.end()) - near.begin()};
  std::vector<bool> taken(n, false);
  std::fill(near.begin(), near.end(), -INFINITY);
  while (int64_t(order.size()) < k) {
    const int64_t c = order.back();
    taken[c] = true;
    int64_t best = -1;
    for (int64_t i = 0; i < n; ++i) {
      if (taken[i]) continue;
      near[i] = std::max(near[i], sim(i, c));
      if (best < 0 || near[i] < near[best]) best = i;
    }
    order.push_back(best);
  }
  return order;
}

// The two launches of divprune_indices_cuda for given blocks_per_row and storage (shared or global).
int divprune_cases() {
  std::mt19937 rng(5);
  int bad = 0;
  struct Case {
    int64_t batch, n, d, k;
    int blocks_per_row;
    bool on_chip;
    // > 0: small-integer features (every dot product exact in float32 and float64 alike) and token t
    // repeats token t % distinct, so most picks are decided by exact ties
    int64_t distinct;
  };
  for (const Case c : {Case{2, 150, 16, 12, 1, true, 0}, Case{2, 150, 16, 12, 3, true, 0},
                       Case{1, 150, 40, 20, 3, false, 0}, Case{1, 5, 3, 4, 2, true, 0}, Case{1, 1100, 8, 6, 2, true, 0},
                       Case{1, 40, 6, 12, 2, true, 4}, Case{2, 40, 6, 12, 2, false, 4}}) {
    std::vector<float> xn(c.batch * c.n * c.d);
    for (auto& v : xn) v = c.distinct ? float(int(rng() % 5) - 2) : std::normal_distribution<float>()(rng);
    for (int64_t t = 0; t < c.batch * c.n; ++t) {
      if (c.distinct > 0) {
        if (t % c.n >= c.distinct) std::copy_n(&xn[(t - t % c.n + t % c.distinct) * c.d], c.d, &xn[t * c.d]);
        continue;  // the kernels take any rows; unnormalised integers keep every similarity exact
      }
      if (t % 7 == 3) std::copy_n(&xn[(t - 1) * c.d], c.d, &xn[t * c.d]);  // duplicates: exact ties
      double norm = 0;
      for (int64_t f = 0; f < c.d; ++f) norm += double(xn[t * c.d + f]) * xn[t * c.d + f];
      for (int64_t f = 0; f < c.d; ++f) xn[t * c.d + f] = float(xn[t * c.d + f] / std::sqrt(norm));
    }
    std::vector<float> near_first(c.batch * c.n);
    emu::launch(similarity_grid(c.batch, c.n), kSimThreads, [&] {
      row_reduce_similarity_kernel(xn.data(), c.n, xn.data(), c.n, c.d,
                                   divprune::NearestOtherEpilogue{c.n, near_first.data()});
    });
    const int64_t chunk = (c.n + c.blocks_per_row - 1) / c.blocks_per_row;
    const int blocks = c.blocks_per_row * int(c.batch);
    std::vector<float> near_global(c.on_chip ? 0 : c.batch * c.n), cand_near(2 * blocks, 777.f);
    std::vector<int64_t> cand_index(2 * blocks, 777), order(c.batch * c.k, -1);
    divprune::GreedyArgs args{xn.data(), near_first.data(), near_global.data(), cand_near.data(), cand_index.data(),
                              order.data(), c.batch, c.n, c.d, c.k, chunk, c.blocks_per_row, c.on_chip};
    std::vector<std::vector<float>> smem(blocks, std::vector<float>(chunk, NAN));
    std::vector<std::vector<divprune::Candidate>> scratch(blocks,
                                                          std::vector<divprune::Candidate>(divprune::kGreedyThreads / 32));
    emu::launch(dim3(unsigned(c.blocks_per_row), unsigned(c.batch)), divprune::kGreedyThreads, [&] {
      const int id = blockIdx.y * c.blocks_per_row + blockIdx.x;
      divprune::divprune_greedy_block(args, smem[id].data(), scratch[id].data());
    }, /*cooperative=*/true);
    for (int64_t b = 0; b < c.batch; ++b) {
      const auto want = divprune_expected(xn.data() + b * c.n * c.d, c.n, c.d, c.k);
      if (!std::equal(want.begin(), want.end(), order.begin() + b * c.k)) {
        std::printf("divprune n=%ld k=%ld blocks_per_row=%d on_chip=%d row %ld: pick order differs\n", long(c.n),
                    long(c.k), c.blocks_per_row, int(c.on_chip), long(b));
        for (int64_t t = 0; t < c.k; ++t) std::printf("  step %ld: want %ld got %ld\n", long(t), long(want[t]), long(order[b * c.k + t]));
        ++bad;
      }
    }
  }
  std::printf("divprune: %s\n", bad ? "FAILED" : "all cases match");
  return bad;
}

struct AnchorMergeOut {
  std::vector<int64_t> anchors, assign, size;
  std::vector<double> merged;
};

// docs/ops.md §2 in float64, with density, nearest and score rounded to float32 before any decision (as
// restore_ext.reference does).
AnchorMergeOut anchor_merge_expected(const float* x, int64_t n, int64_t d, int64_t k, AnchorRule rule) {
  std::vector<double> xn(n * d);
  for (int64_t i = 0; i < n; ++i) {
    double sq = 0;
    for (int64_t f = 0; f < d; ++f) sq += double(x[i * d + f]) * x[i * d + f];
    for (int64_t f = 0; f < d; ++f) xn[i * d + f] = x[i * d + f] / std::max(std::sqrt(sq), 1e-12);
  }
  auto sim = [&](int64_t i, int64_t j) {
    double acc = 0;
    for (int64_t f = 0; f < d; ++f) acc += xn[i * d + f] * xn[j * d + f];
    return acc;
  };
  std::vector<float> density(n), score(n);
  for (int64_t i = 0; i < n; ++i) {
    double acc = 0;
    for (int64_t j = 0; j < n; ++j) acc += sim(i, j);
    density[i] = float(acc);
  }
  for (int64_t i = 0; i < n; ++i) {
    double nearest = -INFINITY;
    for (int64_t j = 0; j < n; ++j)
      if (is_better(rule, density[i], density[j])) nearest = std::max(nearest, sim(i, j));
    const float near32 = std::isinf(nearest) ? 0.f : float(nearest);
    score[i] = float(distinctive_score(double(density[i]), double(near32)));
  }
  AnchorMergeOut out;
  out.anchors = topk_expected(score.data(), n, k);
  out.assign.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    int64_t best = 0;
    double best_sim = -INFINITY;
    for (int64_t s = 0; s < k; ++s)
      if (sim(i, out.anchors[s]) > best_sim) best_sim = sim(i, out.anchors[s]), best = s;
    out.assign[i] = best;
  }
  for (int64_t s = 0; s < k; ++s) out.assign[out.anchors[s]] = s;
  out.size.assign(k, 0);
  out.merged.assign(k * d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    ++out.size[out.assign[i]];
    for (int64_t f = 0; f < d; ++f) out.merged[out.assign[i] * d + f] += x[i * d + f];
  }
  for (int64_t s = 0; s < k; ++s)
    for (int64_t f = 0; f < d; ++f) out.merged[s * d + f] /= double(out.size[s]);
  return out;
}

// anchor_merge_cuda's launches in its order; the ATen steps between them (gather, scatter, stable sort,
// cumsum) on the host.
AnchorMergeOut anchor_merge_emulated(const std::vector<float>& xf, int64_t batch, int64_t n, int64_t d, int64_t k,
                                     AnchorRule rule) {
  using namespace anchor_kernels;
  std::vector<double> inv_norm(batch * n), colsum(batch * d);
  std::vector<float> xn(batch * n * d), density(batch * n), nearest(batch * n);
  const unsigned token_blocks = unsigned((batch * n + kDensityThreads / kWarp - 1) / (kDensityThreads / kWarp));
  emu::launch(dim3(token_blocks), kDensityThreads,
              [&] { normalise_kernel(xf.data(), batch * n, d, inv_norm.data(), xn.data()); });
  emu::launch(dim3(unsigned((d + kDensityThreads - 1) / kDensityThreads), unsigned(batch)), kDensityThreads,
              [&] { colsum_kernel(xf.data(), inv_norm.data(), n, d, colsum.data()); });
  emu::launch(dim3(token_blocks), kDensityThreads, [&] {
    density_kernel(xf.data(), inv_norm.data(), colsum.data(), batch, n, d, density.data());
  });
  emu::launch(similarity_grid(batch, n), kSimThreads, [&] {
    row_reduce_similarity_kernel(xn.data(), n, xn.data(), n, d,
                                 NearestBetterEpilogue{density.data(), n, rule, nearest.data()});
  });
  AnchorMergeOut out;
  out.anchors.assign(batch * k, -1);
  emu::launch(dim3(unsigned(batch)), anchor_kernels::kTopkThreads,
              [&] { anchor_topk_kernel(density.data(), nearest.data(), n, k, out.anchors.data()); });
  std::vector<float> anchor_xn(batch * k * d);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < k; ++s)
      std::copy_n(&xn[(b * n + out.anchors[b * k + s]) * d], d, &anchor_xn[(b * k + s) * d]);
  out.assign.assign(batch * n, -1);
  emu::launch(similarity_grid(batch, n), kSimThreads, [&] {
    row_reduce_similarity_kernel(xn.data(), n, anchor_xn.data(), k, d, AssignEpilogue{n, out.assign.data()});
  });
  out.size.assign(batch * k, 0);
  std::vector<int64_t> members(batch * n), start(batch * k);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t s = 0; s < k; ++s) out.assign[b * n + out.anchors[b * k + s]] = s;
    for (int64_t i = 0; i < n; ++i) ++out.size[b * k + out.assign[b * n + i]];
    std::iota(&members[b * n], &members[b * n] + n, 0);
    std::stable_sort(&members[b * n], &members[b * n] + n,
                     [&](int64_t i, int64_t j) { return out.assign[b * n + i] < out.assign[b * n + j]; });
    for (int64_t s = 1; s < k; ++s) start[b * k + s] = start[b * k + s - 1] + out.size[b * k + s - 1];
  }
  std::vector<float> merged(batch * k * d, NAN);
  emu::launch(dim3(unsigned(k), unsigned(batch), unsigned((d + kMeanThreads - 1) / kMeanThreads)), kMeanThreads, [&] {
    segmented_mean_kernel<float>(xf.data(), members.data(), start.data(), out.size.data(), n, k, d, merged.data());
  });
  out.merged.assign(merged.begin(), merged.end());
  return out;
}

int anchor_merge_cases() {
  std::mt19937 rng(13);
  int bad = 0;
  struct Case {
    int64_t batch, n, d, k;
    AnchorRule rule;
    bool axis_aligned;  // every similarity exactly 0 or 1: decisions are exact ties broken by index
    int64_t poison = -1;  // a token given a NaN feature: every density is NaN, its similarities are NaN
    float magnitude = 1.f;  // features scaled by it: 7e37 puts them near the float32 limit, where a float32
                            // cluster sum overflows
  };
  for (const Case c : {Case{2, 70, 20, 6, AnchorRule::Reference, false}, Case{1, 70, 20, 6, AnchorRule::Dpc, false},
                       Case{2, 90, 8, 5, AnchorRule::Reference, true}, Case{1, 90, 8, 45, AnchorRule::Dpc, true},
                       Case{1, 130, 70, 17, AnchorRule::Reference, false}, Case{1, 1, 3, 1, AnchorRule::Reference, false},
                       Case{1, 40, 5, 40, AnchorRule::Reference, false}, Case{2, 30, 6, 4, AnchorRule::Reference, false, 0},
                       Case{1, 30, 6, 4, AnchorRule::Reference, false, 2}, Case{1, 30, 6, 4, AnchorRule::Reference, false, 9},
                       Case{2, 70, 20, 3, AnchorRule::Reference, false, -1, 7e37f}}) {
    std::vector<float> x(c.batch * c.n * c.d);
    if (c.axis_aligned) {
      std::fill(x.begin(), x.end(), 0.f);
      for (int64_t t = 0; t < c.batch * c.n; ++t)
        if (t % 7 != 0) x[t * c.d + rng() % 5] = float(1 + rng() % 3);  // every 7th token stays a zero vector
    } else {
      std::vector<float> centre(6 * c.d);  // clustered tokens
      for (auto& v : centre) v = std::normal_distribution<float>()(rng);
      for (int64_t t = 0; t < c.batch * c.n; ++t)
        for (int64_t f = 0; f < c.d; ++f)
          x[t * c.d + f] = centre[(rng() % 6) * c.d + f] + 0.3f * std::normal_distribution<float>()(rng);
    }
    for (auto& v : x) v *= c.magnitude;
    if (c.poison >= 0) x[c.poison * c.d + 1] = NAN;
    const AnchorMergeOut got = anchor_merge_emulated(x, c.batch, c.n, c.d, c.k, c.rule);
    for (int64_t b = 0; b < c.batch; ++b) {
      const AnchorMergeOut want = anchor_merge_expected(&x[b * c.n * c.d], c.n, c.d, c.k, c.rule);
      bool ok = std::equal(want.anchors.begin(), want.anchors.end(), got.anchors.begin() + b * c.k) &&
                std::equal(want.assign.begin(), want.assign.end(), got.assign.begin() + b * c.n) &&
                std::equal(want.size.begin(), want.size.end(), got.size.begin() + b * c.k);
      for (int64_t e = 0; ok && e < c.k * c.d; ++e)
        ok = std::isnan(want.merged[e]) ? std::isnan(got.merged[b * c.k * c.d + e])
                                        : std::abs(got.merged[b * c.k * c.d + e] - want.merged[e]) <= 1e-5 * (1 + std::abs(want.merged[e]));
      if (!ok) {
        std::printf("anchor_merge n=%ld d=%ld k=%ld rule=%d axis_aligned=%d poison=%ld row %ld: mismatch\n", long(c.n),
                    long(c.d), long(c.k), int(c.rule), int(c.axis_aligned), long(c.poison), long(b));
        ++bad;
      }
    }
  }
  std::printf("anchor_merge: %s\n", bad ? "FAILED" : "all cases match");
  return bad;
}

int main(int argc, char** argv) {
  const std::string which = argc > 1 ? argv[1] : "";
  int bad = 0;
  if (which.empty() || which == "topk") bad += topk_cases();
  if (which.empty() || which == "similarity") bad += similarity_cases();
  if (which.empty() || which == "divprune") bad += divprune_cases();
  if (which.empty() || which == "anchor_merge") bad += anchor_merge_cases();
  return bad ? 1 : 0;
}
