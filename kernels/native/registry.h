// The op registry of onnxcomp's native custom-op library: every kernel file registers its op factory with a
// static RegisterOp object, and RegisterCustomOps (ops.cc) adds them all to the ai.onnxcomp domain. Kernel files
// never touch each other or ops.cc.
#pragma once

#include <exception>
#include <new>
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

// onnxruntime's status for an exception: no exception may cross the C boundary into onnxruntime.
inline OrtStatus* to_status(const OrtApi* api, const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const Ort::Exception& x) {
    return api->CreateStatus(x.GetOrtErrorCode(), x.what());
  } catch (const std::bad_alloc&) {
    return api->CreateStatus(ORT_FAIL, "onnxcomp kernel: out of memory");
  } catch (const std::exception& x) {
    return api->CreateStatus(ORT_FAIL, x.what());
  } catch (...) {
    return api->CreateStatus(ORT_FAIL, "onnxcomp kernel: unknown error");
  }
}

// An op on the lite machinery with hand-declared input/output types, every one required, and the V2 entry points
// that return a status: ``Kernel(const OrtApi&, const OrtKernelInfo*, kArgs...)`` may throw at creation (a
// malformed constant weight becomes a session-creation error) and ``Kernel::Compute(OrtKernelContext*)`` at run.
template <class Kernel, auto... kArgs>
Ort::Custom::OrtLiteCustomOp* make_status_op(const char* name, std::vector<ONNXTensorElementDataType> inputs,
                                             std::vector<ONNXTensorElementDataType> outputs) {
  auto* op = new Ort::Custom::OrtLiteCustomOp(name, "CPUExecutionProvider", nullptr);
  op->input_types_ = std::move(inputs);
  op->output_types_ = std::move(outputs);
  op->GetInputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op->GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op->CreateKernelV2 = [](const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                          void** kernel) -> OrtStatus* {
    try {
      *kernel = new Kernel(*api, info, kArgs...);
      return nullptr;
    } catch (...) {
      return to_status(api, std::current_exception());
    }
  };
  op->KernelComputeV2 = [](void* kernel, OrtKernelContext* context) -> OrtStatus* {
    try {
      static_cast<Kernel*>(kernel)->Compute(context);
      return nullptr;
    } catch (...) {
      return to_status(&Ort::GetApi(), std::current_exception());
    }
  };
  op->KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
  return op;
}

}  // namespace onnxcomp
