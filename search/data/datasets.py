"""Datasets for search and final training, held in memory as uint8 tensors.

``load_dataset`` returns a :class:`DataBundle` with the training split (augmented), a
validation split carved from the training set (seeded, stratified, never augmented) and
the held-out test split, which the search never reads. Images are stored as uint8 NCHW
RGB tensors and normalised on the fly, so a CIFAR-10 copy costs 150 MB of memory and a
batch is a slice of a tensor (no worker processes needed).
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset

from search.core.errors import NasdeployError
from search.data.images import center_crop, resize_short_side, to_rgb

DATASETS = ("cifar10", "cifar100", "digits", "imagefolder")
DEFAULT_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "digits": 16, "imagefolder": 32}
DIGITS_TEST_FRACTION = 0.2
DIGITS_TEST_SEED = 0  # fixed, so the test split never moves with the search seed
NETWORK_TIMEOUT_S = 3.0
CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}
TORCHVISION_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


class ImageTensorDataset(Dataset):
    """uint8 NCHW RGB images with int64 labels, normalised (and augmented) on access.

    Attributes:
        images: ``(N, 3, H, W)`` uint8 tensor.
        labels: ``(N,)`` int64 tensor.
        augment: ``None``, ``"crop"`` (random crop with zero padding) or ``"crop_flip"``
            (crop plus horizontal flip, the standard CIFAR augmentation).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 mean: tuple[float, float, float], std: tuple[float, float, float],
                 augment: str | None = None):
        if augment not in (None, "crop", "crop_flip"):
            raise ValueError(f"unknown augmentation {augment!r}")
        self.images = images
        self.labels = labels
        self.augment = augment
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.padding = max(1, round(images.shape[-1] / 8))  # 4 px at 32 px, as for CIFAR

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.batch(torch.tensor([index]))
        return x[0], int(y[0])

    def batch(self, indices: torch.Tensor, generator: torch.Generator | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images and labels for ``indices``, augmented with ``generator``."""
        images = self.images[indices]
        if self.augment is not None:
            images = self._augment(images, generator)
        x = (images.float() / 255.0 - self.mean) / self.std
        return x, self.labels[indices]

    def _augment(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n, _, h, w = images.shape
        pad = self.padding
        padded = F.pad(images, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                           for i, (dy, dx) in enumerate(offsets.tolist())])
        if self.augment == "crop_flip":
            flip = torch.rand(n, generator=generator) < 0.5
            out[flip] = out[flip].flip(-1)
        return out

    def plain(self) -> ImageTensorDataset:
        """The same images (shared, not copied) without augmentation."""
        if self.augment is None:
            return self
        return ImageTensorDataset(self.images, self.labels, _tuple3(self.mean),
                                  _tuple3(self.std), None)

    def resized(self, size: int) -> ImageTensorDataset:
        """A copy with the images resized to ``size`` x ``size`` (same labels and settings)."""
        return ImageTensorDataset(resize_images(self.images, size), self.labels,
                                  _tuple3(self.mean), _tuple3(self.std), self.augment)

    def subset(self, indices: torch.Tensor, augment: str | None = None) -> ImageTensorDataset:
        """A new dataset of the rows ``indices`` with its own augmentation setting."""
        return ImageTensorDataset(self.images[indices], self.labels[indices],
                                  _tuple3(self.mean), _tuple3(self.std), augment)


@dataclass(frozen=True)
class DataBundle:
    """Splits and preprocessing facts of one dataset; the search never reads ``test``."""

    train: ImageTensorDataset
    val: ImageTensorDataset
    test: ImageTensorDataset | None
    num_classes: int
    class_names: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str


@dataclass(frozen=True)
class _Raw:
    """Decoded arrays before splitting: uint8 NCHW images and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor | None
    y_test: torch.Tensor | None
    class_names: list[str]


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    val_fraction: float = 0.1,
    train_size: int | None = None,
    seed: int = 0,
    download: bool = True,
    augment: bool = True,
    val_size: int | None = None,
) -> DataBundle:
    """Load ``name`` and split it into train / validation / test.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: CIFAR: a torchvision folder, an ``.npz`` file or a folder holding
            ``<name>.npz``; imagefolder: a folder with ``train/`` (and optional ``val/`` or
            ``test/``) class folders; unused for digits.
        image_size: side in pixels (defaults per dataset: CIFAR 32, digits 16, imagefolder 32).
        val_fraction: share of the training set carved out (stratified, seeded) for validation.
        train_size: keep at most this many training images (seeded), e.g. for fast children.
        seed: seed of the validation carve and the ``train_size``/``val_size`` subsets.
        download: allow downloading CIFAR into the cache (``~/.cache/nasdeploy``).
        augment: augment the training split (crop + flip for CIFAR/imagefolder, crop for digits).
        val_size: keep at most this many validation images (seeded).

    Raises:
        NasdeployError: unknown dataset, missing data that cannot be downloaded, bad files,
            fewer than 2 classes, a class with too few images or an empty validation split.
    """
    key = name.strip().lower()
    if key not in DATASETS:
        raise NasdeployError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    if not 0.0 <= val_fraction < 1.0:
        raise NasdeployError(f"validation fraction must be in [0, 1), got {val_fraction}")
    size = image_size or DEFAULT_IMAGE_SIZE[key]
    if size < 8:
        raise NasdeployError(f"image size must be at least 8 px, got {size}")
    if key == "digits":
        raw = _load_digits(size)
    elif key == "imagefolder":
        raw = _load_imagefolder(data_dir, size)
    else:
        raw = _resize_raw(_load_cifar(key, data_dir, download), size)
    policy = ("crop" if key == "digits" else "crop_flip") if augment else None
    bundle = _split(raw, key, size, val_fraction, train_size, val_size, seed, policy)
    _check_splits(bundle, raw, val_fraction, key if data_dir is None else str(data_dir))
    return bundle


def _check_splits(bundle: DataBundle, raw: _Raw, val_fraction: float, source: str) -> None:
    """Refuse data that cannot support training or a search: fewer than 2 classes, a class
    with fewer than 1 image (2 when a validation share is held out), or an empty validation
    split. One line naming the data."""
    names = raw.class_names
    if len(names) < 2:
        found = f"only {names[0]!r}"[:60] if names else "none"
        raise NasdeployError(f"{source} has {len(names)} class ({found}): a classifier needs at least 2 "
                             "classes (for an image folder, one folder per class)")
    need = 2 if val_fraction > 0 else 1
    counts = torch.bincount(raw.y_train, minlength=len(names)).tolist()
    short = next((i for i, n in enumerate(counts[:len(names)]) if n < need), None)
    if short is not None:
        why = " (one to train on, one held out for validation)" if need == 2 else ""
        raise NasdeployError(f"{source}: class {names[short][:40]!r} has {counts[short]} training "
                             f"image(s); each class needs at least {need}{why}")
    if val_fraction > 0 and len(bundle.val) == 0:
        raise NasdeployError(f"{source} has {len(raw.y_train)} training images: too few to hold out "
                             f"{val_fraction:.0%} of them for validation; add images")


def _split(raw: _Raw, name: str, size: int, val_fraction: float, train_size: int | None,
           val_size: int | None, seed: int, policy: str | None) -> DataBundle:
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = stratified_split(raw.y_train, val_fraction, generator)
    mean, std = channel_stats(raw.x_train[train_idx])
    full = ImageTensorDataset(raw.x_train, raw.y_train, mean, std)
    train_idx = _cap(train_idx, train_size, generator)
    val_idx = _cap(val_idx, val_size, generator)
    test = None
    if raw.x_test is not None and raw.y_test is not None:
        test = ImageTensorDataset(raw.x_test, raw.y_test, mean, std)
    return DataBundle(
        train=full.subset(train_idx, policy), val=full.subset(val_idx), test=test,
        num_classes=len(raw.class_names), class_names=list(raw.class_names), image_size=size,
        mean=mean, std=std, name=name,
    )


def stratified_split(labels: torch.Tensor, fraction: float, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (kept, held-out), holding out ``fraction`` of every class.

    Per-class counts are rounded by largest remainder so the total held out is
    ``round(fraction * len(labels))``.
    """
    classes = torch.unique(labels).tolist()
    members = [torch.nonzero(labels == cls).flatten() for cls in classes]
    ideal = [fraction * len(idx) for idx in members]
    counts = [int(v) for v in ideal]
    remainder = int(round(fraction * len(labels))) - sum(counts)
    by_fraction = sorted(range(len(classes)), key=lambda i: counts[i] - ideal[i])
    for i in by_fraction[:max(remainder, 0)]:
        counts[i] += 1
    kept, held = [], []
    for idx, n_held in zip(members, counts, strict=True):
        idx = idx[torch.randperm(len(idx), generator=generator)]
        held.append(idx[:n_held])
        kept.append(idx[n_held:])
    return torch.sort(torch.cat(kept)).values, torch.sort(torch.cat(held)).values


def _cap(indices: torch.Tensor, limit: int | None, generator: torch.Generator) -> torch.Tensor:
    if limit is None or limit >= len(indices):
        return indices
    if limit < 1:
        raise NasdeployError(f"subset size must be at least 1, got {limit}")
    chosen = torch.randperm(len(indices), generator=generator)[:limit]
    return torch.sort(indices[chosen]).values


def channel_stats(images: torch.Tensor
                  ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std of uint8 NCHW ``images`` on the 0..1 scale (rounded).

    Exact and fast: a 256-bin histogram per channel instead of a float copy of the data.
    """
    if len(images) == 0:
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    levels = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for channel in range(3):
        hist = torch.bincount(images[:, channel].reshape(-1), minlength=256).to(torch.float64)
        prob = hist / hist.sum()
        mean = (prob * levels).sum()
        var = (prob * (levels - mean) ** 2).sum()
        means.append(mean)
        stds.append(var.sqrt().clamp_min(1e-3))
    return _tuple3(torch.stack(means)), _tuple3(torch.stack(stds))


def _tuple3(values: torch.Tensor) -> tuple[float, float, float]:
    flat = [round(float(v), 4) for v in values.flatten()]
    return flat[0], flat[1], flat[2]


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 NCHW images to ``size`` x ``size`` (antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = []
    for start in range(0, len(images), 4096):
        part = images[start:start + 4096].float()
        shrink = size < images.shape[-1]
        part = F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False,
                             antialias=shrink)
        out.append(part.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _resize_raw(raw: _Raw, size: int) -> _Raw:
    x_test = resize_images(raw.x_test, size) if raw.x_test is not None else None
    return _Raw(resize_images(raw.x_train, size), raw.y_train, x_test, raw.y_test, raw.class_names)


# --- digits -----------------------------------------------------------------------------


def _load_digits(size: int) -> _Raw:
    """scikit-learn's bundled 8x8 digits as RGB, upscaled, with a fixed held-out test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)
    gray = F.interpolate(gray, size=(size, size), mode="bilinear", align_corners=False)
    images = (gray.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).long()
    generator = torch.Generator().manual_seed(DIGITS_TEST_SEED)
    train_idx, test_idx = stratified_split(labels, DIGITS_TEST_FRACTION, generator)
    names = [str(i) for i in range(10)]
    return _Raw(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], names)


# --- CIFAR ------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where downloads go: ``$NASDEPLOY_CACHE`` or ``~/.cache/nasdeploy``."""
    return Path(os.environ.get("NASDEPLOY_CACHE", Path.home() / ".cache" / "nasdeploy"))


def _load_cifar(name: str, data_dir: str | os.PathLike[str] | None, download: bool) -> _Raw:
    label = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[name]
    root = Path(data_dir).expanduser() if data_dir is not None else cache_dir()
    if root.is_file():
        return _load_npz(root, name)
    if data_dir is not None and not root.exists():
        raise NasdeployError(f"--data-dir {root} does not exist")
    if (root / f"{name}.npz").is_file():
        return _load_npz(root / f"{name}.npz", name)
    found = _torchvision_cifar(name, root, download=False)
    if found is not None:
        return found
    reason = "downloads disabled" if not download else _unreachable_reason(CIFAR_URLS[name])
    if reason is None:
        found = _torchvision_cifar(name, root, download=True)
        if found is not None:
            return found
        reason = "download failed"
    raise NasdeployError(
        f"{label} not found in {root} and it cannot be downloaded ({reason}): pass --data-dir "
        f"with a copy (torchvision folder or {name}.npz) or use --dataset digits to run offline"
    )


def _torchvision_cifar(name: str, root: Path, download: bool) -> _Raw | None:
    """Read (or download) the torchvision copy under ``root``; ``None`` if it is not there."""
    if not download and not (root / TORCHVISION_FOLDERS[name]).is_dir():
        return None  # skip importing torchvision when there is nothing to read
    from torchvision import datasets

    base = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    cls = type(base.__name__, (base,), {"url": CIFAR_URLS[name]})
    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError, ValueError):
        return None
    return _Raw(_to_nchw(train.data), torch.tensor(train.targets, dtype=torch.long),
                _to_nchw(test.data), torch.tensor(test.targets, dtype=torch.long),
                list(train.classes))


def _unreachable_reason(url: str) -> str | None:
    """``None`` if the download host answers within a few seconds, else why not."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)

    def connect() -> None:
        socket.create_connection((parts.hostname, port), timeout=NETWORK_TIMEOUT_S).close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=NETWORK_TIMEOUT_S + 0.5)
    except (OSError, concurrent.futures.TimeoutError):
        return f"no network: {parts.hostname} unreachable"
    finally:
        pool.shutdown(wait=False)
    return None


def _load_npz(path: Path, name: str) -> _Raw:
    """Read ``x_train/y_train/x_test/y_test`` (and optional ``classes``) from an .npz."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise NasdeployError(f"{path} is not a readable .npz ({type(exc).__name__})") from None
    missing = [k for k in ("x_train", "y_train") if k not in arrays]
    if missing:
        raise NasdeployError(f"{path} lacks {', '.join(missing)} (needs x_train, y_train, "
                             "x_test, y_test)")
    y_train = _labels(arrays["y_train"], path)
    has_test = "x_test" in arrays and "y_test" in arrays
    y_test = _labels(arrays["y_test"], path) if has_test else None
    if "classes" in arrays:
        names = [str(c) for c in arrays["classes"].tolist()]
    elif name == "cifar10":
        names = list(CIFAR10_CLASSES)
    else:
        names = [str(i) for i in range(int(y_train.max()) + 1)]
    if int(y_train.max()) >= len(names) or (y_test is not None and int(y_test.max()) >= len(names)):
        raise NasdeployError(f"{path}: labels exceed the {len(names)} class names")
    x_test = _to_nchw(arrays["x_test"], path) if has_test else None
    return _Raw(_to_nchw(arrays["x_train"], path), y_train, x_test, y_test, names)


def _labels(array: np.ndarray, source: Path) -> torch.Tensor:
    flat = np.asarray(array).reshape(-1)
    if flat.size == 0 or not np.issubdtype(flat.dtype, np.integer) or flat.min() < 0:
        raise NasdeployError(f"{source}: labels must be non-negative integers")
    return torch.from_numpy(flat.astype(np.int64))


def _to_nchw(array: np.ndarray, source: Path | None = None) -> torch.Tensor:
    """uint8 NCHW RGB from NHWC/NCHW/NHW arrays (floats in 0..1 are scaled to 0..255)."""
    x = np.asarray(array)
    if x.ndim == 3:
        x = np.repeat(x[:, None], 3, axis=1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise NasdeployError(f"{source}: images must be N x H x W x 3 (got shape {x.shape})")
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    if np.issubdtype(x.dtype, np.floating):
        x = x * 255.0 if x.max() <= 1.0 else x
        x = np.clip(np.round(x), 0, 255)
    return torch.from_numpy(np.ascontiguousarray(x.astype(np.uint8)))


# --- image folders ----------------------------------------------------------------------


def _load_imagefolder(data_dir: str | os.PathLike[str] | None, size: int) -> _Raw:
    """``train/`` (or the folder itself) and optional ``val/``/``test/`` class folders."""
    if data_dir is None:
        raise NasdeployError("--dataset imagefolder needs --data-dir with train/<class>/ folders")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise NasdeployError(f"--data-dir {root} is not a directory")
    train_root = root / "train" if (root / "train").is_dir() else root
    classes = sorted(p.name for p in train_root.iterdir() if p.is_dir() and _images_in(p))
    if not classes:
        raise NasdeployError(f"no class folders with images in {train_root} (expected "
                             "train/<class>/*.png)")
    x_train, y_train = _read_folder(train_root, classes, size)
    held = next((root / n for n in ("val", "test") if (root / n).is_dir()), None)
    if held is None or train_root == root:
        return _Raw(x_train, y_train, None, None, classes)
    extra = sorted(p.name for p in held.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise NasdeployError(f"{held} has classes not in {train_root}: {', '.join(extra[:5])}")
    x_test, y_test = _read_folder(held, classes, size)
    return _Raw(x_train, y_train, x_test, y_test, classes)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _read_folder(root: Path, classes: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label, cls in enumerate(classes):
        folder = root / cls
        for path in _images_in(folder) if folder.is_dir() else []:
            images.append(read_image(path, size))
            labels.append(label)
    if not images:
        raise NasdeployError(f"no images found in {root}")
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


def read_image(path: Path, size: int) -> torch.Tensor:
    """Any image as uint8 RGB ``(3, size, size)``, preprocessed like ``serve.preprocess``.

    EXIF orientation applied, transparency composited on white, the short side resized
    (bilinear) to ``size``, then the centre ``size x size`` crop: the same arithmetic as the
    serving side, so a trained model sees the same pixels in production.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(ImageOps.exif_transpose(img))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise NasdeployError(f"cannot read image {path} ({type(exc).__name__})") from None
    array = np.asarray(center_crop(resize_short_side(rgb, size), size), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
