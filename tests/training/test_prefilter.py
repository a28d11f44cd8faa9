"""The retrieval pre-filter objective: config, loss mechanics, a short fit, and the two-stage evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import FitConfig
from training.datasets import collate
from training.fit import Trainer
from training.metrics import recall_at_k, two_stage_recall
from training.step import PrefilterObjective, forward_loss, prefilter_loss
from vilbert.checkpoint import load_checkpoint, save_checkpoint
from vilbert.config import preset
from vilbert.heads import MultiTaskViLBERT, PrefilterMissingError, with_prefilter
from vilbert.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]


def fit_config(data_root, out, *extra):
    return FitConfig.load(
        ROOT / "training/configs/tiny.yaml",
        [
            f"data.root={data_root}",
            f"out={out}",
            "tasks=[retrieval_coco]",
            "schedule.epochs=2",
            "optim.default_batch_size=4",
            "final_eval=false",
            "prefilter.enabled=true",
            "prefilter.dim=8",
            *extra,
        ],
    )


def test_shipped_configs_turn_the_prefilter_on():
    for name in ("demo", "12in1"):
        cfg = FitConfig.load(ROOT / f"training/configs/{name}.yaml")
        assert cfg.prefilter.enabled and cfg.prefilter.dim > 0 and cfg.prefilter.weight > 0


def test_old_checkpoint_loads_and_says_it_has_no_prefilter(tmp_path):
    model = MultiTaskViLBERT(preset("tiny"))
    path = save_checkpoint(tmp_path / "old", model)
    config = json.loads((path / "config.json").read_text())
    config.pop("prefilter_dim")  # as written before the pre-filter existed
    (path / "config.json").write_text(json.dumps(config))
    loaded = load_checkpoint(path).model
    assert loaded.prefilter is None
    with pytest.raises(PrefilterMissingError, match="no retrieval pre-filter"):
        loaded.require_prefilter()
    grown = with_prefilter(loaded, 8)
    for key, value in loaded.state_dict().items():
        assert torch.equal(grown.state_dict()[key], value)
    again = load_checkpoint(save_checkpoint(tmp_path / "new", grown)).model
    assert again.prefilter is not None and again.config.prefilter_dim == 8


def test_embeddings_are_unit_vectors_and_ignore_padding():
    torch.manual_seed(0)
    model = MultiTaskViLBERT(preset("tiny", prefilter_dim=8)).eval()
    head = model.require_prefilter()
    feats, locs = torch.randn(2, 5, 16), torch.rand(2, 5, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    emb = head.image_embedding(feats, locs, mask)
    assert emb.shape == (2, 8) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    changed = feats.clone()
    changed[0, 3:] = 100.0  # padded regions of image 0
    assert torch.allclose(head.image_embedding(changed, locs, mask)[0], emb[0], atol=1e-6)


def test_loss_on_a_batch_with_two_captions_of_one_image(data_root):
    from training.datasets import LoaderConfig, build_dataset
    from vilbert.tokenizer import load_tokenizer

    task = get_task("retrieval_coco")
    config = LoaderConfig.for_data_root(data_root)
    ds = build_dataset(task, data_root, "train", config=config, tokenizer=load_tokenizer())
    dim = int(ds[0].region_features.shape[-1])
    torch.manual_seed(0)
    model = MultiTaskViLBERT(preset("tiny", v_feature_size=dim, prefilter_dim=8))
    first, second = ds.captions_of[0][:2], ds.captions_of[1][0]
    batch = collate([ds[first[0]], ds[first[1]], ds[second]])
    objective = PrefilterObjective(temperature=0.1)
    model.eval()  # no dropout: the losses below must add up exactly
    rows = torch.arange(3) * batch.pairs_per_example
    captions = model.trunk.encode_text_prefix(
        batch.input_ids[rows], batch.attention_mask[rows], batch.task_ids[rows]
    )
    loss, similarities = prefilter_loss(model, batch, captions, objective)
    images = len({i for ids in batch.image_ids for i in ids})
    assert torch.isfinite(loss) and loss > 0 and similarities.shape == (3, images)
    loss.backward()
    assert model.prefilter.image_out.weight.grad.abs().sum() > 0
    model.zero_grad()
    total, logits = forward_loss(model, task, batch, objective)
    plain, _ = forward_loss(model, task, batch)
    assert logits.shape == (3, 4) and torch.isfinite(total) and not torch.isclose(total, plain)
    only, _ = forward_loss(model, task, batch, PrefilterObjective(temperature=0.1, only=True))
    assert torch.isclose(only, loss) and torch.isclose(total, plain + only, atol=1e-5)


def test_fit_trains_the_prefilter_and_evaluate_reports_two_stage(data_root, tmp_path):
    from training.datasets import build_dataset
    from training.evaluation import evaluate_task

    trainer = Trainer(fit_config(data_root, tmp_path, "schedule.max_steps=3"))
    assert trainer.model.prefilter is not None
    before = {k: v.clone() for k, v in trainer.model.prefilter.state_dict().items()}
    final = trainer.run()
    model = load_checkpoint(final).model
    assert model.config.prefilter_dim == 8
    moved = [k for k, v in model.prefilter.state_dict().items() if not torch.equal(v, before[k])]
    assert moved, "the pre-filter head did not train"

    task = get_task("retrieval_coco")
    test = build_dataset(task, data_root, "test", config=trainer.loader_cfg, tokenizer=trainer.tokenizer)
    images = test.score_shape[1]
    out = evaluate_task(model, task, test, rerank_ks=(1, 2, images))
    assert {"R@1", "prefilter_R@1", "two_stage_k1_R@10", "two_stage_k2_R@5"} <= set(out)
    assert f"two_stage_k{images}_R@1" not in out  # K >= the image count is exhaustive search
    for n in (1, 5, 10):  # K = 1 keeps the pre-filter's order (see two_stage_recall)
        assert out[f"two_stage_k1_R@{n}"] == out[f"prefilter_R@{n}"]


def test_freeze_all_but_prefilter_changes_only_the_prefilter(data_root, tmp_path):
    extra = ("model.freeze=[trunk,task_heads]", "prefilter.only=true", "schedule.max_steps=2")
    trainer = Trainer(fit_config(data_root, tmp_path, *extra))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("prefilter.") for k in changed)


def test_two_stage_recall_equals_exhaustive_when_k_covers_the_gallery():
    rng = np.random.default_rng(0)
    scores, prefilter = rng.standard_normal((30, 12)), rng.standard_normal((30, 12))
    gt = rng.integers(0, 12, size=30)
    assert two_stage_recall(scores, prefilter, gt, k=12) == recall_at_k(scores, gt)
    # K = 1 keeps the pre-filter's whole order: its first choice, then the rest as it ranked them.
    assert two_stage_recall(scores, prefilter, gt, k=1) == recall_at_k(prefilter, gt)
    middle = two_stage_recall(scores, prefilter, gt, k=5)
    assert middle != recall_at_k(scores, gt) and middle != recall_at_k(prefilter, gt)
