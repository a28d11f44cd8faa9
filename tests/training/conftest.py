"""Shared, session-scoped data trees for the loader tests (built once: they are read-only)."""

from __future__ import annotations

import json

import pytest

from testkit.reference_datasets import FIXTURE_CONFIG, build_reference_fixture
from training.datasets import LoaderConfig


@pytest.fixture(scope="session")
def reference_root(tmp_path_factory):
    return build_reference_fixture(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def fixture_config():
    return LoaderConfig().updated(**FIXTURE_CONFIG)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """The synthetic world at --size small with 32-d placeholder features; (root, rows, shrink, seconds)."""
    import time

    from training.synthetic import generate_world

    root = tmp_path_factory.mktemp("world")
    started = time.perf_counter()
    rows, shrink = generate_world(root, size="small", seed=0, progress=False, placeholder_dim=32)
    return root, rows, shrink, time.perf_counter() - started


@pytest.fixture(scope="module")
def data_root(reference_root):
    """The reference fixture tree with its loader_config.json (what `training.fit` reads)."""
    (reference_root / "datasets" / "loader_config.json").write_text(json.dumps(FIXTURE_CONFIG))
    return reference_root
