"""Emitters: one module per target decides how that target stores and runs the values passes chose.

- :mod:`.onnx_standard`: stock onnxruntime (DequantizeLinear codes, codebook Gather, float16 + Cast) and
  onnxruntime's Q/DQ fusion rules;
- :mod:`.onnx_packed`: ``ai.onnxcomp.DecodeWeight`` blobs expanded at load;
- :mod:`.tensorrt`: TensorRT's Q/DQ placement rules;
- :mod:`.lowering` and :mod:`.qdq`: what the ONNX targets share (taking over a weight's name, eligibility, Q/DQ
  plans and their insertion).

Emitters never import :mod:`onnxcomp.passes`; passes read the emitters' rules.
"""
