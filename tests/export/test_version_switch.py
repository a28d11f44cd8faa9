"""A retrained model replaces the served one with no failed request, through the real bundled tritonserver.

The served repository (the session's tiny export, copied) holds version 1; a "retrained" checkpoint with
another VQA vocabulary (so its answer head has another width) is exported beside it with
``python -m export --version next``; a gateway over Triton keeps 4 closed-loop clients on /vqa and
/ground while version 2 is activated, then rolled back with ``python -m server.models rollback``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest
import torch

from bench.swap import publish_again
from export.triton_server import BundledTriton, TritonError, TritonServer, free_port
from export.versions import CONTROL_KEY_FILE, read_active, read_answers, versions
from testkit.swap import Loop, gateway_thread
from testkit.tiny_gateway import scene_png, task_body, tiny_components
from vilbert.checkpoint import load_checkpoint, save_checkpoint
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import TASKS, Endpoint

pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.slow
ADMIN_KEY = "test-admin-key"
NEW_ANSWERS = [f"retrained_{i}" for i in range(5)]


def retrained_checkpoint(checkpoint: Path, out: Path) -> Path:
    """The checkpoint with a new 5-answer VQA vocabulary (answer head re-initialised) and perturbed
    weights elsewhere: what `training.fit` with another vocabulary produces."""
    loaded = load_checkpoint(checkpoint)
    cfg = loaded.model.config
    cfg.num_answers = len(NEW_ANSWERS)
    torch.manual_seed(1)
    model = MultiTaskViLBERT(cfg)
    state = {k: v for k, v in loaded.model.state_dict().items() if model.state_dict()[k].shape == v.shape}
    model.load_state_dict(state, strict=False)
    answers = dict(loaded.answers) | {"vqa": NEW_ANSWERS}
    return save_checkpoint(out, model, answers, loaded.meta)


def assert_switched(loop: Loop, old: str, new: str, begun: float, ended: float) -> dict:
    summary = loop.summary(old, new, begun, ended)
    assert summary["requests"] > 40, "too few requests to see a switch"
    assert summary["failed"] == 0, summary["first_failures"]
    assert summary["before"] and summary["after"], summary
    assert summary["wrong_version"] == 0 and summary["clients_regressed"] == 0, summary
    return summary


@pytest.fixture(scope="module")
def two_versions(tiny_export, tmp_path_factory) -> Path:
    """The session's tiny export (version 1) + the retrained checkpoint exported beside it (version 2)."""
    from export.__main__ import main as export_main

    root = tmp_path_factory.mktemp("versions")
    repository = root / "model_repository"
    shutil.copytree(tiny_export.repository, repository)
    retrained = retrained_checkpoint(tiny_export.inputs.checkpoint, root / "retrained")
    args = ["--checkpoint", str(retrained), "--out", str(repository), "--version", "next"]
    args += ["--detector", str(tiny_export.inputs.detector), "--skip-metric", "--no-int8-report"]
    assert export_main(args) == 0
    assert versions(repository) == [1, 2] and read_active(repository)["version"] == 1
    assert read_answers(repository, 2)["vqa"] == NEW_ANSWERS
    # Another --version of a number it holds is refused before any work.
    assert export_main([*args[:5], "2", *args[6:]]) == 2
    return repository


def test_the_local_backend_switches_versions_too(two_versions, tiny_export, tmp_path: Path):
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.backend import OnnxBackend
    from server.loading import Components
    from server.settings import BackendKind, Settings

    settings = Settings(
        backend=BackendKind.LOCAL,
        model_repository=two_versions,
        admin_key=ADMIN_KEY,
        cache_dir=tmp_path / "cache",
    )
    start = read_active(two_versions)["version"]
    other = 3 - start
    headers = {"X-API-Key": ADMIN_KEY}
    png = scene_png(3)
    vqa = task_body(next(t for t in TASKS if t.slug == "vqa"), png)
    # The tiny detector of the gateway tests: 32-d regions, as the tiny model reads.
    tiny = tiny_components(tiny_export.inputs.checkpoint)
    backend = OnnxBackend(two_versions, version=start)
    parts = Components(backend, tiny.extractor, tiny.tokenizer, read_answers(two_versions, start), start)
    with TestClient(create_app(settings, parts)) as client:
        r = client.post("/vqa", json=vqa)
        assert r.status_code == 200 and r.headers["x-model-version"] == str(start), r.text
        switched = client.post(f"/admin/models/{other}:activate", headers=headers)
        assert switched.status_code == 200 and switched.json()["version"] == other, switched.text
        r = client.post("/vqa", json=vqa)
        assert r.status_code == 200 and r.headers["x-model-version"] == str(other)
        vocab = set(read_answers(two_versions, other)["vqa"])
        assert {a["answer"] for a in r.json()["answers"]} <= vocab
        assert client.get("/tasks").json()["model_version"] == other
        assert client.get("/readyz").json()["model_version"] == other
        assert client.post("/admin/models/9:activate", headers=headers).status_code == 404
        back = client.post(f"/admin/models/{start}:activate", headers=headers)
        assert back.status_code == 200 and client.post("/vqa", json=vqa).headers["x-model-version"] == str(
            start
        )
        client.app.state.models.wait_retired()
    assert read_active(two_versions)["version"] == start


def test_retrained_model_is_activated_and_rolled_back_with_no_failed_request(
    two_versions, tiny_export, tmp_path: Path, capsys
):
    try:
        BundledTriton.locate()
    except TritonError as exc:
        pytest.skip(f"no tritonserver binary: {exc}")
    from server.app import create_app
    from server.loading import Components
    from server.models import main as models_main
    from server.settings import BackendKind, Settings
    from server.triton_backend import TritonBackend

    repository = two_versions
    assert read_active(repository)["version"] == 1
    with TritonServer(repository, startup_timeout=300) as triton:
        port = free_port()
        settings = Settings(
            backend=BackendKind.TRITON,
            model_repository=repository,
            triton_url=triton.http_url,
            admin_key=ADMIN_KEY,
            port=port,
            workers=4,
            max_queue=16,
            cache_dir=tmp_path / "cache",
        )
        tiny = tiny_components(tiny_export.inputs.checkpoint)
        parts = Components(
            TritonBackend(triton.http_url, version=1),
            tiny.extractor,
            tiny.tokenizer,
            read_answers(repository, 1),
            version=1,
        )
        app = create_app(settings, parts)
        with gateway_thread(app, settings) as url:
            png = scene_png(2)
            vqa = next(t for t in TASKS if t.slug == "vqa")
            ground = next(t for t in TASKS if t.endpoint is Endpoint.GROUND)
            loop = Loop(url, [("/vqa", task_body(vqa, png)), ("/ground", task_body(ground, png))])
            with httpx.Client(base_url=url) as client:
                assert client.get("/tasks").json()["model_version"] == 1
                assert client.post("/admin/models/2:activate").status_code == 401  # no key
                headers = {"X-API-Key": ADMIN_KEY}
                listing = client.get("/admin/models", headers=headers).json()
                assert [v["version"] for v in listing["versions"]] == [1, 2] and listing["active"] == 1

                def activate() -> dict:
                    r = client.post("/admin/models/2:activate", headers=headers, timeout=300)
                    assert r.status_code == 200, r.text
                    return r.json()

                result, begun, ended = loop.around(activate)
            seconds, load = result["seconds"], result["load_seconds"]
            print(f"swap 1 -> 2 under 4 clients: {seconds:.2f} s (Triton load {load:.2f} s)")
            assert result["switched"] and result["version"] == 2 and result["previous"] == 1
            assert_switched(loop, "1", "2", begun, ended)
            answers = {
                a["answer"] for c in loop.records for *_, v, b in c if v == "2" for a in b.get("answers", [])
            }
            assert answers and answers <= set(NEW_ANSWERS)  # version 2's vocabulary answers
            assert read_active(repository) | {"history": None} == {
                "version": 2,
                "previous": 1,
                "history": None,
            }
            app.state.models.wait_retired()
            ready = TritonBackend(triton.http_url)
            assert not ready.version_ready("trunk", 1) and ready.version_ready("trunk", 2)

            # Rollback through the CLI, under the same load.
            cli = ["--url", url, "--repository", str(repository), "--admin-key", ADMIN_KEY]
            result, begun, ended = loop.around(lambda: models_main(["rollback", *cli]))
            assert result == 0
            out = capsys.readouterr().out
            assert "version 1 active (was 2)" in out
            print(out)
            assert_switched(loop, "2", "1", begun, ended)
            app.state.models.wait_retired()
            assert ready.version_ready("head_answer", 1) and not ready.version_ready("head_answer", 2)
            assert (repository / CONTROL_KEY_FILE).is_file()

            # A version whose graphs do not load is refused; the served version keeps answering.
            broken = publish_again(repository, 2)
            graph = repository / "head_answer" / str(broken) / "model.onnx"
            graph.unlink()  # a hard link to version 2's file: replace it, do not write through it
            graph.write_bytes(b"not an onnx graph")
            with httpx.Client(base_url=url, headers={"X-API-Key": ADMIN_KEY}) as client:
                r = client.post(f"/admin/models/{broken}:activate", timeout=300)
                assert r.status_code == 503 and "could not load" in r.json()["error"]["message"], r.text
                vqa_again = client.post("/vqa", json=task_body(vqa, png))
                assert vqa_again.status_code == 200 and vqa_again.headers["x-model-version"] == "1"
                assert client.get("/readyz").json()["ready"] is True
            assert read_active(repository)["version"] == 1
            assert ready.version_ready("trunk", 1) and not ready.version_ready("trunk", broken)
