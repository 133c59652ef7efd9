"""Fusion: Conv-BN folding, ConvBN modes and structural reparameterization (see :mod:`edgekit.fusion.fuse`)."""

from edgekit.fusion.fuse import find_bn_pairs, fold_bn, fuse, set_convbn_mode

__all__ = ["find_bn_pairs", "fold_bn", "fuse", "set_convbn_mode"]
