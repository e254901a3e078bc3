// The fully connected compute ops of ai.onnxcomp (kernels/schema.py; semantics kernels/reference.py):
//   SparseGemm(A, values, indices, bias), CodebookGemm(A, codebook, codes, bias),
//   SparseCodebookGemm(A, codebook, codes, indices, bias), and their ...Relu variants:  Y = A @ W + bias.
// A is float32 [..., K] (every leading dim is a row), W is [K, N] (attribute shape), Y is [..., N].
//
// The weight-side inputs are constant initializers in practice: the kernel reads them once, when the session
// creates it (GetTensorConstantInput), checks them and re-arranges them (below); when one of them is not constant
// the same packing runs in every Compute (correct, slower). A malformed weight fails session creation (or that
// Run, when not constant) with an onnxruntime error naming the node.
//
// Layouts (chosen by measuring, see the end of this comment):
// * Sparse weights (SparseGemm, SparseCodebookGemm): "sorted ELL-8". Output columns are sorted by their number of
//   nonzeros (descending) and dealt out in groups of 8; a group stores, step after step, one nonzero of each of
//   its 8 columns. Value: float32, or a 4-bit code when the codebook has <= 16 entries (17..256 entries are
//   decoded to float32 at load). Row: with float32 values a uint8 delta from the lane's previous row (gaps past
//   255 bridged by zero-valued entries; used when they add < 2% entries), else uint16 (K < 65536) or uint32.
//   Short columns are padded with value 0 (delta 0, or row K: the kernel appends a zero to x) -- little padding,
//   as neighbours in the sorted order have almost the same count. Bytes per nonzero: 5 (float32), 2.5 (4-bit).
//   1..3 rows: per row, one 8-wide gather of x per step and one FMA into the group's 8 column sums (no horizontal
//   sums); the gather is the limit (~2 elements a cycle), so the 4-bit codes are looked up in registers for free.
//   4+ rows: A is transposed into [K + 1, T] tiles (T <= 32 rows, 64-byte aligned) and each nonzero broadcasts
//   its value against T rows of A (T/8 or T/16 FMAs). AVX-512 walks a group's 8 columns step by step together
//   (their rows move through A at the same pace, so they hit L1); AVX2 walks one column at a time.
// * Dense codes (CodebookGemm): blocks of 32 output columns, each block's K rows of codes contiguous (16 bytes a
//   row for codebooks of <= 16 entries: the row's 32 codes as packed nibbles, low nibble first; 32 bytes of
//   uint8 codes otherwise). The inner loop broadcasts 8 (AVX2: 4) bytes of codes, shifts each lane's nibble into
//   place and looks it up in a codebook held in registers (AVX-512: one vpermps on the 16-entry table per 16
//   columns; AVX2: two 8-entry vpermps and a blend per 8), then one FMA; up to 8 (AVX2: 4) rows of A share each
//   decoded row of W. Codebooks of 17..256 entries: a gather from the table in L1.
// * The batch-1 loops prefetch the weight stream a few KB ahead: once a layer's weights have left the cache a
//   plain sequential stream reached less than half the memory bandwidth the prefetched one gets.
// Threads: onnxruntime's intra-op pool (cpu.h parallel_for), split over column groups/blocks (and row tiles);
// every output is computed by one task in a fixed order, so results do not depend on the thread count.
// ISA: AVX-512F, AVX2+FMA or portable scalar, picked when the kernel is created (cpu.h; ONNXCOMP_NATIVE_ISA caps
// it); non-x86 builds compile the scalar kernels only.
// Measured (2 shared cores, batch 1, 1 thread, the kernel alone): 1024x1024 at 90% sparsity ~20 us (0.5 cycle
// per nonzero), 4-bit codebook ~39 us (1.5 cycles per 16 multiply-adds), both ~21 us; 4096x4096 0.38 / 0.65 /
// 0.35 ms; onnxruntime's dense MatMul takes 0.14-0.19 / 5.3 ms. In onnxruntime a run adds ~6 us (~19 us when it
// follows a large dense layer that evicted the caches) to either.
#if !defined(OC_X86) && (defined(__x86_64__) || defined(__i386__))
#define OC_X86 1
// GCC 12 warns about the _mm512_undefined_* temporaries inside its own AVX-512 intrinsics (a false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#elif !defined(OC_X86)
#define OC_X86 0  // other CPUs: the portable scalar kernels only
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "cpu.h"
#include "registry.h"

namespace onnxcomp {
namespace {

#define OC_AVX2 __attribute__((target("avx2,fma")))
#define OC_AVX512 __attribute__((target("avx512f,avx2,fma")))

enum class Isa { kScalar, kAvx2, kAvx512 };
enum class Kind { kSparse, kCodebook, kSparseCodebook };

Isa pick_isa() {
  if (!OC_X86) return Isa::kScalar;
  if (cpu_has_avx512f()) return Isa::kAvx512;
  if (cpu_has_avx2_fma()) return Isa::kAvx2;
  return Isa::kScalar;
}

constexpr int kLanes = 8;       // columns per ELL group
// Software prefetch distances for the weight streams (batch 1 reads every byte once: from DRAM a plain sequential
// stream reaches ~40% of what these prefetches get; measured on 1024x1024 layers that do not stay in cache)
constexpr size_t kPrefetchSteps = 128;   // ELL steps ahead (2 KB of uint16 rows, 4 KB of float values)
constexpr size_t kPrefetchBytes = 4096;  // bytes of codes ahead

#if OC_X86
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }
#endif
constexpr int kBlockCols = 32;  // columns per codebook block

// A 64-byte aligned float buffer (vector loads of A tiles must not straddle cache lines)
class Floats {
 public:
  explicit Floats(size_t n) : raw_((n + 16) * sizeof(float)) {
    const uintptr_t p = reinterpret_cast<uintptr_t>(raw_.data());
    data_ = reinterpret_cast<float*>((p + 63) & ~uintptr_t{63});
  }
  float* data() { return data_; }

 private:
  std::vector<unsigned char> raw_;
  float* data_;
};

// ----------------------------------------------------------------------------------------------------------------
// Tensor views
struct View {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  size_t count = 0;
  const void* data = nullptr;
};

View view_of(const Ort::ConstValue& v) {
  View out;
  auto info = v.GetTensorTypeAndShapeInfo();
  out.type = info.GetElementType();
  out.shape = info.GetShape();
  out.count = info.GetElementCount();
  out.data = out.count ? v.GetTensorRawData() : nullptr;
  return out;
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
  return r + "]";
}

// code i of a uint8 or uint4 (two per byte, low nibble first) tensor
inline unsigned code_at(const View& codes, size_t i) {
  const uint8_t* p = static_cast<const uint8_t*>(codes.data);
  if (codes.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT4) return (p[i >> 1] >> ((i & 1) * 4)) & 15u;
  return p[i];
}

// ----------------------------------------------------------------------------------------------------------------
// Packed weights
// Row indices of the sparse layout: kDelta8 when the values are float32 and few gaps exceed 255 rows (a gap of
// more is bridged by zero-valued entries of delta 255; padding is delta 0, value 0), else absolute uint16/uint32.
constexpr int kDelta8 = 0, kAbs16 = 1, kAbs32 = 2;
struct Packed {
  Kind kind = Kind::kSparse;
  int64_t K = 0, N = 0;
  std::vector<float> bias;
  // codebook (padded with zeros to 16 or 256 entries)
  int k = 0;
  bool nib = false;  // codes held as 4-bit (codebook <= 16 entries)
  std::vector<float> cb;

  // sparse: sorted ELL-8
  size_t nnz = 0;
  size_t ngroups = 0;
  int rows = 1;                    // kDelta8, kAbs16 or kAbs32: how row indices are stored
  std::vector<uint32_t> gofs;      // ngroups + 1: first step of each group (cumulative)
  std::vector<int32_t> lane_col;   // ngroups * 8: output column of each lane, -1 past N
  std::vector<uint32_t> lane_cnt;  // ngroups * 8: nonzeros of each lane's column
  std::vector<uint8_t> rows8;      // steps * 8: kDelta8, the row minus the lane's previous row
  std::vector<uint16_t> rows16;    // steps * 8: kAbs16
  std::vector<uint32_t> rows32;    // steps * 8: kAbs32
  std::vector<float> vals;         // steps * 8 (float values), or
  std::vector<uint32_t> ncodes;    // steps: the 8 lanes' 4-bit codes, lane j in bits 4j..4j+3

  // codebook dense: blocks of 32 columns
  size_t nblk = 0;
  std::vector<uint8_t> bcodes;  // nblk * K * (nib ? 16 : 32)
  size_t row_bytes() const { return nib ? kBlockCols / 2 : kBlockCols; }
};

std::string check_bias(const View& b, int64_t N) {
  if (b.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return "bias must be float32";
  if (b.shape.size() != 1 || b.shape[0] != N)
    return "bias must have shape [" + std::to_string(N) + "], got " + shape_str(b.shape);
  return "";
}

std::string check_codebook(const View& cb) {
  if (cb.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return "codebook must be float32";
  if (cb.shape.size() != 1 || cb.shape[0] < 1 || cb.shape[0] > 256)
    return "codebook must have shape [k] with 1 <= k <= 256, got " + shape_str(cb.shape);
  return "";
}

std::string check_codes(const View& codes, size_t k) {
  if (codes.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 && codes.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT4)
    return "codes must be uint8 or uint4";
  if (codes.count == 0) return "";
  const uint8_t* p = static_cast<const uint8_t*>(codes.data);
  unsigned mx = 0;
  if (codes.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8) {
    for (size_t i = 0; i < codes.count; ++i) mx = std::max<unsigned>(mx, p[i]);
  } else {
    for (size_t i = 0; i < codes.count; ++i) mx = std::max(mx, code_at(codes, i));
  }
  if (mx >= k) return "code " + std::to_string(mx) + " points past the codebook of " + std::to_string(k) + " entries";
  return "";
}

// SparseGemm: (values, indices, bias); SparseCodebookGemm: (codebook, codes, indices, bias)
std::string pack_sparse(Packed& P, const View* values, const View* codebook, const View* codes, const View& indices,
                        const View& bias) {
  const int64_t K = P.K, N = P.N;
  if (indices.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) return "indices must be int32";
  if (indices.shape.size() != 1) return "indices must have rank 1, got shape " + shape_str(indices.shape);
  const size_t nnz = indices.count;
  if (values) {
    if (values->type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return "values must be float32";
    if (values->shape.size() != 1 || values->count != nnz)
      return "values must have shape [" + std::to_string(nnz) + "] like indices, got " + shape_str(values->shape);
  } else {
    std::string e = check_codebook(*codebook);
    if (e.empty()) e = check_codes(*codes, codebook->count);
    if (!e.empty()) return e;
    if (codes->shape.size() != 1 || codes->count != nnz)
      return "codes must have shape [" + std::to_string(nnz) + "] like indices, got " + shape_str(codes->shape);
  }
  if (std::string e = check_bias(bias, N); !e.empty()) return e;
  const int32_t* idx = static_cast<const int32_t*>(indices.data);
  const int64_t size = K * N;
  for (size_t i = 0; i < nnz; ++i) {
    if (idx[i] < 0 || idx[i] >= size)
      return "index " + std::to_string(idx[i]) + " (at " + std::to_string(i) + ") is outside the " +
             std::to_string(K) + "x" + std::to_string(N) + " weight";
    if (i && idx[i] <= idx[i - 1])
      return "indices must be strictly increasing (position " + std::to_string(i) + ": " + std::to_string(idx[i]) +
             " after " + std::to_string(idx[i - 1]) + ")";
  }
  P.nnz = nnz;
  P.bias.assign(static_cast<const float*>(bias.data), static_cast<const float*>(bias.data) + N);
  if (codebook) {
    P.k = static_cast<int>(codebook->count);
    P.nib = P.k <= 16;
    const float* c = static_cast<const float*>(codebook->data);
    P.cb.assign(P.nib ? 16 : 256, 0.0f);
    std::copy(c, c + P.k, P.cb.begin());
  }
  // per column entries (nonzeros, plus the escapes delta rows would need), columns sorted by that (descending)
  std::vector<uint32_t> cnt(N, 0), esc(N, 0), last(N, 0);
  size_t total_esc = 0;
  for (size_t i = 0; i < nnz; ++i) {
    const int64_t n = idx[i] % N, r = idx[i] / N;
    cnt[n]++;
    const uint32_t gap = static_cast<uint32_t>(r) - last[n];
    if (gap > 255) {
      esc[n] += (gap - 1) / 255;
      total_esc += (gap - 1) / 255;
    }
    last[n] = static_cast<uint32_t>(r);
  }
  const bool floats = values != nullptr || !P.nib;
  P.rows = floats && total_esc * 50 <= nnz ? kDelta8 : K < 65536 ? kAbs16 : kAbs32;
  if (P.rows == kDelta8)
    for (int64_t n = 0; n < N; ++n) cnt[n] += esc[n];
  std::vector<int32_t> order(N);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return cnt[a] > cnt[b]; });
  P.ngroups = (N + kLanes - 1) / kLanes;
  P.gofs.assign(P.ngroups + 1, 0);
  P.lane_col.assign(P.ngroups * kLanes, -1);
  P.lane_cnt.assign(P.ngroups * kLanes, 0);
  std::vector<uint32_t> where(N);  // column -> its lane (g * 8 + j)
  for (size_t g = 0; g < P.ngroups; ++g) {
    uint32_t len = 0;
    for (int j = 0; j < kLanes; ++j) {
      const size_t s = g * kLanes + j;
      if (s < static_cast<size_t>(N)) {
        P.lane_col[s] = order[s];
        P.lane_cnt[s] = cnt[order[s]];
        where[order[s]] = static_cast<uint32_t>(s);
        len = std::max(len, cnt[order[s]]);
      }
    }
    P.gofs[g + 1] = P.gofs[g] + len;
  }
  const size_t steps = P.gofs[P.ngroups];
  if (P.rows == kDelta8)
    P.rows8.assign(steps * kLanes, 0);
  else if (P.rows == kAbs16)
    P.rows16.assign(steps * kLanes, static_cast<uint16_t>(K));
  else
    P.rows32.assign(steps * kLanes, static_cast<uint32_t>(K));
  if (P.nib)
    P.ncodes.assign(steps, 0);
  else
    P.vals.assign(steps * kLanes, 0.0f);
  std::vector<uint32_t> fill(N, 0);
  std::fill(last.begin(), last.end(), 0);
  const float* v = values ? static_cast<const float*>(values->data) : nullptr;
  for (size_t i = 0; i < nnz; ++i) {
    const int64_t n = idx[i] % N, r = idx[i] / N;
    const uint32_t s = where[n];
    const size_t g = s / kLanes, j = s % kLanes;
    size_t step = P.gofs[g] + fill[n]++;
    size_t e = step * kLanes + j;
    if (P.rows == kDelta8) {
      uint32_t gap = static_cast<uint32_t>(r) - last[n];
      for (; gap > 255; gap -= 255) {  // an escape: delta 255, value 0 (vals are zero-initialised)
        P.rows8[e] = 255;
        step = P.gofs[g] + fill[n]++;
        e = step * kLanes + j;
      }
      P.rows8[e] = static_cast<uint8_t>(gap);
      last[n] = static_cast<uint32_t>(r);
    } else if (P.rows == kAbs16) {
      P.rows16[e] = static_cast<uint16_t>(r);
    } else {
      P.rows32[e] = static_cast<uint32_t>(r);
    }
    if (v)
      P.vals[e] = v[i];
    else if (P.nib)
      P.ncodes[step] |= code_at(*codes, i) << (4 * j);
    else
      P.vals[e] = P.cb[code_at(*codes, i)];
  }
  return "";
}

std::string pack_codebook(Packed& P, const View& codebook, const View& codes, const View& bias) {
  const int64_t K = P.K, N = P.N;
  if (std::string e = check_codebook(codebook); !e.empty()) return e;
  if (std::string e = check_codes(codes, codebook.count); !e.empty()) return e;
  if (codes.shape.size() != 2 || codes.shape[0] != K || codes.shape[1] != N)
    return "codes must have shape [" + std::to_string(K) + ", " + std::to_string(N) + "], got " + shape_str(codes.shape);
  if (std::string e = check_bias(bias, N); !e.empty()) return e;
  P.bias.assign(static_cast<const float*>(bias.data), static_cast<const float*>(bias.data) + N);
  P.k = static_cast<int>(codebook.count);
  P.nib = P.k <= 16;
  P.cb.assign(P.nib ? 16 : 256, 0.0f);
  std::copy(static_cast<const float*>(codebook.data), static_cast<const float*>(codebook.data) + P.k, P.cb.begin());
  P.nblk = (N + kBlockCols - 1) / kBlockCols;
  const size_t rb = P.row_bytes();
  P.bcodes.assign(P.nblk * K * rb, 0);
  for (size_t b = 0; b < P.nblk; ++b) {
    for (int64_t r = 0; r < K; ++r) {
      uint8_t* row = P.bcodes.data() + (b * K + r) * rb;
      const int64_t c0 = static_cast<int64_t>(b) * kBlockCols;
      const int64_t cn = std::min<int64_t>(kBlockCols, N - c0);
      for (int64_t c = 0; c < cn; ++c) {
        const unsigned code = code_at(codes, static_cast<size_t>(r * N + c0 + c));
        if (P.nib)
          row[c >> 1] |= static_cast<uint8_t>(code << ((c & 1) * 4));
        else
          row[c] = static_cast<uint8_t>(code);
      }
    }
  }
  return "";
}

// ----------------------------------------------------------------------------------------------------------------
// Epilogue: y = acc + bias (then Relu)
inline float finish(float acc, float b, bool relu) {
  const float y = acc + b;
  return relu ? (y > 0.0f ? y : 0.0f) : y;
}

inline float val_at(const Packed& P, size_t e, size_t step, int j) {
  return P.nib ? P.cb[(P.ncodes[step] >> (4 * j)) & 15u] : P.vals[e];
}

// ---- sparse, scalar: one row of A (x: K floats), groups [g0, g1)
void sparse_row_scalar(const Packed& P, const float* x, float* y, size_t g0, size_t g1, bool relu) {
  for (size_t g = g0; g < g1; ++g) {
    for (int j = 0; j < kLanes; ++j) {
      const int32_t c = P.lane_col[g * kLanes + j];
      if (c < 0) break;
      const uint32_t cnt = P.lane_cnt[g * kLanes + j];
      float acc[2] = {0.0f, 0.0f};
      uint32_t r = 0;
      for (uint32_t t = 0; t < cnt; ++t) {
        const size_t s = P.gofs[g] + t, e = s * kLanes + j;
        r = P.rows == kDelta8 ? r + P.rows8[e] : P.rows == kAbs16 ? P.rows16[e] : P.rows32[e];
        acc[t & 1] += val_at(P, e, s, j) * x[r];
      }
      y[c] = finish(acc[0] + acc[1], P.bias[c], relu);
    }
  }
}

#if OC_X86
// ---- sparse, AVX2, batch 1: x has K + 1 floats (x[K] = 0, the padding row)
template <int kRows, int kCodes>  // kCodes: 0 float values, 8 / 16: 4-bit codes into an 8 / 16 entry codebook
OC_AVX2 void sparse_gemv_avx2(const Packed& P, const float* x, float* y, size_t g0, size_t g1, bool relu) {
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  __m256 cblo = _mm256_setzero_ps(), cbhi = _mm256_setzero_ps();
  if (kCodes) {
    cblo = _mm256_loadu_ps(P.cb.data());
    cbhi = _mm256_loadu_ps(P.cb.data() + 8);
  }
  const uint8_t* r8 = P.rows8.data();
  const uint16_t* r16 = P.rows16.data();
  const uint32_t* r32 = P.rows32.data();
  __m256i cur = _mm256_setzero_si256();  // kDelta8: the lanes' current rows
  const float* vals = kCodes ? nullptr : P.vals.data();
  const uint32_t* codes = kCodes ? P.ncodes.data() : nullptr;
  auto step = [&](size_t s, __m256 acc) OC_AVX2 {
    __m256i ix;
    if (kRows == kDelta8) {
      cur = _mm256_add_epi32(cur, _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(r8 + s * kLanes))));
      ix = cur;
    } else if (kRows == kAbs16) {
      ix = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r16 + s * kLanes)));
    } else {
      ix = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r32 + s * kLanes));
    }
    const __m256 xv = _mm256_i32gather_ps(x, ix, 4);
    __m256 w;
    if (kCodes == 0) {
      w = _mm256_loadu_ps(vals + s * kLanes);
    } else {
      const __m256i ci = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(codes[s])), shifts);
      w = _mm256_permutevar8x32_ps(cblo, ci);
      if (kCodes == 16)
        w = _mm256_blendv_ps(w, _mm256_permutevar8x32_ps(cbhi, ci), _mm256_castsi256_ps(_mm256_slli_epi32(ci, 28)));
    }
    return _mm256_fmadd_ps(xv, w, acc);
  };
  alignas(32) float tmp[kLanes];
  for (size_t g = g0; g < g1; ++g) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    cur = _mm256_setzero_si256();
    size_t s = P.gofs[g];
    const size_t s1 = P.gofs[g + 1];
    for (; s + 4 <= s1; s += 4) {
      {  // 4 steps: 64 (128) bytes of rows, 128 bytes of values, 16 bytes of codes
        const size_t ahead = (s + kPrefetchSteps) * kLanes;
        if (kRows == kDelta8) {
          if ((s & 7) == 0) prefetch(r8 + ahead);
        } else if (kRows == kAbs16) {
          prefetch(r16 + ahead);
        } else {
          prefetch(r32 + ahead);
          prefetch(r32 + ahead + 16);
        }
        if (kCodes) {
          if ((s & 15) == 0) prefetch(codes + s + kPrefetchSteps);
        } else {
          prefetch(vals + ahead);
          prefetch(vals + ahead + 16);
        }
      }
      a0 = step(s, a0);
      a1 = step(s + 1, a1);
      a2 = step(s + 2, a2);
      a3 = step(s + 3, a3);
    }
    for (; s < s1; ++s) a0 = step(s, a0);
    _mm256_store_ps(tmp, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (int j = 0; j < kLanes; ++j) {
      const int32_t c = P.lane_col[g * kLanes + j];
      if (c < 0) break;
      y[c] = finish(tmp[j], P.bias[c], relu);
    }
  }
}

// ---- sparse, AVX2, a tile of T = 8 * NQ rows: At is [K][T] (A transposed); y points at the tile's first row
template <int NQ, int kRows, bool kNib>
OC_AVX2 void sparse_tile_avx2(const Packed& P, const float* At, float* y, size_t rows, size_t g0, size_t g1,
                              bool relu) {
  constexpr int T = 8 * NQ;
  constexpr int U = NQ >= 3 ? 1 : 4 / NQ;  // independent accumulator sets (FMA latency)
  const size_t N = static_cast<size_t>(P.N);
  alignas(32) float tmp[T];
  for (size_t g = g0; g < g1; ++g) {
    const size_t base = P.gofs[g];
    for (int j = 0; j < kLanes; ++j) {
      const int32_t c = P.lane_col[g * kLanes + j];
      if (c < 0) break;
      const uint32_t cnt = P.lane_cnt[g * kLanes + j];
      __m256 acc[U][NQ];
      for (int u = 0; u < U; ++u)
        for (int q = 0; q < NQ; ++q) acc[u][q] = _mm256_setzero_ps();
      uint32_t t = 0, r = 0;
      auto one = [&](uint32_t tt, int u) OC_AVX2 {  // in order of tt (delta rows)
        const size_t s = base + tt, e = s * kLanes + j;
        r = kRows == kDelta8 ? r + P.rows8[e] : kRows == kAbs16 ? P.rows16[e] : P.rows32[e];
        const float v = kNib ? P.cb[(P.ncodes[s] >> (4 * j)) & 15u] : P.vals[e];
        const __m256 vb = _mm256_set1_ps(v);
        const float* a = At + static_cast<size_t>(r) * T;
        for (int q = 0; q < NQ; ++q) acc[u][q] = _mm256_fmadd_ps(vb, _mm256_loadu_ps(a + 8 * q), acc[u][q]);
      };
      for (; t + U <= cnt; t += U)
        for (int u = 0; u < U; ++u) one(t + u, u);
      for (; t < cnt; ++t) one(t, 0);
      for (int q = 0; q < NQ; ++q) {
        __m256 s = acc[0][q];
        for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[u][q]);
        _mm256_store_ps(tmp + 8 * q, s);
      }
      const float b = P.bias[c];
      for (size_t r = 0; r < rows; ++r) y[r * N + c] = finish(tmp[r], b, relu);
    }
  }
}

// ---- sparse, AVX-512, a tile of T = 16 * NQ rows: At is [K + 1][T] (A transposed, row K zero). The 8 columns of
// a group advance together, step by step (padding included): their rows move through At at about the same pace,
// so the rows they read stay in L1, and the 8 x NQ accumulators stay in registers.
template <int NQ, int kRows, bool kNib>
OC_AVX512 void sparse_tile_avx512(const Packed& P, const float* At, float* y, size_t rows, size_t g0, size_t g1,
                                  bool relu) {
  constexpr int T = 16 * NQ;
  const size_t N = static_cast<size_t>(P.N);
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m512 tab = kNib ? _mm512_loadu_ps(P.cb.data()) : _mm512_setzero_ps();
  alignas(64) float out[kLanes * T];
  alignas(32) float dv[kLanes];
  alignas(32) uint32_t dr[kLanes];
  for (size_t g = g0; g < g1; ++g) {
    __m256i cur = _mm256_setzero_si256();
    __m512 acc[kLanes][NQ];
    for (int j = 0; j < kLanes; ++j)
      for (int q = 0; q < NQ; ++q) acc[j][q] = _mm512_setzero_ps();
    for (size_t s = P.gofs[g]; s < P.gofs[g + 1]; ++s) {
      const size_t ahead = (s + kPrefetchSteps) * kLanes;
      if (kRows == kDelta8) {
        if ((s & 7) == 0) prefetch(P.rows8.data() + ahead);
        cur = _mm256_add_epi32(
            cur, _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(P.rows8.data() + s * kLanes))));
        _mm256_store_si256(reinterpret_cast<__m256i*>(dr), cur);
      } else if (kRows == kAbs16) {
        if ((s & 3) == 0) prefetch(P.rows16.data() + ahead);
      } else if ((s & 1) == 0) {
        prefetch(P.rows32.data() + ahead);
      }
      if (!kNib && (s & 1) == 0) prefetch(P.vals.data() + ahead);
      const float* v;
      if (kNib) {
        const __m256i ci = _mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(P.ncodes[s])), shifts);
        _mm256_store_ps(dv, _mm512_castps512_ps256(_mm512_permutexvar_ps(_mm512_castsi256_si512(ci), tab)));
        v = dv;
      } else {
        v = P.vals.data() + s * kLanes;
      }
      for (int j = 0; j < kLanes; ++j) {
        const size_t e = s * kLanes + j;
        const uint32_t r = kRows == kDelta8 ? dr[j] : kRows == kAbs16 ? P.rows16[e] : P.rows32[e];
        const __m512 vb = _mm512_set1_ps(v[j]);
        const float* a = At + static_cast<size_t>(r) * T;
        for (int q = 0; q < NQ; ++q) acc[j][q] = _mm512_fmadd_ps(vb, _mm512_load_ps(a + 16 * q), acc[j][q]);
      }
    }
    for (int j = 0; j < kLanes; ++j)
      for (int q = 0; q < NQ; ++q) _mm512_store_ps(out + j * T + 16 * q, acc[j][q]);
    for (int j = 0; j < kLanes; ++j) {
      const int32_t c = P.lane_col[g * kLanes + j];
      if (c < 0) break;
      const float b = P.bias[c];
      for (size_t r = 0; r < rows; ++r) y[r * N + c] = finish(out[j * T + r], b, relu);
    }
  }
}

#endif  // OC_X86

// ---- codebook, scalar: `rows` rows of A (lda = K) against block b, result into out[rows][32]
void cb_block_scalar(const Packed& P, size_t b, const float* A, size_t rows, float* out) {
  const size_t K = static_cast<size_t>(P.K), rb = P.row_bytes();
  const uint8_t* codes = P.bcodes.data() + b * K * rb;
  const float* cb = P.cb.data();
  for (size_t r = 0; r < rows; ++r) {
    float acc[kBlockCols] = {};
    const float* x = A + r * K;
    for (size_t k = 0; k < K; ++k) {
      const uint8_t* row = codes + k * rb;
      const float xk = x[k];
      if (P.nib) {
        for (int c = 0; c < kBlockCols; c += 2) {
          acc[c] += xk * cb[row[c >> 1] & 15];
          acc[c + 1] += xk * cb[row[c >> 1] >> 4];
        }
      } else {
        for (int c = 0; c < kBlockCols; ++c) acc[c] += xk * cb[row[c]];
      }
    }
    std::memcpy(out + r * kBlockCols, acc, sizeof(acc));
  }
}

#if OC_X86
// ---- codebook, AVX2: R rows, NV vectors of 8 columns starting at vector v0 of the block
// kDec: 8 / 16 -> 4-bit codes into an 8 / 16 entry codebook (vpermps), 0 -> uint8 codes (gather)
template <int R, int NV, int kDec>
OC_AVX2 void cb_block_avx2(const Packed& P, size_t b, const float* A, int v0, float* out) {
  const size_t K = static_cast<size_t>(P.K), rb = P.row_bytes();
  const uint8_t* codes = P.bcodes.data() + b * K * rb;
  const float* cb = P.cb.data();
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256 cblo = _mm256_loadu_ps(cb), cbhi = _mm256_loadu_ps(cb + 8);
  __m256 acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_setzero_ps();
  for (size_t k = 0; k < K; ++k) {
    const uint8_t* row = codes + k * rb;
    if ((k & 1) == 0) prefetch(row + kPrefetchBytes);
    __m256 w[NV];
    for (int v = 0; v < NV; ++v) {
      if (kDec) {
        int32_t d;
        std::memcpy(&d, row + 4 * (v0 + v), 4);
        const __m256i ci = _mm256_srlv_epi32(_mm256_set1_epi32(d), shifts);
        w[v] = _mm256_permutevar8x32_ps(cblo, ci);
        if (kDec == 16)
          w[v] = _mm256_blendv_ps(w[v], _mm256_permutevar8x32_ps(cbhi, ci),
                                  _mm256_castsi256_ps(_mm256_slli_epi32(ci, 28)));
      } else {
        const __m256i ci = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + 8 * (v0 + v))));
        w[v] = _mm256_i32gather_ps(cb, ci, 4);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * K + k);
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, w[v], acc[r][v]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(out + r * kBlockCols + 8 * (v0 + v), acc[r][v]);
}

// ---- codebook, AVX-512: R rows, the whole block (2 vectors of 16 columns)
template <int R, bool kNib>
OC_AVX512 void cb_block_avx512(const Packed& P, size_t b, const float* A, float* out) {
  const size_t K = static_cast<size_t>(P.K), rb = P.row_bytes();
  const uint8_t* codes = P.bcodes.data() + b * K * rb;
  const float* cb = P.cb.data();
  // nibble path: a broadcast qword holds 16 codes (columns 16v .. 16v+15 of the block); lane 2i takes nibble i of
  // the low dword (column i), lane 2i+1 nibble i of the high dword (column 8 + i); `unperm` restores the order.
  const __m512i shifts = _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28);
  const __m512i unperm = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m512 tab = _mm512_loadu_ps(cb);
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (size_t k = 0; k < K; ++k) {
    const uint8_t* row = codes + k * rb;
    if ((k & 3) == 0) prefetch(row + kPrefetchBytes);
    __m512 w[2];
    for (int v = 0; v < 2; ++v) {
      if (kNib) {
        long long q;
        std::memcpy(&q, row + 8 * v, 8);
        w[v] = _mm512_permutexvar_ps(_mm512_srlv_epi32(_mm512_set1_epi64(q), shifts), tab);
      } else {
        const __m512i ci = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * v)));
        w[v] = _mm512_i32gather_ps(ci, cb, 4);
      }
    }
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * K + k]);
      acc[r][0] = _mm512_fmadd_ps(a, w[0], acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, w[1], acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 2; ++v)
      _mm512_storeu_ps(out + r * kBlockCols + 16 * v, kNib ? _mm512_permutexvar_ps(unperm, acc[r][v]) : acc[r][v]);
}

#endif  // OC_X86

// ----------------------------------------------------------------------------------------------------------------
// Drivers

// split [0, n) into `parts` ranges with about equal weight (prefix: cumulative weight, prefix[0] = 0, n + 1 entries)
std::vector<size_t> split_by(const std::vector<uint32_t>& prefix, size_t n, size_t parts) {
  std::vector<size_t> cut(parts + 1, n);
  cut[0] = 0;
  const double total = static_cast<double>(prefix[n]);
  for (size_t p = 1; p < parts; ++p) {
    const uint32_t target = static_cast<uint32_t>(total * p / parts);
    cut[p] = static_cast<size_t>(std::lower_bound(prefix.begin(), prefix.begin() + n + 1, target) - prefix.begin());
    cut[p] = std::max(cut[p], cut[p - 1]);
  }
  return cut;
}

size_t chunks_for(double work, double per_chunk, size_t max_chunks) {
  const double c = std::ceil(work / per_chunk);
  return static_cast<size_t>(std::max(1.0, std::min(static_cast<double>(max_chunks), c)));
}

void run_sparse(OrtKernelContext* ctx, const Packed& P, Isa isa, const float* A, size_t rows, float* Y, bool relu) {
  const size_t K = static_cast<size_t>(P.K), N = static_cast<size_t>(P.N);
  if (isa == Isa::kScalar) {
    const size_t parts = chunks_for(double(P.nnz + N) * rows, 65536, 16);
    const size_t gparts = std::min(parts, std::max<size_t>(P.ngroups, 1));
    const size_t rparts = std::min(rows, (parts + gparts - 1) / gparts);
    const auto cut = split_by(P.gofs, P.ngroups, gparts);
    parallel_for(ctx, gparts * rparts, [&](size_t i) {
      const size_t gp = i % gparts, rp = i / gparts;
      for (size_t r = rows * rp / rparts; r < rows * (rp + 1) / rparts; ++r)
        sparse_row_scalar(P, A + r * K, Y + r * N, cut[gp], cut[gp + 1], relu);
    });
    return;
  }
#if OC_X86
  const size_t steps = P.gofs[P.ngroups];
  if (rows <= 3) {  // a gather per 8 nonzeros and row beats a tile that is mostly padding
    const size_t ld = (K + 16) / 16 * 16;
    Floats x(rows * ld);
    for (size_t r = 0; r < rows; ++r) {
      std::memcpy(x.data() + r * ld, A + r * K, K * sizeof(float));
      x.data()[r * ld + K] = 0.0f;
    }
    const size_t parts = std::min(chunks_for(double(steps) * kLanes + N, 32768, 16), std::max<size_t>(P.ngroups, 1));
    const auto cut = split_by(P.gofs, P.ngroups, parts);
    auto fn = P.rows == kDelta8 ? &sparse_gemv_avx2<kDelta8, 0>  // float values only
              : P.rows == kAbs16 ? (!P.nib ? &sparse_gemv_avx2<kAbs16, 0> : P.k <= 8 ? &sparse_gemv_avx2<kAbs16, 8>
                                                                                    : &sparse_gemv_avx2<kAbs16, 16>)
                                 : (!P.nib ? &sparse_gemv_avx2<kAbs32, 0> : P.k <= 8 ? &sparse_gemv_avx2<kAbs32, 8>
                                                                                    : &sparse_gemv_avx2<kAbs32, 16>);
    parallel_for(ctx, parts * rows, [&](size_t i) {
      const size_t p = i % parts, r = i / parts;
      fn(P, x.data() + r * ld, Y + r * N, cut[p], cut[p + 1], relu);
    });
    return;
  }
  // tiles of up to 32 rows, A transposed per tile (K + 1 rows: row K is the zero the padding reads)
  const bool wide = isa == Isa::kAvx512;
  const size_t kMaxT = 32, lane_w = wide ? 16 : 8;
  const size_t ntiles = (rows + kMaxT - 1) / kMaxT;
  std::vector<size_t> tile_r0(ntiles + 1), tile_T(ntiles), tile_off(ntiles + 1, 0);
  for (size_t t = 0; t < ntiles; ++t) {
    tile_r0[t] = t * kMaxT;
    const size_t rt = std::min(kMaxT, rows - tile_r0[t]);
    tile_T[t] = (rt + lane_w - 1) / lane_w * lane_w;
    tile_off[t + 1] = tile_off[t] + tile_T[t] * (K + 1);
  }
  tile_r0[ntiles] = rows;
  Floats At(tile_off[ntiles]);
  for (size_t t = 0; t < ntiles; ++t) {
    float* dst = At.data() + tile_off[t];
    const size_t T = tile_T[t], r0 = tile_r0[t], rt = tile_r0[t + 1] - r0;
    for (size_t k = 0; k < K; ++k) {
      float* d = dst + k * T;
      for (size_t r = 0; r < rt; ++r) d[r] = A[(r0 + r) * K + k];
      for (size_t r = rt; r < T; ++r) d[r] = 0.0f;
    }
    std::memset(dst + K * T, 0, T * sizeof(float));
  }
  const size_t gparts = std::min(chunks_for(double(P.nnz + N) * rows, 65536, 8), std::max<size_t>(P.ngroups, 1));
  const auto cut = split_by(P.gofs, P.ngroups, gparts);
  parallel_for(ctx, gparts * ntiles, [&](size_t i) {
    const size_t gp = i % gparts, t = i / gparts;
    const size_t r0 = tile_r0[t], rt = tile_r0[t + 1] - r0;
    const float* at = At.data() + tile_off[t];
    float* y = Y + r0 * N;
    const size_t g0 = cut[gp], g1 = cut[gp + 1];
#define OC_TILE(F, NQ)                                                                                        \
  (P.rows == kDelta8 ? F<NQ, kDelta8, false>                                                                  \
   : P.rows == kAbs16 ? (P.nib ? F<NQ, kAbs16, true> : F<NQ, kAbs16, false>)                                  \
                      : (P.nib ? F<NQ, kAbs32, true> : F<NQ, kAbs32, false>))(P, at, y, rt, g0, g1, relu)
    if (wide) {
      if (tile_T[t] == 16)
        OC_TILE(sparse_tile_avx512, 1);
      else
        OC_TILE(sparse_tile_avx512, 2);
    } else {
      switch (tile_T[t] / 8) {
        case 1: OC_TILE(sparse_tile_avx2, 1); break;
        case 2: OC_TILE(sparse_tile_avx2, 2); break;
        case 3: OC_TILE(sparse_tile_avx2, 3); break;
        default: OC_TILE(sparse_tile_avx2, 4); break;
      }
    }
#undef OC_TILE
  });
#endif  // OC_X86
}

#if OC_X86
// one block of columns for `rows` rows (at most the ISA's row tile), into out[rows][32]
template <int R>
void cb_block_avx2_r(const Packed& P, size_t b, const float* A, float* out, bool one_row) {
  if (P.nib && P.k <= 8) {
    if (one_row) return cb_block_avx2<1, 4, 8>(P, b, A, 0, out);
    cb_block_avx2<R, 2, 8>(P, b, A, 0, out);
    cb_block_avx2<R, 2, 8>(P, b, A, 2, out);
  } else if (P.nib) {
    if (one_row) return cb_block_avx2<1, 4, 16>(P, b, A, 0, out);
    cb_block_avx2<R, 2, 16>(P, b, A, 0, out);
    cb_block_avx2<R, 2, 16>(P, b, A, 2, out);
  } else {
    if (one_row) return cb_block_avx2<1, 4, 0>(P, b, A, 0, out);
    cb_block_avx2<R, 2, 0>(P, b, A, 0, out);
    cb_block_avx2<R, 2, 0>(P, b, A, 2, out);
  }
}

#endif  // OC_X86

void cb_block(const Packed& P, Isa isa, size_t b, const float* A, size_t rows, float* out) {
  if (isa == Isa::kScalar || !OC_X86) return cb_block_scalar(P, b, A, rows, out);
#if OC_X86
  if (isa == Isa::kAvx2) {
    switch (rows) {
      case 1: return cb_block_avx2_r<1>(P, b, A, out, true);
      case 2: return cb_block_avx2_r<2>(P, b, A, out, false);
      case 3: return cb_block_avx2_r<3>(P, b, A, out, false);
      default: return cb_block_avx2_r<4>(P, b, A, out, false);
    }
  }
#define OC_R(R) return P.nib ? cb_block_avx512<R, true>(P, b, A, out) : cb_block_avx512<R, false>(P, b, A, out)
  switch (rows) {
    case 1: OC_R(1);
    case 2: OC_R(2);
    case 3: OC_R(3);
    case 4: OC_R(4);
    case 5: OC_R(5);
    case 6: OC_R(6);
    case 7: OC_R(7);
    default: OC_R(8);
  }
#undef OC_R
#endif  // OC_X86
}

void run_codebook(OrtKernelContext* ctx, const Packed& P, Isa isa, const float* A, size_t rows, float* Y, bool relu) {
  const size_t K = static_cast<size_t>(P.K), N = static_cast<size_t>(P.N);
  const size_t R = isa == Isa::kAvx512 ? 8 : isa == Isa::kAvx2 ? 4 : 1;
  const double work = double(K) * double(N) * double(rows);
  const size_t parts = chunks_for(work, 1 << 18, 16);
  const size_t bparts = std::min(parts, std::max<size_t>(P.nblk, 1));
  const size_t ntile = (rows + R - 1) / R;
  const size_t rparts = std::min(ntile, (parts + bparts - 1) / bparts);
  parallel_for(ctx, bparts * rparts, [&](size_t i) {
    const size_t bp = i % bparts, rp = i / bparts;
    const size_t b0 = P.nblk * bp / bparts, b1 = P.nblk * (bp + 1) / bparts;
    const size_t t0 = ntile * rp / rparts, t1 = ntile * (rp + 1) / rparts;
    alignas(64) float out[8 * kBlockCols];
    for (size_t b = b0; b < b1; ++b) {
      const size_t c0 = b * kBlockCols, cn = std::min<size_t>(kBlockCols, N - c0);
      for (size_t t = t0; t < t1; ++t) {
        const size_t r0 = t * R, rt = std::min(R, rows - r0);
        cb_block(P, isa, b, A + r0 * K, rt, out);
        for (size_t r = 0; r < rt; ++r) {
          float* y = Y + (r0 + r) * N + c0;
          const float* o = out + r * kBlockCols;
          for (size_t c = 0; c < cn; ++c) y[c] = finish(o[c], P.bias[c0 + c], relu);
        }
      }
    }
  });
}

// ----------------------------------------------------------------------------------------------------------------
// The kernel (one per node)
template <Kind kKind, bool kRelu>
struct GemmKernel {
  static constexpr size_t kInputs = kKind == Kind::kSparseCodebook ? 5 : 4;

  GemmKernel(const OrtApi*, const OrtKernelInfo* info) {
    try {
      Ort::ConstKernelInfo ki(info);
      try {
        name_ = ki.GetNodeName();
      } catch (const Ort::Exception&) {
      }
      std::vector<int64_t> shape;
      try {
        shape = ki.GetAttributes<int64_t>("shape");
      } catch (const Ort::Exception&) {
        error_ = "attribute shape (ints [K, N]) is missing";
        return;
      }
      if (shape.size() != 2 || shape[0] < 0 || shape[1] < 0 || shape[0] > INT32_MAX || shape[1] > INT32_MAX ||
          shape[0] * shape[1] > INT32_MAX) {
        error_ = "attribute shape must be [K, N] with K * N < 2^31, got " + shape_str(shape);
        return;
      }
      K_ = shape[0];
      N_ = shape[1];
      isa_ = pick_isa();
      if (ki.GetInputCount() != kInputs) {
        error_ = "expects " + std::to_string(kInputs) + " inputs, got " + std::to_string(ki.GetInputCount());
        return;
      }
      std::vector<View> w(kInputs);
      for (size_t i = 1; i < kInputs; ++i) {
        int is_const = 0;
        Ort::ConstValue v = ki.GetTensorConstantInput(i, &is_const);
        if (!is_const) return;  // packed in every Compute
        w[i] = view_of(v);
      }
      auto p = std::make_shared<Packed>();
      error_ = pack(*p, w);
      if (error_.empty()) packed_ = std::move(p);
    } catch (const std::exception& e) {
      error_ = e.what();
    }
  }

  std::string pack(Packed& P, const std::vector<View>& w) const {
    P.kind = kKind;
    P.K = K_;
    P.N = N_;
    switch (kKind) {
      case Kind::kSparse: return pack_sparse(P, &w[1], nullptr, nullptr, w[2], w[3]);
      case Kind::kCodebook: return pack_codebook(P, w[1], w[2], w[3]);
      default: return pack_sparse(P, nullptr, &w[1], &w[2], w[3], w[4]);
    }
  }

  std::string message(const std::string& what) const {
    return "onnxcomp " + std::string(op_name()) + (name_.empty() ? "" : " node '" + name_ + "'") + ": " + what;
  }

  static const char* op_name() {
    switch (kKind) {
      case Kind::kSparse: return kRelu ? "SparseGemmRelu" : "SparseGemm";
      case Kind::kCodebook: return kRelu ? "CodebookGemmRelu" : "CodebookGemm";
      default: return kRelu ? "SparseCodebookGemmRelu" : "SparseCodebookGemm";
    }
  }

  Ort::Status Compute(OrtKernelContext* context) {
    try {
      if (!error_.empty()) return Ort::Status(message(error_).c_str(), ORT_INVALID_ARGUMENT);
      Ort::KernelContext kc(context);
      if (kc.GetInputCount() != kInputs)
        return Ort::Status(message("expects " + std::to_string(kInputs) + " inputs").c_str(), ORT_INVALID_ARGUMENT);
      const View a = view_of(kc.GetInput(0));
      if (a.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        return Ort::Status(message("A must be float32").c_str(), ORT_INVALID_ARGUMENT);
      if (a.shape.empty() || a.shape.back() != K_)
        return Ort::Status(message("A must have shape [..., " + std::to_string(K_) + "], got " + shape_str(a.shape)).c_str(),
                           ORT_INVALID_ARGUMENT);
      std::shared_ptr<const Packed> P = packed_;
      if (!P) {
        std::vector<View> w(kInputs);
        for (size_t i = 1; i < kInputs; ++i) w[i] = view_of(kc.GetInput(i));
        auto p = std::make_shared<Packed>();
        const std::string err = pack(*p, w);
        if (!err.empty()) return Ort::Status(message(err).c_str(), ORT_INVALID_ARGUMENT);
        P = std::move(p);
      }
      std::vector<int64_t> out_shape(a.shape.begin(), a.shape.end() - 1);
      out_shape.push_back(N_);
      size_t rows = 1;
      for (size_t i = 0; i + 1 < a.shape.size(); ++i) rows *= static_cast<size_t>(a.shape[i]);
      auto y = kc.GetOutput(0, out_shape);
      if (rows == 0 || N_ == 0) return Ort::Status(nullptr);
      float* Y = y.GetTensorMutableData<float>();
      const float* A = static_cast<const float*>(a.data);
      if (kKind == Kind::kCodebook)
        run_codebook(context, *P, isa_, A, rows, Y, kRelu);
      else
        run_sparse(context, *P, isa_, A, rows, Y, kRelu);
      return Ort::Status(nullptr);
    } catch (const Ort::Exception& e) {
      return Ort::Status(message(e.what()).c_str(), e.GetOrtErrorCode());
    } catch (const std::exception& e) {
      return Ort::Status(message(e.what()).c_str(), ORT_RUNTIME_EXCEPTION);
    }
  }

  std::string name_;
  std::string error_;
  int64_t K_ = 0, N_ = 0;
  Isa isa_ = Isa::kScalar;
  std::shared_ptr<const Packed> packed_;
};

// ----------------------------------------------------------------------------------------------------------------
// Registration: the lite op machinery (Compute takes the raw context), with the inputs declared by hand so that
// codes can be uint8 or uint4 (two overloads of one name; onnxruntime picks by the node's types), every input
// required, and a CreateKernelV2 that turns a malformed weight into a session-creation error.
template <Kind kKind, bool kRelu, ONNXTensorElementDataType kCodes>
Ort::Custom::OrtLiteCustomOp* make_op() {
  using Kernel = GemmKernel<kKind, kRelu>;
  using Lite = Ort::Custom::OrtLiteCustomStruct<Kernel>;
  auto* op = static_cast<Lite*>(Ort::Custom::CreateLiteCustomOp<Kernel>(Kernel::op_name(), "CPUExecutionProvider"));
  constexpr auto F = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, I = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  switch (kKind) {
    case Kind::kSparse: op->input_types_ = {F, F, I, F}; break;
    case Kind::kCodebook: op->input_types_ = {F, F, kCodes, F}; break;
    default: op->input_types_ = {F, F, kCodes, I, F}; break;
  }
  op->output_types_ = {F};
  op->GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op->GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op->CreateKernelV2 = [](const OrtCustomOp* this_, const OrtApi* api, const OrtKernelInfo* info,
                          void** out) -> OrtStatusPtr {
    *out = nullptr;
    try {
      auto kernel = std::make_unique<typename Lite::Kernel>();
      Ort::ThrowOnError(api->KernelInfo_GetInputCount(info, &kernel->num_input_));
      Ort::ThrowOnError(api->KernelInfo_GetOutputCount(info, &kernel->num_output_));
      kernel->custom_op_ = std::make_unique<Kernel>(api, info);
      if (!kernel->custom_op_->error_.empty())
        return api->CreateStatus(ORT_INVALID_ARGUMENT, kernel->custom_op_->message(kernel->custom_op_->error_).c_str());
      kernel->ep_ = static_cast<const Lite*>(this_)->execution_provider_;
      *out = kernel.release();
      return nullptr;
    } catch (const std::exception& e) {
      return api->CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
    }
  };
  return op;
}

constexpr auto kU8 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
constexpr auto kU4 = ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT4;
const RegisterOp reg_sparse(&make_op<Kind::kSparse, false, kU8>);
const RegisterOp reg_sparse_relu(&make_op<Kind::kSparse, true, kU8>);
const RegisterOp reg_cb_u8(&make_op<Kind::kCodebook, false, kU8>);
const RegisterOp reg_cb_u4(&make_op<Kind::kCodebook, false, kU4>);
const RegisterOp reg_cb_relu_u8(&make_op<Kind::kCodebook, true, kU8>);
const RegisterOp reg_cb_relu_u4(&make_op<Kind::kCodebook, true, kU4>);
const RegisterOp reg_scb_u8(&make_op<Kind::kSparseCodebook, false, kU8>);
const RegisterOp reg_scb_u4(&make_op<Kind::kSparseCodebook, false, kU4>);
const RegisterOp reg_scb_relu_u8(&make_op<Kind::kSparseCodebook, true, kU8>);
const RegisterOp reg_scb_relu_u4(&make_op<Kind::kSparseCodebook, true, kU4>);

}  // namespace
}  // namespace onnxcomp
