r"""`python -m server`: run the gateway with uvicorn.

Settings come from ``TWELVE_*`` environment variables; the flags below override the common ones.
Example::

    python -m server --backend local --model-repository model_repository \
        --checkpoint artifacts/demo/checkpoint \
        --detector-weights artifacts/detector/synthetic-detector.safetensors
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from server.settings import BackendKind, Settings


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(prog="python -m server", description=__doc__.splitlines()[0])
    p.add_argument("--host", help="bind address (default 127.0.0.1; use 0.0.0.0 to expose it deliberately)")
    p.add_argument("--port", type=int)
    p.add_argument("--backend", choices=[b.value for b in BackendKind])
    p.add_argument(
        "--checkpoint", help="checkpoint directory (answer vocabularies; weights for --backend torch)"
    )
    p.add_argument("--model-repository", help="exported ONNX graphs (local) / Triton repository")
    p.add_argument("--triton-url", help="Triton HTTP host:port")
    p.add_argument("--detector-weights", help="regions detector .safetensors (preset JSON beside it)")
    p.add_argument("--cache-dir", help="LMDB directory for the region-feature cache")
    p.add_argument("--threads", type=int, help="intra-op threads of each model call (onnxruntime / torch)")
    p.add_argument("--workers", type=int, help="requests running model code at once")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**overrides)


def serve(app, settings: Settings) -> None:
    """Run `app` with uvicorn until SIGTERM/SIGINT, then shut down gracefully.

    On the signal: readiness goes false and new work is refused with 503 + Retry-After (the
    gateway's `begin_shutdown`), uvicorn stops listening, in-flight requests run to completion
    (up to the deadline + 5 s), then the lifespan closes the backend and the process exits.
    Every limit is the gateway's own (queue: 429, open requests: 503, both with Retry-After), so
    uvicorn's `limit_concurrency`, whose 503 has no Retry-After, is not used.
    """
    import uvicorn

    gateway = app.state.gateway

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            gateway.begin_shutdown()
            super().handle_exit(sig, frame)

    Server(uvicorn_config(app, settings)).run()


def uvicorn_config(app, settings: Settings, log_level: str = "info"):
    """uvicorn's settings for the gateway (also used by the tests and benchmarks that serve it)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.deadline_s) + 5,
        h11_max_incomplete_event_size=64 * 1024,  # caps header size (slowloris / 100 KB headers)
        log_level=log_level,
        lifespan="on",
    )


def main(argv: Sequence[str] | None = None) -> None:
    from server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_settings(argv)
    app = create_app(settings)
    print(f"twelve-in-one gateway: http://{settings.host}:{settings.port}/  (API docs at /docs)", flush=True)
    serve(app, settings)


if __name__ == "__main__":
    main()
