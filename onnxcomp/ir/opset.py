"""The default-domain opset of a model: when it can be raised in place, and raising it.

Raising the ai.onnx opset import changes the schema every node is read with. :func:`opset_refusal` says whether
that keeps every node's meaning (then :func:`set_opset` is enough); otherwise a model must go through onnx's
version converter (:meth:`onnxcomp.ir.model.Model.convert_opset`).
"""

from __future__ import annotations

import onnx
import onnx.defs

from onnxcomp.ir.graph_edit import is_standard
from onnxcomp.ir.model import Model

# Ops whose behaviour changed at a version without a change of signature (coerced 2-D -> one axis at 13).
_MEANING_CHANGED = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


def opset_refusal(model: Model, target: int) -> str | None:
    """None when raising the default opset to ``target`` keeps every node's meaning, else why not.

    Safe when, for every ai.onnx node of every graph, the schema at ``target`` equals the one at the model's
    opset, or extends it compatibly: the same inputs and outputs in the same places (new ones only optional, at
    the end), the same attributes with the same types, requiredness and defaults (new ones only optional), and
    at least the same element types; and the op is not one whose behaviour changed without a signature change
    (Softmax, LogSoftmax, Hardmax at 13). Models with local functions are refused (their opset imports must
    agree with the model's).
    """
    current = model.opset
    if _has_functions(model):
        return "is not attempted: the model has local functions"
    checked: set[str] = set()
    for graph in model.graphs():
        for node in graph.nodes:
            if not is_standard(node) or node.op in checked:
                continue
            checked.add(node.op)
            try:
                old = onnx.defs.get_schema(node.op, current, "")
                new = onnx.defs.get_schema(node.op, target, "")
            except onnx.defs.SchemaError:
                return f"is not safe: no schema for {node.op} at opset {current} or {target}"
            if old.since_version == new.since_version:
                continue
            why = "its behaviour changed" if node.op in _MEANING_CHANGED else _schema_change(old, new)
            if why:
                return f"is not safe: {node.op} changes from version {old.since_version} to {new.since_version} ({why})"
    return None


def _schema_change(old: onnx.defs.OpSchema, new: onnx.defs.OpSchema) -> str | None:
    for kind in ("inputs", "outputs"):
        a, b = getattr(old, kind), getattr(new, kind)
        if len(b) < len(a) or any((x.name, x.option) != (y.name, y.option) for x, y in zip(a, b)):
            return f"{kind} differ"
        if any(y.option != onnx.defs.OpSchema.FormalParameterOption.Optional for y in b[len(a) :]):
            return f"new required {kind}"
    for name, attr in old.attributes.items():
        other = new.attributes.get(name)
        if other is None or (attr.type, attr.required, attr.default_value) != (
            other.type,
            other.required,
            other.default_value,
        ):
            return f"attribute {name!r} differs"
    if any(a.required for name, a in new.attributes.items() if name not in old.attributes):
        return "new required attribute"
    types = {t.type_param_str: set(t.allowed_type_strs) for t in new.type_constraints}
    for t in old.type_constraints:
        if not set(t.allowed_type_strs) <= types.get(t.type_param_str, set()):
            return f"type constraint {t.type_param_str} differs"
    return None


def _has_functions(model: Model) -> bool:
    return bool(len(model._shell.functions))  # a model-level field: Model keeps it in its shell, without accessor


def set_opset(model: Model, version: int) -> None:
    """Set the default-domain opset import (model-level: ``Model`` keeps it in its shell) and graphsurgeon's."""
    shell = model._shell  # Model exposes the opsets read-only; they live in its shell
    for entry in shell.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = version
            break
    else:
        shell.opset_import.append(onnx.helper.make_opsetid("", version))
    model.graph.opset = version
