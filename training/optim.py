"""Optimiser and learning-rate schedule of the reference multi-task run (`train_tasks.py`).

- Base learning rate = the minimum over the selected tasks; each task's loss is scaled by
  task lr / base lr (x2 for the VQA-family tasks in the 12-task run).
- The classification/retrieval heads (`answer`, `answer_gqa`, `match`, `pair`, `triple`: the
  reference's `vil_*` parameters) use the higher head lr; the grounding head uses the base lr.
- AdamW, eps 1e-6, weight decay 0.01 except biases and LayerNorm weights.  (The reference's AdamW
  skips Adam's bias correction; torch's AdamW applies it — the one deliberate difference.)
- Linear warm-up over `warmup_proportion` of the steps, then linear decay to 0.
"""

from __future__ import annotations

import torch
from torch import nn

from vilbert.tasks import Head, Task

FAST_HEADS = (
    *(f"heads.{h}." for h in (Head.ANSWER, Head.ANSWER_GQA, Head.MATCH, Head.PAIR, Head.TRIPLE)),
    "prefilter.",  # the retrieval pre-filter (vilbert.heads.PrefilterHead) starts from scratch too
)


def base_lr(tasks: list[Task], multiplier: float = 1.0) -> float:
    return min(t.lr for t in tasks) * multiplier


def loss_scales(tasks: list[Task]) -> dict[str, float]:
    low = min(t.lr for t in tasks)
    return {t.slug: t.lr / low for t in tasks}


def _no_decay(name: str, param: nn.Parameter) -> bool:
    return param.ndim < 2 or name.endswith(".bias")  # biases and LayerNorm weights/biases


def build_optimizer(
    model: nn.Module,
    lr: float,
    head_lr: float,
    weight_decay: float,
    eps: float,
    betas: tuple[float, float],
    fused: bool = False,
    head_lr_scale: dict[str, float] | None = None,
) -> torch.optim.AdamW:
    """`fused`: one fused kernel per step over all parameters (else the multi-tensor `foreach` path).
    `head_lr_scale`: head name (a `Head` value) -> multiplier of `head_lr` for that head's parameters."""
    scale = dict(head_lr_scale or {})
    unknown = sorted(set(scale) - {h.value for h in Head})
    if unknown:
        raise ValueError(f"head_lr_scale: unknown head(s) {unknown}; heads: {[h.value for h in Head]}")
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group_lr = head_lr if name.startswith(FAST_HEADS) else lr
        head = name.split(".")[1] if name.startswith("heads.") else None
        if head in scale:
            group_lr = head_lr * scale[head]
        wd = 0.0 if _no_decay(name, param) else weight_decay
        groups.setdefault((group_lr, wd), []).append(param)
    param_groups = [{"params": p, "lr": g_lr, "weight_decay": wd} for (g_lr, wd), p in groups.items()]
    kernel = {"fused": True} if fused else {"foreach": True}
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, eps=eps, **kernel)


def warmup_linear(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_proportion: float
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = max(1, int(warmup_proportion * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
