"""Calibration: data readers and activation capture (:mod:`.data`), streaming statistics (:mod:`.stats`) and
layer-input Hessians (:mod:`.hessian`), as statistics only: the solves that use them are :mod:`onnxcomp.numerics`'s.
"""
