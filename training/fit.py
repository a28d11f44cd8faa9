"""`python -m training.fit --config training/configs/NAME.yaml [key=value ...]`

The paper's multi-task regime, as the reference `train_tasks.py` runs it: round-robin batch-level sampling
over the selected tasks (each with its own batch size), a task token per dataset, dynamic
stop-and-go evaluated once per task epoch, loss scaling by task lr / base lr, AdamW with linear
warm-up and decay.  Checkpoints are written atomically every `checkpoint.every_steps` steps and
at each epoch (last K kept); `--resume` continues from the latest one with model, optimiser,
scheduler, DSG controllers, per-task data positions and RNG state restored.

Runs under `torchrun` too (DistributedDataParallel; gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from training.compute import autocast, peak_rss_bytes, resolve_precision
from training.config import FitConfig, ScheduleKind, TaskTokens
from training.datasets import LoaderConfig, build_dataset, split_names
from training.dsg import StopAndGo
from training.evaluation import evaluate_task
from training.finetune import (
    AnswerHeadPlan,
    apply_plans,
    inherited_meta,
    loader_widths,
    merged_answers,
    plan_answer_heads,
)
from training.optim import base_lr, build_optimizer, loss_scales, warmup_linear
from training.step import PrefilterObjective, forward_loss, remap_task_ids
from training.streams import TaskStream
from vilbert.checkpoint import (
    CONFIG_FILE,
    clean_checkpoint_dir,
    init_text_stream_from_hf_bert,
    load_checkpoint,
    save_checkpoint,
    save_rotating,
)
from vilbert.cli import ArgumentParser, run
from vilbert.config import preset
from vilbert.heads import MultiTaskViLBERT, with_feature_size, with_prefilter
from vilbert.io import atomic_write_text
from vilbert.tasks import TASKS, Endpoint, Head, Task, get_task, tasks_for_endpoint
from vilbert.tokenizer import load_tokenizer, minilm_dir

TRAINER_STATE = "trainer_state.pt"


class TaskStep(nn.Module):
    """forward(task, batch) -> (loss, logits); the module DDP wraps, so gradients synchronise."""

    def __init__(self, model: MultiTaskViLBERT, prefilter: PrefilterObjective | None = None) -> None:
        super().__init__()
        self.model = model
        self.prefilter = prefilter

    def forward(self, task: Task, batch):
        return forward_loss(self.model, task, batch, self.prefilter)


@dataclass
class History:
    """What the run did, for TensorBoard, the DSG picture and the final report."""

    loss: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    val: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    stopped: dict[str, list[tuple[int, bool]]] = field(default_factory=dict)


def token_map(tasks: list[Task], mode: TaskTokens) -> dict[int, int]:
    """Task id -> the task-token row it uses (per-head: the first task of that head in the table)."""
    if mode is not TaskTokens.HEAD:
        return {}
    first: dict[Head, int] = {}
    for t in TASKS:
        first.setdefault(t.head, t.task_id)
    return {t.task_id: first[t.head] for t in tasks}


def active_tasks(
    cfg: FitConfig, tasks: list[Task], step: int, steps_per_epoch: int, controllers: dict[str, StopAndGo]
) -> list[Task]:
    """Tasks that forward a batch at global iteration `step`, in round-robin order."""
    kind = cfg.schedule.kind
    match kind:
        case ScheduleKind.DSG:
            gap = cfg.schedule.iter_gap
            return [t for t in tasks if not controllers[t.slug].in_stop or step % gap == 0]
        case ScheduleKind.ROUND_ROBIN:
            return list(tasks)
        case ScheduleKind.CURRICULUM | ScheduleKind.ANTI_CURRICULUM:
            default = Endpoint.GROUND if kind is ScheduleKind.CURRICULUM else Endpoint.VQA
            group = cfg.schedule.first_group or default
            first = [t for t in tasks if t in tasks_for_endpoint(group)]
            in_first_phase = step < cfg.schedule.first_phase_epochs * steps_per_epoch
            return first if (in_first_phase and first) else list(tasks)
    raise ValueError(kind)


def data_summary(task: Task, train, val) -> str:
    """One line: which split trains and which validates, in examples and images, and their overlap."""
    train_images, val_images = set(train.image_ids()), set(val.image_ids())
    return (
        f"{task.slug}: trains on {train.split} ({len(train):,} examples, {len(train_images):,} images), "
        f"validates on {val.split} ({len(val):,} examples, {len(val_images):,} images); "
        f"{len(train_images & val_images):,} images in both"
    )


def _rng_state() -> dict:
    # Only the generators the loop draws from: torch (dropout) and Python's `random`.  Batches and
    # retrieval negatives come from seeded per-epoch generators and need no saved state.
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))


class Trainer:
    def __init__(self, cfg: FitConfig, resume: bool = False) -> None:
        self.cfg = cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        self.device = torch.device(
            f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        )
        if cfg.compute.threads:
            torch.set_num_threads(cfg.compute.threads)
        self.precision = resolve_precision(cfg.compute.precision, self.device)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.out = Path(cfg.out)
        self.ckpt_dir = self.out / "checkpoints"
        self.tasks = [get_task(s) for s in cfg.tasks]
        self.tokenizer = load_tokenizer()
        self.head_plans: dict[str, AnswerHeadPlan] = {}
        self.init_answers: dict[str, list[str]] = {}  # the starting checkpoint's answer lists
        self.init_meta: dict = {}
        self._build_data()
        self._build_model()
        self.scales = loss_scales(self.tasks)
        unknown = sorted(set(cfg.optim.loss_scale) - set(self.scales))
        if unknown:
            raise ValueError(f"optim.loss_scale: {unknown} not among the trained tasks {sorted(self.scales)}")
        self.scales = {k: v * float(cfg.optim.loss_scale.get(k, 1.0)) for k, v in self.scales.items()}
        lr = base_lr(self.tasks, cfg.optim.lr_multiplier)
        self.optimizer = build_optimizer(
            self.model,
            lr,
            cfg.optim.head_lr * cfg.optim.lr_multiplier,
            cfg.optim.weight_decay,
            cfg.optim.eps,
            cfg.optim.betas,
            fused=cfg.compute.fused_optimizer,
            head_lr_scale=cfg.optim.head_lr_scale,
        )
        self.iters = {t.slug: self.streams[t.slug].batches_per_epoch for t in self.tasks}
        self.steps_per_epoch = max(self.iters.values())
        self.total_steps = cfg.schedule.epochs * self.steps_per_epoch
        if cfg.schedule.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.schedule.max_steps)
        self.scheduler = warmup_linear(self.optimizer, self.total_steps, cfg.schedule.warmup_proportion)
        self.controllers = {t.slug: StopAndGo() for t in self.tasks}
        self.history = History()
        self.step = 0
        self.tokens = token_map(self.tasks, cfg.schedule.task_tokens)
        self.is_main = self.rank == 0
        self._clean_orphans()
        if resume:
            self._resume()

    # --- setup ---
    def _build_data(self) -> None:
        cfg = self.cfg
        root = Path(cfg.data.root)
        widths = {}
        if cfg.model.init_checkpoint:
            # Before any data is loaded: which answer heads keep the starting model's vocabulary and
            # which are rebuilt for the data's (training/finetune.py); targets as wide as the heads.
            init = Path(cfg.model.init_checkpoint)
            if not (init / CONFIG_FILE).is_file():
                raise FileNotFoundError(f"model.init_checkpoint {init}: not a checkpoint (no {CONFIG_FILE})")
            self.head_plans = plan_answer_heads(init, root, self.tasks)
            if self.rank == 0:
                for plan in self.head_plans.values():
                    print(plan.notice(), file=sys.stderr, flush=True)
            widths = loader_widths(init, self.head_plans)
        self.loader_cfg = loader_cfg = LoaderConfig.for_data_root(root, clean=cfg.data.clean, **widths)
        self.train_sets, self.val_sets, self.streams = {}, {}, {}
        for t in self.tasks:
            splits = split_names(t)
            self.train_sets[t.slug] = build_dataset(
                t, root, splits["train"], config=loader_cfg, tokenizer=self.tokenizer
            )
            self.val_sets[t.slug] = build_dataset(
                t, root, splits["val"], config=loader_cfg, tokenizer=self.tokenizer
            )
            bs = cfg.optim.batch_size.get(t.slug, cfg.optim.default_batch_size or t.batch_size)
            self.streams[t.slug] = TaskStream(
                self.train_sets[t.slug], max(1, bs // self.world), cfg.seed, t.task_id, self.rank, self.world
            )
            if self.rank == 0:
                print(data_summary(t, self.train_sets[t.slug], self.val_sets[t.slug]), file=sys.stderr)
        self.feature_dim = int(self.train_sets[self.tasks[0].slug][0].region_features.shape[-1])

    def answer_vocabularies(self) -> dict[str, list[str]]:
        """The trained tasks' vocabularies; the starting checkpoint's lists of the others are kept."""
        answers: dict[str, list[str]] = {}
        for t in self.tasks:
            vocab = getattr(self.train_sets[t.slug], "label2ans", None)
            if t.answer_vocab and vocab is not None:
                answers.setdefault(t.answer_vocab, list(vocab))
        return merged_answers(self.init_answers, answers)

    def checkpoint_meta(self) -> dict:
        """What every saved checkpoint records: the step, the config, what the starting one lacked."""
        trained = [t.answer_vocab for t in self.tasks if t.answer_vocab]
        return {
            "step": self.step,
            "fit_config": self.cfg.to_dict(),
            **inherited_meta(self.init_meta, trained),
        }

    def _build_model(self) -> None:
        spec = self.cfg.model
        if spec.init_checkpoint:
            init = load_checkpoint(spec.init_checkpoint)
            self.init_answers, self.init_meta = init.answers, init.meta
            model = apply_plans(init.model, self.head_plans)
            if model.config.v_feature_size != self.feature_dim:
                if not spec.reinit_feature_projection:
                    raise ValueError(
                        f"{spec.init_checkpoint} expects {model.config.v_feature_size}-d region "
                        f"features; the data has {self.feature_dim}-d (model.reinit_feature_projection"
                        "=true starts the region-feature projection afresh)"
                    )
                if self.rank == 0:
                    print(
                        f"region features: {spec.init_checkpoint} read {model.config.v_feature_size}-d, "
                        f"the data has {self.feature_dim}-d: the feature projection starts afresh",
                        file=sys.stderr,
                    )
                model = with_feature_size(model, self.feature_dim)
        else:
            overrides = {"v_feature_size": self.feature_dim, **spec.overrides}
            if self.cfg.schedule.task_tokens is TaskTokens.NONE:
                overrides["task_specific_tokens"] = False
            for t in self.tasks:  # answer heads sized to the data's vocabularies
                n = getattr(self.train_sets[t.slug], "num_answers", None)
                if n is not None and t.answer_vocab:
                    overrides.setdefault("num_answers" if t.answer_vocab == "vqa" else "num_answers_gqa", n)
            if self.cfg.prefilter.enabled:
                overrides.setdefault("prefilter_dim", self.cfg.prefilter.dim)
            model = MultiTaskViLBERT(preset(spec.preset, **overrides))
            if spec.text_init:
                init_text_stream_from_hf_bert(
                    model, minilm_dir() if spec.text_init == "minilm" else spec.text_init
                )
        if self.cfg.prefilter.enabled:
            model = with_prefilter(model, model.config.prefilter_dim or self.cfg.prefilter.dim)
        for part in spec.freeze:
            match part:
                case "word_embeddings":
                    emb = model.trunk.text_embeddings
                    for table in (emb.word, emb.position, emb.token_type):
                        table.requires_grad_(False)
                case "text_prefix":
                    model.trunk.text_layers[: model.config.text_prefix_layers].requires_grad_(False)
                case "trunk":
                    model.trunk.requires_grad_(False)
                case "task_heads":
                    model.heads.requires_grad_(False)
                case _:
                    raise ValueError(
                        f"model.freeze: unknown part {part!r} "
                        "(word_embeddings, text_prefix, trunk, task_heads)"
                    )
        self.model = model.to(self.device).train()
        self.model.trunk.activation_checkpointing = self.cfg.compute.activation_checkpointing
        pf = self.cfg.prefilter
        objective = (
            PrefilterObjective(pf.weight, pf.temperature, pf.detach_text, pf.only) if pf.enabled else None
        )
        step = TaskStep(self.model, objective)
        if self.world > 1:
            step = nn.parallel.DistributedDataParallel(step, find_unused_parameters=True)
        self.step_module = step

    # --- checkpoints ---
    def _clean_orphans(self) -> None:
        """What a run killed mid-write left (temp dirs, half-deleted checkpoints) is removed on start."""
        if self.is_main:
            clean_checkpoint_dir(self.ckpt_dir)

    def save(self, tag: str) -> Path:
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "controllers": {k: c.state_dict() for k, c in self.controllers.items()},
            "streams": {k: s.state_dict() for k, s in self.streams.items()},
            "rng": _rng_state(),
            "history": {"loss": self.history.loss, "val": self.history.val, "stopped": self.history.stopped},
        }
        return save_rotating(
            self.ckpt_dir,
            tag,
            self.model,
            self.cfg.checkpoint.keep_last,
            self.answer_vocabularies(),
            meta=self.checkpoint_meta(),
            extra={TRAINER_STATE: state},
        )

    def _resume(self) -> None:
        latest = self.ckpt_dir / "latest"
        if not latest.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint under {self.ckpt_dir}")
        path = self.ckpt_dir / latest.read_text().strip()
        ck = load_checkpoint(path)
        self.model.load_state_dict(ck.model.state_dict())
        state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for k, c in self.controllers.items():
            c.load_state_dict(state["controllers"][k])
        for k, s in self.streams.items():
            s.load_state_dict(state["streams"][k])
        _set_rng_state(state["rng"])
        h = state["history"]
        self.history = History(h["loss"], h["val"], h["stopped"])
        self.step = int(state["step"])
        if self.is_main:
            print(f"resumed from {path} at step {self.step}", file=sys.stderr)

    # --- the loop ---
    def validate(self, task: Task) -> float:
        result = evaluate_task(
            self.model,
            task,
            self.val_sets[task.slug],
            self.cfg.eval_batch_size,
            self.cfg.data.max_val_examples,
            token_map=self.tokens,
        )
        return result["score"]

    def run(self, stop_after: int | None = None) -> Path:
        """Train to the end (or stop after global step `stop_after`, leaving checkpoints to resume)."""
        cfg = self.cfg
        writer = None
        if self.is_main and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tensorboard"))
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="fit", disable=not (cfg.progress and self.is_main)
        )
        every = cfg.checkpoint.every_steps
        started = time.time()
        while self.step < self.total_steps:
            it = self.step
            for task in active_tasks(cfg, self.tasks, it, self.steps_per_epoch, self.controllers):
                batch = remap_task_ids(self.streams[task.slug].next_batch().to(self.device), self.tokens)
                with autocast(self.device, self.precision):
                    loss, _ = self.step_module(task, batch)
                (loss * self.scales[task.slug]).backward()
                if cfg.optim.max_grad_norm:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                value = float(loss.detach())
                self.history.loss.setdefault(task.slug, []).append((it, value))
                if writer:
                    writer.add_scalar(f"loss/{task.slug}", value, it)
            self.scheduler.step()
            self.step = it + 1
            bar.update(1)
            for task in self.tasks:
                if self.step % self.iters[task.slug] == 0 or self.step == self.total_steps:
                    score = self.validate(task)
                    self.history.val.setdefault(task.slug, []).append((self.step, score))
                    c = self.controllers[task.slug]
                    if cfg.schedule.kind is ScheduleKind.DSG:
                        c.step(score)
                    self.history.stopped.setdefault(task.slug, []).append((self.step, c.in_stop))
                    if writer:
                        writer.add_scalar(f"val/{task.slug}", score, self.step)
                        writer.add_scalar(f"dsg_stop/{task.slug}", float(c.in_stop), self.step)
            epoch_done = self.step % self.steps_per_epoch == 0
            if epoch_done and (self.step // self.steps_per_epoch - 1) in cfg.schedule.reset_dsg_at_epochs:
                for c in self.controllers.values():
                    c.reset()
            if self.is_main and (self.step % every == 0 or epoch_done or self.step == self.total_steps):
                self.save(f"step-{self.step:07d}")
            if self.world > 1:
                dist.barrier()
            if stop_after is not None and self.step >= stop_after:
                bar.close()
                return self.ckpt_dir / "latest"
        bar.close()
        if writer:
            writer.close()
        final = self.out / "model"
        if self.is_main:
            save_checkpoint(
                final,
                self.model,
                self.answer_vocabularies(),
                meta=self.checkpoint_meta(),
            )
            (self.out / "history.json").write_text(
                json.dumps(
                    {"loss": self.history.loss, "val": self.history.val, "stopped": self.history.stopped}
                )
            )
            from training.plots import plot_dsg, plot_losses
            from training.report import loss_trend, trend_markdown

            plot_dsg(self.history, self.out / "dsg_schedule.png")
            plot_losses(self.history, self.out / "loss_curves.png")
            trend = loss_trend(self.history.loss)
            summary = {
                "steps": self.step,
                "seconds": round(
                    time.time() - started, 1
                ),  # this process's loop (a resumed run: since resuming)
                "precision": self.precision.value,
                "activation_checkpointing": cfg.compute.activation_checkpointing,
                "fused_optimizer": cfg.compute.fused_optimizer,
                "parameters": sum(p.numel() for p in self.model.parameters()),
                "peak_rss_bytes": peak_rss_bytes(),
                "loss": trend,
            }
            atomic_write_text(self.out / "run_summary.json", json.dumps(summary, indent=2))
            print(
                f"{self.step} iterations in {summary['seconds']:.0f} s, {self.precision.value}, "
                f"peak memory {summary['peak_rss_bytes'] / 2**30:.2f} GiB (max RSS)\n"
                + trend_markdown(trend),
                file=sys.stderr,
            )
            if cfg.final_eval:
                from training.report import final_metrics, metrics_markdown

                rows = final_metrics(
                    self.model,
                    self.tasks,
                    Path(cfg.data.root),
                    self.loader_cfg,
                    cfg.eval_batch_size,
                    self.tokens,
                    cfg.final_eval_max_examples,
                    cfg.final_eval_max_captions,
                )
                (self.out / "metrics.json").write_text(json.dumps(rows, indent=2))
                (self.out / "metrics.md").write_text(metrics_markdown(rows))
        return final


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m training.fit", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML file (training/configs/*.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/latest")
    parser.add_argument("--stop-after", type=int, help="stop after this global step (time-boxed runs)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. schedule.epochs=2")
    args = parser.parse_intermixed_args(argv)
    try:
        cfg = FitConfig.load(args.config, args.overrides)
        trainer = Trainer(cfg, resume=args.resume)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t0 = time.time()
    final = trainer.run(stop_after=args.stop_after)
    if trainer.is_main:
        print(f"trained {trainer.step} steps in {time.time() - t0:.0f}s -> {final}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    run(main)
