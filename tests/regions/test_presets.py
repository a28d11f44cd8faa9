"""Every shipped preset parses, round-trips through JSON, and says what the reference says."""

from __future__ import annotations

import dataclasses
import json

import pytest

from regions.presets import (
    PRESETS,
    SYNTHETIC,
    VG_X152_FPN,
    AttributeGroup,
    BlockKind,
    ChannelOrder,
    get_preset,
    preset_from_dict,
)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name: str, tmp_path) -> None:
    preset = PRESETS[name]
    assert preset_from_dict(json.loads(preset.to_json())) == preset
    path = tmp_path / f"{name}.json"
    path.write_text(preset.to_json())
    assert get_preset(path) == preset


def test_vg_x152_fpn_is_the_12_in_1_extractor() -> None:
    p = VG_X152_FPN
    p.validate()
    assert p.preprocessing.channel_order is ChannelOrder.BGR
    assert p.preprocessing.pixel_mean == (102.9801, 115.9465, 122.7717) and p.preprocessing.pixel_std == (
        1,
        1,
        1,
    )
    assert (p.preprocessing.min_size, p.preprocessing.max_size, p.preprocessing.size_divisibility) == (
        800,
        1333,
        32,
    )
    assert p.backbone.block is BlockKind.BOTTLENECK and p.backbone.block_counts == (3, 8, 36, 3)
    assert (p.backbone.groups, p.backbone.width_per_group, p.backbone.fpn_channels) == (32, 8, 512)
    assert p.num_classes == 1601 and p.feature_dim == 2048
    assert (p.selection.max_boxes, p.selection.nms_thresh, p.selection.conf_thresh) == (100, 0.5, 0.0)
    assert not p.selection.include_background


def test_synthetic_needs_its_vocabularies() -> None:
    with pytest.raises(ValueError, match="num_classes=0"):
        SYNTHETIC.validate()
    trained = SYNTHETIC.for_dataset(["circle", "square"], [AttributeGroup("color", 2, ("red", "blue"))])
    trained.validate()
    assert trained.num_classes == 3 and trained.attributes.total_values == 2
    assert preset_from_dict(trained.to_dict()) == trained
    assert trained.for_dataset(["circle"], []).attributes is None


def test_bad_presets_are_refused() -> None:
    with pytest.raises(KeyError, match="unknown detector preset"):
        get_preset("x-999")
    with pytest.raises(ValueError, match="unknown fields"):
        preset_from_dict({**VG_X152_FPN.to_dict(), "typo": 1})
    with pytest.raises(ValueError, match="class names"):
        dataclasses.replace(VG_X152_FPN, class_names=("a", "b")).validate()
    with pytest.raises(ValueError, match="names for"):
        AttributeGroup("color", 3, ("red",))
