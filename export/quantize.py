"""Selective int8: onnxruntime dynamic quantization with the accuracy-sensitive matmuls kept in fp32.

Dynamic quantization turns each MatMul/Gemm with a constant weight into an int8 x int8 integer
matmul; activations are quantized per call (uint8, one scale per tensor).  One scale per tensor is
what costs accuracy: a matmul whose input has a few large outliers (the FFN's down projection after
GELU, the region-feature projection that reads raw detector features) loses most of its resolution.
So `QuantizeOptions` names, by module path, what stays fp32; the choice in `DEFAULT_EXCLUDE` was
measured on the demo model (docs/performance.md, "int8: what stays fp32").

Module paths come from the exporter's own metadata: the dynamo exporter records each node's
``pkg.torch.onnx.name_scopes`` in the raw graph, and onnxruntime's offline optimiser keeps node
names, so a node of the optimised graph is matched to its module through the raw graph.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
QUANTIZED_OPS = ("MatMul", "Gemm")

# Named groups of module-path patterns (fnmatch, matched against the innermost module of a node).
GROUPS: dict[str, tuple[str, ...]] = {
    # the region-feature projection (raw detector features, large dynamic range) and the text embedding
    "embeddings": ("trunk.image_embeddings.*", "trunk.text_embeddings.*"),
    "poolers": ("trunk.text_pooler.*", "trunk.image_pooler.*"),
    "attention_out": ("*.attention.out", "*.image_out", "*.text_out"),
    "ffn_down": ("*.ffn.down", "*_ffn.down"),
    "co_attention": ("trunk.co_layers.*",),
    "first_layers": ("trunk.text_layers.0.*", "trunk.image_layers.0.*", "trunk.co_layers.0.*"),
}

# The shipped choice (docs/performance.md, "int8: what stays fp32"): heads stay fp32 (a few small
# matmuls that map the fused vector straight to answer scores); in the trunk the region-feature
# embedding, the poolers and every FFN down projection (its input is a GELU output with outliers) stay
# fp32; the attention projections and FFN up projections, most of the FLOPs, are int8.
DEFAULT_EXCLUDE: tuple[str, ...] = ("embeddings", "poolers", "ffn_down")


@dataclass(frozen=True)
class QuantizeOptions:
    """What `quantize_graph` quantizes.  `exclude` holds group names (GROUPS) or fnmatch patterns."""

    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    quantize_heads: bool = False  # head graphs: False keeps them fp32 entirely
    per_channel: bool = False  # one weight scale per output column instead of per tensor
    # reduce_range (7-bit weights) avoids u8 x s8 overflow on AVX2 without VNNI; on VNNI CPUs (and with
    # onnxruntime's AVX2 kernels that widen first) it only throws precision away.
    reduce_range: bool = False
    patterns: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        pats: list[str] = []
        for item in self.exclude:
            pats.extend(GROUPS.get(item, (item,)))
        object.__setattr__(self, "patterns", tuple(pats))

    @classmethod
    def everything(cls) -> QuantizeOptions:
        """Every weight matmul in every graph: plain `quantize_dynamic`, the comparison row."""
        return cls(exclude=(), quantize_heads=True)

    def label(self) -> str:
        parts = ["heads int8" if self.quantize_heads else "heads fp32"]
        parts += [f"{e} fp32" for e in self.exclude]
        if self.per_channel:
            parts.append("per-channel")
        if self.reduce_range:
            parts.append("reduce-range")
        return ", ".join(parts)

    def to_json(self) -> str:
        values = asdict(self)
        values.pop("patterns")
        return json.dumps(values, sort_keys=True)


def node_scopes(raw: Path) -> dict[str, str]:
    """Node name -> innermost module path (``trunk.text_layers.0.ffn.down``) from the raw export."""
    import onnx

    graph = onnx.load(str(raw), load_external_data=False).graph
    out: dict[str, str] = {}
    for node in graph.node:
        for prop in node.metadata_props:
            if prop.key == SCOPES_KEY:
                # [..., "trunk.text_layers.0.ffn", "trunk.text_layers.0.ffn.down", "linear_7"]: the last
                # entry names the op, the one before it the innermost module.
                modules = [s for s in _parse_scopes(prop.value)[:-1] if s]
                if modules:
                    out[node.name] = modules[-1]
    return out


def _parse_scopes(value: str) -> list[str]:
    import ast

    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return []
    return [str(s) for s in parsed] if isinstance(parsed, list | tuple) else []


def excluded_nodes(
    graph: Path, scopes: dict[str, str], patterns: Iterable[str]
) -> tuple[list[str], list[str]]:
    """(names of the weight matmuls matching `patterns`, names of all weight matmuls) in `graph`."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    constants = {i.name for i in model.graph.initializer}
    patterns = list(patterns)
    matmuls = [
        n
        for n in model.graph.node
        if n.op_type in QUANTIZED_OPS and any(i in constants for i in n.input[1:2])
    ]
    excluded = [
        n.name for n in matmuls if any(fnmatch.fnmatchcase(scopes.get(n.name, ""), p) for p in patterns)
    ]
    return excluded, [n.name for n in matmuls]


def quantize_graph(
    src: Path,
    dst: Path,
    options: QuantizeOptions | None = None,
    *,
    raw: Path | None = None,
    head: bool = False,
) -> Path:
    """Quantize `src` (a provider-independent fp32 graph) to `dst` as `options` say.

    `raw`: the exporter's graph `src` was optimised from (module paths; default: ``../exported/``
    beside `src`'s folder).  `head`: `src` is a head graph (kept fp32 unless `quantize_heads`).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from export.graphs import EXTERNAL_DATA_BYTES, _quiet

    options = options or QuantizeOptions()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if head and not options.quantize_heads:
        shutil.copyfile(src, dst)
        extra = src.with_name(src.name + ".data")
        if extra.exists():
            shutil.copyfile(extra, dst.with_name(dst.name + ".data"))
        return dst
    nodes_to_exclude: list[str] = []
    if options.patterns:
        raw = raw or src.parent.parent / "exported" / src.name
        if not raw.is_file():
            raise FileNotFoundError(f"{raw}: the raw export is needed to find module paths for exclusions")
        nodes_to_exclude, _ = excluded_nodes(src, node_scopes(raw), options.patterns)
        # The quantizer first rewrites each Gemm as MatMul + Add, naming the MatMul "<gemm>_MatMul".
        nodes_to_exclude += [f"{name}_MatMul" for name in nodes_to_exclude]
    # The quantizer writes a shape-inferred copy beside its input: give it a private folder, so two
    # quantizations of one graph (different options) can run at once.
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp, _quiet():
        private = Path(tmp) / src.name
        private.symlink_to(src.resolve())
        data = src.with_name(src.name + ".data")
        if data.exists():
            (Path(tmp) / data.name).symlink_to(data.resolve())
        quantize_dynamic(
            str(private),
            str(dst),
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=options.per_channel,
            reduce_range=options.reduce_range,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=nodes_to_exclude,
            use_external_data_format=src.stat().st_size > EXTERNAL_DATA_BYTES,
            extra_options={"MatMulConstBOnly": True},
        )
    return dst
