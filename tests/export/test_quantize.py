"""Selective int8 (export/quantize.py): the named modules stay fp32, everything else is quantized."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from export.quantize import (
    DEFAULT_EXCLUDE,
    GROUPS,
    QuantizeOptions,
    excluded_nodes,
    node_scopes,
    quantize_graph,
)

INT8_OPS = {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _float_weight_matmuls(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    weights = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return {n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights}


def test_module_paths_come_from_the_raw_export(tiny_export):
    work = tiny_export.work
    scopes = node_scopes(work / "exported" / "trunk.onnx")
    _, matmuls = excluded_nodes(work / "basic" / "trunk.onnx", scopes, ())
    paths = {scopes[n] for n in matmuls}
    assert "trunk.image_embeddings.features" in paths
    assert "trunk.text_layers.0.ffn.down" in paths and "trunk.co_layers.0.image_out" in paths
    assert all(p.startswith("trunk.") for p in paths)


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_every_group_names_some_trunk_matmul(tiny_export, group):
    work = tiny_export.work
    scopes = node_scopes(work / "exported" / "trunk.onnx")
    excluded, _ = excluded_nodes(work / "basic" / "trunk.onnx", scopes, GROUPS[group])
    assert excluded, f"group {group} matches no matmul of the trunk"


def test_default_keeps_the_excluded_modules_fp32(tiny_export, tmp_path):
    work = tiny_export.work
    src = work / "basic" / "trunk.onnx"
    scopes = node_scopes(work / "exported" / "trunk.onnx")
    keep, matmuls = excluded_nodes(src, scopes, QuantizeOptions().patterns)
    assert keep and len(keep) < len(matmuls)

    default = quantize_graph(src, tmp_path / "default" / "trunk.onnx")
    # (the quantizer rewrites a Gemm as MatMul + Add named "<gemm>_MatMul")
    kept = {n.removesuffix("_MatMul") for n in _float_weight_matmuls(default)}
    assert kept == set(keep)  # exactly those stay fp32 ...
    assert _ops(default) & INT8_OPS  # ... and the rest is int8
    everything = quantize_graph(src, tmp_path / "all" / "trunk.onnx", QuantizeOptions.everything())
    assert not _float_weight_matmuls(everything)
    assert QuantizeOptions().exclude == DEFAULT_EXCLUDE


def test_heads_stay_fp32_unless_asked(tiny_export, tmp_path):
    src = tiny_export.work / "basic" / "head_answer.onnx"
    kept = quantize_graph(src, tmp_path / "a" / "head_answer.onnx", head=True)
    assert kept.read_bytes() == src.read_bytes()
    quantized = quantize_graph(
        src, tmp_path / "b" / "head_answer.onnx", QuantizeOptions.everything(), head=True
    )
    assert _ops(quantized) & INT8_OPS


def test_options_label_and_key():
    opts = QuantizeOptions(exclude=("embeddings", "trunk.text_layers.0.*"), per_channel=True)
    assert "trunk.image_embeddings.*" in opts.patterns and "trunk.text_layers.0.*" in opts.patterns
    assert "per-channel" in opts.label() and "heads fp32" in opts.label()
    assert opts.to_json() != QuantizeOptions().to_json()
