"""The wire contract (vilbert/contract.py): names from the task table, shapes from the config, each
head's I/O declared once; and the conventions that keep it the only place these are spelled."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vilbert.config import ViLBERTConfig, base, preset, tiny
from vilbert.contract import (
    CAPTION_EMBEDDING,
    DETECTOR_BACKBONE,
    DETECTOR_BOX_HEAD,
    FUSED,
    FUSED_PAIRS,
    HEAD_IO,
    HEAD_PREFIX,
    IMAGE_EMBEDDING,
    JOINT,
    PREFILTER_IMAGE,
    PREFILTER_TEXT,
    REGION_MASK,
    REGION_STATES,
    REGIONS,
    TEXT,
    TEXT_PREFIX,
    TOKENS,
    TRUNK,
    TRUNK_INPUTS,
    DetectorDims,
    GraphKind,
    HeadInput,
    build_spec,
    head_classes,
    head_feeds,
    head_in_features,
    head_out_features,
    images_per_example,
    model_logits,
    used_heads,
    wire_shape,
)
from vilbert.tasks import TASKS, Head

ROOT = Path(__file__).resolve().parents[2]


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


# ---------------------------------------------------------------------------------------------
# Head I/O
# ---------------------------------------------------------------------------------------------


def test_every_head_declares_its_io_and_the_graphs_follow_it():
    cfg = preset("tiny", num_answers=11, num_answers_gqa=7)
    spec = build_spec(cfg)
    assert set(HEAD_IO) == set(Head)
    config_fields = {f.name for f in dataclasses.fields(ViLBERTConfig)}
    for head, io in HEAD_IO.items():
        assert isinstance(io.classes, int) or io.classes == REGIONS or io.classes in config_fields
        graph = spec.head(head)
        assert tuple(t.name for t in graph.inputs) == io.inputs
        assert graph.output("logits").shape == ("batch", head_classes(head, cfg))
    assert head_classes(Head.ANSWER, cfg) == 11 and head_classes(Head.ANSWER_GQA, cfg) == 7
    assert [h for h, io in HEAD_IO.items() if io.scalar] == [Head.MATCH]
    assert [h for h, io in HEAD_IO.items() if io.per_region] == [Head.REGION]
    assert HEAD_IO[Head.PAIR].reads is HeadInput.FUSED_PAIRS and images_per_example(Head.PAIR) == 2
    assert head_in_features(Head.PAIR, cfg) == 2 * cfg.bi_hidden_size
    assert head_in_features(Head.REGION, cfg) == cfg.v_hidden_size
    assert head_out_features(Head.REGION, cfg) == 1


def test_head_feeds_take_what_each_head_reads_from_the_trunk_outputs():
    rows, hidden, regions = 6, 4, 5
    out = {
        FUSED: np.arange(rows * hidden, dtype=np.float32).reshape(rows, hidden),
        REGION_STATES: np.zeros((rows, regions, 3), np.float32),
    }
    mask = np.ones((rows, regions), np.int64)
    assert head_feeds(Head.ANSWER, out, mask).keys() == {FUSED}
    region = head_feeds(Head.REGION, out, mask)
    assert list(region) == [REGION_STATES, REGION_MASK] and region[REGION_MASK] is mask
    pairs = head_feeds(Head.PAIR, out)[FUSED_PAIRS]  # rows b*2 + i -> pairs[b, i]
    assert pairs.shape == (3, 2, hidden)
    np.testing.assert_array_equal(pairs[1, 0], out[FUSED][2])
    np.testing.assert_array_equal(pairs[1, 1], out[FUSED][3])
    assert head_feeds(Head.PAIR, out, images=3)[FUSED_PAIRS].shape == (2, 3, hidden)
    with pytest.raises(KeyError, match="region_mask"):
        head_feeds(Head.REGION, out)
    graph_logits = np.ones((rows, 1), np.float32)
    assert model_logits(Head.MATCH, graph_logits).shape == (rows,)
    assert model_logits(Head.TRIPLE, np.ones((rows, 3))).shape == (rows, 3)


def test_the_model_weights_have_the_declared_widths():
    import torch

    from vilbert.heads import MultiTaskViLBERT

    torch.manual_seed(0)
    cfg = tiny()
    heads = MultiTaskViLBERT(cfg).heads
    for head, io in HEAD_IO.items():
        linears = [m for m in heads.get_submodule(head.value).modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == (2 if io.mlp else 1), head
        assert linears[0].in_features == head_in_features(head, cfg), head
        assert linears[-1].out_features == head_out_features(head, cfg), head


# ---------------------------------------------------------------------------------------------
# Conventions
# ---------------------------------------------------------------------------------------------


def test_importing_the_contract_does_not_import_torch():
    code = "import sys, vilbert.contract; sys.exit(int('torch' in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr or "vilbert.contract imported torch"


def _contract_names() -> set[str]:
    """Every graph name and every tensor name of the graphs the gateway calls.

    The detector graphs' tensors are left out: the gateway runs its detector in-process (`regions`),
    never through those graphs, and their input's name, ``images``, is also a request field.
    """
    detector = DetectorDims("d", 8, ("p2", "p3"), 16, 8, 3, 32, 3)
    spec = build_spec(preset("tiny", prefilter_dim=8), detector)
    names = {g.name for g in spec.graphs} | {HEAD_PREFIX}
    assert {DETECTOR_BACKBONE, DETECTOR_BOX_HEAD} <= names
    for g in spec.graphs:
        if g.kind is not GraphKind.DETECTOR:
            names |= {t.name for t in (*g.inputs, *g.outputs)}
    return names


def test_the_gateway_spells_no_tensor_or_graph_name():
    """server/*.py names tensors and graphs only through the contract's constants."""
    names = _contract_names()
    found = []
    for path in sorted((ROOT / "server").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "spelled instead of imported from vilbert.contract:\n" + "\n".join(found)


def test_the_convention_check_sees_a_spelled_name():
    names = _contract_names()
    tree = ast.parse('feeds = {"region_mask": m}; model = f"head_{h}"')
    spelled = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names}
    assert spelled == {"region_mask", "head_"}


def _matches_on_heads(tree: ast.AST) -> list[int]:
    """Lines of `match` statements with a case on a `Head.<member>`."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Match):
            for case in node.cases:
                for p in ast.walk(case.pattern):
                    value = getattr(p, "value", None)
                    if isinstance(value, ast.Attribute) and getattr(value.value, "id", None) == "Head":
                        lines.append(node.lineno)
    return sorted(set(lines))


def test_nobody_but_the_contract_matches_on_the_head_kinds():
    """What a head reads is decided by `HEAD_IO`, not by a `match head:` in each consumer."""
    found = []
    for package in ("vilbert", "export", "server", "training", "bench", "regions", "clients"):
        for path in sorted((ROOT / package).rglob("*.py")):
            lines = _matches_on_heads(ast.parse(path.read_text(), str(path)))
            found += [f"{path.relative_to(ROOT)}:{n}" for n in lines]
    assert not found, "match over Head outside vilbert/contract.py:\n" + "\n".join(found)
    sample = "match head:\n    case Head.PAIR:\n        pass\n    case _:\n        pass\n"
    assert _matches_on_heads(ast.parse(sample)) == [1]
