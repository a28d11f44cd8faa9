"""The export spec and the generated configs: names from the task table, shapes from the config,
and the golden drift check (`python -m export.check`)."""

from __future__ import annotations

import shutil

import pytest

from export import check
from export.repository import tasks_document
from export.spec import (
    CAPTION_EMBEDDING,
    FUSED,
    HEAD_PREFIX,
    IMAGE_EMBEDDING,
    JOINT,
    PREFILTER_IMAGE,
    PREFILTER_TEXT,
    REGIONS,
    TEXT,
    TEXT_PREFIX,
    TOKENS,
    TRUNK,
    TRUNK_INPUTS,
    GraphKind,
    build_spec,
    used_heads,
    wire_shape,
)
from export.triton_config import Backend, Deployment, render_config
from vilbert.config import base, preset, tiny
from vilbert.tasks import TASKS, Head


def test_every_head_of_the_table_gets_one_graph_and_every_task_a_route():
    spec = build_spec(tiny())
    assert set(used_heads()) == {t.head for t in TASKS}
    heads = [f"{HEAD_PREFIX}{h.value}" for h in used_heads()]
    assert [g.name for g in spec.graphs] == [TRUNK, *heads, TEXT_PREFIX, JOINT]
    with_prefilter = build_spec(preset("tiny", prefilter_dim=8))
    names = [g.name for g in with_prefilter.graphs]
    assert names == [TRUNK, *heads, TEXT_PREFIX, JOINT, PREFILTER_TEXT, PREFILTER_IMAGE]
    assert [r.task for r in spec.routes] == [t.slug for t in TASKS]
    for task in TASKS:
        r = spec.route_for(task)
        assert r.task_id == task.task_id
        assert spec.graph(r.head_model).head is task.head
        assert r.images_per_example == task.images_per_example


def test_trunk_contract_follows_the_model_config():
    cfg = base()
    trunk = build_spec(cfg).trunk
    assert tuple(t.name for t in trunk.inputs) == TRUNK_INPUTS
    assert trunk.input("region_features").shape[-1] == cfg.v_feature_size == 2048
    assert trunk.output(FUSED).shape[-1] == cfg.bi_hidden_size
    assert trunk.output("region_states").shape[-1] == cfg.v_hidden_size
    assert trunk.batched and trunk.dynamic_batching


def test_split_trunk_and_prefilter_contracts_chain():
    cfg = preset("tiny", prefilter_dim=8)
    spec = build_spec(cfg)
    prefix, joint = spec.graph(TEXT_PREFIX), spec.graph(JOINT)
    pf_text, pf_image = spec.graph(PREFILTER_TEXT), spec.graph(PREFILTER_IMAGE)
    assert [t.name for t in prefix.inputs] == list(TRUNK_INPUTS[:3])
    assert joint.inputs[:2] == prefix.outputs == pf_text.inputs  # text_prefix's output feeds both
    assert joint.inputs[2:] == spec.trunk.inputs[3:] == pf_image.inputs
    assert joint.outputs == spec.trunk.outputs  # the heads read joint exactly as they read trunk
    assert prefix.outputs[0].shape == ("batch", TOKENS, cfg.hidden_size)
    assert pf_text.output(CAPTION_EMBEDDING).shape[-1] == pf_image.output(IMAGE_EMBEDDING).shape[-1] == 8
    assert {prefix.kind, joint.kind} == {GraphKind.TRUNK_SPLIT} and joint.dynamic_batching
    assert {pf_text.kind, pf_image.kind} == {GraphKind.PREFILTER}


def test_head_inputs_are_trunk_outputs_and_widths_match_the_config():
    cfg = tiny()
    spec = build_spec(cfg)
    trunk_outputs = {t.name: t for t in spec.trunk.outputs}
    for head in used_heads():
        graph = spec.head(head)
        logits = graph.outputs[0]
        match head:
            case Head.ANSWER:
                assert logits.shape[-1] == cfg.num_answers
            case Head.ANSWER_GQA:
                assert logits.shape[-1] == cfg.num_answers_gqa
            case Head.REGION:
                assert logits.shape[-1] == REGIONS
                assert graph.inputs[0].shape == trunk_outputs["region_states"].shape
            case Head.PAIR:
                assert graph.inputs[0].shape[1] == 2  # NLVR2's two images, from the table
        if head not in (Head.REGION, Head.PAIR):
            assert graph.inputs[0] == trunk_outputs[FUSED]


def test_axis_ranges_cover_the_table():
    axes = build_spec(base()).axes
    assert axes[TEXT].max == max(t.max_text_tokens for t in TASKS) == 256
    assert axes[REGIONS].max == max(t.max_regions for t in TASKS) == 306
    assert axes[TEXT].min <= min(t.max_text_tokens for t in TASKS)


def test_per_row_scalars_travel_as_b_by_1():
    trunk = build_spec(tiny()).trunk
    assert wire_shape(trunk.input("task_ids"), (4,), batched=True) == (4, 1)
    assert wire_shape(trunk.input("input_ids"), (4, 9), batched=True) == (4, 9)


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
