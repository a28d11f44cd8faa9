"""One tiny gateway per test session (per xdist worker), shared by the route tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from tests.server.fixtures import build_tiny_checkpoint, scene_png, tiny_components, tiny_settings


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
def app(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, components):
    return create_app(tiny_settings(tmp_path_factory.mktemp("srv"), tiny_checkpoint), components)


@pytest.fixture(scope="session")
def client(app) -> TestClient:
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="session")
def pngs() -> list[bytes]:
    return [scene_png(seed) for seed in range(4)]
