"""onnxcomp: graph-level compression of exported ONNX models."""

from setuptools import setup

setup(
    name="onnxcomp",
    version="0.1.0",
    description="Framework-agnostic compression of exported ONNX models: pruning, weight sharing, quantization",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # passes/ and kernels/ live at the top of the repository but install inside the onnxcomp package.
    # Listed by hand because of the mapping; tests/test_layers.py checks that the list covers every package folder.
    packages=[
        "onnxcomp",
        "onnxcomp.ir",
        "onnxcomp.codecs",
        "onnxcomp.calibration",
        "onnxcomp.analysis",
        "onnxcomp.numerics",
        "onnxcomp.measure",
        "onnxcomp.emit",
        "onnxcomp.passes",
        "onnxcomp.kernels",
    ],
    package_dir={"onnxcomp": "onnxcomp", "onnxcomp.passes": "passes", "onnxcomp.kernels": "kernels"},
    package_data={"onnxcomp": ["recipes/*.yaml"]},
    install_requires=[
        "onnx>=1.16",
        "onnxruntime>=1.18",
        "onnx-graphsurgeon>=0.5",
        "numpy>=1.24",
        "scikit-learn>=1.3",
        "protobuf>=4.25",
        "click>=8.1",
        "pyyaml>=6.0",
        "tqdm>=4.66",
    ],
    extras_require={
        # rapidocr-onnxruntime (PP-OCRv4 test models) is installed with --no-deps: its own deps pull opencv.
        "test": ["pytest>=7.4", "matplotlib>=3.7", "pillow>=10"],
        "dev": ["pytest>=7.4", "torch==2.13.0", "mlxtend>=0.23", "ruff"],
    },
    entry_points={"console_scripts": ["onnxcomp=onnxcomp.cli:main"]},
)
