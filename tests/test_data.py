"""Datasets: digits, CIFAR from .npz, image folders, splits, augmentation, missing data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from search.core.errors import NasdeployError
from search.data import datasets as data_mod
from search.data.datasets import channel_stats, load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", image_size=16, seed=0)


def test_digits_splits_are_disjoint_stratified_and_rgb(digits) -> None:
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.class_names == [str(i) for i in range(10)]
    assert digits.image_size == 16
    assert digits.test is not None
    total = len(digits.train) + len(digits.val) + len(digits.test)
    assert total == 1797
    assert len(digits.test) == pytest.approx(0.2 * 1797, abs=10)
    assert len(digits.val) == pytest.approx(0.1 * (1797 - len(digits.test)), abs=10)
    assert set(digits.val.labels.tolist()) == set(range(10))  # every class held out
    images = digits.train.images
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 16)
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 1], images[:, 2])
    # no training image reappears in the test split
    train_keys = {bytes(x.numpy()) for x in images}
    assert not any(bytes(x.numpy()) in train_keys for x in digits.test.images)


def test_validation_carve_is_seeded(digits) -> None:
    again = load_dataset("digits", image_size=16, seed=0)
    other = load_dataset("digits", image_size=16, seed=1)
    assert torch.equal(again.val.images, digits.val.images)
    assert not torch.equal(other.val.images, digits.val.images)
    # the test split never moves with the search seed
    assert torch.equal(other.test.images, digits.test.images)


def test_items_are_normalised_with_the_training_statistics(digits) -> None:
    x, y = digits.val[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 10
    expected = (digits.val.images[0].float() / 255 - torch.tensor(digits.mean).view(3, 1, 1)) \
        / torch.tensor(digits.std).view(3, 1, 1)
    assert torch.allclose(x, expected, atol=1e-6)
    batch = torch.stack([digits.train.plain()[i][0] for i in range(len(digits.train))])
    assert batch.mean().item() == pytest.approx(0.0, abs=0.01)
    assert batch.std().item() == pytest.approx(1.0, abs=0.01)


def test_training_split_is_augmented_reproducibly_without_flips_for_digits(digits) -> None:
    assert digits.train.augment == "crop" and digits.val.augment is None
    idx = torch.arange(64)
    a, _ = digits.train.batch(idx, torch.Generator().manual_seed(3))
    b, _ = digits.train.batch(idx, torch.Generator().manual_seed(3))
    plain, _ = digits.train.plain().batch(idx)
    assert torch.equal(a, b)
    assert not torch.equal(a, plain)


def test_crop_flip_shifts_and_mirrors_cifar_style() -> None:
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) % 251
    ds = data_mod.ImageTensorDataset(images.to(torch.uint8), torch.tensor([0, 1]),
                                     (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255), "crop_flip")
    seen_flip = False
    for seed in range(20):
        out, _ = ds.batch(torch.tensor([0]), torch.Generator().manual_seed(seed))
        row = out[0, 0, 4]
        original = ds.images[0, 0, 4].float()
        seen_flip |= bool(torch.equal(row, original.flip(0)))
    assert seen_flip


def _write_npz(path: Path, n_train: int = 40, n_test: int = 20, classes: bool = True) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.uint8) % 10,
    }
    if classes:
        arrays["classes"] = np.array([f"class{i}" for i in range(10)])
    np.savez(path, **arrays)


def test_cifar_from_npz_file_or_directory(tmp_path: Path) -> None:
    path = tmp_path / "cifar10.npz"
    _write_npz(path)
    bundle = load_dataset("cifar10", path, download=False, val_fraction=0.2)
    assert bundle.class_names[:2] == ["class0", "class1"]
    assert len(bundle.train) == 32 and len(bundle.val) == 8 and len(bundle.test) == 20
    assert bundle.train.augment == "crop_flip"
    raw = np.load(path)
    assert torch.equal(bundle.test.images[3], torch.from_numpy(raw["x_test"][3]).permute(2, 0, 1))
    by_dir = load_dataset("cifar10", tmp_path, download=False, image_size=16, train_size=10)
    assert by_dir.image_size == 16 and by_dir.test.images.shape[1:] == (3, 16, 16)
    assert len(by_dir.train) == 10


def test_npz_without_class_names_uses_cifar10_names(tmp_path: Path) -> None:
    _write_npz(tmp_path / "cifar10.npz", classes=False)
    bundle = load_dataset("cifar10", tmp_path, download=False)
    assert bundle.class_names[0] == "airplane" and bundle.num_classes == 10


def test_npz_missing_arrays_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    np.savez(path, x_train=np.zeros((2, 32, 32, 3), np.uint8))
    with pytest.raises(NasdeployError, match="y_train") as info:
        load_dataset("cifar10", path, download=False)
    assert "\n" not in str(info.value)


def _assert_offline_message(exc: NasdeployError) -> None:
    message = str(exc)
    assert "\n" not in message
    assert "--data-dir" in message and "--dataset digits" in message


def test_missing_cifar_without_download_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(NasdeployError) as info:
        load_dataset("cifar10", tmp_path, download=False)
    _assert_offline_message(info.value)


def test_missing_cifar_with_unreachable_host_fails_fast(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("NASDEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(data_mod.CIFAR_URLS, "cifar100", "http://127.0.0.1:9/cifar-100.tar.gz")
    with pytest.raises(NasdeployError, match="no network") as info:
        load_dataset("cifar100", download=True)
    _assert_offline_message(info.value)
    assert not list((tmp_path / "cache").glob("**/*.tar.gz"))


def _save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    _save(root / "train" / "cat" / "rgb.png", Image.new("RGB", (20, 12), (200, 10, 10)))
    _save(root / "train" / "cat" / "gray.png", Image.new("L", (9, 9), 128))
    transparent = Image.new("RGBA", (10, 10), (0, 0, 0, 0))
    _save(root / "train" / "dog" / "rgba.png", transparent)
    _save(root / "train" / "dog" / "palette.png", Image.new("P", (16, 16), 3))
    _save(root / "val" / "dog" / "v.png", Image.new("RGB", (8, 8), (0, 0, 255)))
    (root / "train" / "notes.txt").write_text("ignored")
    return root


def test_imagefolder_converts_any_mode_to_rgb(folder: Path) -> None:
    bundle = load_dataset("imagefolder", folder, image_size=8, val_fraction=0.0)
    assert bundle.class_names == ["cat", "dog"] and bundle.num_classes == 2
    assert bundle.train.images.shape == (4, 3, 8, 8)
    assert bundle.train.labels.tolist() == [0, 0, 1, 1]
    gray = bundle.train.images[0]  # files are read in sorted order: gray.png, rgb.png
    assert torch.all(gray == 128)
    rgb = bundle.train.images[1]
    assert rgb[:, 4, 4].tolist() == [200, 10, 10]
    rgba = bundle.train.images[3]  # palette.png, rgba.png
    assert torch.all(rgba == 255)  # transparency composited on white, as in serving
    assert bundle.test is not None and bundle.test.labels.tolist() == [1]
    assert bundle.test.images[0, :, 0, 0].tolist() == [0, 0, 255]


def test_imagefolder_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(NasdeployError, match="--data-dir"):
        load_dataset("imagefolder")
    with pytest.raises(NasdeployError, match="no class folders"):
        load_dataset("imagefolder", tmp_path / "images" / "val" / "dog")
    (folder / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(NasdeployError, match="broken.png"):
        load_dataset("imagefolder", folder, image_size=8)


def test_unknown_dataset_and_bad_settings() -> None:
    with pytest.raises(NasdeployError, match="unknown dataset"):
        load_dataset("mnist")
    with pytest.raises(NasdeployError, match="validation fraction"):
        load_dataset("digits", val_fraction=1.0)
    with pytest.raises(NasdeployError, match="image size"):
        load_dataset("digits", image_size=4)


def test_channel_stats_match_a_float_computation() -> None:
    images = torch.randint(0, 256, (5, 3, 7, 7), dtype=torch.uint8)
    mean, std = channel_stats(images)
    floats = images.double() / 255
    assert mean == pytest.approx(floats.mean(dim=(0, 2, 3)).tolist(), abs=1e-4)
    assert std == pytest.approx(floats.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-4)


SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10.npz"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_CIFAR.is_file(), reason="no local CIFAR-10 copy")
def test_real_cifar10_copy_loads_with_standard_statistics() -> None:
    bundle = load_dataset("cifar10", SHARED_CIFAR.parent, download=False, val_size=500)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (45000, 500, 10000)
    assert bundle.class_names[0] == "airplane" and bundle.num_classes == 10
    assert bundle.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=2e-3)
    assert bundle.std == pytest.approx((0.247, 0.243, 0.261), abs=5e-3)
