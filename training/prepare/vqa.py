"""VQA v2: a user's questions / annotations JSON (VQA v2's format) and images -> a data root.

The root is what the VQA loader reads (`training/datasets/qa.py`, layout in `layout.py`):

    D/datasets/VQA/v2_OpenEnded_mscoco_train2014_questions.json   the questions that train
    D/datasets/VQA/v2_mscoco_train2014_annotations.json
    D/datasets/VQA/v2_OpenEnded_mscoco_val2014_questions.json     the held-out questions
    D/datasets/VQA/v2_mscoco_val2014_annotations.json
    D/datasets/VQA/cache/{train,val}_target.pkl                     soft-score targets
    D/datasets/VQA/cache/trainval_{ans2label,label2ans}.pkl         the answer vocabulary
    D/datasets/VQA/v2_OpenEnded_mscoco_test2015_questions.json    the held-out questions, no answers
    D/datasets/VQA/cache/coco_test_ids.npy                          the held-out images (clean split)
    D/datasets/coco/features_100/COCO_trainval_resnext152_faster_rcnn_genome.lmdb
    D/datasets/coco/features_100/COCO_test_resnext152_faster_rcnn_genome.lmdb   a link to it
    D/loader_config.json          minval_size = every held-out question; head width = the vocabulary
    D/prepare.json                what was prepared from which files, and the split in numbers

The loader trains VQA on `trainval` = train + all of val but its last `minval_size` questions, and
validates on `minval`; with `minval_size` = the number of held-out questions, `trainval` is exactly
the training questions and `minval` exactly the held-out ones.  The vocabulary is built from the
training annotations only, so the held-out answers do not shape it.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from training.datasets.answers import build_answer_vocab, label2ans_of, normalize_answer, vqa_target
from training.datasets.layout import COCO_LMDB, get_layout
from training.prepare.common import (
    ImageIndex,
    choose_held_out,
    count,
    index_images,
    sorted_ids,
    update_loader_config,
    warn,
    write_json,
    write_pickle,
    write_test_ids,
)
from vilbert.cli import UserError

TRAIN_SPLIT, HELD_OUT_SPLIT, TEST_SPLIT = "train2014", "val2014", "test2015"  # the loader's file names
QUESTIONS = "v2_OpenEnded_mscoco_{}_questions.json"
ANNOTATIONS = "v2_mscoco_{}_annotations.json"


@dataclass
class VqaFiles:
    """One questions + annotations pair in VQA v2's format, checked against each other."""

    questions: list[dict[str, Any]]
    annotations: dict[int, dict[str, Any]]  # question_id -> annotation
    questions_header: dict[str, Any]  # the other top-level keys (info, license, task_type, ...)
    annotations_header: dict[str, Any]
    source: str  # "Q.json + A.json", for messages


def _load(path: Path, key: str, flag: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{flag} {path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise UserError(f'{flag} {path}: expected VQA v2\'s format, an object with a "{key}" list')
    return data[key], {k: v for k, v in data.items() if k != key}


def _require(item: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in item]
    if missing:
        raise UserError(
            f"{where}: an entry lacks {', '.join(missing)} (VQA v2 format): {json.dumps(item)[:120]}"
        )


def read_vqa_files(questions: Path, annotations: Path, flags: tuple[str, str]) -> VqaFiles:
    """Read and check a pair: every question has one annotation on the same image, ten answers."""
    qs, q_header = _load(questions, "questions", flags[0])
    anns, a_header = _load(annotations, "annotations", flags[1])
    by_id: dict[int, dict[str, Any]] = {}
    for a in anns:
        _require(
            a, ("question_id", "image_id", "multiple_choice_answer", "answers"), f"{flags[1]} {annotations}"
        )
        by_id[a["question_id"]] = a
    seen: set[int] = set()
    for q in qs:
        _require(q, ("question_id", "image_id", "question"), f"{flags[0]} {questions}")
        qid = q["question_id"]
        if qid in seen:
            raise UserError(f"{flags[0]} {questions}: question_id {qid} appears twice")
        seen.add(qid)
        a = by_id.get(qid)
        if a is None:
            raise UserError(f"{flags[1]} {annotations}: no annotation for question_id {qid}")
        if str(a["image_id"]) != str(q["image_id"]):
            raise UserError(
                f"question_id {qid}: image {q['image_id']} in {questions.name} but {a['image_id']} in "
                f"{annotations.name}"
            )
    return VqaFiles(qs, {qid: by_id[qid] for qid in seen}, q_header, a_header, f"{questions} + {annotations}")


@dataclass
class VqaSplit:
    """Which questions train and which are held out for evaluation (never both)."""

    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    annotations: dict[int, dict[str, Any]]
    policy: str  # how the held-out questions were chosen, in words
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> questions dropped

    def images(self, which: str) -> set[str]:
        return {str(q["image_id"]) for q in getattr(self, which)}

    def summary(self) -> str:
        """`train: 4,000 images / 20,000 questions; held out for evaluation: 1,000 images / ...`"""
        return (
            f"train: {count(len(self.images('train')), 'images')} / {count(len(self.train), 'questions')}; "
            f"held out for evaluation: {count(len(self.images('held_out')), 'images')} / "
            f"{count(len(self.held_out), 'questions')}"
        )

    def drop_images(self, keep: set[str], reason: str) -> None:
        """Leave out the questions whose image is not in `keep` (counted under `reason`)."""
        before = len(self.train) + len(self.held_out)
        self.train = [q for q in self.train if str(q["image_id"]) in keep]
        self.held_out = [q for q in self.held_out if str(q["image_id"]) in keep]
        dropped = before - len(self.train) - len(self.held_out)
        if dropped:
            self.left_out[reason] = self.left_out.get(reason, 0) + dropped


def split_questions(
    train: VqaFiles,
    val: VqaFiles | None,
    held_out_split: str | None,
    held_out_images: int | float | None,
    seed: int,
) -> VqaSplit:
    """The held-out questions: the whole `val` pair (`held_out_split="val"`, the default when there
    is one), or `held_out_images` images drawn from all questions given (default: 10 % of them when
    there is no val pair) with every question on them.  A training question on a held-out image is
    left out of training, so no image is in both."""
    annotations = {**train.annotations, **(val.annotations if val else {})}
    if val is not None and len(annotations) != len(train.annotations) + len(val.annotations):
        clash = sorted(set(train.annotations) & set(val.annotations))[:3]
        raise UserError(f"question ids {clash} appear in both the training and the validation files")
    if held_out_split == "val":
        if val is None:
            raise UserError("--held-out-split val needs --val-questions and --val-annotations")
        held = list(val.questions)
        policy = "every question of the validation files (--held-out-split val)"
        pool_train = list(train.questions)
    else:
        pool = list(train.questions) + (list(val.questions) if val else [])
        amount = held_out_images if held_out_images is not None else 0.1
        chosen = choose_held_out((str(q["image_id"]) for q in pool), amount, seed)
        held = [q for q in pool if str(q["image_id"]) in chosen]
        policy = (
            f"{count(len(chosen), 'images')} drawn with seed {seed}, every question on them "
            "(--held-out-images)"
        )
        pool_train = [q for q in pool if str(q["image_id"]) not in chosen]
    held_images = {str(q["image_id"]) for q in held}
    kept = [q for q in pool_train if str(q["image_id"]) not in held_images]
    split = VqaSplit(kept, held, annotations, policy)
    if len(kept) < len(pool_train):
        split.left_out["training questions on a held-out image"] = len(pool_train) - len(kept)
    return split


def vocabulary(split: VqaSplit, min_count: int, fixed: list[str] | None = None) -> tuple[dict[str, int], str]:
    """(answer -> label, how it was made): from the training annotations only, or `fixed`."""
    if fixed is not None:
        return {a: i for i, a in enumerate(fixed)}, "the checkpoint's list (--answers-from-checkpoint)"
    ans2label = build_answer_vocab((split.annotations[q["question_id"]] for q in split.train), min_count)
    if not ans2label:
        most = Counter(
            normalize_answer(split.annotations[q["question_id"]]["multiple_choice_answer"])
            for q in split.train
        )
        raise UserError(
            f"no answer is the majority answer of >= {min_count} training questions (the most common, "
            f"{most.most_common(1)[0][0]!r}, of {most.most_common(1)[0][1]}); lower --min-count"
        )
    how = f"the normalised majority answers of >= {min_count} training questions (--min-count {min_count})"
    return ans2label, how


Targets = dict[int, dict[str, Any]]  # question_id -> {question_id, image_id, labels, scores}


def soft_targets(split: VqaSplit, ans2label: dict[str, int], progress: bool = True) -> Targets:
    """Every kept question's soft-score target over the vocabulary (annotator answers normalised)."""
    questions = split.train + split.held_out
    bar = tqdm(questions, desc="answer targets", unit="q", disable=not progress, file=sys.stderr, leave=False)
    return {q["question_id"]: vqa_target(split.annotations[q["question_id"]], ans2label) for q in bar}


def coverage(questions: list[dict[str, Any]], targets: Targets) -> float:
    """Share of questions with at least one in-vocabulary annotator answer (a non-zero target)."""
    if not questions:
        return 0.0
    return sum(bool(targets[q["question_id"]]["labels"]) for q in questions) / len(questions)


def features_lmdb(datasets: Path) -> Path:
    """The LMDB the VQA loader reads region features from (train and val images alike)."""
    return datasets / COCO_LMDB


def write_vqa(
    datasets: Path,
    split: VqaSplit,
    train: VqaFiles,
    val: VqaFiles | None,
    ans2label: dict[str, int],
    targets: Targets,
) -> Path:
    """The VQA folder: question/annotation files per side, targets, vocabulary, held-out image ids."""
    layout = get_layout("vqa")
    vqa_dir = layout.dir(datasets)
    cache = layout.cache(datasets)
    for name, questions, source in (
        (TRAIN_SPLIT, split.train, train),
        (HELD_OUT_SPLIT, split.held_out, val or train),
    ):
        ordered = sorted(questions, key=lambda q: q["question_id"])
        anns = [split.annotations[q["question_id"]] for q in ordered]
        write_json(vqa_dir / QUESTIONS.format(name), {**source.questions_header, "questions": ordered})
        write_json(vqa_dir / ANNOTATIONS.format(name), {**source.annotations_header, "annotations": anns})
        side = name.removesuffix("2014")
        write_pickle(cache / f"{side}_target.pkl", [targets[q["question_id"]] for q in ordered])
    write_pickle(cache / "trainval_ans2label.pkl", ans2label)
    write_pickle(cache / "trainval_label2ans.pkl", label2ans_of(ans2label))
    test_ids = layout.test_ids_file(datasets)
    assert test_ids is not None
    # The clean split drops training questions on these images (there are none: a held-out image
    # has no training question), and `data.clean` needs the file to exist.
    write_test_ids(test_ids, split.images("held_out"))
    write_test_split(datasets, split, val or train)
    update_loader_config(datasets.parent, {"minval_size": len(split.held_out), "vqa_num_answers": None})
    return vqa_dir


def write_test_split(datasets: Path, split: VqaSplit, source: VqaFiles) -> None:
    """VQA's `test` split: the held-out questions again, without their answers, as VQA v2 releases
    test-dev (what the export's metric gate and `training.evaluate --split test --predictions` read;
    both fall back to the labelled `minval` for a score).  Its LMDB is a link to the features."""
    layout = get_layout("vqa")
    ordered = sorted(split.held_out, key=lambda q: q["question_id"])
    header = {**source.questions_header, "data_subtype": TEST_SPLIT}
    write_json(layout.dir(datasets) / QUESTIONS.format(TEST_SPLIT), {**header, "questions": ordered})
    link = datasets / layout.test_features
    if link.is_symlink() or not link.exists():
        link.unlink(missing_ok=True)
        link.symlink_to(Path(layout.features).name)  # a sibling in coco/features_100/


def require_both_sides(split: VqaSplit) -> None:
    if not split.train or not split.held_out:
        raise UserError(f"nothing left to {'train on' if not split.train else 'evaluate'}: {split.summary()}")


def keep_images(files: VqaFiles, available: set[str]) -> int:
    """Leave out the questions whose image is not in `available`; returns how many."""
    before = len(files.questions)
    files.questions = [q for q in files.questions if str(q["image_id"]) in available]
    return before - len(files.questions)


@dataclass
class VqaSources:
    """The user's files and choices for one VQA data root."""

    questions: Path
    annotations: Path
    images: Path
    val_questions: Path | None = None
    val_annotations: Path | None = None
    held_out_split: str | None = None  # "val": the val pair is the held-out set
    held_out_images: int | float | None = None  # a count or a share of the images
    seed: int = 0
    min_count: int = 9  # the reference vocabulary threshold
    answers: list[str] | None = None  # a fixed vocabulary (the checkpoint's), else built from the data
    ids: str = "auto"
    id_map: Path | None = None


def read_sources(src: VqaSources) -> tuple[VqaFiles, VqaFiles | None]:
    train = read_vqa_files(src.questions, src.annotations, ("--questions", "--annotations"))
    if (src.val_questions is None) != (src.val_annotations is None):
        raise UserError("give both --val-questions and --val-annotations, or neither")
    val = None
    if src.val_questions is not None and src.val_annotations is not None:
        val = read_vqa_files(src.val_questions, src.val_annotations, ("--val-questions", "--val-annotations"))
    return train, val


def prepare_vqa(
    src: VqaSources,
    out: Path,
    extract: Callable[[ImageIndex, Path], set[str]],
    log: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Prepare `out` from `src`; `extract(index, lmdb)` fills the LMDB and returns the ids stored.

    Prints the split in numbers before any feature is extracted.  Returns the manifest record.
    """
    train, val = read_sources(src)
    files = [train, *([val] if val else [])]
    wanted = {str(q["image_id"]) for f in files for q in f.questions}
    index = index_images(src.images, wanted, src.ids, src.id_map)
    log(f"{count(len(index.files), 'images')} found under {src.images}; {index.describe(src.images)}")
    missing = sum(keep_images(f, set(index.files)) for f in files)
    if index.missing:
        warn(
            f"{count(len(index.missing), 'images')} of the annotation files have no file under --images "
            f"(e.g. {', '.join(sorted_ids(index.missing)[:5])}): "
            f"their {count(missing, 'questions')} are left out"
        )
    held_out_split = src.held_out_split or (
        "val" if val is not None and src.held_out_images is None else None
    )
    split = split_questions(train, val, held_out_split, src.held_out_images, src.seed)
    if missing:
        split.left_out["questions whose image file is missing"] = missing
    log(split.summary())
    require_both_sides(split)
    log(f"  held out: {split.policy}; no question and no image is in both")
    for reason, n in split.left_out.items():
        log(f"  left out: {n:,} {reason}")
    ans2label, how = vocabulary(split, src.min_count, src.answers)
    targets = soft_targets(split, ans2label, progress)
    log(
        f"answer vocabulary: {count(len(ans2label), 'answers')}, {how}; questions with an in-vocabulary "
        f"answer: train {100 * coverage(split.train, targets):.1f} %, held out "
        f"{100 * coverage(split.held_out, targets):.1f} %"
    )
    datasets = out / "datasets"
    used = split.images("train") | split.images("held_out")
    lmdb = features_lmdb(datasets)
    stored = extract(ImageIndex({i: index.files[i] for i in used}, index.mode), lmdb)
    before = split.summary()
    split.drop_images(stored, "questions whose image could not be decoded")
    if split.summary() != before:
        log(f"after leaving out undecodable images: {split.summary()}")
    require_both_sides(split)
    write_vqa(datasets, split, train, val, ans2label, targets)
    return {
        "format": "VQA v2",
        "sources": [f.source for f in files],
        "images": str(src.images),
        "image_ids": index.mode,
        "features": str(lmdb.relative_to(out)),
        "held_out": split.policy,
        "train": {"split": "trainval", "images": len(split.images("train")), "questions": len(split.train)},
        "evaluate": {
            "split": "minval",
            "images": len(split.images("held_out")),
            "questions": len(split.held_out),
        },
        "left_out": split.left_out,
        "answers": len(ans2label),
        "summary": split.summary(),
    }
