"""Bundled sample models, their data, and graph builders (not installed with onnxcomp)."""
