"""Flows for real scalar fields ``(B, L_0, ..., L_{D-1})``.

- :mod:`.affine`: ``affine_coupling``, Real NVP affine coupling layers on checkerboard masks
  (Dinh et al. 1605.08803; for phi^4, Albergo et al. 1904.12072), optionally after
- :mod:`.fourier`: a learnable linear layer diagonal in momentum space (a learned free field), and
- :mod:`.zero_mode`: a learnable monotone map of the magnetization alone.
"""
