"""Fine-tuning a trained checkpoint on new data (`training.fit` with `model.init_checkpoint`).

The answer heads are the one part whose shape follows the data: a head's outputs are the answers
of its vocabulary.  Before any data is loaded, `plan_answer_heads` compares, for each answer
vocabulary a selected task reads (`vqa`: VQA and VG QA; `gqa`: GQA), the data's vocabulary
(`cache/trainval_label2ans.pkl`) with the checkpoint's list (`answers/<name>.json`):

* the same list: the head is kept;
* a different one: the head's output layer is rebuilt at the data's width (one notice line); rows of
  answers both lists hold keep their weights, the rest start from the initialisation, and the
  hidden layers are kept;
* a checkpoint without a list (the pretrained model, or a release converted without its pickles):
  the head is kept whenever the data's answers fit its outputs (its first outputs take them, as the
  reference's 3129-wide head takes its caches), and rebuilt only when they do not.

Heads and answer lists of the vocabularies no selected task reads are kept, and saved with the
fine-tuned model (`merged_answers`), as is the record of a list the checkpoint never had.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from training.datasets.base import read_pickle
from training.datasets.layout import datasets_dir, get_layout
from vilbert.checkpoint import ANSWERS_DIR, CONFIG_FILE
from vilbert.config import ViLBERTConfig
from vilbert.heads import MLPClassifier, MultiTaskViLBERT
from vilbert.modeling import init_weights
from vilbert.tasks import TASKS, Task

# Answer vocabulary -> (its head module under `model.heads`, its width field in ViLBERTConfig)
VOCAB_HEADS = {"vqa": ("answer", "num_answers"), "gqa": ("answer_gqa", "num_answers_gqa")}
LOADER_WIDTHS = {"vqa": "vqa_num_answers", "gqa": "gqa_num_answers"}


@dataclass(frozen=True)
class AnswerHeadPlan:
    """What happens to one answer head when a checkpoint is fine-tuned on a data root."""

    vocab: str  # "vqa" | "gqa"
    tasks: tuple[str, ...]  # the selected tasks that read it
    head_width: int  # the checkpoint's outputs
    old_answers: tuple[str, ...] | None  # the checkpoint's list (None: it has none)
    new_answers: tuple[str, ...]  # the data's vocabulary

    @property
    def rebuild(self) -> bool:
        if self.old_answers is None:
            return len(self.new_answers) > self.head_width
        return self.new_answers != self.old_answers

    @property
    def width(self) -> int:
        """The head's outputs for this run (the loaders' target width)."""
        return len(self.new_answers) if self.rebuild else self.head_width

    @property
    def shared(self) -> int:
        """Answers both lists hold (their output rows keep the checkpoint's weights)."""
        return len(set(self.new_answers) & set(self.old_answers or ()))

    def notice(self) -> str:
        """One line: the head kept, or rebuilt and why (and which other tasks read it)."""
        head = VOCAB_HEADS[self.vocab][0]
        if not self.rebuild and self.old_answers is None:
            return (
                f"{head} head kept ({self.head_width:,} outputs): the checkpoint has no {self.vocab} answer "
                f"list; the data's {len(self.new_answers):,} answers take its first outputs"
            )
        if not self.rebuild:
            return (
                f"{head} head kept: the data's {self.vocab} vocabulary is the checkpoint's "
                f"({self.width:,} answers)"
            )
        if self.old_answers is None:
            why = (
                f"the checkpoint has no {self.vocab} answer list and {self.head_width:,} outputs, "
                f"fewer than the data's {len(self.new_answers):,} answers"
            )
        else:
            old, new = len(self.old_answers), len(self.new_answers)
            why = f"{self.vocab} vocabulary changed: {old:,} -> {new:,} answers"
        others = sorted(t.slug for t in TASKS if t.answer_vocab == self.vocab and t.slug not in self.tasks)
        verbs = ("reads", "answers") if len(others) == 1 else ("read", "answer")
        also = (
            f"; {', '.join(others)} {verbs[0]} this head too and now {verbs[1]} from this vocabulary"
            if others
            else ""
        )
        return (
            f"{head} head re-initialised for {', '.join(self.tasks)} ({why}; {self.shared:,} answers in both "
            f"keep their weights, {len(self.new_answers) - self.shared:,} start fresh){also}"
        )


def data_answers(task: Task, data_root: str | Path) -> tuple[str, ...]:
    """The answer vocabulary `task`'s loader reads from `data_root` (index -> answer)."""
    path = get_layout(task).cache(datasets_dir(data_root)) / "trainval_label2ans.pkl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{task.slug}: answer vocabulary not found: {path} (python -m training.prepare writes it)"
        )
    return tuple(str(a) for a in read_pickle(path))


def checkpoint_answers(checkpoint: str | Path) -> dict[str, list[str]]:
    """The answer lists saved with a checkpoint (`answers/<vocab>.json`), without loading weights."""
    folder = Path(checkpoint) / ANSWERS_DIR
    if not folder.is_dir():
        return {}
    return {f.stem: [str(a) for a in json.loads(f.read_text())] for f in sorted(folder.glob("*.json"))}


def plan_answer_heads(
    checkpoint: str | Path, data_root: str | Path, tasks: list[Task]
) -> dict[str, AnswerHeadPlan]:
    """One plan per answer vocabulary the selected tasks read (reads vocabularies, no data)."""
    cfg = ViLBERTConfig.load(Path(checkpoint) / CONFIG_FILE)
    saved = checkpoint_answers(checkpoint)
    plans: dict[str, AnswerHeadPlan] = {}
    for vocab in sorted({t.answer_vocab for t in tasks if t.answer_vocab}):
        readers = [t for t in tasks if t.answer_vocab == vocab]
        lists = {t.slug: data_answers(t, data_root) for t in readers}
        if len(set(lists.values())) > 1:
            raise ValueError(
                f"{', '.join(lists)} share the {vocab} answer head but their vocabularies differ; "
                "build them from one vocabulary (VG QA is built on VQA's)"
            )
        old = saved.get(vocab)
        plans[vocab] = AnswerHeadPlan(
            vocab,
            tuple(lists),
            int(getattr(cfg, VOCAB_HEADS[vocab][1])),
            None if old is None else tuple(old),
            next(iter(lists.values())),
        )
    return plans


def loader_widths(checkpoint: str | Path, plans: Mapping[str, AnswerHeadPlan]) -> dict[str, int]:
    """`LoaderConfig` answer widths: the planned head widths, the checkpoint's for the others."""
    cfg = ViLBERTConfig.load(Path(checkpoint) / CONFIG_FILE)
    widths = {LOADER_WIDTHS[v]: int(getattr(cfg, field)) for v, (_, field) in VOCAB_HEADS.items()}
    widths.update({LOADER_WIDTHS[v]: p.width for v, p in plans.items()})
    return widths


@torch.no_grad()
def rebuild_answer_head(model: MultiTaskViLBERT, plan: AnswerHeadPlan) -> None:
    """Replace the head's output layer with one `plan.width` wide (see the module docstring)."""
    head_name, width_field = VOCAB_HEADS[plan.vocab]
    classifier = model.heads.get_submodule(head_name)
    assert isinstance(classifier, MLPClassifier)
    old = classifier.out
    new = nn.Linear(old.in_features, plan.width)
    init_weights(new)
    rows = {a: i for i, a in enumerate(plan.old_answers or ()) if i < old.out_features}
    for j, answer in enumerate(plan.new_answers):
        i = rows.get(answer)
        if i is not None:
            new.weight[j] = old.weight[i]
            new.bias[j] = old.bias[i]
    classifier.out = new.to(device=old.weight.device, dtype=old.weight.dtype)
    setattr(model.config, width_field, plan.width)


def apply_plans(model: MultiTaskViLBERT, plans: Mapping[str, AnswerHeadPlan]) -> MultiTaskViLBERT:
    for plan in plans.values():
        if plan.rebuild:
            rebuild_answer_head(model, plan)
    return model


def merged_answers(saved: Mapping[str, list[str]], trained: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """The answer lists a fine-tuned model is saved with: the checkpoint's, then the trained ones."""
    return {**saved, **trained}


def inherited_meta(meta: Mapping[str, object], trained: Iterable[str]) -> dict[str, object]:
    """What the fine-tuned checkpoint keeps of the starting one's record: the vocabularies it lacked
    that no trained task provides (`answers_missing`, which the server reports)."""
    lacked = meta.get("answers_missing") or []
    missing = [v for v in lacked if v not in set(trained)]  # type: ignore[union-attr]
    return {"answers_missing": missing} if missing else {}
