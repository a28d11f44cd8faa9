"""Each dataset's minimal fixture in its official format loads and yields the expected targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.datasets import build_dataset, collate
from training.datasets.grounding import dialog_text
from training.metrics import grounding_accuracy, pointing_accuracy, vqa_soft_accuracy
from vilbert.tasks import TASKS


def load(task, root, split, config):
    return build_dataset(task, root, split, config=config)


def test_vqa_splits_targets_and_cleaning(reference_root, fixture_config):
    trainval = load("vqa", reference_root, "trainval", fixture_config)
    # train (90, 250) + val minus its 1-question tail (300); coco_test_ids [25] drops question 250.
    assert [e.question_id for e in trainval.entries] == [90, 300]
    assert trainval.num_before_cleaning == 3 and trainval.removed_images == {25}
    ex = trainval[0]
    np.testing.assert_allclose(ex.target, [1.0, 0.0, 0.3])  # labels [0, 2] scores [1.0, 0.3]
    assert ex.label == 0 and ex.image_ids == ("9",)
    assert trainval[1].target.sum() == 0 and trainval[1].label == -1  # empty target stays all-zero
    # 100 detections + the global row; the global row is the mean feature at [0,0,1,1,1].
    assert ex.region_features.shape == (1, 101, 16)
    np.testing.assert_allclose(ex.region_locations[0, 0], [0, 0, 1, 1, 1])
    np.testing.assert_allclose(ex.region_features[0, 0], ex.region_features[0, 1:].mean(0), atol=1e-6)
    minval = load("vqa", reference_root, "minval", fixture_config)
    assert [e.question_id for e in minval.entries] == [340]  # the val tail is never cleaned
    test = load("vqa", reference_root, "test", fixture_config)
    assert test[0].image_ids == ("1",) and test[0].target.sum() == 0  # test2015 LMDB, no targets


def test_vqa_reference_head_width_is_the_default(reference_root, fixture_config):
    ds = load("vqa", reference_root, "train", fixture_config.updated(vqa_num_answers=3129))
    assert ds[0].target.shape == (3129,)


def test_gqa_tail_testdev_and_string_ids(reference_root, fixture_config):
    trainval = load("gqa", reference_root, "trainval", fixture_config)
    # Sorted by int(question_id): 1..4; the last one is minval; 2368326 is a test image -> q2 dropped.
    assert [e.question_id for e in trainval.entries] == [1, 3]
    assert [e.question_id for e in load("gqa", reference_root, "minval", fixture_config).entries] == [4]
    test = load("gqa", reference_root, "test", fixture_config)
    assert test.entries[0].image_id == "n161313" and test[0].image_ids == ("n161313",)
    assert test[0].target.tolist() == [0.0, 0.0, 1.0]  # answer "left" is in the vocabulary
    assert test[1].target.sum() == 0  # "maybe" is not


def test_vg_qa_cleans_train_and_val(reference_root, fixture_config):
    train = load("vg_qa", reference_root, "train", fixture_config)
    val = load("vg_qa", reference_root, "val", fixture_config)
    assert [e.question_id for e in train.entries] == [1, 3]  # q2 (test image) removed
    assert [e.question_id for e in val.entries] == [5]  # q4 (test image) removed from val too
    assert train[1].target.sum() == 0  # answer outside the vocabulary -> all-zero target


def test_retrieval_four_way_with_hard_negatives(reference_root, fixture_config):
    ds = load("retrieval_coco", reference_root, "train", fixture_config)
    assert ds.images == ["9", "25", "30"]  # 34 is a test image; the cleaned pool matches
    assert len(ds) == 6 and ds.num_before_cleaning == 8
    ex = ds[0]
    assert ex.num_pairs == 4 and ex.label == 0 and ex.target.tolist() == [1, 0, 0, 0]
    (img0, cap0), (img1, cap1), (img2, cap2), (img3, cap3) = ex.meta["options"]
    assert img0 == img1 == img3 == "9" and img2 != "9" and cap2 == cap0 == 0
    assert cap1 not in ds.captions_of[0] and cap3 not in ds.captions_of[0]
    assert ex.region_features.shape[:2] == (4, ex.region_mask.shape[1])
    batch = collate([ds[i] for i in range(3)])
    assert batch.input_ids.shape[0] == 12 and batch.pairs_per_example == 4 and batch.target.shape == (3, 4)


def test_flickr_ids_from_img_path(reference_root, fixture_config):
    ds = load("retrieval_flickr30k", reference_root, "train", fixture_config)
    assert ds.images == ["10002456", "1000268201", "1000344755"]
    assert ds[0].image_ids[0] == "10002456"


def test_retrieval_evaluation_covers_the_score_matrix(reference_root, fixture_config):
    from training.metrics import RetrievalScoreMatrix

    ds = load("retrieval_coco", reference_root, "test", fixture_config)
    assert ds.score_shape == (8, 4) and len(ds) == 16  # 8 captions x 2 chunks of 2 images
    matrix = RetrievalScoreMatrix(*ds.score_shape)
    for start in range(0, len(ds), 4):
        batch = collate([ds[i] for i in range(start, start + 4)])
        # A perfect scorer: the target marks the ground-truth image within each chunk.
        matrix.add(batch, batch.target)
    result = matrix.result(ds.gt_image)
    assert result["R@1"] == 100.0 and result["median_rank"] == 1.0


def test_refcoco_iou_targets_and_strict_metric(reference_root, fixture_config):
    train = load("refcoco", reference_root, "train", fixture_config)
    assert len(train) == 2  # image 9 is a test image; ref 0 has two sentences
    ex = train[0]
    # Rows: global, 4 detections, then 2 GT boxes (the GT LMDB's own global row dropped).
    assert ex.region_features.shape[1] == 1 + 4 + 2
    np.testing.assert_allclose(ex.iou[1:5], [1.0, 0.5, 0.45, 0.0], atol=1e-6)
    np.testing.assert_allclose(ex.target[1:5], [1.0, 0.5, 0.0, 0.0], atol=1e-6)  # < 0.5 zeroed
    assert ex.target[5] == pytest.approx(1.0)  # the GT box itself
    test = load("refcoco", reference_root, "test", fixture_config)  # testA counts as test
    ex = test[0]
    assert ex.region_features.shape[1] == 5 and ex.target[3] == pytest.approx(0.45)  # raw IoU at eval
    batch = collate([ex])
    for row, correct in [(1, 1.0), (2, 0.0), (3, 0.0)]:  # IoU 1.0 right; exactly 0.5 and 0.45 wrong
        logits = torch.full((1, 5), -5.0)
        logits[0, row] = 5.0
        assert grounding_accuracy(logits, batch.region_mask, batch.iou).score == correct


def test_refcoco_family_files(reference_root, fixture_config):
    assert [e.text for e in load("refcoco_plus", reference_root, "testB", fixture_config).entries] == [
        "man top left"
    ]
    assert len(load("refcocog", reference_root, "test", fixture_config)) == 1
    assert len(load("refcocog", reference_root, "val", fixture_config)) == 1


def test_visual7w_candidates_after_101_detection_rows(reference_root, fixture_config):
    train = load("visual7w", reference_root, "train", fixture_config)
    assert [e.example_id for e in train.entries] == ["1", "2"]  # image 444 (test) removed
    ex = train[1]  # answer 1005, distractors 1001, 1002, 1006
    assert ex.candidates.tolist() == [101 + 0, 101 + 1, 101 + 4, 101 + 5]
    assert ex.region_features.shape[1] == 101 + 6
    assert ex.label == 2 and ex.target[2] == pytest.approx(1.0)
    np.testing.assert_allclose(ex.region_boxes[0, 101 + 4], [10, 200, 70, 260])  # box 1005 as x1y1x2y2
    batch = collate([train[0], ex])
    logits = torch.zeros(2, 4)
    logits[0, 0] = logits[1, 2] = 1.0
    assert pointing_accuracy(logits, batch.target, batch.candidate_mask).score == 2


def test_guesswhat_dialog_and_candidates(reference_root, fixture_config):
    train = load("guesswhat", reference_root, "train", fixture_config)
    assert len(train) == 1  # the game on image 30 (a test image) is removed
    ex = train[0]
    assert ex.text == "start is it a person? answer No stop start is it an animal? answer Yes stop "
    assert ex.candidates.tolist() == [101, 102, 103] and ex.label == 1  # target object 102
    np.testing.assert_allclose(ex.ref_box, [100, 100, 180, 140])
    test = load("guesswhat", reference_root, "test", fixture_config)
    assert test[0].input_ids.shape[1] == 256  # the long dialog is cut to 254 pieces + [CLS]/[SEP]
    assert dialog_text([{"question": "q", "answer": "N/A"}]) == "start q answer N/A stop "


def test_nlvr2_pairs_both_images_explicitly(reference_root, fixture_config):
    ds = load("nlvr2", reference_root, "train", fixture_config)
    a, b = ds[0], ds[1]
    assert a.image_ids == b.image_ids == ("train-1-0-img0", "train-1-0-img1")
    assert (a.label, b.label) == (1, 0) and a.target.tolist() == [0.0, 1.0]
    assert a.num_pairs == 2 and a.region_features.shape[:2] == (2, 101)
    np.testing.assert_array_equal(a.input_ids[0], a.input_ids[1])  # same statement for both images
    assert not np.array_equal(a.region_features[0], a.region_features[1])
    batch = collate([a, b, ds[2]])
    assert batch.input_ids.shape[0] == 6 and batch.labels.tolist() == [1, 0, 1]
    assert batch.image_ids[2] == ("train-2-1-img0", "train-2-1-img1")


def test_snli_ve_labels_and_cleaning(reference_root, fixture_config):
    ds = load("snli_ve", reference_root, "train", fixture_config)
    assert [e.label for e in ds.entries] == [0, 2, -1]  # 10002456 (neutral) is a test image
    assert ds[2].target.sum() == 0  # "-" rows are kept with an all-zero target
    assert len(load("snli_ve", reference_root, "dev", fixture_config)) == 1


def test_collate_pads_text_and_regions_to_the_batch_max(reference_root, fixture_config):
    ds = load("vqa", reference_root, "train", fixture_config.updated(clean=False))
    a, b = ds[0], ds[1]  # 100 and 4 detections
    batch = collate([a, b])
    assert batch.region_features.shape == (2, 101, 16)
    assert batch.region_mask.sum(1).tolist() == [101, 5]
    assert batch.input_ids.shape[1] == max(a.input_ids.shape[1], b.input_ids.shape[1])
    assert batch.task_ids.tolist() == [1, 1] and batch.input_ids.dtype == torch.int64
    # Question 90 scores [1.0, 0, 0.3], question 250 [1.0, 0, 0]: answers 2 and 0 earn 0.3 + 1.0.
    logits = torch.tensor([[0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    assert vqa_soft_accuracy(logits, batch.target).score == pytest.approx(1.3)
    assert set(batch.trunk_inputs()) == {
        "input_ids",
        "attention_mask",
        "task_ids",
        "region_features",
        "region_locations",
        "region_mask",
    }


def test_every_task_loads_from_the_fixture(reference_root, fixture_config):
    for task in TASKS:
        from training.datasets import split_names

        ds = load(task, reference_root, split_names(task)["train"], fixture_config)
        ex = ds[0]
        assert ex.task_id == task.task_id
        assert ex.input_ids.shape[1] <= task.max_text_tokens
        assert ex.region_features.shape[1] <= task.max_regions
