"""Exact storage codecs for compressed weights, one codec per module.

- :mod:`~onnxcomp.codecs.bitpack`: fixed-width bit packing (1..16 bits);
- :mod:`~onnxcomp.codecs.huffman`: canonical length-limited Huffman coding, decoded in lock-step chunks;
- :mod:`~onnxcomp.codecs.csr`: Deep Compression's relative-index sparse format with filler zeros;
- :mod:`~onnxcomp.codecs.stack`: the cheapest exact stack of the above for one weight, and its decoding;
- :mod:`~onnxcomp.codecs.blob`: the validated blob one weight is stored in (``kernels/FORMAT.md``).

Passes decide a weight's values; these codecs decide how they are stored, losslessly, and report real bytes.
"""

from onnxcomp.codecs.stack import EncodedWeight, decode_weight, encode_weight, from_blob, to_blob

__all__ = ["EncodedWeight", "decode_weight", "encode_weight", "from_blob", "to_blob"]
