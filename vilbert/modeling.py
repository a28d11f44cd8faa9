"""The ViLBERT trunk, in the order data flows through it (paper Sec. 3.1; ViLBERT, Lu et al. 2019).

    text ids ──► TextEmbeddings (word + position + type; task token spliced in after [CLS])
                  └► text layers 0 .. t_biattention_id[0]-1          ("text prefix": no image yet)
    regions ───► ImageEmbeddings (feature projection + 5-d location projection, LayerNorm)
                  └► for each co-attention layer k:
                        text layers up to t_biattention_id[k]-1, vision layers up to v_biattention_id[k]-1,
                        CoAttentionLayer k (each stream attends to the other, then its own FFN)
                  └► remaining vision layers, remaining text layers
    poolers: ReLU(dense(text[:, 0]))  and  ReLU(dense(regions[:, 0]))  (the [CLS] and global-image rows)
    fusion:  pooled_text * pooled_image  ("mul")

Numerics follow the released model exactly: post-LN blocks, LayerNorm eps 1e-12, erf GELU,
additive (1 - mask) * -10000 attention masks.  Nothing in `forward` branches on tensor values or
batch shapes, so the trunk exports to ONNX with dynamic batch, text length and region count.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vilbert.config import ViLBERTConfig

MASK_VALUE = -10000.0  # the reference's additive mask value (not -inf: keeps fully-masked rows finite)


def additive_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """(B, L) 1/0 mask -> (B, 1, 1, L) additive mask broadcast over heads and queries."""
    return (1.0 - mask.to(dtype))[:, None, None, :] * MASK_VALUE


class TrunkOutput(NamedTuple):
    """What the trunk hands to the heads.  A NamedTuple so tracing/export keeps the names."""

    text_states: Tensor  # (B, T+1, H_t)  task token at index 1
    region_states: Tensor  # (B, R, H_v)  global image row at index 0
    pooled_text: Tensor  # (B, H_bi)
    pooled_image: Tensor  # (B, H_bi)
    fused: Tensor  # (B, H_bi)  pooled_text * pooled_image (before head dropout)


class TextPrefix(NamedTuple):
    """Text states after the image-free prefix layers; cacheable per query for retrieval."""

    states: Tensor  # (B_t, T+1, H_t)
    mask: Tensor  # (B_t, T+1) float 1/0, task-token column included


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------


class TextEmbeddings(nn.Module):
    def __init__(self, cfg: ViLBERTConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=0)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        # The task token is a raw learned vector: no position or type embedding is added to it.
        self.task = nn.Embedding(cfg.num_task_tokens, cfg.hidden_size) if cfg.task_specific_tokens else None
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor, attention_mask: Tensor, task_ids: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        # input_ids (B, T) -> embeddings (B, T(+1), H) and the matching float mask
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]  # before the splice
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        mask = attention_mask.to(x.dtype)
        if self.task is not None:
            if task_ids is None:
                raise ValueError("task_ids are required: this model was built with task tokens")
            task = self.task(task_ids.reshape(-1, 1))  # (B, 1, H)
            x = torch.cat([x[:, :1], task, x[:, 1:]], dim=1)  # [CLS], TASK, tok1, ...
            mask = torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)
        return self.dropout(self.norm(x)), mask


class ImageEmbeddings(nn.Module):
    def __init__(self, cfg: ViLBERTConfig) -> None:
        super().__init__()
        self.features = nn.Linear(cfg.v_feature_size, cfg.v_hidden_size)
        self.locations = nn.Linear(5, cfg.v_hidden_size)  # x1/W, y1/H, x2/W, y2/H, area fraction
        self.norm = nn.LayerNorm(cfg.v_hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.v_hidden_dropout_prob)

    def forward(self, region_features: Tensor, region_locations: Tensor) -> Tensor:
        # (B, R, F), (B, R, 5) -> (B, R, H_v)
        return self.dropout(self.norm(self.features(region_features) + self.locations(region_locations)))


# ---------------------------------------------------------------------------------------------
# Transformer blocks
# ---------------------------------------------------------------------------------------------


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)  # (B, heads, N, d_head)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attend(q: Tensor, k: Tensor, v: Tensor, add_mask: Tensor, heads: int, dropout: float) -> Tensor:
    """Multi-head scaled dot-product attention with an additive key mask; (B, N, D) in and out."""
    out = F.scaled_dot_product_attention(
        _split_heads(q, heads),
        _split_heads(k, heads),
        _split_heads(v, heads),
        attn_mask=add_mask,
        dropout_p=dropout,
    )
    return _merge_heads(out)


class FeedForward(nn.Module):
    """dense -> GELU -> dense, residual, LayerNorm (post-LN)."""

    def __init__(self, width: int, inner: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.up = nn.Linear(width, inner)
        self.down = nn.Linear(inner, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.dropout(self.down(F.gelu(self.up(x)))))


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, attn_dropout: float, dropout: float, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.attn_dropout = attn_dropout
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, add_mask: Tensor) -> Tensor:
        p = self.attn_dropout if self.training else 0.0
        ctx = attend(self.query(x), self.key(x), self.value(x), add_mask, self.heads, p)
        return self.norm(x + self.dropout(self.out(ctx)))


class TransformerLayer(nn.Module):
    """One BERT layer; used for both the text stream and the vision stream."""

    def __init__(
        self, width: int, heads: int, inner: int, attn_dropout: float, dropout: float, eps: float
    ) -> None:
        super().__init__()
        self.attention = SelfAttention(width, heads, attn_dropout, dropout, eps)
        self.ffn = FeedForward(width, inner, dropout, eps)

    def forward(self, x: Tensor, add_mask: Tensor) -> Tensor:
        return self.ffn(self.attention(x, add_mask))


class CoAttentionLayer(nn.Module):
    """Each stream queries the other (paper Fig. 2b), then runs its own FFN.

    Projections go to the shared co-attention width (bi_hidden_size); `image_out` / `text_out`
    project back to each stream's width before the residual.
    """

    def __init__(self, cfg: ViLBERTConfig) -> None:
        super().__init__()
        bi, hv, ht = cfg.bi_hidden_size, cfg.v_hidden_size, cfg.hidden_size
        self.heads = cfg.bi_num_attention_heads
        self.image_query, self.image_key, self.image_value = (nn.Linear(hv, bi) for _ in range(3))
        self.text_query, self.text_key, self.text_value = (nn.Linear(ht, bi) for _ in range(3))
        self.image_out = nn.Linear(bi, hv)
        self.image_norm = nn.LayerNorm(hv, eps=cfg.layer_norm_eps)
        self.text_out = nn.Linear(bi, ht)
        self.text_norm = nn.LayerNorm(ht, eps=cfg.layer_norm_eps)
        # The released checkpoint carries two projections its forward never uses (q_dense1/2).
        # They are kept so an imported checkpoint round-trips; they cost no compute.
        self.unused_image_proj = nn.Linear(bi, hv)
        self.unused_text_proj = nn.Linear(bi, ht)
        self.image_ffn = FeedForward(
            hv, cfg.v_intermediate_size, cfg.v_hidden_dropout_prob, cfg.layer_norm_eps
        )
        self.text_ffn = FeedForward(ht, cfg.intermediate_size, cfg.hidden_dropout_prob, cfg.layer_norm_eps)
        self.attn_dropout = cfg.v_attention_probs_dropout_prob  # the reference uses the vision value
        self.dropout = nn.Dropout(cfg.v_hidden_dropout_prob)

    def forward(
        self, image: Tensor, image_mask: Tensor, text: Tensor, text_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        # image (B, R, H_v), text (B, T+1, H_t); masks additive (B, 1, 1, N)
        p = self.attn_dropout if self.training else 0.0
        text_ctx = attend(
            self.text_query(text), self.image_key(image), self.image_value(image), image_mask, self.heads, p
        )  # text attends to regions: (B, T+1, bi)
        image_ctx = attend(
            self.image_query(image), self.text_key(text), self.text_value(text), text_mask, self.heads, p
        )  # regions attend to text: (B, R, bi)
        image = self.image_norm(image + self.dropout(self.image_out(image_ctx)))
        text = self.text_norm(text + self.dropout(self.text_out(text_ctx)))
        return self.image_ffn(image), self.text_ffn(text)


class Pooler(nn.Module):
    """ReLU(dense(first row)): [CLS] for text, the global-image row for regions."""

    def __init__(self, width: int, out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, out)

    def forward(self, states: Tensor) -> Tensor:
        return F.relu(self.dense(states[:, 0]))


# ---------------------------------------------------------------------------------------------
# The trunk
# ---------------------------------------------------------------------------------------------


class ViLBERTTrunk(nn.Module):
    """Two-stream ViLBERT encoder shared by all twelve tasks."""

    def __init__(self, cfg: ViLBERTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.text_embeddings = TextEmbeddings(cfg)
        self.image_embeddings = ImageEmbeddings(cfg)
        self.text_layers = nn.ModuleList(
            TransformerLayer(
                cfg.hidden_size,
                cfg.num_attention_heads,
                cfg.intermediate_size,
                cfg.attention_probs_dropout_prob,
                cfg.hidden_dropout_prob,
                cfg.layer_norm_eps,
            )
            for _ in range(cfg.num_hidden_layers)
        )
        self.image_layers = nn.ModuleList(
            TransformerLayer(
                cfg.v_hidden_size,
                cfg.v_num_attention_heads,
                cfg.v_intermediate_size,
                cfg.v_attention_probs_dropout_prob,
                cfg.v_hidden_dropout_prob,
                cfg.layer_norm_eps,
            )
            for _ in range(cfg.v_num_hidden_layers)
        )
        self.co_layers = nn.ModuleList(CoAttentionLayer(cfg) for _ in range(cfg.num_co_layers))
        self.text_pooler = Pooler(cfg.hidden_size, cfg.bi_hidden_size)
        self.image_pooler = Pooler(cfg.v_hidden_size, cfg.bi_hidden_size)
        # Training only: keep each layer's input, recompute its activations in backward (less memory).
        self.activation_checkpointing = False

    def _run(self, layer: nn.Module, *args: Tensor):
        if self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    @staticmethod
    def schedule(cfg: ViLBERTConfig) -> list[tuple[str, int]]:
        """Call order of the layers after the text prefix, as (stream, index); static per config.

        For `base` this is c0, t6, v0, c1, t7, v1, ..., c5, v5, t11 — the order the official
        encoder runs: co-attention layer k follows text layer 5+k, and c0 sees the raw image embedding.
        """
        order: list[tuple[str, int]] = []
        t_next, v_next = cfg.text_prefix_layers, 0
        for k, (v_end, t_end) in enumerate(zip(cfg.v_biattention_id, cfg.t_biattention_id)):
            order += [("text", i) for i in range(t_next, t_end)]
            order += [("image", i) for i in range(v_next, v_end)]
            order.append(("co", k))
            t_next, v_next = t_end, v_end
        order += [("image", i) for i in range(v_next, cfg.v_num_hidden_layers)]
        order += [("text", i) for i in range(t_next, cfg.num_hidden_layers)]
        return order

    def encode_text_prefix(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        task_ids: Tensor | None,
        token_type_ids: Tensor | None = None,
    ) -> TextPrefix:
        """Embeddings + the text layers that run before any co-attention (image-independent)."""
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x, mask = self.text_embeddings(input_ids, token_type_ids, attention_mask, task_ids)
        add = additive_mask(mask, x.dtype)
        for layer in self.text_layers[: self.config.text_prefix_layers]:
            x = self._run(layer, x, add)
        return TextPrefix(x, mask)

    def encode_text_only(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> Tensor:
        """All text layers with no task token and no image: the plain BERT the text stream began as.

        Used to check that a text stream initialised from a BERT checkpoint reproduces that
        checkpoint's hidden states, and for text-only analysis.  (B, T) -> (B, T, H_t).
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        emb = self.text_embeddings
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        x = emb.dropout(
            emb.norm(emb.word(input_ids) + emb.position(positions) + emb.token_type(token_type_ids))
        )
        add = additive_mask(attention_mask, x.dtype)
        for layer in self.text_layers:
            x = layer(x, add)
        return x

    def encode_joint(
        self, prefix: TextPrefix, region_features: Tensor, region_locations: Tensor, region_mask: Tensor
    ) -> TrunkOutput:
        """Everything from the first co-attention layer on.

        The text batch may be 1 while the image batch is N (one caption scored against N
        images): the text prefix is expanded to the image batch here, so it is computed once.
        """
        image = self.image_embeddings(region_features, region_locations)  # (B, R, H_v)
        text = prefix.states.expand(image.shape[0], -1, -1)
        text_add = additive_mask(prefix.mask, text.dtype).expand(image.shape[0], -1, -1, -1)
        image_add = additive_mask(region_mask, image.dtype)
        for stream, i in self.schedule(self.config):
            match stream:
                case "text":
                    text = self._run(self.text_layers[i], text, text_add)
                case "image":
                    image = self._run(self.image_layers[i], image, image_add)
                case "co":
                    image, text = self._run(self.co_layers[i], image, image_add, text, text_add)
        pooled_text = self.text_pooler(text)
        pooled_image = self.image_pooler(image)
        return TrunkOutput(text, image, pooled_text, pooled_image, pooled_text * pooled_image)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        task_ids: Tensor | None,
        region_features: Tensor,
        region_locations: Tensor,
        region_mask: Tensor,
        token_type_ids: Tensor | None = None,
    ) -> TrunkOutput:
        """input_ids/attention_mask (B, T); task_ids (B,); region_* (B, R, F) / (B, R, 5) / (B, R)."""
        prefix = self.encode_text_prefix(input_ids, attention_mask, task_ids, token_type_ids)
        return self.encode_joint(prefix, region_features, region_locations, region_mask)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        if isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
