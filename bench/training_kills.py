"""SIGKILL trials against checkpointing: every resume must succeed and lose at most one interval.

`checkpoint_kill_trials` forks a writer that saves a tiny model through `save_rotating` (the
function `training.fit` uses) as fast as it can, so most kills land inside a checkpoint write, a
pointer update or a deletion; after each kill it checks what a resuming run would see.
`cli_kill_trials` does the same to the real `python -m training.fit` on the reference-format
fixture, then lets the last resume finish and compares its losses with an uninterrupted run.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class KillReport:
    trials: int = 0
    resumed_ok: int = 0  # `latest` named a complete checkpoint that loaded
    unloadable: list[str] = field(default_factory=list)  # any step-* directory that did not load
    max_lost_intervals: int = 0  # newest complete checkpoint minus the one `latest` names, in intervals
    leftovers_after_clean: int = 0  # hidden temp/trash entries still there after the start-up clean
    cleaned: int = 0  # temp/trash entries the start-up clean removed (kills inside a write)
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.resumed_ok == self.trials
            and not self.unloadable
            and self.max_lost_intervals <= 1
            and self.leftovers_after_clean == 0
        )


def _step(name: str) -> int:
    return int(name.rsplit("-", 1)[1])


def _writer(directory: str) -> None:  # the forked child: save step after step until killed
    import torch

    from vilbert.checkpoint import save_rotating
    from vilbert.config import preset
    from vilbert.heads import MultiTaskViLBERT

    d = Path(directory)
    torch.manual_seed(0)
    model = MultiTaskViLBERT(preset("tiny", v_feature_size=16))
    step = _step((d / "latest").read_text()) if (d / "latest").is_file() else 0
    while True:
        step += 1
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float(step))  # the weights say which step they belong to
        save_rotating(d, f"step-{step:07d}", model, keep_last=2, extra={"trainer_state.pt": {"step": step}})


def _inspect(directory: Path, report: KillReport, interval: int, weights_encode_step: bool = False) -> int:
    """After a kill: clean as a resuming run does, then check what it would load. Returns latest step."""
    import torch

    from vilbert.checkpoint import clean_checkpoint_dir, load_checkpoint

    report.cleaned += len(clean_checkpoint_dir(directory))
    report.leftovers_after_clean += sum(1 for p in directory.iterdir() if p.name.startswith("."))
    steps = sorted(p for p in directory.glob("step-*") if p.is_dir())
    for p in steps:
        try:
            load_checkpoint(p)
        except Exception as exc:  # anything unloadable is the failure this counts
            report.unloadable.append(f"{p.name}: {exc}")
    latest = 0
    if (directory / "latest").is_file():
        name = (directory / "latest").read_text().strip()
        try:
            ck = load_checkpoint(directory / name)
            state = torch.load(directory / name / "trainer_state.pt", map_location="cpu", weights_only=True)
            latest = _step(name)
            consistent = state["step"] == latest
            if weights_encode_step:  # the writer's weights all equal its step: a torn write would not
                first = next(iter(ck.model.parameters()))
                consistent = consistent and float(first.detach().flatten()[0]) == float(latest)
            if consistent:
                report.resumed_ok += 1
            else:
                report.unloadable.append(f"latest -> {name}: inconsistent trainer state or weights")
        except Exception as exc:
            report.unloadable.append(f"latest -> {name}: {exc}")
    elif not steps:
        report.resumed_ok += 1  # killed before the first save: a fresh start loses < 1 interval
    newest = _step(steps[-1].name) if steps else 0
    report.max_lost_intervals = max(report.max_lost_intervals, -(-(newest - latest) // interval))
    return latest


def checkpoint_kill_trials(directory: Path, trials: int = 20, seed: int = 0) -> KillReport:
    """Fork a checkpoint writer `trials` times and SIGKILL it at a random moment each time."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    ctx = multiprocessing.get_context("fork")
    report = KillReport()
    progress = []
    for _ in range(trials):
        child = ctx.Process(target=_writer, args=(str(directory),), daemon=True)
        child.start()
        time.sleep(rng.uniform(0.1, 0.5))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        report.trials += 1
        progress.append(_inspect(directory, report, interval=1, weights_encode_step=True))
    report.extra = {"last_step": progress[-1] if progress else 0, "steps_after_each_kill": progress}
    if any(b < a for a, b in itertools.pairwise(progress)):
        report.unloadable.append(f"progress went backwards: {progress}")
    return report


def cli_kill_trials(
    data_root: Path, out: Path, trials: int, seed: int = 0, every_steps: int = 1
) -> KillReport:
    """SIGKILL `python -m training.fit` `trials` times (resuming each time), then finish the run and
    compare its losses with an uninterrupted run of the same config."""
    tasks = "[vqa,visual7w,retrieval_coco,refcoco,nlvr2,snli_ve,guesswhat]"
    args = [
        f"data.root={data_root}",
        f"tasks={tasks}",
        "schedule.epochs=12",
        "optim.default_batch_size=2",
        f"checkpoint.every_steps={every_steps}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    def cli(run: Path, resume: bool) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "training.fit", "--config", "training/configs/tiny.yaml", f"out={run}"]
        cmd += args + (["--resume"] if resume else [])
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    started = time.monotonic()
    full = cli(out / "full", False)
    assert full.wait(timeout=900) == 0, full.stderr.read().decode()[-2000:]
    full_s = time.monotonic() - started
    rng = random.Random(seed)
    run, report = out / "killed", KillReport()
    ckpts = run / "checkpoints"
    proc = cli(run, False)
    finished_early = 0

    def latest() -> str:
        return (ckpts / "latest").read_text() if (ckpts / "latest").is_file() else ""

    while report.trials < trials:
        # Kill during training, not start-up: once this launch has written a checkpoint, then at a
        # random moment of the next second (checkpoint writes included: one per step).
        before = latest()
        while proc.poll() is None and latest() == before:
            time.sleep(0.01)
        deadline = time.monotonic() + rng.uniform(0.0, 1.0)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        if proc.poll() is not None:  # finished before this kill: start again from scratch
            finished_early += 1
            import shutil

            shutil.rmtree(run, ignore_errors=True)
            proc = cli(run, False)
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        report.trials += 1
        if ckpts.is_dir():
            _inspect(ckpts, report, every_steps)
        else:
            report.resumed_ok += 1
        proc = cli(run, (ckpts / "latest").is_file())
    code = proc.wait(timeout=900)
    same = False
    if code == 0:
        done = json.loads((run / "history.json").read_text())["loss"]
        want = json.loads((out / "full" / "history.json").read_text())["loss"]
        same = done.keys() == want.keys() and all(
            len(done[k]) == len(want[k])
            and all(abs(a[1] - b[1]) <= 1e-5 + 1e-5 * abs(b[1]) for a, b in zip(done[k], want[k]))
            for k in want
        )
    report.extra = {
        "final_exit": code,
        "losses_match_uninterrupted": same,
        "restarts_from_scratch": finished_early,
        "uninterrupted_run_s": full_s,
    }
    return report
