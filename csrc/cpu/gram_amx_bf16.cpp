// MKL's bfloat16 GEMM spends most of a crop's Gram matrix (m = 36-180, d = 1024-4096) packing both operands
// and computing both triangles. Here only one operand is repacked (16 x 16 transposes of bfloat16 pairs), the
// other is read in place, and only blocks on or above the diagonal are multiplied.
// GCC 12's AVX-512 headers give the unpack / shuffle intrinsics an "undefined" pass-through operand that
// -Wmaybe-uninitialized reports wherever they are inlined; the diagnostic must be off before the header is read.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "cpu/gram_amx_bf16.h"

#include <ATen/cpu/Utils.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace restore {
namespace {

constexpr long kArchReqXcompPerm = 0x1023;  // arch_prctl: request an extended state component
constexpr long kXfeatureXtiledata = 18;     // the AMX tile data
constexpr int kTileBytes = 64;              // one tile row: 16 float32 or 16 bfloat16 pairs

// The 64-byte operand of ldtilecfg (palette 1).
struct TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// 16 rows of 16 dwords transposed in registers: out[k] holds dword k of every row.
__attribute__((target("avx512f"), always_inline)) inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
  }
}

// packed tile (J, s), row p, pair n = the pair (2p, 2p + 1) of depth block s of row 16 J + n: the B operand of
// a tile product whose A operand is rows of hi.
__attribute__((target("avx512f"))) void pack_pairs(const uint16_t* hi, int64_t rows, int64_t ld,
                                                   uint16_t* packed) {
  const int64_t blocks = ld / kAmxDepth;
  for (int64_t J = 0; J < rows / kAmxRows; ++J)
    for (int64_t s = 0; s < blocks; ++s) {
      __m512i r[16];
      for (int n = 0; n < 16; ++n) r[n] = _mm512_loadu_si512(hi + (J * kAmxRows + n) * ld + s * kAmxDepth);
      transpose16(r);
      uint16_t* tile = packed + (J * blocks + s) * kAmxRows * kAmxDepth;
      for (int p = 0; p < 16; ++p) _mm512_storeu_si512(tile + p * kAmxDepth, r[p]);
    }
}

// tiles (rows x rows, `stride` apart) on and above the diagonal's 32 x 32 blocks = hi hi^T. 2 x 2 tiles per
// pass over the depth (4 accumulators, 2 A, 2 B: all 8 tile registers): a tile load costs more than a product
// (measured here: 4 products 21 ns, with 2 tile loads 35-43 ns), and this shape needs one load per product.
__attribute__((target("amx-tile,amx-bf16"))) void tile_products(const uint16_t* hi, int64_t rows, int64_t ld,
                                                                 const uint16_t* packed, float* tiles, int64_t stride) {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.rows[t] = 16;
    cfg.colsb[t] = kTileBytes;
  }
  _tile_loadconfig(&cfg);
  const int64_t count = rows / kAmxRows, blocks = ld / kAmxDepth, tile = kAmxRows * kAmxDepth;
  const int64_t a_stride = ld * 2, c_stride = stride * 4;
  for (int64_t I = 0; I < count; I += 2)
    for (int64_t J = I; J < count; J += 2) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      const uint16_t* a = hi + I * kAmxRows * ld;
      const uint16_t* b = packed + J * blocks * tile;
      for (int64_t s = 0; s < blocks; ++s) {
        _tile_loadd(4, a + s * kAmxDepth, a_stride);
        _tile_loadd(6, b + s * tile, kTileBytes);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, b + (blocks + s) * tile, kTileBytes);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a + kAmxRows * ld + s * kAmxDepth, a_stride);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      float* c = tiles + I * kAmxRows * stride + J * kAmxRows;
      _tile_stored(0, c, c_stride);
      _tile_stored(1, c + kAmxRows, c_stride);
      _tile_stored(2, c + kAmxRows * stride, c_stride);
      _tile_stored(3, c + kAmxRows * stride + kAmxRows, c_stride);
    }
  _tile_release();
}

}  // namespace

bool cpu_has_amx_bf16() {
  static const bool has = [] {
    if (std::getenv("RESTORE_EXT_NO_AMX") != nullptr) return false;  // to test the fallbacks
    const auto caps = at::cpu::get_cpu_capabilities();
    const auto it = caps.find("amx_bf16");
    if (it == caps.end() || !it->second.isBool() || !it->second.toBool()) return false;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return has;
}

bool gram_amx_bf16(const uint16_t* hi, int64_t m, int64_t ld, float* gram, int64_t stride, AmxScratch& scratch) {
  if (!cpu_has_amx_bf16() || m <= 0 || ld % kAmxDepth != 0) return false;
  const int64_t rows = (m + kAmxRowBlock - 1) / kAmxRowBlock * kAmxRowBlock;
  scratch.packed.resize(size_t(rows * ld));
  pack_pairs(hi, rows, ld, scratch.packed.data());
  if (stride >= rows) {  // the tiles straight into gram
    tile_products(hi, rows, ld, scratch.packed.data(), gram, stride);
    return true;
  }
  scratch.tiles.resize(size_t(rows * rows));
  tile_products(hi, rows, ld, scratch.packed.data(), scratch.tiles.data(), rows);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = i; j < m; ++j) gram[i * stride + j] = scratch.tiles[i * rows + j];
  return true;
}

}  // namespace restore
