"""Loading and saving ONNX models without losing anything the user's exporter wrote.

A :class:`Model` is an onnx-graphsurgeon graph (the mutable IR the passes work on) plus the *shell* of the
original ModelProto: every model-level field (metadata_props, doc_string, producer, model_version, domain,
opset imports, local functions, training info) is kept verbatim and written back on save. graphsurgeon does
not carry node doc strings or node metadata_props, so they are stashed by each node's first output name (node
outputs are unique in SSA form) and restored on export.

Untouched weights are written back as the very TensorProto that was read (graphsurgeon keeps lazy values), so a
load -> save round trip is bit-exact in its weights. Saving writes the lowest IR version that the model's opsets
and data types allow, so older onnxruntime builds can load the result.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import onnx.version_converter
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from onnxcomp.errors import ModelLoadError
from onnxcomp.ir.checks import check_model_proto
from onnxcomp.ir.fileio import check_output_path, check_writes, staged_dir
from onnxcomp.ir.proto import subgraphs, walk_tensors

# graphsurgeon prints its warnings (e.g. about bfloat16 tensors) on stdout, where they would corrupt
# `inspect --json`; onnxcomp reports what matters itself.
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR

# Protobuf cannot serialise a message over 2 GiB; above this many tensor bytes, weights go to external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# The lowest IR version onnxcomp writes: IR 3 required every initializer to be listed as a graph input.
_MIN_IR_VERSION = 4
# IR versions that introduced element types (int4/uint4: IR 10; float8: IR 9; float4: IR 11).
_DTYPE_MIN_IR = {
    onnx.TensorProto.INT4: 10,
    onnx.TensorProto.UINT4: 10,
    onnx.TensorProto.FLOAT8E4M3FN: 9,
    onnx.TensorProto.FLOAT8E4M3FNUZ: 9,
    onnx.TensorProto.FLOAT8E5M2: 9,
    onnx.TensorProto.FLOAT8E5M2FNUZ: 9,
    onnx.TensorProto.FLOAT4E2M1: 11,
}


class Model:
    """A loaded model: ``graph`` (onnx-graphsurgeon) is what passes change; the rest is kept as read."""

    def __init__(self, proto: onnx.ModelProto, path: Path | None = None, external_files: tuple[Path, ...] = ()):
        check_model_proto(proto, str(path) if path else "the model")  # densifies sparse tensors too
        self.path = path
        self.external_files = external_files  # the data files the model was read from: never overwritten
        self.graph: gs.Graph = gs.import_onnx(proto)
        self._shell = _without_graph(proto)
        self._graph_doc = proto.graph.doc_string
        # Node doc strings and metadata follow the node object (a pass may rename a node's outputs).
        self._node_extras = {
            id(g_node): (g_node, p_node.doc_string, list(p_node.metadata_props))
            for g_node, p_node in _pair_nodes(self.graph, proto.graph)
            if p_node.doc_string or len(p_node.metadata_props)
        }
        # Older exporters list initializers as graph inputs too; graphsurgeon drops those inputs on export.
        inits = {t.name for t in proto.graph.initializer}
        self._input_order = [vi.name for vi in proto.graph.input]
        self._initializer_inputs = {vi.name for vi in proto.graph.input if vi.name in inits}

    # -- loading -----------------------------------------------------------------------------------------
    @classmethod
    def load(cls, source: str | os.PathLike | onnx.ModelProto | bytes | Model) -> Model:
        """Load from a path, serialized bytes or a ModelProto (copied: the caller's object is never changed)."""
        if isinstance(source, Model):
            return cls(source.to_proto(), source.path, source.external_files)
        if isinstance(source, onnx.ModelProto):
            proto = onnx.ModelProto()
            proto.CopyFrom(source)
            return cls(proto)
        if isinstance(source, (bytes, bytearray, memoryview)):
            return cls(_parse(bytes(source), "<bytes>"))
        if not isinstance(source, (str, os.PathLike)):
            raise ModelLoadError(f"cannot load a model from a {type(source).__name__}: give a path, bytes, a "
                                 "ModelProto or a Model")
        path = Path(source)
        if not path.exists():
            raise ModelLoadError(f"model file {path} does not exist")
        if path.is_dir():
            raise ModelLoadError(f"model path {path} is a folder, not an .onnx file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelLoadError(f"cannot read model file {path}: {e.strerror}") from None
        proto = _parse(data, str(path))
        external = _external_files(proto, path.parent)
        if external:
            try:
                onnx.load_external_data_for_model(proto, str(path.parent))
            except (OSError, ValueError, onnx.checker.ValidationError) as e:
                raise ModelLoadError(f"cannot read the external data of {path}: {e}") from None
        return cls(proto, path, external)

    # -- the pieces passes and reports use -----------------------------------------------------------------
    @property
    def opsets(self) -> dict[str, int]:
        return {o.domain or "": o.version for o in self._shell.opset_import}

    @property
    def opset(self) -> int:
        """The default-domain (ai.onnx) opset version."""
        ops = self.opsets
        return ops.get("", ops.get("ai.onnx", 1))

    @property
    def metadata(self) -> dict[str, str]:
        return {p.key: p.value for p in self._shell.metadata_props}

    @property
    def functions(self) -> dict[tuple[str, str], onnx.FunctionProto]:
        """The model-local functions by (domain, name) (a model-level field: kept in the shell)."""
        return {(f.domain, f.name): f for f in self._shell.functions}

    def add_function(self, function: onnx.FunctionProto) -> None:
        """Add a model-local function, or replace the one of the same domain and name; the function's domain gets
        an opset import when the model has none."""
        kept = [f for f in self._shell.functions if (f.domain, f.name) != (function.domain, function.name)]
        del self._shell.functions[:]
        self._shell.functions.extend([*kept, function])
        if function.domain not in self.opsets:
            self._shell.opset_import.append(onnx.helper.make_opsetid(function.domain, 1))

    @property
    def initializer_inputs(self) -> frozenset[str]:
        """Initializers the source also lists as graph inputs (overridable at run time: part of the interface)."""
        return frozenset(self._initializer_inputs)

    def graphs(self) -> Iterator[gs.Graph]:
        """The main graph and every subgraph (If/Loop/Scan bodies), outermost first."""
        return iter_graphs(self.graph)

    def copy(self) -> Model:
        return Model(self.to_proto(), self.path, self.external_files)

    @property
    def source_files(self) -> tuple[Path, ...]:
        """The files this model was read from (the .onnx and its external data): outputs must not replace them."""
        return ((self.path,) if self.path else ()) + self.external_files

    def convert_opset(self, version: int) -> str | None:
        """Convert the model to ai.onnx opset ``version`` with onnx's version converter, in place (the graph is
        rebuilt: earlier graph objects are stale). None on success, else why it failed (the model is unchanged).
        For changes a plain opset bump cannot make (Squeeze axes becoming an input, Softmax's axis semantics)."""
        try:
            converted = onnx.version_converter.convert_version(self.to_proto(), version)
            onnx.checker.check_model(converted)
        except Exception as e:  # the converter raises bare RuntimeErrors and checker errors alike
            return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        self.__init__(converted, self.path, self.external_files)
        return None

    # -- saving --------------------------------------------------------------------------------------------
    def to_proto(self) -> onnx.ModelProto:
        """Export to a fresh ModelProto with the original model-level fields restored."""
        graph_proto = gs.export_onnx(self.graph, do_type_check=False).graph
        proto = onnx.ModelProto()
        proto.CopyFrom(self._shell)
        proto.graph.CopyFrom(graph_proto)
        if self._graph_doc:  # an empty one set explicitly still costs its field in the file
            proto.graph.doc_string = self._graph_doc
        else:
            proto.graph.ClearField("doc_string")
        for g_node, p_node in _pair_nodes(self.graph, proto.graph):
            extra = self._node_extras.get(id(g_node))
            if extra and extra[0] is g_node:
                p_node.doc_string = extra[1]
                del p_node.metadata_props[:]
                p_node.metadata_props.extend(extra[2])
        _hoist_shared_initializers(proto.graph)
        _drop_outer_value_info(proto.graph)
        self._restore_initializer_inputs(proto.graph)
        _add_missing_opsets(proto)
        proto.ir_version = lowest_ir_version(proto)
        return proto

    def save(self, path: str | os.PathLike, external_data: bool | None = None) -> Path:
        """Write atomically. ``external_data=None`` chooses external data only when the model needs it (>2 GB)."""
        return save_proto(self.to_proto(), path, external_data=external_data, protect=self.source_files)

    def _restore_initializer_inputs(self, graph: onnx.GraphProto) -> None:
        """Put back initializers that the source listed as graph inputs (where they still exist), in order."""
        if not self._initializer_inputs:
            return
        inits = {t.name: t for t in graph.initializer}
        exported = {vi.name: vi for vi in graph.input}
        ordered = []
        for name in self._input_order:
            if name in exported:
                ordered.append(exported.pop(name))
            elif name in self._initializer_inputs and name in inits:
                t = inits[name]
                ordered.append(onnx.helper.make_tensor_value_info(name, t.data_type, list(t.dims)))
        ordered.extend(exported.values())
        del graph.input[:]
        graph.input.extend(ordered)


def save_proto(
    proto: onnx.ModelProto,
    path: str | os.PathLike,
    external_data: bool | None = None,
    protect: tuple[Path, ...] = (),
) -> Path:
    """Write a ModelProto atomically; never onto one of the ``protect`` files (the source and its data)."""
    external = needs_external_data(proto) if external_data is None else external_data
    path = check_output_files(path, external, protect)
    with staged_dir(path) as stage:
        write_model(proto, stage / path.name, external)
    return path


def check_output_files(path: str | os.PathLike, external_data: bool, protect: tuple[Path, ...],
                       reports: bool = False, reads: Sequence[tuple[Path, str]] = ()) -> Path:
    """Check the output path and every file written beside it (with external data its ``.data``, with ``reports``
    its ``.report.json`` / ``.report.md``) against the source files and the other files the run ``reads``."""
    path = check_output_path(path, *protect)
    check_writes(output_files(path, external_data, reports),
                 [*((p, "a file of the input model") for p in protect), *reads])
    return path


def output_files(path: Path, external_data: bool, reports: bool) -> list[Path]:
    """The files a run that writes the model ``path`` creates."""
    files = [path]
    if external_data:
        files.append(path.parent / (path.name + ".data"))
    if reports:
        files += [path.parent / f"{path.name}.report.json", path.parent / f"{path.name}.report.md"]
    return files


def write_model(proto: onnx.ModelProto, path: Path, external_data: bool) -> None:
    """Write ``path`` and, with external data, ``path.data`` beside it (inside a staging folder)."""
    if not external_data:
        path.write_bytes(proto.SerializeToString())
        return
    proto = copy.deepcopy(proto)  # conversion to external data rewrites the tensors in place
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


def needs_external_data(proto: onnx.ModelProto) -> bool:
    return _tensor_bytes(proto) > EXTERNAL_DATA_THRESHOLD


def lowest_ir_version(proto: onnx.ModelProto) -> int:
    """The lowest IR version that can hold this model: its opsets, its element types, its local functions."""
    version = max(_MIN_IR_VERSION, onnx.helper.find_min_ir_version_for(list(proto.opset_import), True))
    if len(proto.functions):
        version = max(version, 8)
    for tensor in walk_tensors(proto.graph):
        version = max(version, _DTYPE_MIN_IR.get(tensor.data_type, 0))
    return version


def iter_graphs(graph: gs.Graph) -> Iterator[gs.Graph]:
    yield graph
    for node in graph.nodes:
        for attr in node.attrs.values():
            for sub in attr if isinstance(attr, list) else [attr]:
                if isinstance(sub, gs.Graph):
                    yield from iter_graphs(sub)


# -- internals -------------------------------------------------------------------------------------------
def _parse(data: bytes, where: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelLoadError(f"{where} is not a valid ONNX model (corrupt or truncated: {e})") from None
    return proto


def _without_graph(proto: onnx.ModelProto) -> onnx.ModelProto:
    shell = onnx.ModelProto()
    shell.CopyFrom(proto)
    shell.ClearField("graph")
    return shell


def _pair_nodes(graph: gs.Graph, proto: onnx.GraphProto) -> Iterator[tuple[gs.Node, onnx.NodeProto]]:
    """graphsurgeon nodes with the proto nodes they were imported from or exported to (same order)."""
    if len(graph.nodes) != len(proto.node):
        return
    for g_node, p_node in zip(graph.nodes, proto.node):
        yield g_node, p_node
        subgraphs = {a.name: ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs))
                     for a in p_node.attribute}
        for name, value in g_node.attrs.items():
            g_subs = value if isinstance(value, list) else [value]
            g_subs = [g for g in g_subs if isinstance(g, gs.Graph)]
            for g_sub, p_sub in zip(g_subs, subgraphs.get(name, [])):
                yield from _pair_nodes(g_sub, p_sub)


def _hoist_shared_initializers(root: onnx.GraphProto) -> None:
    """One initializer per name, in the innermost graph that encloses all its readers.

    graphsurgeon does not record which graph owns a constant; on export it writes an outer-scope weight into
    every subgraph that reads it. ONNX names are unique across nested graphs, so equal names are one tensor.
    """
    graphs: dict[tuple, onnx.GraphProto] = {}
    where: dict[str, list[tuple]] = {}

    def walk(graph: onnx.GraphProto, key: tuple) -> None:
        graphs[key] = graph
        for t in graph.initializer:
            where.setdefault(t.name, []).append(key)
        for i, node in enumerate(graph.node):
            for attr in node.attribute:
                subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                for j, sub in enumerate(subs):
                    walk(sub, key + ((i, attr.name, j),))

    walk(root, ())
    moves = {name: keys for name, keys in where.items() if len(keys) > 1}
    if not moves:
        return
    removals: dict[tuple, set[str]] = {}
    additions: dict[tuple, list[onnx.TensorProto]] = {}
    for name, keys in moves.items():
        common = keys[0]
        for key in keys[1:]:
            n = 0
            while n < min(len(common), len(key)) and common[n] == key[n]:
                n += 1
            common = common[:n]
        tensor = next(t for t in graphs[keys[0]].initializer if t.name == name)
        additions.setdefault(common, []).append(copy.deepcopy(tensor))
        for key in keys:
            removals.setdefault(key, set()).add(name)
    for key, names in removals.items():
        graph = graphs[key]
        kept = [t for t in graph.initializer if t.name not in names]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    for key, tensors in additions.items():
        graphs[key].initializer.extend(tensors)


def _drop_outer_value_info(graph: onnx.GraphProto) -> None:
    """graphsurgeon writes, into every subgraph, a value_info for each outer-scope tensor the subgraph reads (the
    types are already in the outer graph): ~46 B per tensor and branch, which made lossless rewrites of If-heavy
    models larger than their source. A subgraph keeps value_info only for the tensors it defines."""
    for node in graph.node:
        for sub in subgraphs(node):
            own = {i.name for i in sub.input} | {t.name for t in sub.initializer} | {o for n in sub.node
                                                                                     for o in n.output}
            kept = [vi for vi in sub.value_info if vi.name in own]
            if len(kept) != len(sub.value_info):
                del sub.value_info[:]
                sub.value_info.extend(kept)
            _drop_outer_value_info(sub)


def _tensor_bytes(proto: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in walk_tensors(proto.graph))


def _external_files(proto: onnx.ModelProto, folder: Path) -> tuple[Path, ...]:
    files = set()
    for t in walk_tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in t.external_data if e.key == "location"), None)
            if location:
                files.add((folder / location).resolve())
    return tuple(sorted(files))


def _add_missing_opsets(proto: onnx.ModelProto) -> None:
    """A pass may introduce a node of a new domain (onnxcomp's own ops); declare that domain's opset."""
    declared = {o.domain for o in proto.opset_import}
    used: set[str] = set()

    def collect(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            used.add(node.domain)
            for sub in subgraphs(node):
                collect(sub)

    collect(proto.graph)
    local_functions = {f.domain for f in proto.functions}
    for domain in sorted(used - declared - local_functions - {"ai.onnx"}):
        proto.opset_import.append(onnx.helper.make_opsetid(domain, 1))

