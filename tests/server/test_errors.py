"""Bad input gets a 4xx naming the field, never a 500 (the gateway's rule: docs/reliability.md)."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from testkit.tiny_gateway import b64


def err(r, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert body["code"] == status and body["message"]
    if field is not None:
        assert body["field"] == field, body
    return body


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's first bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 422),
        (b"\x00", 400),
        (b"random bytes that are no image at all" * 4, 400),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", 415),
        (png_header_only(20000, 20000), 413),
    ],
    ids=["empty", "one-byte", "random", "svg", "pixel-bomb"],
)
def test_bad_images(client, data, status):
    r = client.post("/vqa", json={"image": {"base64": base64.b64encode(data).decode()}, "question": "what?"})
    body = err(r, status)
    assert body["field"].startswith("image")


def test_truncated_png(client, pngs):
    r = client.post("/images", json={"image": b64(pngs[0][: len(pngs[0]) // 2])})
    err(r, 422, "image")


def test_invalid_base64(client):
    err(client.post("/vqa", json={"image": {"base64": "not base64!!"}, "question": "q"}), 422, "image.base64")


def test_image_ref_needs_exactly_one_source(client, pngs):
    r = client.post("/vqa", json={"image": {**b64(pngs[0]), "image_id": "x"}, "question": "q"})
    err(r, 422, "image")


def test_unknown_image_id(client):
    err(client.post("/vqa", json={"image": {"image_id": "0" * 64}, "question": "q"}), 404, "image.image_id")


def test_unknown_dataset(client, pngs):
    body = err(client.post("/vqa", json={"image": b64(pngs[0]), "question": "q", "dataset": "okvqa"}), 422)
    assert body["field"] == "dataset" and "vqa" in body["message"]


@pytest.mark.parametrize("question", ["", "   ", "x" * 301])
def test_bad_text(client, pngs, question):
    err(client.post("/vqa", json={"image": b64(pngs[0]), "question": question}), 422, "question")


@pytest.mark.parametrize(
    "text", ["[CLS] [SEP] [MASK]", "\u202e\u200b e\u0301 \U0001f600 \x00\x07", "zzzqqqxxj " * 30]
)
def test_odd_text_is_answered(client, pngs, text):
    r = client.post("/vqa", json={"image": b64(pngs[0]), "question": text})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("top_k", [0, -1, 101, 10**9])
def test_top_k_out_of_range(client, pngs, top_k):
    err(client.post("/vqa", json={"image": b64(pngs[0]), "question": "q", "top_k": top_k}), 422, "top_k")


def test_top_k_above_candidates_is_clamped(client, pngs):
    r = client.post("/vqa", json={"image": b64(pngs[0]), "question": "q", "dataset": "gqa", "top_k": 100})
    assert r.status_code == 200 and len(r.json()["answers"]) == 7


def test_schema_errors(client, pngs):
    err(client.post("/vqa", json={"image": b64(pngs[0])}), 422, "question")
    err(
        client.post("/vqa", json={"image": b64(pngs[0]), "question": "q", "questoin": "typo"}),
        422,
        "questoin",
    )
    err(client.post("/vqa", json={"image": b64(pngs[0]), "question": 5}), 422, "question")
    err(client.post("/vqa", json=[1, 2]), 422)
    err(client.post("/vqa", content=b"{not json", headers={"content-type": "application/json"}), 400, "body")
    err(
        client.post("/vqa", content=b"question=q", headers={"content-type": "text/plain"}),
        415,
        "content-type",
    )
    err(client.get("/vqa"), 405)
    err(client.get("/no/such/route"), 404)


def test_body_over_cap_is_413(client):
    big = b"x" * (300 * 1024)
    err(client.post("/vqa", content=big, headers={"content-type": "application/json"}), 413, "body")

    def chunks():  # no Content-Length: the cap is enforced while reading
        for _ in range(40):
            yield b"x" * 10_000

    err(client.post("/vqa", content=chunks(), headers={"content-type": "application/json"}), 413, "body")


def test_image_over_byte_cap_is_413(client):
    data = base64.b64encode(b"\x89PNG" + b"\x00" * (130 * 1024)).decode()
    err(client.post("/vqa", json={"image": {"base64": data}, "question": "q"}), 413, "image.base64")


def test_ground_field_errors(client, pngs):
    image = b64(pngs[0])
    err(
        client.post("/ground", json={"image": image, "dataset": "visual7w", "expression": "x"}),
        422,
        "candidates",
    )
    err(client.post("/ground", json={"image": image, "dataset": "refcoco"}), 422, "expression")
    err(
        client.post("/ground", json={"image": image, "dataset": "guesswhat", "expression": "x"}),
        422,
        "dialog",
    )
    bad_box = {"xmin": 10, "ymin": 10, "xmax": 5, "ymax": 20}
    body = {"image": image, "dataset": "visual7w", "expression": "x", "candidates": [bad_box]}
    err(client.post("/ground", json=body), 422, "candidates.0")
    outside = {"xmin": 500, "ymin": 500, "xmax": 600, "ymax": 600}
    body["candidates"] = [outside]
    err(client.post("/ground", json=body), 422, "candidates")
    body = {"image": image, "dataset": "refcoco", "expression": "x", "candidates": [outside]}
    err(client.post("/ground", json=body), 422, "candidates")


def test_retrieve_and_verify_counts(client, pngs):
    image = b64(pngs[0])
    err(client.post("/retrieve", json={"caption": "x", "images": []}), 422, "images")
    err(client.post("/retrieve", json={"caption": "x", "images": [image] * 7}), 422, "images")
    err(client.post("/retrieve", json={"caption": "x"}), 422)
    err(client.post("/verify", json={"statement": "x", "images": [image], "dataset": "nlvr2"}), 422, "images")
    err(client.post("/verify", json={"statement": "x", "images": [image, image]}), 422, "images")
    err(client.put("/galleries/big", json={"images": [image] * 9}), 422, "images")
    err(client.put("/galleries/bad name!", json={"images": [image]}), 422, "path.name")


def test_bad_content_length(client):
    err(client.post("/vqa", content=b"{}", headers={"content-length": "-5"}), 400)


def test_multipart_abuse_is_4xx(client, pngs):
    many = {f"f{i}": (f"{i}.png", b"x", "image/png") for i in range(20)}
    r = client.post("/vqa", data={"request": '{"question": "q"}'}, files=many)
    assert r.status_code == 400, r.text
    fields = {f"k{i}": "v" for i in range(50)}
    assert client.post("/vqa", data=fields).status_code == 415  # urlencoded: not an accepted type
    one_file = {"image": ("a.png", pngs[0], "image/png")}
    assert client.post("/vqa", data=fields, files=one_file).status_code == 400
    big_field = {"request": "x" * (2 * 1024 * 1024)}
    assert client.post("/vqa", data=big_field, files=one_file).status_code == 413
    boundary = {"content-type": "multipart/form-data; boundary=\r\nevil"}
    assert client.post("/vqa", content=b"--\r\nevil\r\n", headers=boundary).status_code in (400, 422)
    r = client.post("/vqa", data={"request": "not json"}, files=one_file)
    err(r, 400, "request")
    svg = b"<svg xmlns='http://www.w3.org/2000/svg'/>"
    r = client.post("/images", files={"image": ("a.svg", svg, "image/png")})
    err(r, 415, "image")
