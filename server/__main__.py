r"""`python -m server`: run the gateway with uvicorn.

With no flags it serves what `make serve` built (the paths of `bootstrap.layout`: the ONNX graphs in
``model_repository``, the detector in ``artifacts/detector``, the checkpoint ``runs/demo/model``,
the page's examples in ``artifacts/examples``) with onnxruntime in-process, and prints the paths it
uses.  Settings come from ``TWELVE_*`` environment variables; the flags below override the common
ones.  Example::

    python -m server --backend local --model-repository model_repository \
        --checkpoint runs/demo/model \
        --detector-weights artifacts/detector/synthetic-detector.safetensors
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

from pydantic import ValidationError

from bootstrap.layout import Paths, show
from server.settings import BackendKind, Settings
from vilbert.cli import ArgumentParser, UserError, run

BUILD = "run `make serve` once to build the demo model"


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    p = ArgumentParser(prog="python -m server", description=__doc__.splitlines()[0])
    p.add_argument("--host", help="bind address (default 127.0.0.1; use 0.0.0.0 to expose it deliberately)")
    p.add_argument("--port", type=int)
    p.add_argument("--backend", choices=[b.value for b in BackendKind])
    p.add_argument(
        "--checkpoint", help="checkpoint directory (answer vocabularies; weights for --backend torch)"
    )
    p.add_argument("--model-repository", help="exported ONNX graphs (local) / Triton repository")
    p.add_argument("--triton-url", help="Triton's HTTP endpoint host:port (default 127.0.0.1:8010)")
    p.add_argument("--detector-weights", help="regions detector .safetensors (preset JSON beside it)")
    p.add_argument("--cache-dir", help="LMDB directory for the region-feature cache")
    p.add_argument("--data-dir", help="gallery store: galleries kept across restarts (default: in memory)")
    p.add_argument("--examples-dir", help="the web page's example images (examples.json + PNGs)")
    p.add_argument("--threads", type=int, help="intra-op threads of each model call (onnxruntime / torch)")
    p.add_argument("--workers", type=int, help="requests running model code at once")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        return Settings(**overrides)
    except ValidationError as exc:  # a bad flag or TWELVE_* value: name the setting and the rule
        first = exc.errors()[0]
        name = ".".join(str(x) for x in first["loc"]) or "settings"
        raise UserError(
            f"{name}: {first['msg']} (got {first.get('input')!r}; --{name.replace('_', '-')} "
            f"or TWELVE_{name.upper()})"
        ) from None


# Paths the gateway reads, each with its flag and what it is (for the start-up lines and errors).
PATHS = {
    "model_repository": ("--model-repository", "model repository"),
    "detector_weights": ("--detector-weights", "detector weights"),
    "checkpoint": ("--checkpoint", "checkpoint"),
    "cache_dir": ("--cache-dir", "region cache"),
    "data_dir": ("--data-dir", "gallery store"),
    "examples_dir": ("--examples-dir", "web page examples"),
}


def with_build_outputs(settings: Settings, built: Paths | None = None) -> tuple[Settings, set[str]]:
    """`settings` with every input path not given (by flag or ``TWELVE_*``) set to where `make serve`
    writes it, and the names of the settings so filled.  The checkpoint (answer vocabularies; the
    weights only for ``--backend torch``) is filled only where it exists or is needed: an exported
    repository carries the vocabularies too.  The region cache and the gallery store stay as given
    (memory only unless ``--cache-dir`` / ``--data-dir``; `make serve` passes
    ``artifacts/region-cache`` and ``artifacts/galleries``)."""
    built = built or Paths()
    outputs = {
        "model_repository": built.repository,
        "detector_weights": built.detector,
        "checkpoint": built.checkpoint,
        "examples_dir": built.examples,
    }
    if settings.backend is not BackendKind.TORCH and not built.checkpoint.is_dir():
        del outputs["checkpoint"]
    fill = {k: v for k, v in outputs.items() if getattr(settings, k) is None}
    return settings.model_copy(update=fill), set(fill)


def check_paths(settings: Settings, defaulted: Collection[str] = ()) -> None:
    """Stop with one line naming the missing file and the fix before anything is loaded."""
    # setting -> the file inside it that must exist ("" for the path itself)
    needed = {"detector_weights": ""}
    if settings.backend is BackendKind.LOCAL:
        needed["model_repository"] = "active.json"
    if settings.backend is BackendKind.TORCH:
        needed["checkpoint"] = "model.safetensors"
    elif settings.checkpoint is not None:
        needed["checkpoint"] = ""
    for name, inside in needed.items():
        flag, what = PATHS[name]
        path: Path | None = getattr(settings, name)
        if path is None:
            raise UserError(f"no {what} given: pass {flag} (or set TWELVE_{name.upper()})")
        missing = path / inside if inside else path
        if missing.exists():
            continue
        if name in defaulted:
            raise UserError(f"no {what} at {show(missing)}: {BUILD}, or pass {flag}")
        raise UserError(f"{flag} {path}: {show(missing)} not found")


def describe(settings: Settings, defaulted: Collection[str] = ()) -> str:
    """The start-up lines: the backend and every path in use, marking those `make serve` built."""
    lines = [
        f"backend: {settings.backend.value}"
        + (f" (Triton at {settings.triton_url})" if settings.backend is BackendKind.TRITON else "")
    ]
    for name, (_, what) in PATHS.items():
        path = getattr(settings, name)
        if path is not None:
            origin = "  (built by make serve)" if name in defaulted else ""
            lines.append(f"  {what + ':':<19} {show(Path(path))}{origin}")
    return "\n".join(lines)


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
    settings, defaulted = with_build_outputs(parse_settings(argv))
    check_paths(settings, defaulted)
    print(describe(settings, defaulted), flush=True)

    from server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    print(f"twelve-in-one gateway: http://{settings.host}:{settings.port}/  (API docs at /docs)", flush=True)
    serve(app, settings)


if __name__ == "__main__":
    run(main)
