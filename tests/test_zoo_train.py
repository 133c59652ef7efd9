"""train_zoo: trains with the registered settings, writes a weights_only checkpoint atomically, is seeded."""

from __future__ import annotations

import torch

import edgekit.models as zoo
from edgekit.models._train import train_zoo


def test_train_zoo_writes_a_loadable_seeded_checkpoint(tmp_path):
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    result = train_zoo("repvgg", epochs=1, seed=3, out=a)
    assert set(result) == {"name", "accuracy", "epochs", "seconds"} and result["epochs"] == 1
    assert 0.0 <= result["accuracy"] <= 1.0
    train_zoo("repvgg", epochs=1, seed=3, out=b)
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    model = zoo.create("repvgg", pretrained=False)
    model.load_state_dict(sa)  # strict: every key present
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not list(tmp_path.glob(".*"))  # no temp files left behind
