"""The gate on what is there: masked logits compared by magnitude (an ulp at -10000 is not a
failure, a forgotten mask is), the metric gate on every dataset present (the others named), and
repositories readable by the server's user."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from export.parity import FP32_TOLERANCE, logit_error, missing_dataset, padded_logits
from export.pipeline import ExportOptions, finish_export, load_inputs
from export.repository import write_repository
from export.triton_config import Deployment
from tests.export.test_export import export_graphs_from
from vilbert.modeling import MASK_VALUE
from vilbert.tasks import TASKS, get_task


def test_masked_region_logits_are_compared_relative_to_their_magnitude():
    task = get_task("refcoco")
    mask = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=np.int64)
    ref = np.where(mask > 0, 0.25, MASK_VALUE + 0.25).astype(np.float32)
    padded = padded_logits(task, {"region_mask": mask}, ref.shape)
    assert padded.tolist() == (mask == 0).tolist()
    ulp = abs(np.spacing(np.float32(MASK_VALUE)))  # 0.000977: ten times the tolerance
    assert ulp > FP32_TOLERANCE
    assert logit_error(ref, ref + np.where(mask > 0, 0, ulp).astype(np.float32), padded) < FP32_TOLERANCE
    assert np.abs(ref - (ref + np.where(mask > 0, 0, ulp))).max() > FP32_TOLERANCE  # the old check failed
    off = ref + np.where(mask > 0, 2e-4, 0).astype(np.float32)  # a read logit off by 2e-4: absolute
    assert logit_error(ref, off, padded) == pytest.approx(2e-4, rel=1e-3)
    forgot = np.full_like(ref, 0.25)  # a graph that does not mask
    assert logit_error(ref, forgot, padded) > 0.9
    assert np.isnan(logit_error(ref, np.full_like(ref, np.nan), padded))
    assert padded_logits(get_task("vqa"), {"region_mask": mask}, (2, 3129)) is None


@pytest.fixture
def partial_world(tiny_export, tmp_path):
    """The shared world with only VQA, the RefCOCO family and NLVR2 (links, nothing copied)."""
    src = tiny_export.inputs.world / "datasets"
    root = tmp_path / "partial"
    (root / "datasets").mkdir(parents=True)
    for name in ("VQA", "coco", "refcoco", "nlvr2", "loader_config.json"):
        if (src / name).exists():
            (root / "datasets" / name).symlink_to(src / name)
    return root


def test_metric_gate_runs_on_the_datasets_present_and_names_the_rest(tiny_export, partial_world, tmp_path):
    present = {"vqa", "refcoco", "refcoco_plus", "refcocog", "nlvr2"}
    assert {t.slug for t in TASKS if missing_dataset(t, partial_world) is None} == present
    assert all(missing_dataset(t, tiny_export.inputs.world) is None for t in TASKS)
    assert "no datasets/gqa under the data root" in missing_dataset(get_task("gqa"), partial_world)
    # SNLI-VE's folder alone is not enough: its features live in the (absent) Flickr30k folder.
    (partial_world / "datasets" / "visual_entailment").symlink_to(
        tiny_export.inputs.world / "datasets" / "visual_entailment"
    )
    assert "flickr30k" in missing_dataset(get_task("snli_ve"), partial_world)

    loaded = load_inputs(tiny_export.inputs.checkpoint, None)
    options = ExportOptions(
        checkpoint=tiny_export.inputs.checkpoint, out=tmp_path / "r", max_examples=4, keep_work=True
    )
    lines: list[str] = []
    finish_export(options, loaded, export_graphs_from(tiny_export, loaded), partial_world, lines.append)
    report = json.loads((tmp_path / "r.parity.json").read_text())
    gate = report["gate"]
    assert gate["passed"] and gate["metric_measured"]
    assert set(gate["metric_skipped"]) == {t.slug for t in TASKS} - present
    rows = {t["task"]: t for t in gate["tasks"]}
    for slug, row in rows.items():
        if slug in present:
            assert row["examples"] > 0 and row["metric_fp32"] == pytest.approx(row["metric_torch"], abs=1e-9)
        else:
            assert row["examples"] == 0 and row["split_note"].startswith("metric skipped: no datasets/")
    assert any("metric gate skipped for 7 tasks" in line for line in lines)
    md = (tmp_path / "r.parity.md").read_text()
    assert "metric skipped (dataset not under the data root): vg_qa" in md


def test_repository_is_readable_by_everyone(tiny_export, tmp_path):
    loaded = load_inputs(tiny_export.inputs.checkpoint, None)
    files = export_graphs_from(tiny_export, loaded).fp32
    old = os.umask(0o077)
    try:
        out = write_repository(tmp_path / "repo", loaded.spec, Deployment(), files, answers=loaded.answers)
    finally:
        os.umask(old)
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        want = 0o755 if path.is_dir() else 0o644
        assert mode & want == want, f"{path}: {oct(mode)}"
    assert any(p.name == "model.onnx" for p in out.rglob("*"))
