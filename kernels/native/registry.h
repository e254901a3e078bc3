// The op registry of onnxcomp's native custom-op library: every kernel file registers its op factory with a
// static RegisterOp object, and RegisterCustomOps (ops.cc) adds them all to the ai.onnxcomp domain. Kernel files
// never touch each other or ops.cc.
#pragma once

#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT
#include "onnxruntime_lite_custom_op.h"

namespace onnxcomp {

// The oldest onnxruntime C API the library asks for and declares in its ops: setup.py admits onnxruntime >= 1.18.
// The lite custom-op API stamps ops with the headers' ORT_API_VERSION (21 for Debian trixie's 1.21 headers),
// which an older runtime refuses ("Unsupported version"), so RegisterCustomOps overrides it with this one.
constexpr uint32_t kMinOrtApiVersion = 18;

using OpFactory = Ort::Custom::OrtLiteCustomOp* (*)();

std::vector<OpFactory>& op_factories();

struct RegisterOp {
  explicit RegisterOp(OpFactory factory) { op_factories().push_back(factory); }
};

}  // namespace onnxcomp
