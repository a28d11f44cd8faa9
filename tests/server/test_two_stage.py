"""Two-stage /retrieve (pre-filter -> trunk re-rank) against exhaustive search, on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.backend import TorchBackend
from server.loading import Components
from testkit.tiny_gateway import b64, scene_png, tiny_settings
from vilbert.checkpoint import load_checkpoint
from vilbert.heads import MultiTaskViLBERT

CAPTION = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def gallery(client):
    pngs = [scene_png(100 + i) for i in range(6)]
    r = client.put("/galleries/six", json={"images": [b64(p) for p in pngs]})
    assert r.status_code == 200, r.text
    assert r.json()["prefilter"] is True and r.json()["size"] == 6
    return r.json()["image_ids"]


def retrieve(client, **body) -> dict:
    r = client.post("/retrieve", json={"caption": CAPTION, "gallery": "six", **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_two_stage_is_the_default_and_equals_exhaustive_when_k_covers_the_gallery(client, gallery):
    default = retrieve(client, top_k=6)
    exhaustive = retrieve(client, top_k=6, mode="exhaustive")
    covering = retrieve(client, top_k=6, mode="two_stage", rerank_k=6)
    assert default["mode"] == covering["mode"] == "two_stage" and exhaustive["mode"] == "exhaustive"
    assert exhaustive["scored"] == 6 and covering["scored"] == 6
    assert [x["image_id"] for x in covering["results"]] == [x["image_id"] for x in exhaustive["results"]]
    for a, b in zip(covering["results"], exhaustive["results"]):
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
    assert sorted(x["image_id"] for x in exhaustive["results"]) == sorted(gallery)


def test_small_k_reranks_only_the_prefilter_candidates(client, components, gallery):
    model = components.backend.model
    service_gallery = client.app.state.models.current.galleries.find("six")
    embeddings = service_gallery.embeddings[next(iter(service_gallery.embeddings))]
    ids, mask = client.app.state.models.current.inference.tokens(CAPTION, _coco())
    query = _caption_embedding(model, ids, mask)
    expected = [gallery[i] for i in np.argsort(-(embeddings @ query), kind="stable")[:2]]
    two = retrieve(client, top_k=1, rerank_k=2)
    assert two["scored"] == 2 and len(two["results"]) == 1
    assert two["results"][0]["image_id"] in expected
    wider = retrieve(client, top_k=3, rerank_k=2)  # the trunk re-ranks at least top_k images
    assert wider["scored"] == 3 and len(wider["results"]) == 3


def test_inline_images_use_the_prefilter_too(client, gallery):
    pngs = [scene_png(100 + i) for i in range(6)]
    inline = client.post("/retrieve", json={"caption": CAPTION, "images": [b64(p) for p in pngs[:5]]})
    assert inline.status_code == 200 and inline.json()["mode"] == "two_stage"
    assert inline.json()["scored"] == 5


def test_checkpoint_without_prefilter_searches_exhaustively_and_refuses_two_stage(
    tmp_path, components, tiny_checkpoint
):
    from vilbert.checkpoint import save_checkpoint
    from vilbert.config import preset

    cfg = load_checkpoint(tiny_checkpoint).model.config
    old = MultiTaskViLBERT(preset("tiny", v_feature_size=cfg.v_feature_size))
    path = save_checkpoint(tmp_path / "old", old)
    parts = Components(TorchBackend(old), components.extractor, components.tokenizer, components.answers)
    client = TestClient(create_app(tiny_settings(tmp_path, path), parts), raise_server_exceptions=False)
    png = b64(scene_png(7))
    r = client.put("/galleries/g", json={"images": [png]})
    assert r.status_code == 200 and r.json()["prefilter"] is False
    r = client.post("/retrieve", json={"caption": CAPTION, "gallery": "g"})
    assert r.status_code == 200 and r.json()["mode"] == "exhaustive"
    r = client.post("/retrieve", json={"caption": CAPTION, "gallery": "g", "mode": "two_stage"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "mode"
    assert "pre-filter" in r.json()["error"]["message"]


def test_bad_mode_and_rerank_k_are_422(client, gallery):
    assert (
        client.post("/retrieve", json={"caption": "x", "gallery": "six", "mode": "fast"}).status_code == 422
    )
    assert client.post("/retrieve", json={"caption": "x", "gallery": "six", "rerank_k": 0}).status_code == 422


def _coco():
    from vilbert.tasks import Endpoint, task_for_dataset

    return task_for_dataset(Endpoint.RETRIEVE, "coco")


def _caption_embedding(model, ids, mask) -> np.ndarray:
    import torch

    with torch.no_grad():
        prefix = model.trunk.encode_text_prefix(
            torch.from_numpy(ids), torch.from_numpy(mask), torch.tensor([_coco().task_id])
        )
        return model.prefilter.caption_embedding(prefix.states, prefix.mask)[0].numpy()
