"""Resource limits on what untrusted input may make onnxcomp allocate.

A model, a packed blob or a calibration archive states sizes (tensor dims, a blob's shape, an .npy header) that
the bytes behind them need not justify: a 30-byte blob can claim a 16 GiB weight, a 1 MB .npz can expand to
gigabytes. Every decoder checks the stated size against what its data can justify and against these limits
before it allocates anything. Each limit is read from the environment when it is checked, so a user with a
larger model raises it for one run (``ONNXCOMP_MAX_TENSOR_BYTES=8GiB onnxcomp ...``).
"""

from __future__ import annotations

import os
import re

from onnxcomp.errors import OnnxcompError

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
# name -> (environment variable, default bytes, what it bounds)
LIMITS = {
    "tensor": ("ONNXCOMP_MAX_TENSOR_BYTES", 4 << 30, "one decoded tensor (a model initializer, a packed weight)"),
    "calibration": ("ONNXCOMP_MAX_CALIBRATION_BYTES", 1 << 30, "calibration data once decoded"),
    # a ratio, not bytes: how many times its own size a packed blob may decode to (beyond EXPANSION_FLOOR)
    "expansion": ("ONNXCOMP_MAX_EXPANSION", 1 << 16, "a packed weight's decoded size, in multiples of its blob"),
}
EXPANSION_FLOOR = 1 << 20  # any blob may decode to this many bytes: small tensors are never refused for their ratio


def limit(name: str) -> int:
    """The limit in bytes (the environment's value where set)."""
    var, default, _ = LIMITS[name]
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    m = re.fullmatch(r"(\d+)\s*([kmgt]?)(i?b)?", raw.lower())
    if not m:
        raise OnnxcompError(f"{var}={raw!r} is not a size (e.g. 8GiB, 512MiB or a number of bytes)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def expansion_refusal(blob_bytes: int, decoded_bytes: int) -> str | None:
    """Why a blob of ``blob_bytes`` may not decode to ``decoded_bytes`` (the expansion or the tensor limit)."""
    ratio = limit("expansion")
    if decoded_bytes > max(EXPANSION_FLOOR, ratio * blob_bytes):
        var = LIMITS["expansion"][0]
        return (f"a {blob_bytes:,}-byte blob claims {describe(decoded_bytes)}, over {ratio:,} times its size "
                f"(what sparse or codebook data can justify; set {var} to allow more)")
    return over("tensor", decoded_bytes)


def describe(nbytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def over(name: str, nbytes: int) -> str | None:
    """Why ``nbytes`` exceeds the limit (with how to raise it), or None."""
    cap = limit(name)
    if nbytes <= cap:
        return None
    var, _, what = LIMITS[name]
    return f"{describe(nbytes)} exceeds the limit for {what} ({describe(cap)}; set {var} to allow more)"
