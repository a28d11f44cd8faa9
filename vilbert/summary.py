"""`python -m vilbert.summary DIR_OR_PRESET [--json]`: parameter counts per part of the model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from torch import nn

from vilbert.cli import ArgumentParser, run
from vilbert.config import PRESETS, ViLBERTConfig, preset
from vilbert.heads import MultiTaskViLBERT
from vilbert.tasks import Head


def _count(*modules: nn.Module | None) -> int:
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def parameter_counts(model: MultiTaskViLBERT) -> dict[str, int]:
    """Counts per part; the parts partition the model, so they add up to `total`."""
    t = model.trunk
    parts = {
        "text_stream": _count(t.text_embeddings, t.text_layers, t.text_pooler),
        "visual_stream": _count(t.image_embeddings, t.image_layers, t.image_pooler),
        "co_attention": _count(t.co_layers),
    }
    for head in Head:
        parts[f"head_{head}"] = _count(getattr(model.heads, str(head)))
    parts["total"] = _count(model)
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total"), "parts must partition"
    return parts


def load_config(source: str) -> ViLBERTConfig:
    if source in PRESETS:
        return preset(source)
    path = Path(source)
    cfg_file = path / "config.json" if path.is_dir() else path
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{source!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint")
    return ViLBERTConfig.load(cfg_file)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m vilbert.summary", description=__doc__)
    parser.add_argument("source", help="a preset name or a checkpoint directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.source)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = parameter_counts(MultiTaskViLBERT(cfg))
    if args.json:
        print(json.dumps(counts))
        return 0
    print(
        f"ViLBERT ({cfg.preset}): text {cfg.num_hidden_layers}x{cfg.hidden_size}, "
        f"vision {cfg.v_num_hidden_layers}x{cfg.v_hidden_size}, {cfg.num_co_layers} co-attention layers"
    )
    width = max(len(k) for k in counts)
    print(f"{'part':<{width}}  {'parameters':>13}  {'share':>6}")
    for name, n in counts.items():
        share = 100.0 * n / counts["total"]
        print(f"{name:<{width}}  {n:>13,}  {share:>5.1f}%")
    return 0


if __name__ == "__main__":
    run(main)
