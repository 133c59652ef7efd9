"""edgekit's operator library: the blocks zoo models are built from.

Blocks that have a deploy form (one conv after folding / reparameterization) expose it through
``to_deploy()``, which returns the deploy-form module; :func:`edgekit.fusion.fuse` only calls that method.
"""

from __future__ import annotations

from edgekit.ops.transformer import Attention, MatMul, Mlp, PatchEmbed, Softmax, TransformerBlock

__all__ = ["Attention", "MatMul", "Mlp", "PatchEmbed", "Softmax", "TransformerBlock"]
