"""onnxcomp's custom operators: their schema (``schema.py``) and, later, reference and native implementations."""
