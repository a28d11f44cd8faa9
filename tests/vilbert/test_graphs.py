"""vilbert/graphs.py: the per-graph modules, chained as a client routes a task, give the model's logits."""

from __future__ import annotations

import pytest
import torch

from vilbert.config import preset
from vilbert.contract import (
    FUSED,
    HEAD_IO,
    REGION_STATES,
    TEXT_PREFIX,
    TRUNK,
    build_spec,
    head_feeds,
    head_graph_name,
    model_logits,
)
from vilbert.graphs import graph_modules
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import TASKS

B, T, R = 2, 6, 5


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MultiTaskViLBERT(preset("tiny", prefilter_dim=8)).eval()


def test_one_module_per_graph_of_the_contract(model):
    modules = graph_modules(model)
    assert list(modules) == [g.name for g in build_spec(model.config).graphs]
    assert not any(m.training for m in modules.values())
    without = graph_modules(MultiTaskViLBERT(preset("tiny")))
    assert TEXT_PREFIX in without and not any(name.startswith("prefilter") for name in without)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.slug)
def test_trunk_then_head_graph_equals_the_model(model, task):
    g = torch.Generator().manual_seed(task.task_id)
    images = task.images_per_example
    cfg = model.config
    ids = torch.randint(1000, 2000, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, 4:] = 0
    feats = torch.randn(B, images, R, cfg.v_feature_size, generator=g)
    locs = torch.rand(B, images, R, 5, generator=g)
    rmask = torch.ones(B, images, R, dtype=torch.long)
    rmask[1, :, 3:] = 0
    if images == 1:
        feats, locs, rmask = feats[:, 0], locs[:, 0], rmask[:, 0]
    modules = graph_modules(model)
    with torch.no_grad():
        ref = model(task, ids, mask, feats, locs, rmask).logits
        rows = [t.repeat_interleave(images, 0) for t in (ids, mask)]
        task_ids = torch.full((B * images,), task.task_id)
        regions = [t.flatten(0, 1) if images > 1 else t for t in (feats, locs, rmask)]
        fused, region_states = modules[TRUNK](*rows, task_ids, *regions)
        feeds = head_feeds(task.head, {FUSED: fused, REGION_STATES: region_states}, regions[2], images)
        logits = modules[head_graph_name(task.head)](*(feeds[n] for n in HEAD_IO[task.head].inputs))
    assert torch.equal(model_logits(task.head, logits), ref)
