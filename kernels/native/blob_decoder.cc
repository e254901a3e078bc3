// The packed-weight blob decoder: kernels/FORMAT.md, written against the Python reference (onnxcomp/codecs/
// blob.py: header, meta and section checks; huffman.py: tables and streams; stack.py and csr.py: decoding). The
// checks run in the reference's order and fail with its reason text, because the golden set
// (kernels/testdata/manifest.json) and onnxcomp's users read those messages, whichever decoder ran.
//
// Errors are thrown as Refusal inside this file and turned into a DecodeError at the two entry points, so that
// each check is one line and no partial result escapes.
#include "blob_decoder.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <new>
#include <utility>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the decoder copies little-endian blob values as host values: port the loads before building big-endian"
#endif

namespace onnxcomp {
namespace {

// Meta varints hold up to 70 bits and the reference compares them as unbounded integers (a 10-byte rank of
// 2^64 is "invalid rank 18446744073709551616"), so they are read and printed as 128-bit integers.
using Big = unsigned __int128;

struct Refusal {
  std::string message;
  bool malformed;
};

[[noreturn]] void refuse(std::string message) { throw Refusal{std::move(message), true}; }

constexpr size_t kHeaderBytes = 16;
constexpr uint16_t kHalfBook = 1;
constexpr uint64_t kMaxElements = uint64_t{1} << 32;
constexpr unsigned kMaxRank = 32;
constexpr unsigned kMaxSections = 6;
constexpr unsigned kMaxCodebook = 256;
constexpr unsigned kMaxGapBits = 16;
constexpr unsigned kMaxCodeLength = 16;
constexpr uint32_t kMaxAlphabet = uint32_t{1} << 16;
constexpr unsigned kMaxChunkLog2 = 12;
constexpr uint64_t kExpansionFloor = uint64_t{1} << 20;

const char* const kDtypeNames[] = {"float16", "float32", "float64", "int8", "uint8"};
const char* const kSchemeNames[] = {"plain", "codebook", "sparse"};
const char* const kIndexCodingNames[] = {"packed", "huffman", "none"};
// Section codes of the binary meta (blob.py SECTIONS).
enum Section : uint8_t { kValues = 0, kCodebook = 1, kIndices = 2, kIndicesHuffman = 3, kGaps = 4, kGapsHuffman = 5 };
const char* const kSectionNames[] = {"values", "codebook", "indices", "indices.huffman", "gaps", "gaps.huffman"};

// -- Python-style formatting: the reference's messages are f-strings ----------------------------------------
std::string decimal(Big v) {
  char buf[48];
  size_t n = 0;
  do {
    buf[n++] = static_cast<char>('0' + static_cast<int>(v % 10));
    v /= 10;
  } while (v);
  return std::string(std::reverse_iterator<char*>(buf + n), std::reverse_iterator<char*>(buf));
}

std::string grouped(Big v) {  // f"{v:,}"
  std::string digits = decimal(v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

template <typename T, typename Format>
std::string py_list(const std::vector<T>& items, Format format) {  // str(list)
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + format(items[i]);
  return out + "]";
}

std::string quoted(const char* name) { return std::string("'") + name + "'"; }  // repr() of a plain name

std::string py_bytes_repr(const uint8_t* data, size_t n) {  // repr(bytes): b'..' (or b".." when ' occurs)
  bool single = std::find(data, data + n, '\'') != data + n, dbl = std::find(data, data + n, '"') != data + n;
  char quote = single && !dbl ? '"' : '\'';
  std::string out = "b";
  out += quote;
  for (size_t i = 0; i < n; ++i) {
    uint8_t c = data[i];
    if (c == quote || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c < 0x20 || c >= 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + quote;
}

std::string describe_bytes(Big n) {  // limits.describe
  static const struct { const char* unit; int shift; } kUnits[] = {{"GiB", 30}, {"MiB", 20}, {"KiB", 10}};
  for (const auto& u : kUnits) {
    if (n >= (Big{1} << u.shift)) {
      char buf[80];
      std::snprintf(buf, sizeof buf, "%.1f %s", static_cast<double>(n) / static_cast<double>(uint64_t{1} << u.shift),
                    u.unit);
      return buf;
    }
  }
  return decimal(n) + " B";
}

unsigned bit_length(uint64_t v) { return v ? 64 - static_cast<unsigned>(__builtin_clzll(v)) : 0; }

Big packed_size(Big count, unsigned bits) { return (count * bits + 7) / 8; }

// -- little-endian loads, bounds-checked by the callers ------------------------------------------------------
template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// -- CRC-32 (zlib's crc32: reflected 0xEDB88320, init and final xor ~0), sliced by 8 ---------------------------
// Packed models are checksummed at every load, so the table-per-byte-lane form (8 bytes a step) keeps the CRC
// far below the decoding time.
struct CrcTables {
  uint32_t t[8][256];
  CrcTables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int j = 0; j < 8; ++j) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};

uint32_t crc32_sliced(const uint8_t* p, size_t n) {
  static const CrcTables tables;
  const auto& t = tables.t;
  uint32_t c = 0xFFFFFFFFu;
  for (; n >= 8; p += 8, n -= 8) {
    uint32_t lo = load<uint32_t>(p) ^ c, hi = load<uint32_t>(p + 4);
    c = t[7][lo & 0xFF] ^ t[6][(lo >> 8) & 0xFF] ^ t[5][(lo >> 16) & 0xFF] ^ t[4][lo >> 24] ^ t[3][hi & 0xFF] ^
        t[2][(hi >> 8) & 0xFF] ^ t[1][(hi >> 16) & 0xFF] ^ t[0][hi >> 24];
  }
  for (; n; ++p, --n) c = (c >> 8) ^ t[0][(c ^ *p) & 0xFF];
  return c ^ 0xFFFFFFFFu;
}

// -- limits (onnxcomp/limits.py) -----------------------------------------------------------------------------
// A variable's value as limits.limit() reads it: strip, lowercase, (\d+)\s*([kmgt]?)(i?b)?; saturates far above
// any real size where Python's integers would not.
bool read_limit(const char* var, uint64_t fallback, uint64_t* value, std::string* why) {
  const char* raw = std::getenv(var);
  std::string text = raw ? raw : "";
  auto space = [](char c) { return c == ' ' || (c >= '\t' && c <= '\r') || c == '\x1c' || c == '\x1d' ||
                                   c == '\x1e' || c == '\x1f'; };
  size_t b = 0, e = text.size();
  while (b < e && space(text[b])) ++b;
  while (e > b && space(text[e - 1])) --e;
  std::string s = text.substr(b, e - b);
  if (s.empty()) {
    *value = fallback;
    return true;
  }
  std::string low = s;
  for (char& c : low) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  size_t i = 0;
  Big number = 0;
  const Big cap = Big{1} << 100;
  while (i < low.size() && low[i] >= '0' && low[i] <= '9') number = std::min(cap, number * 10 + (low[i++] - '0'));
  bool ok = i > 0;
  while (i < low.size() && space(low[i])) ++i;
  int shift = 0;
  if (ok && i < low.size()) {
    const char* units = "kmgt";
    const char* u = std::strchr(units, low[i]);
    if (u && *u) {
      shift = 10 * static_cast<int>(u - units + 1);
      ++i;
    }
  }
  if (ok && i < low.size() && low[i] == 'i' && i + 1 < low.size() && low[i + 1] == 'b') i += 2;
  else if (ok && i < low.size() && low[i] == 'b') i += 1;
  if (!ok || i != low.size()) {
    *why = std::string(var) + "=" + python_str_repr(s) + " is not a size (e.g. 8GiB, 512MiB or a number of bytes)";
    return false;
  }
  Big bytes = number << shift;
  *value = bytes > std::numeric_limits<uint64_t>::max() ? std::numeric_limits<uint64_t>::max()
                                                          : static_cast<uint64_t>(bytes);
  return true;
}

// limits.expansion_refusal: "" when a blob of `blob_bytes` may decode to `decoded` bytes. Without `given`
// limits it reads the environment as the reference does: the ratio first, the tensor limit only if asked.
std::string size_refusal(uint64_t blob_bytes, uint64_t decoded, const DecodeLimits* given) {
  DecodeLimits lim = given ? *given : DecodeLimits{};
  std::string why;
  if (!given && !read_limit("ONNXCOMP_MAX_EXPANSION", lim.max_expansion, &lim.max_expansion, &why))
    throw Refusal{why, false};
  if (decoded > std::max<Big>(kExpansionFloor, Big{lim.max_expansion} * blob_bytes))
    return "a " + grouped(blob_bytes) + "-byte blob claims " + describe_bytes(decoded) + ", over " +
           grouped(lim.max_expansion) +
           " times its size (what sparse or codebook data can justify; set ONNXCOMP_MAX_EXPANSION to allow more)";
  if (!given && !read_limit("ONNXCOMP_MAX_TENSOR_BYTES", lim.max_tensor_bytes, &lim.max_tensor_bytes, &why))
    throw Refusal{why, false};
  if (decoded > lim.max_tensor_bytes)
    return describe_bytes(decoded) +
           " exceeds the limit for one decoded tensor (a model initializer, a packed weight) (" +
           describe_bytes(lim.max_tensor_bytes) + "; set ONNXCOMP_MAX_TENSOR_BYTES to allow more)";
  return "";
}

// -- the binary meta (blob.py _Reader, _parse_binary_meta) ---------------------------------------------------
class MetaReader {
 public:
  MetaReader(const uint8_t* p, size_t n) : p_(p), n_(n) {}

  uint8_t u8() {
    if (at_ >= n_) refuse("the meta block is truncated");
    return p_[at_++];
  }

  Big varint() {
    Big value = 0;
    for (unsigned shift = 0;; shift += 7) {
      uint8_t byte = u8();
      value |= Big{static_cast<uint8_t>(byte & 0x7F)} << shift;
      if (!(byte & 0x80)) return value;
      if (shift + 7 > 63) refuse("a number in the meta block is too long");  // at most 10 bytes
    }
  }

  uint8_t pick(unsigned choices, const char* what) {
    uint8_t code = u8();
    if (code >= choices) refuse(std::string("unknown ") + what + " code " + decimal(code));
    return code;
  }

  size_t unread() const { return n_ - at_; }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t at_ = 0;
};

struct Meta {
  uint8_t dtype = 0, scheme = 0;
  std::vector<Big> shape;
  bool has_k = false, has_index_coding = false;
  Big k = 0, count = 0;
  uint8_t gap_bits = 0, gap_coding = 0, index_coding = 0;
  std::vector<std::pair<uint8_t, Big>> sections;  // in the order listed
};

Meta parse_meta(const uint8_t* p, size_t n) {
  MetaReader r(p, n);
  Meta m;
  m.dtype = r.pick(5, "dtype");
  m.scheme = r.pick(3, "scheme");
  Big ndim = r.varint();
  if (ndim > kMaxRank) refuse("invalid rank " + decimal(ndim));
  for (Big i = 0; i < ndim; ++i) m.shape.push_back(r.varint());
  if (m.scheme == static_cast<uint8_t>(Scheme::kCodebook)) {
    m.has_k = true;
    m.k = r.varint();
    m.has_index_coding = true;
    m.index_coding = r.pick(3, "index coding");
  } else if (m.scheme == static_cast<uint8_t>(Scheme::kSparse)) {
    m.count = r.varint();
    m.has_k = true;
    m.k = r.varint();
    m.gap_bits = r.u8();
    m.gap_coding = r.pick(2, "gap coding");
    if (m.k) {
      m.has_index_coding = true;
      m.index_coding = r.pick(3, "index coding");
    }
  }
  Big nsections = r.varint();
  if (nsections > kMaxSections) refuse("invalid section count " + decimal(nsections));
  for (Big i = 0; i < nsections; ++i) {
    uint8_t name = r.pick(6, "section");
    m.sections.emplace_back(name, r.varint());
  }
  if (r.unread()) refuse(decimal(r.unread()) + " unread bytes at the end of the meta block");
  return m;
}

// -- Huffman tables (huffman.py parse_table) -----------------------------------------------------------------
struct HuffmanTable {
  uint32_t alphabet = 0;
  uint64_t count = 0;
  unsigned longest = 0;
  uint32_t chunk = 1;
  std::vector<uint8_t> lengths;
  std::vector<uint32_t> chunk_bits;  // bits of each chunk: stored value + its symbols
};

unsigned offset_width(uint64_t chunk, unsigned longest) {
  return bit_length(std::max<uint64_t>(1, chunk * (std::max(1u, longest) - 1)));
}

// Value i of a bit-packed stream (FORMAT.md 5.1) whose `n` bytes the caller checked to hold it: a 4-byte window
// at the value's first byte (a value of <= 16 bits at a bit offset <= 7 spans at most 3 bytes), zero past the end.
inline uint32_t packed_at(const uint8_t* data, size_t n, uint64_t i, unsigned bits) {
  uint64_t bit = i * bits;
  size_t byte = static_cast<size_t>(bit >> 3);
  uint32_t w;
  if (byte + 4 <= n) {
    w = load<uint32_t>(data + byte);
  } else {
    w = 0;
    for (size_t j = 0; byte + j < n && j < 4; ++j) w |= uint32_t{data[byte + j]} << (8 * j);
  }
  return (w >> (bit & 7)) & ((uint32_t{1} << bits) - 1);
}

HuffmanTable parse_table(ByteSpan t) {
  if (t.size < 16) refuse("Huffman table truncated (" + decimal(t.size) + " bytes)");
  HuffmanTable h;
  h.alphabet = load<uint32_t>(t.data);
  h.count = load<uint64_t>(t.data + 4);
  h.longest = t.data[12];
  unsigned chunk_log2 = t.data[13];
  uint16_t reserved = load<uint16_t>(t.data + 14);
  if (reserved || chunk_log2 > kMaxChunkLog2 || h.longest > kMaxCodeLength || h.alphabet > kMaxAlphabet)
    refuse("Huffman table header is invalid");
  if (h.count && (h.alphabet == 0 || h.longest == 0)) refuse("Huffman table has symbols but no codes");
  h.chunk = uint32_t{1} << chunk_log2;
  uint64_t nchunks = h.count / h.chunk + (h.count % h.chunk != 0);
  unsigned len_width = bit_length(std::max(1u, h.longest)), off_width = offset_width(h.chunk, h.longest);
  Big size_lengths = packed_size(h.alphabet, len_width), size_chunks = packed_size(nchunks, off_width);
  Big expected = 16 + size_lengths + size_chunks;
  if (t.size != expected)
    refuse("Huffman table is " + decimal(t.size) + " bytes, expected " + decimal(expected));
  // From here on the table's own bytes bound every loop: nchunks < 8 * t.size.
  const uint8_t* body = t.data + 16;
  size_t nlen = static_cast<size_t>(size_lengths);
  h.lengths.resize(h.alphabet);
  for (uint32_t i = 0; i < h.alphabet; ++i) h.lengths[i] = static_cast<uint8_t>(packed_at(body, nlen, i, len_width));
  if (h.alphabet && *std::max_element(h.lengths.begin(), h.lengths.end()) != h.longest)
    refuse("Huffman table lengths disagree with its longest code");
  if (h.longest) {
    uint64_t kraft = 0;
    for (uint8_t l : h.lengths)
      if (l) kraft += uint64_t{1} << (h.longest - l);
    if (kraft > (uint64_t{1} << h.longest)) refuse("Huffman code lengths are oversubscribed (Kraft sum above 1)");
  }
  h.chunk_bits.resize(static_cast<size_t>(nchunks));
  const uint8_t* stored = body + nlen;
  size_t nstored = static_cast<size_t>(size_chunks);
  for (uint64_t c = 0; c < nchunks; ++c) {
    uint64_t syms = std::min<uint64_t>(h.chunk, h.count - c * h.chunk);
    h.chunk_bits[c] = packed_at(stored, nstored, c, off_width) + static_cast<uint32_t>(syms);
  }
  if (nchunks) {
    uint64_t last = h.count - (nchunks - 1) * h.chunk;
    bool bad = h.chunk_bits.back() < last || h.chunk_bits.back() > last * h.longest;
    for (uint64_t c = 0; c + 1 < nchunks && !bad; ++c)
      bad = h.chunk_bits[c] < h.chunk || h.chunk_bits[c] > uint64_t{h.chunk} * h.longest;
    if (bad) refuse("Huffman chunk lengths are inconsistent with the symbol count");
  }
  return h;
}

// -- Huffman streams (huffman.py decode) ---------------------------------------------------------------------
// Lookup entries: symbol << 8 | invalid << 7 | code length. A bit pattern that starts no code advances by
// `longest`, as the reference's lock-step decoder does, so that a garbage chunk ends where the reference's ends
// and both report the same fault first.
constexpr uint32_t kNoCode = 0x80;

std::vector<uint32_t> lookup_table(const HuffmanTable& h) {
  const unsigned longest = h.longest;
  std::vector<uint32_t> lut(size_t{1} << longest, kNoCode | longest);
  // Canonical codes (RFC 1951 3.2.2): first[l] = (first[l-1] + n[l-1]) << 1; symbol order within a length.
  uint32_t n[kMaxCodeLength + 1] = {}, next[kMaxCodeLength + 2] = {};
  for (uint8_t l : h.lengths) n[l] += l != 0;
  uint32_t code = 0;
  for (unsigned l = 1; l <= longest; ++l) {
    code = l > 1 ? (code + n[l - 1]) << 1 : 0;
    next[l] = code;
  }
  for (uint32_t s = 0; s < h.alphabet; ++s) {
    unsigned l = h.lengths[s];
    if (!l) continue;
    uint32_t first = next[l]++ << (longest - l), span = uint32_t{1} << (longest - l);
    // Kraft <= 1 (checked) keeps every code's range inside the table.
    std::fill(lut.begin() + first, lut.begin() + first + span, s << 8 | l);
  }
  return lut;
}

// The next 64 stream bits from bit `p` (FORMAT.md 5.2: MSB first), zero beyond the end of the stream.
inline uint64_t peek_bits(const uint8_t* s, size_t n, uint64_t p) {
  uint64_t byte = p >> 3;
  uint64_t w = 0;
  if (byte + 8 <= n) {
    w = __builtin_bswap64(load<uint64_t>(s + byte));
  } else {
    for (uint64_t j = 0; j < 8 && byte + j < n; ++j) w |= uint64_t{s[byte + j]} << (56 - 8 * j);
  }
  return w << (p & 7);
}

// Decode every symbol, calling emit(position, symbol). The chunks are decoded in order; the faults are reported
// with the reference's priority: a chunk (not the last) ending off its stored length, then the last chunk, then
// a bit pattern that is no code.
template <typename Emit>
void huffman_decode(const HuffmanTable& h, ByteSpan stream, Emit&& emit) {
  if (h.count == 0) {
    if (stream.size) refuse("Huffman stream holds data but its table says 0 symbols");
    return;
  }
  uint64_t total = 0;
  for (uint32_t b : h.chunk_bits) total += b;
  if ((total + 7) / 8 != stream.size)
    refuse("Huffman stream is " + decimal(stream.size) + " bytes but its chunks add up to " + decimal(total) +
           " bits");
  const std::vector<uint32_t> lut = lookup_table(h);
  const uint32_t* table = lut.data();
  const unsigned drop = 64 - h.longest;
  const uint8_t* s = stream.data;
  const size_t n = stream.size;
  // At or below this bit position an 8-byte load stays inside the stream.
  const uint64_t fast_end = n >= 8 ? (uint64_t{n} - 8) * 8 : 0;
  const size_t nchunks = h.chunk_bits.size();
  const uint32_t* bits = h.chunk_bits.data();
  const uint64_t chunk = h.chunk;
  bool last_off = false;
  uint32_t seen = 0;
  uint64_t start = 0;
  size_t c = 0;
  // Four chunks (none of them the last) in lock-step: four independent chains of peek, lookup and advance keep
  // the core busy where a single chain waits on each load. A symbol advances at most 16 bits, so a group whose
  // fourth chunk starts at least chunk * 16 bits before fast_end needs no bounds checks.
  for (; c + 4 < nchunks; c += 4) {
    uint64_t p[4], end[4];
    p[0] = start;
    for (int g = 1; g < 4; ++g) p[g] = p[g - 1] + bits[c + g - 1];
    if (p[3] + chunk * 16 > fast_end) break;
    for (int g = 0; g < 4; ++g) end[g] = p[g] + bits[c + g];
    const uint64_t base = uint64_t{c} * chunk;
    for (uint64_t j = 0; j < chunk; ++j) {
      for (int g = 0; g < 4; ++g) {
        uint32_t e = table[(__builtin_bswap64(load<uint64_t>(s + (p[g] >> 3))) << (p[g] & 7)) >> drop];
        emit(base + g * chunk + j, e >> 8);
        p[g] += e & 31;
        seen |= e;
      }
    }
    for (int g = 0; g < 4; ++g)
      if (p[g] != end[g]) refuse("Huffman chunk does not end where its stored length says");
    start = end[3];
  }
  // The rest one chunk at a time, with bounds-checked peeks near the end of the stream.
  for (; c < nchunks; ++c) {
    const uint64_t base = uint64_t{c} * chunk;
    const uint64_t syms = std::min<uint64_t>(chunk, h.count - base);
    uint64_t p = start;
    uint64_t j = 0;
    for (; j < syms && p + 16 <= fast_end; ++j) {
      uint32_t e = table[(__builtin_bswap64(load<uint64_t>(s + (p >> 3))) << (p & 7)) >> drop];
      emit(base + j, e >> 8);
      p += e & 31;
      seen |= e;
    }
    for (; j < syms; ++j) {
      uint32_t e = table[peek_bits(s, n, p) >> drop];
      emit(base + j, e >> 8);
      p += e & 31;
      seen |= e;
    }
    if (p != start + bits[c]) {
      if (c + 1 < nchunks) refuse("Huffman chunk does not end where its stored length says");
      last_off = true;
    }
    start += bits[c];
  }
  if (last_off) refuse("Huffman last chunk does not end where its stored length says");
  if (seen & kNoCode) refuse("Huffman stream holds a bit pattern that is no code of its table");
}

// Read a stream's `count` symbols (packed or Huffman) as emit(position, symbol).
template <typename Emit>
void read_symbols(const SymbolStream& st, uint64_t count, Emit&& emit) {
  if (st.coding == Coding::kHuffman) {
    huffman_decode(parse_table(st.table), st.data, emit);
    return;
  }
  const uint8_t* d = st.data.data;
  const size_t n = st.data.size;
  const unsigned bits = st.bits;
  if (bits == 8) {
    for (uint64_t i = 0; i < count; ++i) emit(i, d[i]);
    return;
  }
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  // The 4-byte window of value i stays inside the section while i * bits / 8 + 4 <= n.
  const uint64_t fast = n >= 4 ? std::min<uint64_t>(count, ((uint64_t{n} - 4) * 8) / bits + 1) : 0;
  uint64_t i = 0;
  for (; i < fast; ++i) {
    uint64_t bit = i * bits;
    emit(i, (load<uint32_t>(d + (bit >> 3)) >> (bit & 7)) & mask);
  }
  for (; i < count; ++i) emit(i, packed_at(d, n, i, bits));
}

// -- values --------------------------------------------------------------------------------------------------
// binary16 -> binary32/binary64 bits, exactly: subnormals normalised, infinities kept, NaN payloads shifted up
// and never quieted (numpy's astype keeps signalling NaNs; a hardware conversion may not).
template <typename U>
U widen_half(uint16_t h) {
  constexpr bool wide = sizeof(U) == 8;
  constexpr int mant_bits = wide ? 52 : 23, exp_max = wide ? 0x7FF : 0xFF, bias = wide ? 1023 : 127;
  const U sign = U{static_cast<U>(h >> 15)} << (mant_bits + (wide ? 11 : 8));
  int exp = (h >> 10) & 0x1F;
  U mant = h & 0x3FF;
  if (exp == 0x1F) return sign | (U{static_cast<U>(exp_max)} << mant_bits) | (mant << (mant_bits - 10));
  if (exp == 0) {
    if (!mant) return sign;
    int e = -14;
    while (!(mant & 0x400)) {
      mant <<= 1;
      --e;
    }
    return sign | (U{static_cast<U>(e + bias)} << mant_bits) | ((mant & 0x3FF) << (mant_bits - 10));
  }
  return sign | (U{static_cast<U>(exp - 15 + bias)} << mant_bits) | (mant << (mant_bits - 10));
}

// The codebook as U bit patterns, padded to 256 entries with zeros: a packed index of up to 8 bits then always
// reads inside it, and the range check on the largest index runs after the stream is read, as the reference's.
template <typename U>
std::array<U, 256> read_codebook(const PackedWeight& w) {
  std::array<U, 256> book{};
  for (unsigned i = 0; i < w.k; ++i) {
    if (w.half_book) book[i] = widen_half<U>(load<uint16_t>(w.codebook.data + 2 * i));
    else book[i] = load<U>(w.codebook.data + sizeof(U) * i);
  }
  return book;
}

void check_index(uint32_t largest, const PackedWeight& w) {
  if (w.count && largest >= w.k)
    refuse("index " + decimal(largest) + " outside the codebook of " + decimal(w.k));
}

template <typename U>
void decode_typed(const PackedWeight& w, uint8_t* out_bytes) {
  U* out = reinterpret_cast<U*>(out_bytes);  // U has the element's size; memcpy-free stores need its alignment
  const uint64_t count = w.count;
  if (w.scheme == Scheme::kPlain) {
    if (w.values.size) std::memcpy(out_bytes, w.values.data, w.values.size);
    return;
  }
  if (w.scheme == Scheme::kCodebook) {
    const std::array<U, 256> book = read_codebook<U>(w);
    if (w.indices.coding == Coding::kNone) {
      std::fill(out, out + count, book[0]);
      return;
    }
    uint32_t largest = 0;
    read_symbols(w.indices, count, [&](uint64_t i, uint32_t s) {
      largest = std::max(largest, s);
      out[i] = book[s & 0xFF];
    });
    check_index(largest, w);
    return;
  }
  // Sparse: entry values first (raw or through the codebook), then the gaps, then the positions (stack._decode).
  std::vector<U> values(static_cast<size_t>(count));
  if (w.k == 0) {
    if (count) std::memcpy(values.data(), w.values.data, w.values.size);  // memcpy: never with null pointers
  } else {
    const std::array<U, 256> book = read_codebook<U>(w);
    if (w.indices.coding == Coding::kNone) {
      std::fill(values.begin(), values.end(), book[0]);
    } else {
      uint32_t largest = 0;
      read_symbols(w.indices, count, [&](uint64_t i, uint32_t s) {
        largest = std::max(largest, s);
        values[i] = book[s & 0xFF];
      });
      check_index(largest, w);
    }
  }
  std::vector<uint16_t> gaps(static_cast<size_t>(count));
  read_symbols(w.gaps, count, [&](uint64_t i, uint32_t s) { gaps[i] = static_cast<uint16_t>(s); });
  // Entry i lands at sum(gaps[:i + 1] + 1) - 1; positions strictly increase, so only the last needs a check.
  uint64_t end = 0;
  for (uint16_t g : gaps) end += uint64_t{g} + 1;
  if (count && end - 1 >= w.size)
    refuse("sparse gaps reach position " + decimal(end - 1) + " of a tensor of " + decimal(w.size) + " elements");
  // The output is zeroed window by window just ahead of the entries that land in it: one pass over its memory,
  // not a memset pass and then a scatter pass.
  constexpr uint64_t kWindow = 16384;
  uint64_t i = 0, next = count ? gaps[0] : 0;
  for (uint64_t a = 0; a < w.size; a += kWindow) {
    const uint64_t b = std::min(w.size, a + kWindow);
    std::memset(out + a, 0, (b - a) * sizeof(U));
    for (; i < count && next < b; ++i) {
      out[next] = values[i];
      if (i + 1 < count) next += uint64_t{gaps[i + 1]} + 1;
    }
  }
}

// -- parsing (blob.py _from_blob, _check_meta, _check_sections) ----------------------------------------------
void parse(const uint8_t* data, size_t len, const DecodeLimits* given, PackedWeight* w) {
  if (len < kHeaderBytes) refuse("truncated (" + decimal(len) + " bytes, the header alone is 16)");
  if (std::memcmp(data, "OCPW", 4) != 0)
    refuse("wrong magic " + py_bytes_repr(data, 4) + " (expected b'OCPW'): not an onnxcomp packed weight");
  const uint16_t version = load<uint16_t>(data + 4), flags = load<uint16_t>(data + 6);
  const uint32_t meta_len = load<uint32_t>(data + 8), crc = load<uint32_t>(data + 12);
  if (version != 1 && version != 2)
    refuse("format version " + decimal(version) + " is not supported (this onnxcomp reads versions 1 and 2)");
  if ((flags & ~kHalfBook) || (flags && version == 1)) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "%#x", flags);
    refuse(std::string("unknown flags ") + (flags ? hex : "0x0"));
  }
  if (kHeaderBytes + uint64_t{meta_len} > len)
    refuse("truncated: the meta block needs " + decimal(meta_len) + " bytes, " + decimal(len - kHeaderBytes) +
           " remain");
  if (crc32_sliced(data + kHeaderBytes, len - kHeaderBytes) != crc) refuse("CRC mismatch (the data is corrupt)");
  if (version == 1)  // FORMAT.md 8 allows a native decoder to leave the JSON meta out
    refuse("format version 1 is not supported by onnxcomp's native decoder (its JSON meta is read by the Python "
           "decoder: onnxcomp unpack)");
  Meta m = parse_meta(data + kHeaderBytes, meta_len);
  const bool half = flags & kHalfBook;

  // _check_meta, in its order.
  for (Big d : m.shape)
    if (d >> 63) refuse("invalid shape " + py_list(m.shape, decimal));
  Big size = 1;
  bool zero = std::find(m.shape.begin(), m.shape.end(), Big{0}) != m.shape.end();
  for (Big d : m.shape) size = zero ? 0 : std::min<Big>(size * d, Big{kMaxElements} + 1);  // d < 2^63: no overflow
  if (size > kMaxElements) refuse("shape " + py_list(m.shape, decimal) + " has more than 4294967296 elements");
  const char* dtype = kDtypeNames[m.dtype];
  const char* scheme = kSchemeNames[m.scheme];
  const bool float_weight = m.dtype == static_cast<uint8_t>(BlobDType::kFloat32) ||
                            m.dtype == static_cast<uint8_t>(BlobDType::kFloat64);
  if (half && (!float_weight || !m.has_k || !m.k))
    refuse(std::string("a float16 codebook is invalid for a ") + dtype + " weight of scheme " + quoted(scheme) +
           " without one");
  if (m.scheme == static_cast<uint8_t>(Scheme::kCodebook) && (m.k < 1 || m.k > kMaxCodebook))
    refuse("invalid codebook size " + decimal(m.k));
  if (m.scheme == static_cast<uint8_t>(Scheme::kSparse) &&
      (m.k > kMaxCodebook || m.gap_bits < 1 || m.gap_bits > kMaxGapBits || m.count > size))
    refuse("invalid sparse parameters (codebook size, gap width or entry count)");
  const unsigned k = static_cast<unsigned>(m.k);  // <= 256 from here on
  const unsigned index_bits = bit_length(k ? k - 1 : 0);
  if (m.has_index_coding && (k == 1) != (m.index_coding == static_cast<uint8_t>(Coding::kNone)))
    refuse("invalid index coding " + quoted(kIndexCodingNames[m.index_coding]) + " / " + decimal(index_bits) +
           " bits for a codebook of " + decimal(k));

  // Sizes against the blob, then the sections as the reference's dict holds them: a repeated name keeps its
  // first place and its last bytes.
  const uint64_t offset = kHeaderBytes + uint64_t{meta_len};
  Big sum = 0;
  for (const auto& s : m.sections) sum += s.second;
  if (offset + sum != len)
    refuse("sections add up to " + decimal(sum) + " bytes but " + decimal(len - offset) + " are stored");
  std::vector<uint8_t> names;
  ByteSpan found[6];
  uint64_t at = offset;
  for (const auto& s : m.sections) {
    if (std::find(names.begin(), names.end(), s.first) == names.end()) names.push_back(s.first);
    found[s.first] = ByteSpan{data + at, static_cast<size_t>(s.second)};
    at += static_cast<uint64_t>(s.second);
  }

  w->dtype = static_cast<BlobDType>(m.dtype);
  w->scheme = static_cast<Scheme>(m.scheme);
  w->half_book = half;
  w->shape.assign(m.shape.begin(), m.shape.end());
  w->size = static_cast<uint64_t>(size);
  w->count = m.scheme == static_cast<uint8_t>(Scheme::kSparse) ? static_cast<uint64_t>(m.count) : w->size;
  w->k = k;
  const uint64_t itemsize = dtype_itemsize(w->dtype), count = w->count;

  // _check_sections: the expected names and fixed sizes (-1: a Huffman stream or table, checked on its own).
  std::vector<std::pair<uint8_t, int64_t>> expected;
  auto expect_stream = [&](uint8_t name, Coding coding, unsigned bits) {
    if (coding == Coding::kPacked) expected.emplace_back(name, static_cast<int64_t>(packed_size(count, bits)));
    if (coding == Coding::kHuffman) {
      expected.emplace_back(name, -1);
      expected.emplace_back(static_cast<uint8_t>(name + 1), -1);
    }
  };
  if (w->scheme == Scheme::kPlain || (w->scheme == Scheme::kSparse && k == 0)) {
    expected.emplace_back(kValues, static_cast<int64_t>(count * itemsize));
  } else {
    expected.emplace_back(kCodebook, static_cast<int64_t>(k * (half ? 2 : itemsize)));
    w->indices.coding = static_cast<Coding>(m.index_coding);
    w->indices.bits = index_bits;
    expect_stream(kIndices, w->indices.coding, index_bits);
  }
  if (w->scheme == Scheme::kSparse) {
    w->gaps.coding = static_cast<Coding>(m.gap_coding);
    w->gaps.bits = m.gap_bits;
    expect_stream(kGaps, w->gaps.coding, m.gap_bits);
  }
  bool same = names.size() == expected.size();
  for (size_t i = 0; same && i < names.size(); ++i) same = names[i] == expected[i].first;
  if (!same) {
    auto name = [](uint8_t code) { return quoted(kSectionNames[code]); };
    std::vector<uint8_t> want;
    for (const auto& e : expected) want.push_back(e.first);
    refuse("sections " + py_list(names, name) + " do not match scheme " + quoted(scheme) + " (" +
           py_list(want, name) + ")");
  }
  for (const auto& e : expected) {
    const ByteSpan& got = found[e.first];
    if (e.second >= 0 && got.size != static_cast<uint64_t>(e.second))
      refuse("section " + quoted(kSectionNames[e.first]) + " is " + decimal(got.size) + " bytes, expected " +
             decimal(static_cast<uint64_t>(e.second)));
    if (e.first == kIndicesHuffman || e.first == kGapsHuffman) {
      HuffmanTable t = parse_table(got);
      uint64_t limit = e.first == kIndicesHuffman ? k : uint64_t{1} << m.gap_bits;
      if (t.count != count || t.alphabet > limit)
        refuse("Huffman table " + quoted(kSectionNames[e.first]) + " codes " + decimal(t.count) + " symbols of " +
               decimal(t.alphabet) + ", expected " + decimal(count) + " below " + decimal(limit));
    }
  }
  w->values = found[kValues];
  w->codebook = found[kCodebook];
  w->indices.data = found[kIndices];
  w->indices.table = found[kIndicesHuffman];
  w->gaps.data = found[kGaps];
  w->gaps.table = found[kGapsHuffman];

  // Before anything is allocated: a 1-entry codebook or a sparse blob can state 2^32 elements in a few bytes.
  std::string why = size_refusal(len, w->size * itemsize, given);
  if (!why.empty()) refuse("shape " + py_list(m.shape, decimal) + ": " + why);
}

}  // namespace

size_t dtype_itemsize(BlobDType dtype) {
  static const size_t kSizes[] = {2, 4, 8, 1, 1};
  return kSizes[static_cast<int>(dtype)];
}

const char* dtype_name(BlobDType dtype) { return kDtypeNames[static_cast<int>(dtype)]; }

int dtype_onnx(BlobDType dtype) {
  static const int kOnnx[] = {10, 1, 11, 3, 2};  // FLOAT16, FLOAT, DOUBLE, INT8, UINT8
  return kOnnx[static_cast<int>(dtype)];
}

bool parse_blob(const uint8_t* blob, size_t size, const DecodeLimits* limits, PackedWeight* weight,
                DecodeError* error) {
  try {
    PackedWeight w;
    parse(blob, size, limits, &w);
    *weight = std::move(w);
    return true;
  } catch (const Refusal& r) {
    *error = DecodeError{r.message, r.malformed};
  } catch (const std::bad_alloc&) {
    *error = DecodeError{"out of memory while parsing the blob", false};
  }
  return false;
}

bool decode_blob(const PackedWeight& weight, uint8_t* out, DecodeError* error) {
  try {
    switch (dtype_itemsize(weight.dtype)) {
      case 1: decode_typed<uint8_t>(weight, out); break;
      case 2: decode_typed<uint16_t>(weight, out); break;
      case 4: decode_typed<uint32_t>(weight, out); break;
      default: decode_typed<uint64_t>(weight, out); break;
    }
    return true;
  } catch (const Refusal& r) {
    *error = DecodeError{r.message, r.malformed};
  } catch (const std::bad_alloc&) {
    *error = DecodeError{"out of memory while decoding the blob", false};
  }
  return false;
}

uint32_t crc32(const uint8_t* data, size_t size) { return crc32_sliced(data, size); }

std::string python_str_repr(const std::string& text) {
  bool single = text.find('\'') != std::string::npos, dbl = text.find('"') != std::string::npos;
  char quote = single && !dbl ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : text) {
    if (c == quote || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char hex[5];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);  // UTF-8 bytes of printable text pass through, as repr() keeps them
    }
  }
  return out + quote;
}

std::string error_text(const DecodeError& error, const std::string& name) {
  return error.malformed ? "malformed packed weight " + python_str_repr(name) + ": " + error.message : error.message;
}

}  // namespace onnxcomp
