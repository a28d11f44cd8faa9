"""Overload, deadline, backend failure, API key and the on-disk region cache."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import lmdb
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.backend import BackendError, graph_names
from server.loading import Components
from testkit.tiny_gateway import b64, tiny_settings


class SlowBackend:
    """Delegates to a real backend after a delay (a slow or overloaded model server)."""

    name = "slow"

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def infer(self, model, inputs, request_id=None):
        time.sleep(self.delay)
        return self.inner.infer(model, inputs, request_id)

    def ready(self):
        return self.inner.ready()

    def close(self):
        pass


class DownBackend:
    """A backend whose server is gone."""

    name = "down"

    def infer(self, model, inputs, request_id=None):
        raise BackendError("connection refused")

    def ready(self):
        return dict.fromkeys(graph_names(), False)

    def close(self):
        pass


def app_with(tmp_path: Path, checkpoint: Path, components: Components, backend=None, **settings):
    parts = Components(
        backend or components.backend, components.extractor, components.tokenizer, components.answers
    )
    return create_app(tiny_settings(tmp_path, checkpoint, **settings), parts)


async def _burst(app, n: int, body: dict) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        return await asyncio.gather(*(c.post("/vqa", json=body) for _ in range(n)))


def test_full_queue_answers_429_with_retry_after(tmp_path, tiny_checkpoint, components, pngs):
    app = app_with(tmp_path, tiny_checkpoint, components, SlowBackend(components.backend, 0.3), max_queue=1)
    TestClient(app).post("/images", json={"image": b64(pngs[0])})  # detector work done before the burst
    responses = asyncio.run(_burst(app, 4, {"image": b64(pngs[0]), "question": "q"}))
    codes = sorted(r.status_code for r in responses)
    assert codes[0] == 200 and 429 in codes and set(codes) <= {200, 429}
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1" and rejected.json()["error"]["code"] == 429


def test_deadline_answers_504(tmp_path, tiny_checkpoint, components, pngs):
    app = app_with(
        tmp_path, tiny_checkpoint, components, SlowBackend(components.backend, 1.0), deadline_s=0.3
    )
    client = TestClient(app)
    start = time.perf_counter()
    r = client.post("/vqa", json={"image": b64(pngs[0]), "question": "q"})
    elapsed = time.perf_counter() - start
    assert r.status_code == 504 and "deadline" in r.json()["error"]["message"]
    assert elapsed < 1.0  # answered at the deadline, not when the slow call finished
    assert 'twelve_rejected_total{reason="deadline"} 1.0' in client.get("/metrics").text


def test_backend_down_answers_503_and_not_ready(tmp_path, tiny_checkpoint, components, pngs):
    app = app_with(tmp_path, tiny_checkpoint, components, DownBackend())
    client = TestClient(app)
    r = client.post("/vqa", json={"image": b64(pngs[0]), "question": "q"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["ready"] is False and "retry-after" in ready.headers
    assert client.get("/healthz").status_code == 200


def test_api_key(tmp_path, tiny_checkpoint, components):
    client = TestClient(app_with(tmp_path, tiny_checkpoint, components, api_key="s3cret"))
    r = client.get("/tasks")
    assert r.status_code == 401 and r.json()["error"]["field"] == "X-API-Key"
    assert client.get("/tasks", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/tasks", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/tasks", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/").status_code == 200


def test_settings_default_to_loopback():
    from server.settings import Settings

    assert Settings().host == "127.0.0.1"


def cache_hits(client: TestClient) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("twelve_region_cache_total{"):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return out


def test_disk_cache_survives_restart_and_corruption(tmp_path, tiny_checkpoint, components, pngs):
    first = TestClient(app_with(tmp_path, tiny_checkpoint, components))
    image_id = first.post("/images", json={"image": b64(pngs[2])}).json()["image_id"]
    answer = first.post("/vqa", json={"image": b64(pngs[2]), "question": "q"}).json()
    disk = first.app.state.models.current.cache.disk_dir
    assert disk.parent == tmp_path / "cache" and len(disk.name) == 16  # one folder per detector
    first.app.state.models.current.cache.close()

    second = TestClient(app_with(tmp_path, tiny_checkpoint, components))
    assert second.post("/vqa", json={"image": {"image_id": image_id}, "question": "q"}).json() == answer
    assert cache_hits(second) == {"disk": 1.0}
    second.app.state.models.current.cache.close()

    env = lmdb.open(str(disk), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.put(image_id.encode(), b"\x80not a pickle")
    env.close()
    third = TestClient(app_with(tmp_path, tiny_checkpoint, components))
    assert third.post("/vqa", json={"image": b64(pngs[2]), "question": "q"}).json() == answer
    assert cache_hits(third) == {"miss": 1.0}


def test_a_new_detector_never_serves_the_old_detectors_features(tmp_path, tiny_checkpoint, components, pngs):
    """Same cache folder, same image, another detector (weights retrained): a miss, not the old features."""
    import copy

    import torch

    from regions.extractor import RegionExtractor
    from regions.weights import detector_key

    image = {"image": b64(pngs[1]), "question": "q"}
    first = TestClient(app_with(tmp_path, tiny_checkpoint, components))
    first.post("/vqa", json=image)
    first.app.state.models.current.cache.close()
    retrained = copy.deepcopy(components.extractor.detector)
    with torch.no_grad():
        next(retrained.parameters()).add_(0.01)
    assert detector_key(retrained) != detector_key(components.extractor.detector)
    other = Components(
        components.backend, RegionExtractor(retrained, batch_size=1), components.tokenizer, components.answers
    )
    second = TestClient(app_with(tmp_path, tiny_checkpoint, other))
    second.post("/vqa", json=image)
    assert cache_hits(second) == {"miss": 1.0}
    second.app.state.models.current.cache.close()
    third = TestClient(app_with(tmp_path, tiny_checkpoint, components))  # the first detector again
    third.post("/vqa", json=image)
    assert cache_hits(third) == {"disk": 1.0}
    third.app.state.models.current.cache.close()


@pytest.mark.parametrize("n_images", [1, 5])
def test_prefix_once_scores_match_full_trunk(components, n_images, pngs, tmp_path, tiny_checkpoint):
    """The torch backend's caption-prefix-once path ranks exactly as trunk + match head per image."""
    from server.backend import PrefixScorer

    class NoPrefix(SlowBackend):
        pass

    fast = TestClient(app_with(tmp_path, tiny_checkpoint, components, retrieve_batch=2))
    slow = NoPrefix(components.backend, 0.0)
    plain = TestClient(app_with(tmp_path / "b", tiny_checkpoint, components, slow, retrieve_batch=2))
    assert isinstance(components.backend, PrefixScorer) and not isinstance(slow, PrefixScorer)
    body = {"caption": "a red circle", "images": [b64(p) for p in (pngs * 2)[:n_images]], "top_k": 5}
    a, b = fast.post("/retrieve", json=body).json(), plain.post("/retrieve", json=body).json()
    assert [r["image_id"] for r in a["results"]] == [r["image_id"] for r in b["results"]]
    assert [r["score"] for r in a["results"]] == pytest.approx([r["score"] for r in b["results"]], abs=1e-5)
