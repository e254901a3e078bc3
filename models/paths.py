"""Locations of the bundled sample models and their calibration / test data.

No torch (or other heavy) imports here: safe to use from tests and benchmarks.
"""

from __future__ import annotations

import pathlib

MODELS_DIR = pathlib.Path(__file__).resolve().parent
DATA_DIR = MODELS_DIR / "data"

# trained model name -> (calibration data name, test data name)
TRAINED: dict[str, tuple[str, str]] = {
    "mnist_rescnn": ("mnist_calib", "mnist_test"),
    "mnist_lenet300": ("mnist_calib", "mnist_test"),
    "mnist_vgg": ("mnist_calib", "mnist_test"),
    "digits_concat": ("digits_calib", "digits_test"),
}


def model_path(name: str) -> pathlib.Path:
    """Path of a bundled model, e.g. ``model_path("mnist_rescnn")`` -> ``models/mnist_rescnn.onnx``."""
    return MODELS_DIR / f"{name.removesuffix('.onnx')}.onnx"


def data_path(name: str) -> pathlib.Path:
    """Path of a bundled data file, e.g. ``data_path("mnist_test")`` -> ``models/data/mnist_test.npz``."""
    return DATA_DIR / f"{name.removesuffix('.npz')}.npz"
