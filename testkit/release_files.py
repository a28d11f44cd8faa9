"""Stand-ins for released files that cannot be downloaded here, built from their published key lists.

`fake_detectron_checkpoint` writes a file shaped like the 12-in-1 region extractor's
``detectron_model.pth`` (= ``model_final.pth`` of the vqa-maskrcnn-benchmark fork): what the fork's
``Checkpointer.save`` writes, ``torch.save({"model": state_dict, "optimizer": ..., "scheduler": ...,
"iteration": N})``, model keys ``module.``-prefixed when trained with DDP.  The names and shapes come
from ``detectron_model_keys.txt`` beside this module: the 810 tensors of the released checkpoint
(built from the fork's source with the release config and cross-checked against the real
checkpoint's load log, as its header says), not from our importer's key map, so a test built on
it checks that map against the release.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from regions.presets import VG_X152_FPN, RPNSpec
from regions.rpn import detectron_cell_anchors

DETECTRON_KEYS_FILE = Path(__file__).with_name("detectron_model_keys.txt")

# The fork's optional attribute head (ATTR: True; off in the release config, whose built model has
# none): cls_embed Embedding(1601, 256), attr_linear1 Linear(2048 + 256 -> 512),
# attr_linear2 Linear(512 -> 400).
FORK_ATTRIBUTE_HEAD: dict[str, tuple[int, ...]] = {
    "roi_heads.box.predictor.cls_embed.weight": (1601, 256),
    "roi_heads.box.predictor.attr_linear1.weight": (512, 2304),
    "roi_heads.box.predictor.attr_linear1.bias": (512,),
    "roi_heads.box.predictor.attr_linear2.weight": (400, 512),
    "roi_heads.box.predictor.attr_linear2.bias": (400,),
}

# Learnable parameters of the release (the key list's header), and with the attribute head added.
RELEASED_PARAMETERS = 205_784_084
RELEASED_PARAMETERS_WITH_ATTRIBUTES = 207_579_300


def released_detectron_shapes() -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor in the released checkpoint's ``model`` entry, in file order."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in DETECTRON_KEYS_FILE.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, dims = line.split(" ", 1)
        inside = dims.strip()[1:-1]  # "[512, 256, 1, 1]"
        shapes[name] = tuple(int(d) for d in inside.split(",") if d.strip())
    return shapes


def is_buffer(name: str) -> bool:
    """FrozenBatchNorm2d tensors and cell anchors are buffers in maskrcnn-benchmark, not parameters."""
    if "cell_anchors" in name:
        return True
    module = name.rsplit(".", 1)[0]  # e.g. backbone.body.layer1.0.bn1, backbone.body.layer1.0.downsample.1
    return module.rsplit(".", 1)[-1].startswith("bn") or module.endswith("downsample.1")


def _random_value(name: str, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    # Init-like scales so a small network built from it still proposes boxes; BN scale/variance > 0.
    leaf = name.rsplit(".", 1)[-1]
    if is_buffer(name) and leaf in ("weight", "running_var"):
        return torch.rand(shape, generator=g) + 0.5
    return torch.randn(shape, generator=g) * 0.02


def fake_detectron_checkpoint(
    path: str | Path,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    attribute_head: bool = False,
    ddp: bool = False,
    values: str = "index",
    rpn: RPNSpec = VG_X152_FPN.rpn,
    seed: int = 0,
    iteration: int = 90_000,
) -> dict[str, Tensor]:
    """Write a maskrcnn-benchmark checkpoint with these tensor names and shapes; return its model
    state dict (names without the DDP prefix).

    shapes: name -> shape; default the released checkpoint's 810 tensors, plus the fork's attribute
      head when `attribute_head`.
    ddp: prefix every model key with ``module.``, as a DDP-trained model saves them.
    values: "index": every tensor is filled with its position in `shapes` (one stored element,
      broadcast to the shape, so the full 205M-parameter file takes no memory, and a test can tell
      where each tensor went); "random": real random tensors (init-like scales, for a small
      network that has to run).
    rpn: the anchors' strides, sizes and ratios.  ``rpn.anchor_generator.cell_anchors.L`` always
      holds Detectron's cell anchors (a checkpoint stores what its generator computed).
    """
    if values not in ("index", "random"):
        raise ValueError(f"values must be 'index' or 'random', not {values!r}")
    shapes = dict(released_detectron_shapes() if shapes is None else shapes)
    if attribute_head:
        shapes.update(FORK_ATTRIBUTE_HEAD)
    g = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for i, (name, shape) in enumerate(shapes.items()):
        if "cell_anchors" in name:
            level = int(name.rsplit(".", 1)[1])
            stride, size = rpn.anchor_strides[level], rpn.anchor_sizes[level]
            state[name] = detectron_cell_anchors(stride, size, rpn.aspect_ratios)
        elif values == "index":
            state[name] = torch.tensor(float(i)).expand(shape)
        else:
            state[name] = _random_value(name, tuple(shape), g)
    learnable = [name for name in state if not is_buffer(name)]
    momentum = {
        i: {"momentum_buffer": torch.tensor(0.0).expand(state[n].shape)} for i, n in enumerate(learnable)
    }
    # make_optimizer: one SGD group per learnable tensor (biases get their own lr and decay).
    groups = [
        {
            "params": [i],
            "lr": 0.02 if n.endswith("bias") else 0.01,
            "momentum": 0.9,
            "dampening": 0,
            "weight_decay": 0.0 if n.endswith("bias") else 0.0001,
            "nesterov": False,
        }
        for i, n in enumerate(learnable)
    ]
    # WarmupMultiStepLR.state_dict(): its attributes other than the optimizer.
    scheduler = {
        "milestones": (240_000, 320_000),
        "gamma": 0.1,
        "warmup_factor": 1.0 / 3,
        "warmup_iters": 500,
        "warmup_method": "linear",
        "base_lrs": [group["lr"] for group in groups],
        "last_epoch": iteration,
    }
    prefix = "module." if ddp else ""
    torch.save(
        {
            "model": {prefix + name: t for name, t in state.items()},
            "optimizer": {"state": momentum, "param_groups": groups},
            "scheduler": scheduler,
            "iteration": iteration,
        },
        Path(path),
    )
    return state


# ---------------------------------------------------------------------------------------------------
# The multi-task model, the pretrained model, answer lists, vocabularies: a whole fake release
# ---------------------------------------------------------------------------------------------------
#
# Key lists beside this module: `official_state_dict_keys.txt` (the 560 tensors of
# multi_task_model.bin, VILBertForVLTasks) and `pretrained_state_dict_keys.txt` (the 533 tensors of
# pretrained_model.bin, BertForMultiModalPreTraining), copies of the shared reference lists.  For the
# `base` config the shapes below are read from them; for other configs (tiny) they are derived with
# the same rules, which a test checks against the lists for `base`.

OFFICIAL_KEYS_FILE = Path(__file__).with_name("official_state_dict_keys.txt")
PRETRAINED_KEYS_FILE = Path(__file__).with_name("pretrained_state_dict_keys.txt")
V_TARGET_SIZE = 1601  # the pretraining region-class head's width (Visual Genome classes + background)


def read_key_list(path: str | Path) -> dict[str, tuple[int, ...]]:
    """name -> shape from a key list ("name [d0, d1] dtype" per line, '#' comments)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, rest = line.split(" ", 1)
        dims = rest[rest.index("[") + 1 : rest.index("]")]
        shapes[name] = tuple(int(d) for d in dims.split(",") if d.strip())
    return shapes


def _pretraining_head_shapes(cfg) -> dict[str, tuple[int, ...]]:
    h, v, b = cfg.hidden_size, cfg.v_hidden_size, cfg.bi_hidden_size
    return {
        "cls.predictions.bias": (cfg.vocab_size,),
        "cls.predictions.transform.dense.weight": (h, h),
        "cls.predictions.transform.dense.bias": (h,),
        "cls.predictions.transform.LayerNorm.weight": (h,),
        "cls.predictions.transform.LayerNorm.bias": (h,),
        "cls.predictions.decoder.weight": (cfg.vocab_size, h),
        "cls.bi_seq_relationship.weight": (2, b),
        "cls.bi_seq_relationship.bias": (2,),
        "cls.imagePredictions.transform.dense.weight": (v, v),
        "cls.imagePredictions.transform.dense.bias": (v,),
        "cls.imagePredictions.transform.LayerNorm.weight": (v,),
        "cls.imagePredictions.transform.LayerNorm.bias": (v,),
        "cls.imagePredictions.decoder.weight": (V_TARGET_SIZE, v),
        "cls.imagePredictions.decoder.bias": (V_TARGET_SIZE,),
        "linguisic_logit.weight": (1, h),
        "linguisic_logit.bias": (1,),
    }


def official_state_shapes(cfg=None, *, pretrained: bool = False) -> dict[str, tuple[int, ...]]:
    """Names and shapes of multi_task_model.bin (or, `pretrained`, of pretrained_model.bin) for `cfg`,
    in file order.  `cfg=None`: the released files' own lists."""
    if cfg is None:
        return read_key_list(PRETRAINED_KEYS_FILE if pretrained else OFFICIAL_KEYS_FILE)
    from vilbert.checkpoint import model_shapes, official_key_map, pretrained_key_map

    ours = model_shapes(cfg)
    extra = _pretraining_head_shapes(cfg)
    rules = pretrained_key_map(cfg) if pretrained else official_key_map(cfg)
    return {r.official: ours[r.ours] if r.ours is not None else extra[r.official] for r in rules}


def fake_official_state_dict(cfg=None, *, pretrained: bool = False, seed: int = 0) -> dict[str, Tensor]:
    """Random tensors under the released names and shapes (see `official_state_shapes`).

    LayerNorm scales near 1, everything else N(0, 0.02) as the reference initialises it; the masked-LM
    decoder shares its tensor with the word embeddings, as in the released files (tied weights).
    """
    g = torch.Generator().manual_seed(seed)
    state: dict[str, Tensor] = {}
    for name, shape in official_state_shapes(cfg, pretrained=pretrained).items():
        if name == "cls.predictions.decoder.weight":
            state[name] = state["bert.embeddings.word_embeddings.weight"]
        elif name.endswith("LayerNorm.weight"):
            state[name] = 1.0 + 0.02 * torch.randn(shape, generator=g)
        else:
            state[name] = 0.02 * torch.randn(shape, generator=g)
    return state


def fake_answers(vocab: str, n: int) -> list[str]:
    """`n` distinct answer strings (a few real-looking ones first)."""
    common = ["yes", "no", "2", "1", "white", "3", "red", "blue"] if vocab == "vqa" else ["no", "yes", "left"]
    return [*common[:n], *(f"{vocab} answer {i}" for i in range(len(common[:n]), n))]


def write_answer_pickle(path: str | Path, answers: object, protocol: int = 2) -> Path:
    """An answer list pickled as the reference's scripts wrote them (cPickle, protocol 2)."""
    import pickle

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(answers, protocol=protocol))
    return path


def fake_vocab(kind: str, n: int) -> list[str]:
    """bottom-up-attention style vocabulary lines (some with comma-separated synonyms)."""
    return [f"{kind}{i},{kind}s{i}" if i % 7 == 0 else f"{kind}{i}" for i in range(n)]


def fake_detectron_config(preset) -> str:
    """A maskrcnn-benchmark YAML config consistent with `preset` (what `vilbert.release` checks)."""
    import yaml

    from vilbert.release import detector_config_fields

    doc: dict = {}
    for dotted, value in detector_config_fields(preset).items():
        node = doc
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    doc.setdefault("MODEL", {})["META_ARCHITECTURE"] = "GeneralizedRCNN"
    doc["MODEL"].setdefault("ROI_BOX_HEAD", {})["FEATURE_EXTRACTOR"] = "FPN2MLPFeatureExtractor"
    return yaml.safe_dump(doc, sort_keys=True)


@dataclass
class FakeRelease:
    """Paths of what `write_fake_release` wrote (None: not written)."""

    root: Path
    model: Path
    vqa_answers: Path
    gqa_answers: Path
    detector: Path | None = None
    detector_config: Path | None = None
    objects_vocab: Path | None = None
    attributes_vocab: Path | None = None
    vg_qa_answers: Path | None = None
    state: dict[str, Tensor] = field(default_factory=dict, repr=False)


def write_fake_release(
    root: str | Path,
    detector: bool = True,
    *,
    cfg=None,
    detector_preset=None,
    answers: bool = True,
    vocabularies: bool = True,
    detector_config: bool = True,
    vg_qa_answers: bool = False,
    attribute_head: bool = False,
    detector_values: str = "index",
    seed: int = 0,
) -> FakeRelease:
    """A 12-in-1 release directory in the reference layout (`vilbert/release.py`), random weights
    under the released names and shapes, saved as the release saved them (`torch.save` of a state dict).

    cfg: the model config (None: `base`, from the released key list: a 1.07 GB file).
    detector_preset: the detector's preset (None: vg-x152-fpn, the released 810 tensors, filled with
      one broadcast value each so the 205M-parameter file is small; a preset: random values at its shapes).
    answers / vocabularies / detector_config / vg_qa_answers: write those files.
    detector_values: for the released detector: "index" (one broadcast value per tensor: small file,
      for checking where each tensor lands; the network's outputs overflow) or "random" (init-like
      random values that run to finite boxes and features: a 0.8 GB file, for serving tests).
    """
    from vilbert.config import base
    from vilbert.release import (
        ANSWER_FILES,
        ATTRIBUTES_VOCAB_FILES,
        DETECTOR_CONFIG_FILE,
        DETECTOR_FILE,
        MODEL_FILE,
        OBJECTS_VOCAB_FILES,
        VG_QA_ANSWER_FILES,
    )

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    state = fake_official_state_dict(cfg, seed=seed)
    torch.save(state, root / MODEL_FILE)
    width = cfg or base()
    vqa = fake_answers("vqa", width.num_answers)
    out = FakeRelease(
        root,
        root / MODEL_FILE,
        root / ANSWER_FILES["vqa"][0],
        root / ANSWER_FILES["gqa"][0],
        state=state,
    )
    if answers:
        write_answer_pickle(out.vqa_answers, vqa)
        write_answer_pickle(out.gqa_answers, fake_answers("gqa", width.num_answers_gqa))
    if vg_qa_answers:
        out.vg_qa_answers = write_answer_pickle(root / VG_QA_ANSWER_FILES[0], vqa)
    if detector:
        preset = detector_preset or VG_X152_FPN
        out.detector = root / DETECTOR_FILE
        if detector_preset is None:
            fake_detectron_checkpoint(
                out.detector, attribute_head=attribute_head, values=detector_values, seed=seed
            )
        else:
            from regions.maskrcnn_import import expected_checkpoint_shapes

            shapes = expected_checkpoint_shapes(preset)
            if not attribute_head:
                shapes = {k: v for k, v in shapes.items() if not k.startswith(_ATTRIBUTE_PREFIXES)}
            fake_detectron_checkpoint(out.detector, shapes, values="random", rpn=preset.rpn, seed=seed)
        if detector_config:
            out.detector_config = root / DETECTOR_CONFIG_FILE
            out.detector_config.write_text(fake_detectron_config(preset))
        if vocabularies:
            out.objects_vocab = root / OBJECTS_VOCAB_FILES[0]
            out.objects_vocab.write_text("\n".join(fake_vocab("object", preset.num_classes - 1)) + "\n")
            groups = preset.attributes.groups if preset.attributes is not None else ()
            if len(groups) == 1:
                out.attributes_vocab = root / ATTRIBUTES_VOCAB_FILES[0]
                names = fake_vocab("attribute", groups[0].num_values)
                out.attributes_vocab.write_text("\n".join(names) + "\n")
    return out


_ATTRIBUTE_PREFIXES = ("roi_heads.box.predictor.cls_embed.", "roi_heads.box.predictor.attr_linear")


def write_fake_pretrained(path: str | Path, cfg=None, seed: int = 0) -> dict[str, Tensor]:
    """pretrained_model.bin: the Conceptual Captions ViLBERT's names and shapes, random values."""
    state = fake_official_state_dict(cfg, pretrained=True, seed=seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, Path(path))
    return state
