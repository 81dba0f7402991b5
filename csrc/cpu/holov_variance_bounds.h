#pragma once
// HoloV's crop statistic V (cpu/holov_crop_math.h) bracketed from a bfloat16 Gram matrix, for the CPU path of
// restore::holov_indices. V enters a crop's score only as 1e3 mean(a) (1 + 0.09 V / (V + 1e-6)), so the score
// moves by about 0.08 (1e-6 / V) of V's relative error: an interval for V of a few percent usually fixes every
// budget, and where it does not the caller computes V exactly. The interval is a proof, not an estimate: it
// holds for any summation order of the float32 accumulation, and contains the float64 reference's V.
#include <cstdint>
#include <vector>

#include "cpu/gram_amx_bf16.h"

namespace restore {
namespace holov {

struct VarianceBounds {
  double lo, hi;
};

struct Bf16Scratch {
  std::vector<uint16_t> hi;           // the crop's rows rounded to bfloat16, unscaled (padded to AMX tiles)
  std::vector<float> hi_float;        // the same as float32, only where no bfloat16 GEMM is available
  std::vector<float> gram;            // hi hi^T accumulated in float32 (upper triangle, padded rows)
  std::vector<float> hi_sum, lo_sum;  // the column sums of the scaled hi and lo (float32)
  AmxScratch amx;
  std::vector<double> inv, hn, ln, hl, t_centre, dots, row_stats;
};

// [lo, hi] containing V of the crop's m >= 2 rows of d values (packed); false if a value is NaN or inf.
bool crop_variance_bounds(const float* x, int64_t m, int64_t d, Bf16Scratch& s, VarianceBounds* out);
bool crop_variance_bounds(const double* x, int64_t m, int64_t d, Bf16Scratch& s, VarianceBounds* out);

}  // namespace holov
}  // namespace restore
