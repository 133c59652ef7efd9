"""Output-level distillation for detectors (issue 19: prune-30 + fine-tune): the detection task's distillation
term, ``training.train`` with a detection teacher, the prune / sparsify stages' ``finetune.distill`` and the
detector recipe ``prune-30-detect`` (its fine-tune without distillation: at lr 0.004 it measured 50.00 mAP without,
49.77 with distill 0.5, one seed each; see docs/detection.md)."""

from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("pycocotools")

from edgekit import models as zoo
from edgekit.errors import UserInputError
from edgekit.tasks import get_task
from edgekit.tasks.detection import distill_loss
from edgekit.tasks.detection_data import digits_detection


@pytest.fixture(scope="module")
def det():
    return digits_detection((3, 64, 64), seed=0, counts={"train": 32, "calib": 8, "test": 16})


@pytest.fixture(scope="module")
def teacher():
    return zoo.load("detector").model.eval()


def test_distill_loss_is_stationary_at_the_teacher_and_grows_away_from_it(det, teacher):
    x = det.calib.x
    with torch.no_grad():
        t = teacher(x)
    s = t.clone().requires_grad_(True)
    loss = distill_loss(s, t, x.shape[-2:])
    loss.backward()
    assert s.grad.abs().max() < 1e-6  # the student equal to the teacher gets no gradient
    g = torch.Generator().manual_seed(0)
    far = [float(distill_loss(t + sigma * torch.randn(t.shape, generator=g), t, x.shape[-2:])) for sigma in (0.1, 0.5, 2.0)]
    loss = loss.detach()
    assert float(loss) < far[0] < far[1] < far[2], (float(loss), far)
    levels = (t[:, :, :64].reshape(8, 15, 8, 8), t[:, :, 64:].reshape(8, 15, 4, 4))  # per-level form, same value
    assert torch.allclose(distill_loss(levels, t, x.shape[-2:]), loss.detach())
    with pytest.raises(UserInputError, match="teacher output"):
        distill_loss(t[:, :12], t, x.shape[-2:])


def test_training_with_a_detection_teacher_moves_the_student_towards_it(det, teacher):
    """Same perturbed student (the teacher reparameterized, so no BatchNorm statistics drift on a 32-canvas split),
    same steps: distilled, it ends closer to the teacher than trained on the labels."""
    from edgekit.training import train

    x = det.calib.x
    task = get_task("detection")
    with torch.no_grad():
        floor = float(task.distill_loss(teacher(x), teacher(x), x))  # the term's constant part (soft-target entropy)

    def trained(weight):
        from edgekit.fusion.fuse import fuse

        student, _ = fuse(copy.deepcopy(teacher), "deploy")  # no BatchNorm: only the weights move in training
        g = torch.Generator().manual_seed(0)
        for name, p in student.named_parameters():  # only the last convs of the head are perturbed and trained
            p.requires_grad_(name.split(".")[2] in ("cls", "reg"))
            if p.requires_grad:
                with torch.no_grad():
                    p.add_(0.05 * torch.randn(p.shape, generator=g))
        train(student, det, epochs=5, lr=1e-2, batch_size=16, weight_decay=0.0, teacher=teacher, distill_weight=weight)
        with torch.no_grad():
            return float(task.distill_loss(student.eval()(x), teacher(x), x)) - floor

    distilled, labels_only = trained(1.0), trained(0.0)
    print("gap to the teacher: distilled", distilled, "labels only", labels_only)
    assert distilled < 0.8 * labels_only, (distilled, labels_only)


def test_prune_stage_distills_from_the_unpruned_model(det, monkeypatch):
    """prune.finetune.distill: the fine-tune gets the unpruned model as teacher (not the pruned one) and the weight."""
    import edgekit.training as training
    from edgekit.pipeline import compress

    seen = {}
    real = training.train

    def spy(model, data, **kw):
        seen["teacher_convs"] = sum(isinstance(m, torch.nn.Conv2d) and m.out_channels == 64 for m in kw["teacher"].modules())
        seen["student_convs"] = sum(isinstance(m, torch.nn.Conv2d) and m.out_channels == 64 for m in model.modules())
        seen["w"] = kw["distill_weight"]
        return real(model, data, **kw)

    monkeypatch.setattr(training, "train", spy)
    result = compress(zoo.load("detector"), "prune-30-detect", data=det, latency=False,
                      overrides=["prune.finetune.epochs=1", "prune.finetune.distill=0.5"])
    ft = result.report.stage("prune").report["finetune"]
    assert ft["epochs"] == 1 and ft["distill"] == 0.5 and seen["w"] == 0.5
    assert seen["teacher_convs"] > 0 and seen["student_convs"] == 0, seen  # stage4's 64 channels were pruned to 48
    assert [s.name for s in result.report.stages] == ["prune", "fuse"]


def test_prune_30_detect_recipe_settings():
    from edgekit.recipe import load_recipe

    prune, fuse = load_recipe("prune-30-detect").stages
    assert prune.name == "prune" and fuse.name == "fuse" and fuse.config.mode == "deploy"
    c = prune.config
    assert (c.ratio, c.round_to, c.finetune.epochs, c.finetune.lr, c.finetune.distill) == (0.34, 16, 10, 0.004, 0.0)
    assert "head*" in c.ignore


def test_sparsify_stage_distills_from_the_dense_model(det, monkeypatch):
    """sparsify.finetune.distill (the same FinetuneConfig): the dense input model is the teacher."""
    import edgekit.training as training
    from edgekit.pipeline import compress

    seen = {}
    real = training.train

    def spy(model, data, **kw):
        seen["w"], seen["teacher"] = kw["distill_weight"], kw["teacher"]
        return real(model, data, **kw)

    monkeypatch.setattr(training, "train", spy)
    result = compress(zoo.load("detector"), "sparse-2to4", data=det, latency=False,
                      overrides=["sparsify.finetune.epochs=1", "sparsify.finetune.distill=0.3", "sparsify.final_epochs=0"])
    assert seen["w"] == 0.3 and seen["teacher"] is not None
    weights = [m.weight for m in seen["teacher"].modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels >= 16]
    assert all((w != 0).float().mean() > 0.9 for w in weights)  # the teacher stayed dense
    assert result.report.stage("sparsify").report["training"]["epochs"] == 1
