"""The six task heads of the released checkpoint, and the multi-task model around the trunk.

Twelve tasks share six head weight sets (vilbert/tasks.py `Head`); what each reads and the width of
its logits are declared once, in vilbert/contract.py `HEAD_IO`:

    answer      MLP(fused)                 -> num_answers      VQA v2, VG QA
    answer_gqa  MLP(fused)                 -> num_answers_gqa  GQA
    match       Linear(fused)              -> 1                COCO / Flickr30k retrieval
    region      Linear(region states)      -> 1 per region     RefCOCO/+/g, Visual7W, GuessWhat
    pair        MLP([fused_img0, fused_img1]) -> 2             NLVR2 (two images per example)
    triple      Linear(fused)              -> 3                SNLI-VE

`MultiTaskViLBERT.forward` runs the trunk and only the requested task's head.  Two-image tasks
receive their images on an explicit image axis (B, 2, R, F); nothing is inferred from the batch
size being even.

Optionally (config `prefilter_dim > 0`) the model also carries `PrefilterHead`, a dual encoder for
two-stage gallery retrieval: cheap caption and image embeddings that rank a gallery before the
cross-attention trunk re-ranks the top K.  It is saved in the same checkpoint; checkpoints without
it load unchanged (`prefilter` is then None and `require_prefilter` says so).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vilbert.config import ViLBERTConfig
from vilbert.contract import FUSED, HEAD_IO, REGION_STATES, HeadInput, head_feeds, model_logits
from vilbert.modeling import MASK_VALUE, TextPrefix, TrunkOutput, ViLBERTTrunk, init_weights
from vilbert.tasks import Head, Task


class MLPClassifier(nn.Module):
    """Linear -> GELU -> LayerNorm -> Linear (the reference's SimpleClassifier)."""

    def __init__(self, width: int, hidden: int, classes: int, eps: float) -> None:
        super().__init__()
        self.hidden = nn.Linear(width, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.out = nn.Linear(hidden, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.norm(nn.functional.gelu(self.hidden(x))))


class RegionScorer(nn.Module):
    """One logit per region; padded regions get the reference's -10000 after the Linear."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.score = nn.Linear(width, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, region_states: Tensor, region_mask: Tensor) -> Tensor:
        # (B, R, H_v), (B, R) -> (B, R)
        logits = self.score(self.dropout(region_states)).squeeze(-1)
        return logits + (1.0 - region_mask.to(logits.dtype)) * MASK_VALUE


class TaskHeads(nn.Module):
    """The six head weight sets, one attribute per `Head` (named by its value)."""

    def __init__(self, cfg: ViLBERTConfig) -> None:
        super().__init__()
        bi, eps = cfg.bi_hidden_size, cfg.layer_norm_eps
        hidden = cfg.classifier_hidden_mult * bi
        self.dropout = nn.Dropout(cfg.fused_dropout_prob)
        self.answer = MLPClassifier(bi, hidden, cfg.num_answers, eps)
        self.answer_gqa = MLPClassifier(bi, hidden, cfg.num_answers_gqa, eps)
        self.match = nn.Linear(bi, 1)
        self.region = RegionScorer(cfg.v_hidden_size, cfg.fused_dropout_prob)
        self.pair = MLPClassifier(2 * bi, hidden, 2, eps)
        self.triple = nn.Linear(bi, 3)

    def logits(self, head: Head, *inputs: Tensor) -> Tensor:
        """`head`'s logits on the inputs `HEAD_IO[head]` declares, in its order, shaped as the head
        graph's output: (B, C); (B, 1) for a scalar head; (B, R) for the per-region head.

        fused (B, H_bi) -> dropout -> layers; fused_pairs (B, I, H_bi) -> dropout -> the I vectors
        side by side -> layers; region_states, region_mask -> `RegionScorer` (its own dropout, the mask).
        """
        layers = self.get_submodule(head.value)
        match HEAD_IO[head].reads:
            case HeadInput.REGIONS:
                return layers(*inputs)
            case HeadInput.FUSED_PAIRS:
                (fused_pairs,) = inputs
                x = self.dropout(fused_pairs)
                return layers(x.reshape(x.shape[0], -1))
            case HeadInput.FUSED:
                (fused,) = inputs
                return layers(self.dropout(fused))
        raise ValueError(f"head {head} reads {HEAD_IO[head].reads}, which no layer takes")


class PrefilterHead(nn.Module):
    """Dual-encoder pre-filter for gallery retrieval (LightningDOT-style two-stage search).

    caption: masked mean of the text-prefix states (image-free: computed once per query)
             -> Linear -> GELU -> Linear -> unit vector (B, D)
    image:   each region's raw feature + 5-d location (before any co-attention) -> projection,
             LayerNorm, GELU -> masked mean and max over regions -> Linear -> unit vector (B, D)

    Neither side sees the other, so a gallery's image embeddings are computed once, when it is
    registered; the dot product (cosine similarity) ranks the gallery and only the top K pairs go
    through the trunk.  Trained with an in-batch contrastive loss (training/step.py).
    """

    def __init__(self, cfg: ViLBERTConfig) -> None:
        super().__init__()
        dim, ht, hv = cfg.prefilter_dim, cfg.hidden_size, cfg.v_hidden_size
        self.text_hidden = nn.Linear(ht, ht)
        self.text_out = nn.Linear(ht, dim)
        self.region_features = nn.Linear(cfg.v_feature_size, hv)
        self.region_locations = nn.Linear(5, hv)
        self.region_norm = nn.LayerNorm(hv, eps=cfg.layer_norm_eps)
        self.image_out = nn.Linear(2 * hv, dim)

    def caption_embedding(self, text_states: Tensor, text_mask: Tensor) -> Tensor:
        """(B, T+1, H_t) text-prefix states, (B, T+1) 1/0 mask -> (B, D) unit vectors."""
        m = text_mask.to(text_states.dtype)[..., None]
        pooled = (text_states * m).sum(1) / m.sum(1).clamp_min(1.0)
        return F.normalize(self.text_out(F.gelu(self.text_hidden(pooled))), dim=-1)

    def image_embedding(
        self, region_features: Tensor, region_locations: Tensor, region_mask: Tensor
    ) -> Tensor:
        """(B, R, F), (B, R, 5), (B, R) -> (B, D) unit vectors."""
        x = self.region_features(region_features) + self.region_locations(region_locations)
        x = F.gelu(self.region_norm(x))  # (B, R, H_v)
        m = region_mask.to(x.dtype)[..., None]
        mean = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        peak = (x + (1.0 - m) * MASK_VALUE).amax(1)
        return F.normalize(self.image_out(torch.cat([mean, peak], dim=-1)), dim=-1)


class PrefilterMissingError(ValueError):
    """A two-stage search asked for the pre-filter of a checkpoint trained without one."""


class HeadOutput(NamedTuple):
    """A task's logits plus the trunk output they came from."""

    logits: Tensor  # answer: (B, A); match: (B,); region: (B, R); pair: (B, 2); triple: (B, 3)
    trunk: TrunkOutput


class MultiTaskViLBERT(nn.Module):
    """Trunk + six heads.  `forward(task, ...)` computes only that task's head."""

    def __init__(self, cfg: ViLBERTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.trunk = ViLBERTTrunk(cfg)
        self.heads = TaskHeads(cfg)
        # Built last so adding it leaves the initialisation of everything else unchanged.
        self.prefilter = PrefilterHead(cfg) if cfg.has_prefilter else None
        init_weights(self)

    def require_prefilter(self) -> PrefilterHead:
        if self.prefilter is None:
            raise PrefilterMissingError(
                "this checkpoint has no retrieval pre-filter (prefilter_dim = 0 in its config.json): "
                "train one with `prefilter.enabled: true` in the fit config, or search exhaustively"
            )
        return self.prefilter

    def forward(
        self,
        task: Task,
        input_ids: Tensor,
        attention_mask: Tensor,
        region_features: Tensor,
        region_locations: Tensor,
        region_mask: Tensor,
        task_ids: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> HeadOutput:
        """Run one task.

        Text: (B, T).  Regions: (B, R, F) for one-image tasks, (B, I, R, F) with
        I = task.images_per_example for multi-image tasks (NLVR2).  `task_ids` defaults to the
        task's official id for every row; pass others for the token ablations.
        """
        if task_ids is None:
            task_ids = torch.full(
                (input_ids.shape[0],), task.task_id, dtype=torch.long, device=input_ids.device
            )
        images = task.images_per_example
        if images > 1:
            if region_features.dim() != 4 or region_features.shape[1] != images:
                raise ValueError(
                    f"{task.slug} expects regions shaped (B, {images}, R, F), "
                    f"got {tuple(region_features.shape)}"
                )
            # Row b*I + i is (text b, image i): the text is repeated once per image.
            input_ids, attention_mask, task_ids = (
                t.repeat_interleave(images, dim=0) for t in (input_ids, attention_mask, task_ids)
            )
            if token_type_ids is not None:
                token_type_ids = token_type_ids.repeat_interleave(images, dim=0)
            region_features, region_locations, region_mask = (
                t.flatten(0, 1) for t in (region_features, region_locations, region_mask)
            )
        out = self.trunk(
            input_ids,
            attention_mask,
            task_ids,
            region_features,
            region_locations,
            region_mask,
            token_type_ids,
        )
        return HeadOutput(self.head_logits(task.head, out, region_mask, images), out)

    def head_logits(
        self, head: Head, out: TrunkOutput, region_mask: Tensor, images: int | None = None
    ) -> Tensor:
        """`head` on the trunk's output over N = B x I rows (`images` = I, default the task table's),
        fed as `vilbert.contract.head_feeds` says; logits in the model's convention (a scalar head's
        are (N,))."""
        trunk_out = {FUSED: out.fused, REGION_STATES: out.region_states}
        feeds = head_feeds(head, trunk_out, region_mask, images)
        return model_logits(head, self.heads.logits(head, *(feeds[n] for n in HEAD_IO[head].inputs)))

    def score_against_images(
        self,
        task: Task,
        prefix: TextPrefix,
        region_features: Tensor,
        region_locations: Tensor,
        region_mask: Tensor,
    ) -> Tensor:
        """Score one cached text prefix (batch 1) against N images; returns (N,) match logits."""
        out = self.trunk.encode_joint(prefix, region_features, region_locations, region_mask)
        return self.head_logits(task.head, out, region_mask)


def with_prefilter(model: MultiTaskViLBERT, dim: int) -> MultiTaskViLBERT:
    """`model` with a freshly initialised pre-filter head of width `dim` (for fine-tuning a checkpoint
    trained without one).  Every other weight is copied; a model that has one is returned as is."""
    if model.prefilter is not None:
        if model.config.prefilter_dim != dim:
            raise ValueError(f"the model's pre-filter is {model.config.prefilter_dim}-d, not {dim}-d")
        return model
    grown = MultiTaskViLBERT(dataclasses.replace(model.config, prefilter_dim=dim))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.startswith("prefilter.") for k in missing):
        raise ValueError(
            f"adding a pre-filter changed other weights: missing {missing}, unexpected {unexpected}"
        )
    return grown


def with_feature_size(model: MultiTaskViLBERT, feature_size: int) -> MultiTaskViLBERT:
    """`model` for `feature_size`-d region features: the layers that read raw region features (the
    image embedding's projection, and the pre-filter's when present) start afresh; every other weight
    is copied.  For starting from a checkpoint whose detector had another feature width (the CC
    pretrained ViLBERT reads 2048-d features; the synthetic world's detector writes 256-d)."""
    if model.config.v_feature_size == feature_size:
        return model
    fresh = ("trunk.image_embeddings.features.", "prefilter.region_features.")
    resized = MultiTaskViLBERT(dataclasses.replace(model.config, v_feature_size=feature_size))
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith(fresh)}
    missing, unexpected = resized.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith(fresh) for k in missing):
        raise ValueError(f"resizing the region features changed other weights: {missing}, {unexpected}")
    return resized
