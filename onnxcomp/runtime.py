"""onnxruntime sessions for what onnxcomp reads and writes, packed weights included.

:func:`session` builds a CPU session from a path, a ModelProto or a :class:`~onnxcomp.ir.model.Model`, with
onnxruntime's usual optimisations, and turns onnxruntime's refusal of a model into an :class:`OnnxcompError`.
Models larger than protobuf's 2 GB limit are handed to onnxruntime by path.

Packed models hold ``ai.onnxcomp.DecodeWeight`` nodes (a uint8 blob in, a float weight or the int8/uint8 codes
of a quantized weight out; see ``kernels/schema.py``). Their output never depends on the feeds, so :func:`unpack`
runs each one once and puts the result back as an initializer of the same name and type: the model becomes plain
ONNX that stock onnxruntime runs. :func:`session` and :class:`InferenceSession` do this at load whenever a model
holds such nodes.

With onnxcomp's native library (:mod:`onnxcomp.kernels.library`; :func:`native_kernels` says whether it is
there) every session registers it, and the packed weights are decoded by its ``DecodeWeight`` kernel: one small
onnxruntime session holding only the DecodeWeight nodes, run once, whose outputs go on as the main session's
initializers. Without it (or for a blob the kernel does not read: format version 1, a node without a usable
``dtype`` attribute) the numpy reference (:mod:`onnxcomp.kernels.reference`) decodes them, to the same bits and
with the same errors.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxcomp.errors import CodecError, ModelLoadError, RunError
from onnxcomp.ir.model import EXTERNAL_DATA_THRESHOLD, Model, save_proto
from onnxcomp.ir.proto import subgraphs
from onnxcomp.kernels import library, reference, schema

# The element types DecodeWeight outputs (kernels/schema.py), by onnx.TensorProto code.
_WEIGHT_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8,
                 onnx.TensorProto.UINT8}
_NATIVE_BATCH_BYTES = 1 << 30  # blob bytes per decoding session: its model stays far below protobuf's 2 GB


@functools.cache
def int8_pairs_saturate() -> bool:
    """Whether this CPU runs onnxruntime's fused uint8 x int8 kernels (QLinearConv, QLinearMatMul, QGemm) with
    products summed in pairs in int16 (VPMADDUBSW): x86 with AVX2 but no VNNI. There, full-range 8-bit weights
    saturate (255 * 127 * 2 > 32767) and the fused model drifts from the QDQ model's meaning (measured on an AMD
    EPYC without VNNI: MobileNetV2 cosine to float 0.948 unfused, 0.855 fused); 7-bit weights do not
    (onnxruntime's ``reduce_range``, recipe ``int8-avx2``). VNNI and ARM dot products accumulate in int32."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        line = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("flags"))
    except (OSError, StopIteration):
        return False
    flags = set(line.split(":", 1)[1].split())
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni"}


def native_kernels() -> bool:
    """Whether onnxcomp's native custom-op library is built and on (``ONNXCOMP_NO_NATIVE`` unset): sessions then
    register it and packed weights are decoded by its kernel."""
    return library.library_path() is not None


def kernels_note(model: str | os.PathLike | onnx.ModelProto | Model) -> str | None:
    """One line when the model holds ``ai.onnxcomp`` compute ops (anything but DecodeWeight) and the native library
    is absent (they then run their model-local ONNX functions, more slowly): :func:`library.absent_reason`."""
    ops = _onnxcomp_ops(_source(model))
    return library.absent_reason() if ops - {schema.DECODE_OP} else None


def session_options(threads: int = 0, optimize: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 4  # errors reach the user as exceptions (one line); the log would repeat them
    library.register(so)  # when built: the ai.onnxcomp ops of a model run on the native kernels
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


def session(
    model: str | os.PathLike | onnx.ModelProto | Model,
    threads: int = 0,
    optimize: bool = True,
) -> ort.InferenceSession:
    return _load(model, threads, optimize).session


class InferenceSession:
    """onnxruntime's ``InferenceSession`` API (``run``, ``get_inputs``, ``get_outputs``) for any onnxcomp output.

    Built from a path, a ModelProto or a :class:`Model`; packed weights are decoded once, here, and the session
    then runs on stock onnxruntime. ``load_seconds`` is the whole construction, ``unpack_seconds`` its decoding,
    ``native_weights`` how many weights the native kernel decoded (the others: the numpy reference), and
    ``kernels_note`` the one line of :func:`kernels_note` (None when there is nothing to say).
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto | Model, threads: int = 0, optimize: bool = True):
        start = time.perf_counter()
        loaded = _load(model, threads, optimize)
        self._session, self.unpack_seconds = loaded.session, loaded.unpack_seconds
        self.native_weights, self.kernels_note = loaded.native_weights, loaded.kernels_note
        self.load_seconds = time.perf_counter() - start

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any], run_options: Any = None) -> list:
        return self._session.run(output_names, input_feed, run_options)

    def get_inputs(self) -> list:
        return self._session.get_inputs()

    def get_outputs(self) -> list:
        return self._session.get_outputs()

    def __getattr__(self, name: str) -> Any:  # get_modelmeta, get_providers, ...: onnxruntime's own
        return getattr(self._session, name)


def unpack(model: str | os.PathLike | onnx.ModelProto | Model) -> onnx.ModelProto:
    """The plain-ONNX equivalent: every ``ai.onnxcomp.DecodeWeight`` node replaced by its decoded initializer.

    A malformed blob raises :class:`~onnxcomp.errors.CodecError` naming the weight. The caller's ModelProto is
    not changed.
    """
    return _decode_packed(_source(model), external=False)[0]


def _source(model: Any) -> str | os.PathLike | onnx.ModelProto | Model:
    """What the session builders take: a path, a ModelProto or a Model (serialized bytes are loaded here)."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return Model.load(bytes(model))
    if not isinstance(model, (str, os.PathLike, onnx.ModelProto, Model)):
        raise ModelLoadError(f"cannot load a model from a {type(model).__name__}: give a path, bytes, a "
                             "ModelProto or a Model")
    return model


class _Session(ort.InferenceSession):
    """onnxruntime's session whose ``run`` failures (a Reshape that the feed's shape breaks, an op that fails on
    these values) are :class:`~onnxcomp.errors.RunError`: one line naming the node, not onnxruntime's exception."""

    def run(self, output_names, input_feed, run_options=None):
        try:
            return super().run(output_names, input_feed, run_options)
        except UnicodeDecodeError:
            raise RunError("onnxruntime failed running the model (its error message is not text)") from None
        except Exception as e:
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            raise RunError(f"onnxruntime failed running the model: {_first_line(e)}") from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass
class _Loaded:
    session: ort.InferenceSession
    unpack_seconds: float = 0.0
    native_weights: int = 0
    kernels_note: str | None = None


def _load(model: str | os.PathLike | onnx.ModelProto | Model, threads: int, optimize: bool) -> _Loaded:
    """The session, the seconds spent decoding packed weights, how many the native kernel decoded, the note."""
    model = _source(model)
    so = session_options(threads, optimize)
    decoded: list[ort.OrtValue] = []
    ops = _onnxcomp_ops(model)
    loaded = _Loaded(None, kernels_note=library.absent_reason() if ops - {schema.DECODE_OP} else None)
    if schema.DECODE_OP in ops:
        # Decoded main-graph weights go to onnxruntime as OrtValues (placeholders in the graph), so they never pass
        # through protobuf: no 2 GB limit, no serialisation, no copies.
        start = time.perf_counter()
        model, arrays, loaded.native_weights = _decode_packed(model, external=True)
        decoded = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
        if decoded:
            so.add_external_initializers(list(arrays), decoded)
        loaded.unpack_seconds = time.perf_counter() - start
    try:
        if isinstance(model, (str, os.PathLike)):
            loaded.session = _Session(str(model), so, providers=["CPUExecutionProvider"])
            return loaded
        proto = model.to_proto() if isinstance(model, Model) else model
        if proto.ByteSize() > EXTERNAL_DATA_THRESHOLD:
            with tempfile.TemporaryDirectory() as tmp:
                path = save_proto(proto, Path(tmp) / "model.onnx", external_data=True)
                sess = _Session(str(path), so, providers=["CPUExecutionProvider"])
        else:
            sess = _Session(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except UnicodeDecodeError:  # onnxruntime's message quoted bytes of a corrupt file that are not UTF-8
        raise ModelLoadError("onnxruntime cannot load the model: it is corrupt (its error message quotes bytes "
                             "that are not text)") from None
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):  # onnxruntime's Fail, NoSuchFile, InvalidGraph ...
            raise
        raise ModelLoadError(f"onnxruntime cannot load the model: {_first_line(e)}") from None
    if decoded:
        sess._onnxcomp_decoded = decoded  # onnxruntime reads these buffers: they live as long as the session
    loaded.session = sess
    return loaded


def _decode_packed(model: str | os.PathLike | onnx.ModelProto | Model,
                   external: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray], int]:
    """A copy without DecodeWeight nodes; with ``external``, main-graph weights come back as arrays beside it; and
    how many weights the native kernel decoded."""
    if isinstance(model, (str, os.PathLike, Model)):
        proto = Model.load(model).to_proto() if not isinstance(model, Model) else model.to_proto()
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    blobs: set[str] = set()
    arrays: dict[str, np.ndarray] | None = {} if external else None
    native = _native_decode(proto.graph) if native_kernels() else {}
    count = len(native)
    _expand(proto.graph, {}, blobs, arrays, native)
    _drop_unread(proto.graph, blobs)
    if not any(n.domain == schema.DOMAIN for n in _all_nodes(proto.graph)):
        kept = [o for o in proto.opset_import if o.domain != schema.DOMAIN]
        del proto.opset_import[:]
        proto.opset_import.extend(kept)
    return proto, arrays or {}, count


def _onnxcomp_ops(model: str | os.PathLike | onnx.ModelProto | Model) -> set[str]:
    """The op types of the ai.onnxcomp domain that the model's graphs (subgraphs included) use."""
    if isinstance(model, Model):
        return {n.op for g in model.graphs() for n in g.nodes if n.domain == schema.DOMAIN}
    if isinstance(model, (str, os.PathLike)):
        try:  # the graph only: external weights stay on disk for onnxruntime to read
            model = onnx.load(str(model), load_external_data=False)
        except Exception:  # not readable here: onnxruntime reports it in its own words
            return set()
    return {n.op_type for n in _all_nodes(model.graph) if n.domain == schema.DOMAIN}


def _native_decode(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The weights the native kernel decodes, by DecodeWeight output name: every node with a version-2 uint8
    blob and ``shape`` and ``dtype`` attributes, in every graph, run in onnxruntime sessions that hold only those
    nodes (one per GiB of blobs). A batch onnxruntime refuses (a malformed blob among them) is left to the numpy
    reference, which decodes it or raises its first fault, so that errors are the same with or without the library."""
    jobs = list(_native_jobs(graph, {}))
    names = [job.node.output[0] for job in jobs]
    if len(set(names)) < len(names):  # invalid ONNX: leave repeated names to the reference
        jobs = [job for job in jobs if names.count(job.node.output[0]) == 1]
    out: dict[str, np.ndarray] = {}
    batch: list[_NativeJob] = []
    size = 0
    for job in jobs:
        batch.append(job)
        size += job.blob_bytes
        if size >= _NATIVE_BATCH_BYTES:
            out.update(_native_batch(batch))
            batch, size = [], 0
    if batch:
        out.update(_native_batch(batch))
    return out


@dataclass
class _NativeJob:
    node: onnx.NodeProto
    blob: onnx.TensorProto
    blob_bytes: int
    dtype: int
    shape: list[int]


def _native_jobs(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto]) -> Iterator[_NativeJob]:
    """The DecodeWeight nodes the native kernel reads (the rest stay with the reference), subgraphs included."""
    scope = _scope(graph, outer)
    for node in graph.node:
        for sub in subgraphs(node):
            yield from _native_jobs(sub, scope)
        if not _is_decode(node) or len(node.input) != 1 or len(node.output) != 1 or node.input[0] not in scope:
            continue
        blob = scope[node.input[0]]
        attrs = {a.name: a for a in node.attribute}
        dtype, shape = attrs.get(schema.DECODE_ATTR_DTYPE), attrs.get(schema.DECODE_ATTR_SHAPE)
        if (dtype is None or dtype.type != onnx.AttributeProto.INT or dtype.i not in _WEIGHT_TYPES
                or shape is None or shape.type != onnx.AttributeProto.INTS or any(d < 0 for d in shape.ints)
                or blob.data_type != onnx.TensorProto.UINT8 or blob.data_location == onnx.TensorProto.EXTERNAL):
            continue
        raw = blob.raw_data
        if raw[4:6] == b"\x02\x00":  # format version 2 (version 1 and short blobs: the reference)
            yield _NativeJob(node, blob, len(raw), dtype.i, list(shape.ints))


def _native_batch(jobs: list[_NativeJob]) -> dict[str, np.ndarray]:
    """Run one onnxruntime session of DecodeWeight nodes (decoded once, at kernel creation); each output is
    written straight into its numpy array (an IOBinding), which then goes on to the main session."""
    graph = onnx.GraphProto(name="onnxcomp_decode")
    taken = {job.node.output[0] for job in jobs}
    for i, job in enumerate(jobs):
        name = f"onnxcomp_blob_{i}"
        while name in taken:
            name += "_"
        tensor = graph.initializer.add()
        tensor.CopyFrom(job.blob)
        tensor.name = name
        node = graph.node.add()
        node.CopyFrom(job.node)
        node.input[0] = name  # the output keeps its name: the kernel's errors name the weight as the reference does
        graph.output.append(onnx.helper.make_tensor_value_info(job.node.output[0], job.dtype, job.shape))
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13),
                                                         onnx.helper.make_opsetid(schema.DOMAIN, schema.VERSION)])
    proto.ir_version = 8
    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    try:
        if not library.register(so):
            return {}
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
        arrays = {job.node.output[0]: np.empty(job.shape, onnx.helper.tensor_dtype_to_np_dtype(job.dtype))
                  for job in jobs}
        binding = sess.io_binding()
        for name, array in arrays.items():
            binding.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(array))
        sess.run_with_iobinding(binding)
        return arrays
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        # A malformed blob (the kernel's message is the reference's) or anything else: the reference decodes this
        # batch and raises its first fault in graph order, as it would have without the library.
        return {}


def _scope(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto]) -> dict[str, onnx.TensorProto]:
    """The constant tensors a node of ``graph`` sees: the outer scope's, the graph's initializers and Constants."""
    scope = dict(outer)
    scope.update((t.name, t) for t in graph.initializer)
    scope.update((n.output[0], a.t) for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                 for a in n.attribute if a.name == "value" and n.output)
    return scope


def _is_decode(node: onnx.NodeProto) -> bool:
    return node.domain == schema.DOMAIN and node.op_type == schema.DECODE_OP


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from _all_nodes(sub)


def _expand(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto], blobs: set[str],
            arrays: dict[str, np.ndarray] | None = None, native: dict[str, np.ndarray] | None = None) -> None:
    """Replace this graph's DecodeWeight nodes by initializers; recurse into subgraphs with the visible tensors.

    With ``arrays`` (main graph only), the initializer is an external-data placeholder and the decoded weight
    goes into ``arrays`` for onnxruntime's ``add_external_initializers``. ``native`` holds the weights the native
    kernel decoded (by output name); the reference decodes the others.
    """
    scope = _scope(graph, outer)
    native = {} if native is None else native
    kept, decoded = [], []
    for node in graph.node:
        if not _is_decode(node):
            kept.append(node)
            for sub in subgraphs(node):
                _expand(sub, scope, blobs, None, native)  # subgraph weights: real initializers
            continue
        label = node.output[0] if node.output else node.name
        if len(node.input) != 1 or len(node.output) != 1 or node.input[0] not in scope:
            raise CodecError(f"malformed packed weight {label!r}: a DecodeWeight node must read one constant uint8 "
                             f"blob (it reads {list(node.input)})")
        weight = native.pop(node.output[0], None)
        if weight is None:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            blob = numpy_helper.to_array(scope[node.input[0]])
            weight = reference.decode_weight(blob, attrs.get(schema.DECODE_ATTR_SHAPE),
                                             attrs.get(schema.DECODE_ATTR_DTYPE), name=label)
        decoded.append(_placeholder(weight, node.output[0]) if arrays is not None else
                       numpy_helper.from_array(weight, node.output[0]))
        if arrays is not None:
            arrays[node.output[0]] = weight
        blobs.add(node.input[0])
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(decoded)


def _placeholder(weight: np.ndarray, name: str) -> onnx.TensorProto:
    """An initializer whose data onnxruntime takes from ``add_external_initializers``."""
    tensor = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(weight.dtype),
                              dims=weight.shape, data_location=onnx.TensorProto.EXTERNAL)
    tensor.external_data.add(key="location", value="onnxcomp-decoded-weight")
    return tensor


def _drop_unread(graph: onnx.GraphProto, blobs: set[str]) -> None:
    """Remove blob initializers (and Constant nodes) nothing reads any more, in every graph."""
    read = {name for n in _all_nodes(graph) for name in n.input}

    def walk(g: onnx.GraphProto) -> None:
        read_here = read | {o.name for o in g.output}
        dead = {name for name in blobs if name not in read_here}
        for field, name_of in ((g.initializer, lambda t: t.name), (g.input, lambda i: i.name),
                               (g.node, lambda n: n.output[0] if n.op_type == "Constant" and n.output else "")):
            for i in reversed(range(len(field))):  # in place: no copy of the (large) tensors that stay
                if name_of(field[i]) in dead:
                    del field[i]
        for n in g.node:
            for sub in subgraphs(n):
                walk(sub)

    walk(graph)
