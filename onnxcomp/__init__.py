"""onnxcomp: compress exported ONNX models."""
