"""Drift check of the generated repository files: `python -m export.check [--fix]`.

Generated repositories are not committed; what is committed are *goldens*: the config.pbtxt of
every model in each of the three renderings and tasks.json, generated for the `tiny` preset with
a fixed synthetic detector (tests/export/golden/).  `check` regenerates them into a temporary folder
and fails, printing a diff, when anything differs — a change to the task table, the spec or the
config generator then shows up in review as a golden diff.  `--fix` rewrites the goldens.

No torch and no weights: configs depend only on the model config and the task table.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import shutil
import sys
import tempfile
from pathlib import Path

from export.repository import TASKS_FILE, tasks_document
from export.triton_config import Backend, Deployment, render_all
from vilbert.config import tiny
from vilbert.contract import ExportSpec, build_spec, detector_dims_from_preset

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "tests" / "export" / "golden"
# A fixed vocabulary stands in for the one `regions.train` reads from its training annotations.
GOLDEN_DETECTOR_CLASSES = ("circle", "square", "triangle")
GOLDEN_PREFILTER_DIM = 8


def golden_spec() -> ExportSpec:
    """The tiny model with the retrieval pre-filter (so its two graphs have goldens too)."""
    from regions.presets import SYNTHETIC

    detector = SYNTHETIC.for_dataset(GOLDEN_DETECTOR_CLASSES, ())
    cfg = dataclasses.replace(tiny(), prefilter_dim=GOLDEN_PREFILTER_DIM)
    return build_spec(cfg, detector_dims_from_preset(detector))


def render_goldens(root: Path) -> list[Path]:
    """Write every golden file under `root`; returns them (sorted)."""
    spec = golden_spec()
    written = []
    for backend in Backend:
        for name, text in render_all(spec, Deployment(backend=backend)).items():
            path = root / backend.value / name / "config.pbtxt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
    tasks = root / TASKS_FILE
    tasks.write_text(json.dumps(tasks_document(spec), indent=2) + "\n")
    written.append(tasks)
    return sorted(written)


def compare(golden: Path = GOLDEN_DIR) -> list[str]:
    """Differences between freshly generated files and `golden` (empty: no drift)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        fresh = {p.relative_to(fresh_root) for p in render_goldens(fresh_root)}
        committed = (
            {p.relative_to(golden) for p in golden.rglob("*") if p.is_file()} if golden.is_dir() else set()
        )
        problems = [f"missing golden: {p}" for p in sorted(fresh - committed)]
        problems += [f"stale golden (no longer generated): {p}" for p in sorted(committed - fresh)]
        for rel in sorted(fresh & committed):
            new, old = (fresh_root / rel).read_text(), (golden / rel).read_text()
            if new != old:
                diff = difflib.unified_diff(
                    old.splitlines(), new.splitlines(), f"golden/{rel}", f"generated/{rel}", lineterm="", n=1
                )
                problems.append("\n".join(diff))
        return problems


def fix(golden: Path = GOLDEN_DIR) -> int:
    shutil.rmtree(golden, ignore_errors=True)
    return len(render_goldens(golden))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.check", description=__doc__.splitlines()[0])
    parser.add_argument("--fix", action="store_true", help="rewrite the goldens from the generator")
    parser.add_argument("--golden", type=Path, default=GOLDEN_DIR)
    args = parser.parse_args(argv)
    if args.fix:
        print(f"wrote {fix(args.golden)} golden files to {args.golden}")
        return 0
    problems = compare(args.golden)
    if problems:
        print("\n".join(problems))
        print(
            f"\nexport goldens drifted ({len(problems)} files): "
            "run `python -m export.check --fix` and review the diff"
        )
        return 1
    print(f"export goldens up to date ({args.golden})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
