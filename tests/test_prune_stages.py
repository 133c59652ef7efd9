"""The ``prune`` stage through a recipe, and MaskSparsity's masked L1 on BN scales."""

from __future__ import annotations

import torch

import edgekit.models as zoo
from edgekit.data import load_data
from edgekit.prune.masksparsity import _l1_hooks
from edgekit.recipe import load_recipe
from edgekit.stages import StageContext, get_stage


def test_prune_recipe_stage_reports_and_finetunes():
    recipe = load_recipe("prune-30", overrides=["prune.finetune.epochs=1"])
    (stage,) = recipe.stages
    fn, _ = get_stage("prune")
    data = load_data()
    data.train.x, data.train.y = data.train.x[:128], data.train.y[:128]
    data.test.x, data.test.y = data.test.x[:64], data.test.y[:64]
    model = zoo.create("convnet")
    new, report = fn(model, stage.config, StageContext(data, model, (data.calib.x[:1],)))
    assert report["macs"]["after"] < 0.8 * report["macs"]["before"]
    assert set(report["accuracy"]) == {"before", "pruned", "finetuned"}
    assert all(c % 8 == 0 for c in (m.out_channels for m in new.modules() if isinstance(m, torch.nn.Conv2d)))
    assert "features.2.0" in report["removed_per_layer"]


def test_masksparsity_l1_only_on_chosen_channels():
    gamma = torch.nn.Parameter(torch.tensor([0.5, -0.4, 0.3, -0.2]))
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0])
    (h,) = _l1_hooks([(gamma, mask)], 0.01)
    (gamma * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    h.remove()
    torch.testing.assert_close(gamma.grad, torch.tensor([1.01, 1.99, 3.0, 4.0]))
