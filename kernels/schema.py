"""The single source of onnxcomp's custom operator domain, op names, attributes and their version.

Every op is in domain ``ai.onnxcomp``, version 1. Semantics: :mod:`onnxcomp.kernels.reference` (numpy). Native
kernels: ``kernels/native/*.cc``. A model that uses the compute ops (all but DecodeWeight) also carries, for each
op, a model-local ONNX function of the same domain and name whose body computes the dense equivalent with
standard ops (:mod:`onnxcomp.emit.onnx_sparse`): stock onnxruntime inlines it, with the library registered the
native kernel runs.

``DecodeWeight`` (blob) -> weight
    input ``blob``: uint8 tensor, one packed weight as written by :func:`onnxcomp.codecs.stack.to_blob`
    output ``weight``: the decoded tensor, bit-exact: float16/float32/float64 (a layer's weight), or int8/uint8
    (the integer codes of a quantized weight, which a DequantizeLinear reads)
    attributes: ``shape`` (ints) and ``dtype`` (int, an onnx.TensorProto element type: FLOAT16, FLOAT, DOUBLE,
    INT8 or UINT8): the output's shape and type, repeated from the blob so that graph tools know the output
    without decoding; they must agree with it.
    The op has no runtime inputs, so ``onnxcomp.runtime`` expands every such node once, at load.

``SparseGemm`` (A, values, indices, bias) -> Y, and ``SparseGemmRelu`` (the same, then Relu)
    ``Y = A @ W + bias`` with ``A`` float32 ``[..., K]``, ``W`` the float32 ``[K, N]`` matrix that holds ``values``
    (float32 ``[nnz]``) at the row-major linear positions ``indices`` (int32 ``[nnz]``, strictly increasing) and 0
    elsewhere, ``bias`` float32 ``[N]``. Attribute ``shape`` = ``[K, N]``. (A MatMul with a constant ``[K, N]``
    weight, or a Gemm with ``transA = 0``, ``alpha = beta = 1``, its weight transposed to ``[K, N]`` when
    ``transB = 1``.)

``CodebookGemm`` (A, codebook, codes, bias) -> Y, and ``CodebookGemmRelu``
    ``W = codebook[codes]``: ``codebook`` float32 ``[k]`` (k <= 256), ``codes`` uint8 or uint4 ``[K, N]``.

``SparseCodebookGemm`` (A, codebook, codes, indices, bias) -> Y, and ``SparseCodebookGemmRelu``
    ``W`` holds ``codebook[codes]`` (codes uint8 or uint4 ``[nnz]``) at ``indices``, 0 elsewhere.

``SparseConv`` (X, values, indices, bias) -> Y, and ``SparseConvRelu``
    ``Y = Conv(X, W, bias)`` with ``W`` the float32 ``shape`` = ``[M, C / group, kH, kW]`` tensor holding
    ``values`` at the row-major linear positions ``indices``; attributes ``shape``, ``strides``, ``pads``
    (``[top, left, bottom, right]``), ``dilations``, ``group`` as ONNX Conv's (2-D, explicit pads).
"""

DOMAIN = "ai.onnxcomp"
VERSION = 1

DECODE_OP = "DecodeWeight"
DECODE_ATTR_SHAPE = "shape"
DECODE_ATTR_DTYPE = "dtype"

SPARSE_GEMM = "SparseGemm"
CODEBOOK_GEMM = "CodebookGemm"
SPARSE_CODEBOOK_GEMM = "SparseCodebookGemm"
SPARSE_CONV = "SparseConv"
RELU_SUFFIX = "Relu"  # SparseGemmRelu, ...: the same op with a Relu on its output
ATTR_SHAPE = "shape"
CONV_ATTRS = ("strides", "pads", "dilations", "group")

# op -> its inputs, in order (every one required)
INPUTS = {
    SPARSE_GEMM: ("A", "values", "indices", "bias"),
    CODEBOOK_GEMM: ("A", "codebook", "codes", "bias"),
    SPARSE_CODEBOOK_GEMM: ("A", "codebook", "codes", "indices", "bias"),
    SPARSE_CONV: ("X", "values", "indices", "bias"),
}
COMPUTE_OPS = tuple(INPUTS) + tuple(op + RELU_SUFFIX for op in INPUTS)


def base_op(op: str) -> tuple[str, bool]:
    """(the op without its Relu suffix, whether it has one)."""
    if op.endswith(RELU_SUFFIX) and op[: -len(RELU_SUFFIX)] in INPUTS:
        return op[: -len(RELU_SUFFIX)], True
    return op, False
