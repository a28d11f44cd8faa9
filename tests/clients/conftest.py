"""The SDK tests reuse the tiny gateway of tests/server (served live on 127.0.0.1 for the sync client):
all of its fixtures, so that one it adds later is found here too."""

from tests.server.conftest import *  # noqa: F403
