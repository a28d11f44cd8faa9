"""Galleries through the gateway (tiny model, with the retrieval pre-filter): kept across restarts,
appended to, pruned, listed, over quota, indexed by faiss (flat / HNSW), rebuilt in the background
after a model version switch; an exhaustive search that cannot meet the deadline is refused up front."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.backend import TorchBackend
from server.loading import Components
from testkit.tiny_gateway import b64, scene_png, tiny_settings
from vilbert.checkpoint import load_checkpoint
from vilbert.contract import PREFILTER_IMAGE

CAPTION = "a red circle left of a blue square"


def pngs(n: int, base: int = 300) -> list[bytes]:
    return [scene_png(base + i) for i in range(n)]


def make_app(tmp: Path, checkpoint: Path, components, **overrides):
    overrides.setdefault("data_dir", tmp / "galleries")
    return create_app(tiny_settings(tmp, checkpoint, **overrides), components)


def retrieve(client: TestClient, name: str = "g", **body) -> dict:
    r = client.post("/retrieve", json={"caption": CAPTION, "gallery": name, **body})
    assert r.status_code == 200, r.text
    return r.json()


def assert_same_ranking(a: dict, b: dict) -> None:
    assert [x["image_id"] for x in a["results"]] == [x["image_id"] for x in b["results"]]
    for x, y in zip(a["results"], b["results"]):
        assert x["score"] == pytest.approx(y["score"], abs=1e-5)
    assert a["scored"] == b["scored"] and a["mode"] == b["mode"]


@pytest.mark.parametrize("disk_cache", [True, False], ids=["region-cache-on-disk", "memory-region-cache"])
def test_a_gallery_survives_a_restart(tmp_path, tiny_checkpoint, components, disk_cache):
    overrides = {} if disk_cache else {"cache_dir": None}  # without it the store keeps the features
    with TestClient(make_app(tmp_path, tiny_checkpoint, components, **overrides)) as client:
        r = client.put("/galleries/g", json={"images": [b64(p) for p in pngs(6)]})
        assert r.status_code == 200, r.text
        assert r.json()["prefilter"] and r.json()["index"] == "flat" and r.json()["size"] == 6
        before = [retrieve(client, top_k=6, mode=m) for m in ("two_stage", "exhaustive")]
        narrow = retrieve(client, top_k=2, rerank_k=3)
    with TestClient(make_app(tmp_path, tiny_checkpoint, components, **overrides)) as client:
        info = client.get("/galleries/g").json()
        assert info["size"] == 6 and info["prefilter"] and info["missing"] == 0, info
        after = [retrieve(client, top_k=6, mode=m) for m in ("two_stage", "exhaustive")]
        for a, b in zip(before, after):
            assert_same_ranking(a, b)
        assert_same_ranking(narrow, retrieve(client, top_k=2, rerank_k=3))
        listing = client.get("/galleries").json()
        assert listing["persistent"] and [x["name"] for x in listing["galleries"]] == ["g"]
        assert listing["stored_bytes"] == info["stored_bytes"] > 0


def test_append_delete_and_list(tmp_path, tiny_checkpoint, components):
    images = pngs(5)
    with TestClient(make_app(tmp_path, tiny_checkpoint, components)) as client:
        r = client.post("/galleries/g/images", json={"images": [b64(p) for p in images[:3]]})
        assert r.status_code == 200, r.text  # created by its first append
        body = r.json()
        assert body["size"] == 3 and len(body["added"]) == 3 and body["present"] == [] and body["prefilter"]
        first = body["added"]
        form = {"request": json.dumps({"images": [{"upload": "a"}, {"upload": "b"}]})}
        files = {"a": ("a.png", images[2], "image/png"), "b": ("b.png", images[3], "image/png")}
        r = client.post("/galleries/g/images", data=form, files=files)  # multipart, one already there
        assert r.status_code == 200, r.text
        assert r.json()["size"] == 4 and r.json()["present"] == [first[2]] and len(r.json()["added"]) == 1
        ids = client.get("/galleries/g").json()["image_ids"]
        assert ids[:3] == first and len(ids) == 4
        assert client.get("/galleries/g", params={"offset": 1, "limit": 2}).json()["image_ids"] == ids[1:3]
        assert {x["image_id"] for x in retrieve(client, top_k=4, rerank_k=4)["results"]} == set(ids)

        r = client.delete(f"/galleries/g/images/{ids[0]}")
        assert r.status_code == 200 and r.json()["size"] == 3, r.text
        assert client.delete(f"/galleries/g/images/{ids[0]}").status_code == 404
        for mode in ("two_stage", "exhaustive"):
            found = {x["image_id"] for x in retrieve(client, top_k=4, rerank_k=4, mode=mode)["results"]}
            assert found == set(ids[1:]), mode

        assert client.put("/galleries/h", json={"images": [b64(images[4])]}).status_code == 200
        listing = client.get("/galleries").json()
        assert [(x["name"], x["size"], x["prefilter"]) for x in listing["galleries"]] == [
            ("g", 3, True),
            ("h", 1, True),
        ]
        r = client.delete("/galleries/h")
        assert r.status_code == 200 and r.json() == {"name": "h", "deleted": True, "size": 1}
        assert client.get("/galleries/h").status_code == 404
        assert client.delete("/galleries/h").status_code == 404
        assert client.post("/retrieve", json={"caption": CAPTION, "gallery": "h"}).status_code == 404
        assert client.post("/galleries/bad name!/images", json={"images": [b64(images[0])]}).status_code in (
            404,
            422,
        )
    with TestClient(make_app(tmp_path, tiny_checkpoint, components)) as client:
        assert [x["name"] for x in client.get("/galleries").json()["galleries"]] == ["g"]
        assert client.get("/galleries/g").json()["image_ids"] == ids[1:]
        r = client.put("/galleries/g", json={"images": [b64(images[4])]})  # PUT still replaces
        assert r.status_code == 200 and r.json()["size"] == 1


def test_quota_is_507_and_the_body_cap_413(tmp_path, tiny_checkpoint, components):
    with TestClient(make_app(tmp_path, tiny_checkpoint, components)) as client:
        used = client.put("/galleries/g", json={"images": [b64(p) for p in pngs(2)]}).json()["stored_bytes"]
    app = make_app(tmp_path, tiny_checkpoint, components, gallery_quota_bytes=used + 16)
    with TestClient(app) as client:
        r = client.post("/galleries/g/images", json={"images": [b64(p) for p in pngs(2, base=400)]})
        assert r.status_code == 507, r.text
        message = r.json()["error"]["message"]
        assert "quota" in message and "TWELVE_GALLERY_QUOTA_BYTES" in message
        assert client.get("/galleries/g").json()["size"] == 2  # untouched
        r = client.put("/galleries/other", json={"images": [b64(p) for p in pngs(1, base=500)]})
        assert r.status_code == 507
        huge = {"images": [{"base64": "A" * (300 * 1024)}]}  # over the tiny gateway's 256 KiB body cap
        assert client.post("/galleries/g/images", json=huge).status_code == 413
        too_many = {"images": [b64(p) for p in pngs(9, base=600)]}  # over the per-request cap of 8
        r = client.post("/galleries/g/images", json=too_many)
        assert r.status_code in (413, 422), r.text


def test_exhaustive_search_that_cannot_meet_the_deadline_is_refused(tmp_path, tiny_checkpoint, components):
    app = make_app(tmp_path, tiny_checkpoint, components, exhaustive_pairs_per_s=0.1, deadline_s=20.0)
    with TestClient(app) as client:
        assert client.put("/galleries/g", json={"images": [b64(p) for p in pngs(6)]}).status_code == 200
        r = client.post("/retrieve", json={"caption": CAPTION, "gallery": "g", "mode": "exhaustive"})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert (
            error["field"] == "mode"
            and "6 images" in error["message"]
            and "mode=two_stage" in error["message"]
        )
        retrieve(client, top_k=3)  # two-stage runs, and measures the trunk's pace on its re-rank
        assert retrieve(client, top_k=3, mode="exhaustive")["scored"] == 6  # measured: it fits now


def test_without_a_prefilter_the_refusal_says_to_train_one(tmp_path, tiny_checkpoint, components):
    from vilbert.checkpoint import save_checkpoint
    from vilbert.config import preset
    from vilbert.heads import MultiTaskViLBERT

    cfg = load_checkpoint(tiny_checkpoint).model.config
    old = MultiTaskViLBERT(preset("tiny", v_feature_size=cfg.v_feature_size))
    path = save_checkpoint(tmp_path / "old", old)
    parts = Components(TorchBackend(old), components.extractor, components.tokenizer, components.answers)
    app = make_app(tmp_path, path, parts, exhaustive_pairs_per_s=0.1)
    with TestClient(app) as client:
        r = client.put("/galleries/g", json={"images": [b64(p) for p in pngs(3)]})
        assert r.status_code == 200 and not r.json()["prefilter"] and r.json()["index"] is None
        r = client.post("/retrieve", json={"caption": CAPTION, "gallery": "g"})
        assert r.status_code == 422 and "pre-filter" in r.json()["error"]["message"]


def test_hnsw_past_the_threshold_and_the_upgrade_of_a_growing_gallery(tmp_path, tiny_checkpoint, components):
    app = make_app(tmp_path, tiny_checkpoint, components, gallery_flat_max=4)
    with TestClient(app) as client:
        images = pngs(8)
        r = client.put("/galleries/big", json={"images": [b64(p) for p in images[:6]]})
        assert r.status_code == 200 and r.json()["index"] == "hnsw", r.text
        assert_same_ranking(
            {**retrieve(client, "big", top_k=6, rerank_k=6), "mode": "-"},
            {**retrieve(client, "big", top_k=6, mode="exhaustive"), "mode": "-"},
        )
        assert (
            client.put("/galleries/grows", json={"images": [b64(p) for p in images[:3]]}).json()["index"]
            == "flat"
        )
        r = client.post("/galleries/grows/images", json={"images": [b64(p) for p in images[3:6]]})
        assert r.status_code == 200 and r.json()["prefilter"]  # the flat index serves while HNSW is built
        assert app.state.models.current.galleries.wait_idle(60)
        assert client.get("/galleries/grows").json()["index"] == "hnsw"
        assert len(retrieve(client, "grows", top_k=6, rerank_k=6)["results"]) == 6


class GatedBackend(TorchBackend):
    """The tiny model whose image pre-filter waits for a gate: a background rebuild held open."""

    def __init__(self, model, gate: threading.Event) -> None:
        super().__init__(model, threads=1)
        self.gate = gate

    def infer(self, model, inputs, request_id=None):
        if model == PREFILTER_IMAGE:
            assert self.gate.wait(60)
        return super().infer(model, inputs, request_id)


def test_a_version_switch_rebuilds_in_the_background(tmp_path, tiny_checkpoint, components):
    app = make_app(tmp_path, tiny_checkpoint, components)
    gate = threading.Event()
    try:
        with TestClient(app) as client:
            assert client.put("/galleries/g", json={"images": [b64(p) for p in pngs(6)]}).status_code == 200
            before = retrieve(client, top_k=6, rerank_k=6)
            old = app.state.models.current
            new = old.derive(GatedBackend(load_checkpoint(tiny_checkpoint).model, gate), old.answers, 2)
            app.state.models.current = new  # what ModelVersions.activate does
            r = client.post("/retrieve", json={"caption": CAPTION, "gallery": "g", "top_k": 6})
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
            message = r.json()["error"]["message"]
            assert (
                "model version 2" in message and "rebuilt (0/6 images)" in message and "exhaustive" in message
            )
            assert retrieve(client, top_k=6, mode="exhaustive")["scored"] == 6
            info = client.get("/galleries/g").json()
            assert (info["prefilter"], info["model_version"], info["embedded"]) == (False, 2, 0)
            gate.set()
            assert new.galleries.wait_idle(60)
            assert_same_ranking(before, retrieve(client, top_k=6, rerank_k=6))  # same weights, same ranks
            info = client.get("/galleries/g").json()
            assert (info["prefilter"], info["model_version"], info["embedded"]) == (True, 2, 6)
            folder = next(p for p in (tmp_path / "galleries").iterdir() if p.is_dir()) / "g"
            assert {p.name for p in folder.glob("seg-*.npz")} >= {
                "seg-000000.v2.npz",
                "seg-000000.unversioned.npz",
            }
            # Rolling back needs no rebuild: the previous version's embeddings were kept.
            app.state.models.current = new.derive(components.backend, old.answers, None)  # type: ignore[arg-type]
            assert_same_ranking(before, retrieve(client, top_k=6, rerank_k=6))
    finally:
        gate.set()
