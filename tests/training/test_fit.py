"""The multi-task loop on the tiny preset over the reference-format fixture."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.config import FitConfig, ScheduleKind
from training.dsg import StopAndGo
from training.fit import Trainer, active_tasks
from vilbert.checkpoint import load_checkpoint
from vilbert.tasks import TASKS as ALL_TASKS
from vilbert.tasks import get_task

TASKS = "[vqa,visual7w,retrieval_coco,refcoco,nlvr2,snli_ve,guesswhat]"
ROOT = Path(__file__).resolve().parents[2]


def tiny_config(data_root, out, *extra):
    return FitConfig.load(
        ROOT / "training/configs/tiny.yaml",
        [
            f"data.root={data_root}",
            f"out={out}",
            f"tasks={TASKS}",
            "schedule.epochs=4",
            "optim.default_batch_size=2",
            *extra,
        ],
    )


def test_reference_controller_trace():
    """The reference author's test: 10,20,30,40,50,50,50 stops at the third 50; a drop goes again."""
    c = StopAndGo()
    modes = [c.step(s) and c.in_stop for s in (10, 20, 30, 40, 50, 50, 50)]
    assert modes == [False] * 6 + [True] and c.in_stop
    c2 = StopAndGo(continue_threshold=0.01)
    for s in (10, 20, 30, 40, 50, 50, 50):
        c2.step(s)
    c2.step(50)  # cooldown evaluation
    c2.step(49)
    assert not c2.in_stop


def test_dsg_stopped_task_trains_every_iter_gap(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path)
    tasks = [get_task("vqa"), get_task("refcoco")]
    ctl = {"vqa": StopAndGo(), "refcoco": StopAndGo(in_stop=True)}
    seen = [[t.slug for t in active_tasks(cfg, tasks, i, 10, ctl)] for i in range(5)]
    assert seen == [["vqa", "refcoco"], ["vqa"], ["vqa"], ["vqa"], ["vqa", "refcoco"]]
    cfg.schedule.kind = ScheduleKind.ANTI_CURRICULUM
    assert [t.slug for t in active_tasks(cfg, tasks, 0, 10, ctl)] == ["vqa"]
    assert [t.slug for t in active_tasks(cfg, tasks, 10, 10, ctl)] == ["vqa", "refcoco"]


def test_fit_trains_all_twelve_tasks_and_writes_a_loadable_checkpoint(data_root, tmp_path):
    every = [t.slug for t in ALL_TASKS]
    trainer = Trainer(tiny_config(data_root, tmp_path / "run", f"tasks=[{','.join(every)}]"))
    final = trainer.run()
    ck = load_checkpoint(final)
    assert ck.meta["step"] == trainer.total_steps
    assert set(trainer.history.loss) == set(every) and len(every) == 12
    assert "vqa" in ck.answers  # the answer vocabulary travels with the checkpoint
    assert (tmp_path / "run" / "dsg_schedule.png").stat().st_size > 1000
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert len(kept) == 2  # keep_last


def test_loss_falls_on_a_repeated_batch(data_root, tmp_path):
    trainer = Trainer(tiny_config(data_root, tmp_path / "run"))
    task = get_task("snli_ve")
    batch = trainer.streams["snli_ve"].next_batch()
    opt = torch.optim.AdamW(trainer.model.parameters(), lr=1e-3)  # no warm-up: a plain check
    losses = []
    for _ in range(60):
        loss, _ = trainer.step_module(task, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_interrupted_and_resumed_run_matches_the_uninterrupted_one(data_root, tmp_path):
    full = Trainer(tiny_config(data_root, tmp_path / "full"))
    full.run()
    part = Trainer(tiny_config(data_root, tmp_path / "part"))
    part.run(stop_after=part.steps_per_epoch * 2)  # a checkpoint is written at each epoch end
    resumed = Trainer(tiny_config(data_root, tmp_path / "part"), resume=True)
    assert resumed.step == part.steps_per_epoch * 2
    resumed.run()
    assert resumed.history.loss.keys() == full.history.loss.keys()
    for slug, points in full.history.loss.items():
        torch.testing.assert_close(
            torch.tensor(resumed.history.loss[slug]), torch.tensor(points), rtol=1e-5, atol=1e-6, msg=slug
        )


def test_unknown_task_or_key_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="unknown task 'vqa9'"):
        FitConfig.load(None, ["tasks=[vqa9]"])
    with pytest.raises(ValueError, match=r"schedule\.kindd"):
        FitConfig.load(None, ["schedule.kindd=dsg"])


def test_12in1_config_fails_clearly_because_the_data_is_absent(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "training.fit",
            "--config",
            "training/configs/12in1.yaml",
            f"data.root={tmp_path / 'nothing'}",
            f"out={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2
    assert "error:" in out.stderr and "nothing" in out.stderr


@pytest.mark.slow
def test_torchrun_two_processes_trains_and_rank0_checkpoint_loads(data_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        "-m",
        "training.fit",
        "--config",
        "training/configs/tiny.yaml",
        f"data.root={data_root}",
        f"out={tmp_path / 'ddp'}",
        f"tasks={TASKS}",
        "schedule.epochs=2",
        "optim.default_batch_size=2",
        # base-synthetic.yaml's compute settings, under DDP
        "compute.precision=bf16",
        "compute.fused_optimizer=true",
        "compute.activation_checkpointing=true",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert load_checkpoint(tmp_path / "ddp" / "model").meta["step"] > 0
    assert json.loads((tmp_path / "ddp" / "run_summary.json").read_text())["precision"] == "bf16"


def test_evaluate_cli_writes_a_table_and_json(data_root, tmp_path):
    from training.evaluate import main as evaluate_main

    trainer = Trainer(tiny_config(data_root, tmp_path / "run", "schedule.epochs=1"))
    final = trainer.run()
    assert (
        evaluate_main(
            [
                "--checkpoint",
                str(final),
                "--split",
                "val",
                "--tasks",
                "vqa",
                "retrieval_coco",
                "--out",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "eval.json").read_text())
    assert set(results) == {"vqa", "retrieval_coco"}
    assert 0.0 <= results["vqa"]["score"] <= 100.0 and results["retrieval_coco"]["examples"] > 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_loses_nothing(data_root, tmp_path):
    """SIGKILL the real CLI at random moments (checkpoint writes included, every step saves);
    every checkpoint left behind loads, and the resumed run ends with the uninterrupted run's losses."""
    import random
    import signal
    import time

    args = [
        f"data.root={data_root}",
        f"tasks={TASKS}",
        "schedule.epochs=6",
        "optim.default_batch_size=2",
        "checkpoint.every_steps=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def cli(out, resume=False):
        cmd = [
            sys.executable,
            "-m",
            "training.fit",
            "--config",
            "training/configs/tiny.yaml",
            f"out={out}",
            *args,
        ] + (["--resume"] if resume else [])
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    started = time.monotonic()
    full = cli(tmp_path / "full")
    assert full.wait(timeout=300) == 0
    # kill moments are fractions of the uninterrupted run's wall time, so a fast machine
    # cannot finish the run before the first kill
    full_s = time.monotonic() - started
    rng = random.Random(0)
    run, kills = tmp_path / "killed", 0
    proc = cli(run)
    while kills < 3:
        deadline = time.time() + rng.uniform(0.3, 0.75) * full_s
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is not None:
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        ckpts = run / "checkpoints"
        for step_dir in ckpts.glob("step-*"):
            load_checkpoint(step_dir)  # nothing unloadable is ever left behind
        proc = cli(run, resume=(ckpts / "latest").is_file())
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()[-2000:]
    assert kills >= 1
    assert not list((run / "checkpoints").glob(".*.tmp-*"))  # orphaned temp dirs cleaned up
    done = json.loads((run / "history.json").read_text())["loss"]
    want = json.loads((tmp_path / "full" / "history.json").read_text())["loss"]
    assert done.keys() == want.keys()
    for slug in want:
        torch.testing.assert_close(torch.tensor(done[slug]), torch.tensor(want[slug]), rtol=1e-5, atol=1e-6)


def test_ablation_runner_writes_the_comparison_table(data_root, tmp_path):
    from training.ablations import main as ablations_main

    doc = tmp_path / "results.md"
    code = ablations_main(
        [
            "--config",
            str(ROOT / "training/configs/tiny.yaml"),
            "--out",
            str(tmp_path / "abl"),
            "--variants",
            "all_task",
            "no_dsg",
            "single_task",
            "--doc",
            str(doc),
            f"data.root={data_root}",
            "tasks=[snli_ve,refcoco]",
            "schedule.max_steps=3",
            "optim.default_batch_size=2",
        ]
    )
    assert code == 0
    text = doc.read_text()
    assert "| all_task |" in text and "| no_dsg |" in text and "| single_task |" in text
    assert "python -m training.fit" in text and "tasks=[refcoco]" in text
    row = next(line for line in text.splitlines() if line.startswith("| all_task |"))

    # A second pass reuses the finished all-task run (same config) and rewrites only its section.
    doc.write_text("# Results\n\nhand-written intro\n\n" + text + "\nhand-written conclusion\n")
    common = [
        "--config",
        str(ROOT / "training/configs/tiny.yaml"),
        "--out",
        str(tmp_path / "abl2"),
        "--doc",
        str(doc),
        f"data.root={data_root}",
        "tasks=[snli_ve,refcoco]",
        "optim.default_batch_size=2",
    ]
    reuse = ["--variants", "all_task", "--reuse", f"all_task={tmp_path / 'abl' / 'all_task'}"]
    assert ablations_main([*common, *reuse, "schedule.max_steps=3"]) == 0
    again = doc.read_text()
    assert again.startswith("# Results\n\nhand-written intro") and again.endswith("hand-written conclusion\n")
    assert again.count("<!-- ablations:start -->") == 1 and row in again
    assert "| no_dsg |" not in again and not (tmp_path / "abl2" / "all_task").exists()
    # ...but refuses a run whose config differs.
    with pytest.raises(SystemExit, match=r"max_steps|schedule"):
        ablations_main([*common, *reuse, "schedule.max_steps=4"])
