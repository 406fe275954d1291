"""Image loading, preprocessing and top-k, shared by every backend.

Everything here is read from the model's card (:class:`~search.space.card.ModelCard`):
resize of the short side to ``info.resize_to``, centre crop to ``info.image_size``,
scaling to 0..1, ``(x - mean) / std`` and NCHW float32 layout.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from search.data.images import center_crop, resize_short_side, to_rgb
from search.space.card import ModelCard
from serve.errors import ImageError, ImageTooLargeError

MAX_PIXELS = 50_000_000
"""Default refusal threshold for decoded images (about 7000 x 7000)."""

ImageSource = str | os.PathLike | bytes | BinaryIO

__all__ = ["MAX_PIXELS", "ImageSource", "center_crop", "load_image", "preprocess",
           "resize_short_side", "to_rgb", "top_k"]


def load_image(source: ImageSource, *, max_pixels: int | None = MAX_PIXELS,
               resize_to: int | None = None) -> Image.Image:
    """Open an image and return it as RGB.

    Args:
        source: A path, the encoded bytes, or a binary file object.
        max_pixels: Refuse images with more pixels than this (``None``: no limit).
        resize_to: The short side :func:`preprocess` will resize to: refuse, from the header
            and before decoding, an image too elongated for it (``None``: not checked here).

    Returns:
        A fully decoded RGB image (EXIF orientation applied, transparency
        composited on white, first frame of animations).

    Raises:
        ImageError: The source is missing, empty or not a decodable image.
        ImageTooLargeError: The image exceeds ``max_pixels``, or its resize to ``resize_to``.
    """
    label = _label(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("empty upload: no image data received")
        source = io.BytesIO(bytes(source))
    try:
        with Image.open(source) as image:
            _check_size(image, label, max_pixels)
            if resize_to is not None:
                _check_resized_size(image, resize_to)
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"image file not found: {label}") from None
    except IsADirectoryError:
        raise ImageError(f"{label} is a directory, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label} is not a recognised image (JPEG, PNG, WebP, ...)") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{label} is too large to decode: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{label} is a broken or truncated image ({_short(exc)})") from None


def preprocess(images: Sequence[Image.Image], info: ModelCard) -> np.ndarray:
    """Turn images into the model's input batch.

    Args:
        images: PIL images (any mode; converted to RGB).
        info: Metadata of the model that will consume the batch.

    Returns:
        A contiguous ``(N, 3, S, S)`` float32 array, ``S = info.image_size``.
    """
    if not images:
        raise ImageError("no images to preprocess")
    if info.layout != "NCHW" or info.channel_order != "RGB":
        raise ImageError(f"unsupported model input layout {info.layout}/{info.channel_order}")
    mean = np.asarray(info.mean, dtype=np.float32).reshape(1, 1, 3)
    std = np.asarray(info.std, dtype=np.float32).reshape(1, 1, 3)
    arrays = []
    for image in images:
        _check_resized_size(image, info.resize_to)
        crop = center_crop(resize_short_side(to_rgb(image), info.resize_to), info.image_size)
        pixels = np.asarray(crop, dtype=np.float32) / 255.0
        arrays.append(((pixels - mean) / std).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(arrays), dtype=np.float32)


def top_k(
    probs: np.ndarray, class_names: Sequence[str], k: int = 5
) -> list[list[tuple[str, float]]]:
    """Best ``k`` classes per row of ``probs`` as ``(name, probability)``, highest first.

    Classes without a name (more outputs than names) are called ``class_<index>``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = probs[None, :]
    k = max(1, min(int(k), probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        [(_class_name(class_names, int(i)), float(row[i])) for i in idx]
        for row, idx in zip(probs, order, strict=True)
    ]


def _class_name(class_names: Sequence[str], index: int) -> str:
    return class_names[index] if index < len(class_names) else f"class_{index}"


def _check_size(image: Image.Image, label: str, max_pixels: int | None) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"{label} has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label} is {width}x{height} pixels, more than the limit of {max_pixels}"
        )


def _check_resized_size(image: Image.Image, resize_to: int) -> None:
    """Refuse images whose short-side resize would exceed :data:`MAX_PIXELS`.

    A 1 x 5,000,000 strip is a small file, but scaling its short side to 224 px would
    need a billion pixels before the centre crop.
    """
    width, height = image.size
    short, long = min(width, height), max(width, height)
    resized = resize_to * max(1, int(resize_to * long / max(short, 1)))
    if resized > MAX_PIXELS:
        raise ImageTooLargeError(
            f"a {width}x{height} image is too elongated: resizing its short side to {resize_to} px "
            f"would need {resized:,} pixels (limit {MAX_PIXELS:,})"
        )


def _label(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    name = getattr(source, "name", None)
    return str(name) if isinstance(name, str) else "upload"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
