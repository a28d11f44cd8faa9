"""export/versions.py: the versions of one repository, which is active, and the serving configs (no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.versions import (
    ACTIVE_FILE,
    VersionError,
    active_version,
    next_version,
    read_active,
    read_answers,
    resolve,
    serving_config,
    versions,
    write_active,
    write_serving_configs,
)

CONFIG = """name: "head_answer"
backend: "python"
max_batch_size: 64
version_policy: { latest: { num_versions: 1 } }
input [
  {
    name: "fused"
    data_type: TYPE_FP32
    dims: [ 32 ]
  }
]
output [
  {
    name: "logits"
    data_type: TYPE_FP32
    dims: [ %d ]
  }
]
"""


def add(repository: Path, version: int, answers: int = 11, config: str | None = None) -> None:
    """A version as `python -m export` lays it out: graph folder, configs, manifest last."""
    (repository / "head_answer" / str(version)).mkdir(parents=True)
    meta = repository / "versions" / str(version)
    (meta / "configs").mkdir(parents=True)
    (meta / "configs" / "head_answer.pbtxt").write_text(config or CONFIG % answers)
    (meta / "answers.vqa.json").write_text(json.dumps([f"a{i}" for i in range(answers)]))
    manifest = {"version": version, "models": {"head_answer": {}}, "answer_vocabularies": ["vqa"]}
    (meta / "export.json").write_text(json.dumps(manifest))


def test_versions_active_and_next(tmp_path: Path):
    assert versions(tmp_path) == [] and next_version(tmp_path) == 1
    with pytest.raises(VersionError, match="no exported model"):
        active_version(tmp_path)
    add(tmp_path, 1)
    add(tmp_path, 2, answers=5)
    assert versions(tmp_path) == [1, 2] and active_version(tmp_path) == 2  # no active.json: the newest
    write_active(tmp_path, 1, None)
    assert active_version(tmp_path) == 1 and resolve(tmp_path, None) == 1
    write_active(tmp_path, 2, 1)
    assert read_active(tmp_path)["previous"] == 1 and len(read_active(tmp_path)["history"]) == 2
    assert read_answers(tmp_path, 2)["vqa"] == [f"a{i}" for i in range(5)]
    with pytest.raises(VersionError, match=r"no version 7 \(versions: 1, 2\)"):
        resolve(tmp_path, 7)
    # An export that died before its manifest: its graph folder is no version, but its number is taken.
    (tmp_path / "head_answer" / "3").mkdir()
    assert versions(tmp_path) == [1, 2] and next_version(tmp_path) == 3 + 1
    (tmp_path / ACTIVE_FILE).write_text('{"version": 9}')  # names a version that is gone: the newest
    assert active_version(tmp_path) == 2


def test_serving_config_names_the_loaded_versions_and_merges_tensor_sizes(tmp_path: Path):
    add(tmp_path, 1, answers=11)
    add(tmp_path, 2, answers=5)
    alone = serving_config(tmp_path, "head_answer", [1])
    assert "version_policy: { specific: { versions: [ 1 ] } }" in alone and "dims: [ 11 ]" in alone
    both = serving_config(tmp_path, "head_answer", [1, 2])
    assert "versions: [ 1, 2 ]" in both
    assert "dims: [ -1 ]" in both and "dims: [ 32 ]" in both  # the answer width varies, the input not
    assert write_serving_configs(tmp_path, [1, 2]) == ["head_answer"]
    assert write_serving_configs(tmp_path, [1, 2]) == []  # unchanged: Triton need not reload it
    assert (tmp_path / "head_answer" / "config.pbtxt").read_text() == both


def test_versions_exported_with_other_triton_settings_are_refused(tmp_path: Path):
    add(tmp_path, 1)
    add(tmp_path, 2, config=(CONFIG % 11).replace("max_batch_size: 64", "max_batch_size: 8"))
    with pytest.raises(VersionError, match="different Triton settings"):
        serving_config(tmp_path, "head_answer", [1, 2])


def test_a_repository_written_before_versions_reads_as_one_version(tmp_path: Path):
    (tmp_path / "export.json").write_text(json.dumps({"version": 1, "models": {}, "answer_vocabularies": []}))
    assert versions(tmp_path) == [1] and active_version(tmp_path) == 1
