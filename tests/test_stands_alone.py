"""The repository stands alone: no tracked file cites notes that live outside it.

Comments and docs state the fact itself (or point to a doc in this repository) instead of citing
the out-of-tree reference notes the project was written from, which users do not have.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Built from parts so this file does not match its own patterns.
_NOTE_STEMS = (
    "datasets-and-" + "training",
    "vilbert-" + "architecture",
    "detectron-model-" + "config",
    "detectron-model-" + "keys.txt",
    "official-state-dict-" + "keys",
    "pretrained-state-dict-" + "keys",
    "bad-" + "inputs",
    "triton-on-" + "cpu",
    "paper-12-" + "in-1",
)
_PATTERN = re.compile(
    "|".join(re.escape(stem) for stem in _NOTE_STEMS)
    + r"|(?<![\w-])"
    + "architecture"
    + r"\.md"
    + "|"
    + "shared"
    + "/"
    + "reference"
    + r"|\.\./"
    + "shared"
)


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout.decode()
    return [ROOT / name for name in out.split("\0") if name]


def test_no_tracked_file_cites_outside_notes() -> None:
    offenders = []
    for path in _tracked_files():
        if path == Path(__file__).resolve() or not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        for lineno, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if _PATTERN.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()[:120]}")
    assert not offenders, "citations of notes outside the repository:\n" + "\n".join(offenders)
