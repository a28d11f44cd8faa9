import json

import pytest

from vilbert.config import PRESETS, ViLBERTConfig, preset
from vilbert.heads import MultiTaskViLBERT
from vilbert.modeling import ViLBERTTrunk

# config/bert_base_6layer_6conect.json of the reference repository, as released.
OFFICIAL_JSON = {
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "type_vocab_size": 2,
    "vocab_size": 30522,
    "v_feature_size": 2048,
    "v_target_size": 1601,
    "v_hidden_size": 1024,
    "v_num_hidden_layers": 6,
    "v_num_attention_heads": 8,
    "v_intermediate_size": 1024,
    "bi_hidden_size": 1024,
    "bi_num_attention_heads": 8,
    "bi_intermediate_size": 1024,
    "bi_attention_type": 1,
    "v_attention_probs_dropout_prob": 0.1,
    "v_hidden_act": "gelu",
    "v_hidden_dropout_prob": 0.1,
    "v_initializer_range": 0.02,
    "v_biattention_id": [0, 1, 2, 3, 4, 5],
    "t_biattention_id": [6, 7, 8, 9, 10, 11],
    "pooling_method": "mul",
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_round_trips_through_json(name, tmp_path):
    cfg = preset(name)
    cfg.save(tmp_path / "c.json")
    assert ViLBERTConfig.load(tmp_path / "c.json") == cfg


def test_official_json_gives_the_base_preset(tmp_path):
    path = tmp_path / "bert_base_6layer_6conect.json"
    path.write_text(json.dumps(OFFICIAL_JSON))
    cfg = ViLBERTConfig.from_official_json(path, preset="base")
    assert cfg == preset("base")


def test_official_json_rejects_unknown_fields(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**OFFICIAL_JSON, "mystery_knob": 3}))
    with pytest.raises(ValueError, match="mystery_knob"):
        ViLBERTConfig.from_official_json(path)


def test_invalid_config_names_the_problem():
    with pytest.raises(ValueError, match="hidden_size % num_attention_heads"):
        ViLBERTConfig(hidden_size=100, num_attention_heads=12)
    with pytest.raises(ValueError, match="unknown ViLBERT config fields: nope"):
        ViLBERTConfig.from_dict({"nope": 1})


def test_base_schedule_is_the_official_call_order():
    # the official encoder's call order (co-attention k follows text layer 5+k), after text layers 0-5
    # (the image-free prefix)
    expected = "c0 t6 v0 c1 t7 v1 c2 t8 v2 c3 t9 v3 c4 t10 v4 c5 v5 t11".split()
    letter = {"co": "c", "text": "t", "image": "v"}
    got = [f"{letter[s]}{i}" for s, i in ViLBERTTrunk.schedule(preset("base"))]
    assert got == expected
    assert preset("base").text_prefix_layers == 6


def test_demo_text_stream_is_shaped_like_minilm():
    cfg = preset("demo")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (
        6,
        384,
        12,
        1536,
    )
    assert preset("demo", v_feature_size=512).v_feature_size == 512
    n = sum(p.numel() for p in MultiTaskViLBERT(cfg).parameters())
    assert n < 40_000_000  # small enough to train on 2 CPU cores
