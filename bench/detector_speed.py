"""The detector's FLOP floor and one new image's latency, part by part, today's path vs optimised fp32.

One new image (a fixed 600 x 800 RGB image, resized by the preset to 800 x 1067 and padded to
800 x 1088 for vg-x152-fpn) through a random-weight detector of the preset's architecture (speed does
not depend on the weights; its frozen batch norms get random statistics so that folding them is
really exercised).  fp32, eager PyTorch, the same input at every repetition, `threads` intra-op
threads.  Measured:

* the fp32 matmul ceiling in this run (bench/machine.py: the better of PyTorch's and onnxruntime's
  2048^3 GEMM at `threads`);
* the FLOPs of each part (bench/flops.py `detector_flop_parts`: convolutions and linear layers, counted
  by PyTorch's FlopCounterMode; the box head at the number of proposals this image really gets);
* each part's seconds, GFLOP/s and share of the ceiling: preprocess (resize, normalise, pad), backbone
  body, FPN, RPN head (convolutions), RPN proposals (anchors, decoding, top-n, NMS), RoIAlign over the
  proposals, the box head (fc6, fc7, predictor), selection (softmax, per-class NMS, top N, attribute
  head); for the parts the optimisation changes, today's module and the optimised copy timed
  round-robin (bench/timing.interleaved);
* one new image end to end through `RegionExtractor.__call__` (the served in-process path), today's
  (`optimise=False`: the detector's own modules) vs optimised fp32 (`optimise=True`, the default for
  frozen-norm detectors: regions.extractor.LocalDetectorCompute: frozen norms folded into the
  convolutions, backbone and RPN head channels-last), round-robin;
* the floor: total FLOPs / ceiling, in seconds, and each path's new-image latency over it (#20's
  goal: <= 2x);
* the optimised path's numbers against today's on the same image: kept boxes (identical order, IoU)
  and region features (max abs / relative difference), also at today's boxes (`extract_at_boxes`),
  which does not depend on the two paths selecting the same boxes.

    python -m bench --only detector          (or python -m bench.detector_speed for this alone)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.artifacts import ROOT as BENCH_ROOT
from bench.flops import DETECTOR_IMAGE_HW, detector_flop_parts, served_image_hw
from bench.timing import Timing, interleaved

WORK = BENCH_ROOT / "work" / "detector"  # relative to the working directory (the checkout)

# Rows of the per-part table, in execution order; which of them carry matrix-product FLOPs.
PARTS = (
    "preprocess",
    "backbone_body",
    "fpn",
    "rpn_head",
    "rpn_proposals",
    "roi_align",
    "box_head",
    "selection",
)
PART_FLOPS = {
    "backbone_body": ("backbone_body",),
    "fpn": ("fpn",),
    "rpn_head": ("rpn_head",),
    "box_head": ("roi_box_head", "roi_predictor"),
    "selection": ("attribute_head",),
}
PART_LABELS = {
    "preprocess": "preprocess (resize, normalise, pad)",
    "backbone_body": "backbone body",
    "fpn": "FPN",
    "rpn_head": "RPN head (convolutions)",
    "rpn_proposals": "RPN proposals (anchors, decode, top-n, NMS)",
    "roi_align": "RoIAlign over the proposals",
    "box_head": "box head (fc6, fc7, predictor)",
    "selection": "selection (softmax, per-class NMS, top N, attributes)",
    "layout": "pyramid back to NCHW for RoIAlign (channels-last only)",
}


def randomise_frozen_norms(module: Any, seed: int = 0) -> None:
    """Mild random statistics and affine terms for every batch norm (built ones are the identity)."""
    import torch
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, FrozenBatchNorm2d | nn.BatchNorm2d) and bn.running_var is not None:
                n = bn.running_var.numel()
                bn.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.8)
                bn.bias.copy_(torch.randn(n, generator=g) * 0.1)
                bn.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                bn.running_var.copy_(torch.rand(n, generator=g) * 0.4 + 0.8)


def test_image(image_hw: tuple[int, int] = DETECTOR_IMAGE_HW, seed: int = 0) -> np.ndarray:
    """A fixed (H, W, 3) uint8 image: smooth gradients with noise, so the RPN sees structure."""
    h, w = image_hw
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (h + w) * 255], axis=-1)
    return np.clip(base + rng.normal(0, 24, (h, w, 3)), 0, 255).astype(np.uint8)


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, 4) x1y1x2y2 arrays."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area - inter, 1e-9)


def _feature_diff(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    diff = float(np.abs(got - want).max()) if want.size else 0.0
    scale = float(np.abs(want).max()) if want.size else 0.0
    return {"max_abs_diff": diff, "max_abs_value": scale, "max_rel_diff": diff / scale if scale else 0.0}


def correctness(today: Any, optimised: Any, image: np.ndarray) -> dict[str, Any]:
    """Today's and the optimised extractor on one image: boxes kept, their IoU, feature differences."""
    a, b = today(image), optimised(image)
    out: dict[str, Any] = {"boxes": int(a.num_boxes), "boxes_optimised": int(b.num_boxes)}
    n = min(a.num_boxes, b.num_boxes)
    out["boxes_identical"] = bool(a.num_boxes == b.num_boxes and np.array_equal(a.boxes, b.boxes))
    iou = _box_iou(a.boxes[:n], b.boxes[:n]) if n else np.ones(0)
    out["min_iou_same_rank"] = float(iou.min()) if n else None
    out["share_iou_over_0.99"] = float((iou > 0.99).mean()) if n else None
    same = iou > 0.99
    out["detected"] = _feature_diff(b.features[:n][same], a.features[:n][same])
    at_a = today.extract_at_boxes([image], [a.boxes])[0]
    at_b = optimised.extract_at_boxes([image], [a.boxes])[0]
    out["at_todays_boxes"] = _feature_diff(at_b.features, at_a.features)
    out["at_todays_boxes"]["cls_prob_max_abs_diff"] = float(np.abs(at_b.cls_prob - at_a.cls_prob).max())
    return out


def _rate(flops: int | None, t: Timing, ceiling: float) -> dict[str, Any]:
    row: dict[str, Any] = {**t.as_dict(), "flops": flops}
    if flops:
        row["gflops"] = flops / t.median / 1e9
        row["of_ceiling"] = row["gflops"] / ceiling
    return row


def measure(
    preset: Any = "vg-x152-fpn",
    threads: int | None = None,
    repeats: int = 3,
    log: Callable[[str], None] = print,
    image_hw: tuple[int, int] = DETECTOR_IMAGE_HW,
    work: Path = WORK,
    ceiling_repeats: int = 5,
    ceiling_n: int = 2048,
) -> dict[str, Any]:
    """Time one new image through the detector part by part and end to end, today vs optimised fp32
    (`preset`: a name, a preset object or JSON path; `ceiling_n`: the ceiling GEMM's size)."""
    import torch
    import torch.nn.functional as F

    from bench.machine import matmul_ceiling
    from regions.backbone import inference_copy
    from regions.detector import build_detector, count_parameters
    from regions.extractor import CHANNELS_LAST, RegionExtractor, box_inputs
    from regions.roi_heads import box_head_mlp, select_regions
    from regions.rpn import rpn_proposals
    from regions.transform import preprocess

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    started = time.perf_counter()
    torch.manual_seed(0)
    det = build_detector(preset)
    randomise_frozen_norms(det)
    det = det.eval()
    p = det.preset
    log(f"detector: {p.name}, {count_parameters(det) / 1e6:.0f}M parameters, {threads} threads ...")
    ceiling = matmul_ceiling(threads, work, n=ceiling_n, repeats=ceiling_repeats)
    ceiling_gflops = ceiling["ceiling_gflops"]
    log(f"detector: matmul ceiling {ceiling_gflops:.1f} GFLOP/s")
    image = test_image(image_hw)
    sizes = served_image_hw(p, image_hw)

    today = RegionExtractor(det, batch_size=1, optimise=False)
    fast = RegionExtractor(det, batch_size=1, optimise=True)
    # The optimised backbone as the extractor runs it, and the layout it did not adopt beside it.
    formats = {"optimised": CHANNELS_LAST, "alternative": not CHANNELS_LAST}

    with torch.inference_mode():
        # One pass to stage every part's inputs (and to warm every variant: oneDNN primitives).
        image_list, _ = preprocess([image], p.preprocessing)
        x = image_list.tensors
        staged: dict[str, dict[str, Any]] = {
            "today": {"backbone": det.backbone, "head": det.rpn.head, "x": x, "cl": False}
        }
        for variant, cl in formats.items():
            staged[variant] = {
                "backbone": inference_copy(det.backbone, channels_last=cl),
                "head": inference_copy(det.rpn.head, fold_bn=False, channels_last=cl),
                "x": x.contiguous(memory_format=torch.channels_last) if cl else x,
                "cl": cl,
            }
        for st in staged.values():
            st["body"] = st["backbone"].body(st["x"])
            st["levels"] = st["backbone"].fpn(st["body"])
            st["head"](list(st["levels"].values()))
        levels = staged["today"]["levels"]
        logits, deltas = det.rpn.head(list(levels.values()))
        proposals = rpn_proposals(det.rpn, image_list, levels, logits, deltas)
        pooled = box_inputs(det, levels, proposals, image_list.image_sizes)
        out = box_head_mlp(det.roi_heads.box_head, det.roi_heads.box_predictor, p.box_head.fc6_relu, pooled)
        scale = p.preprocessing.scale_for(*image_hw)

        def selection() -> None:
            probs = F.softmax(out.class_logits, dim=-1)
            keep, _, _ = select_regions(proposals[0] / scale, probs, p.selection, p.rpn.legacy_plus_one)
            objects = probs[keep][:, 1:].max(dim=1).indices + 1
            det.attribute_logits(out.fc7[keep], objects)

        k = int(proposals[0].shape[0])
        flops = detector_flop_parts(p, image_hw, proposals=k)
        log(
            f"detector: {sum(flops.values()) / 1e9:.1f} GFLOP per new image ({k} proposals); timing parts ..."
        )

        def per_variant(step: Callable[[dict[str, Any]], object]) -> dict[str, Callable[[], object]]:
            return {v: (lambda st=st: step(st)) for v, st in staged.items()}

        shared: dict[str, Callable[[], object]] = {
            "preprocess": lambda: preprocess([image], p.preprocessing),
            "rpn_proposals": lambda: rpn_proposals(det.rpn, image_list, levels, logits, deltas),
            "box_head": lambda: box_head_mlp(
                det.roi_heads.box_head, det.roi_heads.box_predictor, p.box_head.fc6_relu, pooled
            ),
            "selection": selection,
        }
        image_sizes = image_list.image_sizes
        varied: dict[str, dict[str, Callable[[], object]]] = {
            "backbone_body": per_variant(lambda st: st["backbone"].body(st["x"])),
            "fpn": per_variant(lambda st: st["backbone"].fpn(st["body"])),
            "rpn_head": per_variant(lambda st: st["head"](list(st["levels"].values()))),
            "roi_align": {
                "today": lambda: box_inputs(det, levels, proposals, image_sizes),
                "optimised": lambda: box_inputs(det, levels, proposals, image_sizes, workers=threads),
            },
            "layout": {
                v: (lambda st=staged[v]: {n: t.contiguous() for n, t in st["levels"].items()})
                for v, cl in formats.items()
                if cl
            },
        }
        parts: dict[str, dict[str, Any]] = {}
        for name in (*PARTS, "layout"):
            part_flops = sum(flops.get(f, 0) for f in PART_FLOPS.get(name, ())) or None
            if name in shared:
                t = interleaved({name: shared[name]}, repeats=repeats, warmup=1)[name]
                row = _rate(part_flops, t, ceiling_gflops)
                parts[name] = {v: row for v in ("today", "optimised", "alternative")}
            else:
                timed = interleaved(varied[name], repeats=repeats, warmup=1 if name == "roi_align" else 0)
                parts[name] = {v: _rate(part_flops, t, ceiling_gflops) for v, t in timed.items()}
                if name == "roi_align":
                    parts[name]["alternative"] = parts[name]["optimised"]
            log(
                f"  {name}: " + ", ".join(f"{v} {r['median_s'] * 1e3:.0f} ms" for v, r in parts[name].items())
            )
        varied.clear()  # the copies and activations go before the end-to-end runs
        staged.clear()

    log("detector: end to end, today's path vs optimised fp32 (round-robin) ...")
    e2e = interleaved({"today": lambda: today(image), "optimised": lambda: fast(image)}, repeats=repeats)
    total_flops = sum(flops.values())
    floor_s = total_flops / (ceiling_gflops * 1e9)
    end_to_end = {v: _rate(total_flops, t, ceiling_gflops) for v, t in e2e.items()}
    for row in end_to_end.values():
        row["over_floor"] = row["median_s"] / floor_s
    check = correctness(today, fast, image)
    result = {
        "preset": p.name,
        "parameters": count_parameters(det),
        "threads": threads,
        "repeats": repeats,
        "image": {name: list(hw) for name, hw in sizes.items()},
        "proposals": k,
        "ceiling": ceiling,
        "ceiling_gflops": ceiling_gflops,
        "flops": flops,
        "flops_total": total_flops,
        "floor_s": floor_s,
        "parts": parts,
        "sum_of_parts_s": {
            v: sum(row[v]["median_s"] for row in parts.values() if v in row)
            for v in ("today", "optimised", "alternative")
        },
        "end_to_end": end_to_end,
        "over_floor_today": end_to_end["today"]["over_floor"],
        "over_floor_optimised": end_to_end["optimised"]["over_floor"],
        "speedup": end_to_end["today"]["median_s"] / end_to_end["optimised"]["median_s"],
        "correctness": check,
        "channels_last": CHANNELS_LAST,
        "alternative": "folded, channels-last" if formats["alternative"] else "folded, NCHW",
        "seconds": round(time.perf_counter() - started, 1),
    }
    log(
        f"detector: new image today {end_to_end['today']['median_s']:.2f} s, optimised "
        f"{end_to_end['optimised']['median_s']:.2f} s; floor {floor_s:.2f} s "
        f"({result['over_floor_today']:.2f}x -> {result['over_floor_optimised']:.2f}x)"
    )
    return result


def _s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.2f} s" if x >= 1 else f"{x * 1e3:.0f} ms" if x >= 0.01 else f"{x * 1e3:.1f} ms"


def markdown(d: dict | None) -> list[str]:
    """The report's section: per-part table (today vs optimised), the floor, the correctness check."""
    if not d:
        return ["Not measured in this run (`python -m bench --only detector`)."]
    if "error" in d or "missing" in d:
        return [f"Not measured: {d.get('error') or d.get('missing')}"]
    img = d["image"]
    ceiling = d["ceiling_gflops"]
    lines = [
        f"`{d['preset']}` ({d['parameters'] / 1e6:.0f}M parameters, random weights: speed does not depend "
        f"on them), one new {img['input'][0]}x{img['input'][1]} image resized to "
        f"{img['resized'][0]}x{img['resized'][1]} and padded to {img['padded'][0]}x{img['padded'][1]}, "
        f"{d['proposals']} proposals, fp32, {d['threads']} threads, medians of {d['repeats']}.  FLOPs: "
        "convolutions and linear layers (bench/flops.py, PyTorch's FlopCounterMode; a multiply-add is 2); "
        "RoIAlign, NMS, resizing and elementwise work have none.  Today: the detector's own modules, "
        "RoIAlign on one thread; optimised fp32 (regions.extractor, the default for frozen-norm "
        "detectors): frozen batch norms folded into the convolutions"
        + (", backbone and RPN head channels-last" if d.get("channels_last") else "")
        + ", RoIAlign on every thread; the alternative column: the backbone layout the extractor does not "
        f"use ({d.get('alternative', '—')}), timed round-robin beside the other two.  "
        f"Matmul ceiling in this run: {ceiling:.1f} GFLOP/s.",
        "",
        "| part | GFLOP | today | GFLOP/s | of ceiling | optimised | GFLOP/s | of ceiling | alternative |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cells(row: dict | None) -> str:
        if row is None:
            return "— | — | —"
        rate = f"{row['gflops']:.1f} | {row['of_ceiling']:.0%}" if row.get("gflops") else "— | —"
        return f"{_s(row['median_s'])} | {rate}"

    for name, row in d["parts"].items():
        f = next((r["flops"] for r in row.values() if r.get("flops")), None)
        alt = row.get("alternative")
        lines.append(
            f"| {PART_LABELS.get(name, name)} | {'—' if not f else f'{f / 1e9:.1f}'} | "
            f"{cells(row.get('today'))} | {cells(row.get('optimised'))} | "
            f"{_s(alt['median_s']) if alt else '—'} |"
        )
    sp = d["sum_of_parts_s"]
    e2e = d["end_to_end"]
    lines += [
        f"| sum of the parts | {d['flops_total'] / 1e9:.1f} | {_s(sp['today'])} | | | "
        f"{_s(sp['optimised'])} | | | {_s(sp.get('alternative'))} |",
        f"| **new image end to end** (`RegionExtractor`) | {d['flops_total'] / 1e9:.1f} | "
        f"{cells(e2e['today'])} | {cells(e2e['optimised'])} | — |",
        "",
        f"FLOP floor (total FLOPs / ceiling): **{_s(d['floor_s'])}**.  New-image latency over the floor: "
        f"today **{d['over_floor_today']:.2f}x**, optimised fp32 **{d['over_floor_optimised']:.2f}x** "
        f"(#20: <= 2x); optimised / today speed-up {d['speedup']:.2f}x (spread today "
        f"{e2e['today']['spread']:.0%}, optimised {e2e['optimised']['spread']:.0%}).",
    ]
    c = d.get("correctness")
    if c:
        det, at = c["detected"], c["at_todays_boxes"]
        iou = c["min_iou_same_rank"]
        lines += [
            "",
            f"Same image, optimised vs today: {c['boxes_optimised']} vs {c['boxes']} boxes, "
            f"{'identical' if c['boxes_identical'] else 'not identical'}; box IoU at the same rank: min "
            f"{'—' if iou is None else f'{iou:.4f}'}; features of the matching boxes max abs diff "
            f"{det['max_abs_diff']:.2g} (max |feature| {det['max_abs_value']:.3g}, relative "
            f"{det['max_rel_diff']:.2g}).  At today's boxes (`extract_at_boxes`): features max abs diff "
            f"{at['max_abs_diff']:.2g} (relative {at['max_rel_diff']:.2g}), class probabilities "
            f"{at['cls_prob_max_abs_diff']:.2g}.",
        ]
    return lines


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="python -m bench.detector_speed", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--preset", default="vg-x152-fpn")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = parser.parse_args()
    res = measure(args.preset, threads=args.threads, repeats=args.repeats)
    text = json.dumps(res, indent=2, default=str)
    if args.out:
        args.out.write_text(text + "\n")
    print("\n".join(markdown(res)))
