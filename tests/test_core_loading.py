"""MODEL loading: zoo, module:factory, weights-only state dicts, refused pickles, torch.export programs."""

from __future__ import annotations

import pytest
import torch

from edgekit import models
from edgekit.errors import UserInputError
from edgekit.loading import load_model, save_model


def test_zoo_default_and_factory():
    assert load_model().name == models.DEFAULT_MODEL
    lm = load_model("tests.core_models:small_net")
    assert lm.name == "small_net" and isinstance(lm.model, torch.nn.Module)
    with pytest.raises(UserInputError, match="returned int"):
        load_model("tests.core_models:not_a_module")
    with pytest.raises(UserInputError, match="cannot import"):
        load_model("no_such_pkg.mod:f")
    with pytest.raises(UserInputError, match="zoo models"):
        load_model("not-a-model")


def test_state_dict_needs_arch_and_loads_weights_only(tmp_path):
    sd = models.create("convnet", pretrained=False).state_dict()
    p = tmp_path / "w.pt"
    torch.save(sd, p)
    with pytest.raises(UserInputError, match="--arch"):
        load_model(str(p))
    lm = load_model(str(p), arch="convnet")
    assert torch.equal(lm.model.state_dict()["head.weight"], sd["head.weight"])


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_refused_without_trust(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p)
    with pytest.raises(UserInputError, match="--trust-pickle"):
        load_model(str(p))
    full = tmp_path / "full.pt"
    torch.save(models.create("convnet", pretrained=False), full)
    with pytest.raises(UserInputError, match="refused to unpickle"):
        load_model(str(full))
    with pytest.warns(UserWarning, match="arbitrary code"):
        lm = load_model(str(full), trust_pickle=True)
    assert isinstance(lm.model, torch.nn.Module)


def test_pt2_round_trip(tmp_path):
    m = models.create("convnet")
    x = torch.randn(3, 3, 32, 32)
    assert save_model(m, tmp_path, x[:1])["dynamic_batch"] is True
    lm = load_model(str(tmp_path / "model.pt2"))
    torch.testing.assert_close(lm.model(x), m(x), rtol=1e-5, atol=1e-5)  # dynamic batch survives
