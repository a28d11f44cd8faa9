"""VQA answer normalisation and soft scores; metrics; loader settings."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from training.datasets import LoaderConfig
from training.datasets.answers import build_vqa_cache, normalize_answer, soft_score
from training.metrics import classification_accuracy, pointing_accuracy, recall_at_k


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Two", "2"),
        ("two ", "2"),
        ("2", "2"),
        ("the dog.", "dog"),
        ("dont", "don't"),
        ("Yes!", "yes"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("a red circle", "red circle"),
        ("none", "0"),
    ],
)
def test_normalize_answer(raw, norm):
    assert normalize_answer(raw) == norm


def test_soft_scores_equal_the_leave_one_out_vqa_metric():
    for count in range(11):
        # Official metric: mean over the 10 subsets of 9 annotators of min(1, matches / 3).
        official = np.mean([min(1.0, (count - (k < count)) / 3) for k in range(10)])
        assert soft_score(count) == pytest.approx(official, abs=0.01)
    assert [soft_score(c) for c in range(5)] == [0.0, 0.3, 0.6, 0.9, 1.0]


def test_vqa_targets_from_official_annotations(tmp_path):
    def ann(qid: int, mc: str, answers: list[str]) -> dict:
        return {
            "question_id": qid,
            "image_id": 9,
            "multiple_choice_answer": mc,
            "answer_type": "other",
            "answers": [
                {"answer": a, "answer_confidence": "yes", "answer_id": i} for i, a in enumerate(answers)
            ],
        }

    mixed = ["Two", "2", "two ", "blue", "blue", "blue", "blue", "3", "3", "yes"]
    anns = [
        ann(7, "blue", mixed),
        ann(8, "2", ["2"] * 10),
        ann(9, "3", ["3"] * 10),
        ann(10, "yes", ["yes"] * 10),
        ann(11, "red", ["red"] * 10),
    ]
    for split in ("train", "val"):
        (tmp_path / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": anns}))
    # min_count 2 keeps answers that are the majority answer of >= 2 questions over train + val.
    assert build_vqa_cache(tmp_path, min_count=2) == 5
    assert build_vqa_cache(tmp_path, min_count=3) == 0
    build_vqa_cache(tmp_path, min_count=2)
    with (tmp_path / "cache/trainval_ans2label.pkl").open("rb") as f:
        a2l = pickle.load(f)
    with (tmp_path / "cache/train_target.pkl").open("rb") as f:
        target = pickle.load(f)[0]
    got = dict(zip(target["labels"], target["scores"], strict=True))
    # "Two", "2" and "two " count as one answer; 4 / 3 / 2 / 1 / 0 annotators -> 1.0 / 0.9 / 0.6 / 0.3 / 0.
    assert got == {a2l["blue"]: 1.0, a2l["2"]: 0.9, a2l["3"]: 0.6, a2l["yes"]: 0.3}
    assert a2l["red"] not in got


def test_recall_at_k():
    scores = np.array([[0.9, 0.1, 0.0], [0.9, 0.8, 0.1], [0.1, 0.2, 0.3], [0.5, 0.9, 0.1]])
    gt = np.array([0, 1, 0, 0])  # ranks 0, 1, 2, 1
    r = recall_at_k(scores, gt, ks=(1, 2, 3))
    assert (r["R@1"], r["R@2"], r["R@3"]) == (25.0, 75.0, 100.0)
    assert r["median_rank"] == 2.0 and r["mean_rank"] == 2.0


def test_pointing_ignores_padded_candidates_and_dash_labels_count_wrong():
    logits = torch.tensor([[0.0, 1.0, 9.0], [2.0, 1.0, 0.0]])
    target = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert pointing_accuracy(logits, target, mask).score == 2
    assert classification_accuracy(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([-1])).score == 0


def test_loader_config_file_overrides_and_rejects_unknown_keys(tmp_path):
    assert LoaderConfig().detection_rows == 101 and LoaderConfig().vqa_num_answers == 3129
    (tmp_path / "loader_config.json").write_text(json.dumps({"minval_size": 5}))
    assert LoaderConfig.for_data_root(tmp_path).minval_size == 5
    with pytest.raises(ValueError, match="unknown loader settings"):
        LoaderConfig().updated(minval=3)
