"""edgekit's operator library: the blocks zoo models are built from.

Blocks that have a deploy form (one conv after folding / reparameterization) expose it through
``to_deploy()``, which returns the deploy-form module; :func:`edgekit.fusion.fuse` only calls that method.

=====================  ==========================================  =====================
block                  module                                      deploy form
=====================  ==========================================  =====================
ConvBN                 :mod:`edgekit.ops.convbn`                    ConvAct (folded conv)
RepConv, MobileOneBlock :mod:`edgekit.ops.repconv`                  ConvAct (one KxK conv)
DilatedReparamBlock    :mod:`edgekit.ops.dilated`                   ConvAct (one dw KxK)
InceptionDWConv        :mod:`edgekit.ops.inception`                 (none)
InvertedResidual       :mod:`edgekit.ops.mobile`                    (its ConvBNs fold)
GroupedConvBlock       :mod:`edgekit.ops.mobile`                    (its ConvBNs fold)
PatchEmbed, Attention, Mlp, TransformerBlock  :mod:`edgekit.ops.transformer`  (none)
=====================  ==========================================  =====================
"""

from __future__ import annotations

from edgekit.ops.convbn import ConvAct, ConvBN, make_act
from edgekit.ops.dilated import DilatedReparamBlock
from edgekit.ops.inception import InceptionDWConv
from edgekit.ops.mobile import GroupedConvBlock, InvertedResidual
from edgekit.ops.repconv import MobileOneBlock, RepConv
from edgekit.ops.transformer import Attention, MatMul, Mlp, PatchEmbed, Softmax, TransformerBlock

__all__ = [
    "Attention", "ConvAct", "ConvBN", "DilatedReparamBlock", "GroupedConvBlock", "InceptionDWConv",
    "InvertedResidual", "MatMul", "Mlp", "MobileOneBlock", "PatchEmbed", "RepConv", "Softmax", "TransformerBlock",
    "make_act",
]
