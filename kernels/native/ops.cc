// RegisterCustomOps: the entry point onnxruntime calls when a session registers this library
// (SessionOptions.register_custom_ops_library). It creates the ai.onnxcomp domain once and adds every op the
// kernel files registered (registry.h). Op and domain objects live in static storage: onnxruntime keeps pointers
// to them for the life of every session.
#include <memory>
#include <mutex>

#include "registry.h"

namespace onnxcomp {

std::vector<OpFactory>& op_factories() {
  static std::vector<OpFactory> factories;
  return factories;
}

namespace {
constexpr const char* kDomain = "ai.onnxcomp";
std::once_flag once;
std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>>* ops = nullptr;
}  // namespace

}  // namespace onnxcomp

extern "C" {

// The library's onnxruntime ABI: one exported function, C linkage.
__attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                 const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(onnxcomp::kMinOrtApiVersion);
  if (api == nullptr) {
    return nullptr;  // an onnxruntime older than 1.18: nothing to register; sessions fall back to the functions
  }
  Ort::InitApi(api);
  try {
    static Ort::CustomOpDomain domain{onnxcomp::kDomain};
    std::call_once(onnxcomp::once, [] {
      onnxcomp::ops = new std::vector<std::unique_ptr<Ort::Custom::OrtLiteCustomOp>>();
      for (auto factory : onnxcomp::op_factories()) {
        Ort::Custom::OrtLiteCustomOp* op = factory();
        op->version = onnxcomp::kMinOrtApiVersion;  // see kMinOrtApiVersion
        onnxcomp::ops->emplace_back(op);
        domain.Add(op);
      }
    });
    Ort::UnownedSessionOptions session_options(options);
    session_options.Add(domain);
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, e.what());
  }
  return nullptr;
}

}  // extern "C"
