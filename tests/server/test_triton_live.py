"""The gateway over the real bundled tritonserver and over `python -m export`'s repository.

Opt-in (``TWELVE_TRITON_LIVE=1``): the export + Triton start take minutes on 2 cores, longer than the
rest of the server suite together.  Same requests, same answers: torch vs `triton` vs `local`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.backend import OnnxBackend
from server.loading import Components
from testkit.tiny_gateway import task_body, tiny_settings
from tests.server.test_backends import assert_same_answer
from vilbert.tasks import TASKS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("TWELVE_TRITON_LIVE"), reason="set TWELVE_TRITON_LIVE=1 to run"),
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    from export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("export") / "model_repository"
    opts = ExportOptions(checkpoint=tiny_checkpoint, out=out, skip_metric=True, measure_int8=False)
    run_export(opts, log=lambda _line: None)
    return out


def test_triton_and_local_answer_like_torch(exported, components, tmp_path, tiny_checkpoint, pngs):
    from export.triton_server import TritonServer
    from server.triton_backend import TritonBackend

    def client(backend, name: str) -> TestClient:
        parts = Components(backend, components.extractor, components.tokenizer, components.answers)
        return TestClient(create_app(tiny_settings(tmp_path / name, tiny_checkpoint), parts))

    reference = client(components.backend, "torch")
    local = client(OnnxBackend(exported), "local")
    with TritonServer(exported, startup_timeout=300) as server:
        triton = client(TritonBackend(server.http_url), "triton")
        assert triton.get("/readyz").json()["ready"] is True
        for task in TASKS:
            body = task_body(task, pngs[1])
            want = reference.post(f"/{task.endpoint}", json=body)
            assert want.status_code == 200, want.text
            for other in (local, triton):
                got = other.post(f"/{task.endpoint}", json=body)
                assert got.status_code == 200, (task.slug, got.text)
                assert_same_answer(want.json(), got.json())
    # Triton gone: per-model readiness flips and requests get 503 + Retry-After, not 500.
    assert triton.get("/readyz").status_code == 503
    r = triton.post("/vqa", json=task_body(TASKS[0], pngs[1]))
    assert r.status_code == 503 and "retry-after" in r.headers
