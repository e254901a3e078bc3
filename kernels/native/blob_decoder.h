// The packed-weight blob decoder (kernels/FORMAT.md), independent of onnxruntime so that a fuzzer links it alone
// (kernels/native/fuzz/decode_fuzzer.cc). It accepts exactly the blobs onnxcomp's Python reference accepts
// (onnxcomp/codecs/blob.py, stack.py), decodes them to the same bits, and refuses the others with the reference's
// reason text, checked in the reference's order; version 1 (JSON meta) is refused, as FORMAT.md allows.
//
// Hostile input: every length is checked before it is trusted, nothing is read outside the blob, and nothing is
// allocated beyond what the blob justifies (onnxcomp/limits.py's limits: the decoded tensor against
// ONNXCOMP_MAX_TENSOR_BYTES and against ONNXCOMP_MAX_EXPANSION times the blob's size, never below 1 MiB).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace onnxcomp {

// The blob's element types, in the order of their meta code (FORMAT.md 3.1).
enum class BlobDType : uint8_t { kFloat16 = 0, kFloat32 = 1, kFloat64 = 2, kInt8 = 3, kUint8 = 4 };

size_t dtype_itemsize(BlobDType dtype);
const char* dtype_name(BlobDType dtype);  // numpy's name: "float32", ...
int dtype_onnx(BlobDType dtype);          // the onnx.TensorProto element type: FLOAT = 1, ...

// onnxcomp/limits.py's "tensor" and "expansion" limits.
struct DecodeLimits {
  uint64_t max_tensor_bytes = uint64_t{4} << 30;  // ONNXCOMP_MAX_TENSOR_BYTES
  uint64_t max_expansion = uint64_t{1} << 16;     // ONNXCOMP_MAX_EXPANSION (a ratio)
};

// Why a blob was refused. `malformed`: a fault of the blob, reported as "malformed packed weight '<name>':
// <message>" (FORMAT.md 1); otherwise a bad limit in the environment, reported as it is.
struct DecodeError {
  std::string message;
  bool malformed = true;
};

// A byte range of the blob.
struct ByteSpan {
  const uint8_t* data = nullptr;
  size_t size = 0;
};

enum class Scheme : uint8_t { kPlain = 0, kCodebook = 1, kSparse = 2 };
enum class Coding : uint8_t { kPacked = 0, kHuffman = 1, kNone = 2 };

// One symbol stream: codebook indices or sparse gaps (FORMAT.md 3.2, 5).
struct SymbolStream {
  Coding coding = Coding::kNone;
  unsigned bits = 0;  // symbol width when packed
  ByteSpan data;      // the packed bits or the Huffman code stream
  ByteSpan table;     // the Huffman table
};

// A parsed blob that passed every check of FORMAT.md section 4. It points into the caller's blob, which must
// outlive it.
struct PackedWeight {
  BlobDType dtype = BlobDType::kFloat32;
  Scheme scheme = Scheme::kPlain;
  bool half_book = false;      // HALF_BOOK: the codebook is stored as float16
  std::vector<int64_t> shape;  // each dimension below 2^63
  uint64_t size = 0;           // elements, at most 2^32
  uint64_t count = 0;          // stored entries: size, or sparse's count
  unsigned k = 0;              // codebook entries (0: none)
  ByteSpan values;             // plain values, or sparse raw values
  ByteSpan codebook;
  SymbolStream indices;
  SymbolStream gaps;

  size_t output_bytes() const { return static_cast<size_t>(size) * dtype_itemsize(dtype); }
};

// Parse and check a blob (FORMAT.md 4: header, CRC, meta, sections, Huffman tables, then the size limits).
// `limits`: nullptr reads them from the environment at the size check, as the reference does (unset or empty:
// the defaults; a value that is not a size is refused with the reference's message).
bool parse_blob(const uint8_t* blob, size_t size, const DecodeLimits* limits, PackedWeight* weight,
                DecodeError* error);

// Decode a parsed blob into `out` (weight.output_bytes() bytes, aligned for the element size): the element bit patterns in C
// order, in the host's byte order (little-endian). Refuses what depends on the data (FORMAT.md 5, 6): Huffman
// streams that disagree with their tables, indices outside the codebook, gaps past the end of the tensor.
bool decode_blob(const PackedWeight& weight, uint8_t* out, DecodeError* error);

// zlib's crc32 (CRC-32/ISO-HDLC), what the header's crc field holds for bytes [16, end).
uint32_t crc32(const uint8_t* data, size_t size);

// Python's repr() of a str, for weight names in messages: 'name'.
std::string python_str_repr(const std::string& text);

// "malformed packed weight '<name>': <reason>" for a blob fault, the message alone otherwise.
std::string error_text(const DecodeError& error, const std::string& name);

}  // namespace onnxcomp
