"""PyTorch modules whose forward is exactly one ViLBERT graph of the wire contract (vilbert/contract.py).

Each module takes its graph's inputs positionally, in the order of the `GraphSpec`, and returns its
outputs in that order.  The exporter (`export.graphs`) traces these modules to ONNX, and the gateway's
`torch` backend (`server.backend.TorchBackend`) runs the very same modules, so the two cannot differ.
`graph_modules(model)` maps every ViLBERT graph name of the model's contract to its module.
"""

from __future__ import annotations

from torch import Tensor, nn

from vilbert.contract import (
    HEAD_IO,
    JOINT,
    PREFILTER_IMAGE,
    PREFILTER_TEXT,
    TEXT_PREFIX,
    TRUNK,
    GraphKind,
    GraphSpec,
    HeadInput,
    build_spec,
)
from vilbert.heads import MultiTaskViLBERT
from vilbert.modeling import TextPrefix
from vilbert.tasks import Head


class TrunkGraph(nn.Module):
    """trunk: the six trunk inputs -> (fused, region_states)."""

    def __init__(self, model: MultiTaskViLBERT) -> None:
        super().__init__()
        self.trunk = model.trunk

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        task_ids: Tensor,
        region_features: Tensor,
        region_locations: Tensor,
        region_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        out = self.trunk(input_ids, attention_mask, task_ids, region_features, region_locations, region_mask)
        return out.fused, out.region_states


class TextPrefixGraph(nn.Module):
    """text_prefix: input_ids, attention_mask, task_ids -> (text_states, text_mask)."""

    def __init__(self, model: MultiTaskViLBERT) -> None:
        super().__init__()
        self.trunk = model.trunk

    def forward(self, input_ids: Tensor, attention_mask: Tensor, task_ids: Tensor) -> tuple[Tensor, Tensor]:
        prefix = self.trunk.encode_text_prefix(input_ids, attention_mask, task_ids)
        return prefix.states, prefix.mask


class JointGraph(nn.Module):
    """joint: text_prefix's outputs + the three region inputs -> (fused, region_states), as `trunk`.

    A text batch of 1 is broadcast over the image rows (one caption scored against N images)."""

    def __init__(self, model: MultiTaskViLBERT) -> None:
        super().__init__()
        self.trunk = model.trunk

    def forward(
        self,
        text_states: Tensor,
        text_mask: Tensor,
        region_features: Tensor,
        region_locations: Tensor,
        region_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        prefix = TextPrefix(text_states, text_mask)
        out = self.trunk.encode_joint(prefix, region_features, region_locations, region_mask)
        return out.fused, out.region_states


class PrefilterTextGraph(nn.Module):
    """prefilter_text: text_states, text_mask -> caption_embedding (B, D)."""

    def __init__(self, model: MultiTaskViLBERT) -> None:
        super().__init__()
        self.prefilter = model.require_prefilter()

    def forward(self, text_states: Tensor, text_mask: Tensor) -> Tensor:
        return self.prefilter.caption_embedding(text_states, text_mask)


class PrefilterImageGraph(nn.Module):
    """prefilter_image: region_features, region_locations, region_mask -> image_embedding (B, D)."""

    def __init__(self, model: MultiTaskViLBERT) -> None:
        super().__init__()
        self.prefilter = model.require_prefilter()

    def forward(self, region_features: Tensor, region_locations: Tensor, region_mask: Tensor) -> Tensor:
        return self.prefilter.image_embedding(region_features, region_locations, region_mask)


# One module per kind of head input (`HeadInput`): a torch.export-able forward needs a fixed signature.
# Each returns graph-shaped logits (B, C), a scalar head's (B, 1) included (`TaskHeads.logits`).


class _HeadGraph(nn.Module):
    def __init__(self, model: MultiTaskViLBERT, head: Head) -> None:
        super().__init__()
        self.heads = model.heads
        self.head = head


class FusedHeadGraph(_HeadGraph):
    """A head reading fused (B, H_bi) -> logits (B, C)."""

    def forward(self, fused: Tensor) -> Tensor:
        return self.heads.logits(self.head, fused)


class RegionHeadGraph(_HeadGraph):
    """A head reading region_states (B, R, H_v), region_mask (B, R) -> logits (B, R)."""

    def forward(self, region_states: Tensor, region_mask: Tensor) -> Tensor:
        return self.heads.logits(self.head, region_states, region_mask)


class PairHeadGraph(_HeadGraph):
    """A head reading fused_pairs (B, I, H_bi) -> logits (B, C)."""

    def forward(self, fused_pairs: Tensor) -> Tensor:
        return self.heads.logits(self.head, fused_pairs)


HEAD_GRAPHS: dict[HeadInput, type[_HeadGraph]] = {
    HeadInput.FUSED: FusedHeadGraph,
    HeadInput.REGIONS: RegionHeadGraph,
    HeadInput.FUSED_PAIRS: PairHeadGraph,
}

_TRUNK_GRAPHS: dict[str, type[nn.Module]] = {
    TRUNK: TrunkGraph,
    TEXT_PREFIX: TextPrefixGraph,
    JOINT: JointGraph,
    PREFILTER_TEXT: PrefilterTextGraph,
    PREFILTER_IMAGE: PrefilterImageGraph,
}


def vilbert_graph_module(graph: GraphSpec, model: MultiTaskViLBERT) -> nn.Module:
    """The eval-mode module computing ViLBERT graph `graph` (any kind but the detector's)."""
    if graph.kind is GraphKind.DETECTOR:
        raise ValueError(f"{graph.name} is a detector graph, not a ViLBERT one")
    if graph.kind is GraphKind.HEAD:
        assert graph.head is not None
        return HEAD_GRAPHS[HEAD_IO[graph.head].reads](model, graph.head).eval()
    return _TRUNK_GRAPHS[graph.name](model).eval()


def graph_modules(model: MultiTaskViLBERT) -> dict[str, nn.Module]:
    """Every ViLBERT graph of `model`'s contract (pre-filter graphs when it has one), by graph name."""
    spec = build_spec(model.config)
    return {g.name: vilbert_graph_module(g, model) for g in spec.graphs if g.kind is not GraphKind.DETECTOR}
