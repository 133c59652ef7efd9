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


# ----------------------------------------------------------------------------------------------- streaming sources


def _folder(root, classes=("cat", "dog", "eel"), per_class=8, size=(20, 28), seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder_streams_batches_and_is_deterministic(tmp_path):
    from edgekit.datasources import LazyImages, StreamSplit

    root = _folder(tmp_path / "imgs")
    d = load_data(str(root), input_shape=(3, 16, 16))
    assert isinstance(d.train, StreamSplit) and isinstance(d.train.x, LazyImages)
    assert len(d.train) + len(d.calib) + len(d.test) == 24 and d.num_classes == 3
    assert isinstance(d.calib.x, torch.Tensor) and d.calib.x.shape[1:] == (3, 16, 16)  # calibration is in memory
    xb, yb = next(d.train.batches(5, shuffle=True, seed=1))
    assert xb.shape == (5, 3, 16, 16) and yb.dtype == torch.int64 and xb.dtype == torch.float32
    assert d.test.x.shape == (len(d.test), 3, 16, 16) and d.test.x[:2].shape == (2, 3, 16, 16)
    again = load_data(str(root), input_shape=(3, 16, 16))
    assert torch.equal(again.test.x[:], d.test.x[:]) and torch.equal(again.test.y, d.test.y)
    # default normalization: estimated from the train images, recorded
    assert d.preprocessing["estimated"] and abs(float(d.train.x[:].mean())) < 0.2


def test_threaded_decoding_and_batchwise_calibration_equal_one_sample_at_a_time(tmp_path):
    """Threads decode to uint8 only (floats are made in the caller's thread, for memory); the calibration split
    is filled batch by batch. Both must give exactly what loading each sample alone gives."""
    from edgekit.data import DataOptions

    root = _folder(tmp_path / "imgs", per_class=10)
    d = load_data(str(root), input_shape=(3, 16, 16), options=DataOptions(batch_size=3, split={"train": 0.4, "calibration": 0.4, "test": 0.2}))
    src, cal = d.train.source, d.calib
    assert len(cal) == 12 and d.train.workers > 1  # 4 batches of 3, the last one full
    alone = torch.stack([src.sample(i)[0] for i in d.train.indices[:7]])
    assert torch.equal(d.train.x[:7], alone)  # threaded take == one at a time, bit for bit
    calib_src = load_data(str(root), input_shape=(3, 16, 16), options=DataOptions(split={"train": 0.4, "calibration": 0.4, "test": 0.2}))
    assert torch.equal(cal.x, calib_src.calib.x) and torch.equal(cal.y, calib_src.calib.y)  # batch size changes nothing


def test_image_folder_preprocessing_and_splits(tmp_path):
    from edgekit.data import DataOptions

    root = _folder(tmp_path / "imgs", size=(30, 40))
    opts = DataOptions(resize=24, crop=[20, 22], mean=[0.5, 0.5, 0.5], std=[0.25], split={"train": 0.5, "calibration": 0.25, "test": 0.25}, calibration_max=4)
    d = load_data(str(root), input_shape=(3, 99, 99), options=opts)
    assert d.input_shape == (3, 20, 22) and d.train.x[:1].shape == (1, 3, 20, 22)
    assert (len(d.train), len(d.calib), len(d.test)) == (12 + 2, 4, 6)  # calibration over the cap goes to train
    from PIL import Image

    f = d.test.source.files[d.test.indices[0]]
    with Image.open(f) as im:  # 30x40 -> shorter side 24 -> 24x32 -> center crop 20x22, then (x - 0.5) / 0.25
        ref = np.asarray(im.convert("RGB").resize((32, 24), Image.BILINEAR), dtype=np.float32)[2:22, 5:27] / 255.0
    assert torch.allclose(d.test.x[0], (torch.from_numpy(ref).permute(2, 0, 1) - 0.5) / 0.25, atol=1e-6)


def test_data_options_are_validated():
    from pydantic import ValidationError

    from edgekit.data import DataOptions

    with pytest.raises(ValidationError, match="add up to 1"):
        DataOptions(split={"train": 0.9, "calibration": 0.1, "test": 0.1})
    with pytest.raises(ValidationError, match="positive"):
        DataOptions(std=[0.2, 0.0, 0.2])
    with pytest.raises(ValidationError):
        DataOptions(rezise=3)  # unknown field
    with pytest.raises(UserInputError, match="data.mean has 2 values"):
        load_data("random:3x8x8", options={"mean": [0.1, 0.2]}) if False else _prep_check()


def _prep_check():
    from edgekit.data import DataOptions, _prep

    _prep((3, 8, 8), DataOptions(mean=[0.1, 0.2]), "x")


def test_separate_split_folders(tmp_path):
    train = _folder(tmp_path / "train", per_class=5, seed=1)
    test = _folder(tmp_path / "val", per_class=2, seed=2)
    d = load_data(None, input_shape=(3, 8, 8), options={"train": str(train), "test": str(test), "calibration_max": 4})
    assert (len(d.train), len(d.calib), len(d.test)) == (15, 4, 6) and d.num_classes == 3
    assert d.test.source.files[0].is_relative_to(test)


def test_unreadable_image_is_named_before_any_work(tmp_path):
    root = _folder(tmp_path / "imgs", per_class=4)
    (root / "dog" / "zz.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserInputError, match="zz.jpg: not a readable image"):
        load_data(str(root), input_shape=(3, 8, 8))


class Digitsish(torch.utils.data.Dataset):
    """A user's Dataset: (tensor, label) items; optionally one poisoned sample."""

    def __init__(self, n=40, bad_at=None, bad_label_at=None, dict_targets=False):
        self.n, self.bad_at, self.bad_label_at, self.dict_targets = n, bad_at, bad_label_at, dict_targets

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        x = torch.full((1, 6, 6), float(i) / self.n)
        if i == self.bad_at:
            x[0, 2, 3] = float("nan")
        y = -1 if i == self.bad_label_at else i % 4
        if self.dict_targets:
            return x, {"boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0]]), "labels": torch.tensor([y])}
        return x, y


def test_dataset_and_dataloader_sources():
    d = load_data(Digitsish(), input_shape=(1, 6, 6))
    assert d.name == "dataset:Digitsish" and d.num_classes == 4 and len(d.train) == 28
    xb, yb = next(d.test.batches(4))
    assert xb.shape == (4, 1, 6, 6) and torch.equal(yb, d.test.y[:4])
    loader = torch.utils.data.DataLoader(Digitsish(), batch_size=8)
    d2 = load_data(loader, input_shape=(1, 6, 6))
    assert torch.equal(d2.test.x[:], d.test.x[:])


def test_dataset_nan_and_label_rejected_with_index():
    # the labels are read once up front (no `targets` attribute): the poisoned sample is found before any work
    with pytest.raises(UserInputError, match=r"Digitsish\[7\]: input has a NaN or Inf value \(at element \(0, 2, 3\)\)"):
        load_data(Digitsish(bad_at=7), input_shape=(1, 6, 6))
    d = load_data(Digitsish(bad_at=7), options={"num_classes": 4, "split": {"train": 0.0, "calibration": 0.1, "test": 0.9}, "mean": [0.0]})
    with pytest.raises(UserInputError, match=r"Digitsish\[7\]: input has a NaN"):  # or while streaming
        list(d.test.batches(16))
    with pytest.raises(UserInputError, match=r"Digitsish\[5\]: label -1 is out of range"):
        load_data(Digitsish(bad_label_at=5), input_shape=(1, 6, 6)).test.y
    with pytest.raises(UserInputError, match=r"Wide\[\d+\]: label \d+ is out of range; accepted: 0..2"):
        class Wide(Digitsish):
            def __getitem__(self, i):
                return torch.zeros(1, 6, 6), i
        load_data(Wide(), options={"num_classes": 3}).train.y


def test_npz_nan_and_labels_rejected_with_file_and_index(tmp_path):
    x = np.random.rand(20, 1, 4, 4).astype(np.float32)
    x[13, 0, 1, 1] = np.inf
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(20) % 2)
    with pytest.raises(UserInputError, match=r"nan.npz: field 'x' has NaN or Inf values in sample 13"):
        load_data(str(tmp_path / "nan.npz"))
    y = np.arange(20) % 3
    y[4] = -2
    np.savez(tmp_path / "neg.npz", x=np.zeros((20, 1, 4, 4), np.float32), y=y)
    with pytest.raises(UserInputError, match=r"neg.npz: field 'y': label -2 at index 4 is out of range"):
        load_data(str(tmp_path / "neg.npz"))
    np.savez(tmp_path / "wide.npz", x=np.zeros((20, 1, 4, 4), np.float32), y=np.arange(20) % 5)
    with pytest.raises(UserInputError, match=r"label 3 at index 3 is out of range; accepted: 0..2"):
        load_data(str(tmp_path / "wide.npz"), options={"num_classes": 3})


def test_detection_targets_stream_as_dicts():
    d = load_data(Digitsish(dict_targets=True), input_shape=(1, 6, 6))
    assert d.task == "detection" and d.test.y is None and not d.labeled
    xb, targets = next(d.train.batches(3))
    assert xb.shape == (3, 1, 6, 6) and isinstance(targets, list) and set(targets[0]) == {"boxes", "labels"}


def test_module_factory_source(tmp_path, monkeypatch):
    (tmp_path / "mydata.py").write_text(
        "import torch\n"
        "def make():\n"
        "    ds = torch.utils.data.TensorDataset(torch.rand(30, 3, 8, 8), torch.arange(30) % 2)\n"
        "    return {'train': ds, 'test': torch.utils.data.DataLoader(ds, batch_size=4)}\n"
        "def nothing():\n"
        "    return 42\n"
    )
    monkeypatch.chdir(tmp_path)
    d = load_data("mydata:make", input_shape=(3, 8, 8))
    assert (len(d.train), len(d.test)) == (30, 30) and d.num_classes == 2 and len(d.calib) == 30
    with pytest.raises(UserInputError, match="has no __len__"):
        load_data("mydata:nothing")
    with pytest.raises(UserInputError, match="cannot import module 'nosuchmod'"):
        load_data("nosuchmod:make")


def test_compress_streams_an_image_folder(tmp_path):
    """The whole pipeline on a streamed folder: accuracy, calibration, fidelity and latency all work."""
    import edgekit
    from edgekit import models

    root = _folder(tmp_path / "imgs", classes=("a", "b"), per_class=12, size=(32, 32))
    data = load_data(str(root), input_shape=(3, 32, 32))
    result = edgekit.compress(models.create("convnet", pretrained=False, num_classes=2), "int8", data=data, latency=False)
    report = result.report if isinstance(result.report, dict) else result.report.to_dict()
    assert report["data"] == "folder:imgs" and report["accuracy"]["after"] is not None
    assert report["stages"][-1]["report"]["samples"] == len(data.calib)


def test_recipe_data_section_and_set(tmp_path):
    from edgekit.recipe import load_recipe

    (tmp_path / "r.yaml").write_text("name: r\nbase: int8\ndata:\n  resize: 256\n  crop: 224\n  split: {train: 0.8, calibration: 0.1, test: 0.1}\n")
    r = load_recipe(str(tmp_path / "r.yaml"), ["data.mean=[0.485, 0.456, 0.406]", "data.std=[0.229, 0.224, 0.225]"])
    assert r.data.resize == 256 and r.data.crop == 224 and r.data.split.train == 0.8 and r.data.mean[0] == 0.485
    assert r.to_dict()["data"]["crop"] == 224 and r.stages[-1].name == "quantize"
    with pytest.raises(UserInputError, match=r"data.rezise.*accepted fields: resize, crop"):
        load_recipe("int8", ["data.rezise=3"])
    with pytest.raises(UserInputError, match="add up to 1"):
        load_recipe("int8", ["data.split.test=0.5"])


def test_compress_uses_the_recipe_data_section(tmp_path):
    """`--set data.crop=...` reaches the loader through compress (the CLI passes --set as overrides)."""
    import edgekit
    from edgekit import models

    root = _folder(tmp_path / "imgs", classes=("a", "b"), per_class=10, size=(40, 48))
    result = edgekit.compress(models.create("convnet", pretrained=False, num_classes=2), "deploy", data=str(root),
                              overrides=["data.resize=36", "data.crop=24", "data.mean=[0.5]", "data.std=[0.5]"], latency=False)
    report = result.report if isinstance(result.report, dict) else result.report.to_dict()
    assert report["data"] == "folder:imgs" and report["accuracy"]["before"] is not None
    assert tuple(result.info.input_shape) == (3, 24, 24)  # the crop, not the default 32x32
