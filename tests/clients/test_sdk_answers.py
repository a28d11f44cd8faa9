"""`python -m bench.sdk_answers`: held-out questions through the SDK against a running gateway."""

from __future__ import annotations

import re

import pytest

from bench.sdk_answers import image_files, main, soft_score
from training.datasets import build_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from training.synthetic import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, size="small", seed=0, progress=False, placeholder_dim=32)
    return root


def test_soft_score_reads_the_datasets_targets(world):
    minval = build_dataset("vqa", world, "minval")
    entry = next(e for e in minval.entries if e.labels)
    best = max(range(len(entry.scores)), key=entry.scores.__getitem__)
    answer = minval.answer(entry.labels[best])
    assert soft_score(entry, minval, answer) == pytest.approx(entry.scores[best]) and entry.scores[best] > 0
    assert soft_score(entry, minval, "not an answer of this world") == 0.0
    files = image_files(world)
    assert entry.image_id in files and files[entry.image_id].is_file()


def test_questions_go_through_the_sdk_to_the_gateway(world, live_url, capsys):
    assert main(["--url", live_url, "--data", str(world), "--questions", "4"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.search(r"^4 held-out VQA questions .* soft accuracy ([\d.]+)%.* answer\): ([\d.]+)%$", line)
    assert found, line
    assert 0.0 <= float(found[1]) <= 100.0 and 0.0 <= float(found[2]) <= 100.0


def test_a_world_without_images_is_an_error(world, tmp_path, live_url, capsys):
    import shutil

    copy = tmp_path / "world"
    shutil.copytree(world / "datasets", copy / "datasets")
    assert main(["--url", live_url, "--data", str(copy), "--questions", "2"]) == 2
    assert "no minval question has an image" in capsys.readouterr().err
