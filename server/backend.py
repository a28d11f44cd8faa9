"""Model backends: one Protocol, graph by graph, with the names of `export.spec`.

The service runs `trunk` then the task's `head_<head>` through `Backend.infer(graph, inputs)`; the
tensors are numpy arrays keyed by the spec's tensor names, so the same service code drives

* `OnnxBackend` (`local`): onnxruntime sessions over the exported ONNX graphs, in-process;
* `TritonBackend` (`triton`, in server/triton_backend.py): the same graphs served by Triton;
* `TorchBackend` (`torch`): the PyTorch checkpoint, computing exactly what each exported graph
  computes.  It also implements `PrefixScorer`: one caption's image-free text layers are computed
  once and reused for every gallery image.

The other two do the same for retrieval with the optional graphs (`optional_graph_names`, probed with
`has_graph`): `text_prefix` once per caption, then `joint` per image batch; and, for a model trained
with the retrieval pre-filter, `prefilter_text` / `prefilter_image` for two-stage search.
Repositories exported before those graphs existed still serve everything through `trunk`.
"""

from __future__ import annotations

import ctypes.util
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from export.spec import (
    CAPTION_EMBEDDING,
    FUSED,
    FUSED_PAIRS,
    HEAD_PREFIX,
    IMAGE_EMBEDDING,
    JOINT,
    LOGITS,
    PREFILTER_IMAGE,
    PREFILTER_TEXT,
    REGION_STATES,
    TEXT_MASK,
    TEXT_PREFIX,
    TEXT_STATES,
    TRUNK,
    TRUNK_INPUTS,
)
from vilbert.tasks import Head

Arrays = dict[str, np.ndarray]


class BackendError(RuntimeError):
    """A backend could not run a graph (not loaded, server down, inference failure)."""


@runtime_checkable
class Backend(Protocol):
    """Runs one exported graph by name on numpy inputs named as in `export.spec`."""

    name: str

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], request_id: str | None = None) -> Arrays:
        """Outputs of graph `model` (``trunk`` or ``head_<head>``), keyed by tensor name."""
        ...

    def ready(self) -> dict[str, bool]:
        """Per-graph readiness (a server may be up while one model is not)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class PrefixScorer(Protocol):
    """Optional capability: score one caption against many images, text prefix computed once."""

    def match_scores(
        self,
        task_id: int,
        input_ids: np.ndarray,  # (1, T)
        attention_mask: np.ndarray,  # (1, T)
        region_features: np.ndarray,  # (N, R, F)
        region_locations: np.ndarray,  # (N, R, 5)
        region_mask: np.ndarray,  # (N, R)
    ) -> np.ndarray:  # (N,) match logits
        ...


def graph_names() -> list[str]:
    """The ViLBERT graphs a backend must serve: the trunk and one head per head weight set."""
    return [TRUNK, *(f"{HEAD_PREFIX}{h.value}" for h in Head)]


def optional_graph_names() -> list[str]:
    """Graphs a backend may serve (`has_graph`): the split trunk, and the retrieval pre-filter of a
    model trained with one.  Repositories exported before them lack them; retrieval then uses `trunk`
    and searches exhaustively."""
    return [TEXT_PREFIX, JOINT, PREFILTER_TEXT, PREFILTER_IMAGE]


def has_graph(backend: object, model: str) -> bool:
    """Whether `backend` serves `model` (backends without `has_graph` serve only `graph_names()`)."""
    probe = getattr(backend, "has_graph", None)
    return bool(probe(model)) if probe is not None else model in graph_names()


class TorchBackend:
    """The exported graphs' computations on a `MultiTaskViLBERT` (eval mode, no grad)."""

    name = "torch"

    def __init__(self, model, threads: int = 1) -> None:  # model: vilbert.heads.MultiTaskViLBERT
        import torch

        self._torch = torch
        self.model = model.eval()
        self.threads = threads
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads for set_num_threads

    @classmethod
    def from_checkpoint(cls, path: str | Path, threads: int = 1) -> TorchBackend:
        from vilbert.checkpoint import load_checkpoint

        return cls(load_checkpoint(path).model, threads)

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], request_id: str | None = None) -> Arrays:
        torch = self._torch
        # np.require copies read-only buffers (e.g. decoded wire tensors): torch wants writable memory.
        t = {k: torch.from_numpy(np.require(v, requirements=["C", "W"])) for k, v in inputs.items()}
        with self._lock, torch.inference_mode():
            torch.set_num_threads(self.threads)
            if model == TRUNK:
                out = self.model.trunk(*(t[name] for name in TRUNK_INPUTS))
                return {FUSED: out.fused.numpy(), REGION_STATES: out.region_states.numpy()}
            if model in optional_graph_names():
                return self._optional(model, t)
            if not model.startswith(HEAD_PREFIX):
                raise BackendError(f"no graph named {model!r}")
            head = Head(model.removeprefix(HEAD_PREFIX))
            heads = self.model.heads
            match head:
                case Head.REGION:
                    logits = heads.region_logits(t[REGION_STATES], t["region_mask"])
                case Head.PAIR:
                    logits = heads.pair_logits(t[FUSED_PAIRS])
                case Head.MATCH:
                    logits = heads.fused_logits(head, t[FUSED]).unsqueeze(-1)  # (B, 1) as the graph
                case _:
                    logits = heads.fused_logits(head, t[FUSED])
            return {LOGITS: logits.numpy()}

    def _optional(self, model: str, t: Mapping) -> Arrays:
        """The split trunk and pre-filter graphs (export.graphs computes the same)."""
        from vilbert.modeling import TextPrefix

        trunk = self.model.trunk
        if model == TEXT_PREFIX:
            prefix = trunk.encode_text_prefix(t["input_ids"], t["attention_mask"], t["task_ids"])
            return {TEXT_STATES: prefix.states.numpy(), TEXT_MASK: prefix.mask.numpy()}
        if model == PREFILTER_TEXT:
            emb = self.model.require_prefilter().caption_embedding(t[TEXT_STATES], t[TEXT_MASK])
            return {CAPTION_EMBEDDING: emb.numpy()}
        regions = (t["region_features"], t["region_locations"], t["region_mask"])
        if model == JOINT:
            out = trunk.encode_joint(TextPrefix(t[TEXT_STATES], t[TEXT_MASK]), *regions)
            return {FUSED: out.fused.numpy(), REGION_STATES: out.region_states.numpy()}
        return {IMAGE_EMBEDDING: self.model.require_prefilter().image_embedding(*regions).numpy()}

    def has_graph(self, model: str) -> bool:
        if model in (PREFILTER_TEXT, PREFILTER_IMAGE):
            return self.model.prefilter is not None
        return model in graph_names() or model in optional_graph_names()

    def match_scores(
        self,
        task_id: int,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        region_features: np.ndarray,
        region_locations: np.ndarray,
        region_mask: np.ndarray,
    ) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.inference_mode():
            torch.set_num_threads(self.threads)
            trunk = self.model.trunk
            prefix = trunk.encode_text_prefix(
                torch.from_numpy(input_ids), torch.from_numpy(attention_mask), torch.tensor([task_id])
            )
            out = trunk.encode_joint(
                prefix,
                torch.from_numpy(region_features),
                torch.from_numpy(region_locations),
                torch.from_numpy(region_mask),
            )
            return self.model.heads.fused_logits(Head.MATCH, out.fused).numpy()

    def ready(self) -> dict[str, bool]:
        return dict.fromkeys(graph_names(), True)

    def close(self) -> None:
        pass


def find_onnx(repository: Path, model: str) -> Path | None:
    """A graph's ONNX file: the highest numeric version of the Triton layout
    (``<repo>/<model>/<version>/model.onnx``), else a flat ``<repo>/<model>.onnx``."""
    versions = (
        [p for p in (repository / model).glob("*/model.onnx") if p.parent.name.isdigit()]
        if (repository / model).is_dir()
        else []
    )
    if versions:
        return max(versions, key=lambda p: int(p.parent.name))
    flat = repository / f"{model}.onnx"
    return flat if flat.is_file() else None


class OnnxBackend:
    """onnxruntime sessions over the exported graphs (CUDA provider first when present)."""

    name = "local"

    def __init__(self, repository: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        self.repository = Path(repository)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        # No spin-waiting between calls: on a small shared CPU a spinning pool takes the cores the
        # gateway's own threads (HTTP, tokenizer, detector) need; measured in docs/performance.md.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # onnxruntime-gpu lists the CUDA provider even on hosts without a GPU, then fails noisily when a
        # session asks for it: ask only when the CUDA driver library is present.
        cuda = "CUDAExecutionProvider" in ort.get_available_providers() and ctypes.util.find_library("cuda")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        self._sessions: dict[str, object] = {}
        self._missing: list[str] = []
        for model in graph_names() + optional_graph_names():
            path = find_onnx(self.repository, model)
            if path is None:
                self._missing.append(model)
                continue
            self._sessions[model] = ort.InferenceSession(str(path), opts, providers=providers)
        if TRUNK in self._missing:
            raise BackendError(f"{self.repository}: no ONNX file for the trunk; run `python -m export` first")

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], request_id: str | None = None) -> Arrays:
        session = self._sessions.get(model)
        if session is None:
            raise BackendError(f"graph {model!r} is not in {self.repository}")
        names = [i.name for i in session.get_inputs()]
        feed = {n: np.ascontiguousarray(inputs[n]) for n in names}
        outputs = [o.name for o in session.get_outputs()]
        try:
            values = session.run(outputs, feed)
        except Exception as exc:  # onnxruntime raises its own types; surface them as backend failures
            raise BackendError(f"{model}: {exc}") from exc
        return dict(zip(outputs, values, strict=True))

    def ready(self) -> dict[str, bool]:
        return {m: m in self._sessions for m in graph_names()}

    def has_graph(self, model: str) -> bool:
        return model in self._sessions

    def close(self) -> None:
        self._sessions.clear()
