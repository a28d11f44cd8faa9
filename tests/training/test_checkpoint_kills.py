"""SIGKILL during checkpoint writes (bench/training_kills.py): a forked writer saves a tiny model
through `save_rotating` (what training.fit uses) back to back and is killed at random moments, so
kills land inside weight writes, renames, pointer updates and deletions.  After every kill a
resuming run finds `latest` complete and consistent, loses at most one interval, and the start-up
clean leaves no temp or half-deleted directory."""

from __future__ import annotations

import contextlib
import os

from bench.training_kills import checkpoint_kill_trials
from vilbert.checkpoint import clean_checkpoint_dir, remove_checkpoint


def test_sigkills_during_checkpoint_writes(tmp_path):
    """12 kills here (python -m bench.reliability runs more)."""
    report = checkpoint_kill_trials(tmp_path / "checkpoints", trials=12, seed=0)
    assert report.trials == 12
    assert report.ok, report
    assert report.extra["last_step"] > 0  # the writer made progress across the kills
    assert report.cleaned > 0  # some kills did land inside a write or a deletion


def test_clean_restores_a_checkpoint_caught_between_two_renames(tmp_path):
    (tmp_path / ".step-0000003.old-123").mkdir()
    (tmp_path / ".step-0000003.old-123" / "model.safetensors").write_bytes(b"x")
    (tmp_path / ".step-0000004.tmp-abc").mkdir()
    (tmp_path / ".step-0000001.trash-9").mkdir()
    (tmp_path / ".latest.tmp").write_text("step-0000004")
    removed = clean_checkpoint_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-0000003"]
    assert len(removed) == 3


def test_remove_checkpoint_never_leaves_a_partial_directory(tmp_path, monkeypatch):
    step = tmp_path / "step-0000002"
    step.mkdir()
    (step / "model.safetensors").write_bytes(b"x")

    def crash(path, ignore_errors=False):  # killed in the middle of the deletion
        os.remove(os.path.join(path, "model.safetensors"))
        raise KeyboardInterrupt

    monkeypatch.setattr("vilbert.checkpoint.shutil.rmtree", crash)
    with contextlib.suppress(KeyboardInterrupt):
        remove_checkpoint(step)
    assert not step.exists()  # only a hidden trash name is left, which clean_checkpoint_dir removes
    monkeypatch.undo()
    clean_checkpoint_dir(tmp_path)
    assert list(tmp_path.iterdir()) == []
