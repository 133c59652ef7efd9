"""BiViT W1A1 as one TVM library: binarized layers on the XNOR / AND-popcount kernels, the rest fp32 (quant/bivit/tvm_build.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

from edgekit.errors import UserInputError  # noqa: E402
from edgekit.quant.bivit.convert import BinarizeOptions, convert  # noqa: E402
from edgekit.quant.bivit.modules import BinaryLinear, freeze  # noqa: E402


def _binarized(act_bits: int = 1):
    from edgekit.loading import load_model

    model, _ = convert(load_model("vit").model.eval(), BinarizeOptions(act_bits=act_bits))
    freeze(model)
    return model.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from edgekit.quant.bivit import tvm_build

    model = _binarized(1)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = tvm_build.build(model, x)
    path = out.save(tmp_path_factory.mktemp("bivit-tvm") / "model.so")
    return model, x, out, path


def test_whole_model_matches_pytorch_on_digits(built):
    """The trained digits ViT, binarized W1A1: the compiled library (loaded back from disk) agrees with the
    PyTorch BiViT model to float rounding (relative 1e-4 of the largest logit) and on every top-1, on real
    digit images and random inputs."""
    from edgekit.data import load_data
    from edgekit.quant.bivit import tvm_build

    model, x, _, path = built
    run = tvm_build.load(path, threads=1)
    images = load_data("digits", (3, 32, 32)).test.x[:8]
    with torch.no_grad():
        ref = model(images).numpy()
    got = np.concatenate([run(images[i:i + 1].numpy()) for i in range(len(images))])
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).all()
    check = tvm_build.compare(model, run, x, n=3)
    assert check["max_rel_diff"] <= 1e-4 and check["top1_agreement"] == 1.0, check["summary"]


def test_binary_part_runs_packed_and_is_small(built):
    """Every BinaryLinear and every attention matmul went to a popcount kernel; the binarized weights are
    stored packed (>= 10x smaller than their fp32 form); the library file exists."""
    model, _, out, path = built
    n_linear = sum(isinstance(m, BinaryLinear) for m in model.modules())
    depth = len(model.blocks)
    assert out.storage["binary_layers"] == n_linear and out.storage["binary_matmuls"] == 2 * depth
    assert out.storage["binary_fp32_bytes"] >= 10 * out.storage["binary_bytes"]
    assert path.stat().st_size > out.storage["binary_bytes"]


def test_refuses_what_has_no_popcount_kernel():
    """W1A8 layers (8-bit activations) are refused with the layer's name, not built as something else."""
    from edgekit.quant.bivit import tvm_build

    with pytest.raises(UserInputError, match=r"blocks\.0\.attn|act_bits|bits=8"):
        tvm_build.build(_binarized(8), torch.randn(1, 3, 32, 32))
    with pytest.raises(UserInputError, match="no BinaryLinear"):
        tvm_build.build(torch.nn.Sequential(torch.nn.Linear(4, 4)), torch.randn(1, 4))


def test_deployables_rows_name_the_fastest_fp32_runtime(tmp_path):
    """benchmarks.deployables: self-timed (worker) runners report their own ms; each row's ratios are against
    fp32 on its own runtime and against the fastest fp32 runtime timed in the same loop."""
    from benchmarks.deployables import Deployable, Reference, interleaved_ms, table_rows

    def worker_like():
        return 5.0

    worker_like.self_timed = True
    ms = interleaved_ms({"fp32/tvm": worker_like, "fp32/onnxruntime": lambda: None}, runs=3, warmup=0)
    assert ms["fp32/tvm"] == 5.0 and ms["fp32/onnxruntime"] < 5.0
    ref = Reference(None, None, None, None, "random", tmp_path, runners={"onnxruntime": None, "tvm": None},
                    bytes={"onnx": 1000, "tvm": 2000})
    ms = {"fp32/onnxruntime": 10.0, "fp32/tvm": 40.0, "bivit-w1a1/tvm": 8.0}
    (row,) = table_rows(ref, [Deployable("bivit-w1a1", "tvm", None, 100)], ms)
    assert row["speed_ratio"] == 5.0 and row["fastest_fp32_runtime"] == "onnxruntime"
    assert row["ratio_vs_fastest"] == 10.0 / 8.0 and row["fp32_bytes"] == 2000


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("EDGEKIT_LONG_TESTS"),
                    reason="MetaSchedule search + build: the I-ViT and BiViT tuned-build tests did not finish together within 12 min on 2 cores; set EDGEKIT_LONG_TESTS=1 to run it")
def test_tuned_build_matches_pytorch(tmp_path):
    """tune > 0: the fp32 kernels get MetaSchedule trials (the popcount kernels, scheduled by hand, are not
    tasks), the database is cached, and the library still computes the BiViT model."""
    from edgekit.quant.bivit import tvm_build

    model = _binarized(1)
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = tvm_build.build(model, x, tune=4, tune_cache=tmp_path / "cache")
    info = out.storage["tune"]
    assert info["trials_total"] == 4 and info["tasks"] >= 1 and out.storage["binary_layers"] > 0
    assert not any("popcount" in n or "xnor" in n for n in info["task_names"])
    run = tvm_build.load(out.save(tmp_path / "model.so"), threads=1)
    assert tvm_build.compare(model, run, x, n=2)["min_cosine"] > 0.999
