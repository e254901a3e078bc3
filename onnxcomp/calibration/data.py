"""Calibration data: reading feeds, checking them against the model, and capturing activations.

Sources (:meth:`CalibrationData.from_source`):
- an ``.npz`` file: input name -> samples stacked on axis 0, plus an optional ``labels`` array;
- a folder of ``.npz`` files, one feed each (for models whose inputs vary in shape), labels optional per file;
- any Python iterable of feed dicts (a ``labels`` key is taken as labels), or an object with onnxruntime's
  ``CalibrationDataReader`` protocol (``get_next()`` returning a feed dict or None).

Stacked samples are fed in batches: of the model's fixed batch size when its inputs fix one (exports often
say batch 1), else of ``batch_size``. Every feed is checked against the model's inputs (names, rank, fixed
dimensions, element type) before any work, with a message that names the input and the mismatch.

:func:`capture` runs the model in onnxruntime with chosen intermediate tensors added as outputs and hands
each batch's values to a callback, so statistics are computed in streaming fashion (see ``stats.py``) and
memory stays bounded by one batch.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxcomp import limits
from onnxcomp.errors import CalibrationError
from onnxcomp.ir.fileio import exists
from onnxcomp.ir.model import Model
from onnxcomp.runtime import session

LABELS_KEY = "labels"


@dataclass(frozen=True)
class InputSpec:
    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]  # int for fixed dims, str/None for symbolic

    @property
    def fixed_batch(self) -> int | None:
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) and self.shape[0] > 0 else None


def input_specs(model: Model | onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers)."""
    proto = model.to_proto() if isinstance(model, Model) else model
    inits = {t.name for t in proto.graph.initializer}
    specs = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else np.dtype(np.float32)
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        ) if tt.HasField("shape") else ()
        specs.append(InputSpec(vi.name, np.dtype(dtype), dims))
    return specs


def calibration_files(source: Any) -> list[Path]:
    """The files reading ``source`` opens (an .npz, or every file of a folder): outputs must not land on them."""
    if not isinstance(source, (str, os.PathLike)) or not exists(source):
        return []
    path = Path(source)
    return sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]


class CalibrationData:
    """A list of feeds (dicts of batched arrays) with optional labels, checked against one model."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], labels: list[np.ndarray] | None = None):
        self.feeds = feeds
        self.labels = labels

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_source(
        cls,
        source: Any,
        model: Model | onnx.ModelProto,
        batch_size: int = 16,
        limit: int | None = None,
        allow_constant: bool = False,
    ) -> CalibrationData:
        """Read and check calibration data for ``model``. Data whose float inputs are all constant (every sample the
        same single value, e.g. all zeros) measures nothing and is refused unless ``allow_constant``."""
        specs = input_specs(model)
        if isinstance(source, CalibrationData):
            data = source
        elif isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise CalibrationError(f"calibration data {path} does not exist")
            if path.is_dir():
                data = cls._from_feeds(_read_folder(path), specs)
            else:
                data = cls._from_stacked(_read_npz(path), specs, batch_size, str(path))
        elif isinstance(source, dict):
            data = cls._from_stacked(dict(source), specs, batch_size, "calibration dict")
        elif hasattr(source, "get_next"):
            data = cls._from_feeds(iter(source.get_next, None), specs)
        elif isinstance(source, Iterable):
            data = cls._from_feeds(source, specs)
        else:
            raise CalibrationError(f"cannot read calibration data from a {type(source).__name__}")
        data = data.checked(specs)
        if not allow_constant:
            data.check_informative(specs)
        if limit is not None:
            data = data.take(limit)
        return data

    @classmethod
    def _from_stacked(cls, arrays: dict[str, np.ndarray], specs: list[InputSpec], batch_size: int,
                      where: str) -> CalibrationData:
        labels = arrays.pop(LABELS_KEY, None)
        if labels is not None:
            labels = _check_labels(labels, where)
        _check_names(arrays, specs, where)
        counts = {name: len(a) for name, a in arrays.items() if np.ndim(a) > 0}
        if len(set(counts.values())) > 1:
            raise CalibrationError(f"{where}: inputs hold different numbers of samples: {counts}")
        n = next(iter(counts.values()), 0)
        if n == 0:
            raise CalibrationError(f"{where} holds no samples")
        if labels is not None and len(labels) != n:
            raise CalibrationError(f"{where}: {len(labels)} labels for {n} samples")
        fixed = next((s.fixed_batch for s in specs if s.fixed_batch), None)
        batch = fixed or batch_size
        feeds, batch_labels = [], []
        for start in range(0, n - n % batch if fixed else n, batch):
            feeds.append({name: a[start:start + batch] for name, a in arrays.items()})
            if labels is not None:
                batch_labels.append(np.asarray(labels[start:start + batch]))
        if not feeds:
            raise CalibrationError(f"{where}: {n} samples are fewer than the model's fixed batch size {batch}")
        return cls(feeds, batch_labels if labels is not None else None)

    @classmethod
    def _from_feeds(cls, feeds: Iterable[dict[str, Any]], specs: list[InputSpec]) -> CalibrationData:
        out, labels = [], []
        for i, feed in enumerate(feeds):
            if not isinstance(feed, dict):
                raise CalibrationError(f"calibration feed {i} is a {type(feed).__name__}, not a dict")
            feed = dict(feed)
            label = feed.pop(LABELS_KEY, None)
            if label is not None:
                label = _check_labels(label, f"calibration feed {i}")
            _check_names(feed, specs, f"calibration feed {i}")
            out.append({k: np.asarray(v) for k, v in feed.items()})
            labels.append(label)
        if not out:
            raise CalibrationError("calibration data holds no feeds")
        has_labels = all(lab is not None for lab in labels)
        return cls(out, [np.asarray(lab) for lab in labels] if has_labels else None)

    def checked(self, specs: list[InputSpec]) -> CalibrationData:
        """Cast each feed to the model's element types and check ranks and fixed dimensions."""
        feeds = []
        for i, feed in enumerate(self.feeds):
            fixed = {}
            for spec in specs:
                if spec.name not in feed:
                    raise CalibrationError(f"calibration feed {i} lacks model input '{spec.name}'")
                fixed[spec.name] = _conform(feed[spec.name], spec, i)
            feeds.append(fixed)
        return CalibrationData(feeds, self.labels)

    def check_informative(self, specs: list[InputSpec]) -> None:
        """Refuse data in which every float input of more than one element holds one value throughout: ranges,
        Hessians and fidelity measured on it say nothing about real inputs (all-zero feeds scored 0.99998 cosine
        under int8 while test accuracy fell from 98.2% to 73.3%)."""
        floats = [s.name for s in specs if np.dtype(s.dtype).kind == "f"]
        constant = {}
        for name in floats:
            values = [f[name] for f in self.feeds if f[name].size > 1 or len(self.feeds) > 1]
            if not values:
                return  # a scalar input: nothing to judge
            lo = min(float(v.min()) for v in values if v.size)
            hi = max(float(v.max()) for v in values if v.size)
            if lo != hi:
                return
            constant[name] = lo
        if constant:
            listed = ", ".join(f"'{k}' is {v:g}" for k, v in constant.items())
            raise CalibrationError(f"calibration data is constant: in all {self.num_samples} samples {listed} "
                                   "everywhere; give representative inputs (or allow constant data explicitly: "
                                   "--allow-constant-calib)")

    # -- use -----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.feeds)

    @property
    def num_samples(self) -> int:
        return sum(len(next(iter(f.values()))) if f and np.ndim(next(iter(f.values()))) else 1 for f in self.feeds)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.feeds)

    def take(self, n_feeds: int) -> CalibrationData:
        return CalibrationData(self.feeds[:n_feeds], self.labels[:n_feeds] if self.labels else None)

    def split(self, holdout: float) -> tuple[CalibrationData, CalibrationData]:
        """(calibration, held-back) by feeds: the last ``holdout`` share is kept back for fidelity."""
        n = len(self.feeds)
        if n < 2:
            return self, self
        k = min(n - 1, max(1, round(n * holdout)))
        cut = n - k
        lab = self.labels
        return (CalibrationData(self.feeds[:cut], lab[:cut] if lab else None),
                CalibrationData(self.feeds[cut:], lab[cut:] if lab else None))

    def fold_edges(self, k: int) -> list[int]:
        """Feed indices bounding ``min(k, len)`` contiguous runs of feeds of near-equal length (``k + 1`` edges)."""
        n = len(self.feeds)
        k = max(1, min(k, n))
        return [round(i * n / k) for i in range(k + 1)]

    def folds(self, k: int) -> list[tuple[CalibrationData, CalibrationData]]:
        """``k`` (fit, check) pairs by the runs of :meth:`fold_edges`; every feed is checked exactly once."""
        edges = self.fold_edges(k)
        if len(edges) < 3:
            return [(self, self)]
        lab = self.labels
        out = []
        for a, b in zip(edges[:-1], edges[1:]):
            out.append((CalibrationData(self.feeds[:a] + self.feeds[b:], lab[:a] + lab[b:] if lab else None),
                        CalibrationData(self.feeds[a:b], lab[a:b] if lab else None)))
        return out


def capture(
    model: Model | onnx.ModelProto,
    tensors: Sequence[str],
    data: CalibrationData,
    on_batch: Callable[[dict[str, np.ndarray]], None],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Run ``data`` through the model with ``tensors`` exposed as outputs; call ``on_batch`` per feed."""
    for i, values in enumerate(iter_captures(model, tensors, data)):
        on_batch(values)
        if progress:
            progress(i)


def iter_captures(
    model: Model | onnx.ModelProto,
    tensors: Sequence[str],
    data: CalibrationData,
) -> Iterator[dict[str, np.ndarray]]:
    """The values of ``tensors`` for each feed of ``data``, one feed at a time."""
    proto = model.to_proto() if isinstance(model, Model) else model
    sess = session(_with_outputs(proto, tensors))
    names = list(tensors)
    for feed in data:
        yield dict(zip(names, sess.run(names, feed)))


def _with_outputs(proto: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    produced = {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    present = {o.name for o in out.graph.output}
    for name in tensors:
        if name not in produced:
            raise CalibrationError(f"tensor '{name}' is not produced in the main graph; it cannot be captured")
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
    return out


def _read_npz(path: Path, budget: list[int] | None = None) -> dict[str, np.ndarray]:
    """The arrays of an .npz, after checking every member's header: the bytes it states must be stored in the
    member (a header cannot claim more than its data) and, with all members read so far (``budget`` carries the
    running total across a folder), stay within the calibration limit."""
    if not zipfile.is_zipfile(path):
        raise CalibrationError(f"calibration file {path} is not an .npz archive (numpy.savez / savez_compressed)")
    budget = budget if budget is not None else [0]
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(member)
                stated = math.prod(shape) * dtype.itemsize
                if stated > info.file_size:
                    raise CalibrationError(f"calibration file {path}: array '{info.filename[:-4]}' claims shape "
                                           f"{list(shape)} ({stated:,} B) but stores {info.file_size:,} B")
                budget[0] += stated
                why = limits.over("calibration", budget[0])
                if why:
                    raise CalibrationError(f"calibration data {path}: {why}")
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CalibrationError(f"cannot read calibration file {path} as .npz: {str(e).splitlines()[0]}") from None


def _read_folder(path: Path) -> Iterator[dict[str, np.ndarray]]:
    files = sorted(path.glob("*.npz"))
    if not files:
        raise CalibrationError(f"calibration folder {path} holds no .npz files")
    budget = [0]
    for f in files:
        yield _read_npz(f, budget)


def _check_labels(labels: Any, where: str) -> np.ndarray:
    """Labels are one integer class index per sample: a 1-D integer array."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise CalibrationError(f"{where}: labels must be one integer class index per sample (a 1-D integer array), "
                               f"got {labels.dtype} of shape {list(labels.shape)}")
    return labels


def _check_names(feed: dict[str, Any], specs: list[InputSpec], where: str) -> None:
    expected = [s.name for s in specs]
    extra = sorted(set(feed) - set(expected))
    missing = [n for n in expected if n not in feed]
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"unknown input(s) {', '.join(map(repr, extra))}")
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        raise CalibrationError(f"{where}: {'; '.join(parts)}; the model's inputs are {', '.join(map(repr, expected))}")


def _conform(value: np.ndarray, spec: InputSpec, i: int) -> np.ndarray:
    value = np.asarray(value)
    if spec.shape and value.ndim != len(spec.shape):
        raise CalibrationError(
            f"calibration feed {i}: input '{spec.name}' has shape {list(value.shape)} (rank {value.ndim}) "
            f"but the model expects rank {len(spec.shape)} {_fmt_shape(spec.shape)}"
        )
    for axis, (got, want) in enumerate(zip(value.shape, spec.shape)):
        if isinstance(want, int) and want > 0 and got != want:
            raise CalibrationError(
                f"calibration feed {i}: input '{spec.name}' has shape {list(value.shape)} but the model expects "
                f"{_fmt_shape(spec.shape)} (axis {axis} must be {want})"
            )
    given = value.dtype
    if value.dtype != spec.dtype:
        if not np.can_cast(value.dtype, spec.dtype, casting="same_kind"):
            raise CalibrationError(
                f"calibration feed {i}: input '{spec.name}' is {value.dtype} but the model expects {spec.dtype}"
            )
        with np.errstate(over="ignore"):
            value = value.astype(spec.dtype)
    if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
        nan, inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
        cast = f" after the cast from {given}" if given != value.dtype else ""
        raise CalibrationError(f"calibration feed {i}: input '{spec.name}' holds {nan:,} NaN and {inf:,} infinite "
                               f"values (of {value.size:,}{cast}); "
                               "calibration data must be finite")
    return np.asarray(value, order="C")


def _fmt_shape(shape: tuple) -> str:
    return "[" + ", ".join(str(d) if d is not None else "?" for d in shape) + "]"
