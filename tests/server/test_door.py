"""`python -m server`, the door: what it imports, which paths and ports it uses by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bootstrap import pipeline
from bootstrap.layout import Paths
from export.triton_server import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from regions.detector import build_detector
from regions.weights import save_detector
from server.__main__ import check_paths, describe, parse_settings, with_build_outputs
from server.settings import BackendKind, Settings
from testkit.tiny_gateway import tiny_detector_preset
from vilbert.cli import UserError

ROOT = Path(__file__).resolve().parents[2]
# Modules that build models rather than serve them: none may be loaded by the gateway.
BUILD_MODULES = ("export.graphs", "export.pipeline", "export.parity", "export.quantize", "export.__main__")


@pytest.fixture(scope="module")
def detector_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("det") / "tiny.safetensors"
    weights, _ = save_detector(build_detector(tiny_detector_preset()), path)
    return weights


def test_serving_loads_no_training_or_export_build_code(
    tmp_path, tiny_checkpoint, detector_weights, examples_dir
):
    """Run `python -m server`'s own `main` (flags, paths, create_app, a request through every layer)
    in a fresh interpreter, with uvicorn replaced by a check of what got imported."""
    code = textwrap.dedent(
        """
        import json, sys
        import server.__main__ as door
        import server.backend, server.triton_backend  # every backend the gateway can run

        def serve(app, settings):
            from fastapi.testclient import TestClient
            with TestClient(app) as client:
                png = client.get("/examples/example-0.png")
                assert png.status_code == 200, png.text
                r = client.post("/images", files={"image": ("x.png", png.content, "image/png")})
                assert r.status_code == 200, r.text
                r = client.post("/vqa", json={"image": {"image_id": r.json()["image_id"]}, "question": "q"})
                assert r.status_code == 200, r.text
            print("MODULES " + json.dumps(sorted(sys.modules)))

        door.serve = serve
        door.main(sys.argv[1:])
        """
    )
    args = ["--backend", "torch", "--checkpoint", str(tiny_checkpoint)]
    args += ["--detector-weights", str(detector_weights), "--examples-dir", str(examples_dir)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWELVE_")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.split("MODULES ", 1)[1])
    assert "server.app" in modules and "regions.extractor" in modules  # it did build and serve the app
    assert not [m for m in modules if m == "training" or m.startswith("training.")]
    assert not [m for m in modules if m in BUILD_MODULES]
    assert "bootstrap.pipeline" not in modules  # only the stdlib-only layout


def test_triton_and_gateway_default_ports_do_not_clash():
    gateway = Settings()
    triton = {"http": DEFAULT_HTTP_PORT, "grpc": DEFAULT_GRPC_PORT, "metrics": DEFAULT_METRICS_PORT}
    assert len({gateway.port, *triton.values()}) == 4, (gateway.port, triton)
    # The gateway talks to Triton over HTTP (tritonclient.http): its default URL is Triton's HTTP port.
    host, port = gateway.triton_url.rsplit(":", 1)
    assert (host, int(port)) == ("127.0.0.1", DEFAULT_HTTP_PORT)
    # The launcher's CLI uses those defaults.
    from export.triton_server import main

    assert "DEFAULT_HTTP_PORT" in main.__code__.co_names


def built_layout(tmp: Path) -> Paths:
    return Paths(
        world=tmp / "world",
        detector=tmp / "artifacts" / "detector" / "synthetic-detector.safetensors",
        checkpoint=tmp / "runs" / "demo" / "model",
        repository=tmp / "model_repository",
        cache=tmp / "artifacts" / "region-cache",
        examples=tmp / "artifacts" / "examples",
    )


def test_no_flags_means_what_make_serve_built(tmp_path):
    built = built_layout(tmp_path)
    settings, defaulted = with_build_outputs(parse_settings([]), built)
    assert settings.backend is BackendKind.LOCAL  # onnxruntime in-process: no Triton needed
    assert settings.model_repository == built.repository
    assert settings.detector_weights == built.detector
    assert settings.examples_dir == built.examples
    assert settings.checkpoint is None  # not built: the repository's answer lists serve instead
    built.checkpoint.mkdir(parents=True)
    settings, defaulted = with_build_outputs(parse_settings([]), built)
    assert settings.checkpoint == built.checkpoint and "checkpoint" in defaulted
    # A flag wins over the default.
    given, defaulted = with_build_outputs(parse_settings(["--detector-weights", "d.safetensors"]), built)
    assert given.detector_weights == Path("d.safetensors") and "detector_weights" not in defaulted
    # The start-up lines name every path in use.
    lines = describe(settings, defaulted)
    for path in (built.repository, built.detector, built.checkpoint, built.examples):
        assert str(path) in lines


def test_make_serve_starts_the_gateway_on_the_same_paths(tmp_path, monkeypatch):
    """The gateway `make serve` starts and a bare `python -m server` read the same files."""
    import server.__main__ as door

    started: list[list[str]] = []
    monkeypatch.setattr(door, "main", started.append)
    monkeypatch.setattr(pipeline.signal, "signal", lambda *a: None)
    pipeline.serve(Paths(), "local", "127.0.0.1", 8000)
    from_make_serve = parse_settings(started[0])
    bare, _ = with_build_outputs(parse_settings([]), Paths())
    for name in ("model_repository", "detector_weights", "examples_dir"):
        assert getattr(from_make_serve, name) == getattr(bare, name), name
    assert from_make_serve.checkpoint == Paths().checkpoint


def test_missing_build_outputs_name_the_file_and_make_serve(tmp_path):
    built = built_layout(tmp_path)
    settings, defaulted = with_build_outputs(parse_settings([]), built)
    with pytest.raises(
        UserError, match=r"no detector weights at .*synthetic-detector.safetensors.*make serve"
    ):
        check_paths(settings, defaulted)
    built.detector.parent.mkdir(parents=True)
    built.detector.write_bytes(b"x")
    with pytest.raises(UserError, match=r"model_repository/active.json.*make serve"):
        check_paths(settings, defaulted)
    (built.repository).mkdir()
    (built.repository / "active.json").write_text("{}")
    check_paths(settings, defaulted)  # everything the local backend reads is there
    # A path the user gave that is not there: named with its flag, no advice to build the demo.
    given = parse_settings(["--detector-weights", str(tmp_path / "mine.safetensors")])
    with pytest.raises(UserError, match=r"--detector-weights .*mine.safetensors") as err:
        check_paths(given)
    assert "make serve" not in str(err.value)
