"""The release files: answer lists through the restricted unpickler, `--official` without answers,
`--release DIR` (checks before any conversion, digests, permissions) and `--pretrained`."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

from testkit.release_files import (
    OFFICIAL_KEYS_FILE,
    PRETRAINED_KEYS_FILE,
    fake_answers,
    fake_official_state_dict,
    official_state_shapes,
    read_key_list,
    write_answer_pickle,
    write_fake_pretrained,
    write_fake_release,
)
from tests.regions.conftest import tiny_bottleneck_preset
from vilbert import checkpoint as ckpt_module
from vilbert.checkpoint import load_checkpoint, to_official_state_dict
from vilbert.config import base, preset
from vilbert.convert import main as convert_main
from vilbert.release import ReleaseError, read_answer_vocabulary
from vilbert.safe_pickle import UnsafePickleError, load_pickle

# ------------------------------------------------------------------------------- fixtures


def official_json(tmp_path: Path, cfg) -> Path:
    d = cfg.to_dict()
    d.pop("preset")
    path = tmp_path / f"{cfg.preset}.json"
    path.write_text(json.dumps({**d, "hidden_act": "gelu", "v_target_size": 1601}))
    return path


@pytest.fixture
def tiny_release(tmp_path):
    """A tiny-model release with a tiny X-FPN detector (attribute head on), every optional file."""
    det = tiny_bottleneck_preset(True)
    det_json = tmp_path / "detector-preset.json"
    det_json.write_text(det.to_json())
    rel = write_fake_release(
        tmp_path / "release", cfg=preset("tiny"), detector_preset=det, attribute_head=True, vg_qa_answers=True
    )
    args = ["--config", str(official_json(tmp_path, preset("tiny"))), "--detector-preset", str(det_json)]
    return rel, args


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def assert_world_readable(root: Path) -> None:
    for name, mode in modes(root).items():
        path = root / name
        if path.is_dir():
            assert mode & 0o755 == 0o755, f"{name}: {oct(mode)}"
        else:
            assert mode & 0o644 == 0o644, f"{name}: {oct(mode)}"


@pytest.fixture
def private_umask():
    old = os.umask(0o077)  # the most private umask: the outputs must still be readable
    yield
    os.umask(old)


# ------------------------------------------------------------------------------- the fakes themselves


def test_fake_shapes_equal_the_released_key_lists():
    """The fakes for other configs are derived by rules; for `base` those rules give the lists."""
    assert list(official_state_shapes(base()).items()) == list(read_key_list(OFFICIAL_KEYS_FILE).items())
    pretrained = read_key_list(PRETRAINED_KEYS_FILE)
    assert len(pretrained) == 533
    assert list(official_state_shapes(base(), pretrained=True).items()) == list(pretrained.items())


# ------------------------------------------------------------------------------- restricted unpickler


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_answer_pickles_cannot_run_code(tmp_path):
    evil = tmp_path / "trainval_label2ans.pkl"
    evil.write_bytes(pickle.dumps(["yes", _RunsCode()], protocol=2))
    with pytest.raises(UnsafePickleError, match=r"refuses the global posix\.system"):
        load_pickle(evil)
    with pytest.raises(ReleaseError, match=r"trainval_label2ans\.pkl: refuses the global posix\.system"):
        read_answer_vocabulary(evil, 2, "vqa")
    # Protocols 0-5 of plain containers load; sets and bytes need their (harmless) globals at protocol 2.
    for protocol in range(6):
        data = {"a": [1, 2.5, None, True, ("x", b"y")], "s": {1, 2}, "f": frozenset({3})}
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_pickle(tmp_path / "ok.pkl") == data
    import numpy as np

    (tmp_path / "np.pkl").write_bytes(pickle.dumps({"ids": np.arange(3)}))
    with pytest.raises(UnsafePickleError, match="numpy"):
        load_pickle(tmp_path / "np.pkl")
    assert load_pickle(tmp_path / "np.pkl", numpy=True)["ids"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"yes": 0, "no": 1}, r"holds a dict, expected a pickled list of 3 answer strings .*ans2label"),
        (["yes", "no"], r"2 answers, expected 3 \(the width of vil_prediction"),
        (["yes", 2, "no"], r"entry 1 is a int, expected a pickled list of 3 answer strings"),
        ("yes no 2", r"holds a str, expected a pickled list"),
    ],
    ids=["ans2label", "short", "not-a-string", "not-a-list"],
)
def test_answer_list_checks_name_the_file(tmp_path, content, expected):
    path = write_answer_pickle(tmp_path / "trainval_label2ans.pkl", content)
    with pytest.raises(ReleaseError, match=expected) as err:
        read_answer_vocabulary(path, 3, "vqa")
    assert str(err.value).startswith(str(path))


# ------------------------------------------------------------------------------- --official


@pytest.fixture
def tiny_official_file(tmp_path):
    torch.save(fake_official_state_dict(preset("tiny")), tmp_path / "multi_task_model.bin")
    return tmp_path / "multi_task_model.bin", official_json(tmp_path, preset("tiny"))


def test_official_without_answers_warns_and_records_it(tiny_official_file, tmp_path, capsys, private_umask):
    model, cfg = tiny_official_file
    code = convert_main(["--official", str(model), "--config", str(cfg), "--out", str(tmp_path / "ck")])
    assert code == 0
    err = capsys.readouterr().err
    assert "WARNING: no answer list for vqa, gqa" in err and "answer_<i>" in err
    assert "datasets/VQA/cache/trainval_label2ans.pkl  (11 answers)  -> --vqa-answers" in err
    meta = json.loads((tmp_path / "ck" / "checkpoint.json").read_text())
    assert meta["answers_missing"] == ["vqa", "gqa"] and meta["warnings"]
    assert load_checkpoint(tmp_path / "ck").answers == {}
    assert_world_readable(tmp_path / "ck")  # even under umask 077


def test_official_with_answers_checks_them_before_the_weights(
    tiny_official_file, tmp_path, capsys, monkeypatch
):
    model, cfg = tiny_official_file
    vqa = write_answer_pickle(tmp_path / "vqa.pkl", fake_answers("vqa", 11))
    gqa = write_answer_pickle(tmp_path / "gqa.pkl", fake_answers("gqa", 6))  # the head has 7
    calls = []
    monkeypatch.setattr(ckpt_module, "load_official", lambda *a, **k: calls.append(a))
    argv = ["--official", str(model), "--config", str(cfg), "--out", str(tmp_path / "ck")]
    assert convert_main([*argv, "--vqa-answers", str(vqa), "--gqa-answers", str(gqa)]) == 2
    assert f"{gqa}: 6 answers, expected 7 (the width of vil_prediction_gqa (GQA))" in capsys.readouterr().err
    assert not calls and not (tmp_path / "ck").exists()
    monkeypatch.undo()
    gqa = write_answer_pickle(tmp_path / "gqa.pkl", fake_answers("gqa", 7))
    assert convert_main([*argv, "--vqa-answers", str(vqa), "--gqa-answers", str(gqa)]) == 0
    assert "WARNING" not in capsys.readouterr().err
    ck = load_checkpoint(tmp_path / "ck")
    assert ck.answers == {"vqa": fake_answers("vqa", 11), "gqa": fake_answers("gqa", 7)}
    assert "answers_missing" not in ck.meta


# ------------------------------------------------------------------------------- --release


def test_release_converts_everything_and_reuses_unchanged_steps(tiny_release, tmp_path, private_umask):
    rel, args = tiny_release
    out = tmp_path / "out"
    assert convert_main(["--release", str(rel.root), "--out", str(out), *args]) == 0
    ck = load_checkpoint(out / "model")
    back = to_official_state_dict(ck.model.state_dict(), ck.model.config)
    assert all(torch.equal(t, rel.state[name]) for name, t in back.items())
    assert ck.answers == {"vqa": fake_answers("vqa", 11), "gqa": fake_answers("gqa", 7)}

    from regions.weights import load_detector

    detector = load_detector(out / "detector" / "tiny-x-fpn.safetensors")
    names = detector.preset.class_names
    assert len(names) == 4 and names[0] == "object0" and names[1] == "object1"  # "object0,objects0"
    assert detector.preset.attributes.groups[0].value_names[:2] == ("attribute0", "attribute1")

    manifest = json.loads((out / "release.json").read_text())
    assert set(manifest["steps"]) == {"model", "detector"}
    assert set(manifest["steps"]["detector"]["inputs"]) == {
        "detectron_model.pth",
        "detectron_config.yaml",
        "objects_vocab.txt",
        "attributes_vocab.txt",
    }
    assert_world_readable(out)

    # Same inputs: nothing is rewritten.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert convert_main(["--release", str(rel.root), "--out", str(out), *args]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

    # New GQA answers: the model step runs again, the detector's output is reused as it was.
    weights = out / "detector" / "tiny-x-fpn.safetensors"
    inode = weights.stat().st_ino
    new = [f"other {i}" for i in range(7)]
    write_answer_pickle(rel.gqa_answers, new)
    assert convert_main(["--release", str(rel.root), "--out", str(out), *args]) == 0
    assert load_checkpoint(out / "model").answers["gqa"] == new
    assert weights.stat().st_ino == inode
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temporaries left


def _damage_answers_count(rel):
    write_answer_pickle(rel.vqa_answers, fake_answers("vqa", 10))


def _second_vqa_list(rel):
    write_answer_pickle(rel.root / "VQA" / "cache" / "trainval_label2ans.pkl", fake_answers("vqa", 11))


def _pretrained_beside(rel):
    torch.save({}, rel.root / "pretrained_model.bin")


def _vg_list_differs(rel):
    write_answer_pickle(rel.vg_qa_answers, list(reversed(fake_answers("vqa", 11))))


def _short_objects(rel):
    rel.objects_vocab.write_text("a\nb\n")


def _config_disagrees(rel):
    rel.detector_config.write_text(
        rel.detector_config.read_text().replace("NUM_CLASSES: 5", "NUM_CLASSES: 1601")
    )


def _trunk_misshaped(rel):
    state = dict(rel.state)
    state["vil_tri_prediction.weight"] = torch.zeros(4, 32)
    torch.save(state, rel.model)


def _detector_key_missing(rel):
    obj = torch.load(rel.detector, weights_only=True)
    obj["model"].pop("rpn.head.conv.bias")
    torch.save(obj, rel.detector)


@pytest.mark.parametrize(
    "damage, file, expected",
    [
        (
            lambda rel: rel.gqa_answers.unlink(),
            "datasets/gqa/cache/trainval_label2ans.pkl",
            "GQA answer list not found",
        ),
        (_damage_answers_count, "datasets/VQA/cache/trainval_label2ans.pkl", "10 answers, expected 11"),
        (_second_vqa_list, "VQA/cache/trainval_label2ans.pkl", "a second VQA answer list"),
        (_pretrained_beside, "pretrained_model.bin", "unexpected weights file .*--pretrained"),
        (
            _vg_list_differs,
            "datasets/visual_genome/cache/trainval_label2ans.pkl",
            "differs from .* at index 0",
        ),
        (lambda rel: rel.detector.unlink(), "detectron_model.pth", "region detector is missing"),
        (_short_objects, "objects_vocab.txt", "2 object names, expected 4"),
        (_config_disagrees, "detectron_config.yaml", "MODEL.ROI_BOX_HEAD.NUM_CLASSES is 1601, expected 5"),
        (_trunk_misshaped, "multi_task_model.bin", r"vil_tri_prediction.weight has shape \[4, 32\]"),
        (_detector_key_missing, "detectron_model.pth", "missing keys: rpn.head.conv.bias"),
    ],
    ids=[
        "missing-answers",
        "short-answers",
        "two-candidates",
        "extra-weights",
        "vg-qa-differs",
        "missing-detector",
        "objects-vocab",
        "yaml",
        "trunk-shape",
        "detector-key",
    ],
)
def test_release_stops_before_any_conversion(
    tiny_release, tmp_path, capsys, monkeypatch, damage, file, expected
):
    rel, args = tiny_release
    damage(rel)
    calls = []
    monkeypatch.setattr(ckpt_module, "load_official", lambda *a, **k: calls.append(a))
    code = convert_main(["--release", str(rel.root), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()
    assert len(line) == 1 and line[0].startswith(f"error: {rel.root / file}"), err
    assert pytest.importorskip("re").search(expected, err), err
    assert not calls  # the model conversion never started
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_release_without_detector_and_vocabularies(tmp_path, capsys):
    rel = write_fake_release(tmp_path / "release", detector=False, cfg=preset("tiny"))
    cfg = official_json(tmp_path, preset("tiny"))
    out = tmp_path / "out"
    argv = ["--release", str(rel.root), "--out", str(out), "--config", str(cfg)]
    assert convert_main(argv) == 2
    assert "detectron_model.pth: the region detector is missing" in capsys.readouterr().err
    assert convert_main([*argv, "--no-detector"]) == 0
    assert set(json.loads((out / "release.json").read_text())["steps"]) == {"model"}


# ------------------------------------------------------------------------------- --pretrained


def test_pretrained_import_keeps_the_trunk_and_initialises_tokens_and_heads(tmp_path, capsys, private_umask):
    cfg = preset("tiny")
    state = write_fake_pretrained(tmp_path / "pretrained_model.bin", cfg)
    assert "bert.embeddings.task_embeddings.weight" not in state and "cls.predictions.bias" in state
    argv = [
        "--pretrained",
        str(tmp_path / "pretrained_model.bin"),
        "--config",
        str(official_json(tmp_path, cfg)),
    ]
    assert convert_main([*argv, "--out", str(tmp_path / "ck")]) == 0
    assert "freshly initialised in heads.answer" in capsys.readouterr().out
    ck = load_checkpoint(tmp_path / "ck")
    model = ck.model
    back = to_official_state_dict(model.state_dict(), model.config)
    for name, tensor in state.items():
        if name in back:
            assert torch.equal(back[name], tensor), name
    fresh = ck.meta["pretrained"]["fresh_parameters"]
    assert "trunk.text_embeddings.task.weight" in fresh
    assert all(n.startswith("heads.") for n in fresh if n != "trunk.text_embeddings.task.weight")
    params = dict(model.named_parameters())
    assert {n for n in params if n.startswith("heads.")} <= set(fresh)
    # The reference's init_bert_weights: N(0, 0.02) weights, zero biases, unit LayerNorm.
    assert torch.equal(
        params["heads.answer.norm.weight"], torch.ones_like(params["heads.answer.norm.weight"])
    )
    assert not params["heads.answer.out.bias"].any()
    assert 0.015 < float(params["heads.answer.hidden.weight"].detach().std()) < 0.025
    assert 0.015 < float(params["trunk.text_embeddings.task.weight"].detach().std()) < 0.025
    assert_world_readable(tmp_path / "ck")


def test_pretrained_refuses_the_multi_task_model_and_names_missing_keys(tmp_path, capsys):
    cfg = preset("tiny")
    cfg_json = official_json(tmp_path, cfg)
    torch.save(fake_official_state_dict(cfg), tmp_path / "multi_task_model.bin")
    argv = ["--config", str(cfg_json), "--out", str(tmp_path / "ck")]
    assert convert_main(["--pretrained", str(tmp_path / "multi_task_model.bin"), *argv]) == 2
    assert "this is a multi-task model, not the pretrained one" in capsys.readouterr().err
    state = fake_official_state_dict(cfg, pretrained=True)
    state.pop("bert.encoder.c_layer.0.biattention.key1.weight")
    torch.save(state, tmp_path / "pretrained_model.bin")
    assert convert_main(["--pretrained", str(tmp_path / "pretrained_model.bin"), *argv]) == 2
    assert "missing keys: bert.encoder.c_layer.0.biattention.key1.weight" in capsys.readouterr().err
    assert not (tmp_path / "ck").exists()


def test_fit_starts_from_the_converted_pretrained_model(tmp_path):
    """`model.init_checkpoint` (training/configs/12in1.yaml) takes the converted pretrained model;
    answer targets follow its heads' widths, not the data's smaller vocabulary."""
    from testkit.reference_datasets import FIXTURE_CONFIG, build_reference_fixture
    from training.config import FitConfig
    from training.fit import Trainer

    cfg = preset("tiny")
    write_fake_pretrained(tmp_path / "pretrained_model.bin", cfg)
    cfg_json = official_json(tmp_path, cfg)
    assert (
        convert_main(
            [
                "--pretrained",
                str(tmp_path / "pretrained_model.bin"),
                "--config",
                str(cfg_json),
                "--out",
                str(tmp_path / "cc"),
            ]
        )
        == 0
    )
    root = build_reference_fixture(tmp_path / "data")
    (root / "datasets" / "loader_config.json").write_text(json.dumps(FIXTURE_CONFIG))
    root_cfg = Path(__file__).resolve().parents[2] / "training/configs/12in1.yaml"
    assert "init_checkpoint:" in root_cfg.read_text()
    fit = FitConfig.load(
        Path(__file__).resolve().parents[2] / "training/configs/tiny.yaml",
        [
            f"data.root={root}",
            f"out={tmp_path / 'run'}",
            "tasks=[vqa,gqa,refcoco]",
            "schedule.epochs=1",
            "optim.default_batch_size=2",
            f"model.init_checkpoint={tmp_path / 'cc'}",
        ],
    )
    trainer = Trainer(fit)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    pretrained = load_checkpoint(tmp_path / "cc").model.state_dict()
    assert all(torch.equal(start[k], v) for k, v in pretrained.items())
    final = load_checkpoint(trainer.run())
    assert final.model.config.num_answers == cfg.num_answers  # 11 outputs; the data has 3 answers
    assert len(final.answers["vqa"]) == 3
    changed = [k for k, v in final.model.state_dict().items() if not torch.equal(v, start[k])]
    assert "heads.answer.out.weight" in changed and "trunk.text_layers.0.attention.query.weight" in changed


@pytest.mark.slow
def test_release_with_the_released_detector_files(tmp_path, capsys):
    """The detector as released: its 810 tensors (+ the fork's attribute head), the X-152 config and
    Visual Genome's 1600 / 400 names, imported into vg-x152-fpn (5 s, 3 GB peak)."""
    rel = write_fake_release(tmp_path / "release", cfg=preset("tiny"), attribute_head=True)
    cfg = official_json(tmp_path, preset("tiny"))
    out = tmp_path / "out"
    assert convert_main(["--release", str(rel.root), "--out", str(out), "--config", str(cfg)]) == 0
    assert "detectron_config.yaml: 12 fields agree with the vg-x152-fpn preset" in capsys.readouterr().out
    from regions.weights import load_detector

    detector = load_detector(out / "detector" / "vg-x152-fpn.safetensors")
    assert len(detector.preset.class_names) == 1600 and detector.preset.class_names[7] == "object7"
    assert len(detector.preset.attributes.groups[0].value_names) == 400
    step = json.loads((out / "release.json").read_text())["steps"]["detector"]
    assert step["attribute_head"] and step["attribute_names"] == "attributes_vocab.txt"
    assert step["parameters"] == 207_579_300  # the release's 205,784,084 + the attribute head
