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
    p.add_argument("--threads", type=int)
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    from server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_settings(argv)
    app = create_app(settings)
    print(f"twelve-in-one gateway: http://{settings.host}:{settings.port}/  (API docs at /docs)", flush=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        # Connections beyond this get 503 from uvicorn itself, before any parsing.
        limit_concurrency=max(64, 4 * settings.max_queue),
        timeout_graceful_shutdown=int(settings.deadline_s) + 5,
        h11_max_incomplete_event_size=64 * 1024,  # caps header size (slowloris / 100 KB headers)
        log_level="info",
    )


if __name__ == "__main__":
    main()
