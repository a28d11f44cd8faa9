"""Typed gateway settings: every limit, path and switch the server reads, from env vars or arguments.

Nothing is read at import time: `Settings()` reads the environment (prefix ``TWELVE_``, e.g.
``TWELVE_PORT=8080``) when the caller builds it, and `create_app(settings)` takes the object, so tests
build apps with their own values side by side.
"""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackendKind(enum.StrEnum):
    """Where the ViLBERT graphs run (the detector always runs in-process)."""

    LOCAL = "local"  # onnxruntime over the exported ONNX graphs, in this process (the embedded default)
    TRITON = "triton"  # a Triton server serving the same graphs (tritonclient over HTTP)
    TORCH = "torch"  # the PyTorch checkpoint directly (development and tests; same Protocol)


class Settings(BaseSettings):
    """Gateway configuration.  Limits are enforced before any expensive work starts."""

    model_config = SettingsConfigDict(env_prefix="TWELVE_", extra="ignore")

    # Network.  Loopback by default: exposing the API is an explicit decision (TorchServe's ShellTorch
    # showed what an exposed inference API costs; see docs/reliability.md, "Security defaults").
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: SecretStr | None = None  # when set, every route but /, /healthz, /readyz needs X-API-Key
    # The admin routes (/admin/models: version switches) need this key; unset: api_key, else a key made
    # at start-up and written to <model_repository>/.admin-key (0600) for `python -m server.models`.
    admin_key: SecretStr | None = None

    # Model.  The checkpoint directory gives the answer vocabularies (and the weights for `torch`).
    backend: BackendKind = BackendKind.LOCAL
    checkpoint: Path | None = None
    model_repository: Path | None = None  # exported ONNX graphs (`local`) / the Triton repository layout
    # host:port of Triton's HTTP endpoint (tritonclient.http): the launcher's default HTTP port
    # (export/triton_server.py: HTTP 8010, gRPC 8011, metrics 8012, apart from the gateway's 8000).
    triton_url: str = "127.0.0.1:8010"
    detector_weights: Path | None = None  # `regions` detector weights (preset JSON beside them)
    threads: int = Field(1, ge=1, le=64)  # intra-op threads for torch / onnxruntime
    examples_dir: Path | None = None  # the web page's example images (examples.json + PNGs); None: none

    # Region cache: memory LRU in front of an LMDB keyed by image sha256.
    cache_dir: Path | None = None  # None: memory only
    cache_entries: int = Field(512, ge=1)
    pixel_cache_entries: int = Field(16, ge=0)  # decoded images kept for candidate boxes by image_id

    # Galleries (server/galleries.py): kept under data_dir across restarts (None: in memory only).
    data_dir: Path | None = None
    # What the galleries may hold (embedding files, and region features the region cache cannot keep
    # on disk): past it, adding images is a 507.  Counted in memory too when there is no data_dir.
    gallery_quota_bytes: int = Field(8 * 1024**3, ge=0)
    # Stage 1 of two-stage /retrieve: exact inner-product search (faiss IndexFlatIP) up to this many
    # images in a gallery, an HNSW graph (IndexHNSWFlat) beyond it.
    gallery_flat_max: int = Field(50_000, ge=1)
    hnsw_m: int = Field(32, ge=4, le=256)  # neighbours per HNSW node
    hnsw_ef_search: int = Field(128, ge=1)  # HNSW search breadth (at least the candidates asked for)
    # Exhaustive gallery search is refused (422) when it cannot finish within the deadline: the
    # estimate uses the trunk's measured image-caption pairs/s, this rate until one was measured.
    exhaustive_pairs_per_s: float = Field(20.0, gt=0)

    # Request limits.
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(12 * 1024 * 1024, ge=1)
    max_pixels: int = Field(24_000_000, ge=1)
    max_text_chars: int = Field(2000, ge=1)  # characters; tokens are then truncated to the task's budget
    max_images_per_request: int = Field(16, ge=1)
    max_gallery_images: int = Field(1000, ge=1)  # images per PUT / POST of a gallery (galleries grow past it)
    max_candidates: int = Field(100, ge=1)  # candidate boxes for pointing tasks
    max_top_k: int = Field(100, ge=1)
    retrieve_batch: int = Field(16, ge=1)  # images scored per trunk call
    # Pad every trunk call to its task's max text tokens and regions, as the reference code does.  Off:
    # requests are padded only as far as they need (the speed comparison is in docs/performance.md).
    pad_to_task_max: bool = False
    # Two-stage /retrieve: pre-filter candidates the trunk re-ranks (at least the request's top_k).
    # 10: the smallest K of the measured sweep (docs/performance.md, `python -m bench.retrieval`) with
    # R@10 within 2 points of exhaustive search; it was also the fastest (70x) and best-recalling K there.
    retrieve_rerank_k: int = Field(10, ge=1)

    # Admission and time.
    deadline_s: float = Field(30.0, gt=0)  # per request; past it the answer is 504
    max_queue: int = Field(8, ge=1)  # requests admitted (running + waiting); more get 429
    workers: int = Field(1, ge=1)  # requests running model code at once
    retry_after_s: int = Field(1, ge=1)
    # Requests open at once (reading a body, queued, running, writing): past it, 503 + Retry-After at
    # once.  This is the gateway's connection-level limit (instead of uvicorn's `limit_concurrency`,
    # whose 503 carries no Retry-After).
    max_open_requests: int = Field(64, ge=1)
    body_timeout_s: float = Field(10.0, gt=0)  # a body not fully received by then gets 408 (slow senders)

    # Answers.
    no_match_threshold: float = Field(0.5, ge=0.0, le=1.0)  # grounding: best probability below -> no_match
