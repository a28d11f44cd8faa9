"""`python -m bootstrap --official DIR` (`make serve OFFICIAL=DIR`): the 12-in-1 release files, served.

DIR holds the release under its release names (the layout and every accepted name:
`vilbert.release`).  The steps, each skipped when its output is current:

1. example images for the web page   python -m training.synthetic.examples --out artifacts/examples
2. check + convert the release        python -m vilbert.convert --release DIR --out runs/official
                                      (checks every file before any heavy work; per-step input
                                      digests, so an unchanged release converts nothing)
3. export                             python -m export --checkpoint runs/official/model
                                      --detector runs/official/detector/<preset>.safetensors
                                      --out model_repository --precision fp32|int8
                                      (the metric gate runs on the datasets present under
                                      --data, and names each one it skips)
4. serve                              Triton + the gateway (or the gateway alone with --backend local)

The release is checked here first (`vilbert.release.plan_release`: names, types, answer-list
lengths, no stray weight files), so a wrong directory stops in about a second with one line naming
the file, before the 1 GB model is read.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from bootstrap.layout import ROOT, Paths
from vilbert.cli import UserError

OFFICIAL_RUN = ROOT / "runs" / "official"
DEFAULT_PRESET = "vg-x152-fpn"


@dataclass(frozen=True)
class OfficialBuild:
    release: Path
    precision: str = "fp32"
    data: Path | None = None  # datasets for the export's metric gate (official formats)
    root: Path = ROOT  # where runs/, artifacts/ and model_repository/ go (the checkout by default)

    @property
    def out(self) -> Path:
        return self.root / OFFICIAL_RUN.relative_to(ROOT)

    def paths(self, preset: str = DEFAULT_PRESET) -> Paths:
        """Where this build's outputs go.  The region cache is its own: features of another detector
        must never answer for this one."""
        return Paths(
            checkpoint=self.out / "model",
            detector=self.out / "detector" / f"{preset}.safetensors",
            repository=self.root / "model_repository",
            cache=self.root / "artifacts" / "region-cache-official",
            examples=self.root / "artifacts" / "examples",
            galleries=self.root / "artifacts" / "galleries-official",
        )


def check_release(release: Path) -> str:
    """Check the release directory before any heavy work; returns the detector preset's name.
    Every problem becomes one `UserError` line naming the file and what was expected."""
    from vilbert.release import ReleaseError, plan_release

    try:
        # Quiet: `vilbert.convert --release` checks again and prints the findings once, in its step.
        plan = plan_release(release, log=lambda _line: None)
    except ReleaseError as exc:  # its message names the file and what was expected
        raise UserError(str(exc)) from None
    return plan.detector_preset.name if plan.detector_preset is not None else DEFAULT_PRESET


def stale_export(p: Paths, precision: str) -> str | None:
    """Why the repository does not serve this official build (weights, exporter, precision, detector)."""
    from export.repository import stale_reason

    reason = stale_reason(p.repository, p.checkpoint)
    if reason is not None:
        return reason
    from export.versions import read_manifest

    manifest = read_manifest(p.repository)
    if manifest.get("precision") != precision:
        return f"it was exported in {manifest.get('precision')}, {precision} was asked for"
    if not manifest.get("detector"):
        return "it has no detector graphs"
    return None


def official_steps(build: OfficialBuild, p: Paths) -> list:
    from bootstrap.pipeline import Step

    py = sys.executable
    examples = [py, "-m", "training.synthetic.examples", "--out", str(p.examples)]
    convert = [py, "-m", "vilbert.convert", "--release", str(build.release), "--out", str(build.out)]
    export = [py, "-m", "export", "--checkpoint", str(p.checkpoint), "--out", str(p.repository)]
    export += ["--detector", str(p.detector), "--precision", build.precision]
    if build.precision == "fp32":
        export.append("--no-int8-report")
    export += ["--data", str(build.data)] if build.data is not None else ["--skip-metric"]
    return [
        Step("example images for the web page", examples, p.examples / "examples.json"),
        # The converter keeps its own per-step digests: always run it, it skips what is current.
        Step(
            "check + convert the release (strict key maps)", convert, build.out / "release.json", always=True
        ),
        Step(
            f"export ({build.precision} ONNX graphs + Triton repository)",
            export,
            p.repository / "active.json",
            stale=lambda: stale_export(p, build.precision),
        ),
    ]
