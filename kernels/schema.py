"""The single source of onnxcomp's custom operator domain, op names, attributes and their version.

``DecodeWeight`` (domain ``ai.onnxcomp``, version 1)
    input ``blob``: uint8 tensor, one packed weight as written by :func:`onnxcomp.codecs.stack.to_blob`
    output ``weight``: the decoded tensor, bit-exact: float16/float32/float64 (a layer's weight), or int8/uint8
    (the integer codes of a quantized weight, which a DequantizeLinear reads)
    attributes: ``shape`` (ints) and ``dtype`` (int, an onnx.TensorProto element type: FLOAT16, FLOAT, DOUBLE,
    INT8 or UINT8): the output's shape and type, repeated from the blob so that graph tools know the output
    without decoding; they must agree with it.
    Semantics: :func:`onnxcomp.kernels.reference.decode_weight`. The op has no runtime inputs, so
    ``onnxcomp.runtime`` expands every such node into an initializer once, at load.
"""

DOMAIN = "ai.onnxcomp"
VERSION = 1

DECODE_OP = "DecodeWeight"
DECODE_ATTR_SHAPE = "shape"
DECODE_ATTR_DTYPE = "dtype"
