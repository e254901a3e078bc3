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

# trained model name -> a larger calibration set drawn from its training split (benchmarks). Compensated fits
# (OBS, least-squares centroids) need about two input vectors per input of a layer to carry over to new inputs:
# LeNet-300's 784-wide first layer is fitted on at most 500 vectors from the 500-sample calibration file.
TRAIN_CALIB: dict[str, str] = {
    "mnist_rescnn": "mnist_train2k",
    "mnist_lenet300": "mnist_train2k",
    "mnist_vgg": "mnist_train2k",
    "digits_concat": "digits_train",
}


def model_path(name: str) -> pathlib.Path:
    """Path of a bundled model, e.g. ``model_path("mnist_rescnn")`` -> ``models/mnist_rescnn.onnx``."""
    return MODELS_DIR / f"{name.removesuffix('.onnx')}.onnx"


def data_path(name: str) -> pathlib.Path:
    """Path of a bundled data file, e.g. ``data_path("mnist_test")`` -> ``models/data/mnist_test.npz``."""
    return DATA_DIR / f"{name.removesuffix('.npz')}.npz"
