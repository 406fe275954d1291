"""Image loading, preprocessing (checked against torchvision) and top-k."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from serve_fixtures import make_info, png_bytes

from serve.errors import ImageError, ImageTooLargeError
from serve.preprocess import load_image, preprocess, top_k


def _reference(image: Image.Image, resize: int, crop: int, mean, std) -> np.ndarray:
    from torchvision import transforms

    pipeline = transforms.Compose([
        transforms.Resize(resize),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    return pipeline(image.convert("RGB")).numpy()


@pytest.mark.parametrize("size", [(40, 23), (23, 40), (18, 18), (16, 30), (101, 67)])
def test_preprocess_matches_torchvision(size):
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    info = make_info()
    batch = preprocess([image, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)], info)
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    expected = _reference(image, info.resize_to, info.image_size, info.mean, info.std)
    np.testing.assert_allclose(batch[0], expected, atol=1e-5)
    assert not np.allclose(batch[0], batch[1])


def test_resize_defaults_to_crop_size():
    info = make_info(resize=None)
    image = Image.new("RGB", (32, 16), (255, 0, 0))
    batch = preprocess([image], info)
    red = (1.0 - info.mean[0]) / info.std[0]
    np.testing.assert_allclose(batch[0, 0], red, atol=1e-5)
    np.testing.assert_allclose(batch[0, 2], (0.0 - info.mean[2]) / info.std[2], atol=1e-5)


def test_load_image_from_path_bytes_and_file(tmp_path):
    image = Image.new("RGB", (7, 5), (10, 20, 30))
    path = tmp_path / "x.png"
    image.save(path)
    data = path.read_bytes()
    for source in (path, str(path), data, io.BytesIO(data)):
        loaded = load_image(source)
        assert loaded.mode == "RGB" and loaded.size == (7, 5)
        assert loaded.getpixel((3, 2)) == (10, 20, 30)


def test_modes_are_converted_to_rgb():
    gray = load_image(png_bytes(Image.new("L", (4, 4), 77)))
    assert gray.getpixel((0, 0)) == (77, 77, 77)
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    loaded = load_image(png_bytes(rgba))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white background
    assert loaded.getpixel((1, 1)) == (255, 0, 0)
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    palette.info["transparency"] = 0
    assert load_image(png_bytes(palette)).getpixel((0, 0)) == (0, 200, 0)
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert load_image(png_bytes(deep)).getpixel((0, 0)) == (255, 255, 255)


def test_jpeg_webp_and_exif_orientation():
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    for fmt in ("JPEG", "WEBP"):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt)
        assert load_image(buffer.getvalue()).size == (30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert load_image(buffer.getvalue()).size == (10, 30)


def test_bad_inputs_raise_one_line_image_errors(tmp_path):
    good = png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    cases = {
        "empty upload": b"",
        "not a recognised image": b"GIF89a-not-really" * 5,
        "broken or truncated": good[: len(good) // 2],
    }
    for message, data in cases.items():
        with pytest.raises(ImageError, match=message) as info:
            load_image(data)
        assert "\n" not in str(info.value)
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
    with pytest.raises(ImageTooLargeError, match="64x64 pixels"):
        load_image(good, max_pixels=1000)


def test_top_k_orders_clips_and_names():
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]], dtype=np.float32)
    assert top_k(probs, ["a", "b", "c"], k=2) == [
        [("b", pytest.approx(0.6)), ("c", pytest.approx(0.3))],
        [("a", pytest.approx(0.5)), ("c", pytest.approx(0.3))],
    ]
    assert len(top_k(probs, ["a", "b", "c"], k=10)[0]) == 3
    assert top_k(probs[0], ["a"], k=1) == [[("class_1", pytest.approx(0.6))]]


def test_elongated_images_are_refused_before_resizing():
    from search.space.card import ModelCard

    info = ModelCard(image_size=224, mean=[0.5] * 3, std=[0.5] * 3, class_names=["a"])
    strip = Image.new("L", (1, 4000))
    with pytest.raises(ImageTooLargeError, match="too elongated"):
        preprocess([strip], info)
    assert preprocess([Image.new("RGB", (300, 224))], info).shape == (1, 3, 224, 224)
