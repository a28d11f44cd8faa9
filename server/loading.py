"""Build what the service runs from `Settings`: backend, region extractor, tokenizer, answer vocabularies."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from export.versions import active_version, versions
from export.versions import read_answers as read_repository_answers
from server.backend import Backend, OnnxBackend, TorchBackend
from server.protocols import Extractor, Tokenizer
from server.settings import BackendKind, Settings
from vilbert.checkpoint import ANSWERS_DIR

log = logging.getLogger("server")


@dataclass
class Components:
    """Everything `create_app` needs besides settings; tests build it from tiny models directly."""

    backend: Backend
    extractor: Extractor  # regions.extractor.RegionExtractor
    tokenizer: Tokenizer  # vilbert.tokenizer.WordPieceTokenizer
    answers: dict[str, list[str]] = field(default_factory=dict)
    version: int | None = None  # the repository's model version served (None: no versions)


def read_answers(
    checkpoint: Path | None, repository: Path | None = None, version: int | None = None
) -> dict[str, list[str]]:
    """Answer vocabularies without loading weights: those of the repository's `version` (the active one
    when None) when an exported repository is given, else `answers/<name>.json` of a checkpoint."""
    if repository is not None and versions(repository):
        return read_repository_answers(repository, version)
    if checkpoint is not None and (checkpoint / ANSWERS_DIR).is_dir():
        files = sorted((checkpoint / ANSWERS_DIR).glob("*.json"))
        return {p.stem: list(json.loads(p.read_text())) for p in files}
    return {}


def served_version(settings: Settings) -> int | None:
    """The repository version a `local` or `triton` gateway serves at start: the active one."""
    repository = settings.model_repository
    if settings.backend is BackendKind.TORCH or repository is None or not versions(repository):
        return None
    return active_version(repository)


def build_backend(settings: Settings, version: int | None = None) -> Backend:
    match settings.backend:
        case BackendKind.TORCH:
            if settings.checkpoint is None:
                raise ValueError("backend=torch needs TWELVE_CHECKPOINT (a checkpoint directory)")
            return TorchBackend.from_checkpoint(settings.checkpoint, settings.threads)
        case BackendKind.LOCAL:
            if settings.model_repository is None:
                raise ValueError("backend=local needs TWELVE_MODEL_REPOSITORY (the exported ONNX graphs)")
            return OnnxBackend(settings.model_repository, settings.threads, version)
        case BackendKind.TRITON:
            from server.triton_backend import TritonBackend

            return TritonBackend(settings.triton_url, timeout_s=settings.deadline_s, version=version)
    raise ValueError(f"unknown backend {settings.backend}")


def load_components(settings: Settings) -> Components:
    import torch

    from regions.extractor import RegionExtractor
    from regions.weights import load_detector
    from vilbert.tokenizer import load_tokenizer

    torch.set_num_threads(settings.threads)
    if settings.detector_weights is None:
        raise ValueError("TWELVE_DETECTOR_WEIGHTS is not set (regions detector .safetensors)")
    log.info("loading detector %s", settings.detector_weights)
    extractor = RegionExtractor(load_detector(settings.detector_weights), batch_size=1)
    log.info("loading %s backend", settings.backend)
    version = served_version(settings)
    backend = build_backend(settings, version)
    if settings.backend is BackendKind.TRITON:
        # The backbone and box head through Triton's detector graphs (a GPU Triton runs them),
        # unless the repository has none or they differ from these weights (server/remote_detector.py).
        # Not pinned to a version: the detector is the same in every version a switch accepts.
        from server.remote_detector import remote_detector_compute
        from server.triton_backend import TritonBackend

        detector_backend = TritonBackend(settings.triton_url, timeout_s=settings.deadline_s)
        compute = remote_detector_compute(detector_backend, extractor.detector, settings.model_repository)
        if compute is not None:
            extractor.compute = compute
    answers = read_answers(settings.checkpoint, settings.model_repository, version)
    return Components(backend, extractor, load_tokenizer(), answers, version)
