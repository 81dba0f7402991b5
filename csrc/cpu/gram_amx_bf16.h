#pragma once
// hi hi^T for a small block of bfloat16 rows on Intel AMX tiles, exploiting symmetry.
#include <cstdint>
#include <vector>

namespace restore {

// A tile's rows and depth (bfloat16 values); gram_amx_bf16's operand is m padded to kAmxRowBlock rows (2 tiles)
// and its depth padded to kAmxDepth, the padding zero.
constexpr int64_t kAmxRows = 16, kAmxDepth = 32, kAmxRowBlock = 32;

// The CPU has AMX-BF16 (torch's cpuinfo) and the OS grants this process the tile state (arch_prctl); false
// when the environment sets RESTORE_EXT_NO_AMX (read once), which the tests use to run the fallbacks.
bool cpu_has_amx_bf16();

struct AmxScratch {
  std::vector<uint16_t> packed;  // the operand in the tiles' pair-interleaved (VNNI) layout
  std::vector<float> tiles;      // the tile products, where gram's rows are too few for whole tiles
};

// gram (rows `stride` >= m apart), on and above the diagonal, = hi hi^T with float32 accumulation (bfloat16
// products are exact in float32; the order of the additions is the hardware's, and values below 2^-126 flush
// to zero) for hi: rows of bfloat16 bits, ld (a multiple of kAmxDepth) apart, m rounded up to kAmxRowBlock
// rows, zero beyond m rows and beyond the used depth. False (gram untouched) where the CPU or OS has no AMX-BF16.
bool gram_amx_bf16(const uint16_t* hi, int64_t m, int64_t ld, float* gram, int64_t stride,
                   AmxScratch& scratch);

}  // namespace restore
