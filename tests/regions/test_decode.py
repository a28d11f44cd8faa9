"""Safe decoding: every bad-input class gets its own clear error; odd but valid images decode to RGB."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from regions.decode import (
    ACCEPTED_FORMATS,
    CorruptImageError,
    EmptyImageError,
    ImageDecodeError,
    ImageDimensionsError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedImageFormatError,
    decode_image,
)


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def noise_image(w: int = 60, h: int = 40, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def png_bomb(width: int, height: int) -> bytes:
    """A 1-bit greyscale PNG whose header claims width x height; a few kB compressed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    raw = zlib.compress(b"\x00" * ((width // 8 + 1) * height), 9)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    data = encode(noise_image(), fmt)
    out = decode_image(data)
    assert out.format == fmt
    assert out.rgb.shape == (40, 60, 3) and out.rgb.dtype == np.uint8
    assert (out.width, out.height) == (60, 40)
    assert out.sha256 == hashlib.sha256(data).hexdigest()


def test_lossless_pixels_are_exact() -> None:
    img = noise_image()
    np.testing.assert_array_equal(decode_image(encode(img, "PNG")).rgb, np.asarray(img))


def test_each_bad_input_has_a_distinct_clear_error() -> None:
    """The issue's list: empty, random bytes, truncated JPEG, PNG bomb just over the limit, SVG."""
    jpeg = encode(noise_image(200, 150), "JPEG", quality=90)
    limit = 1_000_000
    cases = {
        "empty": (b"", EmptyImageError, "empty"),
        "random": (os.urandom(4096), NotAnImageError, "not a recognisable image"),
        "truncated jpeg": (jpeg[: len(jpeg) // 2], CorruptImageError, "truncated JPEG"),
        "png bomb": (png_bomb(1001, 1000), ImageTooLargeError, "1001x1000 = 1001000 pixels"),
        "svg": (
            b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
            UnsupportedImageFormatError,
            "unsupported image format SVG",
        ),
    }
    seen_types = set()
    for name, (data, error, words) in cases.items():
        with pytest.raises(error) as info:
            decode_image(data, max_pixels=limit)
        assert words in str(info.value), name
        seen_types.add(type(info.value))
    assert len(seen_types) == len(cases)
    # HTTP mapping carried by the exceptions (one place maps them in the gateway).
    assert EmptyImageError.code == 400 and NotAnImageError.code == 400
    assert UnsupportedImageFormatError.code == 415 and ImageTooLargeError.code == 413
    assert CorruptImageError.code == 422 and ImageDimensionsError.code == 422


def test_png_bomb_at_the_limit_passes_the_size_check() -> None:
    # Exactly at the limit is allowed (then decoded: it is a real, small-file PNG).
    out = decode_image(png_bomb(1000, 1000), max_pixels=1_000_000)
    assert out.rgb.shape == (1000, 1000, 3)


def test_default_limit_refuses_a_bomb_long_before_pillow_would() -> None:
    data = png_bomb(7000, 7000)  # 49 MP: under Pillow's 89.5 MP warning, over our 40 MP default
    assert len(data) < 100_000
    with pytest.raises(ImageTooLargeError):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_truncated_files_are_corrupt_not_grey(fmt: str) -> None:
    data = encode(noise_image(120, 100), fmt)
    with pytest.raises(CorruptImageError, match="truncated"):
        decode_image(data[: len(data) // 2])


def test_signature_only_is_corrupt_not_random() -> None:
    with pytest.raises(CorruptImageError, match="JPEG"):
        decode_image(b"\xff\xd8\xff\xe0\x00\x10JFIF")


@pytest.mark.parametrize("fmt,name", [("TIFF", "TIFF"), ("ICO", "ICO"), ("PPM", "PNM")])
def test_pillow_readable_but_refused_formats(fmt: str, name: str) -> None:
    with pytest.raises(UnsupportedImageFormatError) as info:
        decode_image(encode(noise_image(32, 32), fmt))
    assert info.value.detected_format == name


@pytest.mark.parametrize(
    "data,name",
    [
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "HEIC"),
        (b"%PDF-1.7\n", "PDF"),
        (b"  \n<svg></svg>", "SVG"),
    ],
)
def test_sniffed_formats_name_themselves(data: bytes, name: str) -> None:
    with pytest.raises(UnsupportedImageFormatError, match=name):
        decode_image(data)


@pytest.mark.parametrize("mode", ["P", "LA", "L", "1", "RGBA", "CMYK", "I;16"])
def test_odd_modes_become_rgb(mode: str) -> None:
    base = noise_image(48, 32)
    if mode == "I;16":
        img = Image.fromarray(np.full((32, 48), 40000, dtype=np.uint16))
    else:
        img = base.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    out = decode_image(encode(img, fmt))
    assert out.rgb.shape == (32, 48, 3) and out.rgb.dtype == np.uint8
    if mode == "I;16":
        # 40000/65535 of full scale: scaled down, not clipped to white.
        assert abs(int(out.rgb[0, 0, 0]) - round(40000 / 257)) <= 1


def test_exif_rotation_swaps_width_and_height() -> None:
    img = noise_image(60, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert (out.width, out.height) == (40, 60)
    plain = decode_image(encode(img, "JPEG"))
    assert (plain.width, plain.height) == (60, 40)


def test_gif_first_frame_only() -> None:
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = decode_image(buf.getvalue())
    assert out.rgb.shape == (10, 20, 3)
    assert out.rgb[5, 10, 0] > 200 and out.rgb[5, 10, 2] < 50  # red: the first frame


def test_extreme_aspect_ratio_and_byte_cap() -> None:
    with pytest.raises(ImageDimensionsError, match="aspect"):
        decode_image(encode(Image.new("RGB", (2000, 10)), "PNG"))
    with pytest.raises(ImageTooLargeError, match="bytes"):
        decode_image(encode(noise_image(), "PNG"), max_bytes=100)


def test_one_pixel_image_decodes() -> None:
    assert decode_image(encode(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG")).rgb.tolist() == [[[1, 2, 3]]]


def test_all_errors_share_the_base_class() -> None:
    for data in (b"", b"garbage!", b"<svg/>"):
        with pytest.raises(ImageDecodeError):
            decode_image(data)
    assert set(ACCEPTED_FORMATS) == {"JPEG", "PNG", "WEBP", "BMP", "GIF"}
