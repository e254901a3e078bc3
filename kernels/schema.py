"""The single source of onnxcomp's custom operator domain, op names and their version."""

DOMAIN = "ai.onnxcomp"
VERSION = 1
