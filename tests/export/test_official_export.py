"""A full-size model in the released format, through `vilbert.convert --release` and `python -m
export` (fp32): the gate must pass on a correct graph (no failure on one float32 ulp at the -10000
of a masked region) and measure the metric on the datasets present, naming the others."""

from __future__ import annotations

import time

import pytest

from export.pipeline import ExportOptions, run_export
from export.versions import read_manifest
from testkit.release_files import write_fake_release
from vilbert.convert import main as convert_main
from vilbert.tasks import TASKS

PRESENT = ("VQA", "coco", "refcoco", "loader_config.json")  # VQA + the RefCOCO family (COCO features)


# Full-size (270M + X-152) work: one such test at a time, on one worker (2 cores, ~6 GB each).
@pytest.mark.slow
@pytest.mark.xdist_group("full_size")
def test_full_size_official_checkpoint_exports_and_passes_the_gate(tmp_path):
    from training.synthetic import generate_world

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    release = write_fake_release(tmp_path / "release", detector=False)  # base: 560 tensors, 1.07 GB
    release.state.clear()
    seconds["fake release"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    out = tmp_path / "converted"
    assert convert_main(["--release", str(release.root), "--out", str(out), "--no-detector"]) == 0
    release.model.unlink()  # disk: the converted copy is all that is needed now
    seconds["convert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    world = tmp_path / "world"
    generate_world(world, size="small", seed=0, progress=False, placeholder_dim=2048)
    root = tmp_path / "data"
    (root / "datasets").mkdir(parents=True)
    for name in PRESENT:
        (root / "datasets" / name).symlink_to(world / "datasets" / name)
    seconds["world"] = time.perf_counter() - t0

    lines: list[str] = []
    options = ExportOptions(
        checkpoint=out / "model",
        out=tmp_path / "model_repository",
        data_root=root,
        max_examples=4,
        measure_int8=False,
    )
    t0 = time.perf_counter()
    outcome = run_export(options, log=lines.append)
    seconds["export + gate"] = time.perf_counter() - t0
    gate = outcome.report["gate"]
    assert outcome.repository is not None and gate["passed"], gate["failures"]
    rows = {t["task"]: t for t in gate["tasks"]}
    measured = {"vqa", "refcoco", "refcoco_plus", "refcocog"}
    assert set(gate["metric_skipped"]) == {t.slug for t in TASKS} - measured
    for slug in measured:
        assert rows[slug]["examples"] > 0, slug
        assert rows[slug]["metric_fp32"] == pytest.approx(rows[slug]["metric_torch"], abs=1e-9)
    assert rows["vqa"]["logits_shape"] == [2, 3129] and rows["gqa"]["logits_shape"] == [2, 1533]
    assert all(r["max_abs_diff_fp32"] <= options.tolerance for r in rows.values())
    manifest = read_manifest(outcome.repository)
    assert manifest["answer_vocabularies"] == ["gqa", "vqa"]
    print("\n" + "\n".join(lines[-20:]))
    print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
