"""Tiny presets and a rendered mini world for the region tests (everything small enough for 2 cores)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from regions.presets import (
    SYNTHETIC,
    VG_X152_FPN,
    AttributeGroup,
    AttributeSpec,
    BackboneSpec,
    BoxHeadSpec,
    DetectorPreset,
)
from tests.regions.scenes import COLORS, SHAPES, SIZES, write_world


@pytest.fixture(autouse=True)
def _one_thread():
    # Tests share two cores with other work; one intra-op thread keeps them predictable.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_synthetic_preset() -> DetectorPreset:
    """The synthetic preset's architecture at toy widths, with the test world's vocabularies."""
    base = SYNTHETIC.for_dataset(
        SHAPES,
        [
            AttributeGroup("color", len(COLORS), tuple(COLORS)),
            AttributeGroup("size", len(SIZES), tuple(SIZES)),
        ],
    )
    return dataclasses.replace(
        base,
        backbone=dataclasses.replace(
            base.backbone, stage_channels=(8, 16, 16, 16), stem_channels=8, fpn_channels=8
        ),
        box_head=dataclasses.replace(base.box_head, representation_size=32, batch_size_per_image=32),
        attributes=dataclasses.replace(base.attributes, class_embed_dim=4, hidden_dim=16),
        selection=dataclasses.replace(base.selection, max_boxes=10),
    )


def tiny_bottleneck_preset(with_attributes: bool = True) -> DetectorPreset:
    """vg-x152-fpn's architecture with one block per stage, 2x4d ResNeXt, a 16-wide FPN, 5 classes.

    torchvision's ResNet class fixes the stage output widths (256..2048), the rest is tiny.
    """
    return dataclasses.replace(
        VG_X152_FPN,
        name="tiny-x-fpn",
        backbone=BackboneSpec(
            block=VG_X152_FPN.backbone.block,
            block_counts=(1, 1, 2, 1),
            stage_channels=(256, 512, 1024, 2048),
            groups=2,
            width_per_group=4,
            fpn_channels=16,
            frozen_bn_eps=0.0,
        ),
        preprocessing=dataclasses.replace(VG_X152_FPN.preprocessing, min_size=64, max_size=96),
        box_head=BoxHeadSpec(representation_size=32),
        num_classes=5,
        attributes=AttributeSpec(
            groups=(AttributeGroup("attribute", 7),), class_embed_dim=8, hidden_dim=16, hidden_relu=False
        )
        if with_attributes
        else None,
        selection=dataclasses.replace(VG_X152_FPN.selection, max_boxes=12),
    )


@pytest.fixture(scope="session")
def mini_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_world(tmp_path_factory.mktemp("world"), n_train=10, n_val=4)
