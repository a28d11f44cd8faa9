"""Run exported graphs in-process with onnxruntime, routed per task as a Triton client routes them.

`OnnxGraphs` is what the parity gate compares with PyTorch, and what a gateway can use as its
embedded backend: `OnnxGraphs.from_repository(dir)` needs only the repository.  `task_logits`
follows the logit conventions of `MultiTaskViLBERT.head_logits`: the trunk runs over N = B x I rows
(I = images per example), the head over what the contract's `head_feeds` gives it; a scalar head's
logits come back as (N,) (`model_logits`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vilbert.config import ViLBERTConfig
from vilbert.contract import (
    LOGITS,
    REGION_MASK,
    TRUNK,
    DetectorDims,
    ExportSpec,
    build_spec,
    head_feeds,
    model_logits,
)
from vilbert.tasks import Head, Task


def make_session(path: Path, threads: int = 1, providers: list[str] | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as server/backend.py
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


class OnnxGraphs:
    """onnxruntime sessions for the graphs of one export, with per-task routing."""

    def __init__(self, spec: ExportSpec, files: Mapping[str, Path], threads: int = 1) -> None:
        self.spec = spec
        self.files = dict(files)
        self.threads = threads
        self._sessions: dict[str, object] = {}

    @classmethod
    def from_repository(cls, repository: str | Path, threads: int = 1) -> OnnxGraphs:
        from export.repository import read_manifest

        repository = Path(repository)
        manifest = read_manifest(repository)
        if manifest["backend"] == "tensorrt":
            raise ValueError(
                f"{repository} holds TensorRT plans; onnxruntime needs a python/onnxruntime rendering"
            )
        detector = manifest.get("detector")
        if detector is not None:
            detector = DetectorDims(**{**detector, "fpn_levels": tuple(detector["fpn_levels"])})
        spec = build_spec(ViLBERTConfig.from_dict(manifest["model_config"]), detector)
        files = {name: repository / entry["file"] for name, entry in manifest["models"].items()}
        return cls(spec, files, threads)

    def session(self, name: str):
        if name not in self._sessions:
            self._sessions[name] = make_session(self.files[name], self.threads)
        return self._sessions[name]

    def run(self, name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        graph = self.spec.graph(name)
        inputs = {t.name: np.ascontiguousarray(feeds[t.name], dtype=t.dtype.numpy) for t in graph.inputs}
        outputs = self.session(name).run([t.name for t in graph.outputs], inputs)
        return dict(zip((t.name for t in graph.outputs), outputs))

    def trunk(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(TRUNK, feeds)

    def head_logits(
        self,
        head: Head,
        trunk_out: Mapping[str, np.ndarray],
        region_mask: np.ndarray | None = None,
        images: int | None = None,
    ) -> np.ndarray:
        """A head on trunk outputs, in `MultiTaskViLBERT.head_logits` conventions."""
        feeds = head_feeds(head, trunk_out, region_mask, images)
        return model_logits(head, self.run(self.spec.head(head).name, feeds)[LOGITS])

    def task_logits(self, task: Task, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Trunk then the task's head, on flattened trunk inputs (N = B x images rows)."""
        out = self.trunk(feeds)
        return self.head_logits(task.head, out, np.asarray(feeds[REGION_MASK]), task.images_per_example)
