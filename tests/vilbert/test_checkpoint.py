"""Checkpoint format, the strict official import, and the MiniLM text-stream init."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from testkit.release_files import OFFICIAL_KEYS_FILE
from tests.vilbert.official_reference import random_official_state_dict
from vilbert.checkpoint import (
    CheckpointError,
    convert_official_state_dict,
    init_text_stream_from_hf_bert,
    load_checkpoint,
    official_key_map,
    save_checkpoint,
    to_official_state_dict,
)
from vilbert.config import preset
from vilbert.convert import main as convert_main
from vilbert.heads import MultiTaskViLBERT
from vilbert.tokenizer import load_tokenizer, minilm_dir

# The official key list, packaged with the fixtures so the tests do not depend on the shared folder.
_VENDORED_KEYS = OFFICIAL_KEYS_FILE


def official_keys() -> list[tuple[str, tuple[int, ...]]]:
    path = _VENDORED_KEYS
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, rest = line.split(" ", 1)
        dims = rest[rest.index("[") + 1 : rest.index("]")]
        rows.append((name, tuple(int(x) for x in dims.split(",") if x.strip())))
    return rows


def test_key_map_covers_exactly_the_560_official_keys_in_order():
    rules = official_key_map(preset("base"))
    assert [r.official for r in rules] == [k for k, _ in official_keys()]
    assert len(rules) == 560
    dropped = [r.official for r in rules if r.ours is None]
    assert all(r.reason for r in rules if r.ours is None)
    assert len(dropped) == 16 and all(k.startswith(("cls.", "linguisic_logit")) for k in dropped)


def test_base_parameter_count_equals_the_official_keys_we_keep():
    shapes = dict(official_keys())
    kept = [r.official for r in official_key_map(preset("base")) if r.ours is not None]
    official_kept = sum(torch.Size(shapes[k]).numel() for k in kept)
    ours = sum(p.numel() for p in MultiTaskViLBERT(preset("base")).parameters())
    # 264,710,717 = the released 268,028,859 unique parameters minus the pretraining heads
    # (cls.*: 3,317,373 without the tied decoder) and linguisic_logit (769).
    assert ours == official_kept == 264_710_717
    all_unique = sum(
        torch.Size(s).numel() for k, s in shapes.items() if k != "cls.predictions.decoder.weight"
    )
    assert all_unique == 268_028_859


def tiny_official_json(tmp_path: Path) -> Path:
    cfg = preset("tiny").to_dict()
    cfg.pop("preset")
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**cfg, "hidden_act": "gelu", "v_target_size": 1601}))
    return path


@pytest.fixture
def tiny_official(tmp_path):
    state = random_official_state_dict(preset("tiny"), seed=7)
    return state, tiny_official_json(tmp_path)


def test_convert_cli_round_trip_tiny(tiny_official, tmp_path):
    state, cfg_json = tiny_official
    torch.save(state, tmp_path / "official.bin")
    assert (
        convert_main(
            [
                "--official",
                str(tmp_path / "official.bin"),
                "--config",
                str(cfg_json),
                "--out",
                str(tmp_path / "ckpt"),
            ]
        )
        == 0
    )
    loaded = load_checkpoint(tmp_path / "ckpt").model
    back = to_official_state_dict(loaded.state_dict(), loaded.config)
    for name, tensor in back.items():
        assert torch.equal(tensor, state[name]), name


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda s: s.pop("bert.encoder.c_layer.1.biattention.key2.bias"),
            "missing keys: bert.encoder.c_layer.1.biattention.key2.bias",
        ),
        (
            lambda s: s.__setitem__(
                "bert.encoder.layer.0.attention.self.query.wieght",
                s.pop("bert.encoder.layer.0.attention.self.query.weight"),
            ),
            "unexpected keys: bert.encoder.layer.0.attention.self.query.wieght",
        ),
        (
            lambda s: s.__setitem__("vil_tri_prediction.weight", torch.zeros(4, 32)),
            r"mis-shaped keys: vil_tri_prediction.weight has shape \[4, 32\], expected \[3, 32\]",
        ),
    ],
    ids=["missing", "renamed", "reshaped"],
)
def test_convert_cli_fails_naming_the_bad_key(tiny_official, tmp_path, capsys, damage, expected):
    state, cfg_json = tiny_official
    damage(state)
    torch.save(state, tmp_path / "official.bin")
    code = convert_main(
        [
            "--official",
            str(tmp_path / "official.bin"),
            "--config",
            str(cfg_json),
            "--out",
            str(tmp_path / "ckpt"),
        ]
    )
    assert code == 2
    assert pytest.importorskip("re").search(expected, capsys.readouterr().err)
    assert not (tmp_path / "ckpt").exists()


def test_module_prefix_and_gamma_beta_names_are_accepted():
    cfg = preset("tiny")
    state = random_official_state_dict(cfg, seed=1)
    renamed = {}
    for k, v in state.items():
        k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        renamed["module." + k] = v
    converted = convert_official_state_dict(renamed, cfg)
    assert torch.equal(
        converted["trunk.text_embeddings.norm.weight"], state["bert.embeddings.LayerNorm.weight"]
    )


@pytest.mark.slow
def test_convert_cli_round_trip_base_with_the_official_shapes(tmp_path):
    """560 random tensors with the official names and shapes -> our format -> back, unchanged."""
    state = random_official_state_dict(None, seed=0, key_file=_VENDORED_KEYS)
    state["cls.predictions.decoder.weight"] = state["bert.embeddings.word_embeddings.weight"]  # tied
    torch.save(state, tmp_path / "multi_task_model.bin")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vilbert.convert",
            "--official",
            str(tmp_path / "multi_task_model.bin"),
            "--out",
            str(tmp_path / "ckpt"),
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "264,710,717 parameters" in out.stdout
    (tmp_path / "multi_task_model.bin").unlink()
    back = to_official_state_dict(load_checkpoint(tmp_path / "ckpt").model.state_dict(), preset("base"))
    assert len(back) == 544
    for name, tensor in back.items():
        assert torch.equal(tensor, state[name]), name


def test_checkpoint_save_load_keeps_weights_answers_and_task_table(tmp_path):
    model = MultiTaskViLBERT(preset("tiny"))
    save_checkpoint(tmp_path / "c", model, answers={"vqa": ["yes", "no", "2"]}, meta={"step": 5})
    ck = load_checkpoint(tmp_path / "c")
    assert ck.answers == {"vqa": ["yes", "no", "2"]}
    assert ck.meta["step"] == 5 and len(ck.meta["tasks"]) == 12
    for (k, a), b in zip(model.state_dict().items(), ck.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_checkpoint_write_is_atomic(tmp_path):
    model = MultiTaskViLBERT(preset("tiny"))
    save_checkpoint(tmp_path / "c", model, meta={"step": 1})

    class BoomError(RuntimeError):
        pass

    bad = MultiTaskViLBERT(preset("tiny"))
    bad.config.save = lambda path: (_ for _ in ()).throw(BoomError())  # fail half-way through writing
    with pytest.raises(BoomError):
        save_checkpoint(tmp_path / "c", bad, meta={"step": 2})
    assert load_checkpoint(tmp_path / "c").meta["step"] == 1  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temp files left behind


def test_checkpoint_load_names_mismatched_keys(tmp_path):
    save_checkpoint(tmp_path / "c", MultiTaskViLBERT(preset("tiny")))
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    cfg["num_answers"] = 12
    (tmp_path / "c" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"heads\.answer\.out\.weight"):
        load_checkpoint(tmp_path / "c")


def test_demo_text_stream_from_minilm_reproduces_minilm_hidden_states():
    transformers = pytest.importorskip("transformers")
    model = MultiTaskViLBERT(preset("demo")).eval()
    loaded = init_text_stream_from_hf_bert(model, minilm_dir())
    assert len(loaded) == 5 + 16 * 6  # embeddings + 6 layers, every text parameter
    reference = transformers.BertModel.from_pretrained(str(minilm_dir())).eval()
    enc = load_tokenizer().encode_batch(
        ["a small red circle to the left of a blue square", "how many triangles?"], max_tokens=23
    )
    ids, mask = torch.tensor(enc.input_ids), torch.tensor(enc.attention_mask)
    with torch.no_grad():
        ours = model.trunk.encode_text_only(ids, mask)
        theirs = reference(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours[real], theirs[real], atol=1e-4, rtol=1e-4)


def test_hf_init_refuses_a_bert_of_the_wrong_shape():
    model = MultiTaskViLBERT(preset("demo", num_hidden_layers=7, t_biattention_id=[4, 5]))
    with pytest.raises(CheckpointError, match=r"encoder.layer.6.*7 layers"):
        init_text_stream_from_hf_bert(model, minilm_dir())
    narrow = MultiTaskViLBERT(preset("tiny", num_hidden_layers=6))
    with pytest.raises(CheckpointError, match=r"embeddings.word_embeddings.weight has shape \[30522, 384\]"):
        init_text_stream_from_hf_bert(narrow, minilm_dir())
