"""An independent, functional re-statement of the official VILBertForVLTasks forward pass,
written from the official code's semantics (layer schedule, co-attention math, task-token splice,
forward interface) and operating directly on a state_dict with the OFFICIAL key names.  Tests
compare our module-based model against it after conversion, so a
wrong key mapping or a numerics slip (mask value, LayerNorm eps, layer order, task-token splice)
shows up as a mismatch.  Deliberately uses explicit matmul/softmax rather than SDPA.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F


def _lin(s, name, x):
    return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]


def _ln(s, name, x):
    return F.layer_norm(x, x.shape[-1:], s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-12)


def _mha(q, k, v, add_mask, heads):
    b, nq, d = q.shape
    dh = d // heads
    q = q.view(b, nq, heads, dh).transpose(1, 2)
    k = k.view(k.shape[0], k.shape[1], heads, dh).transpose(1, 2)
    v = v.view(v.shape[0], v.shape[1], heads, dh).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh) + add_mask
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, nq, d)


def _bert_layer(s, p, x, add_mask, heads):
    ctx = _mha(
        _lin(s, f"{p}.attention.self.query", x),
        _lin(s, f"{p}.attention.self.key", x),
        _lin(s, f"{p}.attention.self.value", x),
        add_mask,
        heads,
    )
    x = _ln(s, f"{p}.attention.output.LayerNorm", _lin(s, f"{p}.attention.output.dense", ctx) + x)
    h = F.gelu(_lin(s, f"{p}.intermediate.dense", x))
    return _ln(s, f"{p}.output.LayerNorm", _lin(s, f"{p}.output.dense", h) + x)


def _co_layer(s, p, v, v_mask, t, t_mask, heads):
    ctx_t = _mha(
        _lin(s, f"{p}.biattention.query2", t),
        _lin(s, f"{p}.biattention.key1", v),
        _lin(s, f"{p}.biattention.value1", v),
        v_mask,
        heads,
    )
    ctx_v = _mha(
        _lin(s, f"{p}.biattention.query1", v),
        _lin(s, f"{p}.biattention.key2", t),
        _lin(s, f"{p}.biattention.value2", t),
        t_mask,
        heads,
    )
    v = _ln(s, f"{p}.biOutput.LayerNorm1", _lin(s, f"{p}.biOutput.dense1", ctx_v) + v)
    t = _ln(s, f"{p}.biOutput.LayerNorm2", _lin(s, f"{p}.biOutput.dense2", ctx_t) + t)
    v = _ln(
        s,
        f"{p}.v_output.LayerNorm",
        _lin(s, f"{p}.v_output.dense", F.gelu(_lin(s, f"{p}.v_intermediate.dense", v))) + v,
    )
    t = _ln(
        s,
        f"{p}.t_output.LayerNorm",
        _lin(s, f"{p}.t_output.dense", F.gelu(_lin(s, f"{p}.t_intermediate.dense", t))) + t,
    )
    return v, t


def official_forward(
    s, cfg, input_txt, input_imgs, image_loc, attention_mask, image_attention_mask, task_ids
):
    """Returns a dict with the official outputs we keep (eval mode: no dropout)."""
    b, t_len = input_txt.shape
    pos = torch.arange(t_len)[None]
    e = (
        s["bert.embeddings.word_embeddings.weight"][input_txt]
        + s["bert.embeddings.position_embeddings.weight"][pos]
        + s["bert.embeddings.token_type_embeddings.weight"][torch.zeros_like(input_txt)]
    )
    task = s["bert.embeddings.task_embeddings.weight"][task_ids.view(-1, 1)]
    e = torch.cat([e[:, :1], task, e[:, 1:]], 1)
    t = _ln(s, "bert.embeddings.LayerNorm", e)
    t_mask = torch.cat([torch.ones(b, 1), attention_mask.float()], 1)
    t_add = (1.0 - t_mask)[:, None, None, :] * -10000.0
    v = _ln(
        s,
        "bert.v_embeddings.LayerNorm",
        _lin(s, "bert.v_embeddings.image_embeddings", input_imgs)
        + _lin(s, "bert.v_embeddings.image_location_embeddings", image_loc),
    )
    v_add = (1.0 - image_attention_mask.float())[:, None, None, :] * -10000.0
    t_start = v_start = 0
    for k, (v_end, t_end) in enumerate(zip(cfg.v_biattention_id, cfg.t_biattention_id)):
        for i in range(t_start, t_end):
            t = _bert_layer(s, f"bert.encoder.layer.{i}", t, t_add, cfg.num_attention_heads)
        for i in range(v_start, v_end):
            v = _bert_layer(s, f"bert.encoder.v_layer.{i}", v, v_add, cfg.v_num_attention_heads)
        v, t = _co_layer(s, f"bert.encoder.c_layer.{k}", v, v_add, t, t_add, cfg.bi_num_attention_heads)
        t_start, v_start = t_end, v_end
    for i in range(v_start, cfg.v_num_hidden_layers):
        v = _bert_layer(s, f"bert.encoder.v_layer.{i}", v, v_add, cfg.v_num_attention_heads)
    for i in range(t_start, cfg.num_hidden_layers):
        t = _bert_layer(s, f"bert.encoder.layer.{i}", t, t_add, cfg.num_attention_heads)
    pooled = F.relu(_lin(s, "bert.t_pooler.dense", t[:, 0])) * F.relu(_lin(s, "bert.v_pooler.dense", v[:, 0]))

    def classifier(name, x):
        h = _ln(s, f"{name}.logit_fc.2", F.gelu(_lin(s, f"{name}.logit_fc.0", x)))
        return _lin(s, f"{name}.logit_fc.3", h)

    out = {
        "vil_prediction": classifier("vil_prediction", pooled),
        "vil_prediction_gqa": classifier("vil_prediction_gqa", pooled),
        "vil_logit": _lin(s, "vil_logit", pooled),
        "vil_tri_prediction": _lin(s, "vil_tri_prediction", pooled),
        "vision_logit": _lin(s, "vision_logit", v)
        + ((1.0 - image_attention_mask.float()) * -10000.0)[..., None],
    }
    if b % 2 == 0:  # the official NLVR2 path: rows 2i and 2i+1 concatenated
        out["vil_binary_prediction"] = classifier("vil_binary_prediction", pooled.view(b // 2, -1))
    return out


def random_official_state_dict(cfg, seed=0, key_file=None):
    """Random tensors under every official key, with shapes for `cfg` (or read from key_file)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    if key_file is not None:
        for line in Path(key_file).read_text().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, rest = line.split(" ", 1)
            shape = [int(x) for x in rest[rest.index("[") + 1 : rest.index("]")].split(",") if x.strip()]
            state[name] = torch.randn(shape, generator=g) * 0.02
        return state
    from vilbert.checkpoint import official_key_map
    from vilbert.heads import MultiTaskViLBERT

    ours = MultiTaskViLBERT(cfg).state_dict()
    for rule in official_key_map(cfg):
        if rule.ours is not None:
            shape = ours[rule.ours].shape
        elif rule.official.startswith("linguisic_logit"):
            shape = (1, cfg.hidden_size) if rule.official.endswith("weight") else (1,)
        else:
            shape = (3,)  # pretraining heads: dropped, any shape will do here
        t = torch.randn(shape, generator=g) * 0.5
        if rule.official.endswith("LayerNorm.weight") or (
            ".LayerNorm" in rule.official and "weight" in rule.official
        ):
            t = 1.0 + 0.1 * t
        state[rule.official] = t
    return state
