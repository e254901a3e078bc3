"""The intermediate representation: loading and saving models, the weight table, graph edits, opsets.

The lowest layer (with :mod:`onnxcomp.errors`, :mod:`onnxcomp.progress` and :mod:`onnxcomp.codecs`): it imports no
other onnxcomp package.
"""
