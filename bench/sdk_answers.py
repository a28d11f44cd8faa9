"""`python -m bench.sdk_answers [--url URL] [--questions N]`: does the served model answer held-out
synthetic questions correctly, asked through the Python SDK like a user would?

Questions: the VQA `minval` split of the synthetic world (the last questions of val2014, which the
demo training's `trainval` split leaves out), each sent with its image file to `/vqa` over HTTP.
Scored with the VQA soft accuracy of the dataset's own targets (min(1, annotators agreeing / 3)),
beside the score of always giving the most common training answer, so a number means something.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm


def image_files(data_root: Path) -> dict[str, Path]:
    """COCO-style image id -> the image file (COCO_<split>_<id:012d>.jpg) in any split folder."""
    out: dict[str, Path] = {}
    for path in (data_root / "images" / "coco").glob("*/*.jpg"):
        out[str(int(path.stem.rsplit("_", 1)[-1]))] = path
    return out


def soft_score(entry, dataset, answer: str) -> float:
    label = dataset.ans2label.get(answer)
    if label is None or label not in entry.labels:
        return 0.0
    return float(entry.scores[entry.labels.index(label)])


def main(argv: list[str] | None = None) -> int:
    from clients.sdk import Client
    from training.datasets import build_dataset, split_names

    ap = argparse.ArgumentParser(prog="python -m bench.sdk_answers", description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--data", type=Path, default=Path("data/synthetic"))
    ap.add_argument("--questions", type=int, default=100)
    args = ap.parse_args(argv)

    splits = split_names("vqa")  # held out: the validation split (minval), which training leaves out
    held_out = build_dataset("vqa", args.data, splits["val"])
    train = build_dataset("vqa", args.data, splits["train"])
    common = Counter(train.answer(e.labels[e.scores.index(max(e.scores))]) for e in train.entries if e.labels)
    majority = common.most_common(1)[0][0]
    files = image_files(args.data)
    entries = [e for e in held_out.entries if e.image_id in files][: args.questions]
    if not entries:
        print(f"error: no minval question has an image under {args.data}/images/coco", file=sys.stderr)
        return 2
    exact = soft = base = 0.0
    with Client(args.url) as client:
        for e in tqdm(entries, desc="questions through the SDK", unit="q"):
            best = client.vqa(files[e.image_id], e.question, dataset="vqa").best
            score = soft_score(e, held_out, best)
            soft += score
            exact += score == max(e.scores, default=0.0) and score > 0
            base += soft_score(e, held_out, majority)
    n = len(entries)
    print(
        f"{n} held-out VQA questions (minval) through the SDK at {args.url}: soft accuracy "
        f"{100 * soft / n:.1f}%, top answer = the annotators' most common {100 * exact / n:.1f}%; "
        f"always answering {majority!r} (the most common training answer): {100 * base / n:.1f}%"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
