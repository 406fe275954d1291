"""Regenerate the bundled sample images (run once; the outputs are committed).

``python app/samples/make_samples.py`` writes small JPEG/PNG files next to this script
from the two photos and the 8x8 digits that ship inside scikit-learn (see SOURCE.md) and
one image drawn here. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from sklearn.datasets import load_digits, load_sample_images

HERE = Path(__file__).resolve().parent
SIDE = 160


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


def main() -> None:
    china, flower = load_sample_images().images
    _thumb(china).save(HERE / "temple.jpg", quality=88)
    _thumb(flower).save(HERE / "flower.jpg", quality=88)
    _thumb(china, (0, 0, 640, 200)).convert("L").save(HERE / "roof-gray.jpg", quality=88)
    _drawn_boat().save(HERE / "boat-rgba.png")
    for label in (3, 7):
        _digit(label).save(HERE / f"digit-{label}.png")


if __name__ == "__main__":
    main()
