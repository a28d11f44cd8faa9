"""The 12-in-1 release as it is published: where its files are, what they must hold, and converting
them together (`python -m vilbert.convert --release DIR --out OUT`).

A release directory DIR (names relative to DIR; the answer lists sit where the reference code reads
them, in its `datasets/` tree)::

    multi_task_model.bin                                 required  the multi-task model (560 keys)
    datasets/VQA/cache/trainval_label2ans.pkl            required  VQA answers (3129; VG QA shares them)
    datasets/gqa/cache/trainval_label2ans.pkl            required  GQA answers (1533)
    datasets/visual_genome/cache/trainval_label2ans.pkl  optional  VG QA's copy: must equal VQA's list
    detectron_model.pth                                  required  unless --no-detector: the region detector
    detectron_config.yaml                                optional  its maskrcnn-benchmark config, checked
    objects_vocab.txt                                    optional  Visual Genome's 1600 object names
    attributes_vocab.txt                                 optional  Visual Genome's 400 attribute names

Other accepted names: each `datasets/X/...` file also as `X/...` (DIR is the `datasets/` directory
itself); the two vocabularies also as `1600-400-20/objects_vocab.txt` / `attributes_vocab.txt`, as
bottom-up-attention keeps them.  Two candidates for one file, another weights file at the top level
(`*.bin`, `*.pth`, `*.pt`, `*.ckpt`, `*.safetensors`), a missing required file, or a file of the
wrong type, length or shape stops the conversion before any weights are converted, with one message
naming the file and what was expected.

Answer lists are read with the restricted unpickler (`vilbert.safe_pickle`: builtins only) and must
be lists of exactly as many strings as the head has outputs.

The output directory OUT::

    model/                      our checkpoint format (answers included)
    detector/<preset>.safetensors + <preset>.json   the detector, with the object/attribute names
    release.json                the inputs' sha256 digests per step, notes and warnings

It is built in a temporary sibling and renamed into place at the end, so nothing half-written is
ever left under OUT.  Each step (model, detector) records the digest of its inputs; a later run whose
inputs have the same digest reuses that step's output (hard links) instead of converting again, and
a run where every step is current leaves OUT untouched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vilbert.config import ViLBERTConfig, answer_widths

MODEL_FILE = "multi_task_model.bin"
DETECTOR_FILE = "detectron_model.pth"
DETECTOR_CONFIG_FILE = "detectron_config.yaml"
PRETRAINED_FILE = "pretrained_model.bin"
MANIFEST_FILE = "release.json"
MODEL_DIR = "model"
DETECTOR_DIR = "detector"
CONVERTER_VERSION = 1  # bump when a step's output changes for the same inputs

ANSWER_FILES: dict[str, tuple[str, ...]] = {
    "vqa": ("datasets/VQA/cache/trainval_label2ans.pkl", "VQA/cache/trainval_label2ans.pkl"),
    "gqa": ("datasets/gqa/cache/trainval_label2ans.pkl", "gqa/cache/trainval_label2ans.pkl"),
}
VG_QA_ANSWER_FILES = (
    "datasets/visual_genome/cache/trainval_label2ans.pkl",
    "visual_genome/cache/trainval_label2ans.pkl",
)
OBJECTS_VOCAB_FILES = ("objects_vocab.txt", "1600-400-20/objects_vocab.txt")
ATTRIBUTES_VOCAB_FILES = ("attributes_vocab.txt", "1600-400-20/attributes_vocab.txt")
WEIGHT_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt", ".safetensors")
ANSWER_HEADS = {"vqa": "vil_prediction (VQA, VG QA)", "gqa": "vil_prediction_gqa (GQA)"}


class ReleaseError(ValueError):
    """A release file is missing, extra, or not what the model needs; the message names it."""


# ---------------------------------------------------------------------------------------------
# Answer vocabularies
# ---------------------------------------------------------------------------------------------


def read_answer_vocabulary(path: str | Path, expected: int | None, vocab: str = "") -> list[str]:
    """A reference `trainval_label2ans.pkl`: a pickled list of answer strings, index = head output.

    Read with the restricted unpickler (no code runs) and checked: a list, of strings, of exactly
    `expected` entries (the head's width; None: any length).
    """
    from vilbert.safe_pickle import UnsafePickleError, load_pickle

    path = Path(path)
    what = f"{vocab} answer list" if vocab else "answer list"
    want = f"a pickled list of {expected} answer strings" if expected else "a pickled list of answer strings"
    if not path.is_file():
        raise ReleaseError(f"{path}: {what} not found (expected {want})")
    try:
        obj = load_pickle(path)
    except UnsafePickleError as exc:
        raise ReleaseError(f"{exc} (expected {want})") from exc
    if isinstance(obj, dict):
        raise ReleaseError(
            f"{path}: holds a dict, expected {want} (label2ans); is this trainval_ans2label.pkl?"
        )
    if not isinstance(obj, list):
        raise ReleaseError(f"{path}: holds a {type(obj).__name__}, expected {want}")
    bad = next((i for i, a in enumerate(obj) if not isinstance(a, str)), None)
    if bad is not None:
        raise ReleaseError(f"{path}: entry {bad} is a {type(obj[bad]).__name__}, expected {want}")
    if expected is not None and len(obj) != expected:
        head = ANSWER_HEADS.get(vocab, "answer head")
        raise ReleaseError(f"{path}: {len(obj)} answers, expected {expected} (the width of {head})")
    return obj


def _find_one(root: Path, candidates: tuple[str, ...], what: str, required: bool) -> Path | None:
    found = [root / c for c in candidates if (root / c).is_file()]
    if len(found) > 1:
        raise ReleaseError(
            f"{found[1]}: a second {what} (also {found[0]}); keep exactly one of {', '.join(candidates)}"
        )
    if not found and required:
        raise ReleaseError(
            f"{root / candidates[0]}: {what} not found (also looked for {', '.join(candidates[1:])})"
        )
    return found[0] if found else None


def find_answer_files(root: str | Path, required: bool = True) -> dict[str, Path]:
    """The release's answer lists by vocabulary name (`vqa`, `gqa`; `vg_qa` when its copy is there)."""
    root = Path(root)
    files: dict[str, Path] = {}
    for vocab, candidates in ANSWER_FILES.items():
        path = _find_one(root, candidates, f"{vocab.upper()} answer list", required)
        if path is not None:
            files[vocab] = path
    vg = _find_one(root, VG_QA_ANSWER_FILES, "VG QA answer list", required=False)
    if vg is not None:
        files["vg_qa"] = vg
    return files


def read_release_answers(root: str | Path, cfg: ViLBERTConfig) -> dict[str, list[str]]:
    """Find and validate a release's answer lists (before any weights are read): {"vqa", "gqa"}.

    VG QA answers through the VQA head (`vilbert.tasks`: one `vqa` vocabulary); a VG QA copy of
    the list, when the release has one, must therefore be the VQA list itself.
    """
    files = find_answer_files(root)
    widths = answer_widths(cfg)
    answers = {vocab: read_answer_vocabulary(files[vocab], widths[vocab], vocab) for vocab in ANSWER_FILES}
    if "vg_qa" in files:
        vg = read_answer_vocabulary(files["vg_qa"], widths["vqa"], "vqa")
        if vg != answers["vqa"]:
            first = next(i for i, (a, b) in enumerate(zip(vg, answers["vqa"])) if a != b)
            raise ReleaseError(
                f"{files['vg_qa']}: differs from {files['vqa']} at index {first} "
                f"({vg[first]!r} vs {answers['vqa'][first]!r}); VG QA shares the VQA head, so its "
                "list must be the VQA list"
            )
    return answers


# ---------------------------------------------------------------------------------------------
# Detector side files
# ---------------------------------------------------------------------------------------------


def read_vocab_file(path: Path, expected: int, what: str) -> tuple[str, ...]:
    """bottom-up-attention's `objects_vocab.txt` / `attributes_vocab.txt`: one entry per line, the
    first of comma-separated synonyms is the name; exactly `expected` non-empty lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReleaseError(f"{path}: not UTF-8 text (expected {expected} {what}, one per line)") from exc
    names = tuple(line.strip().split(",")[0].strip() for line in text.splitlines() if line.strip())
    if len(names) != expected:
        raise ReleaseError(f"{path}: {len(names)} {what}, expected {expected} (one per line)")
    return names


# maskrcnn-benchmark CONV_BODY names -> blocks per stage
_CONV_BODIES = {"R-50-FPN": (3, 4, 6, 3), "R-101-FPN": (3, 4, 23, 3), "R-152-FPN": (3, 8, 36, 3)}


def detector_config_fields(preset) -> dict[str, Any]:
    """maskrcnn-benchmark config fields (dotted) and the value `preset` implies for each.

    `CONV_BODY` is included only when the preset's depth has a maskrcnn-benchmark name.
    """
    b, rpn, head, pre = preset.backbone, preset.rpn, preset.box_head, preset.preprocessing
    body = next((name for name, counts in _CONV_BODIES.items() if counts == tuple(b.block_counts)), None)
    fields: dict[str, Any] = {
        "MODEL.RESNETS.NUM_GROUPS": b.groups,
        "MODEL.RESNETS.WIDTH_PER_GROUP": b.width_per_group,
        "MODEL.BACKBONE.OUT_CHANNELS": b.fpn_channels,
        "MODEL.RPN.ANCHOR_SIZES": list(rpn.anchor_sizes),
        "MODEL.RPN.ANCHOR_STRIDE": list(rpn.anchor_strides),
        "MODEL.ROI_BOX_HEAD.NUM_CLASSES": preset.num_classes,
        "MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM": head.representation_size,
        "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION": head.pooler_resolution,
        "INPUT.MAX_SIZE_TEST": pre.max_size,
        "INPUT.PIXEL_MEAN": [float(x) for x in pre.pixel_mean],
    }
    if pre.min_size is not None:
        fields["INPUT.MIN_SIZE_TEST"] = pre.min_size
    if body is not None:
        fields["MODEL.BACKBONE.CONV_BODY"] = body
    return fields


def check_detector_config(path: Path, preset) -> list[str]:
    """Compare a maskrcnn-benchmark YAML config with the preset on every field both define.

    Fields the file leaves out take maskrcnn-benchmark's defaults, which are not checked; a field
    set to another value stops the conversion.  Returns the names of the fields checked.
    """
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ReleaseError(f"{path}: not a readable YAML file ({exc})") from exc
    if not isinstance(doc, dict):
        raise ReleaseError(f"{path}: expected a maskrcnn-benchmark config (a YAML mapping with MODEL: ...)")
    checked = []
    for dotted, want in detector_config_fields(preset).items():
        node: Any = doc
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            continue
        have = (
            [float(x) for x in node]
            if isinstance(want, list) and want and isinstance(want[0], float)
            else node
        )
        if isinstance(have, tuple):
            have = list(have)
        if have != want:
            raise ReleaseError(
                f"{path}: {dotted} is {node!r}, expected {want!r} (the {preset.name} detector preset)"
            )
        checked.append(dotted)
    body = (
        doc.get("MODEL", {}).get("BACKBONE", {}).get("CONV_BODY")
        if isinstance(doc.get("MODEL"), dict)
        else None
    )
    if body is not None and "MODEL.BACKBONE.CONV_BODY" not in checked:
        raise ReleaseError(
            f"{path}: MODEL.BACKBONE.CONV_BODY is {body!r}; the {preset.name} preset has "
            f"{tuple(preset.backbone.block_counts)} blocks per stage"
        )
    return checked


def _detector_import():
    """The maskrcnn-benchmark importer's functions (imported late: `vilbert` does not need `regions`)."""
    from regions import maskrcnn_import as m

    return (
        m.read_maskrcnn_benchmark_checkpoint,
        m.has_attribute_head,
        m.convert_state_dict,
        m.load_maskrcnn_benchmark_detector,
    )


# ---------------------------------------------------------------------------------------------
# The plan: every check before any conversion
# ---------------------------------------------------------------------------------------------


@dataclass
class ReleasePlan:
    root: Path
    cfg: ViLBERTConfig
    model: Path
    answers: dict[str, list[str]]
    answer_files: dict[str, Path]
    detector: Path | None = None
    detector_config: Path | None = None
    detector_preset: Any = None  # regions.presets.DetectorPreset with the names filled in
    objects_vocab: Path | None = None
    attributes_vocab: Path | None = None
    detector_has_attributes: bool = False
    notes: list[str] = field(default_factory=list)


def _unexpected_weights(root: Path, expected: set[str]) -> list[Path]:
    return sorted(
        p for p in root.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name not in expected
    )


def plan_release(
    root: str | Path,
    cfg: ViLBERTConfig | None = None,
    *,
    detector: bool = True,
    detector_preset: Any = None,
    log: Callable[[str], None] = print,
) -> ReleasePlan:
    """Check a release directory completely before any conversion: files present and unambiguous,
    answer lists and vocabularies of the right type and length, the detector config consistent, and
    the names and shapes of both weights files (read memory-mapped)."""
    from vilbert.checkpoint import CheckpointError, check_official_state_dict, read_torch_state_dict
    from vilbert.config import base

    root = Path(root)
    if not root.is_dir():
        raise ReleaseError(f"{root}: release directory not found")
    cfg = cfg or base()
    model = root / MODEL_FILE
    if not model.is_file():
        raise ReleaseError(f"{model}: the multi-task model is missing (the release's {MODEL_FILE})")
    expected_weights = {MODEL_FILE} | ({DETECTOR_FILE} if detector else set())
    extra = _unexpected_weights(root, expected_weights)
    if extra:
        hint = {
            PRETRAINED_FILE: "the pretrained model is converted on its own with --pretrained",
            DETECTOR_FILE: "--no-detector was given; remove it or drop the flag",
        }.get(extra[0].name, f"a release has {' and '.join(sorted(expected_weights))} only")
        raise ReleaseError(f"{extra[0]}: unexpected weights file ({hint})")
    answer_files = find_answer_files(root)
    answers = read_release_answers(root, cfg)
    plan = ReleasePlan(root, cfg, model, answers, answer_files)
    log(f"  answers: {', '.join(f'{k} {len(v)}' for k, v in answers.items())} (checked)")

    if detector:
        from regions.presets import AttributeGroup, get_preset

        preset = detector_preset if detector_preset is not None else get_preset("vg-x152-fpn")
        if isinstance(preset, str | Path):
            preset = get_preset(preset)
        plan.detector = root / DETECTOR_FILE
        if not plan.detector.is_file():
            raise ReleaseError(
                f"{plan.detector}: the region detector is missing (the release's {DETECTOR_FILE}; "
                "pass --no-detector to convert the model alone)"
            )
        plan.detector_config = (
            root / DETECTOR_CONFIG_FILE if (root / DETECTOR_CONFIG_FILE).is_file() else None
        )
        if plan.detector_config is not None:
            checked = check_detector_config(plan.detector_config, preset)
            log(f"  {DETECTOR_CONFIG_FILE}: {len(checked)} fields agree with the {preset.name} preset")
        plan.objects_vocab = _find_one(root, OBJECTS_VOCAB_FILES, "object vocabulary", required=False)
        plan.attributes_vocab = _find_one(
            root, ATTRIBUTES_VOCAB_FILES, "attribute vocabulary", required=False
        )
        if plan.objects_vocab is not None:
            names = read_vocab_file(plan.objects_vocab, preset.num_classes - 1, "object names")
            preset = dataclasses.replace(preset, class_names=names)
        else:
            plan.notes.append(
                f"no {OBJECTS_VOCAB_FILES[0]}: regions are labelled class_<index> "
                f"({preset.class_names_source})"
            )
        if plan.attributes_vocab is not None:
            groups = preset.attributes.groups if preset.attributes is not None else ()
            if len(groups) != 1:
                raise ReleaseError(
                    f"{plan.attributes_vocab}: the {preset.name} preset has {len(groups)} attribute groups, "
                    "expected exactly one for a Visual Genome attribute vocabulary"
                )
            names = read_vocab_file(plan.attributes_vocab, groups[0].num_values, "attribute names")
            group = AttributeGroup(groups[0].name, groups[0].num_values, names)
            preset = dataclasses.replace(
                preset, attributes=dataclasses.replace(preset.attributes, groups=(group,))
            )
        read_ckpt, has_attrs, convert_state, _load = _detector_import()
        try:
            source, _other = read_ckpt(plan.detector)
            plan.detector_has_attributes = has_attrs(source, str(plan.detector))
            effective = preset
            if (
                preset.attributes is not None
                and preset.attributes.groups
                and not plan.detector_has_attributes
            ):
                effective = preset.without_attributes()
                if plan.attributes_vocab is not None:
                    plan.notes.append(
                        f"{plan.attributes_vocab.name}: unused, {DETECTOR_FILE} has no attribute head"
                    )
            convert_state(source, effective, str(plan.detector))
        except ReleaseError:
            raise
        except Exception as exc:  # the importer names the offending keys
            raise ReleaseError(f"{plan.detector}: {exc}") from exc
        finally:
            source = None
        plan.detector_preset = preset
        log(f"  {DETECTOR_FILE}: names and shapes fit the {preset.name} preset")

    try:
        check_official_state_dict(read_torch_state_dict(model, mmap=True), cfg)
    except CheckpointError as exc:
        raise ReleaseError(f"{model}: {exc}") from exc
    log(f"  {MODEL_FILE}: names and shapes fit the {cfg.preset} model")
    return plan


# ---------------------------------------------------------------------------------------------
# Converting, with per-step digests
# ---------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _step_digest(step: str, inputs: Mapping[str, str], options: Mapping[str, Any]) -> str:
    from vilbert.checkpoint import FORMAT_VERSION

    doc = {
        "step": step,
        "converter": CONVERTER_VERSION,
        "format": FORMAT_VERSION,
        "inputs": dict(sorted(inputs.items())),
        "options": options,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _rel(plan: ReleasePlan, path: Path) -> str:
    return str(path.relative_to(plan.root))


def step_inputs(plan: ReleasePlan) -> dict[str, dict[str, Any]]:
    """Each step's inputs (file -> sha256) and options, and the digest over them."""
    steps: dict[str, dict[str, Any]] = {}
    files = [plan.model, *plan.answer_files.values()]
    inputs = {_rel(plan, p): file_sha256(p) for p in files}
    options = {"config": plan.cfg.to_dict()}
    steps["model"] = {"inputs": inputs, "digest": _step_digest("model", inputs, options)}
    if plan.detector is not None:
        files = [plan.detector, plan.detector_config, plan.objects_vocab, plan.attributes_vocab]
        inputs = {_rel(plan, p): file_sha256(p) for p in files if p is not None}
        options = {"preset": plan.detector_preset.to_dict()}
        steps["detector"] = {"inputs": inputs, "digest": _step_digest("detector", inputs, options)}
    return steps


def read_release_manifest(out: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(out) / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _cached(out: Path, previous: Mapping[str, Any], step: str, digest: str) -> list[str] | None:
    """The files of `step` in the existing output when it was made from inputs with `digest`."""
    entry = previous.get("steps", {}).get(step)
    if not entry or entry.get("digest") != digest:
        return None
    files = entry.get("files", [])
    if not files or not all((out / f).is_file() for f in files):
        return None
    return files


def _files_under(root: Path, sub: str) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in (root / sub).rglob("*") if p.is_file())


def convert_release(plan: ReleasePlan, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert a checked release into OUT (see the module docstring); returns the manifest."""
    from vilbert.checkpoint import load_official, save_checkpoint
    from vilbert.io import atomic_write_dir, link_or_copy, restore_interrupted_dir

    out = Path(out)
    restore_interrupted_dir(out)
    log("  computing input digests ...")
    steps = step_inputs(plan)
    previous = read_release_manifest(out)
    cached = {name: _cached(out, previous, name, s["digest"]) for name, s in steps.items()}
    if (
        out.is_dir()
        and all(files is not None for files in cached.values())
        and set(previous.get("steps", {})) == set(steps)
    ):
        log(f"  {out}: every step is current (same input digests); nothing to do")
        return previous

    manifest: dict[str, Any] = {
        "format": "twelve-in-one/release",
        "converter_version": CONVERTER_VERSION,
        "source": str(plan.root.resolve()),
        "steps": {},
        "notes": list(plan.notes),
    }

    def write(tmp: Path) -> None:
        for name, step in steps.items():
            entry = dict(step)
            if cached[name] is not None:
                log(f"  {name}: unchanged inputs, reusing {out / name}")
                for rel in cached[name]:
                    link_or_copy(out / rel, tmp / rel)
                entry.update({k: v for k, v in previous["steps"][name].items() if k not in entry})
            elif name == "model":
                log(f"  model: converting {plan.model.name} ...")
                model = load_official(plan.model, plan.cfg)
                meta = {
                    "source": f"official:{plan.model.name}",
                    "release": {
                        _rel(plan, p): step["inputs"][_rel(plan, p)]
                        for p in [plan.model, *plan.answer_files.values()]
                    },
                }
                save_checkpoint(tmp / MODEL_DIR, model, plan.answers, meta=meta)
                entry["parameters"] = sum(p.numel() for p in model.parameters())
                entry["answers"] = {k: len(v) for k, v in plan.answers.items()}
                del model
            else:
                entry.update(_convert_detector(plan, tmp, log))
            entry["files"] = _files_under(tmp, MODEL_DIR if name == "model" else DETECTOR_DIR)
            manifest["steps"][name] = entry
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")

    atomic_write_dir(out, write)
    return manifest


def _convert_detector(plan: ReleasePlan, tmp: Path, log: Callable[[str], None]) -> dict[str, Any]:
    from regions.weights import save_detector

    *_, load = _detector_import()
    log(f"  detector: importing {plan.detector.name} into the {plan.detector_preset.name} preset ...")
    detector, report = load(plan.detector, plan.detector_preset)
    path = tmp / DETECTOR_DIR / f"{detector.preset.name}.safetensors"
    save_detector(detector, path)
    return {
        "weights": str(path.relative_to(tmp)),
        "parameters": sum(p.numel() for p in detector.parameters()),
        "attribute_head": detector.preset.attributes is not None and bool(detector.preset.attributes.groups),
        "class_names": plan.objects_vocab.name if plan.objects_vocab is not None else None,
        "attribute_names": (
            plan.attributes_vocab.name
            if plan.attributes_vocab is not None and plan.detector_has_attributes
            else None
        ),
        "import_notes": list(report.notes),
        "other_entries": list(report.other_entries),
    }
