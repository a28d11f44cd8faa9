"""`image` as an object, a plain base64 string or a base64 data: URL; a wrong shape names the forms."""

from __future__ import annotations

import base64

import pytest

from testkit.tiny_gateway import VQA_ANSWERS


def ask(client, image) -> dict:
    r = client.post("/vqa", json={"image": image, "question": "what colour is the circle?", "top_k": 3})
    assert r.status_code == 200, r.text
    return r.json()


def test_plain_base64_and_data_url_are_shorthand_for_the_object(client, pngs):
    text = base64.b64encode(pngs[0]).decode()
    full = ask(client, {"base64": text})
    assert full["answers"][0]["answer"] in VQA_ANSWERS
    for shorthand in (text, f"data:image/png;base64,{text}", f"  DATA:image/png;BASE64,{text}\n"):
        assert ask(client, shorthand)["answers"] == full["answers"]


def test_shorthand_in_image_lists(client, pngs):
    texts = [base64.b64encode(p).decode() for p in pngs[:2]]
    body = {"caption": "a red circle", "images": [texts[0], f"data:image/png;base64,{texts[1]}"]}
    r = client.post("/retrieve", json={**body, "mode": "exhaustive"})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 2


@pytest.mark.parametrize("image", [42, ["aGk="], None, True, {}])
def test_a_wrong_shape_lists_the_accepted_forms(client, image):
    r = client.post("/vqa", json={"image": image, "question": "q"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "image"
    for form in ('{"base64"', '{"upload"', '{"image_id"', "base64 string", "data:image/png;base64,"):
        assert form in error["message"], error["message"]
    assert "valid dictionary" not in error["message"]


def test_a_data_url_must_be_base64(client):
    r = client.post("/vqa", json={"image": "data:image/png,%89PNG", "question": "q"})
    assert r.status_code == 422 and "data:image/png;base64," in r.json()["error"]["message"]


def test_a_bad_base64_shorthand_is_the_same_error_as_the_object(client):
    by_object = client.post("/vqa", json={"image": {"base64": "not base64!"}, "question": "q"})
    by_string = client.post("/vqa", json={"image": "not base64!", "question": "q"})
    assert by_object.status_code == by_string.status_code != 500
    assert by_object.json()["error"]["message"] == by_string.json()["error"]["message"]


def test_the_schema_documents_both_forms(client):
    image_ref = client.get("/openapi.json").json()["components"]["schemas"]["ImageRef"]
    kinds = [s.get("type") for s in image_ref["anyOf"]]
    assert kinds == ["object", "string"] and "data:" in image_ref["anyOf"][1]["description"]
