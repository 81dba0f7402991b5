#pragma once
// The per-row passes of the bfloat16 bound on HoloV's crop statistic (cpu/holov_variance_bounds.cpp), kept
// apart from its algebra: each is one vectorised sweep over a row. A row x is split unscaled, hi = bfloat16(x)
// and lo = x - hi (exact); the bound scales by 1 / (|x| + 1e-6) afterwards, in double.
#include <cstdint>

namespace restore {
namespace holov {

// hi[0, d) = bfloat16(x) (as bits), hi[d, ld) = 0; sums = {sum hi^2, sum lo^2, sum hi lo}, float32 lane sums
// for float rows (double for double rows). False if a value is NaN or inf. `next` (or null) is prefetched.
bool split_row(const float* x, int64_t d, int64_t ld, uint16_t* hi, double* sums, const float* next);
bool split_row(const double* x, int64_t d, int64_t ld, uint16_t* hi, double* sums, const double* next);

// hi_sum += scale * hi, lo_sum += scale * lo (float32), for the row split_row made hi from.
void add_to_column_sums(const float* x, const uint16_t* hi, int64_t d, float scale, float* hi_sum, float* lo_sum);
void add_to_column_sums(const double* x, const uint16_t* hi, int64_t d, float scale, float* hi_sum,
                        float* lo_sum);

// dots = {hi . lo_sum, lo . hi_sum} for the row split_row made hi from (float32 lanes; double for double rows).
void row_dots(const float* x, const uint16_t* hi, int64_t d, const float* hi_sum, const float* lo_sum,
              double* dots);
void row_dots(const double* x, const uint16_t* hi, int64_t d, const float* hi_sum, const float* lo_sum,
              double* dots);

// For the symmetric matrix g_ij = inv_i inv_j raw_ij (off the diagonal; 0 on it), raw's upper triangle read
// with rows `stride` apart: per row i the sums over j of g_ij^2, g_ij, |g_ij|, |g_ij| hn_j, |g_ij| ln_j, added
// into sq, sum, abs, abs_hn, abs_ln (m each, zeroed by the caller).
struct PairSums {
  double *sq, *sum, *abs, *abs_hn, *abs_ln;
};
void pair_sums(const float* raw, int64_t m, int64_t stride, const double* inv, const double* hn, const double* ln,
               PairSums out);

}  // namespace holov
}  // namespace restore
