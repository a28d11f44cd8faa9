"""A catalogue of hostile and odd requests (image bombs, bad text, schema and transport abuse), with answers.

Each `Case` is one HTTP request plus the set of statuses that count as a correct answer: a 4xx that
names the problem for bad input, 200 for odd-but-valid input.  A 5xx is never in the set.  The same
catalogue drives `tests/server/test_bad_inputs.py` (through the in-process app) and
`python -m bench.reliability` (against a live uvicorn), so the counts in docs/reliability.md are the
cases the tests check.  Images are generated here, small: every bomb is under 1 MB.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

PILLOW_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's warning threshold; it errors at twice this


@dataclass(frozen=True)
class Case:
    kind: str  # image | text | schema | transport
    name: str
    method: str
    path: str
    expect: frozenset[int]
    json: object = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict | None = None
    data: dict | None = None

    def request_kwargs(self) -> dict:
        out: dict = {"headers": dict(self.headers)}
        if self.json is not None:
            out["json"] = self.json
        if self.content is not None:
            out["content"] = self.content
        if self.files is not None:
            out["files"] = self.files
        if self.data is not None:
            out["data"] = self.data
        return out


# ------------------------------------------------------------------------------------------ images


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(w: int = 64, h: int = 48, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height over a few hundred bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def gif_bomb(width: int, height: int) -> bytes:
    """A GIF whose logical screen and frame claim width x height (both fields are 16 bits)."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b";"


def _lying_container(fmt: str) -> bytes:
    match fmt:
        case "TIFF":  # header + an IFD claiming 65535 x 65535
            ifd = struct.pack("<H", 2) + struct.pack("<HHII", 256, 4, 1, 65535)
            ifd += struct.pack("<HHII", 257, 4, 1, 65535) + b"\x00\x00\x00\x00"
            return b"II*\x00" + struct.pack("<I", 8) + ifd
        case "ICO":  # one entry claiming 256 x 256 with a 2 GB payload
            return b"\x00\x00\x01\x00\x01\x00" + struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, 2**31, 22)
        case "ICNS":
            return b"icns" + struct.pack(">I", 2**31) + b"ic10" + struct.pack(">I", 2**30)
        case "BLP":
            return b"BLP2" + struct.pack("<IBBBBII", 1, 1, 8, 8, 0, 65535, 65535) + b"\x00" * 128
    raise ValueError(fmt)


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: 64x48 pixels shown as 48x64
    return _encode(_noise(64, 48), "JPEG", exif=exif.tobytes())


def _animated_gif(frames: int) -> bytes:
    images = [Image.new("P", (8, 8), i % 256) for i in range(frames)]
    return _encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=10, loop=0)


def _mode(mode: str) -> bytes:
    base = _noise()
    if mode == "I;16":
        return _encode(Image.fromarray(np.full((48, 64), 40000, dtype=np.uint16)), "PNG")
    if mode == "CMYK":
        return _encode(base.convert("CMYK"), "JPEG")
    if mode == "P+transparency":
        return _encode(base.convert("P"), "PNG", transparency=0)
    return _encode(base.convert(mode), "PNG")


def image_payloads() -> list[tuple[str, bytes, frozenset[int]]]:
    """(name, bytes, accepted statuses) for images sent as base64 to /vqa."""
    png = _encode(_noise(), "PNG")
    jpeg = _encode(_noise(), "JPEG")
    ok = frozenset({200})
    bad = frozenset({400, 422})
    big = frozenset({413})
    huge_exif = Image.Exif()
    huge_exif[0x010E] = "x" * 60_000  # ImageDescription: a 60 KB EXIF block
    return [
        ("empty", b"", frozenset({422})),
        ("one-byte", b"\x89", bad),
        ("random-bytes", np.random.default_rng(1).bytes(2048), bad),
        ("truncated-png", png[: len(png) // 2], bad),
        ("truncated-jpeg", jpeg[: len(jpeg) // 2], bad),
        ("signature-only-png", png[:8], bad),
        ("polyglot-gif-html", b"GIF89a/*<html><script>alert(1)</script>*/" + b"\x00" * 64, bad),
        ("png-bomb-pillow-limit+1", png_bomb(9460, 9459), big),
        ("png-bomb-2x-pillow-limit+1", png_bomb(13378, 13378), big),
        ("png-bomb-1-gigapixel", png_bomb(32768, 32768), big),
        ("gif-bomb-65535x65535", gif_bomb(65535, 65535), frozenset({400, 413, 422})),
        ("aspect-1x100000", _encode(Image.new("RGB", (100_000, 1)), "PNG"), frozenset({413, 422})),
        ("aspect-1x2000", _encode(Image.new("RGB", (1, 2000)), "PNG"), frozenset({422})),
        ("one-pixel", _encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), ok),
        ("mode-I;16", _mode("I;16"), ok),
        ("mode-CMYK-jpeg", _mode("CMYK"), ok),
        ("mode-L", _mode("L"), ok),
        ("mode-1", _mode("1"), ok),
        ("mode-P+transparency", _mode("P+transparency"), ok),
        ("mode-LA", _mode("LA"), ok),
        ("mode-RGBA", _mode("RGBA"), ok),
        ("exif-rotated-jpeg", _exif_rotated_jpeg(), ok),
        ("huge-exif-60kb", _encode(_noise(), "JPEG", exif=huge_exif.tobytes()), ok),
        ("huge-icc-60kb", _encode(_noise(), "PNG", icc_profile=b"\x00" * 60_000), ok),
        ("animated-gif-2000-frames", _animated_gif(2000), ok),
        ("webp", _encode(_noise(), "WEBP"), ok),
        ("bmp", _encode(_noise(), "BMP"), ok),
        ("tiff-lying-size", _lying_container("TIFF"), frozenset({415})),
        ("ico-lying-size", _lying_container("ICO"), frozenset({415})),
        ("icns-lying-size", _lying_container("ICNS"), frozenset({415})),
        ("blp-lying-size", _lying_container("BLP"), frozenset({415})),
        ("svg", b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", frozenset({415})),
        ("heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, frozenset({415})),
        ("pdf", b"%PDF-1.7\n" + b"\x00" * 64, frozenset({415})),
    ]


def _b64(data: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(data).decode()}


# ------------------------------------------------------------------------------------------ the catalogue


def cases(png: bytes, *, max_body: int, max_text: int) -> list[Case]:
    """Every case; `png` is a small valid image, the limits are the gateway's settings."""
    out: list[Case] = []
    image = _b64(png)
    for name, data, expect in image_payloads():
        body = {"image": _b64(data), "question": "what is it?"}
        out.append(Case("image", name, "POST", "/vqa", expect, json=body))
    multipart_ok = {"image": ("photo.jpg", png, "image/jpeg")}  # a PNG named and typed as JPEG
    out.append(
        Case(
            "image",
            "png-labelled-jpeg-multipart",
            "POST",
            "/vqa",
            frozenset({200}),
            data={"request": json.dumps({"question": "what?"})},
            files=multipart_ok,
        )
    )
    out.append(
        Case(
            "image",
            "invalid-base64",
            "POST",
            "/vqa",
            frozenset({422}),
            json={"image": {"base64": "%%% not base64 %%%"}, "question": "q"},
        )
    )

    def vqa(question: object) -> dict:
        return {"image": image, "question": question}

    text = [
        ("empty", "", frozenset({422})),
        ("whitespace", " \t\n ", frozenset({422})),
        (f"over-limit-{max_text + 1}-chars", "x" * (max_text + 1), frozenset({422})),
        ("10k-chars", "what " * 2000, frozenset({422})),
        ("control-and-nul", "is\x00 it\x07\x1b[31m red\r\n?", frozenset({200})),
        ("rtl-zero-width-combining-emoji", "\u202eis\u200b it e\u0301 \U0001f600?", frozenset({200})),
        ("literal-special-tokens", "[CLS] [SEP] [MASK] [PAD] [UNK]", frozenset({200})),
        ("only-unknown-tokens", "\ue000\ue001 \ue002", frozenset({200})),
        ("lone-surrogate", "is it \ud800 red?", frozenset({422})),
        ("non-string", 12345, frozenset({422})),
    ]
    for name, question, expect in text:
        body = json.dumps(vqa(question), ensure_ascii=True).encode()
        out.append(Case("text", name, "POST", "/vqa", expect, content=body, headers=_JSON))
    invalid_utf8 = b'{"image": ' + json.dumps(image).encode() + b', "question": "caf\xc3\x28 \xff?"}'
    out.append(
        Case("text", "invalid-utf8", "POST", "/vqa", frozenset({400}), content=invalid_utf8, headers=_JSON)
    )
    multipart_bad_utf8 = {"request": (None, b'{"question": "\xff\xfe"}', "text/plain")}
    # Starlette decodes form fields with replacement characters: answered, not an error.
    out.append(
        Case(
            "text",
            "invalid-utf8-multipart-field",
            "POST",
            "/vqa",
            frozenset({200}),
            files={**multipart_bad_utf8, "image": ("a.png", png, "image/png")},
        )
    )

    def schema(name: str, path: str, body: object, expect=frozenset({422}), method: str = "POST") -> None:
        raw = json.dumps(body, allow_nan=True).encode()
        out.append(Case("schema", name, method, path, frozenset(expect), content=raw, headers=_JSON))

    schema("missing-question", "/vqa", {"image": image})
    schema("missing-image", "/vqa", {"question": "q"})
    schema("extra-field", "/vqa", {**vqa("q"), "questoin": "typo"})
    schema("wrong-type-image", "/vqa", {"image": 12345, "question": "q"})
    schema("wrong-type-image-list", "/vqa", {"image": ["aGVsbG8="], "question": "q"})
    # A plain base64 string is shorthand for {"b64": ...}: valid JSON, but "hello" is no image (400).
    schema("base64-shorthand-not-an-image", "/vqa", {"image": "aGVsbG8=", "question": "q"}, {400})
    schema("array-body", "/vqa", [1, 2, 3])
    schema("null-body", "/vqa", None)
    schema("string-body", "/vqa", "question")
    for top_k in (0, -1, 10**12, 1.5, "three", None, float("nan"), float("inf")):
        schema(f"top_k={top_k!r}", "/vqa", {**vqa("q"), "top_k": top_k})
    schema("top_k-numeric-string", "/vqa", {**vqa("q"), "top_k": "3"}, {200})  # pydantic lax mode
    schema("top_k-above-candidates", "/vqa", {**vqa("q"), "dataset": "gqa", "top_k": 50}, {200})
    for path, key in (("/vqa", "question"), ("/ground", "expression"), ("/verify", "statement")):
        body = {"image": image, key: "x"} if path != "/verify" else {"images": [image], key: "x"}
        schema(f"unknown-dataset{path}", path, {**body, "dataset": "okvqa"})
        schema(f"dataset-path-traversal{path}", path, {**body, "dataset": "../../etc/passwd"})
    schema("unknown-dataset/retrieve", "/retrieve", {"caption": "x", "images": [image], "dataset": "okvqa"})
    nan_box = {"xmin": float("nan"), "ymin": 0, "xmax": 10, "ymax": 10}
    inf_box = {"xmin": 0, "ymin": 0, "xmax": float("inf"), "ymax": 10}
    outside = {"xmin": 5000, "ymin": 5000, "xmax": 6000, "ymax": 6000}
    for name, box in (("nan", nan_box), ("inf", inf_box), ("outside-image", outside)):
        body = {"image": image, "dataset": "visual7w", "expression": "x", "candidates": [box]}
        schema(f"candidate-box-{name}", "/ground", body)
    schema(
        "candidate-box-string",
        "/ground",
        {"image": image, "dataset": "visual7w", "expression": "x", "candidates": [{"xmin": "a"}]},
    )
    schema(
        "no-candidates",
        "/ground",
        {"image": image, "dataset": "visual7w", "expression": "x", "candidates": []},
    )
    schema(
        "1000-candidates",
        "/ground",
        {
            "image": image,
            "dataset": "visual7w",
            "expression": "x",
            "candidates": [{"xmin": 1, "ymin": 1, "xmax": 5, "ymax": 5}] * 1000,
        },
    )
    schema("retrieve-0-images", "/retrieve", {"caption": "x", "images": []})
    schema("retrieve-1-image", "/retrieve", {"caption": "x", "images": [image]}, {200})
    schema("retrieve-duplicate-images", "/retrieve", {"caption": "x", "images": [image, image]}, {200})
    schema("retrieve-too-many-images", "/retrieve", {"caption": "x", "images": [image] * 100})
    schema("retrieve-unknown-gallery", "/retrieve", {"caption": "x", "gallery": "nope"}, {404})
    schema("retrieve-both-sources", "/retrieve", {"caption": "x", "gallery": "g", "images": [image]})
    schema("unknown-image-id", "/vqa", {"image": {"image_id": "0" * 64}, "question": "q"}, {404})
    schema("empty-image-id", "/vqa", {"image": {"image_id": ""}, "question": "q"}, {404, 422})
    # 128 characters of 4 UTF-8 bytes each: longer than an LMDB key may be (found by fuzzing: was a 500)
    schema(
        "image-id-512-bytes", "/vqa", {"image": {"image_id": "\U0001f600" * 128}, "question": "q"}, {404, 422}
    )
    schema(
        "image-id-traversal", "/vqa", {"image": {"image_id": "../../etc/passwd"}, "question": "q"}, {404, 422}
    )
    schema("verify-nlvr2-one-image", "/verify", {"images": [image], "statement": "x", "dataset": "nlvr2"})
    schema("gallery-name-traversal", "/galleries/..%2F..%2Fetc", {"images": [image]}, {404, 422}, "PUT")
    out.append(Case("schema", "unknown-route", "POST", "/caption", frozenset({404}), json={}))
    out.append(Case("schema", "unknown-task-route", "POST", "/vqa2", frozenset({404}), json={}))

    over = b"x" * (max_body + 1)
    out += [
        Case("transport", "body-over-cap", "POST", "/vqa", frozenset({413}), content=over, headers=_JSON),
        Case(
            "transport",
            "content-length-negative",
            "POST",
            "/vqa",
            frozenset({400}),
            content=b"{}",
            headers={"content-length": "-5"},
        ),
        Case(
            "transport",
            "content-length-not-a-number",
            "POST",
            "/vqa",
            frozenset({400}),
            content=b"{}",
            headers={"content-length": "12abc"},
        ),
        Case(
            "transport",
            "unsupported-content-type",
            "POST",
            "/vqa",
            frozenset({415}),
            content=b"q=1",
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        Case(
            "transport",
            "gzip-content-encoding-ignored",
            "POST",
            "/vqa",
            frozenset({400}),
            content=zlib.compress(b"{}" * 1000),
            headers={**_JSON, "content-encoding": "gzip"},
        ),
        Case(
            "transport",
            "too-many-multipart-parts",
            "POST",
            "/vqa",
            frozenset({400}),
            files={f"f{i}": (f"{i}.png", b"x", "image/png") for i in range(1100)},
        ),
        Case(
            "transport",
            "too-many-multipart-fields",
            "POST",
            "/vqa",
            frozenset({400}),
            data={f"k{i}": "v" for i in range(1100)},
            files={"image": ("a.png", png, "image/png")},
        ),
        Case(
            "transport",
            "multipart-field-without-filename-2mb",
            "POST",
            "/vqa",
            frozenset({413}),
            data={"request": "x" * (2 * 1024 * 1024)},
            files={"image": ("a.png", png, "image/png")},
        ),
        Case(
            "transport",
            "multipart-crlf-boundary",
            "POST",
            "/vqa",
            frozenset({400, 422}),
            content=b"--\r\nevil\r\n",
            headers={"content-type": "multipart/form-data; boundary=\r\nevil"},
        ),
        Case(
            "transport",
            "multipart-no-boundary",
            "POST",
            "/vqa",
            frozenset({400, 422}),
            content=b"--x\r\n",
            headers={"content-type": "multipart/form-data"},
        ),
        Case(
            "transport",
            "multipart-huge-preamble",
            "POST",
            "/vqa",
            frozenset({400, 413, 422}),
            content=b"a" * 200_000 + b"\r\n--b--\r\n",
            headers={"content-type": "multipart/form-data; boundary=b"},
        ),
        Case("transport", "method-not-allowed", "DELETE", "/vqa", frozenset({405})),
        Case("transport", "trace-method", "TRACE", "/", frozenset({405})),
        Case("transport", "path-traversal-static", "GET", "/static/..%2F..%2Fapp.py", frozenset({404, 422})),
        Case(
            "transport",
            "no-repository-api",
            "POST",
            "/v2/repository/models/trunk/load",
            frozenset({404}),
            json={},
        ),
        Case("transport", "no-model-load-api", "POST", "/models/load", frozenset({404}), json={}),
        Case(
            "transport",
            "host-header-trick",
            "GET",
            "/tasks",
            frozenset({200}),
            headers={"host": "169.254.169.254"},
        ),
        Case(
            "transport",
            "bad-request-id-replaced",
            "GET",
            "/tasks",
            frozenset({200}),
            headers={"x-request-id": "bad id/../" * 100},
        ),
    ]
    return out


_JSON = {"content-type": "application/json"}
