"""VQA answers: the standard normalisation, the answer vocabulary and the 10-annotator soft scores.

The normalisation follows the official VQA evaluation's rules (punctuation, number words to digits,
articles dropped, contractions restored); the vocabulary and soft scores follow the construction
the 3129-answer vocabulary corresponds to (bottom-up-attention-vqa's `compute_softscore.py`: answers
of >= 9 questions, score min(1, 0.3 x count)).  Unlike that script, the per-question counts are taken
over *normalised* answers too (it normalises only for the vocabulary), so "Two", "2" and "two "
count as one answer.

`python -m training.datasets.answers --data-root D` builds the VQA target caches from the official
question/annotation JSON, and the VG QA / GQA caches from their official question files.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from vilbert.io import atomic_write_bytes
from vilbert.safe_pickle import load_pickle

NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Contractions written without their apostrophe, as annotators type them, mapped to the real form.
CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Im": "I'm",
    "im": "i'm",
    "Ive": "I've",
    "ive": "i've",
    "isnt": "isn't",
    "itd": "it'd",
    "itll": "it'll",
    "lets": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "shant": "shan't",
    "shed": "she'd",
    "shes": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "somebodys": "somebody's",
    "someones": "someone's",
    "thats": "that's",
    "thered": "there'd",
    "theres": "there's",
    "theyd": "they'd",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed": "we'd",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "yall": "y'all",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!*#%^&$'  # "." and "'" are handled separately
_PERIOD_NOT_IN_NUMBER = re.compile(r"(?<!\d)\.(?!\d)")
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")


def _strip_punctuation(text: str) -> str:
    out = text
    for p in PUNCTUATION:
        # A mark touching a space (or a thousands comma) is dropped; one inside a word splits it.
        if (p + " " in text or " " + p in text) or _COMMA_IN_NUMBER.search(text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_IN_NUMBER.sub("", out)


def normalize_answer(answer: str) -> str:
    """Canonical form of a VQA answer ("Two " -> "2", "the dog." -> "dog", "dont" -> "don't")."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _strip_punctuation(text)
    words = []
    for w in text.split():
        w = NUMBER_WORDS.get(w, w)
        if w in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(w, w))
    return " ".join(words).replace(",", "")


def soft_score(count: int) -> float:
    """VQA accuracy of an answer given by `count` of 10 annotators: 0, 0.3, 0.6, 0.9, then 1.0.

    Equals the official metric (mean over the 10 leave-one-out subsets of min(1, matches/3)).
    """
    return min(1.0, round(0.3 * count, 1))


def build_answer_vocab(annotations: Iterable[dict[str, Any]], min_count: int = 9) -> dict[str, int]:
    """Answers that are the normalised `multiple_choice_answer` of >= min_count questions.

    Ordered by decreasing frequency, then alphabetically, so the vocabulary is deterministic.
    """
    counts: Counter[str] = Counter()
    for ann in annotations:
        counts[normalize_answer(ann["multiple_choice_answer"])] += 1
    kept = sorted((a for a, c in counts.items() if c >= min_count and a), key=lambda a: (-counts[a], a))
    return {a: i for i, a in enumerate(kept)}


def vqa_target(annotation: dict[str, Any], ans2label: dict[str, int]) -> dict[str, Any]:
    """`{question_id, image_id, labels, scores}` from one official annotation (10 answers)."""
    counts = Counter(normalize_answer(a["answer"]) for a in annotation["answers"])
    labels, scores = [], []
    for ans, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if ans in ans2label:
            labels.append(ans2label[ans])
            scores.append(soft_score(c))
    return {
        "question_id": annotation["question_id"],
        "image_id": annotation["image_id"],
        "labels": labels,
        "scores": scores,
    }


def single_answer_target(
    question_id: int | str,
    image_id: int | str,
    question: str,
    answer: str,
    ans2label: dict[str, int],
    normalize: bool = True,
) -> dict[str, Any]:
    """GQA / VG QA target: one answer with score 1.0, or an empty target outside the vocabulary."""
    key = normalize_answer(answer) if normalize else answer
    label = ans2label.get(key)
    return {
        "question_id": question_id,
        "image_id": image_id,
        "question": question,
        "labels": [] if label is None else [label],
        "scores": [] if label is None else [1.0],
    }


def label2ans_of(ans2label: dict[str, int]) -> list[str]:
    out = [""] * len(ans2label)
    for a, i in ans2label.items():
        out[i] = a
    return out


def _dump(obj: object, path: Path) -> None:
    """A cache pickle, written atomically (an interrupted build never leaves half a cache)."""
    atomic_write_bytes(path, pickle.dumps(obj, protocol=4))


def build_vqa_cache(vqa_dir: Path, min_count: int = 9, splits: Sequence[str] = ("train", "val")) -> int:
    """Write `cache/{split}_target.pkl` and `cache/trainval_{ans2label,label2ans}.pkl`; returns |vocab|."""
    annotations = {}
    for split in splits:
        path = vqa_dir / f"v2_mscoco_{split}2014_annotations.json"
        annotations[split] = json.loads(path.read_text())["annotations"]
    ans2label = build_answer_vocab((a for anns in annotations.values() for a in anns), min_count)
    cache = vqa_dir / "cache"
    for split, anns in annotations.items():
        targets = [vqa_target(a, ans2label) for a in sorted(anns, key=lambda a: a["question_id"])]
        _dump(targets, cache / f"{split}_target.pkl")
    _dump(ans2label, cache / "trainval_ans2label.pkl")
    _dump(label2ans_of(ans2label), cache / "trainval_label2ans.pkl")
    return len(ans2label)


def build_gqa_cache(gqa_dir: Path, min_count: int = 1) -> int:
    """GQA caches from the official `{train,val}_balanced_questions.json` (dict id -> question)."""
    questions = {
        s: json.loads((gqa_dir / f"{s}_balanced_questions.json").read_text()) for s in ("train", "val")
    }
    counts: Counter[str] = Counter(q["answer"] for qs in questions.values() for q in qs.values())
    ans2label = {
        a: i
        for i, a in enumerate(
            sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
        )
    }
    per_split = {}
    for split, qs in questions.items():
        # GQA answers are already canonical single words; they are used as given.
        per_split[split] = sorted(
            (
                single_answer_target(int(qid), q["imageId"], q["question"], q["answer"], ans2label, False)
                for qid, q in qs.items()
            ),
            key=lambda t: t["question_id"],
        )
    cache = gqa_dir / "cache"
    _dump(per_split["train"], cache / "train_target.pkl")
    _dump(per_split["val"], cache / "val_target.pkl")
    _dump(per_split["train"] + per_split["val"], cache / "trainval_target.pkl")
    _dump(ans2label, cache / "trainval_ans2label.pkl")
    _dump(label2ans_of(ans2label), cache / "trainval_label2ans.pkl")
    return len(ans2label)


def build_vg_qa_cache(vg_dir: Path, ans2label: dict[str, int]) -> int:
    """VG QA caches from the official `question_answers.json`, on the VQA vocabulary (paper: shared)."""
    images = json.loads((vg_dir / "question_answers.json").read_text())
    targets = sorted(
        (
            single_answer_target(qa["qa_id"], qa["image_id"], qa["question"], qa["answer"], ans2label)
            for img in images
            for qa in img["qas"]
        ),
        key=lambda t: t["question_id"],
    )
    cache = vg_dir / "cache"
    _dump(targets, cache / "trainval_target.pkl")
    _dump(ans2label, cache / "trainval_ans2label.pkl")
    _dump(label2ans_of(ans2label), cache / "trainval_label2ans.pkl")
    return sum(1 for t in targets if t["labels"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--min-count", type=int, default=9, help="VQA vocabulary threshold (reference 9)")
    args = parser.parse_args(argv)
    from training.datasets.layout import datasets_dir

    root = datasets_dir(args.data_root)
    n = build_vqa_cache(root / "VQA", args.min_count)
    print(f"VQA: {n} answers")
    if (root / "gqa" / "train_balanced_questions.json").is_file():
        print(f"GQA: {build_gqa_cache(root / 'gqa')} answers")
    if (root / "visual_genome" / "question_answers.json").is_file():
        vocab = load_pickle(root / "VQA" / "cache" / "trainval_ans2label.pkl")  # restricted unpickler
        n_vg = build_vg_qa_cache(root / "visual_genome", vocab)
        print(f"VG QA: {n_vg} questions with an in-vocabulary answer")


if __name__ == "__main__":
    main()
