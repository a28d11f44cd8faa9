"""The SDK tests reuse the tiny gateway of tests/server (served live on 127.0.0.1 for the sync client)."""

from tests.server.conftest import _one_thread, app, components, live_url, pngs, tiny_checkpoint  # noqa: F401
