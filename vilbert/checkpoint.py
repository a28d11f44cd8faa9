"""Checkpoints: our on-disk format, the strict import of the official 12-in-1 weights, and
initialising the text stream from a BERT checkpoint in the Hugging Face layout.

Our format is a directory::

    model.safetensors     weights (our parameter names)
    config.json           ViLBERTConfig
    checkpoint.json       format version, task table version and rows, provenance
    answers/vqa.json      answer vocabularies (index -> answer string), when known
    answers/gqa.json

It is written atomically: into a temporary sibling directory (files fsynced) that is renamed into
place, then the parent directory is fsynced.  A training run keeps a rotating set of them
(`save_rotating`): a `latest` pointer replaced atomically, old ones removed by renaming them away
first, and `clean_checkpoint_dir` removing whatever a run killed mid-write left behind.

The official import is driven by `official_key_map`: one explicit rule per key of the released
`multi_task_model.bin` (560 keys), either the name it takes here or the reason it is dropped.
Any missing, unexpected or mis-shaped key stops the import with an error naming that key.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vilbert.config import ViLBERTConfig, answer_widths
from vilbert.heads import MultiTaskViLBERT
from vilbert.io import (
    atomic_write_dir,
    atomic_write_text,
    check_state_dict,
    load_state_dict_strict,
    restore_interrupted_dir,
)
from vilbert.tasks import TASK_TABLE_VERSION, TASKS, as_dict

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
META_FILE = "checkpoint.json"
ANSWERS_DIR = "answers"


class CheckpointError(ValueError):
    """A checkpoint does not match the model: names the offending key(s)."""


# ---------------------------------------------------------------------------------------------
# The official key map
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRule:
    official: str
    ours: str | None  # None: deliberately dropped
    reason: str = ""  # why a key is dropped


_BERT_LAYER = [  # (official suffix, our suffix) inside one BERT layer, in state_dict order
    ("attention.self.query", "attention.query"),
    ("attention.self.key", "attention.key"),
    ("attention.self.value", "attention.value"),
    ("attention.output.dense", "attention.out"),
    ("attention.output.LayerNorm", "attention.norm"),
    ("intermediate.dense", "ffn.up"),
    ("output.dense", "ffn.down"),
    ("output.LayerNorm", "ffn.norm"),
]

_CO_LAYER = [
    ("biattention.query1", "image_query"),
    ("biattention.key1", "image_key"),
    ("biattention.value1", "image_value"),
    ("biattention.query2", "text_query"),
    ("biattention.key2", "text_key"),
    ("biattention.value2", "text_value"),
    ("biOutput.dense1", "image_out"),
    ("biOutput.LayerNorm1", "image_norm"),
    ("biOutput.q_dense1", "unused_image_proj"),
    ("biOutput.dense2", "text_out"),
    ("biOutput.LayerNorm2", "text_norm"),
    ("biOutput.q_dense2", "unused_text_proj"),
    ("v_intermediate.dense", "image_ffn.up"),
    ("v_output.dense", "image_ffn.down"),
    ("v_output.LayerNorm", "image_ffn.norm"),
    ("t_intermediate.dense", "text_ffn.up"),
    ("t_output.dense", "text_ffn.down"),
    ("t_output.LayerNorm", "text_ffn.norm"),
]

_CLASSIFIER = [("logit_fc.0", "hidden"), ("logit_fc.2", "norm"), ("logit_fc.3", "out")]

_PRETRAINING = "pretraining head (masked-LM / region-class / alignment); no 12-in-1 task reads it"


def _wb(official: str, ours: str) -> list[KeyRule]:
    return [KeyRule(f"{official}.weight", f"{ours}.weight"), KeyRule(f"{official}.bias", f"{ours}.bias")]


def text_embedding_rules(prefix: str = "bert.") -> list[KeyRule]:
    """Text embeddings; `prefix=""` gives the Hugging Face BertModel names."""
    e, o = f"{prefix}embeddings", "trunk.text_embeddings"
    return [
        KeyRule(f"{e}.word_embeddings.weight", f"{o}.word.weight"),
        KeyRule(f"{e}.position_embeddings.weight", f"{o}.position.weight"),
        KeyRule(f"{e}.token_type_embeddings.weight", f"{o}.token_type.weight"),
        *_wb(f"{e}.LayerNorm", f"{o}.norm"),
    ]


def text_layer_rules(index: int, prefix: str = "bert.") -> list[KeyRule]:
    rules: list[KeyRule] = []
    for official, ours in _BERT_LAYER:
        rules += _wb(f"{prefix}encoder.layer.{index}.{official}", f"trunk.text_layers.{index}.{ours}")
    return rules


def official_key_map(cfg: ViLBERTConfig) -> list[KeyRule]:
    """One rule per key of the official VILBertForVLTasks state_dict, in its order."""
    rules = text_embedding_rules()
    if cfg.task_specific_tokens:
        rules.append(KeyRule("bert.embeddings.task_embeddings.weight", "trunk.text_embeddings.task.weight"))
    rules += _wb("bert.v_embeddings.image_embeddings", "trunk.image_embeddings.features")
    rules += _wb("bert.v_embeddings.image_location_embeddings", "trunk.image_embeddings.locations")
    rules += _wb("bert.v_embeddings.LayerNorm", "trunk.image_embeddings.norm")
    for i in range(cfg.num_hidden_layers):
        rules += text_layer_rules(i)
    for i in range(cfg.v_num_hidden_layers):
        for official, ours in _BERT_LAYER:
            rules += _wb(f"bert.encoder.v_layer.{i}.{official}", f"trunk.image_layers.{i}.{ours}")
    for k in range(cfg.num_co_layers):
        for official, ours in _CO_LAYER:
            rules += _wb(f"bert.encoder.c_layer.{k}.{official}", f"trunk.co_layers.{k}.{ours}")
    rules += _wb("bert.t_pooler.dense", "trunk.text_pooler.dense")
    rules += _wb("bert.v_pooler.dense", "trunk.image_pooler.dense")
    dropped = [
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.predictions.transform.dense.bias",
        "cls.predictions.transform.LayerNorm.weight",
        "cls.predictions.transform.LayerNorm.bias",
        "cls.predictions.decoder.weight",
        "cls.bi_seq_relationship.weight",
        "cls.bi_seq_relationship.bias",
        "cls.imagePredictions.transform.dense.weight",
        "cls.imagePredictions.transform.dense.bias",
        "cls.imagePredictions.transform.LayerNorm.weight",
        "cls.imagePredictions.transform.LayerNorm.bias",
        "cls.imagePredictions.decoder.weight",
        "cls.imagePredictions.decoder.bias",
    ]
    rules += [KeyRule(k, None, _PRETRAINING) for k in dropped]
    for official, ours in (
        ("vil_prediction", "heads.answer"),
        ("vil_prediction_gqa", "heads.answer_gqa"),
        ("vil_binary_prediction", "heads.pair"),
    ):
        for o_suffix, our_suffix in _CLASSIFIER:
            rules += _wb(f"{official}.{o_suffix}", f"{ours}.{our_suffix}")
    rules += _wb("vil_logit", "heads.match")
    rules += _wb("vil_tri_prediction", "heads.triple")
    rules += _wb("vision_logit", "heads.region.score")
    rules += [
        KeyRule(f"linguisic_logit.{s}", None, "per-token text logit; no 12-in-1 task uses it")
        for s in ("weight", "bias")
    ]
    return rules


# ---------------------------------------------------------------------------------------------
# Reading official files
# ---------------------------------------------------------------------------------------------


def normalise_official_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Undo the two renamings seen in the wild: a DataParallel `module.` prefix, and the old
    TensorFlow-style LayerNorm names `gamma`/`beta` (the reference loader does the same)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.endswith(".gamma"):
            name = name[: -len(".gamma")] + ".weight"
        elif name.endswith(".beta"):
            name = name[: -len(".beta")] + ".bias"
        if name in out:
            raise CheckpointError(f"two keys map to {name!r} after normalising names (one is {key!r})")
        out[name] = value
    return out


def read_torch_state_dict(path: str | Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """A PyTorch pickle loaded safely (`weights_only=True`); unwraps {'state_dict': ...}/{'model': ...}.

    `mmap=True` maps the tensors' storage instead of reading it (names and shapes cost next to
    nothing: the checks before a conversion); files in the pre-1.6 format are read in full.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy format: no mmap
    except Exception as exc:  # the unpickler's own errors are cryptic; say what we expected
        raise CheckpointError(f"{path}: not a loadable PyTorch weights file ({exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state_dict (a dict of tensors)")
    return obj


def model_shapes(cfg: ViLBERTConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes for `cfg`, from a model built on the meta device (no memory,
    no initialisation: cheap even for `base`)."""
    with torch.device("meta"):
        model = MultiTaskViLBERT(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def convert_official_state_dict(
    state: Mapping[str, torch.Tensor], cfg: ViLBERTConfig, rules: list[KeyRule] | None = None
) -> dict[str, torch.Tensor]:
    """Official names -> ours, strictly: every key present, none unexpected, every shape right.

    `rules`: the key map (default `official_key_map(cfg)`); the pretrained import passes its own.
    Keys a rule maps are returned; the caller decides whether the model needs more (`load_official`
    needs every parameter, `load_pretrained` initialises the task tokens and heads itself).
    """
    state = normalise_official_names(state)
    rules = official_key_map(cfg) if rules is None else rules
    check_official_state_dict(state, cfg, rules)
    return {
        rule.ours: state[rule.official].detach().to(torch.float32).clone()
        for rule in rules
        if rule.ours is not None
    }


def check_official_state_dict(
    state: Mapping[str, torch.Tensor], cfg: ViLBERTConfig, rules: list[KeyRule] | None = None
) -> None:
    """`convert_official_state_dict`'s checks without its copies: names and shapes only (for a
    state dict memory-mapped from a release file, before the conversion itself).  One error names
    every missing, unexpected or mis-shaped key; a dropped key's shape is not checked."""
    state = normalise_official_names(state)
    rules = official_key_map(cfg) if rules is None else rules
    ours = model_shapes(cfg)
    check_state_dict(
        {r.official: None if r.ours is None else ours[r.ours] for r in rules},
        state,
        what="official checkpoint does not match the model",
        error=CheckpointError,
    )


def to_official_state_dict(
    model_state: Mapping[str, torch.Tensor], cfg: ViLBERTConfig
) -> dict[str, torch.Tensor]:
    """Our names -> official names for the keys we keep (dropped keys are absent)."""
    return {r.official: model_state[r.ours] for r in official_key_map(cfg) if r.ours is not None}


def load_official(path: str | Path, cfg: ViLBERTConfig | None = None) -> MultiTaskViLBERT:
    """Build the `base` model (or `cfg`) from a released `multi_task_model.bin`."""
    from vilbert.config import base

    cfg = cfg or base()
    converted = convert_official_state_dict(read_torch_state_dict(path), cfg)
    uncovered = sorted(set(model_shapes(cfg)) - set(converted))
    if uncovered:  # a bug in the key map, not in the user's file
        raise CheckpointError(f"key map leaves model parameters unset: {', '.join(uncovered)}")
    # Every parameter comes from the file: build on the meta device and take the converted tensors
    # (fresh float32 copies) as the parameters, instead of initialising 270M values to overwrite.
    with torch.device("meta"):
        model = MultiTaskViLBERT(cfg)
    model.load_state_dict(converted, strict=True, assign=True)
    return model


# ---------------------------------------------------------------------------------------------
# The Conceptual Captions pretrained ViLBERT (the 12-in-1 starting point)
# ---------------------------------------------------------------------------------------------

# Official head modules of VILBertForVLTasks: absent from the pretrained BertForMultiModalPreTraining.
_TASK_HEAD_PREFIXES = (
    "vil_prediction.",
    "vil_prediction_gqa.",
    "vil_binary_prediction.",
    "vil_logit.",
    "vil_tri_prediction.",
    "vision_logit.",
    "linguisic_logit.",
)
TASK_TOKEN_PARAMETER = "trunk.text_embeddings.task.weight"


def pretrained_key_map(cfg: ViLBERTConfig) -> list[KeyRule]:
    """One rule per key of the released `pretrained_model.bin` (BertForMultiModalPreTraining, 533
    keys for `base`): the trunk under its official names, the pretraining heads `cls.*` dropped by
    name.  It has no task-token table (pretrained with task_specific_tokens=False) and no task heads."""
    rules = []
    for rule in official_key_map(cfg):
        if rule.official.startswith(_TASK_HEAD_PREFIXES):
            continue
        if rule.official == "bert.embeddings.task_embeddings.weight":
            continue
        rules.append(rule)
    return rules


def fresh_pretrained_parameters(cfg: ViLBERTConfig) -> list[str]:
    """Our parameters a pretrained import leaves at their initial values: the task-token table and
    the six heads (and a pre-filter head when the config has one)."""
    mapped = {r.ours for r in pretrained_key_map(cfg) if r.ours is not None}
    return [name for name in model_shapes(cfg) if name not in mapped]


def load_pretrained(
    path: str | Path, cfg: ViLBERTConfig | None = None, seed: int = 0
) -> tuple[MultiTaskViLBERT, list[str]]:
    """The 12-in-1 starting point from the released `pretrained_model.bin`.

    The trunk is imported strictly (every key of `pretrained_key_map` present, none unexpected, every
    shape right; `cls.*` dropped by name); the task tokens and the six heads keep the initialisation
    `MultiTaskViLBERT` gives them, which is the reference's `init_bert_weights` (N(0, 0.02) weights,
    zero biases, unit LayerNorm), drawn from `seed`.  Returns the model and the fresh parameter names.
    """
    from vilbert.config import base

    cfg = cfg or base()
    state = read_torch_state_dict(path)
    task_heads = sorted(k for k in normalise_official_names(state) if k.startswith(_TASK_HEAD_PREFIXES))
    if task_heads:
        raise CheckpointError(
            f"{path}: has task-head keys ({', '.join(task_heads[:3])} ...): this is a multi-task model, "
            "not the pretrained one; convert it with --official"
        )
    converted = convert_official_state_dict(state, cfg, pretrained_key_map(cfg))
    fresh = fresh_pretrained_parameters(cfg)
    torch.manual_seed(seed)
    model = MultiTaskViLBERT(cfg)
    result = model.load_state_dict(converted, strict=False)
    if result.unexpected_keys or sorted(result.missing_keys) != sorted(fresh):  # a key-map bug
        unset = sorted(set(result.missing_keys) - set(fresh))
        raise CheckpointError(f"pretrained import left parameters unset: {unset} {result.unexpected_keys}")
    return model, fresh


# ---------------------------------------------------------------------------------------------
# Text stream from a Hugging Face BERT (MiniLM for the demo preset)
# ---------------------------------------------------------------------------------------------

_HF_IGNORED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")


def hf_bert_key_map(cfg: ViLBERTConfig) -> list[KeyRule]:
    """HF `BertModel` names -> our text stream (pooler dropped: ours projects to the co-attention width)."""
    rules = text_embedding_rules(prefix="")
    for i in range(cfg.num_hidden_layers):
        rules += text_layer_rules(i, prefix="")
    return rules


def read_hf_bert(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights of an HF BERT directory or file (`model.safetensors` preferred, else `pytorch_model.bin`)."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")
    state = load_file(str(path)) if path.suffix == ".safetensors" else read_torch_state_dict(path)
    # BertForPreTraining & co. prefix the encoder with "bert."; the bare BertModel does not.
    return {k.removeprefix("bert."): v for k, v in state.items() if not k.startswith("cls.")}


def init_text_stream_from_hf_bert(model: MultiTaskViLBERT, path: str | Path) -> list[str]:
    """Copy embeddings and text layers from an HF BERT checkpoint; strict on shapes and coverage.

    Returns the names of our parameters that were set.
    """
    cfg = model.config
    state = read_hf_bert(path)
    rules = hf_bert_key_map(cfg)
    ours = model.state_dict()
    check_state_dict(
        {r.official: tuple(ours[r.ours].shape) for r in rules},
        state,
        what=f"{path}: BERT checkpoint does not fit the text stream",
        ignore=_HF_IGNORED,
        hint=f"the text stream has {cfg.num_hidden_layers} layers of width {cfg.hidden_size}",
        error=CheckpointError,
    )
    loaded: list[str] = []
    with torch.no_grad():
        for rule in rules:
            dst = ours[rule.ours]
            dst.copy_(state[rule.official].to(dst.dtype))
            loaded.append(rule.ours)
    return loaded


# ---------------------------------------------------------------------------------------------
# Our format
# ---------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    model: MultiTaskViLBERT
    answers: dict[str, list[str]] = field(default_factory=dict)  # vocabulary name -> answers
    meta: dict = field(default_factory=dict)


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint directory without ever leaving a half-deleted one under its name: it is
    renamed to a hidden trash name first (atomic), then deleted (`clean_checkpoint_dir` finishes a
    deletion a crash interrupted)."""
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def clean_checkpoint_dir(directory: Path) -> list[Path]:
    """Remove what a process killed mid-write leaves in a checkpoint directory; returns what it removed.

    ``.NAME.tmp-*``: an unfinished write; ``.NAME.trash-*``: an unfinished deletion; ``.NAME.tmp``: an
    unfinished pointer update; ``.NAME.old-*``: the previous copy of a replaced checkpoint, put back
    when the crash fell between the two renames (NAME missing), otherwise removed.
    """
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for old in sorted(directory.glob(".*.old-*"), key=lambda p: p.stat().st_mtime):
        target = directory / old.name[1:].rsplit(".old-", 1)[0]
        if not target.exists():
            os.replace(old, target)
            continue
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    for pattern in (".*.tmp-*", ".*.trash-*", ".*.tmp"):
        for leftover in directory.glob(pattern):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed.append(leftover)
    return removed


def save_rotating(
    directory: Path,
    tag: str,
    model: MultiTaskViLBERT,
    keep_last: int,
    answers: Mapping[str, list[str]] | None = None,
    meta: Mapping | None = None,
    extra: Mapping[str, object] | None = None,
    prefix: str = "step-",
) -> Path:
    """Save checkpoint `directory/tag`, point `directory/latest` at it, keep the last `keep_last`.

    Killed at any moment, this leaves `latest` naming a complete checkpoint (the new one or the one
    before), and every `prefix*` directory complete.
    """
    path = save_checkpoint(directory / tag, model, answers, meta, extra)
    atomic_write_text(directory / "latest", tag)
    kept = sorted(p for p in directory.glob(f"{prefix}*") if p.is_dir())
    for old in kept[: max(0, len(kept) - keep_last)]:
        if old.name != tag:
            remove_checkpoint(old)
    return path


def save_checkpoint(
    path: str | Path,
    model: MultiTaskViLBERT,
    answers: Mapping[str, list[str]] | None = None,
    meta: Mapping | None = None,
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write our format atomically.  `extra`: file name -> object saved with `torch.save`
    (training state: optimiser, scheduler, RNG), loadable with `weights_only=True`."""
    path = Path(path)
    answers = dict(answers or {})
    for name, vocab in answers.items():
        size = answer_widths(model.config).get(name)
        if size is not None and len(vocab) > size:
            raise CheckpointError(f"answer vocabulary {name!r} has {len(vocab)} entries; the head has {size}")

    def write(tmp: Path) -> None:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "twelve-in-one"})
        model.config.save(tmp / CONFIG_FILE)
        info = {
            "format_version": FORMAT_VERSION,
            "task_table_version": TASK_TABLE_VERSION,
            "tasks": [as_dict(t) for t in TASKS],
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "answer_vocabularies": sorted(answers),
            **dict(meta or {}),
        }
        (tmp / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if answers:
            (tmp / ANSWERS_DIR).mkdir()
            for name, vocab in answers.items():
                (tmp / ANSWERS_DIR / f"{name}.json").write_text(json.dumps(list(vocab)))
        for name, obj in (extra or {}).items():
            torch.save(obj, tmp / name)

    atomic_write_dir(path, write)
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> Checkpoint:
    """Load our format strictly; an error names any missing, unexpected or mis-shaped key."""
    path = Path(path)
    restore_interrupted_dir(path)  # a crash between the two renames of a replacement
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path} is not a twelve-in-one checkpoint: {name} is missing")
    cfg = ViLBERTConfig.load(path / CONFIG_FILE)
    meta = json.loads((path / META_FILE).read_text()) if (path / META_FILE).is_file() else {}
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {meta['format_version']} is newer than this code ({FORMAT_VERSION})"
        )
    model = MultiTaskViLBERT(cfg)
    state = load_file(str(path / WEIGHTS_FILE), device=map_location)
    load_state_dict_strict(
        model, state, what=f"{path}: weights do not match config.json", error=CheckpointError
    )
    answers = {}
    if (path / ANSWERS_DIR).is_dir():
        for f in sorted((path / ANSWERS_DIR).glob("*.json")):
            answers[f.stem] = json.loads(f.read_text())
    return Checkpoint(model, answers, meta)
