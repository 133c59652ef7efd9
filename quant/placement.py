"""Target-aware Q/DQ placement: which activation grid each quantized tensor gets, for the runtime that will run it.

The same fake-quantized graph is not the fastest int8 graph on every runtime. What was read from the runtimes'
own execution graphs (``edgekit.quant.placement_report``) on the zoo ``vit`` at 224:

* **OpenVINO** (CPU plugin): with uint8 *affine* activations (a non-zero zero point) every FullyConnected ran
  as the slower zero-point-compensating ``FullyConnected`` kernel and 14 attention ``Subgraph`` nodes ran in
  f32; with signed symmetric activations (zero point 0), as NNCF places them, all 49 ran as
  ``FullyConnectedQuantizedLegacy`` int8 and the attention subgraphs (Q·Kᵀ, softmax, A·V) ran in int8.
  Non-negative tensors (softmax probabilities, ReLU outputs) take uint8 with zero point 0, so no level is
  spent on negative values. NNCF leaves the softmax input (the Q·Kᵀ logits) in float; so does this rule.
* **ONNX Runtime** (CPU EP): uint8 affine activations x int8 weights is MLAS's fast path, and a ReLU before a
  quantizer whose zero point sits at the grid's bottom is dropped (``QLinearConv`` with a fused ReLU). The
  attention logits Q·Kᵀ are quantized (``QLinearMatMul``) and the scale and softmax run in float: ORT's
  ``QLinearSoftmax`` (what ``quantize_static`` produces) was the slowest kernel of its graph in the per-node
  profile of the zoo ``vit`` at 224 (measured under load). Float logits (``MatMulIntegerToFloat``) were faster
  still, but with the tied q/k grids below ORT's result then drifted from the fake-quant model (third-party
  ``mha_vit``: ONNX cosine 0.986 < 0.99; 1 - 1e-7 with quantized logits), so not used.
* **ONNX Runtime**, GELU: the input of an exact GELU stays float (``gelu_input=False``). A quantized one is read
  through a DequantizeLinear that ORT duplicates per consumer (the GELU reads its input twice), which keeps ORT's
  ``GeluFusion`` from matching: five float element-wise kernels per MLP instead of one ``Gelu`` kernel
  (:mod:`edgekit.quant.placement_gelu`); the MLP's first product then runs as a QGemm with a float output.
* Every placement: a tensor that is only a slice / permutation of a quantized tensor (q, k, v cut out of the
  fused ``qkv`` output) takes that tensor's grid (``TiedFakeQuant``), so the runtimes drop the
  ``DQ -> Gather -> Q`` around the slice and the attention matmuls read the integer tensor directly (ORT:
  28 fewer DequantizeLinear and QuantizeLinear each on the zoo ``vit``, no float Gather left).
* **OpenVINO**, q / k / v: an attention product's input that only moves a quantized tensor gets no Q/DQ pair
  of its own (``requantize_moved=False``): the product reads the qkv output's integer tensor through the
  Reshape / Transpose / Gather, which the CPU plugin runs in int8, as in NNCF's graph. With a tied pair on kᵀ
  the plugin kept an int8 Transpose between two quantizers (12 on the zoo ``vit`` at 224, ~6% of its per-node
  time in OpenVINO's own profile, ``PERF_COUNT``); without it the transpose folds into the Q·Kᵀ product.
* **OpenVINO**, Linear layers on token tensors run on 2-D tokens between two reshapes (``linear_2d``,
  :mod:`edgekit.quant.placement_linear2d`), as in NNCF's graphs: the plugin then keeps a residual branch's
  FullyConnected output int8 (it dequantized that side of the add instead of the residual stream) and runs each
  GELU as its own int8 kernel instead of a slow FullyConnected post-op (zoo ``detector-hybrid``: 1.04-1.05x ->
  0.95x NNCF's latency; zoo ``vit`` at 32x32: 0.79x of before; same quantizers, same outputs).
* **TensorRT**: explicit quantization takes signed symmetric int8 only (the recipe ``int8-sym``).

One :class:`Placement` per runtime, registered in :data:`PLACEMENTS` by the name recipes use as
``quantize.target``. The placement a model was made for is recorded in the quantize stage's report (and so in
``report.json``); exporting it to another runtime works where that runtime takes the graph, and the export's
``validation.json`` carries :func:`placement_note` saying the placement was not made for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from edgekit.quant.config import ACT_INT8_SYM, ACT_UINT8, QScheme
from edgekit.registry import Registry

Activations = Literal["affine", "symmetric", "by_range"]


@dataclass(frozen=True)
class Placement:
    """How Q/DQ pairs are placed for one runtime.

    ``activations``: ``affine`` (uint8, zero point from the range), ``symmetric`` (int8, zero point 0) or
    ``by_range`` (uint8 with zero point 0 where calibration saw no negative value, else int8 symmetric).
    ``softmax_input``: quantize the tensor feeding a softmax (the attention logits Q·Kᵀ, possibly scaled).
    ``runtime`` / ``targets``: the runtime name (``exporters.runtimes.RUNTIMES``) and the export targets whose
    artifacts run on it (a placement is "made for" an export to one of them).
    """

    name: str
    activations: Activations
    softmax_input: bool
    targets: tuple[str, ...]
    note: str = ""
    output_tail: bool = True  # quantize an op output that reaches the graph outputs via concat / reshapes only
    gelu_input: bool = True  # quantize a tensor read only by an exact GELU (placement_gelu); False: it stays float
    # give an attention product's input that only moves a quantized tensor (k = qkv[1].transpose) its own tied
    # Q/DQ pair; False: the product reads the moved integer tensor through the layout ops (OpenVINO)
    requantize_moved: bool = True
    # the same branch of a packed multi-level output (a detector head) on one grid across the levels, so that the
    # ONNX tail concatenates integers and dequantizes once per channel (placement_tail)
    joint_output_grids: bool = False
    # a Linear on 3-D tokens runs on 2-D tokens between two reshapes (as NNCF's graph): OpenVINO then keeps its
    # output int8 before a residual add and runs a GELU after it as an int8 kernel of its own (placement_linear2d)
    linear_2d: bool = False

    def initial_scheme(self) -> QScheme:
        """The grid an activation quantizer observes with (``by_range`` settles on its grid after calibration)."""
        return ACT_UINT8 if self.activations == "affine" else ACT_INT8_SYM

    def settle(self, lo: float) -> QScheme | None:
        """The grid for a tensor whose calibrated minimum is ``lo`` (None: keep the initial grid)."""
        if self.activations != "by_range":
            return None
        return ACT_UINT8 if lo >= 0.0 else ACT_INT8_SYM

    def describe(self) -> str:
        return {"affine": "uint8 affine", "symmetric": "int8 symmetric",
                "by_range": "int8 symmetric, uint8 (zero point 0) where non-negative"}[self.activations]


PLACEMENTS: Registry[Placement] = Registry("quantization target")
DEFAULT_TARGET = "onnxruntime"  # what the shipped int8 recipe measures latency on (recipes/int8.yaml)


def register_placement(p: Placement) -> Placement:
    PLACEMENTS.add(p.name, p)
    return p


for _p in (
    Placement("onnxruntime", "affine", softmax_input=True, targets=("onnx", "tvm", "coreml"),
              note="uint8 affine activations x int8 weights (MLAS u8s8; ReLU folded into the zero point); the "
                   "GELU input float, so ORT fuses the GELU into one Gelu kernel after a float-output QGemm",
              gelu_input=False, joint_output_grids=True),
    Placement("openvino", "by_range", softmax_input=False, targets=("openvino",),
              note="int8 symmetric activations (uint8 zero point 0 when non-negative), attention logits float: "
                   "FullyConnected and the attention subgraphs run in int8 on the CPU plugin; outputs that only "
                   "reach the graph outputs through concat / reshapes (a detector head) float; q, k and v read "
                   "from the quantized qkv output through the layout ops, without a Q/DQ pair of their own",
              output_tail=False, requantize_moved=False, linear_2d=True),
    Placement("tensorrt", "symmetric", softmax_input=True, targets=("tensorrt",),
              note="signed symmetric int8 only (TensorRT explicit quantization; recipe int8-sym)"),
):
    register_placement(_p)


def placement(name: str | None) -> Placement:
    """The registered placement ``name`` (``None``: :data:`DEFAULT_TARGET`); unknown names raise UserInputError."""
    return PLACEMENTS.get(name or DEFAULT_TARGET)


def activation_policy(target: str | None, symmetric_activations: bool) -> Placement:
    """The placement for ``target``; ``symmetric_activations: true`` (the older switch) forces int8 symmetric."""
    p = placement(target)
    if symmetric_activations and p.activations != "symmetric":
        from dataclasses import replace

        p = replace(p, activations="symmetric")
    return p


def placement_note(made_for: str | None, export_target: str) -> dict[str, object] | None:
    """What ``validation.json`` says about the int8 placement of a model exported to ``export_target``.

    None when the model carries no placement (not quantized by edgekit's PTQ). ``made_for_this_target`` is
    False when the placement was made for another runtime: the artifact is valid but may not run every
    quantized op in int8 there."""
    if not made_for:
        return None
    p = PLACEMENTS.get(made_for) if made_for in PLACEMENTS else None
    ok = p is not None and export_target in p.targets
    note = {"made_for": made_for, "export_target": export_target, "made_for_this_target": ok}
    if not ok:
        best = next((n for n, q in PLACEMENTS.items() if export_target in q.targets), None)
        note["note"] = (f"the int8 Q/DQ placement was made for {made_for}, not for target {export_target}: the graph "
                        f"runs, but not necessarily as fast as it could" +
                        (f"; quantize with `quantize.target: {best}` for it" if best else ""))
    return note


def placement_note_for(quantize_stage: dict | None, export_target: str) -> dict[str, object] | None:
    """:func:`placement_note` for the ``quantize`` stage config of a compress output's recipe (None: no stage)."""
    if quantize_stage is None:
        return None
    return placement_note(str(quantize_stage.get("target") or DEFAULT_TARGET), export_target)
