// Fuzz target over the standalone blob decoder (kernels/native/blob_decoder.cc), built and run by
// benchmarks/fuzz_native.py under AddressSanitizer and UndefinedBehaviorSanitizer: with clang's libFuzzer
// (-fsanitize=fuzzer), or, where only g++ is at hand, with the seeded mutation loop at the end of this file
// (-DONNXCOMP_FUZZ_DRIVER). It lives outside kernels/native/*.cc so that setup.py never links it into the
// custom-op library.
//
// Every input is decoded twice: as it is, and with its CRC recomputed. A mutated blob almost never keeps a valid
// CRC, so without the second pass the fuzzer would stop at the checksum and never reach the meta, the section
// checks, the Huffman tables or the decoding loops.
#include <cstdint>
#include <cstring>
#include <vector>

#include "../blob_decoder.h"

namespace {

// Limits well below the defaults: a crafted 4 KB blob may otherwise ask for 256 MiB (65536 x its size), and the
// fuzzer should spend its time on the parser, not on memset. The size checks themselves are the same code.
const onnxcomp::DecodeLimits kLimits{uint64_t{64} << 20, uint64_t{1} << 16};

void decode(const uint8_t* data, size_t size) {
  onnxcomp::PackedWeight weight;
  onnxcomp::DecodeError error;
  if (!onnxcomp::parse_blob(data, size, &kLimits, &weight, &error)) {
    (void)onnxcomp::error_text(error, "fuzz");
    return;
  }
  // The exact output size on the heap (uint64_t elements for alignment): a write past it is an ASan report.
  std::vector<uint64_t> out((weight.output_bytes() + 7) / 8);
  if (!onnxcomp::decode_blob(weight, reinterpret_cast<uint8_t*>(out.data()), &error))
    (void)onnxcomp::error_text(error, "fuzz");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A copy of exactly `size` bytes: the decoder reading one byte past the blob is then a heap overflow.
  std::vector<uint8_t> blob(data, data + size);
  decode(blob.data(), blob.size());
  if (size >= 16) {
    uint32_t crc = onnxcomp::crc32(blob.data() + 16, size - 16);
    std::memcpy(blob.data() + 12, &crc, 4);
    decode(blob.data(), blob.size());
  }
  return 0;
}

#ifdef ONNXCOMP_FUZZ_DRIVER
// A small mutation loop for toolchains without libFuzzer: seeds from the files named on the command line,
// random byte flips, sets, inserts, deletes, truncations and splices, for a given number of seconds.
// Usage: decode_fuzzer SECONDS SEED_FILE...
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s SECONDS SEED_FILE...\n", argv[0]);
    return 2;
  }
  const double seconds = std::atof(argv[1]);
  std::vector<std::vector<uint8_t>> pool;
  for (int i = 2; i < argc; ++i) {
    std::ifstream f(argv[i], std::ios::binary);
    pool.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  std::mt19937_64 rng(0x6f6e6e78);
  const auto start = std::chrono::steady_clock::now();
  uint64_t runs = 0;
  static const uint8_t kInteresting[] = {0, 1, 2, 7, 8, 15, 16, 31, 32, 127, 128, 255};
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
    std::vector<uint8_t> b = pool[rng() % pool.size()];
    for (int m = 1 + static_cast<int>(rng() % 4); m > 0; --m) {
      size_t at = b.empty() ? 0 : rng() % b.size();
      switch (rng() % 6) {
        case 0: if (!b.empty()) b[at] ^= static_cast<uint8_t>(1u << (rng() % 8)); break;
        case 1: if (!b.empty()) b[at] = kInteresting[rng() % sizeof kInteresting]; break;
        case 2: b.insert(b.begin() + static_cast<long>(at), static_cast<uint8_t>(rng())); break;
        case 3: if (!b.empty()) b.erase(b.begin() + static_cast<long>(at)); break;
        case 4: b.resize(at); break;
        default: {
          const auto& other = pool[rng() % pool.size()];
          if (!other.empty()) b.insert(b.begin() + static_cast<long>(at), other.begin() + rng() % other.size(),
                                       other.end());
        }
      }
    }
    LLVMFuzzerTestOneInput(b.data(), b.size());
    ++runs;
  }
  std::printf("stat::number_of_executed_units: %llu\n", static_cast<unsigned long long>(runs));
  return 0;
}
#endif
