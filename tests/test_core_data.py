"""Data loaders: built-in digits, .npz, image folders, random; bad input is rejected before any work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.data import load_data
from edgekit.errors import UserInputError


def test_digits_splits_are_deterministic_and_disjoint():
    a, b = load_data(), load_data()
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.train.y, b.train.y)
    assert (len(a.train), len(a.calib), len(a.test)) == (1258, 180, 359)
    assert a.train.x.shape[1:] == (3, 32, 32) and a.train.x.dtype == torch.float32
    assert a.num_classes == 10 and set(a.test.y.tolist()) == set(range(10))
    # no sample appears in two splits
    rows = lambda s: {tuple(r) for r in s.x[:, 0, ::4, ::4].reshape(len(s), -1).tolist()}  # noqa: E731
    assert not rows(a.train) & rows(a.test)
    assert load_data(seed=1).test.x.shape == a.test.x.shape and not torch.equal(load_data(seed=1).test.x, a.test.x)


def test_digits_reshaped_for_model():
    d = load_data(input_shape=(1, 16, 16))
    assert d.test.x.shape[1:] == (1, 16, 16)


def test_random_spec():
    d = load_data("random:3x64x48")
    assert d.test.x.shape[1:] == (3, 64, 48) and d.test.y is None and not d.labeled
    with pytest.raises(UserInputError, match="CxHxW"):
        load_data("random:3x64")


def test_npz(tmp_path):
    x = np.random.rand(40, 1, 8, 8).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_data(str(tmp_path / "d.npz"), input_shape=(3, 16, 16))
    assert d.num_classes == 4 and d.train.x.shape[1:] == (3, 16, 16)


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"x": np.zeros((20, 2, 2, 2, 2), np.float32)}, "shape"),
        ({"x": np.array(["a"] * 20)}, "dtype"),
        ({"x": np.zeros((20, 1, 8, 8), np.float32), "y": np.zeros(20, np.float32)}, "'y'"),
        ({"z": np.zeros(3)}, "no array 'x'"),
    ],
)
def test_npz_bad(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(UserInputError, match=match) as err:
        load_data(str(p))
    assert str(p) in str(err.value)


def test_image_folder(tmp_path):
    from PIL import Image

    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray((np.random.rand(10, 12, 3) * 255).astype(np.uint8)).save(tmp_path / c / f"{i}.png")
    d = load_data(str(tmp_path), input_shape=(3, 8, 8))
    assert d.num_classes == 2 and d.train.x.shape[1:] == (3, 8, 8)
    (tmp_path / "dog" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(UserInputError, match="broken.png"):
        load_data(str(tmp_path), input_shape=(3, 8, 8))


def test_unknown_spec():
    with pytest.raises(UserInputError, match="accepted"):
        load_data("imagenet")
