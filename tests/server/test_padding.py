"""Padding only as far as a request needs vs the reference's pad-to-task-maximum (`pad_to_task_max`)."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.inference import pad_to_task_max
from testkit.tiny_gateway import task_body, tiny_settings
from vilbert.tasks import TASKS, task_for_dataset


def test_pad_to_task_max_pads_with_masked_rows():
    task = task_for_dataset("vqa", "vqa")
    inputs = {
        "input_ids": np.array([[101, 7, 102]]),
        "attention_mask": np.ones((1, 3), np.int64),
        "task_ids": np.array([task.task_id]),
        "region_features": np.ones((1, 4, 6), np.float32),
        "region_locations": np.ones((1, 4, 5), np.float32),
        "region_mask": np.ones((1, 4), np.int64),
    }
    out = pad_to_task_max(inputs, task)
    assert out["input_ids"].shape == out["attention_mask"].shape == (1, task.max_text_tokens)
    assert out["region_features"].shape == (1, task.max_regions, 6)
    assert out["region_locations"].shape == (1, task.max_regions, 5)
    assert out["attention_mask"].sum() == 3 and out["region_mask"].sum() == 4
    assert (out["input_ids"][:, 3:] == 0).all() and (out["region_features"][:, 4:] == 0).all()
    assert out["task_ids"] is inputs["task_ids"]
    assert pad_to_task_max(out, task)["input_ids"].shape == out["input_ids"].shape  # idempotent


@pytest.mark.parametrize("dataset", ["vqa", "refcoco", "snli_ve"])
def test_padded_requests_answer_the_same(tmp_path, tiny_checkpoint, components, pngs, dataset):
    """Padded rows are masked, so the reference's fixed shapes give the same answers, only slower."""
    task = next(t for t in TASKS if t.dataset == dataset)
    body = task_body(task, pngs[2])
    answers = []
    for pad in (False, True):
        settings = tiny_settings(tmp_path / str(pad), tiny_checkpoint, pad_to_task_max=pad)
        with TestClient(create_app(settings, components)) as client:
            r = client.post(f"/{task.endpoint}", json=body)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    plain, padded = answers
    assert plain.keys() == padded.keys()
    flat = [v for d in (plain, padded) for v in _numbers(d)]
    half = len(flat) // 2
    np.testing.assert_allclose(flat[:half], flat[half:], atol=1e-4)


def _numbers(value) -> list[float]:
    if isinstance(value, dict):
        return [x for k in sorted(value) for x in _numbers(value[k])]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []
