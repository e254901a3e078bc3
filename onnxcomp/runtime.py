"""onnxruntime sessions for what onnxcomp reads and writes, packed weights included.

:func:`session` builds a CPU session from a path, a ModelProto or a :class:`~onnxcomp.ir.model.Model`, with
onnxruntime's usual optimisations, and turns onnxruntime's refusal of a model into an :class:`OnnxcompError`.
Models larger than protobuf's 2 GB limit are handed to onnxruntime by path.

Packed models hold ``ai.onnxcomp.DecodeWeight`` nodes (a uint8 blob in, a float weight or the int8/uint8 codes
of a quantized weight out; see ``kernels/schema.py``). Their output never depends on the feeds, so :func:`unpack`
runs each one once with the numpy reference (:mod:`onnxcomp.kernels.reference`) and puts the result back as an
initializer of the same name and type: the model becomes plain ONNX that stock onnxruntime runs.
:func:`session` and :class:`InferenceSession` do this at load whenever a model holds such nodes.
"""

from __future__ import annotations

import functools
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from onnxcomp.errors import CodecError, ModelLoadError, RunError
from onnxcomp.ir.model import EXTERNAL_DATA_THRESHOLD, Model, save_proto
from onnxcomp.ir.proto import subgraphs
from onnxcomp.kernels import reference, schema


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


def session_options(threads: int = 0, optimize: bool = True) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.log_severity_level = 4  # errors reach the user as exceptions (one line); the log would repeat them
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
    return _create(model, threads, optimize)[0]


class InferenceSession:
    """onnxruntime's ``InferenceSession`` API (``run``, ``get_inputs``, ``get_outputs``) for any onnxcomp output.

    Built from a path, a ModelProto or a :class:`Model`; packed weights are decoded once, here, and the session
    then runs on stock onnxruntime. ``load_seconds`` is the whole construction, ``unpack_seconds`` its decoding.
    """

    def __init__(self, model: str | os.PathLike | onnx.ModelProto | Model, threads: int = 0, optimize: bool = True):
        start = time.perf_counter()
        self._session, self.unpack_seconds = _create(model, threads, optimize)
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


def _create(model: str | os.PathLike | onnx.ModelProto | Model, threads: int,
            optimize: bool) -> tuple[ort.InferenceSession, float]:
    """The session and the seconds spent decoding packed weights."""
    model = _source(model)
    so = session_options(threads, optimize)
    decoded: list[ort.OrtValue] = []
    seconds = 0.0
    if _holds_packed_weights(model):
        # Decoded main-graph weights go to onnxruntime as OrtValues over our numpy buffers (placeholders in the
        # graph), so they never pass through protobuf: no 2 GB limit, no serialisation, no copies.
        start = time.perf_counter()
        model, arrays = _decode_packed(model, external=True)
        decoded = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
        if decoded:
            so.add_external_initializers(list(arrays), decoded)
        seconds = time.perf_counter() - start
    try:
        if isinstance(model, (str, os.PathLike)):
            return _Session(str(model), so, providers=["CPUExecutionProvider"]), seconds
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
    return sess, seconds


def _decode_packed(model: str | os.PathLike | onnx.ModelProto | Model,
                   external: bool) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy without DecodeWeight nodes; with ``external``, main-graph weights come back as arrays beside it."""
    if isinstance(model, (str, os.PathLike, Model)):
        proto = Model.load(model).to_proto() if not isinstance(model, Model) else model.to_proto()
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    blobs: set[str] = set()
    arrays: dict[str, np.ndarray] | None = {} if external else None
    _expand(proto.graph, {}, blobs, arrays)
    _drop_unread(proto.graph, blobs)
    if not any(n.domain == schema.DOMAIN for n in _all_nodes(proto.graph)):
        kept = [o for o in proto.opset_import if o.domain != schema.DOMAIN]
        del proto.opset_import[:]
        proto.opset_import.extend(kept)
    return proto, arrays or {}


def _holds_packed_weights(model: str | os.PathLike | onnx.ModelProto | Model) -> bool:
    if isinstance(model, Model):
        return any(n.domain == schema.DOMAIN and n.op == schema.DECODE_OP for g in model.graphs() for n in g.nodes)
    if isinstance(model, (str, os.PathLike)):
        try:  # the graph only: external weights stay on disk for onnxruntime to read
            model = onnx.load(str(model), load_external_data=False)
        except Exception:  # not readable here: onnxruntime reports it in its own words
            return False
    return any(_is_decode(n) for n in _all_nodes(model.graph))


def _is_decode(node: onnx.NodeProto) -> bool:
    return node.domain == schema.DOMAIN and node.op_type == schema.DECODE_OP


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from _all_nodes(sub)


def _expand(graph: onnx.GraphProto, outer: dict[str, onnx.TensorProto], blobs: set[str],
            arrays: dict[str, np.ndarray] | None = None) -> None:
    """Replace this graph's DecodeWeight nodes by initializers; recurse into subgraphs with the visible tensors.

    With ``arrays`` (main graph only), the initializer is an external-data placeholder and the decoded array
    goes into ``arrays`` for onnxruntime's ``add_external_initializers``.
    """
    scope = dict(outer)
    scope.update((t.name, t) for t in graph.initializer)
    scope.update((n.output[0], a.t) for n in graph.node if n.op_type == "Constant" and n.domain in ("", "ai.onnx")
                 for a in n.attribute if a.name == "value" and n.output)
    kept, decoded = [], []
    for node in graph.node:
        if not _is_decode(node):
            kept.append(node)
            for sub in subgraphs(node):
                _expand(sub, scope, blobs)  # subgraph weights: real initializers
            continue
        label = node.output[0] if node.output else node.name
        if len(node.input) != 1 or len(node.output) != 1 or node.input[0] not in scope:
            raise CodecError(f"malformed packed weight {label!r}: a DecodeWeight node must read one constant uint8 "
                             f"blob (it reads {list(node.input)})")
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
