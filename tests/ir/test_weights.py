"""The weight table (``onnxcomp/ir/weights.py``): weights in subgraphs and behind graph boundaries, their uses,
roles and channel layouts. (Model I/O tests check the table too, after each round trip: ``test_model.py``.)"""

from __future__ import annotations

import pytest

from onnxcomp.ir.model import Model
from onnxcomp.ir.weights import Layout, weight_table
from tests.helpers import if_model, rnn_model, save, weight_uses


def test_if_weight_table_finds_subgraph_weights(tmp_path):
    path = save(if_model(), tmp_path / "if.onnx")
    table = {w.name: w for w in weight_table(Model.load(path))}
    assert set(table) == {"then_w", "then_b", "W_outer", "else_w", "else_s"}
    assert table["then_w"].source == "constant" and weight_uses(table["then_w"]) == [("MatMul", 1, "then_matmul")]
    assert table["else_w"].source == "constant" and weight_uses(table["else_w"]) == [("MatMul", 1, "else_matmul")]
    assert table["then_b"].source == "initializer" and weight_uses(table["then_b"]) == [("Add", 1, "then_add")]
    assert table["else_s"].source == "initializer" and weight_uses(table["else_s"]) == [("Mul", 1, "else_mul")]
    # the outer-scope initializer is found through the graph boundary, at its consumer inside the branch
    assert table["W_outer"].source == "initializer"
    assert weight_uses(table["W_outer"]) == [("MatMul", 1, "then_outer_mm")]
    assert table["then_w"].role == table["else_w"].role == table["W_outer"].role == "weight"
    assert table["then_w"].layout == Layout(1, 0)


@pytest.mark.parametrize("op,gates", [("LSTM", 4), ("GRU", 3)])
def test_rnn_bias_layout_channel_axis(op, gates):
    """B is [num_directions, 2 * gates * hidden]: its channels are on axis 1, as for W and R ([num_directions,
    gates * hidden, ...]); axis 0 is the direction axis, not output channels."""
    table = {w.name: w for w in weight_table(Model.load(rnn_model(op, gates)))}
    assert table["W"].layout.out_axis == 1
    assert table["B"].layout == Layout(out_axis=1, in_axis=None)
