"""Fusion: Conv-BN folding and structural reparameterization (see :mod:`edgekit.fusion.fuse`)."""

from edgekit.fusion.fuse import fuse

__all__ = ["fuse"]
