"""Lay out a Triton model repository from exported graphs, so a server needs nothing else.

::

    <out>/
      trunk/config.pbtxt              serving config (export/versions.py) from the graph's own config
      trunk/<version>/model.onnx      (python backend: + model.py = export/triton_model.py)
      head_<head>/...                 one per head weight set
      detector_backbone/..., detector_box_head/...   when detector weights were given
      versions/<version>/             per version: export.json (manifest: model config, precision,
                                      backend, files, sizes, sha256, digests), tasks.json (task table,
                                      routes, graph tensors, axis ranges), answers.<vocab>.json
                                      (index -> answer), configs/<model>.pbtxt (export/triton_config.py)
      active.json                     the version served

Triton loads the folders named to it (explicit model control) and ignores plain files and
``versions/``.  `write_repository` writes a one-version repository into a temporary sibling and
renames it into place, so a failed export never leaves half a repository where a server looks;
`add_version` adds a version beside the others (``python -m export --version next``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

from export.triton_config import Backend, Deployment, render_config
from export.versions import (
    CONFIGS_DIR,
    MANIFEST_FILE,
    TASKS_FILE,
    VERSIONS_DIR,
    answers_file,
    check_can_add,
    read_answers,
    read_manifest,
    read_tasks,
    versions,
    write_active,
    write_serving_configs,
)
from vilbert.contract import SPEC_VERSION, ExportSpec, GraphSpec, TensorSpec
from vilbert.io import atomic_write_dir, fsync_dir, link_or_copy
from vilbert.tasks import TASK_TABLE_VERSION, TASKS, as_dict

PYTHON_MODEL = Path(__file__).with_name("triton_model.py")


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
    """Why `repository` no longer matches `checkpoint` and this exporter, or None when it does.  A
    repository holding several versions is never stale: its versions are managed by hand."""
    try:
        if len(versions(repository)) > 1:
            return None  # versions added with --version next: switched with server.models, never replaced
        manifest = read_manifest(repository)
    except (OSError, ValueError):
        return "no readable manifest (versions/N/export.json)"
    if manifest.get("exporter") != exporter_digest():
        return "the exporter code changed since it was written"
    if manifest.get("checkpoint_sha256") != checkpoint_digest(checkpoint):
        return f"it was exported from other weights than {checkpoint}"
    return None


def write_model(
    root: Path, graph: GraphSpec, spec: ExportSpec, dep: Deployment, file: Path, version: int
) -> tuple[Path, str]:
    """One graph's version folder ``<model>/<version>/`` (+ model.py for python); returns the placed
    file and the graph's own config.pbtxt text (the serving config is derived from it)."""
    vdir = root / graph.name / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    link_or_copy(file, vdir / dep.backend.model_file)
    data = file.with_name(file.name + ".data")
    if data.exists():  # external weights keep the name the graph refers to
        link_or_copy(data, vdir / data.name)
    if dep.backend is Backend.PYTHON:
        shutil.copy2(PYTHON_MODEL, vdir / "model.py")
    return vdir / dep.backend.model_file, render_config(graph, spec, dep)


def write_version(
    root: Path,
    spec: ExportSpec,
    dep: Deployment,
    files: Mapping[str, Path],
    version: int,
    answers: Mapping[str, list[str]] | None,
    manifest: Mapping[str, object] | None,
) -> None:
    """Every graph's ``<model>/<version>/`` and ``versions/<version>/`` (manifest last) under `root`."""
    entries, configs = {}, {}
    for graph in spec.graphs:
        placed, configs[graph.name] = write_model(root, graph, spec, dep, files[graph.name], version)
        entries[graph.name] = {
            "file": str(placed.relative_to(root)),
            "bytes": placed.stat().st_size,
            "sha256": sha256(placed),
        }
    meta = root / VERSIONS_DIR / str(version)
    (meta / CONFIGS_DIR).mkdir(parents=True, exist_ok=True)
    for name, text in configs.items():
        (meta / CONFIGS_DIR / f"{name}.pbtxt").write_text(text)
    (meta / TASKS_FILE).write_text(json.dumps(tasks_document(spec), indent=2) + "\n")
    for vocab, values in sorted((answers or {}).items()):
        (meta / answers_file(vocab)).write_text(json.dumps(list(values)) + "\n")
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
    (meta / MANIFEST_FILE).write_text(json.dumps(document, indent=2) + "\n")


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
    """Write a repository holding one version, atomically into `out` (replacing what was there)."""

    def write(root: Path) -> None:
        write_version(root, spec, dep, files, version, answers, manifest)
        write_serving_configs(root, [version])
        write_active(root, version, None)
        readme = Path(out) / "README.md"
        if readme.is_file():  # the committed layout description stays with the generated files
            shutil.copy2(readme, root / "README.md")

    atomic_write_dir(Path(out), write)
    return Path(out)


def add_version(
    out: Path,
    spec: ExportSpec,
    dep: Deployment,
    files: Mapping[str, Path],
    *,
    version: int,
    answers: Mapping[str, list[str]] | None = None,
    manifest: Mapping[str, object] | None = None,
) -> Path:
    """Add `version` beside the versions `out` holds, without touching them or what is served.

    Written into ``out/.staging-<version>/`` first, then each graph's version folder is renamed into
    place and the version's manifest folder last: until then the version does not exist.  The serving
    configs are left alone (`python -m server.models activate` loads the version)."""
    out = Path(out)
    if not out.is_dir() or not versions(out):
        return write_repository(out, spec, dep, files, version=version, answers=answers, manifest=manifest)
    check_can_add(out, version)
    staging = out / f".staging-{version}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write_version(staging, spec, dep, files, version, answers, manifest)
        for graph in spec.graphs:
            target = out / graph.name / str(version)
            shutil.rmtree(target, ignore_errors=True)  # left by an export that died before its manifest
            target.parent.mkdir(exist_ok=True)
            (staging / graph.name / str(version)).rename(target)
        (out / VERSIONS_DIR).mkdir(exist_ok=True)
        (staging / VERSIONS_DIR / str(version)).rename(out / VERSIONS_DIR / str(version))
        fsync_dir(out / VERSIONS_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


__all__ = ["read_answers", "read_manifest", "read_tasks"]  # re-exported from export.versions
