"""The `local` (onnxruntime) and `triton` backends give the torch backend's answers.

The local backend runs the tiny model's graphs exported by `export.graphs` (the export package's own
code, to the names of vilbert/contract.py).  The triton backend is exercised through a stand-in client
that decodes tritonclient's binary tensors and runs the torch graphs; the same requests against the
real bundled tritonserver: tests/export/test_triton_live.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from server.backend import BackendError, OnnxBackend, TorchBackend, graph_names, optional_graph_names
from server.loading import Components
from server.triton_backend import TritonBackend
from testkit.tiny_gateway import b64, scene_png, task_body, tiny_settings
from vilbert.checkpoint import load_checkpoint
from vilbert.tasks import TASKS


@pytest.fixture(scope="session")
def onnx_repo(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Path:
    from export.graphs import export_onnx, graph_module
    from vilbert.contract import build_spec

    torch.set_num_threads(1)
    model = load_checkpoint(tiny_checkpoint).model.eval()
    repo = tmp_path_factory.mktemp("repo")
    for graph in build_spec(model.config).graphs:
        export_onnx(graph_module(graph, model, None), graph, repo / graph.name / "1" / "model.onnx", 64)
    return repo


def app_for(backend, components: Components, tmp: Path, checkpoint: Path):
    parts = Components(backend, components.extractor, components.tokenizer, components.answers)
    return TestClient(create_app(tiny_settings(tmp, checkpoint), parts), raise_server_exceptions=False)


def assert_same_answer(a: dict, b: dict) -> None:
    """Same labels in the same order; scores equal to float32 export precision."""

    def flat(x):
        if isinstance(x, dict):
            return {k: flat(v) for k, v in x.items()}
        if isinstance(x, list):
            return [flat(v) for v in x]
        return x

    def scores(x, out):
        if isinstance(x, dict):
            for _, v in sorted(x.items()):
                if isinstance(v, float):
                    out.append(v)
                else:
                    scores(v, out)
        elif isinstance(x, list):
            for v in x:
                scores(v, out)
        return out

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not isinstance(v, float)}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    assert strip(flat(a)) == strip(flat(b))
    assert scores(a, []) == pytest.approx(scores(b, []), abs=2e-4)


@pytest.mark.slow
def test_local_onnx_backend_matches_torch(onnx_repo, components, tmp_path, tiny_checkpoint, pngs):
    local = OnnxBackend(onnx_repo, threads=1)
    assert local.ready() == dict.fromkeys(graph_names(), True)
    torch_client = app_for(components.backend, components, tmp_path / "t", tiny_checkpoint)
    onnx_client = app_for(local, components, tmp_path / "o", tiny_checkpoint)
    for task in TASKS:
        body = task_body(task, pngs[1])
        a = torch_client.post(f"/{task.endpoint}", json=body)
        b = onnx_client.post(f"/{task.endpoint}", json=body)
        assert a.status_code == b.status_code == 200, (task.slug, b.text)
        assert_same_answer(a.json(), b.json())


@pytest.mark.slow
def test_local_backend_missing_graphs(onnx_repo, tmp_path):
    with pytest.raises(BackendError, match="trunk"):
        OnnxBackend(tmp_path)
    partial = tmp_path / "partial"
    (partial / "trunk" / "1").mkdir(parents=True)
    (partial / "trunk" / "1" / "model.onnx").write_bytes(
        (onnx_repo / "trunk" / "1" / "model.onnx").read_bytes()
    )
    backend = OnnxBackend(partial)
    ready = backend.ready()
    assert ready["trunk"] and not ready["head_answer"]
    with pytest.raises(BackendError, match="head_answer"):
        backend.infer("head_answer", {"fused": np.zeros((1, 32), np.float32)})


class FakeTritonClient:
    """tritonclient.http.InferenceServerClient's surface, answering from the torch graphs."""

    def __init__(self, backend: TorchBackend, down: set[str] | None = None) -> None:
        self.backend = backend
        self.down = down or set()
        self.request_ids: list[str] = []
        self.ranks: dict[str, int] = {}

    def get_model_metadata(self, model: str, model_version: str = "") -> dict:
        from vilbert.contract import build_spec

        graph = build_spec(self.backend.model.config).graph(model)
        self.ranks.update({t.name: len(t.shape) for t in graph.inputs})

        def shape(t):  # as Triton reports it: batch axis first, a per-row scalar as [1] (reshaped)
            return [-1, *(t.triton_dims(True) or [1])]

        return {
            "inputs": [{"name": t.name, "shape": shape(t)} for t in graph.inputs],
            "outputs": [{"name": t.name, "shape": shape(t)} for t in graph.outputs],
        }

    def infer(self, model, inputs, model_version="", outputs=None, request_id=""):
        if model in self.down:
            raise RuntimeError(f"[StatusCode.UNAVAILABLE] model {model} is not ready")
        self.request_ids.append(request_id)
        arrays = {}
        for item in inputs:
            dtype = {"FP32": np.float32, "INT64": np.int64}[item.datatype()]
            array = np.frombuffer(item._get_binary_data(), dtype=dtype).reshape(item.shape())
            if self.ranks.get(item.name()) == 1:  # Triton's `reshape: { shape: [ ] }`: (B, 1) -> (B,)
                array = array.reshape(-1)
            arrays[item.name()] = array
        result = self.backend.infer(model, arrays)

        class Result:
            def as_numpy(self, name):
                return result[name]

        return Result()

    def is_model_ready(self, model: str, model_version: str = "") -> bool:
        return model not in self.down

    def close(self) -> None:
        pass


def test_triton_backend_matches_torch(components, tmp_path, tiny_checkpoint, pngs):
    fake = FakeTritonClient(components.backend)
    triton = TritonBackend("127.0.0.1:1", client=fake)
    assert triton.ready() == dict.fromkeys(graph_names(), True)
    torch_client = app_for(components.backend, components, tmp_path / "t", tiny_checkpoint)
    triton_client = app_for(triton, components, tmp_path / "r", tiny_checkpoint)
    for task in TASKS:
        body = task_body(task, pngs[1])
        a = torch_client.post(f"/{task.endpoint}", json=body)
        b = triton_client.post(f"/{task.endpoint}", json=body, headers={"X-Request-ID": f"req-{task.slug}"})
        assert a.status_code == b.status_code == 200, (task.slug, b.text)
        assert_same_answer(a.json(), b.json())
    assert "req-vqa" in fake.request_ids  # the gateway's request id travels to Triton


def test_triton_model_down_is_503_and_not_ready(components, tmp_path, tiny_checkpoint, pngs):
    fake = FakeTritonClient(components.backend, down={"head_answer"})
    client = app_for(TritonBackend("x", client=fake), components, tmp_path, tiny_checkpoint)
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["models"]["head_answer"] is False
    r = client.post("/vqa", json=task_body(TASKS[0], pngs[0]))
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert (
        client.post(
            "/verify", json=task_body(next(t for t in TASKS if t.slug == "snli_ve"), pngs[0])
        ).status_code
        == 200
    )


def test_unreachable_triton_is_not_ready():
    backend = TritonBackend("127.0.0.1:9", timeout_s=0.5)
    assert not any(backend.ready().values())
    with pytest.raises(BackendError):
        backend.infer("trunk", {})
    backend.close()


def _gallery_answers(client: TestClient, pngs: list[bytes]) -> dict[str, dict]:
    r = client.put("/galleries/g", json={"images": [b64(scene_png(200 + i)) for i in range(5)]})
    assert r.status_code == 200, r.text
    out = {"gallery": r.json()}
    for name, extra in {
        "two_stage": {"rerank_k": 2, "top_k": 2},
        "covering": {"mode": "two_stage", "rerank_k": 5, "top_k": 5},
        "exhaustive": {"mode": "exhaustive", "top_k": 5},
    }.items():
        r = client.post("/retrieve", json={"caption": "a red circle", "gallery": "g", **extra})
        assert r.status_code == 200, r.text
        out[name] = r.json()
    return out


@pytest.mark.slow
def test_local_backend_two_stage_matches_torch(onnx_repo, components, tmp_path, tiny_checkpoint, pngs):
    """The local backend runs text_prefix once + joint per image batch and the pre-filter graphs,
    and ranks as the torch backend does, in both modes."""
    local = OnnxBackend(onnx_repo, threads=1)
    assert all(local.has_graph(m) for m in optional_graph_names())
    a = _gallery_answers(app_for(components.backend, components, tmp_path / "t", tiny_checkpoint), pngs)
    b = _gallery_answers(app_for(local, components, tmp_path / "o", tiny_checkpoint), pngs)
    assert a["gallery"] == b["gallery"] and b["gallery"]["prefilter"]
    for name in ("two_stage", "covering", "exhaustive"):
        assert_same_answer(a[name], b[name])
    ids = [[x["image_id"] for x in b[n]["results"]] for n in ("covering", "exhaustive")]
    assert ids[0] == ids[1] and b["two_stage"]["scored"] == 2


@pytest.mark.slow
def test_local_repository_without_the_new_graphs_falls_back(
    onnx_repo, components, tmp_path, tiny_checkpoint, pngs
):
    """A repository exported before the split trunk and the pre-filter: trunk per image, exhaustive."""
    legacy = tmp_path / "legacy"
    for model in graph_names():
        (legacy / model / "1").mkdir(parents=True)
        (legacy / model / "1" / "model.onnx").write_bytes(
            (onnx_repo / model / "1" / "model.onnx").read_bytes()
        )
    backend = OnnxBackend(legacy, threads=1)
    assert backend.ready() == dict.fromkeys(graph_names(), True)
    assert not any(backend.has_graph(m) for m in optional_graph_names())
    old = app_for(backend, components, tmp_path / "l", tiny_checkpoint)
    new = app_for(OnnxBackend(onnx_repo, threads=1), components, tmp_path / "n", tiny_checkpoint)
    body = {"caption": "a red circle", "images": [b64(p) for p in pngs], "top_k": 4}
    a, b = old.post("/retrieve", json=body), new.post("/retrieve", json={**body, "mode": "exhaustive"})
    assert a.status_code == b.status_code == 200 and a.json()["mode"] == "exhaustive"
    assert_same_answer(a.json(), b.json())
    refused = old.post("/retrieve", json={**body, "mode": "two_stage"})
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "mode"
