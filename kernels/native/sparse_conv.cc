// ai.onnxcomp.SparseConv and SparseConvRelu (kernels/schema.py): Y = Conv(X, W, bias) (then Relu), NCHW float32,
// W the [M, C/group, kH, kW] tensor holding `values` at the row-major positions `indices`; attributes `shape`,
// `strides`, `pads` ([top, left, bottom, right]), `dilations`, `group` as ONNX Conv's.
//
// Layout and algorithm (direct sparse convolution, one code path for every geometry):
//  * At kernel creation the constant weights are read once (GetTensorConstantInput) and packed per output
//    channel: each nonzero as (absolute input channel, kh, kw, value). Weights fed at run time are packed per run.
//  * Phase planes: for strides (sh, sw) the zero-padded input plane splits into sh * sw sub-planes
//    Xab[i][j] = Xpad[i*sh + a][j*sw + b]. A tap (kh, kw) of a strided convolution reads exactly one of them,
//    shifted: Xpad[oh*sh + kh*dh][ow*sw + kw*dw] = Xab[oh + qh][ow + qw] with kh*dh = qh*sh + a and
//    kw*dw = qw*sw + b. So every convolution becomes a stride-1 one over the planes its taps use, and a nonzero
//    becomes ONE offset into the input buffer: (c * planes + plane(a, b)) * plane_size + qh * Wb + qw.
//  * The output plane of a channel is computed as a flat vector over p = oh * Wb + ow (0 <= ow < Wb; columns
//    ow >= OW are scratch, never stored): out[p] = bias + sum_e v_e * in[p + off_e]. A tile of 128 (AVX-512:
//    8 x 16; AVX2: 64 = 8 x 8) consecutive p sits in registers while the channel's nonzero list streams past:
//    one broadcast + one contiguous load and FMA per vector and nonzero (sparse_conv_kernel.h; the inner loop
//    of XNNPACK's sparse 1x1 SpMM and of SkimCaffe's direct sparse convolution).
//  * AVX-512 loads stay on 64-byte boundaries: planes and rows are padded to multiples of 16 floats (rows when
//    that costs <= 1/8), and each nonzero list is split into groups by offset residue mod 16, a group with
//    residue r accumulating 9 aligned vectors that one permute per vector shifts into place (split loads cost
//    1.6x aligned ones here: 3x3 at 80% sparse went from 1.7x to 2.2x over dense).
//  * Input-channel chunks: the loop is tile -> chunk -> output channel, a chunk being as many input channels as
//    keep one tile's input rows in about 40 KB of L1 (but at least 16 nonzeros per output channel and chunk);
//    partial sums go to a per-task buffer between chunks. Without chunks the rows stream from L2 (3x3 256->256
//    56x56 at 90%: 3.0x over dense with chunks, 2.0x without).
//  * Fast paths fall out of the layout: stride 1 without pads, with aligned offsets (1x1 with H*W a multiple of
//    16; for AVX2 any kernel), reads X itself: the 1x1 case is a sparse x dense SpMM over the HW plane. Stride 1
//    with pads (3x3 pad 1) reads one zero-padded copy of X; other strides copy only the phases their taps use.
//    The offsets depend on the input's H and W: built on the first run of each input size, cached for the last.
//  * Threads: onnxruntime's intra-op pool (cpu.h parallel_for) over (image, block of tiles, block of output
//    channels); each output element is computed by one task in one fixed order, so results do not depend on the
//    thread count. Bias always fused, Relu fused for SparseConvRelu.
//  * Instruction sets chosen when a session creates the kernel: AVX-512F, AVX2+FMA, or portable scalar code
//    (cpu.h; ONNXCOMP_NATIVE_ISA caps it), each compiled with function target attributes, no -march.
// Malformed attributes or constant weights fail session creation, malformed run-time inputs fail the run: an
// onnxruntime error naming the node, never an exception across the C boundary.
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cpu.h"
#include "registry.h"

namespace onnxcomp {
namespace {

struct Entry {  // one nonzero of one output channel, for one input geometry
  int32_t off;  // offset into the (phase-plane) input buffer of one image
  float v;
};

struct ConvTask {
  const float* in;        // the image's input buffer (X itself, or its padded / phase copy)
  const Entry* entries;   // all nonzeros, CSR by (input-channel chunk, output channel)
  const int64_t* rowptr;  // [chunks * M + 1]
  const int32_t* first;   // [M]: a channel's first chunk with nonzeros (0 when none)
  const int32_t* last;    // [M]: its last one (0 when none)
  int64_t chunks, M;
  float* acc;             // partial sums, (m1 - m0) x tile floats
  const float* bias;      // [M]
  float* out;             // the image's output, [M, OH, OW]
  int64_t out_plane;      // OH * OW
  int64_t Wf, OW;         // flat row stride (the planes' Wb) and output width
  int64_t p0, p1;         // flat positions
  int64_t m0, m1;         // output channels
  bool relu;
  bool guarded;           // `in` is a copy with kGuard zeros after it: whole vectors may read past position p1
};

// ---- per instruction set: the vector type and the kernel (sparse_conv_kernel.h) -------------------------------
namespace isa_scalar {
#define ISA_ATTR
struct V {
  using R = float;
  static constexpr int W = 1, kNV = 8;
  static constexpr bool kShift = false;
  template <int NV>
  static inline void shift_add(R*, const R*, int) {}
  static inline R zero() { return 0.f; }
  static inline R bcast(float x) { return x; }
  static inline R load(const float* p) { return *p; }
  static inline R loadn(const float* p, int) { return *p; }
  static inline R fma(R a, R b, R c) { return a * b + c; }
  static inline R add(R a, R b) { return a + b; }
  static inline R max0(R a) { return a > 0.f ? a : 0.f; }
  static inline void store(float* p, R a) { *p = a; }
  static inline void storen(float* p, R a, int) { *p = a; }
};
#include "sparse_conv_kernel.h"
#undef ISA_ATTR
}  // namespace isa_scalar

namespace isa_avx2 {
#define ISA_ATTR __attribute__((target("avx2,fma")))
struct V {
  using R = __m256;
  static constexpr int W = 8, kNV = 8;
  static constexpr bool kShift = false;  // (no cross-lane 256-bit align in AVX2; split 32-byte loads are rarer)
  template <int NV>
  static ISA_ATTR inline void shift_add(R*, const R*, int) {}
  static ISA_ATTR inline R zero() { return _mm256_setzero_ps(); }
  static ISA_ATTR inline R bcast(float x) { return _mm256_set1_ps(x); }
  static ISA_ATTR inline R load(const float* p) { return _mm256_loadu_ps(p); }
  static ISA_ATTR inline __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static ISA_ATTR inline R loadn(const float* p, int n) { return _mm256_maskload_ps(p, mask(n)); }
  static ISA_ATTR inline R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static ISA_ATTR inline R add(R a, R b) { return _mm256_add_ps(a, b); }
  static ISA_ATTR inline R max0(R a) { return _mm256_max_ps(a, _mm256_setzero_ps()); }
  static ISA_ATTR inline void store(float* p, R a) { _mm256_storeu_ps(p, a); }
  static ISA_ATTR inline void storen(float* p, R a, int n) { _mm256_maskstore_ps(p, mask(n), a); }
};
#include "sparse_conv_kernel.h"
#undef ISA_ATTR
}  // namespace isa_avx2

namespace isa_avx512 {
#define ISA_ATTR __attribute__((target("avx512f,avx2,fma")))
struct V {
  using R = __m512;
  static constexpr int W = 16, kNV = 8;
  static constexpr bool kShift = true;
  // acc[i] += lanes r .. r+15 of (g[i], g[i+1])
  template <int NV>
  static ISA_ATTR inline void shift_add(R* acc, const R* g, int r) {
    const __m512i idx =
        _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(r));
#pragma GCC unroll 16
    for (int i = 0; i < NV; ++i) acc[i] = _mm512_add_ps(acc[i], _mm512_permutex2var_ps(g[i], idx, g[i + 1]));
  }
  static ISA_ATTR inline R zero() { return _mm512_setzero_ps(); }
  static ISA_ATTR inline R bcast(float x) { return _mm512_set1_ps(x); }
  static ISA_ATTR inline R load(const float* p) { return _mm512_loadu_ps(p); }
  static ISA_ATTR inline __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static ISA_ATTR inline R loadn(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static ISA_ATTR inline R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static ISA_ATTR inline R add(R a, R b) { return _mm512_add_ps(a, b); }
  static ISA_ATTR inline R max0(R a) {  // the masked form: GCC 12 warns on _mm512_max_ps's undefined source
    const R z = _mm512_setzero_ps();
    return _mm512_mask_max_ps(z, static_cast<__mmask16>(0xFFFF), a, z);
  }
  static ISA_ATTR inline void store(float* p, R a) { _mm512_storeu_ps(p, a); }
  static ISA_ATTR inline void storen(float* p, R a, int n) { _mm512_mask_storeu_ps(p, mask(n), a); }
};
#include "sparse_conv_kernel.h"
#undef ISA_ATTR
}  // namespace isa_avx512

struct Isa {
  const char* name;
  void (*task)(const ConvTask&);
  int64_t tile;     // flat positions per register tile
  int64_t residue;  // offsets grouped by their residue modulo this (1: one group, plain unaligned loads)
};
constexpr Isa kIsas[] = {{"scalar", isa_scalar::conv_task, isa_scalar::kTile, 1},
                         {"avx2", isa_avx2::conv_task, isa_avx2::kTile, 1},
                         {"avx512", isa_avx512::conv_task, isa_avx512::kTile, isa_avx512::V::W}};

// Floats of zeroed guard before and after the input copy: a last tile reads whole vectors (up to 15 floats past
// the last position), and residue groups read up to one more vector (and up to 15 floats before position 0).
constexpr int64_t kGuard = 48;

// Tuning, measured on this project's machines (2-core Xeon with AVX-512, 48 KB L1d, 2 MB L2).
constexpr int64_t kL1Budget = 40 * 1024;  // bytes of one tile's input rows per input-channel chunk
constexpr int64_t kMinVisit = 16;         // nonzeros per (chunk, output channel) visit, at least, on average
constexpr int64_t kTasksPerImage = 16;    // parallel tasks per image (tile blocks x output-channel blocks)

// ---- attributes, weights, geometry --------------------------------------------------------------------------
[[noreturn]] void fail(const std::string& msg) { throw Ort::Exception(std::string(msg), ORT_INVALID_ARGUMENT); }

bool read_ints(const OrtApi& api, const OrtKernelInfo* info, const char* name, std::vector<int64_t>* out) {
  size_t n = 0;
  if (OrtStatus* s = api.KernelInfoGetAttributeArray_int64(info, name, nullptr, &n)) {
    api.ReleaseStatus(s);
    return false;
  }
  out->resize(n);
  if (n == 0) return true;
  if (OrtStatus* s = api.KernelInfoGetAttributeArray_int64(info, name, out->data(), &n)) {
    api.ReleaseStatus(s);
    return false;
  }
  return true;
}

std::string ints_text(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

std::string shape_text(const Ort::ConstValue& v) {
  return ints_text(v.GetTensorTypeAndShapeInfo().GetShape());
}

struct Weights {  // geometry-independent packing: CSR over output channels
  std::vector<int64_t> rowptr;            // [M + 1]
  std::vector<int32_t> c, kh, kw;         // per nonzero: absolute input channel, tap
  std::vector<float> v;                   // per nonzero
  std::vector<float> bias;                // [M]
};

struct Slot {  // one plane of an input channel in the buffer: Xpad[i*sh + a][j*sw + b]
  int64_t a, b;
};

struct Geometry {  // the layout and offsets for one input size (H, W)
  int64_t H = -1, W = -1;
  bool copy = false;        // false: the kernel reads X itself (stride 1, no pads)
  int64_t Hb = 0, Wb = 0;   // one plane of the buffer: Hb rows of Wb floats (Wb = the flat row stride)
  int64_t plane = 0;        // floats per plane (Hb * Wb, rounded up to the residue modulus)
  std::vector<Slot> slots;  // planes per input channel
  int64_t chunks = 1;        // input-channel chunks (each chunk's rows of one tile fit in L1)
  std::vector<Entry> entries;  // by (chunk, output channel), then the weight's order
  std::vector<int64_t> rowptr;  // [chunks * M + 1]
  std::vector<int32_t> first, last;  // [M]
};

struct FreeDeleter {
  void operator()(float* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float, FreeDeleter>;

AlignedFloats aligned_floats_or_null(size_t n) {  // 64-byte aligned, uninitialised; null when out of memory
  void* p = nullptr;
  if (posix_memalign(&p, 64, std::max<size_t>(n, 16) * sizeof(float)) != 0) return AlignedFloats();
  return AlignedFloats(static_cast<float*>(p));
}

struct Buffer {
  AlignedFloats data;
  size_t size = 0;
};

// Buffers kept between runs (the input copy; the tasks' partial sums), handed out under a lock. Never throws.
class BufferPool {
 public:
  Buffer get(size_t size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < free_.size(); ++i) {
        if (free_[i].size >= size) {
          Buffer b = std::move(free_[i]);
          free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
          return b;
        }
      }
    }
    Buffer b;
    b.data = aligned_floats_or_null(size);
    b.size = b.data ? size : 0;
    return b;
  }
  void put(Buffer b) {
    std::lock_guard<std::mutex> lock(mu_);
    if (b.data && free_.size() < kKeep) free_.push_back(std::move(b));
  }

 private:
  static constexpr size_t kKeep = 8;
  std::mutex mu_;
  std::vector<Buffer> free_;
};

class SparseConvKernel {
 public:
  SparseConvKernel(const OrtApi& api, const OrtKernelInfo* info, bool relu) : relu_(relu) {
    Ort::ConstKernelInfo ki(info);
    name_ = std::string(relu ? "SparseConvRelu" : "SparseConv") + " '" + ki.GetNodeName() + "'";
    std::vector<int64_t> shape, strides{1, 1}, pads{0, 0, 0, 0}, dil{1, 1};
    if (!read_ints(api, info, "shape", &shape)) fail(name_ + ": attribute shape is required");
    if (shape.size() != 4) fail(name_ + ": attribute shape " + ints_text(shape) + " is not [M, C/group, kH, kW]");
    for (int64_t d : shape)
      if (d <= 0 || d > std::numeric_limits<int32_t>::max())
        fail(name_ + ": attribute shape " + ints_text(shape) + " must be positive");
    if (read_ints(api, info, "strides", &strides) && (strides.size() != 2 || strides[0] <= 0 || strides[1] <= 0))
      fail(name_ + ": attribute strides " + ints_text(strides) + " must be 2 positive ints");
    if (read_ints(api, info, "dilations", &dil) && (dil.size() != 2 || dil[0] <= 0 || dil[1] <= 0))
      fail(name_ + ": attribute dilations " + ints_text(dil) + " must be 2 positive ints");
    if (read_ints(api, info, "pads", &pads) &&
        (pads.size() != 4 || *std::min_element(pads.begin(), pads.end()) < 0))
      fail(name_ + ": attribute pads " + ints_text(pads) + " must be 4 non-negative ints [top, left, bottom, right]");
    int64_t group = 1;
    if (OrtStatus* s = api.KernelInfoGetAttribute_int64(info, "group", &group)) {
      api.ReleaseStatus(s);
      group = 1;
    }
    if (group <= 0 || shape[0] % group != 0)
      fail(name_ + ": attribute group " + std::to_string(group) + " must be positive and divide M = " +
           std::to_string(shape[0]));
    for (int64_t x : strides)
      if (x > (1 << 20)) fail(name_ + ": attribute strides " + ints_text(strides) + " is too large");
    for (int64_t x : dil)
      if (x > (1 << 20)) fail(name_ + ": attribute dilations " + ints_text(dil) + " is too large");
    for (int64_t x : pads)
      if (x > (1 << 24)) fail(name_ + ": attribute pads " + ints_text(pads) + " is too large");
    M_ = shape[0];
    Cg_ = shape[1];
    kH_ = shape[2];
    kW_ = shape[3];
    if (static_cast<double>(M_) * Cg_ * kH_ * kW_ > static_cast<double>(std::numeric_limits<int32_t>::max()))
      fail(name_ + ": attribute shape " + ints_text(shape) + " has more elements than int32 indices address");
    sh_ = strides[0];
    sw_ = strides[1];
    dh_ = dil[0];
    dw_ = dil[1];
    pt_ = pads[0];
    pl_ = pads[1];
    pb_ = pads[2];
    pr_ = pads[3];
    group_ = group;
    isa_ = cpu_has_avx512f() ? 2 : cpu_has_avx2_fma() ? 1 : 0;

    int c1 = 0, c2 = 0, c3 = 0;
    Ort::ConstValue vals = ki.GetTensorConstantInput(1, &c1);
    Ort::ConstValue idx = ki.GetTensorConstantInput(2, &c2);
    Ort::ConstValue bias = ki.GetTensorConstantInput(3, &c3);
    if (c1 && c2 && c3) {
      weights_ = std::make_shared<Weights>(pack(vals, idx, bias));
    }
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    if (ctx.GetInputCount() != 4 || ctx.GetOutputCount() != 1)
      fail(name_ + ": takes 4 inputs (X, values, indices, bias) and 1 output");
    Ort::ConstValue X = ctx.GetInput(0);
    std::shared_ptr<const Weights> wts = weights_;
    if (!wts) wts = std::make_shared<Weights>(pack(ctx.GetInput(1), ctx.GetInput(2), ctx.GetInput(3)));

    auto xinfo = X.GetTensorTypeAndShapeInfo();
    if (xinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(name_ + ": X must be float32");
    std::vector<int64_t> xs = xinfo.GetShape();
    if (xs.size() != 4) fail(name_ + ": X has shape " + ints_text(xs) + ", expected rank 4 (N, C, H, W)");
    const int64_t N = xs[0], C = xs[1], H = xs[2], W = xs[3];
    if (C != Cg_ * group_)
      fail(name_ + ": X has " + std::to_string(C) + " channels, the weight expects " + std::to_string(Cg_) +
           " x group " + std::to_string(group_) + " = " + std::to_string(Cg_ * group_));
    const int64_t Hp = H + pt_ + pb_, Wp = W + pl_ + pr_;
    const int64_t ekh = dh_ * (kH_ - 1) + 1, ekw = dw_ * (kW_ - 1) + 1;
    if (Hp < ekh || Wp < ekw)
      fail(name_ + ": X of shape " + ints_text(xs) + " is smaller than the (dilated) kernel after padding");
    const int64_t OH = (Hp - ekh) / sh_ + 1, OW = (Wp - ekw) / sw_ + 1;

    float* Y = ctx.GetOutput(0, {N, M_, OH, OW}).GetTensorMutableData<float>();
    if (N == 0 || M_ == 0 || OH * OW == 0) return;
    const float* x = X.GetTensorData<float>();

    std::shared_ptr<const Geometry> geo = geometry(*wts, H, W, C, OH, !weights_);
    const int64_t plane = geo->plane;
    const int64_t img_in = C * static_cast<int64_t>(geo->slots.size()) * plane;

    // The padded / phase copy of X (all images), built in parallel over (image, channel).
    Buffer buf;
    const float* in = x;
    if (geo->copy) {
      buf = inputs_.get(static_cast<size_t>(N * img_in + 2 * kGuard));
      if (!buf.data) throw std::bad_alloc();
      float* dst = buf.data.get() + kGuard;
      std::memset(dst - kGuard, 0, sizeof(float) * kGuard);
      std::memset(dst + N * img_in, 0, sizeof(float) * kGuard);
      const Geometry& g = *geo;
      parallel_for(context, static_cast<size_t>(std::min<int64_t>(N * C, 64)), [&](size_t i) {
        const int64_t n_tasks = std::min<int64_t>(N * C, 64);
        const int64_t b = static_cast<int64_t>(i) * (N * C) / n_tasks, e = (static_cast<int64_t>(i) + 1) * (N * C) / n_tasks;
        for (int64_t nc = b; nc < e; ++nc)
          copy_channel(x + nc * H * W, dst + nc * static_cast<int64_t>(g.slots.size()) * plane, H, W, g);
      });
      in = dst;
    }

    // Tasks: (image, tile block, output-channel block).
    const Isa& isa = kIsas[isa_];
    const int64_t L = (OH - 1) * geo->Wb + OW;  // flat positions up to the last output
    const int64_t tiles = (L + isa.tile - 1) / isa.tile;
    const int64_t target = kTasksPerImage;
    int64_t tile_blocks = std::min<int64_t>(tiles, target);
    int64_t m_blocks = std::max<int64_t>(1, std::min<int64_t>(M_, (target + tile_blocks - 1) / tile_blocks));
    const int64_t per_image = tile_blocks * m_blocks;
    const int64_t ntask = N * per_image;
    const Entry* entries = geo->entries.data();
    const float* bias = wts->bias.data();
    std::atomic<bool> out_of_memory{false};
    auto body = [&](size_t i) {
      const int64_t n = static_cast<int64_t>(i) / per_image, r = static_cast<int64_t>(i) % per_image;
      const int64_t tb = r / m_blocks, mb = r % m_blocks;
      ConvTask t;
      t.in = in + n * img_in;
      t.entries = entries;
      t.rowptr = geo->rowptr.data();
      t.first = geo->first.data();
      t.last = geo->last.data();
      t.chunks = geo->chunks;
      t.M = M_;
      t.bias = bias;
      t.out = Y + n * M_ * OH * OW;
      t.out_plane = OH * OW;
      t.Wf = geo->Wb;
      t.OW = OW;
      t.p0 = tiles * tb / tile_blocks * isa.tile;
      t.p1 = std::min(L, tiles * (tb + 1) / tile_blocks * isa.tile);
      t.m0 = M_ * mb / m_blocks;
      t.m1 = M_ * (mb + 1) / m_blocks;
      t.relu = relu_;
      t.guarded = geo->copy;
      if (t.p0 >= t.p1 || t.m0 >= t.m1) return;
      Buffer acc;
      if (t.chunks > 1) {
        acc = partials_.get(static_cast<size_t>((t.m1 - t.m0) * isa.tile));
        if (!acc.data) {
          out_of_memory = true;
          return;
        }
      }
      t.acc = acc.data.get();
      isa.task(t);
      partials_.put(std::move(acc));
    };
    parallel_for(context, static_cast<size_t>(ntask), body);
    inputs_.put(std::move(buf));
    if (out_of_memory) throw std::bad_alloc();
  }

 private:
  // Validates and packs values / indices / bias (constant at creation, or fed at run time).
  Weights pack(const Ort::ConstValue& vals, const Ort::ConstValue& idx, const Ort::ConstValue& bias) const {
    auto vinfo = vals.GetTensorTypeAndShapeInfo();
    auto iinfo = idx.GetTensorTypeAndShapeInfo();
    auto binfo = bias.GetTensorTypeAndShapeInfo();
    if (vinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(name_ + ": values must be float32");
    if (iinfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) fail(name_ + ": indices must be int32");
    if (binfo.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) fail(name_ + ": bias must be float32");
    if (vinfo.GetShape().size() != 1 || iinfo.GetShape().size() != 1)
      fail(name_ + ": values " + shape_text(vals) + " and indices " + shape_text(idx) + " must be 1-D");
    const int64_t nnz = static_cast<int64_t>(vinfo.GetElementCount());
    if (static_cast<int64_t>(iinfo.GetElementCount()) != nnz)
      fail(name_ + ": " + std::to_string(iinfo.GetElementCount()) + " indices for " + std::to_string(nnz) +
           " values");
    if (binfo.GetShape().size() != 1 || static_cast<int64_t>(binfo.GetElementCount()) != M_)
      fail(name_ + ": bias has shape " + shape_text(bias) + ", expected [" + std::to_string(M_) + "]");
    const int64_t size = M_ * Cg_ * kH_ * kW_, per_m = Cg_ * kH_ * kW_, mg = M_ / group_;
    const float* v = nnz ? vals.GetTensorData<float>() : nullptr;
    const int32_t* ix = nnz ? idx.GetTensorData<int32_t>() : nullptr;
    Weights w;
    w.rowptr.assign(static_cast<size_t>(M_ + 1), 0);
    w.c.resize(nnz);
    w.kh.resize(nnz);
    w.kw.resize(nnz);
    w.v.assign(v, v + nnz);
    int64_t prev = -1;
    for (int64_t i = 0; i < nnz; ++i) {
      const int64_t p = ix[i];
      if (p <= prev || p >= size)
        fail(name_ + ": indices must be strictly increasing positions inside the weight of " +
             std::to_string(size) + " elements (index " + std::to_string(i) + " is " + std::to_string(p) + ")");
      prev = p;
      const int64_t m = p / per_m, rem = p % per_m;
      const int64_t ci = rem / (kH_ * kW_), t = rem % (kH_ * kW_);
      w.c[i] = static_cast<int32_t>((m / mg) * Cg_ + ci);
      w.kh[i] = static_cast<int32_t>(t / kW_);
      w.kw[i] = static_cast<int32_t>(t % kW_);
      ++w.rowptr[m + 1];
    }
    for (int64_t m = 0; m < M_; ++m) w.rowptr[m + 1] += w.rowptr[m];
    const float* b = binfo.GetElementCount() ? bias.GetTensorData<float>() : nullptr;
    w.bias.assign(b, b + M_);
    return w;
  }

  // The layout and offsets for input size (H, W), cached (for constant weights) for the last size seen.
  //  * direct: stride 1 and no pads (and, with residue groups, every offset c*H*W + kh*dh*W + kw*dw a multiple of
  //    the vector width, e.g. 1x1 with H*W a multiple of 16): the kernel reads X itself.
  //  * copy: one zero-padded plane per phase (a, b) that some tap reads, Hb = OH + the kernel's reach in rows,
  //    Wb = ceil((W + pads) / sw), rounded up to the vector width when that costs at most 1/8 more (every row,
  //    plane and tap then has a residue that depends only on its column: few residue groups).
  std::shared_ptr<const Geometry> geometry(const Weights& w, int64_t H, int64_t W, int64_t C, int64_t OH,
                                           bool fresh) {
    if (!fresh) {
      std::lock_guard<std::mutex> lock(mu_);
      if (geo_ && geo_->H == H && geo_->W == W) return geo_;
    }
    auto g = std::make_shared<Geometry>();
    g->H = H;
    g->W = W;
    const Isa& isa = kIsas[isa_];
    const int64_t Q = isa.residue;
    const int64_t Wp = W + pl_ + pr_;
    const int64_t qh_max = (kH_ - 1) * dh_ / sh_, qw_max = (kW_ - 1) * dw_ / sw_;
    bool direct = sh_ == 1 && sw_ == 1 && pt_ == 0 && pl_ == 0 && pb_ == 0 && pr_ == 0;
    if (direct && Q > 1) {
      const bool planes_ok = C == 1 || (H * W) % Q == 0;
      const bool taps_ok = (kH_ == 1 || (dh_ * W) % Q == 0) && (kW_ == 1 || dw_ % Q == 0);
      direct = planes_ok && taps_ok;
    }
    // The row and column phases the taps read: (i * dh) % sh repeats with a period <= sh, so the first
    // min(kH, sh) taps show them all.
    auto phases = [](int64_t k, int64_t d, int64_t s) {
      std::vector<int64_t> out;
      for (int64_t i = 0; i < std::min(k, s); ++i) out.push_back((i * d) % s);
      std::sort(out.begin(), out.end());
      out.erase(std::unique(out.begin(), out.end()), out.end());
      return out;
    };
    std::vector<int64_t> rows{0}, cols{0};
    if (direct) {
      g->copy = false;
      g->Hb = H;
      g->Wb = W;
      g->plane = H * W;
      g->slots.push_back({0, 0});
    } else {
      g->copy = true;
      g->Hb = OH + qh_max;
      const int64_t Wu = (Wp + sw_ - 1) / sw_, Wr = (Wu + Q - 1) / Q * Q;
      g->Wb = 8 * Wr <= 9 * Wu ? Wr : Wu;
      g->plane = (g->Hb * g->Wb + Q - 1) / Q * Q;
      rows = phases(kH_, dh_, sh_);
      cols = phases(kW_, dw_, sw_);
      for (int64_t a : rows)
        for (int64_t b : cols) g->slots.push_back({a, b});
    }
    const int64_t nslots = static_cast<int64_t>(g->slots.size());
    const int64_t plane = g->plane;
    if (static_cast<double>(C) * nslots * plane >= static_cast<double>(std::numeric_limits<int32_t>::max() / 2))
      fail(name_ + ": input of " + std::to_string(C) + " x " + std::to_string(H) + " x " + std::to_string(W) +
           " is too large for this kernel (2^30 elements per image)");
    // A tap's offset inside one input channel's planes.
    auto tap_off = [&](int64_t i, int64_t j) {
      const int64_t rh = i * dh_, rw = j * dw_;
      const int64_t a = std::lower_bound(rows.begin(), rows.end(), rh % sh_) - rows.begin();
      const int64_t b = std::lower_bound(cols.begin(), cols.end(), rw % sw_) - cols.begin();
      return (a * static_cast<int64_t>(cols.size()) + b) * plane + (rh / sh_) * g->Wb + rw / sw_;
    };
    // Input-channel chunks: one tile's rows of a chunk (every plane, the kernel's reach included) should fit in
    // the L1 budget.
    const int64_t tile = isa.tile;
    const int64_t reach = qh_max * g->Wb + qw_max;
    const int64_t per_channel = nslots * (tile + reach + 16) * static_cast<int64_t>(sizeof(float));
    // ... but each (chunk, output channel) visit costs a round trip of its partial sums and a loop exit, so
    // chunks keep at least kMinVisit nonzeros per output channel on average (1x1 at 90%: one chunk, the input
    // streams from L2).
    const int64_t cb0 = std::max<int64_t>(1, kL1Budget / per_channel);
    const int64_t nnz_total = static_cast<int64_t>(w.v.size());
    const int64_t max_chunks = std::max<int64_t>(1, nnz_total / (std::max<int64_t>(M_, 1) * kMinVisit));
    g->chunks = std::min((C + cb0 - 1) / cb0, max_chunks);
    const int64_t cb = (C + g->chunks - 1) / g->chunks;  // balanced
    const int64_t K = g->chunks;
    const size_t nnz = w.v.size();
    // Entries by (chunk, output channel), each list as residue groups (sparse_conv_kernel.h): a header, then the
    // group's entries in the weight's order.
    std::vector<int64_t> count(static_cast<size_t>(K * M_ * Q), 0);
    std::vector<int64_t> off(nnz);
    g->first.assign(static_cast<size_t>(M_), 0);
    g->last.assign(static_cast<size_t>(M_), 0);
    for (int64_t m = 0; m < M_; ++m) {
      bool any = false;
      for (int64_t i = w.rowptr[m]; i < w.rowptr[m + 1]; ++i) {
        const int64_t k = w.c[i] / cb;
        off[i] = w.c[i] * nslots * plane + tap_off(w.kh[i], w.kw[i]);
        ++count[(k * M_ + m) * Q + off[i] % Q];
        if (!any) g->first[m] = static_cast<int32_t>(k);
        g->last[m] = static_cast<int32_t>(k);
        any = true;
      }
    }
    // group starts (header positions), and the (chunk, channel) list starts
    std::vector<int64_t> start(count.size());
    g->rowptr.assign(static_cast<size_t>(K * M_ + 1), 0);
    int64_t pos = 0;
    for (int64_t r = 0; r < K * M_; ++r) {
      g->rowptr[r] = pos;
      for (int64_t q = 0; q < Q; ++q) {
        start[r * Q + q] = pos;
        if (count[r * Q + q]) pos += 1 + count[r * Q + q];
      }
    }
    g->rowptr[K * M_] = pos;
    g->entries.resize(static_cast<size_t>(pos));
    for (size_t i = 0; i < count.size(); ++i) {
      if (!count[i]) continue;
      Entry& h = g->entries[start[i]];
      h.off = static_cast<int32_t>(count[i]);
      const int32_t q = static_cast<int32_t>(i % Q);
      std::memcpy(&h.v, &q, sizeof q);
      ++start[i];  // now the next entry's position
    }
    for (int64_t m = 0; m < M_; ++m) {
      for (int64_t i = w.rowptr[m]; i < w.rowptr[m + 1]; ++i) {
        const int64_t q = off[i] % Q;
        Entry& e = g->entries[start[((w.c[i] / cb) * M_ + m) * Q + q]++];
        e.off = static_cast<int32_t>(off[i] - q);
        e.v = w.v[i];
      }
    }
    if (!fresh) {
      std::lock_guard<std::mutex> lock(mu_);
      geo_ = g;
    }
    return g;
  }

  // One input channel -> its planes (zero padding included): plane (a, b)[i][j] = Xpad[i*sh + a][j*sw + b].
  void copy_channel(const float* src, float* dst, int64_t H, int64_t W, const Geometry& g) const {
    for (const Slot& sl : g.slots) {
      float* d = dst;
      dst += g.plane;
      // columns j with 0 <= j*sw + b - pl < W
      const int64_t lo = pl_ - sl.b, hi = W - 1 + pl_ - sl.b;
      int64_t j0 = lo > 0 ? (lo + sw_ - 1) / sw_ : 0;
      int64_t j1 = hi >= 0 ? hi / sw_ + 1 : 0;
      j0 = std::min(j0, g.Wb);
      j1 = std::max(j0, std::min(j1, g.Wb));
      for (int64_t i = 0; i < g.Hb; ++i, d += g.Wb) {
        const int64_t r = i * sh_ + sl.a - pt_;
        if (r < 0 || r >= H) {
          std::memset(d, 0, sizeof(float) * g.Wb);
          continue;
        }
        const float* s = src + r * W;
        std::memset(d, 0, sizeof(float) * j0);
        if (sw_ == 1) {
          std::memcpy(d + j0, s + (j0 + sl.b - pl_), sizeof(float) * (j1 - j0));
        } else {
          for (int64_t j = j0; j < j1; ++j) d[j] = s[j * sw_ + sl.b - pl_];
        }
        std::memset(d + j1, 0, sizeof(float) * (g.Wb - j1));
      }
      std::memset(d, 0, sizeof(float) * (g.plane - g.Hb * g.Wb));  // the plane's rounding
    }
  }

  std::string name_;
  bool relu_;
  int64_t M_, Cg_, kH_, kW_, sh_, sw_, dh_, dw_, pt_, pl_, pb_, pr_, group_;
  int isa_ = 0;
  std::shared_ptr<const Weights> weights_;  // null when the weights are fed at run time
  std::mutex mu_;
  std::shared_ptr<const Geometry> geo_;
  BufferPool inputs_, partials_;
};

template <bool Relu>
Ort::Custom::OrtLiteCustomOp* make_op() {
  constexpr auto F = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, I = ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
  return make_status_op<SparseConvKernel, Relu>(Relu ? "SparseConvRelu" : "SparseConv", {F, F, I, F}, {F});
}

const RegisterOp kRegisterConv(make_op<false>);
const RegisterOp kRegisterConvRelu(make_op<true>);

}  // namespace
}  // namespace onnxcomp
