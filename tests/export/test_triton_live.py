"""The gateway over the real bundled tritonserver and over `python -m export`'s repository.

Same requests, same answers for all twelve tasks: torch vs `triton` vs `local`.  Uses the session's
export and Triton (tests/export/conftest.py), so it adds no export and no Triton start of its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from export.triton_server import HOST, free_port
from server.app import create_app
from server.backend import OnnxBackend
from server.loading import Components
from server.triton_backend import TritonBackend
from testkit.tiny_gateway import scene_png, task_body, tiny_components, tiny_settings
from tests.server.test_backends import assert_same_answer
from vilbert.tasks import TASKS

pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.slow


def test_triton_and_local_answer_like_torch(triton_server, tiny_export, tmp_path: Path):
    checkpoint = tiny_export.inputs.checkpoint
    components = tiny_components(checkpoint)

    def client(backend, name: str) -> TestClient:
        parts = Components(backend, components.extractor, components.tokenizer, components.answers)
        return TestClient(create_app(tiny_settings(tmp_path / name, checkpoint), parts))

    reference = client(components.backend, "torch")
    local = client(OnnxBackend(tiny_export.repository), "local")
    backend = TritonBackend(triton_server.http_url)
    try:
        triton = client(backend, "triton")
        assert triton.get("/readyz").json()["ready"] is True
        png = scene_png(1)
        for task in TASKS:
            body = task_body(task, png)
            want = reference.post(f"/{task.endpoint}", json=body)
            assert want.status_code == 200, want.text
            for other in (local, triton):
                got = other.post(f"/{task.endpoint}", json=body)
                assert got.status_code == 200, (task.slug, got.text)
                assert_same_answer(want.json(), got.json())
    finally:
        # An open client connection holds the shared Triton's shutdown for its whole exit timeout.
        backend.close()


def test_triton_unreachable_is_503_with_retry_after(tiny_export, tmp_path: Path):
    """No Triton at the URL: per-model readiness says so and requests get 503 + Retry-After, not 500.
    (Triton killed under load, and recovering: tests/export/test_triton_faults.py.)"""
    checkpoint = tiny_export.inputs.checkpoint
    components = tiny_components(checkpoint)
    parts = Components(
        TritonBackend(f"{HOST}:{free_port()}", timeout_s=2.0),
        components.extractor,
        components.tokenizer,
        components.answers,
    )
    gone = TestClient(create_app(tiny_settings(tmp_path, checkpoint), parts))
    assert gone.get("/readyz").status_code == 503
    r = gone.post("/vqa", json=task_body(TASKS[0], scene_png(1)))
    assert r.status_code == 503 and "retry-after" in r.headers
