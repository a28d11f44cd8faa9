"""The generated Triton configs and `tasks.json`, rendered from the contract (vilbert/contract.py), and
the golden drift check (`python -m export.check`)."""

from __future__ import annotations

import shutil

import pytest

from export import check
from export.repository import tasks_document
from export.triton_config import Backend, Deployment, render_config
from vilbert.config import tiny
from vilbert.contract import build_spec
from vilbert.tasks import TASKS, Head


@pytest.mark.parametrize("backend", list(Backend))
def test_configs_per_backend(backend):
    spec = build_spec(tiny())
    dep = Deployment(backend=backend)
    trunk = render_config(spec.trunk, spec, dep)
    head = render_config(spec.head(Head.ANSWER), spec, dep)
    assert 'name: "trunk"' in trunk and "dynamic_batching" in trunk and "dynamic_batching" not in head
    assert "model_warmup" in trunk and "model_warmup" in head
    assert "reshape: { shape: [ ] }" in trunk  # task_ids
    kind = "KIND_CPU" if backend is Backend.PYTHON else "KIND_GPU"
    assert kind in trunk
    expected = {
        Backend.PYTHON: 'backend: "python"',
        Backend.ONNXRUNTIME: 'backend: "onnxruntime"',
        Backend.TENSORRT: 'platform: "tensorrt_plan"',
    }[backend]
    assert expected in trunk


def test_tasks_document_lists_the_whole_table():
    doc = tasks_document(build_spec(tiny()))
    assert [t["slug"] for t in doc["tasks"]] == [t.slug for t in TASKS]
    assert {r["task"]: r["models"][1] for r in doc["routes"]}["nlvr2"] == "head_pair"
    assert doc["graphs"]["trunk"]["inputs"][0]["name"] == "input_ids"


def test_goldens_are_up_to_date():
    """`make check`: the committed goldens equal what the generator writes now."""
    assert check.compare() == []


def test_drift_is_reported_and_fix_repairs_it(tmp_path):
    golden = tmp_path / "golden"
    shutil.copytree(check.GOLDEN_DIR, golden)
    trunk = golden / "python" / "trunk" / "config.pbtxt"
    trunk.write_text(trunk.read_text().replace("max_batch_size: 64", "max_batch_size: 8"))
    (golden / "python" / "head_answer" / "config.pbtxt").unlink()
    problems = check.compare(golden)
    assert any("max_batch_size: 8" in p for p in problems)
    assert any("missing golden" in p and "head_answer" in p for p in problems)
    assert check.main(["--golden", str(golden)]) == 1
    assert check.main(["--golden", str(golden), "--fix"]) == 0
    assert check.compare(golden) == []
