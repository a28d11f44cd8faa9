"""Model backends: one Protocol, graph by graph, with the names of the contract (`vilbert.contract`).

The service runs `trunk` then the task's `head_<head>` through `Backend.infer(graph, inputs)`; the
tensors are numpy arrays keyed by the contract's tensor names, so the same service code drives

* `OnnxBackend` (`local`): onnxruntime sessions over the exported ONNX graphs, in-process;
* `TritonBackend` (`triton`, in server/triton_backend.py): the same graphs served by Triton;
* `TorchBackend` (`torch`): the PyTorch checkpoint, running the very modules the exporter traces
  (`vilbert.graphs`).  It also implements `PrefixScorer`: one caption's image-free text layers are
  computed once and reused for every gallery image.

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

from vilbert.contract import (
    FUSED,
    JOINT,
    PREFILTER_IMAGE,
    PREFILTER_TEXT,
    REGION_STATES,
    TEXT_PREFIX,
    TRUNK,
    build_spec,
    head_feeds,
    head_graph_name,
    model_logits,
)
from vilbert.tasks import Head

Arrays = dict[str, np.ndarray]


class BackendError(RuntimeError):
    """A backend could not run a graph (not loaded, server down, inference failure)."""


@runtime_checkable
class Backend(Protocol):
    """Runs one exported graph by name on numpy inputs named as in `vilbert.contract`."""

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
    return [TRUNK, *(head_graph_name(h) for h in Head)]


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
    """The exported graphs' own PyTorch modules (`vilbert.graphs`) on a `MultiTaskViLBERT` (eval
    mode, no grad): graph name -> module, inputs and outputs by the contract's tensor names."""

    name = "torch"

    def __init__(self, model, threads: int = 1) -> None:  # model: vilbert.heads.MultiTaskViLBERT
        import torch

        from vilbert.graphs import graph_modules

        self._torch = torch
        self.model = model.eval()
        self.threads = threads
        self.spec = build_spec(model.config)
        self._graphs = graph_modules(self.model)
        self._lock = threading.Lock()  # torch modules are not re-entrant across threads for set_num_threads

    @classmethod
    def from_checkpoint(cls, path: str | Path, threads: int = 1) -> TorchBackend:
        from vilbert.checkpoint import load_checkpoint

        return cls(load_checkpoint(path).model, threads)

    def _run(self, model: str, *args):
        """Graph `model`'s module on torch tensors, outputs as a tuple (call under the lock)."""
        out = self._graphs[model](*args)
        return out if isinstance(out, tuple) else (out,)

    def _tensor(self, array: np.ndarray):
        # np.require copies read-only buffers (e.g. decoded wire tensors): torch wants writable memory.
        return self._torch.from_numpy(np.require(array, requirements=["C", "W"]))

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], request_id: str | None = None) -> Arrays:
        if model not in self._graphs:
            raise BackendError(f"no graph named {model!r}")
        graph = self.spec.graph(model)
        args = [self._tensor(inputs[t.name]) for t in graph.inputs]
        torch = self._torch
        with self._lock, torch.inference_mode():
            torch.set_num_threads(self.threads)
            outputs = self._run(model, *args)
        return {t.name: v.numpy() for t, v in zip(graph.outputs, outputs, strict=True)}

    def has_graph(self, model: str) -> bool:
        return model in self._graphs

    def match_scores(
        self,
        task_id: int,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        region_features: np.ndarray,
        region_locations: np.ndarray,
        region_mask: np.ndarray,
    ) -> np.ndarray:
        """`text_prefix` once for the caption (batch 1), `joint` over the N images, the match head."""
        torch = self._torch
        text = (self._tensor(input_ids), self._tensor(attention_mask), torch.tensor([task_id]))
        mask = self._tensor(region_mask)
        regions = (self._tensor(region_features), self._tensor(region_locations), mask)
        with self._lock, torch.inference_mode():
            torch.set_num_threads(self.threads)
            prefix = self._run(TEXT_PREFIX, *text)
            fused, region_states = self._run(JOINT, *prefix, *regions)
            feeds = head_feeds(Head.MATCH, {FUSED: fused, REGION_STATES: region_states}, mask)
            (logits,) = self._run(head_graph_name(Head.MATCH), *feeds.values())
            return model_logits(Head.MATCH, logits).numpy()

    def ready(self) -> dict[str, bool]:
        return dict.fromkeys(graph_names(), True)

    def close(self) -> None:
        pass


def find_onnx(repository: Path, model: str, version: int | None = None) -> Path | None:
    """A graph's ONNX file: ``<repo>/<model>/<version>/model.onnx`` of the Triton layout (`version`, or
    the highest numeric version folder when None), else a flat ``<repo>/<model>.onnx``."""
    if version is not None:
        path = repository / model / str(version) / "model.onnx"
        return path if path.is_file() else None
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

    def __init__(self, repository: str | Path, threads: int = 1, version: int | None = None) -> None:
        import onnxruntime as ort

        from export.versions import resolve, versions

        self.repository = Path(repository)
        # The version's graphs (the repository's active one when None; repositories of loose ONNX
        # files have no versions).
        self.version = resolve(self.repository, version) if versions(self.repository) else version
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
            path = find_onnx(self.repository, model, self.version)
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
