"""A tiny gateway for the tests and `bench.reliability`: tiny ViLBERT checkpoint, tiny random-weight
synthetic detector, PNG scenes, one valid request body per task."""

from __future__ import annotations

import base64
import dataclasses
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from regions.detector import build_detector
from regions.extractor import RegionExtractor
from regions.presets import SYNTHETIC, AttributeGroup
from server.backend import TorchBackend
from server.loading import Components, read_answers
from server.settings import BackendKind, Settings
from vilbert.checkpoint import load_checkpoint, save_checkpoint
from vilbert.config import preset
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import Endpoint, Task
from vilbert.tokenizer import load_tokenizer

FEATURE_DIM = 32  # the tiny detector's representation size = the tiny model's v_feature_size
PREFILTER_DIM = 8  # the tiny model's retrieval pre-filter width
VQA_ANSWERS = ["yes", "no", "red", "blue", "green", "circle", "square", "1", "2", "3", "4"]
GQA_ANSWERS = ["left", "right", "top", "bottom", "red", "blue", "none"]
SHAPE_NAMES = ("circle", "square", "triangle")


def tiny_detector_preset():
    """The synthetic detector's architecture at toy widths (as tests/regions does), random weights."""
    base = SYNTHETIC.for_dataset(
        SHAPE_NAMES,
        [AttributeGroup("color", 3, ("red", "green", "blue")), AttributeGroup("size", 2, ("small", "large"))],
    )
    return dataclasses.replace(
        base,
        backbone=dataclasses.replace(
            base.backbone, stage_channels=(8, 16, 16, 16), stem_channels=8, fpn_channels=8
        ),
        box_head=dataclasses.replace(base.box_head, representation_size=FEATURE_DIM, batch_size_per_image=32),
        attributes=dataclasses.replace(base.attributes, class_embed_dim=4, hidden_dim=16),
        selection=dataclasses.replace(base.selection, max_boxes=8),
    )


def build_tiny_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    # With the retrieval pre-filter: /retrieve runs two-stage by default (tests/server/test_two_stage.py).
    model = MultiTaskViLBERT(preset("tiny", v_feature_size=FEATURE_DIM, prefilter_dim=PREFILTER_DIM))
    return save_checkpoint(path, model, answers={"vqa": VQA_ANSWERS, "gqa": GQA_ANSWERS})


def tiny_components(checkpoint: Path) -> Components:
    torch.manual_seed(0)
    extractor = RegionExtractor(build_detector(tiny_detector_preset()), batch_size=1)
    backend = TorchBackend(load_checkpoint(checkpoint).model, threads=1)
    return Components(backend, extractor, load_tokenizer(), read_answers(checkpoint))


def tiny_settings(tmp: Path, checkpoint: Path, **overrides) -> Settings:
    values = dict(
        backend=BackendKind.TORCH,
        checkpoint=checkpoint,
        cache_dir=tmp / "cache",
        max_body_bytes=256 * 1024,
        max_image_bytes=128 * 1024,
        max_pixels=200_000,
        max_text_chars=300,
        max_images_per_request=6,
        max_gallery_images=8,
        deadline_s=20.0,
    )
    values.update(overrides)
    return Settings(**values)


def scene_png(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    """A small PNG with a few coloured shapes."""
    rng = np.random.default_rng(seed)
    w, h = size
    image = Image.new("RGB", size, tuple(int(v) for v in rng.integers(40, 90, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x, y = int(rng.integers(0, w - 24)), int(rng.integers(0, h - 24))
        colour = tuple(int(v) for v in rng.integers(120, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse([x, y, x + 22, y + 22], fill=colour)
        else:
            draw.rectangle([x, y, x + 22, y + 22], fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> dict[str, str]:
    return {"base64": base64.b64encode(data).decode()}


CANDIDATES = [
    {"xmin": 2, "ymin": 2, "xmax": 30, "ymax": 30},
    {"xmin": 40, "ymin": 10, "xmax": 90, "ymax": 70},
]


def task_body(task: Task, png: bytes) -> dict:
    """A valid request for any row of the task table."""
    image = b64(png)
    match task.endpoint:
        case Endpoint.VQA:
            return {"image": image, "question": "what colour is the circle?", "dataset": task.dataset}
        case Endpoint.GROUND:
            body = {"image": image, "dataset": task.dataset}
            if task.slug == "guesswhat":
                body["dialog"] = [{"question": "is it a circle?", "answer": "yes"}]
            else:
                body["expression"] = "the red circle on the left"
            if task.slug == "visual7w":
                body["candidates"] = CANDIDATES
            return body
        case Endpoint.RETRIEVE:
            return {"caption": "a red circle", "images": [image, b64(scene_png(99))], "dataset": task.dataset}
        case Endpoint.VERIFY:
            images = [image] * task.images_per_example
            return {"statement": "there is a circle", "images": images, "dataset": task.dataset}
    raise AssertionError(task)
