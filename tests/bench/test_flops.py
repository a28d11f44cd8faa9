"""The benchmark's analytic FLOP count agrees with PyTorch's own counter on the eager trunk."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.flops import forward_flops, head_flops, trunk_flop_parts, trunk_flops
from vilbert.config import preset
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import Head


@pytest.mark.parametrize(("text", "regions"), [(7, 11), (3, 1)])
def test_linear_flops_match_torch_counter(text: int, regions: int) -> None:
    """PyTorch counts the weight matmuls (addmm); its CPU attention kernel is not counted, so the
    attention part is checked against the closed form below."""
    cfg = preset("tiny", v_feature_size=24)
    model = MultiTaskViLBERT(cfg).eval()
    b = 3
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.trunk(
            torch.ones(b, text, dtype=torch.long),
            torch.ones(b, text, dtype=torch.long),
            torch.ones(b, dtype=torch.long),
            torch.randn(b, regions, cfg.v_feature_size),
            torch.rand(b, regions, 5),
            torch.ones(b, regions, dtype=torch.long),
        )
    parts = trunk_flop_parts(cfg, text, regions)
    assert counter.get_total_flops() == b * parts["linear"]
    lt, r = text + 1, regions  # the task token joins the text
    attention = 4 * (
        cfg.num_hidden_layers * lt * lt * cfg.hidden_size
        + cfg.v_num_hidden_layers * r * r * cfg.v_hidden_size
        + cfg.num_co_layers * 2 * lt * r * cfg.bi_hidden_size
    )
    assert parts["attention"] == attention


def test_base_forward_is_about_22_gflop() -> None:
    """Issue #10's figure: one base forward at 23 tokens and 101 regions is about 22 GFLOP."""
    cfg = preset("base")
    assert 21.5e9 < trunk_flops(cfg, 23, 101) < 23e9
    answer = head_flops(cfg, Head.ANSWER)
    assert answer == 2 * (1024 * 2048 + 2048 * 3129)
    assert forward_flops(cfg, Head.ANSWER, 23, 101) == trunk_flops(cfg, 23, 101) + answer
