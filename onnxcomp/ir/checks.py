"""What a model must satisfy before onnxcomp works on it: checks on the parsed protobuf, and sparse tensors read.

Protobuf parses many byte strings that are not valid ONNX: a truncated file, a flipped byte, a hand-edited model.
:func:`check_model_proto` turns every such defect that would otherwise surface deep inside graphsurgeon, numpy or
onnxruntime into one :class:`~onnxcomp.errors.ModelLoadError` naming the tensor, node or field:

1. structure: a graph, an IR version, opsets, outputs, every name read is defined (in scope: subgraphs see outer
   names);
2. text: every string field is valid UTF-8 (protobuf hands invalid ones back as bytes);
3. tensors: a known, defined element type; non-negative dims; data whose size matches the dims (raw bytes or the
   typed field); a decoded size within :func:`onnxcomp.limits.limit` ("tensor");
4. attributes: a defined type whose field is set, and the type the op's schema wants (an INT ``transB`` stored as
   FLOAT is refused, not read as 0);
5. sparse tensors (``graph.sparse_initializer``, Constant ``sparse_value``) are read exactly into dense
   initializers of their own dtype: values at their (linear or coordinate) indices, zeros elsewhere; indices out of
   range, repeated, or not matching the values are refused.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.defs
from google.protobuf.descriptor import FieldDescriptor
from onnx import numpy_helper

from onnxcomp import limits
from onnxcomp.errors import ModelLoadError
from onnxcomp.ir.proto import subgraphs, walk_tensors

_T = onnx.TensorProto
_A = onnx.AttributeProto
_SUB_BYTE = {_T.INT4: 4, _T.UINT4: 4, _T.FLOAT4E2M1: 4, _T.INT2: 2, _T.UINT2: 2}
_TYPED_FIELD = {_T.FLOAT: "float_data", _T.COMPLEX64: "float_data", _T.DOUBLE: "double_data",
                _T.COMPLEX128: "double_data", _T.INT64: "int64_data", _T.UINT32: "uint64_data",
                _T.UINT64: "uint64_data", _T.STRING: "string_data"}  # every other type: int32_data
_ATTR_FIELD = {_A.FLOAT: "f", _A.INT: "i", _A.STRING: "s", _A.TENSOR: "t", _A.GRAPH: "g",
               _A.SPARSE_TENSOR: "sparse_tensor", _A.TYPE_PROTO: "tp", _A.FLOATS: "floats", _A.INTS: "ints",
               _A.STRINGS: "strings", _A.TENSORS: "tensors", _A.GRAPHS: "graphs", _A.SPARSE_TENSORS: "sparse_tensors",
               _A.TYPE_PROTOS: "type_protos"}


def check_model_proto(proto: onnx.ModelProto, where: str) -> None:
    """Rules 1-5 of the module docstring on ``proto`` (changed in place only by rule 5)."""
    _check_strings(proto, where)
    _check_structure(proto, where)
    _densify_sparse(proto, where)
    for tensor in walk_tensors(proto.graph):
        _check_tensor(tensor, where)
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    _check_attributes(proto.graph, opsets, where)


# -- 1. structure ----------------------------------------------------------------------------------------------
def _check_structure(proto: onnx.ModelProto, where: str) -> None:
    """Cheap structural checks that catch non-ONNX and truncated files that protobuf happened to parse."""
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise ModelLoadError(f"{where} is not an ONNX model (no graph or IR version)")
    if not len(proto.opset_import):
        raise ModelLoadError(f"{where} is not a valid ONNX model (no opset_import)")
    if not len(proto.graph.output):
        raise ModelLoadError(f"{where} is not a valid ONNX model (the graph has no outputs)")
    _check_defined(proto.graph, set(), where)


def _check_defined(graph: onnx.GraphProto, outer: set[str], where: str) -> None:
    known = set(outer)
    known.update(i.name for i in graph.input)
    known.update(t.name for t in graph.initializer)
    known.update(t.values.name for t in graph.sparse_initializer)
    given = known - set(outer)
    produced: set[str] = set()
    for node in graph.node:
        for name in node.output:
            if name and (name in produced or name in given):
                other = "an output of another node" if name in produced else "an input or initializer"
                raise ModelLoadError(f"{where} is not a valid ONNX model: tensor {name!r} is defined twice (node "
                                     f"{node.name or node.op_type!r} writes a name that is already {other})")
            produced.add(name)
        known.update(node.output)
    for node in graph.node:
        for name in node.input:
            if name and name not in known:
                raise ModelLoadError(
                    f"{where} is not a valid ONNX model: node {node.name or node.op_type!r} reads {name!r}, "
                    "which nothing defines (truncated file or missing weights?)"
                )
        for sub in subgraphs(node):
            _check_defined(sub, known, where)
    for out in graph.output:
        if out.name not in known:
            raise ModelLoadError(f"{where} is not a valid ONNX model: graph output {out.name!r} is never produced")


# -- 2. text ---------------------------------------------------------------------------------------------------
def _check_strings(message, where: str, path: str = "") -> None:
    """Every string field of ``message`` and the messages inside it holds text (protobuf returns bytes where the
    UTF-8 is invalid)."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_STRING:
            for v in value if field.is_repeated else [value]:
                if isinstance(v, bytes):
                    raise ModelLoadError(f"{where} is not a valid ONNX model: {path + field.name} holds invalid "
                                         f"UTF-8 ({v[:16]!r})")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if field.is_repeated else [value]
            for i, item in enumerate(items):
                _check_strings(item, where, f"{path}{field.name}[{i}].")


# -- 3. tensors ------------------------------------------------------------------------------------------------
def _element_bits(tensor: onnx.TensorProto, where: str) -> int:
    name = tensor.name or "(unnamed)"
    if tensor.data_type == _T.UNDEFINED:
        raise ModelLoadError(f"{where} is not a valid ONNX model: tensor {name!r} has no element type")
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    except (KeyError, ValueError, TypeError):
        raise ModelLoadError(f"{where} is not a valid ONNX model: tensor {name!r} has the unknown element type "
                             f"{tensor.data_type}") from None
    return _SUB_BYTE.get(tensor.data_type, np.dtype(dtype).itemsize * 8)


def _check_tensor(tensor: onnx.TensorProto, where: str) -> None:
    name = tensor.name or "(unnamed)"
    bits = _element_bits(tensor, where)
    if any(d < 0 for d in tensor.dims):
        raise ModelLoadError(f"{where} is not a valid ONNX model: tensor {name!r} has negative dims "
                             f"{list(tensor.dims)}")
    size = math.prod(tensor.dims)
    nbytes = (size * bits + 7) // 8
    why = limits.over("tensor", nbytes) if tensor.data_type != _T.STRING else None
    if why:
        raise ModelLoadError(f"{where}: tensor {name!r} of shape {list(tensor.dims)}: {why}")
    if tensor.data_location == _T.EXTERNAL and not tensor.raw_data:
        return  # data not loaded (a model given as bytes): onnxruntime reads it from its file
    if tensor.raw_data:
        if tensor.data_type != _T.STRING and len(tensor.raw_data) != nbytes:
            raise ModelLoadError(f"{where} is not a valid ONNX model: tensor {name!r} holds "
                                 f"{len(tensor.raw_data):,} bytes of data for {size:,} elements of "
                                 f"{_T.DataType.Name(tensor.data_type)} ({nbytes:,} B): corrupt or truncated")
        return
    count = len(getattr(tensor, _TYPED_FIELD.get(tensor.data_type, "int32_data")))
    expected = {size * 2} if tensor.data_type in (_T.COMPLEX64, _T.COMPLEX128) else {size}
    if tensor.data_type in _SUB_BYTE:
        expected |= {nbytes, (size * bits + 31) // 32}
    if count not in expected:
        what = "no data" if count == 0 else f"{count:,} values"
        raise ModelLoadError(f"{where} is not a valid ONNX model: tensor {name!r} of shape {list(tensor.dims)} "
                             f"holds {what} for its {size:,} elements")


# -- 4. attributes ---------------------------------------------------------------------------------------------
def _check_attributes(graph: onnx.GraphProto, opsets: dict[str, int], where: str) -> None:
    for node in graph.node:
        label = f"node {node.name or node.op_type!r} ({node.op_type})"
        schema = _schema(node, opsets)
        for attr in node.attribute:
            if attr.ref_attr_name:
                continue  # a function's attribute reference: typed by the caller
            field = _ATTR_FIELD.get(attr.type)
            if field is None:
                raise ModelLoadError(f"{where} is not a valid ONNX model: attribute {attr.name!r} of {label} has "
                                     f"no valid type ({attr.type})")
            wanted = schema.attributes.get(attr.name) if schema is not None else None
            if wanted is not None and wanted.type != _A.UNDEFINED and int(wanted.type) != attr.type:
                raise ModelLoadError(f"{where} is not a valid ONNX model: attribute {attr.name!r} of {label} is "
                                     f"{_A.AttributeType.Name(attr.type)}, its schema wants "
                                     f"{_A.AttributeType.Name(int(wanted.type))}")
        for sub in subgraphs(node):
            _check_attributes(sub, opsets, where)


def _schema(node: onnx.NodeProto, opsets: dict[str, int]):
    domain = "" if node.domain in ("", "ai.onnx") else node.domain
    version = opsets.get(domain, opsets.get("ai.onnx") if domain == "" else None)
    if version is None:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


# -- 5. sparse tensors -----------------------------------------------------------------------------------------
def _densify_sparse(proto: onnx.ModelProto, where: str) -> None:
    def visit(graph: onnx.GraphProto) -> None:
        for sparse in graph.sparse_initializer:
            graph.initializer.append(_dense(sparse, where))
        del graph.sparse_initializer[:]
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == _A.SPARSE_TENSOR:
                    if node.op_type != "Constant" or attr.name != "sparse_value":
                        raise ModelLoadError(f"{where}: node {node.name or node.op_type!r} has a sparse tensor "
                                             f"attribute {attr.name!r}, which onnxcomp reads only as a Constant's "
                                             "sparse_value")
                    attr.t.CopyFrom(_dense(attr.sparse_tensor, where))
                    attr.ClearField("sparse_tensor")
                    attr.name, attr.type = "value", _A.TENSOR
            for sub in subgraphs(node):
                visit(sub)

    visit(proto.graph)


def _dense(sparse: onnx.SparseTensorProto, where: str) -> onnx.TensorProto:
    """The dense tensor a SparseTensorProto stands for: its values' dtype, zeros where no index points."""
    name = sparse.values.name or "(unnamed)"
    bad = f"{where} is not a valid ONNX model: sparse tensor {name!r}"
    dims = list(sparse.dims)
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{bad} has negative dims {dims}")
    size = math.prod(dims)
    bits = _element_bits(sparse.values, where)
    why = limits.over("tensor", (size * bits + 7) // 8)
    if why:
        raise ModelLoadError(f"{where}: sparse tensor {name!r} of shape {dims}: {why}")
    for part in (sparse.values, sparse.indices):
        _check_tensor(part, where)
    values = numpy_helper.to_array(sparse.values).reshape(-1)
    if sparse.indices.data_type != _T.INT64:
        raise ModelLoadError(f"{bad} has {_T.DataType.Name(sparse.indices.data_type)} indices (INT64 expected)")
    indices = numpy_helper.to_array(sparse.indices)
    if indices.ndim == 2 and indices.shape[1] == len(dims) and len(dims) > 0:
        if np.any(indices < 0) or np.any(indices >= np.array(dims)):
            raise ModelLoadError(f"{bad} has an index outside its shape {dims}")
        linear = np.ravel_multi_index(tuple(indices.T), dims) if len(indices) else indices[:, 0]
    elif indices.ndim == 1:
        linear = indices
    else:
        raise ModelLoadError(f"{bad}: indices of shape {list(indices.shape)} fit neither [NNZ] nor [NNZ, {len(dims)}]")
    if linear.size != values.size:
        raise ModelLoadError(f"{bad} has {linear.size} indices for {values.size} values")
    if linear.size and (linear.min() < 0 or linear.max() >= size):
        raise ModelLoadError(f"{bad} has an index outside its {size} elements")
    if np.unique(linear).size != linear.size:
        raise ModelLoadError(f"{bad} repeats an index")
    dense = np.zeros(size, dtype=values.dtype)
    dense[linear] = values
    tensor = numpy_helper.from_array(dense.reshape(dims), sparse.values.name)
    if tensor.data_type != sparse.values.data_type:  # e.g. bfloat16, which numpy holds in another dtype
        tensor.data_type = sparse.values.data_type
    return tensor
