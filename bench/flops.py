"""Analytic FLOPs of one ViLBERT forward (trunk + a head), counting a multiply-add as 2 FLOPs.

Only matrix products are counted (projections, FFNs, attention scores and mixing): LayerNorm, GELU,
softmax and the embedding gathers are a fraction of a percent at these sizes and are not what a
"fraction of the matmul ceiling" is about.  The text stream runs over T + 1 positions (the task token
is spliced in after [CLS]); the vision stream over R regions (global row included).
"""

from __future__ import annotations

from vilbert.config import ViLBERTConfig
from vilbert.contract import HEAD_IO, head_in_features, head_out_features
from vilbert.tasks import Head


def _linear(rows: int, fan_in: int, fan_out: int) -> int:
    return 2 * rows * fan_in * fan_out


def _attention_mix(queries: int, keys: int, width: int) -> int:
    """Scores (Q K^T) and mixing (P V) over all heads: 2 matmuls of queries x keys x width."""
    return 2 * 2 * queries * keys * width


def trunk_flop_parts(cfg: ViLBERTConfig, text_tokens: int, regions: int) -> dict[str, int]:
    """{"linear": weight matmuls, "attention": scores + mixing} of the trunk for one (text, image) row;
    `text_tokens` as fed ([CLS] ... [SEP], without the task token)."""
    lt = text_tokens + (1 if cfg.task_specific_tokens else 0)
    r = regions
    ht, hv, bi = cfg.hidden_size, cfg.v_hidden_size, cfg.bi_hidden_size
    linear = _linear(r, cfg.v_feature_size, hv) + _linear(r, 5, hv)  # region embedding
    linear += cfg.num_hidden_layers * (4 * _linear(lt, ht, ht) + 2 * _linear(lt, ht, cfg.intermediate_size))
    linear += cfg.v_num_hidden_layers * (4 * _linear(r, hv, hv) + 2 * _linear(r, hv, cfg.v_intermediate_size))
    linear += cfg.num_co_layers * (
        3 * _linear(lt, ht, bi)  # text query / key / value
        + 3 * _linear(r, hv, bi)  # image query / key / value
        + _linear(r, bi, hv)
        + _linear(lt, bi, ht)  # back to each stream's width
        + 2 * _linear(r, hv, cfg.v_intermediate_size)
        + 2 * _linear(lt, ht, cfg.intermediate_size)  # FFNs
    )
    linear += _linear(1, ht, bi) + _linear(1, hv, bi)  # poolers
    attention = cfg.num_hidden_layers * _attention_mix(lt, lt, ht)
    attention += cfg.v_num_hidden_layers * _attention_mix(r, r, hv)
    attention += cfg.num_co_layers * (_attention_mix(lt, r, bi) + _attention_mix(r, lt, bi))
    return {"linear": linear, "attention": attention}


def trunk_flops(cfg: ViLBERTConfig, text_tokens: int, regions: int) -> int:
    """FLOPs of the trunk for one (text, image) row."""
    return sum(trunk_flop_parts(cfg, text_tokens, regions).values())


def head_flops(cfg: ViLBERTConfig, head: Head, regions: int = 1) -> int:
    """FLOPs of one head for one row (pair: for one two-image example), from its declared I/O
    (`vilbert.contract.HEAD_IO`): input and output widths, one Linear or the two of an MLP."""
    io = HEAD_IO[head]
    rows = regions if io.per_region else 1
    width, out = head_in_features(head, cfg), head_out_features(head, cfg)
    if io.mlp:
        hidden = cfg.classifier_hidden_mult * cfg.bi_hidden_size
        return _linear(rows, width, hidden) + _linear(rows, hidden, out)
    return _linear(rows, width, out)


def forward_flops(cfg: ViLBERTConfig, head: Head, text_tokens: int, regions: int) -> int:
    return trunk_flops(cfg, text_tokens, regions) + head_flops(cfg, head, regions)
