"""Binarized vision transformers (BiViT, He et al., ICCV 2023): 1-bit weights with per-channel scales,
softmax-aware attention binarization, cross-layer binarization schedule, 1-bit packed storage and an
XNOR-popcount kernel for the binarized linear layers.

Sub-modules: ``functional`` (the math), ``modules`` (BinaryLinear, BinaryMatMul, BinarySoftmax),
``convert`` (type-keyed converter registry), ``schedule`` (cross-layer phases), ``pack`` (1-bit storage),
``xnor`` (numpy reference and TVM kernel), ``stages`` (the ``binarize`` recipe stage). Nothing here imports
an optional backend at import time.
"""

from __future__ import annotations
