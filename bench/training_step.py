"""The training step: ours (bf16 autocast where the CPU multiplies bf16, fused AdamW) against the
reference implementation's forward + loss + backward in fp32, on the same batch and weights.

Our eager PyTorch model is numerically equal to the reference implementation (the converted release
matches it to 2.1e-5), so its fp32 forward + loss + backward stands in for the reference's step.  Ours
is timed as the whole step, optimiser included (lr 0, so both alternatives see the same weights at
every repetition); a third row is ours without the optimiser, the like-for-like comparison.  Timed
round-robin (bench/timing.interleaved).

The loss curves: the same initial weights trained for `steps` AdamW steps on the same cycle of
batches, in fp32 twice (dropout seeds 0 and 1: the run-to-run noise) and in bf16 (seed 0).  bf16
matches "within noise" when its mean distance to the fp32 curve is at most twice the distance
between the two fp32 curves.

    python -m bench --only training        (or python -m bench.training_step for this alone)
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from bench.timing import interleaved
from training.compute import autocast, cpu_has_native_bf16
from training.config import Precision
from training.step import task_loss
from vilbert.config import preset as make_preset
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import get_task


def vqa_batches(cfg, batch: int, count: int, tokens: int = 24, regions: int = 37, seed: int = 0):
    """`count` VQA-shaped batches: random tokens and region features, sparse soft-score targets."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        target = torch.zeros(batch, cfg.num_answers)
        target[torch.arange(batch), torch.randint(0, cfg.num_answers, (batch,), generator=g)] = 1.0
        out.append(
            {
                "input_ids": torch.randint(1000, 20000, (batch, tokens), generator=g),
                "attention_mask": torch.ones(batch, tokens, dtype=torch.long),
                "task_ids": torch.full((batch,), get_task("vqa").task_id),
                "region_features": torch.rand(batch, regions, cfg.v_feature_size, generator=g),
                "region_locations": torch.rand(batch, regions, 5, generator=g),
                "region_mask": torch.ones(batch, regions, dtype=torch.long),
                "target": target,
            }
        )
    return out


def vqa_loss(model: MultiTaskViLBERT, b: dict) -> torch.Tensor:
    """The VQA loss of training/step.py (`task_loss`: BCE mean x answers, in fp32) on one batch."""
    task = get_task("vqa")
    inputs = {k: v for k, v in b.items() if k != "target"}
    logits = model.head_logits(task.head, model.trunk(**inputs), b["region_mask"], 1)
    return task_loss(task, logits, SimpleNamespace(target=b["target"]))


def _step(model, b, precision: Precision, optimizer=None) -> float:
    with autocast(torch.device("cpu"), precision):
        loss = vqa_loss(model, b)
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def loss_curves(model: MultiTaskViLBERT, batches: list[dict], steps: int, lr: float) -> dict:
    start = copy.deepcopy(model.state_dict())
    curves = {}
    for name, precision, seed in (
        ("fp32", Precision.FP32, 0),
        ("fp32_seed1", Precision.FP32, 1),
        ("bf16", Precision.BF16, 0),
    ):
        model.load_state_dict(start)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
        torch.manual_seed(seed)
        curves[name] = [_step(model, batches[i % len(batches)], precision, opt) for i in range(steps)]
    model.load_state_dict(start)

    def distance(a: str, b: str) -> float:
        return sum(abs(x - y) for x, y in zip(curves[a], curves[b], strict=True)) / steps

    noise, gap = distance("fp32", "fp32_seed1"), distance("bf16", "fp32")
    return {
        "steps": steps,
        "lr": lr,
        "curves": curves,
        "fp32_noise": noise,  # mean |fp32(seed 0) - fp32(seed 1)| per step
        "bf16_vs_fp32": gap,  # mean |bf16(seed 0) - fp32(seed 0)| per step
        "within_noise": gap <= 2 * noise,
    }


def measure(
    preset: str = "base",
    batch: int = 8,
    repeats: int = 5,
    curve_steps: int = 16,
    threads: int | None = None,
    log=print,
) -> dict:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = make_preset(preset)
    model = MultiTaskViLBERT(cfg).train()
    ours = Precision.BF16 if cpu_has_native_bf16() else Precision.FP32
    batches = vqa_batches(cfg, batch, 4)
    b = batches[0]
    frozen = torch.optim.AdamW(model.parameters(), lr=0.0, fused=True)  # same weights every repetition
    log(f"training step, {preset} (batch {batch}): reference fp32 vs ours ({ours.value}, fused AdamW) ...")
    timings = interleaved(
        {
            "reference_fp32_fwd_loss_bwd": lambda: _step(model, b, Precision.FP32),
            "ours_fwd_loss_bwd": lambda: _step(model, b, ours),
            "ours_full_step": lambda: _step(model, b, ours, frozen),
        },
        repeats=repeats,
    )
    rows = {
        name: {"seconds": t.median, "examples_per_s": batch / t.median, "spread": t.spread}
        for name, t in timings.items()
    }
    for name, row in rows.items():
        log(f"  {name}: {row['examples_per_s']:.2f} examples/s (±{row['spread']:.0%})")
    ref = rows["reference_fp32_fwd_loss_bwd"]["examples_per_s"]
    out = {
        "preset": preset,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch": batch,
        "precision": ours.value,
        "rows": rows,
        "speedup_full_step": rows["ours_full_step"]["examples_per_s"] / ref,
        "speedup_fwd_loss_bwd": rows["ours_fwd_loss_bwd"]["examples_per_s"] / ref,
    }
    if curve_steps:
        log(f"  loss curves: fp32 x2 (dropout seeds) vs bf16, {curve_steps} steps ...")
        out["loss_curves"] = loss_curves(model, batches, curve_steps, lr=5e-5)
        lc = out["loss_curves"]
        log(
            f"  bf16 vs fp32 {lc['bf16_vs_fp32']:.4f} per step, fp32 seed noise {lc['fp32_noise']:.4f}: "
            f"{'within' if lc['within_noise'] else 'NOT within'} noise"
        )
    return out


def markdown(t: dict | None) -> list[str]:
    if not t:
        return ["Not measured in this run (`python -m bench --only training`)."]
    if "error" in t:
        return [f"Failed: {t['error']}"]
    lines = [
        f"`{t['preset']}` preset ({t['parameters'] / 1e6:.0f}M parameters), VQA batch of {t['batch']}, "
        f"the same batch and weights for every row; ours runs in **{t['precision']}** "
        "(bf16 autocast where the CPU multiplies bf16 natively; weights, gradients and loss fp32).",
        "",
        "| step | examples/s | spread | vs reference |",
        "|---|---:|---:|---:|",
    ]
    ref = t["rows"]["reference_fp32_fwd_loss_bwd"]["examples_per_s"]
    labels = {
        "reference_fp32_fwd_loss_bwd": "reference: fp32 forward + loss + backward",
        "ours_fwd_loss_bwd": f"ours: {t['precision']} forward + loss + backward",
        "ours_full_step": f"ours: {t['precision']} forward + loss + backward + fused AdamW step",
    }
    for name, row in t["rows"].items():
        lines.append(
            f"| {labels[name]} | {row['examples_per_s']:.2f} | {row['spread']:.0%} | "
            f"{row['examples_per_s'] / ref:.2f}x |"
        )
    lc = t.get("loss_curves")
    if lc:
        lines += [
            "",
            f"Loss curves over {lc['steps']} AdamW steps (lr {lc['lr']:g}) from the same weights: bf16 is "
            f"{lc['bf16_vs_fp32']:.4f} per step from fp32, two fp32 runs (dropout seeds 0/1) are "
            f"{lc['fp32_noise']:.4f} apart: **{'within' if lc['within_noise'] else 'not within'} noise** "
            "(bf16 counts as within when at most twice the fp32 seed distance). First/last loss: "
            + ", ".join(f"{k} {v[0]:.3f} → {v[-1]:.3f}" for k, v in lc["curves"].items())
            + ".",
        ]
    return lines


if __name__ == "__main__":
    import json

    print(json.dumps(measure(), indent=2))
