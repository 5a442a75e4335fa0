"""Kernel templates of the numba-cuda backend, one module per family: `conv` (tiled implicit GEMM and depthwise),
`pool`, `layers` (dense, transposed conv, LRN, softmax, upsample), `tensor` (elementwise and data movement);
`common` holds what they share (header, epilogue code, launch descriptions)."""
