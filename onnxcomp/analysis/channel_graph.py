"""The channel graph of filter pruning: channel elements, their union-find, slots, fixups and groups (data only).

:mod:`onnxcomp.analysis.channel_groups` builds it from a model (its op handlers are
:mod:`onnxcomp.analysis.channel_ops`); pruning passes read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxcomp.ir.model import Model


@dataclass
class Space:
    """The channels of one tensor: the tensor axes that hold them and the element id at each position."""

    axes: tuple[int, ...]
    ids: np.ndarray  # shape = the tensor's dims on ``axes``


@dataclass
class Slot:
    """Positions of a constant input along ``axis`` that belong to channels (element ``ids[i]`` at position i)."""

    node: gs.Node
    input: int
    axis: int
    ids: np.ndarray
    kind: str  # 'out' (a layer's output rows), 'in' (a consumer's input columns), 'norm' (per-channel params)


@dataclass
class Fixup:
    """An op attribute or constant input that counts channels; rewritten after removal."""

    node: gs.Node
    kind: str  # 'depthwise', 'split', 'slice', 'reshape', 'shape_part' (a constant in a computed shape), 'resize'
    tensor: str  # the tensor whose channels it counts
    data: dict = field(default_factory=dict)


@dataclass
class Alignment:
    """An Add input left with its own channels (``align='independent'``): channel ``c`` of ``source`` feeds
    channel ``c`` of the Add; after pruning, a least-squares map aligns the kept channels."""

    node: gs.Node
    input: int
    source: str


@dataclass
class ChannelGroup:
    """Atoms produced by the same layers: the unit of importance ranking and channel-count rounding."""

    index: int
    atoms: list[int]
    sources: tuple[str, ...]  # layers whose output rows are these channels
    tensors: list[str]
    members: list[str]  # layers with a slot on these channels ("conv3 (out)", "bn2 (norm)", ...)
    locked: str | None = None  # why, when no atom may be removed

    @property
    def size(self) -> int:
        return len(self.atoms)


class ChannelGraph:
    """The result of :func:`analyze`: spaces, slots, fixups, alignments, atoms and groups."""

    def __init__(self, model: Model):
        self.model = model
        self.spaces: dict[str, Space] = {}
        self.slots: list[Slot] = []
        self.fixups: list[Fixup] = []
        self.alignments: list[Alignment] = []
        self.groups: list[ChannelGroup] = []
        self.locked: dict[int, str] = {}  # atom -> why it must stay (filled by analyze)
        self.shapes: dict[str, tuple[int, ...]] = {}  # the concrete shapes (batch 1) the analysis used
        self._parent: list[int] = []
        self._lock: dict[int, str] = {}
        self._roots: np.ndarray | None = None  # atom of every element, once the unions are done

    # -- union-find over elements -------------------------------------------------------------------------
    def new(self, shape) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        base = len(self._parent)
        self._parent.extend(range(base, base + n))
        return np.arange(base, base + n, dtype=np.int64).reshape(shape)

    def find(self, e: int) -> int:
        parent = self._parent
        while parent[e] != e:
            parent[e] = parent[parent[e]]
            e = parent[e]
        return e

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(np.asarray(a).ravel().tolist(), np.asarray(b).ravel().tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self._parent[max(rx, ry)] = min(rx, ry)

    def lock(self, ids: np.ndarray, reason: str) -> None:
        for e in np.asarray(ids).ravel().tolist():
            self._lock.setdefault(e, reason)

    def atoms(self, ids: np.ndarray) -> np.ndarray:
        """Atom (union-find root) of every element in ``ids``, same shape."""
        flat = np.asarray(ids).ravel()
        return np.fromiter((self.find(int(e)) for e in flat), np.int64, flat.size).reshape(np.shape(ids))

    @property
    def num_elements(self) -> int:
        return len(self._parent)

    def locked_atoms(self) -> dict[int, str]:
        out: dict[int, str] = {}
        for e, why in self._lock.items():
            out.setdefault(self.find(e), why)
        return out

    # -- queries used by the pruning pass ---------------------------------------------------------------
    def keep_mask(self, removed: set[int]) -> np.ndarray:
        """Per element: kept (True) unless its atom is in ``removed``."""
        if self._roots is None or self._roots.size != self.num_elements:
            self._roots = self.atoms(np.arange(self.num_elements))
        return ~np.isin(self._roots, np.fromiter(removed, np.int64, len(removed)))

    def group_of_layer(self, layer: str) -> ChannelGroup | None:
        return next((g for g in self.groups if layer in g.sources), None)

    def describe(self) -> list[dict]:
        """One row per group for ``inspect --groups``."""
        return [{"group": g.index, "channels": g.size, "sources": list(g.sources), "members": g.members,
                 "tensors": len(g.tensors), "locked": g.locked} for g in self.groups]
