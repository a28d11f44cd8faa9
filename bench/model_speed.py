"""Trunk + head speed: eager PyTorch vs onnxruntime fp32 vs onnxruntime int8, side by side.

One VQA forward (trunk, then the `answer` head) at the issue's shape, 23 text tokens and 101 regions
(the official model's 100 boxes + the global row), at batch 1 and batch 8.  All engines use the same
intra-op thread count and are timed round-robin (bench/timing.py), so their ratios come from the same
moments of the machine's load.  Also: the fp32 trunk alone at larger batches (the throughput ceiling
fraction), and one instance x N threads vs N instances x 1 thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from bench.flops import forward_flops, trunk_flops
from bench.timing import interleaved
from vilbert.config import ViLBERTConfig
from vilbert.contract import FUSED, LOGITS, REGION_MASK, TRUNK_INPUTS
from vilbert.tasks import Head, task_for_dataset

TEXT_TOKENS = 23
REGIONS = 101


def trunk_feeds(
    cfg: ViLBERTConfig, batch: int, text: int = TEXT_TOKENS, regions: int = REGIONS, seed: int = 0
):
    rng = np.random.default_rng(seed)
    task = task_for_dataset("vqa", "vqa")
    ids = rng.integers(1000, cfg.vocab_size, size=(batch, text)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {
        "input_ids": ids,
        "attention_mask": np.ones((batch, text), np.int64),
        "task_ids": np.full((batch,), task.task_id, np.int64),
        "region_features": rng.standard_normal((batch, regions, cfg.v_feature_size)).astype(np.float32),
        "region_locations": rng.random((batch, regions, 5)).astype(np.float32),
        "region_mask": np.ones((batch, regions), np.int64),
    }


def ort_session(path: Path, threads: int, spinning: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_forward(files: Mapping[str, Path], threads: int) -> Callable[[dict], np.ndarray]:
    trunk = ort_session(files["trunk"], threads)
    head = ort_session(files["head_answer"], threads)

    def run(feeds: dict) -> np.ndarray:
        fused = trunk.run([FUSED], feeds)[0]
        return head.run([LOGITS], {FUSED: fused})[0]

    return run


def torch_forward(model, threads: int) -> Callable[[dict], np.ndarray]:
    import torch

    def run(feeds: dict) -> np.ndarray:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            inputs = [torch.from_numpy(feeds[n]) for n in TRUNK_INPUTS]
            out = model.trunk(*inputs)
            return model.head_logits(Head.ANSWER, out, inputs[TRUNK_INPUTS.index(REGION_MASK)]).numpy()

    return run


def engines_table(
    model,
    fp32: Mapping[str, Path],
    int8: Mapping[str, Path],
    threads: int,
    batches: tuple[int, ...],
    repeats: int,
) -> dict:
    """{batch: {engine: timing + pairs/s + GFLOP/s}} for eager / onnxruntime fp32 / onnxruntime int8."""
    cfg = model.config
    engines = {
        "eager_pytorch": torch_forward(model, threads),
        "onnxruntime_fp32": ort_forward(fp32, threads),
        "onnxruntime_int8": ort_forward(int8, threads),
    }
    flops = forward_flops(cfg, Head.ANSWER, TEXT_TOKENS, REGIONS)
    out: dict = {"flops_per_pair": flops, "text_tokens": TEXT_TOKENS, "regions": REGIONS, "batches": {}}
    for batch in batches:
        feeds = trunk_feeds(cfg, batch)
        ref = engines["eager_pytorch"](feeds)
        times = interleaved({k: (lambda f=f, x=feeds: f(x)) for k, f in engines.items()}, repeats=repeats)
        row = {}
        for name, t in times.items():
            diff = float(np.abs(engines[name](feeds) - ref).max())
            row[name] = t.as_dict() | {
                "pairs_per_s": batch / t.median,
                "gflops": batch * flops / t.median / 1e9,
                "max_abs_diff_vs_eager": diff,
            }
        out["batches"][str(batch)] = row
    return out


def trunk_throughput(
    cfg: ViLBERTConfig,
    fp32: Mapping[str, Path],
    threads: int,
    batches: tuple[int, ...],
    repeats: int,
    work: Path | None = None,
) -> dict:
    """The fp32 trunk alone (what the matmul ceiling bounds) at increasing batch.

    With `work`, a 2048^3 onnxruntime GEMM is timed round-robin with the trunk, so each batch's
    fraction of the ceiling compares numbers taken in the same seconds (`ceiling_gflops` per batch)."""
    session = ort_session(fp32["trunk"], threads)
    flops = trunk_flops(cfg, TEXT_TOKENS, REGIONS)
    out = {"flops_per_pair": flops, "batches": {}}
    gemm = None
    if work is not None:
        from bench.machine import _onnx_matmul

        n = 2048
        work.mkdir(parents=True, exist_ok=True)
        matmul = ort_session(_onnx_matmul(n, work / "matmul.onnx"), threads)
        x = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
        gemm = (2 * n**3, lambda: matmul.run(None, {"x": x}))
    for batch in batches:
        feeds = trunk_feeds(cfg, batch)
        fns = {"trunk": lambda x=feeds: session.run([FUSED], x)}
        if gemm is not None:
            fns["gemm"] = gemm[1]
        times = interleaved(fns, repeats=repeats)
        t = times["trunk"]
        row = t.as_dict() | {
            "pairs_per_s": batch / t.median,
            "gflops": batch * flops / t.median / 1e9,
            "gflops_best": batch * flops / t.min / 1e9,
        }
        if gemm is not None:
            row["ceiling_gflops"] = gemm[0] / times["gemm"].median / 1e9
        out["batches"][str(batch)] = row
    return out


def threading_table(cfg: ViLBERTConfig, trunk: Path, threads: int, batch: int, calls: int) -> dict:
    """One session with `threads` intra-op threads vs `threads` sessions x 1 thread run concurrently:
    pairs/s over the same number of calls (the choice behind Triton's instance_group and the gateway)."""
    feeds = trunk_feeds(cfg, batch)
    out = {"batch": batch, "calls": calls}

    def run_pool(sessions: list) -> float:
        per = calls // len(sessions)

        def work(s) -> None:
            for _ in range(per):
                s.run([FUSED], feeds)

        for s in sessions:
            s.run([FUSED], feeds)
        t0 = time.perf_counter()
        pool = [threading.Thread(target=work, args=(s,)) for s in sessions]
        for th in pool:
            th.start()
        for th in pool:
            th.join()
        return per * len(sessions) * batch / (time.perf_counter() - t0)

    one = [ort_session(trunk, threads)]
    many = [ort_session(trunk, 1) for _ in range(threads)]
    # Alternate the two layouts twice each so drifting load affects both.
    a1, b1 = run_pool(one), run_pool(many)
    a2, b2 = run_pool(one), run_pool(many)
    out[f"1_instance_x_{threads}_threads_pairs_per_s"] = (a1 + a2) / 2
    out[f"{threads}_instances_x_1_thread_pairs_per_s"] = (b1 + b2) / 2
    return out
