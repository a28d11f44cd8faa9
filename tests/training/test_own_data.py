"""A user's own VQA v2-format dataset, the whole loop: prepare -> fine-tune a served model -> evaluate.

The dataset is written here in VQA v2's exact file format (questions / annotations JSON, COCO-named
PNG images), not the synthetic world's; the starting model and detector are the tiny ones the
gateway tests serve (testkit/tiny_gateway.py), with 11 VQA answers and 7 GQA answers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from regions.detector import build_detector
from regions.weights import save_detector
from testkit.tiny_gateway import GQA_ANSWERS, VQA_ANSWERS, build_tiny_checkpoint, tiny_detector_preset
from training.datasets import build_dataset
from training.datasets.answers import normalize_answer
from training.datasets.layout import COCO_LMDB
from training.evaluate import evaluate_checkpoint
from training.finetune import AnswerHeadPlan, rebuild_answer_head
from training.fit import main as fit_main
from training.prepare.__main__ import main as prepare_main
from vilbert.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "purple": (150, 40, 170)}
NUMBERS = ["one", "two", "three"]
INFO = {"description": "a user's own questions in VQA v2 format", "version": "2.0", "year": 2026}
LICENSE = {"name": "CC BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"}


def render(path: Path, colour: str, shape: str, n: int) -> None:
    image = Image.new("RGB", (96, 80), (70, 70, 70))
    draw = ImageDraw.Draw(image)
    for k in range(n):
        box = [6 + 30 * k, 24, 28 + 30 * k, 46]
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def answers(answer: str, rng: np.random.Generator) -> list[dict]:
    """Ten annotator answers, typed as annotators type them (one sometimes disagrees)."""
    typed = [answer, answer.title(), f"{answer} "] + [answer] * 7
    if rng.random() < 0.5:
        typed[-1] = "not sure"
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(typed)]


def write_split(
    root: Path, subtype: str, image_ids: list[int], rng: np.random.Generator
) -> tuple[Path, Path]:
    """Images `COCO_<subtype>_<id:012d>.png` and the pair of JSON files, in VQA v2's format."""
    questions, annotations = [], []
    for image_id in image_ids:
        colour = list(COLOURS)[image_id % 3]
        shape = ("circle", "square")[image_id % 2]
        n = 1 + image_id % 3
        render(root / "images" / subtype / f"COCO_{subtype}_{image_id:012d}.png", colour, shape, n)
        for k, (question, answer, kind, answer_type) in enumerate(
            (
                ("What color is the shape?", colour, "what color is the", "other"),
                ("What shape is it?", shape, "what is the", "other"),
                ("How many shapes are there?", NUMBERS[n - 1], "how many", "number"),
            )
        ):
            qid = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": question, "question_id": qid})
            annotations.append(
                {
                    "question_type": kind,
                    "multiple_choice_answer": answer,
                    "answers": answers(answer, rng),
                    "image_id": image_id,
                    "answer_type": answer_type,
                    "question_id": qid,
                }
            )
    q_path = root / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    a_path = root / f"v2_mscoco_{subtype}_annotations.json"
    q_path.write_text(
        json.dumps(
            {
                "info": INFO,
                "task_type": "Open-Ended",
                "data_type": "mscoco",
                "license": LICENSE,
                "data_subtype": subtype,
                "questions": questions,
            }
        )
    )
    a_path.write_text(
        json.dumps({"info": INFO, "license": LICENSE, "data_subtype": subtype, "annotations": annotations})
    )
    return q_path, a_path


@pytest.fixture(scope="module")
def own_files(tmp_path_factory):
    """12 training images and 4 validation images (3 questions each), the tiny detector and model."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    train = write_split(root / "vqa", "train2014", list(range(1, 13)), rng)
    val = write_split(root / "vqa", "val2014", [101, 102, 103, 104], rng)
    torch.manual_seed(0)
    detector, _ = save_detector(
        build_detector(tiny_detector_preset()), root / "detector" / "tiny.safetensors"
    )
    checkpoint = build_tiny_checkpoint(root / "served")
    return root, train, val, detector, checkpoint


def prepare(own_files, out: Path, *extra: str) -> int:
    root, (q, a), (vq, va), detector, checkpoint = own_files
    args = ["--task", "vqa", "--questions", str(q), "--annotations", str(a)]
    args += [
        "--val-questions",
        str(vq),
        "--val-annotations",
        str(va),
        "--images",
        str(root / "vqa" / "images"),
    ]
    args += ["--out", str(out), "--detector", str(detector), "--checkpoint", str(checkpoint)]
    return prepare_main([*args, "--min-count", "1", "--quiet", *extra])


def test_prepare_fit_evaluate_on_own_vqa_files(own_files, tmp_path, capsys):
    _, _, (val_q, _), _, checkpoint = own_files
    data = tmp_path / "own-data"
    assert prepare(own_files, data) == 0
    out = capsys.readouterr().out
    # The split in numbers, printed before anything trains: the val files are held out entirely.
    assert "train: 12 images / 36 questions; held out for evaluation: 4 images / 12 questions" in out
    assert "16 images found" in out and "(--ids number)" in out
    assert f"data.root={data}" in out  # the next command

    # Features where the loader reads them, keyed by the question files' image ids.
    assert (data / "datasets" / COCO_LMDB / "data.mdb").is_file()
    held_ids = {q["question_id"] for q in json.loads(val_q.read_text())["questions"]}
    trainval = build_dataset("vqa", data, "trainval")
    minval = build_dataset("vqa", data, "minval")
    assert {e.question_id for e in trainval.entries}.isdisjoint(held_ids)
    assert {e.question_id for e in minval.entries} == held_ids
    assert set(trainval.image_ids()).isdisjoint(minval.image_ids())
    assert trainval[0].region_features.shape[-1] == 32
    vocab = list(trainval.label2ans)
    assert "purple" in vocab and "2" in vocab and "not sure" not in vocab  # from training answers
    assert vocab != VQA_ANSWERS

    run = tmp_path / "run"
    argv = ["--config", str(ROOT / "training/configs/finetune.yaml"), f"model.init_checkpoint={checkpoint}"]
    argv += ["tasks=[vqa]", f"data.root={data}", f"out={run}", "schedule.max_steps=4"]
    argv += ["optim.default_batch_size=8", "progress=false", "checkpoint.every_steps=100"]
    assert fit_main(argv) == 0
    err = capsys.readouterr().err
    assert "answer head re-initialised for vqa (vqa vocabulary changed: 11 -> " in err
    assert "vg_qa reads this head too" in err
    assert "vqa: trains on trainval (36 examples, 12 images), validates on minval (12 examples" in err

    start, final = load_checkpoint(checkpoint), load_checkpoint(run / "model")
    assert final.answers["vqa"] == vocab and final.model.config.num_answers == len(vocab)
    assert final.answers["gqa"] == GQA_ANSWERS  # the list of the head not retrained is kept
    before, after = start.model.state_dict(), final.model.state_dict()
    for name, value in after.items():
        if name.startswith(
            ("heads.answer_gqa.", "heads.region.", "heads.pair.", "heads.triple.", "prefilter.")
        ):
            assert torch.equal(value, before[name]), name
    assert not torch.equal(after["heads.answer.hidden.weight"], before["heads.answer.hidden.weight"])

    results = evaluate_checkpoint(run / "model", ["vqa"], "val", data, progress=False)
    assert results["vqa"]["split"] == "minval" and results["vqa"]["examples"] == len(held_ids)
    assert 0.0 <= results["vqa"]["score"] <= 100.0
    assert json.loads((run / "metrics.json").read_text())["vqa"]["split"] == "minval"


def test_held_out_images_are_drawn_from_every_file_and_errors_are_one_line(own_files, tmp_path, capsys):
    data = tmp_path / "drawn"
    assert prepare(own_files, data, "--held-out-images", "25%") == 0
    out = capsys.readouterr().out
    assert "train: 12 images / 36 questions; held out for evaluation: 4 images / 12 questions" in out
    assert "4 images drawn with seed 0" in out
    manifest = json.loads((data / "prepare.json").read_text())["vqa"]
    assert manifest["evaluate"] == {"split": "minval", "images": 4, "questions": 12}
    assert json.loads((data / "loader_config.json").read_text())["minval_size"] == 12

    _, (q, a), *_ = own_files
    with pytest.raises(SystemExit) as exc:
        prepare_main(["--task", "vqa", "--questions", str(q), "--annotations", str(a)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--images" in err and len(err.splitlines()) == 1


def test_rebuilt_answer_head_keeps_the_rows_of_answers_in_both_lists():
    torch.manual_seed(0)
    from vilbert.config import preset
    from vilbert.heads import MultiTaskViLBERT

    model = MultiTaskViLBERT(preset("tiny", num_answers=3))
    old = model.heads.answer.out.weight.detach().clone()
    plan = AnswerHeadPlan("vqa", ("vqa",), 3, ("yes", "no", "red"), ("red", "blue", "yes", "2"))
    assert plan.rebuild and plan.width == 4 and plan.shared == 2
    rebuild_answer_head(model, plan)
    new = model.heads.answer.out.weight
    assert new.shape[0] == 4 and model.config.num_answers == 4
    assert torch.equal(new[0], old[2]) and torch.equal(new[2], old[0])
    assert not torch.equal(new[1], old[1])
    kept = AnswerHeadPlan("vqa", ("vqa",), 3, None, ("a", "b"))  # no list, fits: kept
    assert not kept.rebuild and kept.width == 3 and "kept (3 outputs)" in kept.notice()
    assert normalize_answer("Two ") == "2"


def test_keeping_the_served_vocabulary_keeps_the_head(own_files, tmp_path, capsys):
    from training.finetune import plan_answer_heads
    from vilbert.tasks import get_task

    *_, checkpoint = own_files
    data = tmp_path / "kept"
    assert prepare(own_files, data, "--answers-from-checkpoint", "--held-out-images", "2") == 0
    assert "answer vocabulary: 11 answers, the checkpoint's list" in capsys.readouterr().out
    plan = plan_answer_heads(checkpoint, data, [get_task("vqa")])["vqa"]
    assert not plan.rebuild and plan.width == len(VQA_ANSWERS) and "head kept" in plan.notice()


def test_a_training_question_on_a_held_out_image_is_left_out():
    from training.prepare.vqa import VqaFiles, split_questions

    def files(pairs):
        qs = [{"question_id": q, "image_id": i, "question": "?"} for q, i in pairs]
        anns = {q: {"question_id": q, "image_id": i} for q, i in pairs}
        return VqaFiles(qs, anns, {}, {}, "test")

    split = split_questions(files([(1, 7), (2, 8), (3, 9)]), files([(4, 9), (5, 10)]), "val", None, 0)
    assert [q["question_id"] for q in split.train] == [1, 2]
    assert [q["question_id"] for q in split.held_out] == [4, 5]
    assert split.left_out == {"training questions on a held-out image": 1}
    assert split.summary() == (
        "train: 2 images / 2 questions; held out for evaluation: 2 images / 2 questions"
    )
