"""Model versions in one Triton repository: the layout, which version is active, and the serving configs.

A repository holds one or more versions of the same graphs, each complete on its own::

    <repository>/
      trunk/config.pbtxt             the serving config: the active version's own config, with
                                     ``version_policy: { specific: { versions: [...] } }`` naming the
                                     versions loaded now (two during a switch, one otherwise)
      trunk/1/model.onnx, trunk/2/model.onnx, ...       Triton's version folders
      versions/1/export.json         version 1's manifest (model config, answer lists, digests of the
      versions/1/tasks.json          weights and of the exporter), task table, answer vocabularies,
      versions/1/answers.vqa.json    and each graph's own config (versions/1/configs/trunk.pbtxt)
      versions/2/...
      active.json                    {"version": 2, "previous": 1, "history": [...]}

A version exists once its ``versions/N/export.json`` does: `python -m export --version next` writes the
graphs' version folders first and that manifest last, so a crash mid-export leaves no half version
anyone would serve.  Triton runs in explicit model control and loads only what `active.json` names
(`serving_config`); the switch itself is `server/models.py`.  Repositories written before versions
existed (``export.json`` at the top) are read as one version.

Torch-free: the gateway, the launcher and the CLI read it.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from vilbert.io import atomic_write_text

VERSIONS_DIR = "versions"
ACTIVE_FILE = "active.json"
MANIFEST_FILE = "export.json"
TASKS_FILE = "tasks.json"
CONFIGS_DIR = "configs"
CONFIG_FILE = "config.pbtxt"
_POLICY = re.compile(r"^version_policy: .*$", re.MULTILINE)
_DIMS = re.compile(r"^(\s*dims: )\[([^\]]*)\]$")


class VersionError(ValueError):
    """A version that does not exist, or versions that cannot be served side by side."""


# Triton's repository API (load / unload) answers only requests carrying this header with the key the
# launcher chose (``--http-restricted-api``); the launcher writes the key beside the repository (0600)
# for the gateway's switch.  TWELVE_TRITON_CONTROL_KEY sets it instead (both sides read it).
CONTROL_HEADER = "triton-repository-key"
CONTROL_KEY_FILE = ".triton-control-key"
CONTROL_KEY_ENV = "TWELVE_TRITON_CONTROL_KEY"


def control_key(repository: Path | None) -> str | None:
    """The key of Triton's repository API: TWELVE_TRITON_CONTROL_KEY, else the launcher's key file."""
    import os

    if os.environ.get(CONTROL_KEY_ENV):
        return os.environ[CONTROL_KEY_ENV]
    if repository is None:
        return None
    try:
        return (Path(repository) / CONTROL_KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def answers_file(vocab: str) -> str:
    return f"answers.{vocab}.json"


def is_legacy(repository: Path) -> bool:
    """A repository written before versions: one manifest at the top, no versions/ folder."""
    return not (Path(repository) / VERSIONS_DIR).is_dir() and (Path(repository) / MANIFEST_FILE).is_file()


def version_dir(repository: Path, version: int) -> Path:
    """Where version `version`'s manifest, task table, vocabularies and configs live."""
    if is_legacy(repository):
        return Path(repository)
    return Path(repository) / VERSIONS_DIR / str(version)


def versions(repository: Path) -> list[int]:
    """The complete versions of `repository` (those with a manifest), ascending."""
    repository = Path(repository)
    if is_legacy(repository):
        return [int(json.loads((repository / MANIFEST_FILE).read_text()).get("version", 1))]
    root = repository / VERSIONS_DIR
    if not root.is_dir():
        return []
    return sorted(int(p.parent.name) for p in root.glob(f"*/{MANIFEST_FILE}") if p.parent.name.isdigit())


def read_active(repository: Path) -> dict:
    """`active.json` ({} when absent or unreadable)."""
    try:
        return json.loads((Path(repository) / ACTIVE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def active_version(repository: Path) -> int:
    """The version served: `active.json`'s when it exists, else the newest complete version."""
    found = versions(repository)
    if not found:
        raise VersionError(f"{repository}: no exported model (python -m export --out {repository})")
    chosen = read_active(repository).get("version")
    return int(chosen) if chosen in found else found[-1]


def resolve(repository: Path, version: int | None) -> int:
    """`version`, checked to exist, or the active version when None."""
    if version is None:
        return active_version(repository)
    if version not in versions(repository):
        have = ", ".join(map(str, versions(repository))) or "none"
        raise VersionError(f"{repository}: no version {version} (versions: {have})")
    return version


def next_version(repository: Path) -> int:
    """One past the highest version folder of any graph or manifest (an interrupted export included)."""
    repository = Path(repository)
    seen = [0, *versions(repository)]
    seen += [int(p.name) for p in repository.glob("*/*") if p.is_dir() and p.name.isdigit()]
    return max(seen) + 1


def check_can_add(out: Path, version: int) -> None:
    """Refuse, before any work, a version the repository already has or cannot hold beside its own."""
    out = Path(out)
    if out.is_dir() and is_legacy(out):
        raise VersionError(
            f"{out} was written before model versions existed; export into it without --version once "
            "(or into a new folder), then add versions"
        )
    if out.is_dir() and version in versions(out):
        raise VersionError(f"{out} already has version {version}; use --version next")


def read_manifest(repository: Path, version: int | None = None) -> dict:
    return json.loads((version_dir(repository, resolve(repository, version)) / MANIFEST_FILE).read_text())


def read_tasks(repository: Path, version: int | None = None) -> dict:
    return json.loads((version_dir(repository, resolve(repository, version)) / TASKS_FILE).read_text())


def read_answers(repository: Path, version: int | None = None) -> dict[str, list[str]]:
    folder = version_dir(repository, resolve(repository, version))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    return {v: json.loads((folder / answers_file(v)).read_text()) for v in manifest["answer_vocabularies"]}


def models_of(repository: Path, version: int | None = None) -> list[str]:
    """The graphs (Triton model names) of a version."""
    return sorted(read_manifest(repository, version)["models"])


def write_active(repository: Path, version: int, previous: int | None) -> None:
    """Record the served version (atomically); keeps the last 20 switches in `history`."""
    old = read_active(repository)
    history = [*old.get("history", []), {"version": version, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    document = {"version": version, "previous": previous, "history": history[-20:]}
    atomic_write_text(Path(repository) / ACTIVE_FILE, json.dumps(document, indent=2) + "\n")


def own_config(repository: Path, model: str, version: int) -> str:
    """The config `python -m export` rendered for `model` of `version`."""
    if is_legacy(repository):
        return (Path(repository) / model / CONFIG_FILE).read_text()
    return (version_dir(repository, version) / CONFIGS_DIR / f"{model}.pbtxt").read_text()


def _merge_dims(a: str, b: str) -> str | None:
    """`a` with every ``dims: [...]`` entry that differs from `b`'s made variable (-1); None when the two
    differ in anything but dims (inputs, batching, instances, backend ...)."""
    la, lb = a.splitlines(), b.splitlines()
    if len(la) != len(lb):
        return None
    merged = []
    for x, y in zip(la, lb, strict=True):
        if x == y:
            merged.append(x)
            continue
        mx, my = _DIMS.match(x), _DIMS.match(y)
        if not (mx and my):
            return None
        dx = [d.strip() for d in mx.group(2).split(",")]
        dy = [d.strip() for d in my.group(2).split(",")]
        if len(dx) != len(dy):
            return None
        dims = [d if d == e else "-1" for d, e in zip(dx, dy, strict=True)]
        merged.append(f"{mx.group(1)}[ {', '.join(dims)} ]")
    return "\n".join(merged) + ("\n" if a.endswith("\n") else "")


def serving_config(repository: Path, model: str, loaded: list[int]) -> str:
    """The config.pbtxt that serves `model` at every version of `loaded` (the last one is the one whose
    config leads).  Versions whose configs differ only in tensor sizes (a retrained answer head with
    another vocabulary) are served with those sizes variable; any other difference is refused."""
    have = [v for v in loaded if v in versions_with(repository, model)]
    if not have:
        raise VersionError(f"{model}: none of versions {loaded} has it")
    text = own_config(repository, model, have[-1])
    for other in have[:-1]:
        merged = _merge_dims(text, own_config(repository, model, other))
        if merged is None:
            raise VersionError(
                f"{model}: versions {other} and {have[-1]} were exported with different Triton settings "
                "(backend, batching or instances), so Triton cannot serve them side by side; export the "
                "new version with the same --backend/--max-batch-size/--trunk-* flags, or into a "
                "repository of its own"
            )
        text = merged
    policy = "version_policy: { specific: { versions: [ " + ", ".join(map(str, have)) + " ] } }"
    return _POLICY.sub(policy, text, count=1)


def versions_with(repository: Path, model: str) -> list[int]:
    """The complete versions that include graph `model`."""
    return [v for v in versions(repository) if model in read_manifest(repository, v)["models"]]


def write_serving_configs(repository: Path, loaded: list[int], models: list[str] | None = None) -> list[str]:
    """Write the serving config of every graph of the `loaded` versions (or of `models`); returns the
    graphs whose config changed (those Triton must be asked to load again)."""
    names = models if models is not None else sorted({m for v in loaded for m in models_of(repository, v)})
    changed = []
    for model in names:
        text = serving_config(repository, model, loaded)
        path = Path(repository) / model / CONFIG_FILE
        if not path.is_file() or path.read_text() != text:
            atomic_write_text(path, text)
            changed.append(model)
    return changed
