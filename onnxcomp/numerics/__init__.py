"""Numerical methods: 1-D k-means, quantization grids, OBS compensation and re-targeting, least-squares repair,
bias correction, negatively correlated search, bit allocation. They compute values; they do not choose targets."""
