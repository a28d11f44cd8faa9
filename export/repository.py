"""Lay out a Triton model repository from exported graphs, so a server needs nothing else.

::

    <out>/
      trunk/config.pbtxt              generated (export/triton_config.py)
      trunk/<version>/model.onnx      (python backend: + model.py = export/triton_model.py)
      head_<head>/...                 one per head weight set
      detector_backbone/..., detector_box_head/...   when detector weights were given
      tasks.json                      the task table, routes, graph tensors, axis ranges
      answers.<vocab>.json            answer vocabularies (index -> answer string)
      export.json                     manifest: model config, precision, backend, files, sizes, sha256

Triton loads every *folder* holding a config.pbtxt and ignores plain files, so the task table and
vocabularies sit at the top level as files.  The repository is written into a temporary sibling
and renamed into place, so a failed export never leaves half a repository where a server looks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from export.triton_config import Backend, Deployment, render_config
from vilbert.contract import SPEC_VERSION, ExportSpec, GraphSpec, TensorSpec
from vilbert.io import atomic_write_dir, link_or_copy
from vilbert.tasks import TASK_TABLE_VERSION, TASKS, as_dict

TASKS_FILE = "tasks.json"
MANIFEST_FILE = "export.json"
PYTHON_MODEL = Path(__file__).with_name("triton_model.py")


def answers_file(vocab: str) -> str:
    return f"answers.{vocab}.json"


def _tensor(t: TensorSpec) -> dict[str, object]:
    return {"name": t.name, "dtype": t.dtype.wire, "shape": list(t.shape)}


def graph_entry(g: GraphSpec) -> dict[str, object]:
    return {
        "kind": g.kind.value,
        "description": g.description,
        "batched": g.batched,
        "inputs": [_tensor(t) for t in g.inputs],
        "outputs": [_tensor(t) for t in g.outputs],
    }


def tasks_document(spec: ExportSpec) -> dict[str, object]:
    """tasks.json: what a client needs to route any of the twelve tasks through the repository."""
    return {
        "spec_version": SPEC_VERSION,
        "task_table_version": TASK_TABLE_VERSION,
        "tasks": [as_dict(t) for t in TASKS],
        "routes": [r.as_dict() for r in spec.routes],
        "graphs": {g.name: graph_entry(g) for g in spec.graphs},
        "axes": {name: {"min": a.min, "opt": a.opt, "max": a.max} for name, a in spec.axes.items()},
    }


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def exporter_digest() -> str:
    """sha256 over the export package's own source: a repository written by other exporter code
    (an older checkout) is stale even when its files are all there."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def checkpoint_digest(checkpoint: Path) -> str:
    """sha256 of a checkpoint directory's weights file (what the graphs were exported from)."""
    return sha256(Path(checkpoint) / "model.safetensors")


def stale_reason(repository: Path, checkpoint: Path) -> str | None:
    """Why `repository` no longer matches `checkpoint` and this exporter, or None when it does."""
    try:
        manifest = read_manifest(repository)
    except (OSError, ValueError):
        return "no readable export.json"
    if manifest.get("exporter") != exporter_digest():
        return "the exporter code changed since it was written"
    if manifest.get("checkpoint_sha256") != checkpoint_digest(checkpoint):
        return f"it was exported from other weights than {checkpoint}"
    return None


def write_model(
    root: Path, graph: GraphSpec, spec: ExportSpec, dep: Deployment, file: Path, version: int
) -> Path:
    """One model folder: config.pbtxt and <version>/ with the graph (and model.py for python)."""
    folder = root / graph.name
    vdir = folder / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(render_config(graph, spec, dep))
    link_or_copy(file, vdir / dep.backend.model_file)
    data = file.with_name(file.name + ".data")
    if data.exists():  # external weights keep the name the graph refers to
        link_or_copy(data, vdir / data.name)
    if dep.backend is Backend.PYTHON:
        shutil.copy2(PYTHON_MODEL, vdir / "model.py")
    return vdir / dep.backend.model_file


def write_repository(
    out: Path,
    spec: ExportSpec,
    dep: Deployment,
    files: Mapping[str, Path],
    *,
    version: int = 1,
    answers: Mapping[str, list[str]] | None = None,
    manifest: Mapping[str, object] | None = None,
) -> Path:
    """Write the repository atomically into `out` (replacing what was there)."""

    def write(root: Path) -> None:
        entries = {}
        for graph in spec.graphs:
            placed = write_model(root, graph, spec, dep, files[graph.name], version)
            entries[graph.name] = {
                "file": str(placed.relative_to(root)),
                "bytes": placed.stat().st_size,
                "sha256": sha256(placed),
            }
        (root / TASKS_FILE).write_text(json.dumps(tasks_document(spec), indent=2) + "\n")
        for vocab, values in sorted((answers or {}).items()):
            (root / answers_file(vocab)).write_text(json.dumps(list(values)) + "\n")
        document = {
            "spec_version": SPEC_VERSION,
            "backend": dep.backend.value,
            "version": version,
            "model_config": spec.config.to_dict(),
            "detector": dataclasses.asdict(spec.detector) if spec.detector is not None else None,
            "answer_vocabularies": sorted(answers or {}),
            "models": entries,
            **dict(manifest or {}),
        }
        (root / MANIFEST_FILE).write_text(json.dumps(document, indent=2) + "\n")
        readme = Path(out) / "README.md"
        if readme.is_file():  # the committed layout description stays with the generated files
            shutil.copy2(readme, root / "README.md")

    atomic_write_dir(Path(out), write)
    return Path(out)


def read_tasks(repository: Path) -> dict:
    return json.loads((Path(repository) / TASKS_FILE).read_text())


def read_manifest(repository: Path) -> dict:
    return json.loads((Path(repository) / MANIFEST_FILE).read_text())


def read_answers(repository: Path) -> dict[str, list[str]]:
    manifest = read_manifest(repository)
    return {
        v: json.loads((Path(repository) / answers_file(v)).read_text())
        for v in manifest["answer_vocabularies"]
    }
