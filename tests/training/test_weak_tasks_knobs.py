"""Retrieval evaluation lists captions round-robin over images; per-task loss scale and per-head lr."""

from __future__ import annotations

import pytest

from training.ablations import _comparable
from training.config import FitConfig
from training.datasets import build_dataset
from training.optim import build_optimizer
from vilbert.config import preset
from vilbert.heads import MultiTaskViLBERT


def test_capped_retrieval_evaluation_spreads_over_images(reference_root, fixture_config):
    ds = build_dataset("retrieval_coco", reference_root, "test", config=fixture_config)
    n_images = len(ds.images)
    first = [ds.entries[k].image_index for k in range(n_images)]
    assert sorted(first) == list(range(n_images))  # the first N captions: one per image
    for image, caps in enumerate(ds.captions_of):  # captions_of still points at each image's captions
        assert all(ds.entries[k].image_index == image for k in caps)
    assert list(ds.gt_image) == [e.image_index for e in ds.entries]


def test_head_lr_scale_sets_one_heads_lr():
    model = MultiTaskViLBERT(preset("tiny"))
    opt = build_optimizer(model, 1e-4, 5e-4, 0.01, 1e-6, (0.9, 0.999), head_lr_scale={"triple": 20})
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(model.heads.triple.weight)] == pytest.approx(1e-2)
    assert lr_of[id(model.heads.pair.out.weight)] == pytest.approx(5e-4)
    with pytest.raises(ValueError, match="unknown head"):
        build_optimizer(model, 1e-4, 5e-4, 0.01, 1e-6, (0.9, 0.999), head_lr_scale={"nope": 2})


def test_new_optim_knobs_parse_and_empty_ones_do_not_break_reuse():
    cfg = FitConfig.load(None, ["optim.loss_scale={snli_ve: 30}", "optim.head_lr_scale={triple: 20}"])
    assert cfg.optim.loss_scale == {"snli_ve": 30} and cfg.optim.head_lr_scale == {"triple": 20}
    new = FitConfig.load(None, []).to_dict()
    old = {
        **new,
        "optim": {k: v for k, v in new["optim"].items() if k not in ("loss_scale", "head_lr_scale")},
    }
    assert _comparable(new) == _comparable(old)
    assert _comparable(cfg.to_dict()) != _comparable(old)
