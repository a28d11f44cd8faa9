"""Settings, `python -m server` flags, building the app from paths, and the `make serve` pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from bootstrap import pipeline as bootstrap
from regions.detector import build_detector
from regions.weights import save_detector
from server.__main__ import parse_settings
from server.app import create_app
from server.settings import BackendKind, Settings
from testkit.tiny_gateway import b64, tiny_detector_preset
from vilbert.threads import build_step_env


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("TWELVE_PORT", "9123")
    monkeypatch.setenv("TWELVE_BACKEND", "triton")
    monkeypatch.setenv("TWELVE_API_KEY", "zz-secret-zz")
    s = Settings()
    assert (s.port, s.backend, s.host) == (9123, BackendKind.TRITON, "127.0.0.1")
    assert s.api_key is not None and "zz-secret-zz" not in repr(s)  # the key is never printed
    flags = parse_settings(["--port", "8081", "--backend", "torch", "--checkpoint", "ck"])
    assert (flags.port, flags.backend, flags.checkpoint) == (8081, BackendKind.TORCH, Path("ck"))
    with pytest.raises(ValueError):
        Settings(port=70000)


def test_create_app_from_paths(tmp_path, tiny_checkpoint, pngs):
    torch.manual_seed(0)
    weights, _ = save_detector(build_detector(tiny_detector_preset()), tmp_path / "det" / "tiny.safetensors")
    settings = Settings(
        backend=BackendKind.TORCH,
        checkpoint=tiny_checkpoint,
        detector_weights=weights,
        cache_dir=tmp_path / "c",
    )
    client = TestClient(create_app(settings))
    r = client.post("/vqa", json={"image": b64(pngs[0]), "question": "what colour?"})
    assert r.status_code == 200 and r.json()["answers"][0]["answer"] in {
        "yes",
        "no",
        "red",
        "blue",
        "green",
    } | set("circle square 1 2 3 4".split())


def test_missing_paths_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="DETECTOR"):
        create_app(Settings(backend=BackendKind.TORCH))


def test_bootstrap_skips_finished_steps(tmp_path, monkeypatch, capsys):
    p = bootstrap.Paths(
        world=tmp_path / "world",
        detector=tmp_path / "det" / "d.safetensors",
        checkpoint=tmp_path / "runs" / "model",
        repository=tmp_path / "repo",
        cache=tmp_path / "cache",
        examples=tmp_path / "examples",
    )
    monkeypatch.setattr(bootstrap, "ROOT", tmp_path)
    monkeypatch.setattr(bootstrap, "STAMPS", tmp_path / "stamps")
    monkeypatch.setattr(bootstrap, "_stale_export", lambda p: None)  # its own test: test_export.py
    for step in bootstrap.steps(p):
        step.done.parent.mkdir(parents=True, exist_ok=True)
        step.done.write_text("x")
    calls: list[list[str]] = []
    envs: list[dict] = []
    monkeypatch.setattr(
        bootstrap.subprocess, "call", lambda cmd, cwd, env: calls.append(cmd) or envs.append(env) or 0
    )
    bootstrap.build(p)
    assert calls == [] and capsys.readouterr().out.count(": ready") == 7
    # Every input training reads is built before it: the retrieval loaders need the negative pools.
    modules = [step.command[2] for step in bootstrap.steps(p)]
    assert modules.index("training.datasets.retrieval") < modules.index("training.fit")
    assert modules.index("regions.extract") < modules.index("training.datasets.retrieval")
    (p.repository / "active.json").unlink()
    bootstrap.build(p)
    assert len(calls) == 1 and calls[0][1:3] == ["-m", "export"]
    assert envs == [build_step_env()]  # build steps run alone: the short OpenMP spin (vilbert/threads.py)


def test_make_serve_runs_model_calls_concurrently(monkeypatch):
    """The gateway `make serve` starts: workers x threads as measured (bootstrap.concurrency_flags)."""
    monkeypatch.setattr(bootstrap.os, "cpu_count", lambda: 2)
    local = parse_settings(bootstrap.concurrency_flags("local", {}))
    assert (local.workers, local.threads) == (2, 1)
    assert parse_settings(bootstrap.concurrency_flags("triton", {})).workers == 4
    assert bootstrap.concurrency_flags("local", {"TWELVE_WORKERS": "3", "TWELVE_THREADS": "2"}) == []
    monkeypatch.setenv("TWELVE_WORKERS", "3")
    assert parse_settings(bootstrap.concurrency_flags("triton")).workers == 3  # the environment wins


def test_bootstrap_stops_on_failure(tmp_path, monkeypatch):
    p = bootstrap.Paths(
        world=tmp_path / "w",
        detector=tmp_path / "d",
        checkpoint=tmp_path / "c",
        repository=tmp_path / "r",
        examples=tmp_path / "e",
    )
    monkeypatch.setattr(bootstrap, "ROOT", tmp_path)
    monkeypatch.setattr(bootstrap.subprocess, "call", lambda cmd, cwd, env: 3)
    with pytest.raises(SystemExit) as e:
        bootstrap.build(p)
    assert e.value.code == 3
