"""training/configs/prefilter-only.yaml: a pre-filter added to a checkpoint that has none (the
converted 12-in-1 release), every other weight left bit for bit as it was."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from training.config import FitConfig
from training.fit import Trainer
from vilbert.checkpoint import load_checkpoint, save_checkpoint
from vilbert.config import preset
from vilbert.heads import MultiTaskViLBERT

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "training/configs/prefilter-only.yaml"


def _feature_dim(data_root: Path) -> int:
    from training.datasets import LoaderConfig, build_dataset
    from vilbert.tokenizer import load_tokenizer

    config = LoaderConfig.for_data_root(data_root)
    ds = build_dataset("retrieval_coco", data_root, "train", config=config, tokenizer=load_tokenizer())
    return int(ds[0].region_features.shape[-1])


def test_shipped_config_freezes_everything_but_the_prefilter():
    cfg = FitConfig.load(CONFIG)
    assert cfg.prefilter.enabled and cfg.prefilter.only and cfg.prefilter.dim > 0
    assert set(cfg.model.freeze) == {"trunk", "task_heads"}
    assert cfg.model.init_checkpoint  # a trained checkpoint: a random frozen trunk is useless
    assert set(cfg.tasks) == {"retrieval_coco", "retrieval_flickr30k"}


def test_prefilter_only_fit_changes_nothing_but_the_new_prefilter(data_root, tmp_path):
    torch.manual_seed(0)
    release = MultiTaskViLBERT(preset("tiny", v_feature_size=_feature_dim(data_root)))
    assert release.prefilter is None  # as `python -m vilbert.convert --release` writes it
    answers = {
        "vqa": [f"vqa_{i}" for i in range(release.config.num_answers)],
        "gqa": [f"gqa_{i}" for i in range(release.config.num_answers_gqa)],
    }
    init = save_checkpoint(tmp_path / "official" / "model", release, answers)

    cfg = FitConfig.load(
        CONFIG,
        [
            f"model.init_checkpoint={init}",
            f"data.root={data_root}",
            f"out={tmp_path / 'official-prefilter'}",
            "prefilter.dim=8",
            "schedule.max_steps=3",
            "optim.default_batch_size=4",
            "data.max_val_examples=4",
            "checkpoint.every_steps=100",
            "final_eval=false",
            "progress=false",
        ],
    )
    trainer = Trainer(cfg)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("prefilter.") for n in trainable), trainable
    fresh = {k: v.clone() for k, v in trainer.model.prefilter.state_dict().items()}
    final = trainer.run()

    original = load_checkpoint(init)
    trained = load_checkpoint(final)
    before, after = original.model.state_dict(), trained.model.state_dict()
    assert set(after) - set(before) == {f"prefilter.{k}" for k in fresh}
    for key, value in before.items():  # the trunk and the six task heads, bit for bit
        assert torch.equal(after[key], value), f"{key} changed"
    moved = [k for k, v in fresh.items() if not torch.equal(after[f"prefilter.{k}"], v)]
    assert sorted(moved) == sorted(fresh), f"the pre-filter did not train: {set(fresh) - set(moved)}"
    assert trained.model.config == dataclasses.replace(original.model.config, prefilter_dim=8)
    assert trained.answers == answers  # the release's answer lists travel with it
