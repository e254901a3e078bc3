// ai.onnxcomp.DecodeWeight (kernels/schema.py): one uint8 input `blob`, one output `weight` whose element type
// and shape the blob holds (attributes `dtype` and `shape` repeat them). The blob is a constant initializer in
// every model onnxcomp writes, so the kernel decodes it once, when onnxruntime creates the kernel, and each run
// copies the cached weight out; a blob fed at run time is decoded in every run. A malformed blob fails session
// creation (or the run) with the Python reference's message, "malformed packed weight '<output>': <reason>".
//
// The op is declared by hand on top of the lite custom-op object (names, versions, domain bookkeeping) because
// the lite API derives its types from a Compute signature, and this op's output type depends on an attribute:
// the output is declared of any tensor type, the shape inference function sets it from `dtype`, and the kernel
// checks what onnxruntime allocated against what the blob holds.
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "blob_decoder.h"
#include "registry.h"

namespace onnxcomp {
namespace {

// The attribute values of one node, with whether the node has them (the reference checks only given ones).
struct NodeAttributes {
  bool has_shape = false, has_dtype = false;
  std::vector<int64_t> shape;
  int64_t dtype = 0;
};

// An ints attribute through the C API: the C++ wrapper throws when it is absent, and absence is not an error.
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

bool read_int(const OrtApi& api, const OrtKernelInfo* info, const char* name, int64_t* out) {
  if (OrtStatus* s = api.KernelInfoGetAttribute_int64(info, name, out)) {
    api.ReleaseStatus(s);
    return false;
  }
  return true;
}

std::string int_list(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + std::to_string(v[i]);
  return out + "]";
}

class DecodeWeightKernel {
 public:
  DecodeWeightKernel(const OrtApi& api, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo kernel_info(info);
    name_ = kernel_info.GetOutputName(0);
    attrs_.has_shape = read_ints(api, info, "shape", &attrs_.shape);
    attrs_.has_dtype = read_int(api, info, "dtype", &attrs_.dtype);
    int is_constant = 0;
    Ort::ConstValue blob = kernel_info.GetTensorConstantInput(0, &is_constant);
    if (is_constant) {
      // Decode now: onnxruntime keeps the kernel for the session's life, and each run only copies.
      PackedWeight w = parse(blob);
      cached_bytes_ = w.output_bytes();
      // Not value-initialised: the decoder writes every byte, and a zeroing pass costs as much as a sparse decode.
      cached_.reset(new uint8_t[cached_bytes_ ? cached_bytes_ : 1]);
      decode(w, cached_.get());
      shape_ = w.shape;
      dtype_ = w.dtype;
      constant_ = true;
    }
  }

  void Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    if (constant_) {
      Ort::UnownedValue out = output(ctx, shape_, dtype_);
      if (cached_bytes_) std::memcpy(out.GetTensorMutableRawData(), cached_.get(), cached_bytes_);
      return;
    }
    Ort::ConstValue blob = ctx.GetInput(0);
    PackedWeight w = parse(blob);
    Ort::UnownedValue out = output(ctx, w.shape, w.dtype);
    decode(w, static_cast<uint8_t*>(out.GetTensorMutableRawData()));
  }

 private:
  [[noreturn]] void fail(const DecodeError& e) const { throw Ort::Exception(error_text(e, name_), ORT_INVALID_ARGUMENT); }
  [[noreturn]] void fail(const std::string& reason) const { fail(DecodeError{reason, true}); }

  // Parse the blob, then check the node's attributes against it (kernels/reference.decode_weight's order).
  PackedWeight parse(const Ort::ConstValue& blob) const {
    auto info = blob.GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
      fail("the blob is not uint8, DecodeWeight reads uint8");  // the op's schema already refuses it
    size_t n = info.GetElementCount();
    const uint8_t* data = n ? blob.GetTensorData<uint8_t>() : nullptr;
    PackedWeight w;
    DecodeError error;
    static const uint8_t kEmpty[1] = {0};
    if (!parse_blob(data ? data : kEmpty, n, nullptr, &w, &error)) fail(error);
    if (attrs_.has_shape && attrs_.shape != w.shape)
      fail("node attribute shape " + int_list(attrs_.shape) + " but the blob holds " + int_list(w.shape));
    if (attrs_.has_dtype && attrs_.dtype != dtype_onnx(w.dtype))
      fail("node attribute dtype " + std::to_string(attrs_.dtype) + " but the blob holds " + dtype_name(w.dtype));
    return w;
  }

  void decode(const PackedWeight& w, uint8_t* out) const {
    DecodeError error;
    if (!decode_blob(w, out, &error)) fail(error);
  }

  // The output, of the blob's shape; onnxruntime allocates it with the type the graph gave it.
  Ort::UnownedValue output(Ort::KernelContext& ctx, const std::vector<int64_t>& shape, BlobDType dtype) const {
    Ort::UnownedValue out = ctx.GetOutput(0, shape.data(), shape.size());
    int type = out.GetTensorTypeAndShapeInfo().GetElementType();
    if (type != dtype_onnx(dtype))
      fail("the node's output is of onnx element type " + std::to_string(type) + " but the blob holds " +
           dtype_name(dtype));
    return out;
  }

  std::string name_;
  NodeAttributes attrs_;
  bool constant_ = false;
  std::unique_ptr<uint8_t[]> cached_;
  size_t cached_bytes_ = 0;
  std::vector<int64_t> shape_;
  BlobDType dtype_ = BlobDType::kFloat32;
};

// The output's type and shape from the attributes, so that graph tools and onnxruntime know them without the
// blob. Missing or odd attributes leave the output as the graph declares it; the kernel reports disagreements.
OrtStatus* ORT_API_CALL infer_output(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi& api = Ort::GetApi();
  const OrtOpAttr* dtype_attr = nullptr;
  const OrtOpAttr* shape_attr = nullptr;
  auto release = [&](OrtStatus* s) {
    if (s) api.ReleaseStatus(s);
    return s == nullptr;
  };
  if (!release(api.ShapeInferContext_GetAttribute(ctx, "dtype", &dtype_attr)) || !dtype_attr ||
      !release(api.ShapeInferContext_GetAttribute(ctx, "shape", &shape_attr)) || !shape_attr)
    return nullptr;
  int64_t dtype = 0;
  size_t bytes = 0;
  if (!release(api.ReadOpAttr(dtype_attr, ORT_OP_ATTR_INT, &dtype, sizeof dtype, &bytes))) return nullptr;
  bool known = false;
  for (BlobDType d : {BlobDType::kFloat16, BlobDType::kFloat32, BlobDType::kFloat64, BlobDType::kInt8,
                      BlobDType::kUint8})
    known = known || dtype == dtype_onnx(d);
  if (!known) return nullptr;
  // ReadOpAttr with too small a buffer fails and says how many bytes the ints need.
  release(api.ReadOpAttr(shape_attr, ORT_OP_ATTR_INTS, nullptr, 0, &bytes));
  std::vector<int64_t> shape(bytes / sizeof(int64_t));
  if (!shape.empty() &&
      !release(api.ReadOpAttr(shape_attr, ORT_OP_ATTR_INTS, shape.data(), shape.size() * sizeof(int64_t), &bytes)))
    return nullptr;
  for (int64_t d : shape)
    if (d < 0) return nullptr;
  OrtTensorTypeAndShapeInfo* info = nullptr;
  OrtStatus* status = api.CreateTensorTypeAndShapeInfo(&info);
  if (!status) status = api.SetTensorElementType(info, static_cast<ONNXTensorElementDataType>(dtype));
  if (!status) status = api.SetDimensions(info, shape.data(), shape.size());
  if (!status) status = api.ShapeInferContext_SetOutputTypeShape(ctx, 0, info);
  if (info) api.ReleaseTensorTypeAndShapeInfo(info);
  return status;
}

Ort::Custom::OrtLiteCustomOp* make_op() {
  auto* op = make_status_op<DecodeWeightKernel>("DecodeWeight", {ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8},
                                                {ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED});  // set by infer_output
  op->InferOutputShapeFn = infer_output;
  return op;
}

const RegisterOp kRegister(make_op);

}  // namespace
}  // namespace onnxcomp
