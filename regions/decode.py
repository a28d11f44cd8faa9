"""Safe image decoding: the only way bytes from a user or a dataset become pixels.

Every caller (the gateway, region extraction, training loaders) goes through `decode_image`, so the
rules live in one place:

* accepted containers: JPEG (and its MPO multi-picture variant), PNG, WebP, BMP, GIF (first frame
  only); everything else is refused *by sniffing the bytes*, before any other Pillow plugin parses
  them (ICO/TIFF/ICNS/BLP headers can lie about their sizes, SVG/HEIC are not raster formats Pillow
  reads);
* a pixel limit well below Pillow's default (89.5 MP warning, 179 MP error): the header's size is
  checked *before* the pixel data is decoded, so a PNG bomb costs a few hundred bytes of parsing;
* truncated or corrupt data is an error (Pillow's ``LOAD_TRUNCATED_IMAGES`` would silently grey-fill);
* the EXIF orientation is applied (phones store landscape pixels plus a "rotate 90" tag);
* any mode becomes 8-bit RGB (16-bit greyscale is scaled, not clipped to white).

Errors are typed; each class carries the HTTP status the gateway answers with (`code`) and a
message that names the problem, so the server maps them in one place and never returns a 500.
The SHA-256 of the input bytes is returned with the pixels: it is the region-feature cache key.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# 40 MP: well above any camera photo we expect to serve (a 24 MP DSLR frame is 6000x4000), far below
# Pillow's 89.5 MP warning.  The detector resizes to <= 1333 px anyway, so more pixels buy nothing.
DEFAULT_MAX_PIXELS = 40_000_000
# Encoded size cap; the gateway caps request bodies itself, this protects the other callers.
DEFAULT_MAX_BYTES = 32 * 1024 * 1024
# A 1 x 100000 strip decodes to few pixels but becomes a 0-pixel-high image after resizing to the
# detector's longer-side cap; refuse such shapes with a clear message instead.
DEFAULT_MAX_ASPECT_RATIO = 50.0

# Pillow format names we decode, and the names we report for them.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
_PILLOW_FORMATS_TO_TRY: list[str] = ["JPEG", "PNG", "WEBP", "BMP", "GIF"]
_FORMAT_ALIASES = {"MPO": "JPEG"}  # multi-picture JPEG from phones: its first picture is a JPEG


class ImageDecodeError(ValueError):
    """Base of every decoding failure; `code` is the HTTP status the gateway returns."""

    code: int = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyImageError(ImageDecodeError):
    """Zero bytes."""

    code = 400


class NotAnImageError(ImageDecodeError):
    """Bytes that are no known image format at all (random data, text, HTML...)."""

    code = 400


class UnsupportedImageFormatError(ImageDecodeError):
    """A real image or document format that we do not decode (SVG, HEIC, TIFF, ICO, PDF...)."""

    code = 415

    def __init__(self, message: str, detected_format: str | None = None) -> None:
        super().__init__(message)
        self.detected_format = detected_format


class ImageTooLargeError(ImageDecodeError):
    """Over the pixel limit (decompression bombs) or the encoded-size limit."""

    code = 413


class ImageDimensionsError(ImageDecodeError):
    """Dimensions the detector cannot use (zero-sized, extreme aspect ratio)."""

    code = 422


class CorruptImageError(ImageDecodeError):
    """A supported format whose data is truncated or damaged."""

    code = 422


@dataclass(frozen=True)
class DecodedImage:
    """Pixels plus what callers need to know about where they came from."""

    rgb: np.ndarray  # (H, W, 3) uint8, EXIF orientation applied
    format: str  # one of ACCEPTED_FORMATS
    sha256: str  # hex digest of the *encoded* bytes: the region cache key

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sniff_unsupported(data: bytes) -> str | None:
    """Name a known format we refuse, from its magic bytes; None when nothing matches.

    Checked before Pillow opens anything so that parsers for formats we do not accept never see
    untrusted bytes.
    """
    head = data[:512]
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if stripped.startswith(b"<svg") or (stripped.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return "SVG"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
        return "ISO-BMFF (" + brand.decode("latin-1", "replace") + ")"
    signatures: tuple[tuple[bytes, str], ...] = (
        (b"II*\x00", "TIFF"),
        (b"MM\x00*", "TIFF"),
        (b"II+\x00", "BigTIFF"),
        (b"MM\x00+", "BigTIFF"),
        (b"\x00\x00\x01\x00", "ICO"),
        (b"\x00\x00\x02\x00", "CUR"),
        (b"icns", "ICNS"),
        (b"BLP1", "BLP"),
        (b"BLP2", "BLP"),
        (b"%PDF", "PDF"),
        (b"%!PS", "PostScript/EPS"),
        (b"\xc5\xd0\xd3\xc6", "EPS"),
        (b"8BPS", "PSD"),
        (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
        (b"\xff\x4f\xff\x51", "JPEG 2000"),
        (b"qoif", "QOI"),
        (b"DDS ", "DDS"),
        (b"\x76\x2f\x31\x01", "OpenEXR"),
        (b"#?RADIANCE", "HDR"),
        (b"\xff\x0a", "JPEG XL"),
        (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
        (b"\x89HDF", "HDF5"),
        (b"SIMPLE  =", "FITS"),
    )
    for magic, name in signatures:
        if head.startswith(magic):
            return name
    if head[:2] in (b"P1", b"P2", b"P3", b"P4", b"P5", b"P6", b"P7") and head[2:3] in b" \t\r\n":
        return "PNM"
    return None


def _sniff_accepted(data: bytes) -> str | None:
    """Which accepted format the signature claims, if any (to tell 'cut short' from 'not an image')."""
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM") and len(data) >= 6:
        return "BMP"
    return None


def _damage(error: BaseException) -> str:
    """'truncated' or 'corrupt', from Pillow's message (it says which, in varying words)."""
    text = f"{type(error).__name__} {error}".lower()
    return "truncated" if "truncat" in text or isinstance(error, EOFError) else "corrupt"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB, without clipping high-bit-depth data to white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale PNGs open as I;16 / I.  Pillow's convert("RGB") clips values > 255 (an
        # all-white image); scale the 16-bit range down instead.
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), mode="RGB")
    if img.mode == "P" and "transparency" in img.info:
        # Palette transparency must go through RGBA; a direct P -> RGB convert warns and may misread it.
        img = img.convert("RGBA")
    # Alpha is dropped, as the reference extractor does (`img.convert("RGB")` for 4-channel input).
    return img.convert("RGB")


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    try:
        rotated = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block must not make a decodable image fail
        return img
    return rotated if rotated is not None else img


def decode_image(
    data: bytes | bytearray | memoryview,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
) -> DecodedImage:
    """Decode untrusted image bytes to RGB, or raise a typed `ImageDecodeError`.

    The order of checks is chosen so that the cheap ones run first and nothing expensive happens
    before the size is known: emptiness and byte size, magic-byte sniffing for formats we refuse,
    header parse restricted to the accepted plugins, pixel limit, then the actual decode.
    """
    data = bytes(data)
    if len(data) == 0:
        raise EmptyImageError("image is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"image is {len(data)} bytes; the limit is {max_bytes} bytes")
    refused = _sniff_unsupported(data)
    if refused is not None:
        raise UnsupportedImageFormatError(
            f"unsupported image format {refused}; accepted formats are {', '.join(ACCEPTED_FORMATS)}",
            detected_format=refused,
        )
    digest = sha256_hex(data)
    try:
        img = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS_TO_TRY)
    except UnidentifiedImageError as e:
        accepted = _sniff_accepted(data)
        if accepted is not None:
            # The signature is right but Pillow could not even read the header: cut short or mangled.
            raise CorruptImageError(f"truncated or corrupt {accepted} image: unreadable header") from e
        raise NotAnImageError(
            f"bytes are not a recognisable image (first bytes {data[:8]!r}); "
            f"accepted formats are {', '.join(ACCEPTED_FORMATS)}"
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image exceeds the pixel limit: {e}") from e
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error) as e:
        # A format we accept was recognised from its signature but its header is damaged or cut.
        claimed = _sniff_accepted(data) or "image"
        raise CorruptImageError(f"{_damage(e)} {claimed} header: {e}") from e

    fmt = _FORMAT_ALIASES.get(img.format or "", img.format or "unknown")
    if fmt not in ACCEPTED_FORMATS:  # defensive: `formats=` already restricts the plugins tried
        raise UnsupportedImageFormatError(f"unsupported image format {fmt}", detected_format=fmt)
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageDimensionsError(f"{fmt} image has an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{fmt} image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
    if max(width, height) > max_aspect_ratio * min(width, height):
        raise ImageDimensionsError(
            f"{fmt} image is {width}x{height}; aspect ratios beyond {max_aspect_ratio:g}:1 are refused"
        )

    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Somebody flipped Pillow's process-wide switch; truncated files would decode as grey.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set; refusing to decode untrusted images")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb guard warns below 2x its limit; any warning here is an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # A freshly opened GIF / animated WebP / MPO sits on its first frame; `load()` decodes only
            # that one (never count frames: `n_frames` walks the whole file).
            img.load()
            rgb_img = _to_rgb(_apply_exif_orientation(img))
            rgb = np.asarray(rgb_img, dtype=np.uint8)
    except Image.DecompressionBombWarning as e:
        raise ImageTooLargeError(f"{fmt} image exceeds Pillow's pixel limit: {e}") from e
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{fmt} image exceeds the pixel limit: {e}") from e
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, zlib.error, IndexError) as e:
        raise CorruptImageError(f"{_damage(e)} {fmt} image data: {e or type(e).__name__}") from e
    finally:
        img.close()

    if rgb.ndim != 3 or rgb.shape[2] != 3:  # defensive: every branch of _to_rgb returns RGB
        raise CorruptImageError(f"{fmt} image decoded to an unexpected shape {rgb.shape}")
    return DecodedImage(rgb=np.ascontiguousarray(rgb), format=fmt, sha256=digest)


def decode_file(path: str, **limits: int | float) -> DecodedImage:
    """`decode_image` on a file's bytes (datasets and the extraction CLI)."""
    with open(path, "rb") as f:
        return decode_image(f.read(), **limits)  # type: ignore[arg-type]
