"""The SDK tests reuse the tiny gateway of tests/server and serve it live on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import uvicorn

from tests.server.conftest import _one_thread, app, components, pngs, tiny_checkpoint  # noqa: F401


@pytest.fixture(scope="session")
def live_url(app) -> str:  # noqa: F811
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
