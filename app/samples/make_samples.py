"""Regenerate the bundled sample images (run once; the outputs are committed).

``python app/samples/make_samples.py [--cifar PATH]`` writes small JPEG/PNG files next to
this script from the two photos and the 8x8 digits that ship inside scikit-learn (see
SOURCE.md), one image drawn here, and one photo of each CIFAR-10 class: the first image of
that class in the CIFAR-10 test split, upscaled to 128x128 (read from the local copy,
default ``../shared/data/cifar10/cifar10.npz``; skipped with a note when it is absent).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits, load_sample_images

HERE = Path(__file__).resolve().parent
SIDE = 160
CIFAR = HERE.parents[2] / "shared" / "data" / "cifar10" / "cifar10.npz"
CIFAR_SIDE = 128


def _thumb(pixels: np.ndarray, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    image = Image.fromarray(pixels)
    if box is not None:
        image = image.crop(box)
    image.thumbnail((SIDE * 2, SIDE), Image.Resampling.LANCZOS)
    return image


def _drawn_boat() -> Image.Image:
    """A small boat on water under a sky, with a transparent border (RGBA PNG)."""
    image = Image.new("RGBA", (SIDE, SIDE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, SIDE - 8, 100), fill=(135, 190, 235, 255))
    draw.rectangle((8, 100, SIDE - 8, SIDE - 8), fill=(30, 90, 160, 255))
    draw.polygon([(40, 100), (120, 100), (108, 118), (52, 118)], fill=(120, 60, 30, 255))
    draw.line((80, 100, 80, 40), fill=(60, 40, 20, 255), width=3)
    draw.polygon([(82, 44), (82, 96), (118, 96)], fill=(250, 250, 245, 255))
    draw.ellipse((120, 18, 142, 40), fill=(255, 220, 80, 255))
    return image


def _digit(label: int) -> Image.Image:
    """The last 8x8 digit of class ``label`` in scikit-learn's bundled digits, as 64x64 grey.

    The last images of the set fall in the test split of ``search.data.datasets`` (stratified,
    seed 0) often enough for a demo; they are rendered as the model sees them: light ink
    on black.
    """
    digits = load_digits()
    index = int(np.flatnonzero(digits.target == label)[-1])
    pixels = (digits.images[index] / 16.0 * 255).astype(np.uint8)
    return Image.fromarray(pixels).resize((64, 64), Image.Resampling.NEAREST)


def cifar_samples(npz: Path) -> dict[str, Image.Image]:
    """``cifar-<class>.png`` -> the first test image of each class, 32x32 upscaled (Lanczos) to 128x128.

    The first of each class, not a chosen one: the demo shows what the model does on test
    images it has never seen, hits and misses alike.
    """
    data = np.load(npz)
    images, labels, classes = data["x_test"], data["y_test"], [str(c) for c in data["classes"]]
    out = {}
    for label, name in enumerate(classes):
        index = int(np.flatnonzero(labels == label)[0])
        image = Image.fromarray(images[index]).resize((CIFAR_SIDE, CIFAR_SIDE), Image.Resampling.LANCZOS)
        out[f"cifar-{name}.png"] = image
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", type=Path, default=CIFAR, help="CIFAR-10 .npz (x_test, y_test, classes)")
    args = parser.parse_args(argv)
    china, flower = load_sample_images().images
    _thumb(china).save(HERE / "temple.jpg", quality=88)
    _thumb(flower).save(HERE / "flower.jpg", quality=88)
    _thumb(china, (0, 0, 640, 200)).convert("L").save(HERE / "roof-gray.jpg", quality=88)
    _drawn_boat().save(HERE / "boat-rgba.png")
    for label in (3, 7):
        _digit(label).save(HERE / f"digit-{label}.png")
    if args.cifar.is_file():
        for name, image in cifar_samples(args.cifar).items():
            image.save(HERE / name, optimize=True)
    else:
        print(f"{args.cifar} not found: CIFAR-10 samples left as they are", file=sys.stderr)


if __name__ == "__main__":
    main()
