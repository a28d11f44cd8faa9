"""One tiny gateway per test session (per xdist worker), shared by the route tests."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import uvicorn
from fastapi.testclient import TestClient

from server.app import create_app
from testkit.tiny_gateway import build_tiny_checkpoint, scene_png, tiny_components, tiny_settings


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def components(tiny_checkpoint: Path):
    return tiny_components(tiny_checkpoint)


@pytest.fixture(scope="session")
def examples_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The page's example images as `make serve` renders them at build time."""
    from training.synthetic.examples import write_examples

    out = tmp_path_factory.mktemp("examples")
    write_examples(out)
    return out


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, components, examples_dir: Path):
    settings = tiny_settings(tmp_path_factory.mktemp("srv"), tiny_checkpoint, examples_dir=examples_dir)
    return create_app(settings, components)


@pytest.fixture(scope="session")
def client(app) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="session")
def pngs() -> list[bytes]:
    return [scene_png(seed) for seed in range(4)]


@pytest.fixture(scope="session")
def live_url(app) -> str:
    """The app served by uvicorn in a thread on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)
