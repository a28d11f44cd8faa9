"""`training.evaluate` and the end-of-training report on real-format data (issue #17, item 4):
splits a dataset lacks, unlabelled and empty splits, missing feature files, the exact VQA accuracy,
GQA's minval order and the evaluation servers' result files."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from testkit.reference_datasets import FIXTURE_CONFIG
from training.datasets import LoaderConfig, build_dataset
from training.evaluate import main as evaluate_main
from training.metrics import vqa_exact_accuracy
from training.report import final_metrics, metrics_markdown
from vilbert.checkpoint import save_checkpoint
from vilbert.config import preset
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]
COCO_TEST_LMDB = "coco/features_100/COCO_test_resnext152_faster_rcnn_genome.lmdb"
COCO_LMDB = "coco/features_100/COCO_trainval_resnext152_faster_rcnn_genome.lmdb"
# GQA test-dev ids as the dataset writes them: one with a leading zero, which int() would lose.
GQA_TESTDEV = {
    "201": {"imageId": "n161313", "question": "is it left?", "answer": "left"},
    "07333408": {"imageId": "2354786", "question": "is it?", "answer": "maybe"},
}


def copy_tree(reference_root: Path, dest: Path) -> Path:
    """A writable copy of the reference fixture with its loader settings and the GQA ids above."""
    shutil.copytree(reference_root, dest)
    (dest / "datasets" / "loader_config.json").write_text(json.dumps(FIXTURE_CONFIG))
    (dest / "datasets" / "gqa" / "testdev_balanced_questions.json").write_text(json.dumps(GQA_TESTDEV))
    return dest


def tiny_model() -> MultiTaskViLBERT:
    torch.manual_seed(0)
    return MultiTaskViLBERT(preset("tiny", v_feature_size=16, num_answers=3, num_answers_gqa=3)).eval()


@pytest.fixture(scope="module")
def tree(reference_root, tmp_path_factory):
    return copy_tree(reference_root, tmp_path_factory.mktemp("eval") / "data")


@pytest.fixture(scope="module")
def checkpoint(tree, tmp_path_factory):
    answers = {"vqa": ["yes", "no", "2"], "gqa": ["yes", "no", "left"]}
    meta = {"fit_config": {"data": {"root": str(tree)}, "tasks": ["vqa", "vg_qa", "gqa"]}}
    return save_checkpoint(tmp_path_factory.mktemp("ck") / "model", tiny_model(), answers, meta)


def evaluate(checkpoint: Path, out: Path, *args: str) -> tuple[int, dict]:
    code = evaluate_main(["--checkpoint", str(checkpoint), "--out", str(out), *args])
    return code, (json.loads(out.read_text()) if out.is_file() else {})


def test_test_split_skips_vg_qa_reports_no_labels_and_scores_the_rest(checkpoint, tmp_path, capsys):
    """The README's `--split test` on a checkpoint with VG QA: exit 0, VG QA skipped with its reason,
    VQA test2015 (no answers) "no labels" with no score, GQA test-dev scored with exact accuracy."""
    code, results = evaluate(checkpoint, tmp_path / "eval.json", "--split", "test")
    assert code == 0
    assert results["vg_qa"]["status"] == "skipped" and "vg_qa has no test split" in results["vg_qa"]["reason"]
    vqa = results["vqa"]
    assert vqa["status"] == "no labels" and vqa["examples"] == 1
    assert "score" not in vqa and "exact" not in vqa
    gqa = results["gqa"]
    assert gqa["status"] == "scored" and gqa["examples"] == 2
    assert 0.0 <= gqa["exact"] <= 100.0 and 0.0 <= gqa["score"] <= 100.0
    table = capsys.readouterr().out
    assert "| vqa | test | vqa_soft_accuracy | no labels | – | 1 |" in table
    assert "skipped: vg_qa has no test split (evaluate it with --split val)" in table
    assert "0.00" not in table.split("| vqa |")[1].splitlines()[0]


def test_val_split_reports_exact_beside_soft_accuracy(checkpoint, tmp_path):
    code, results = evaluate(checkpoint, tmp_path / "eval.json", "--split", "val", "--tasks", "vqa", "vg_qa")
    assert code == 0
    for slug in ("vqa", "vg_qa"):
        assert results[slug]["status"] == "scored" and {"score", "exact"} <= set(results[slug])
    # minval's one question: "no" from 2 annotators (soft 0.6) is its most frequent answer.
    vqa = results["vqa"]
    assert (vqa["exact"], round(vqa["score"], 3)) in {(0.0, 0.0), (100.0, 60.0)}


def test_every_task_skipped_exits_2(checkpoint, tmp_path, capsys):
    code, _ = evaluate(checkpoint, tmp_path / "eval.json", "--split", "test", "--tasks", "vg_qa")
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no task could be evaluated on --split test") and err.count("\n") == 1


def test_missing_feature_file_skips_that_task_only(reference_root, tmp_path):
    data = copy_tree(reference_root, tmp_path / "data")
    shutil.rmtree(data / "datasets" / COCO_TEST_LMDB)
    answers = {"vqa": ["yes", "no", "2"], "gqa": ["yes", "no", "left"]}
    ck = save_checkpoint(tmp_path / "model", tiny_model(), answers, {"fit_config": {"tasks": ["vqa", "gqa"]}})
    code, results = evaluate(ck, tmp_path / "eval.json", "--split", "test", "--data", str(data))
    assert code == 0
    vqa = results["vqa"]
    assert vqa["status"] == "skipped" and "region-feature LMDB not found" in vqa["reason"]
    assert results["gqa"]["status"] == "scored"


def test_empty_split_reports_no_examples(reference_root, tmp_path):
    data = copy_tree(reference_root, tmp_path / "data")
    (data / "datasets" / "gqa" / "testdev_balanced_questions.json").write_text("{}")
    ck = save_checkpoint(tmp_path / "model", tiny_model(), {}, {"fit_config": {"tasks": ["gqa"]}})
    code, results = evaluate(ck, tmp_path / "eval.json", "--split", "test", "--data", str(data))
    assert code == 0
    assert results["gqa"]["status"] == "no examples" and results["gqa"]["examples"] == 0
    assert "score" not in results["gqa"]


def test_predictions_are_the_servers_result_files_with_original_ids(checkpoint, tmp_path):
    out = tmp_path / "out"
    code, results = evaluate(checkpoint, tmp_path / "eval.json", "--split", "test", "--predictions", str(out))
    assert code == 0
    vqa = json.loads((out / "vqa_test_results.json").read_text())
    assert [set(r) for r in vqa] == [{"question_id", "answer"}]
    assert vqa[0]["question_id"] == 10 and type(vqa[0]["question_id"]) is int
    assert vqa[0]["answer"] in {"yes", "no", "2"}
    gqa = json.loads((out / "gqa_test_predictions.json").read_text())
    assert all(set(r) == {"questionId", "prediction"} for r in gqa)
    assert sorted(r["questionId"] for r in gqa) == ["07333408", "201"]  # strings, leading zero kept
    assert all(r["prediction"] in {"yes", "no", "left"} for r in gqa)
    assert results["vqa"]["predictions"] == str(out / "vqa_test_results.json")
    assert not (out / "vg_qa_test_results.json").exists()  # VG QA has no server (and no test split)


def test_vqa_exact_accuracy_is_the_most_frequent_answer():
    # rows: prediction is the top answer; a 0.3 answer; tied top answers; no answer in the vocabulary
    target = torch.tensor([[0.3, 1.0, 0.0], [0.3, 1.0, 0.0], [0.6, 0.6, 0.0], [0.0, 0.0, 0.0]])
    logits = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    got = vqa_exact_accuracy(logits, target)
    assert (got.score, got.count) == (2.0, 4)


def test_gqa_minval_sorts_the_raw_string_ids_as_the_reference(reference_root, tmp_path):
    """Ids "9" and "10": as strings "10" < "9", so minval (the last id) is 9; int order would give 10."""
    data = copy_tree(reference_root, tmp_path / "data")
    targets = [
        {"question_id": q, "image_id": "2354786", "question": f"q {q}?", "labels": [0], "scores": [1.0]}
        for q in ("9", "10")
    ]
    with (data / "datasets" / "gqa" / "cache" / "trainval_target.pkl").open("wb") as f:
        pickle.dump(targets, f)
    config = LoaderConfig().updated(**FIXTURE_CONFIG)
    minval = build_dataset("gqa", data, "minval", config=config)
    trainval = build_dataset("gqa", data, "trainval", config=config)
    assert [e.question_id for e in minval.entries] == [9]
    assert [e.question_id for e in trainval.entries] == [10]
    assert minval[0].example_id == "9"


def test_report_skips_missing_data_with_reasons_and_scores_every_example(reference_root, tmp_path):
    """The end-of-training report: a task whose feature files are missing is `skipped` with each
    split's reason (the old code raised from its label probe); nothing is capped by default."""
    data = copy_tree(reference_root, tmp_path / "data")
    shutil.rmtree(data / "datasets" / COCO_TEST_LMDB)
    shutil.rmtree(data / "datasets" / COCO_LMDB)
    tasks = [get_task(t) for t in ("vqa", "vg_qa", "snli_ve")]
    config = LoaderConfig.for_data_root(data)
    rows = final_metrics(tiny_model(), tasks, data, config)
    vqa = rows["vqa"]
    assert vqa["status"] == "skipped" and "score" not in vqa
    assert vqa["reason"].count("region-feature LMDB not found") == 2  # test2015 and minval
    vg = rows["vg_qa"]
    assert vg["status"] == "scored" and vg["split"] == "val" and vg["note"] == "no test split"
    snli = rows["snli_ve"]
    total = len(build_dataset("snli_ve", data, "test", config=config))
    assert snli["split"] == "test" and snli["examples"] == total and not snli["capped"]
    md = metrics_markdown(rows)
    assert "| vqa | – | vqa_soft_accuracy | skipped: test:" in md and "- vg_qa: scored on val" in md
    capped = final_metrics(tiny_model(), [get_task("gqa")], data, config, max_examples=1)["gqa"]
    assert capped["split"] == "test" and capped["examples"] == 1 and capped["capped"]  # of 2
    assert "1 (capped)" in metrics_markdown({"gqa": capped})


def test_fit_exits_0_when_a_test_feature_file_is_missing(reference_root, tmp_path):
    """Training ends with status 0 and writes its report when VQA's test2015 LMDB is absent."""
    from training.fit import main as fit_main

    data = copy_tree(reference_root, tmp_path / "data")
    shutil.rmtree(data / "datasets" / COCO_TEST_LMDB)
    out = tmp_path / "run"
    args = [
        "--config",
        str(ROOT / "training/configs/tiny.yaml"),
        f"data.root={data}",
        f"out={out}",
        "tasks=[vqa,snli_ve]",
        "schedule.max_steps=2",
        "optim.default_batch_size=2",
    ]
    assert fit_main(args) == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert rows["vqa"]["split"] == "minval" and "region-feature LMDB not found" in rows["vqa"]["note"]
    assert rows["snli_ve"]["status"] == "scored"
