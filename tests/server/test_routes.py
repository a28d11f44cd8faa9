"""Every endpoint and every dataset option of the gateway, on a tiny model with the torch backend."""

from __future__ import annotations

import pytest

from testkit.tiny_gateway import CANDIDATES, VQA_ANSWERS, b64, task_body
from vilbert.tasks import TASKS, Endpoint, Readout


@pytest.mark.parametrize("task", TASKS, ids=[t.slug for t in TASKS])
def test_every_task_answers(client, pngs, task):
    r = client.post(f"/{task.endpoint}", json=task_body(task, pngs[0]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == task.slug
    match task.endpoint:
        case Endpoint.VQA:
            answers = body["answers"]
            assert len(answers) == 5 and all(0 <= a["score"] <= 1 for a in answers)
            scores = [a["score"] for a in answers]
            assert scores == sorted(scores, reverse=True)
            if task.answer_vocab == "vqa":
                assert {a["answer"] for a in answers} <= set(VQA_ANSWERS)
        case Endpoint.GROUND:
            regions = body["regions"]
            assert 1 <= len(regions) <= 3 and isinstance(body["no_match"], bool)
            for reg in regions:
                b = reg["box"]
                assert 0 <= b["xmin"] <= b["xmax"] <= 96 and 0 <= b["ymin"] <= b["ymax"] <= 80
            if task.readout is Readout.BEST_CANDIDATE and task.slug == "visual7w":
                given = [tuple(c.values()) for c in CANDIDATES]
                assert all(tuple(r["box"].values()) in given for r in regions)
        case Endpoint.RETRIEVE:
            assert [x["rank"] for x in body["results"]] == [1, 2]
            assert body["results"][0]["score"] >= body["results"][1]["score"]
        case Endpoint.VERIFY:
            assert set(body["scores"]) == set(task.labels)
            assert body["label"] == max(body["scores"], key=body["scores"].get)
            assert sum(body["scores"].values()) == pytest.approx(1.0)


def test_images_then_image_id(client, pngs):
    first = client.post("/images", json={"image": b64(pngs[1])})
    assert first.status_code == 200, first.text
    info = first.json()
    assert (info["width"], info["height"]) == (96, 80) and len(info["image_id"]) == 64
    assert info["boxes"] and all(set(b) == {"box", "score", "label"} for b in info["boxes"])
    again = client.post("/images", json={"image": b64(pngs[1])}).json()
    assert again["cached"] and again["image_id"] == info["image_id"]
    by_id = client.post("/vqa", json={"image": {"image_id": info["image_id"]}, "question": "how many?"})
    inline = client.post("/vqa", json={"image": b64(pngs[1]), "question": "how many?"})
    assert by_id.status_code == 200 and by_id.json() == inline.json()


def test_multipart_upload(client, pngs):
    files = {"image": ("scene.png", pngs[2], "image/png")}
    r = client.post(
        "/vqa", data={"request": '{"question": "what shape?", "dataset": "gqa", "top_k": 2}'}, files=files
    )
    assert r.status_code == 200, r.text
    assert r.json()["task"] == "gqa" and len(r.json()["answers"]) == 2
    r = client.post("/images", files=files)
    assert r.status_code == 200 and r.json()["width"] == 96
    named = {"a": ("a.png", pngs[0], "image/png"), "b": ("b.png", pngs[1], "image/png")}
    body = '{"statement": "two circles", "dataset": "nlvr2", "images": [{"upload": "a"}, {"upload": "b"}]}'
    r = client.post("/verify", data={"request": body}, files=named)
    assert r.status_code == 200 and r.json()["task"] == "nlvr2"
    missing = '{"statement": "x", "images": [{"upload": "nope"}]}'
    r = client.post("/verify", data={"request": missing}, files=named)
    assert r.status_code == 422 and r.json()["error"]["field"] == "images.0.upload"


def test_guesswhat_with_candidates_and_top_k_clamped(client, pngs):
    body = {
        "image": b64(pngs[0]),
        "dataset": "guesswhat",
        "dialog": [{"question": "is it red?", "answer": "no"}, {"question": "a square?", "answer": "yes"}],
        "candidates": CANDIDATES,
        "top_k": 50,
    }
    r = client.post("/ground", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["regions"]) == len(CANDIDATES)


def test_retrieve_gallery(client, pngs):
    r = client.put("/galleries/shapes", json={"images": [b64(p) for p in pngs] + [b64(pngs[0])]})
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(pngs)  # the duplicate is registered once
    assert client.get("/galleries/shapes").json()["size"] == len(pngs)
    r = client.post("/retrieve", json={"caption": "a blue square", "gallery": "shapes", "top_k": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["rank"] for x in results] == [1, 2, 3]
    assert {x["image_id"] for x in results} <= set(client.get("/galleries/shapes").json()["image_ids"])
    inline = client.post("/retrieve", json={"caption": "a blue square", "images": [b64(p) for p in pngs]})
    assert inline.json()["results"][:3] == results
    assert client.post("/retrieve", json={"caption": "x", "gallery": "nope"}).status_code == 404
    assert client.put("/galleries/..%2Fetc", json={"images": [b64(pngs[0])]}).status_code in (404, 422)


def test_meta_routes(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert all(ready.json()["models"].values())
    tasks = client.get("/tasks").json()["tasks"]
    assert len(tasks) == 12 and {t["endpoint"] for t in tasks} == {e.value for e in Endpoint}
    defaults = {t["endpoint"]: t["dataset"] for t in tasks if t["default"]}
    assert defaults == {"vqa": "vqa", "ground": "refcoco", "retrieve": "coco", "verify": "snli_ve"}


def test_a_request_without_dataset_gets_the_tables_default(client, pngs):
    """The schemas take each endpoint's default from the task table."""
    image = b64(pngs[0])
    assert client.post("/vqa", json={"image": image, "question": "what?"}).json()["task"] == "vqa"
    assert client.post("/ground", json={"image": image, "expression": "x"}).json()["task"] == "refcoco"
    retrieve = client.post("/retrieve", json={"caption": "a circle", "images": [image]})
    assert retrieve.json()["task"] == "retrieval_coco"
    assert client.post("/verify", json={"images": [image], "statement": "x"}).json()["task"] == "snli_ve"


def test_metrics_count_tasks_stages_and_cache(client, pngs):
    client.post("/vqa", json={"image": b64(pngs[3]), "question": "what?"})
    client.post("/vqa", json={"image": b64(pngs[3]), "question": "what now?"})
    text = client.get("/metrics").text
    assert 'twelve_requests_total{route="/vqa",status="200",task="vqa"}' in text
    assert 'twelve_request_seconds_count{route="/vqa",task="vqa"}' in text
    for stage in ("detector", "trunk", "head", "decode"):
        assert f'twelve_stage_seconds_count{{stage="{stage}"}}' in text
    assert 'twelve_region_cache_total{result="memory"}' in text
    assert 'twelve_region_cache_total{result="miss"}' in text


def test_openapi_lists_every_endpoint_with_models(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [
        ("/images", "post"),
        ("/vqa", "post"),
        ("/ground", "post"),
        ("/retrieve", "post"),
        ("/verify", "post"),
        ("/galleries/{name}", "put"),
        ("/tasks", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ]:
        assert method in paths[path], path
    models = schema["components"]["schemas"]
    for name in ("VQARequest", "GroundRequest", "RetrieveRequest", "VerifyRequest", "ImageRef", "Box"):
        assert name in models
    for name in ("VQAResponse", "GroundResponse", "RetrieveResponse", "VerifyResponse", "ImageInfo"):
        assert name in models
    ref = paths["/vqa"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/VQARequest"
    assert client.get("/docs").status_code == 200


def test_web_page_and_examples(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and "/static/page.js" in page.text
    assert client.get("/static/page.js").status_code == 200
    assert client.get("/static/page.css").status_code == 200
    assert client.get("/static/../settings.py").status_code == 404
    examples = client.get("/examples").json()["examples"]
    assert len(examples) >= 3 and examples[0]["objects"]
    png = client.get(examples[0]["url"])
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    r = client.post("/vqa", json={"image": b64(png.content), "question": "what colour is the square?"})
    assert r.status_code == 200


def test_request_id_echoed(client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = client.get("/healthz").headers["x-request-id"]
    assert len(generated) == 32
    r = client.post("/vqa", json={}, headers={"X-Request-ID": "bad id\twith tab"})
    assert (
        r.status_code == 422
        and r.json()["error"]["request_id"] == r.headers["x-request-id"] != "bad id\twith tab"
    )
