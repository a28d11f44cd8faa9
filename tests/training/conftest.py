"""Shared, session-scoped data trees for the loader tests (built once: they are read-only)."""

from __future__ import annotations

import pytest

from tests.training.fixtures import FIXTURE_CONFIG, build_reference_fixture
from training.datasets import LoaderConfig


@pytest.fixture(scope="session")
def reference_root(tmp_path_factory):
    return build_reference_fixture(tmp_path_factory.mktemp("reference"))


@pytest.fixture(scope="session")
def fixture_config():
    return LoaderConfig().updated(**FIXTURE_CONFIG)
