"""Small models written the way other people write them, for tests that prove graph capture (issue 12).

Every model here takes a 3x32x32 input, has 10 classes, runs in milliseconds, and ``torch.fx.symbolic_trace``
FAILS on it (asserted by :func:`assert_fx_fails`), so a test that compresses it exercises the torch.export path:

- ``shape_resnet``: ResNet-style CNN with control flow on shapes (``if x.shape[-1] > ...``,
  ``int(x.shape[1])``), returning a ModelOutput-like dataclass (``logits``, ``features``).
- ``dict_resnet``: the same network returning a plain ``dict`` with the logits *second*.
- ``mobilenet_v2``: MobileNetV2-style inverted residuals (depthwise convs, ReLU6), returning a tuple.
- ``mha_vit``: ViT with ``nn.MultiheadAttention``, layer scale, stochastic depth (DropPath, identity in eval)
  and a config-flag branch (``use_cls_token``).
- ``sdpa_deit``: DeiT-style ViT with a hand-written qkv Linear and ``F.scaled_dot_product_attention``,
  class + distillation tokens, returning ``(logits, dist_logits)``.
- ``swin_tiny``: one Swin-like stage (window attention with a relative position bias table, shifted windows).
- ``hf_*``: ``transformers`` classes (ResNet, MobileNetV2, ConvNeXt, ViT, Swin) from tiny configs, random init
  (PyTorch's default init for conv / linear), nothing downloaded. They need ``transformers``; :data:`HF_MODELS` is empty when it is not installed.

``MODELS`` maps a name to a :class:`ThirdPartyModel` (factory + what its output is + which leaf is the logits);
use ``ALL`` / ``params()`` to parametrize tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = (3, 32, 32)
NUM_CLASSES = 10


# ------------------------------------------------------------------------------------------- CNN with shape flow


@dataclass
class ClassifierOutput:
    """A ModelOutput-like dataclass (not registered with torch's pytree)."""

    logits: torch.Tensor
    features: torch.Tensor | None = None


class ShapeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) if (stride != 1 or cin != cout) else None

    def forward(self, x):
        # written as many libraries do: decide from the runtime shape
        if int(x.shape[1]) != self.conv2.out_channels or self.down is not None:
            identity = self.down(x)
        else:
            identity = x
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ShapeResNet(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, widths=(16, 32), as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(ShapeBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.layers = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        if x.shape[-1] > 16:  # downsample large inputs first
            x = F.max_pool2d(x, 2)
        x = self.layers(x)
        feats = x.mean(dim=(2, 3))
        logits = self.head(feats)
        if self.as_dict:
            return {"features": feats, "logits": logits}
        return ClassifierOutput(logits=logits, features=feats)


# ------------------------------------------------------------------------------------------- MobileNetV2-style


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        out = self.conv(x)
        if self.use_res and x.shape[1] == out.shape[1]:  # shape test on the live tensors
            return x + out
        return out


class MobileNetV2Like(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        cfg = [(16, 1, 1), (24, 2, 6), (24, 1, 6), (32, 2, 6)]
        layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(inplace=True)]
        cin = 16
        for cout, stride, expand in cfg:
            layers.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        layers += [nn.Conv2d(cin, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x):
        f = self.features(x)
        pooled = F.adaptive_avg_pool2d(f, 1).flatten(1)
        return self.classifier(pooled), pooled


# ------------------------------------------------------------------------------------------- ViTs


class DropPath(nn.Module):
    """Stochastic depth (identity in eval)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.p
        return x * keep / (1 - self.p)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 0.1) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x):
        return x * self.gamma


@dataclass
class ViTConfig:
    dim: int = 32
    depth: int = 2
    heads: int = 2
    patch: int = 4
    mlp_ratio: float = 2.0
    drop_path: float = 0.1
    use_cls_token: bool = True


class MHABlock(nn.Module):
    def __init__(self, cfg: ViTConfig, drop: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = nn.MultiheadAttention(cfg.dim, cfg.heads, batch_first=True)
        self.ls1 = LayerScale(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))
        self.ls2 = LayerScale(cfg.dim)
        self.drop_path = DropPath(drop)

    def forward(self, x):
        h = self.norm1(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + self.drop_path(self.ls1(a))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class MHAViT(nn.Module):
    def __init__(self, cfg: ViTConfig | None = None, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ViTConfig()
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch, cfg.patch)
        n = (INPUT_SHAPE[1] // cfg.patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.use_cls_token else None
        self.pos_embed = nn.Parameter(torch.randn(1, n + int(cfg.use_cls_token), cfg.dim) * 0.02)
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(MHABlock(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, num_classes)

    def forward(self, x):
        b = x.shape[0]
        x = self.patch_embed(x)
        n_tokens = int(x.shape[2] * x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.cfg.use_cls_token:
            x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        if x.shape[1] != self.pos_embed.shape[1]:  # resolution check, as timm does
            raise ValueError(f"expected {self.pos_embed.shape[1]} tokens, got {n_tokens}")
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        x = x[:, 0] if self.cfg.use_cls_token else x.mean(1)
        return self.head(x)


class SDPAAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class SDPABlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SDPAAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim * 2)
        self.fc2 = nn.Linear(dim * 2, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class SDPADeiT(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2, patch: int = 4, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (32 // patch) ** 2 + 2, dim) * 0.02)
        self.blocks = nn.Sequential(*[SDPABlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes)

    def forward(self, x):
        B, C, H, W = x.shape
        assert H % self.patch == 0 and W % self.patch == 0, "input size must be a multiple of the patch"
        x = self.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(B, -1, -1), self.dist_token.expand(B, -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0]), self.head_dist(x[:, 1])


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)


def window_reverse(w: torch.Tensor, ws: int, H: int, W: int) -> torch.Tensor:
    B = int(w.shape[0] / (H * W / ws / ws))
    x = w.view(B, H // ws, W // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, -1)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int) -> None:
        super().__init__()
        self.ws, self.heads = ws, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1], persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B_, N, C = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        attn = attn.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B_, N, C))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int, shift: int) -> None:
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x):
        B, H, W, C = x.shape
        if min(H, W) <= self.ws:  # a window covers the whole map: no shift (as Swin does)
            shift = 0
        else:
            shift = self.shift
        h = self.norm1(x)
        if shift > 0:
            h = torch.roll(h, shifts=(-shift, -shift), dims=(1, 2))
        h = window_reverse(self.attn(window_partition(h, self.ws)), self.ws, H, W)
        if shift > 0:
            h = torch.roll(h, shifts=(shift, shift), dims=(1, 2))
        x = x + h
        return x + self.mlp(self.norm2(x))


class SwinTiny(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, ws: int = 4, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.norm0 = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList([SwinBlock(dim, heads, ws, 0), SwinBlock(dim, heads, ws, ws // 2)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.norm0(self.patch_embed(x).permute(0, 2, 3, 1))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x).mean(dim=(1, 2)))


# ------------------------------------------------------------------------------------------- transformers


def _hf(config_cls: str, model_cls: str, **config) -> Callable[[], nn.Module]:
    def factory() -> nn.Module:
        import transformers

        cfg = getattr(transformers, config_cls)(num_labels=NUM_CLASSES, **config)
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(cfg).eval()
        # PyTorch's default init instead of the library's (std 0.02): with 0.02 the activations of a random
        # 20-layer CNN shrink below float32's resolution and any int8 comparison on them is meaningless
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.reset_parameters()
        return model

    factory.__name__ = f"hf_{model_cls}"
    return factory


def has_transformers() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ThirdPartyModel:
    name: str
    factory: Callable[[], nn.Module]
    output: str  # what forward returns: tensor | tuple | dict | dataclass | ModelOutput
    logits: str  # the pytree path of the logits leaf (as edgekit.outputs names it)
    family: str  # cnn | vit
    needs: str | None = None  # optional package

    def build(self, seed: int = 0) -> nn.Module:
        if self.needs == "transformers" and not has_transformers():
            pytest.skip("transformers is not installed")
        torch.manual_seed(seed)
        return self.factory().eval()


def _seeded(cls, **kw) -> Callable[[], nn.Module]:
    return lambda: cls(**kw)


HAND_MODELS = [
    ThirdPartyModel("shape_resnet", _seeded(ShapeResNet), "dataclass", "logits", "cnn"),
    ThirdPartyModel("dict_resnet", _seeded(ShapeResNet, as_dict=True), "dict", "logits", "cnn"),
    ThirdPartyModel("mobilenet_v2", _seeded(MobileNetV2Like), "tuple", "0", "cnn"),
    ThirdPartyModel("mha_vit", _seeded(MHAViT), "tensor", "", "vit"),
    ThirdPartyModel("sdpa_deit", _seeded(SDPADeiT), "tuple", "0", "vit"),
    ThirdPartyModel("swin_tiny", _seeded(SwinTiny), "tensor", "", "vit"),
]

HF_MODELS = [
    ThirdPartyModel("hf_resnet", _hf("ResNetConfig", "ResNetForImageClassification", embedding_size=8, hidden_sizes=[8, 16],
                                     depths=[1, 1], layer_type="basic"), "ModelOutput", "logits", "cnn", "transformers"),
    ThirdPartyModel("hf_mobilenet_v2", _hf("MobileNetV2Config", "MobileNetV2ForImageClassification", image_size=32,
                                           depth_multiplier=0.25, finegrained_output=False), "ModelOutput", "logits", "cnn", "transformers"),
    ThirdPartyModel("hf_convnext", _hf("ConvNextConfig", "ConvNextForImageClassification", num_stages=2, hidden_sizes=[8, 16],
                                       depths=[1, 1], patch_size=2), "ModelOutput", "logits", "cnn", "transformers"),
    ThirdPartyModel("hf_vit", _hf("ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8, hidden_size=32,
                                  num_hidden_layers=2, num_attention_heads=2, intermediate_size=64), "ModelOutput", "logits", "vit", "transformers"),
    ThirdPartyModel("hf_swin", _hf("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=2, embed_dim=16,
                                   depths=[1, 1], num_heads=[1, 2], window_size=4, mlp_ratio=2.0), "ModelOutput", "logits", "vit", "transformers"),
]

ALL = HAND_MODELS + HF_MODELS
MODELS = {m.name: m for m in ALL}
VITS = [m for m in ALL if m.family == "vit"]
CNNS = [m for m in ALL if m.family == "cnn"]


def params(models=None, slow: tuple[str, ...] = ()) -> list:
    """``pytest.param`` for each model (id = its name; the names in ``slow`` get the ``slow`` mark)."""
    return [pytest.param(m, id=m.name, marks=[pytest.mark.slow] if m.name in slow else []) for m in (models or ALL)]


def example(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))


def assert_fx_fails(model: nn.Module) -> str:
    """Assert that ``torch.fx.symbolic_trace`` cannot trace ``model`` (so a test on it proves graph capture)."""
    try:
        torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises TraceError, TypeError, AttributeError, ...
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError(f"torch.fx.symbolic_trace traced {type(model).__name__}; it is not a capture test model")


# module-level factories so the CLI can load them as ``tests.thirdparty_models:<name>``
def shape_resnet() -> nn.Module:
    return MODELS["shape_resnet"].build()


def dict_resnet() -> nn.Module:
    return MODELS["dict_resnet"].build()


def mobilenet_v2() -> nn.Module:
    return MODELS["mobilenet_v2"].build()


def mha_vit() -> nn.Module:
    return MODELS["mha_vit"].build()


def sdpa_deit() -> nn.Module:
    return MODELS["sdpa_deit"].build()


def swin_tiny() -> nn.Module:
    return MODELS["swin_tiny"].build()


def hf_vit() -> nn.Module:
    return MODELS["hf_vit"].build()


def hf_resnet() -> nn.Module:
    return MODELS["hf_resnet"].build()

