"""Model backends: one Protocol, graph by graph, with the names of `export.spec`.

The service runs `trunk` then the task's `head_<head>` through `Backend.infer(graph, inputs)`; the
tensors are numpy arrays keyed by the spec's tensor names, so the same service code drives

* `OnnxBackend` (`local`): onnxruntime sessions over the exported ONNX graphs, in-process;
* `TritonBackend` (`triton`, in server/triton_backend.py): the same graphs served by Triton;
* `TorchBackend` (`torch`): the PyTorch checkpoint, computing exactly what each exported graph
  computes.  It also implements `PrefixScorer`: one caption's image-free text layers are computed
  once and reused for every gallery image (the ONNX trunk is one graph, so the others recompute them).
"""

from __future__ import annotations

import ctypes.util
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from export.spec import FUSED, FUSED_PAIRS, HEAD_PREFIX, LOGITS, REGION_STATES, TRUNK, TRUNK_INPUTS
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
        # onnxruntime-gpu lists the CUDA provider even on hosts without a GPU, then fails noisily when a
        # session asks for it: ask only when the CUDA driver library is present.
        cuda = "CUDAExecutionProvider" in ort.get_available_providers() and ctypes.util.find_library("cuda")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        self._sessions: dict[str, object] = {}
        self._missing: list[str] = []
        for model in graph_names():
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

    def close(self) -> None:
        self._sessions.clear()
