"""How the step uses the hardware (training/compute.py, `compute:` in the fit config), and starting
from a checkpoint that read region features of another width (the CC pretrained ViLBERT)."""

from __future__ import annotations

import json

import pytest
import torch

from testkit.release_files import fake_official_state_dict
from tests.training.test_fit import tiny_config
from training.compute import autocast, cpu_has_native_bf16, resolve_precision
from training.config import Precision
from training.fit import Trainer
from training.step import forward_loss
from vilbert.checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from vilbert.config import preset
from vilbert.tasks import TASKS, get_task


def _grads(trainer: Trainer, task, batch, *, checkpointing: bool) -> dict[str, torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    trainer.model.trunk.activation_checkpointing = checkpointing
    torch.manual_seed(7)  # the same dropout masks in both runs (checkpoint replays the RNG state)
    loss, _ = forward_loss(trainer.model, task, batch)
    loss.backward()
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_gives_the_same_loss_gradients(data_root, tmp_path):
    trainer = Trainer(tiny_config(data_root, tmp_path / "run"))
    task = get_task("vqa")
    batch = trainer.streams["vqa"].next_batch()
    plain = _grads(trainer, task, batch, checkpointing=False)
    recomputed = _grads(trainer, task, batch, checkpointing=True)
    assert plain.keys() == recomputed.keys() and any("text_layers" in n for n in plain)
    for name, grad in plain.items():
        torch.testing.assert_close(recomputed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_bf16_autocast_loss_tracks_fp32_on_the_same_batch(data_root, tmp_path):
    trainer = Trainer(tiny_config(data_root, tmp_path / "run"))
    trainer.model.eval()  # no dropout: the two forwards see the same network
    for slug in ("vqa", "refcoco", "nlvr2", "retrieval_coco"):
        task = get_task(slug)
        batch = trainer.streams[slug].next_batch()
        with torch.no_grad():
            full, _ = forward_loss(trainer.model, task, batch)
            with autocast(torch.device("cpu"), Precision.BF16):
                half, logits = forward_loss(trainer.model, task, batch)
        assert logits.dtype == torch.bfloat16 and half.dtype == torch.float32  # loss computed in fp32
        assert abs(float(half) - float(full)) <= 0.02 * abs(float(full)) + 1e-3, slug


def test_bf16_fused_checkpointed_run_trains_all_twelve_and_reports_memory_and_losses(data_root, tmp_path):
    every = ",".join(t.slug for t in TASKS)
    cfg = tiny_config(
        data_root,
        tmp_path / "run",
        f"tasks=[{every}]",
        "schedule.epochs=2",
        "compute.precision=bf16",
        "compute.fused_optimizer=true",
        "compute.activation_checkpointing=true",
    )
    trainer = Trainer(cfg)
    assert trainer.model.trunk.activation_checkpointing
    assert all(group.get("fused") for group in trainer.optimizer.param_groups)
    final = trainer.run()
    summary = json.loads((tmp_path / "run" / "run_summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["activation_checkpointing"] is True
    assert summary["peak_rss_bytes"] > 100 * 2**20  # a torch process: well over 100 MiB
    assert set(summary["loss"]) == {t.slug for t in TASKS}
    assert (tmp_path / "run" / "loss_curves.png").stat().st_size > 1000
    ck = load_checkpoint(final)  # weights stay fp32 under autocast
    assert all(p.dtype == torch.float32 for p in ck.model.parameters())


def test_auto_precision_is_bf16_only_where_the_cpu_multiplies_bf16(tmp_path, monkeypatch):
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor : 0\nflags : fpu sse avx2 avx512f\n")
    assert cpu_has_native_bf16(with_bf16) and not cpu_has_native_bf16(without)
    cpu = torch.device("cpu")
    monkeypatch.setattr("training.compute.cpu_has_native_bf16", lambda: True)
    assert resolve_precision(Precision.AUTO, cpu) is Precision.BF16
    monkeypatch.setattr("training.compute.cpu_has_native_bf16", lambda: False)
    assert resolve_precision(Precision.AUTO, cpu) is Precision.FP32
    assert resolve_precision(Precision.BF16, cpu) is Precision.BF16  # asked for: kept, with a notice


def test_pretrained_checkpoint_with_wider_region_features_starts_that_projection_afresh(data_root, tmp_path):
    """The CC pretrained ViLBERT reads 2048-d features, the synthetic detector writes 256-d ones: with
    model.reinit_feature_projection the feature projection starts afresh and every other imported
    weight is kept; without it the mismatch is an error that names the option."""
    width = Trainer(tiny_config(data_root, tmp_path / "probe")).feature_dim
    cfg = preset("tiny", v_feature_size=width + 8)
    torch.save(fake_official_state_dict(cfg, pretrained=True), tmp_path / "pretrained_model.bin")
    imported, _ = load_pretrained(tmp_path / "pretrained_model.bin", cfg)
    save_checkpoint(tmp_path / "cc", imported, {})
    start = f"model.init_checkpoint={tmp_path / 'cc'}"
    with pytest.raises(ValueError, match="reinit_feature_projection"):
        Trainer(tiny_config(data_root, tmp_path / "strict", start))
    trainer = Trainer(tiny_config(data_root, tmp_path / "run", start, "model.reinit_feature_projection=true"))
    assert trainer.model.config.v_feature_size == width
    ours, theirs = trainer.model.state_dict(), imported.state_dict()
    assert ours["trunk.image_embeddings.features.weight"].shape[1] == width
    for key in ("trunk.text_layers.0.attention.query.weight", "trunk.image_embeddings.locations.weight"):
        if key in theirs:
            torch.testing.assert_close(ours[key], theirs[key], msg=key)
    same = [k for k in theirs if k in ours and not k.startswith("trunk.image_embeddings.features.")]
    assert same and all(torch.equal(ours[k], theirs[k]) for k in same if k.startswith("trunk."))
    trainer.run()
    assert load_checkpoint(tmp_path / "run" / "model").model.config.v_feature_size == width
