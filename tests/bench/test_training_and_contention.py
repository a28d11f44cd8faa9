"""bench/training_step.py and bench/contention.py: what they measure and how the report judges it."""

from __future__ import annotations

from bench import contention, training_step
from bench.report import checks, render
from tests.bench.minimal import minimal_result


def test_training_step_bench_times_three_rows_and_compares_loss_curves() -> None:
    out = training_step.measure("tiny", batch=2, repeats=1, curve_steps=4, threads=1, log=lambda _m: None)
    rows = out["rows"]
    assert set(rows) == {"reference_fp32_fwd_loss_bwd", "ours_fwd_loss_bwd", "ours_full_step"}
    assert all(r["examples_per_s"] > 0 for r in rows.values())
    ref = rows["reference_fp32_fwd_loss_bwd"]["examples_per_s"]
    assert out["speedup_full_step"] == rows["ours_full_step"]["examples_per_s"] / ref
    curves = out["loss_curves"]
    assert {k: len(v) for k, v in curves["curves"].items()} == {"fp32": 4, "fp32_seed1": 4, "bf16": 4}
    assert curves["fp32_noise"] > 0  # dropout seeds differ, so the two fp32 curves do
    assert curves["within_noise"] == (curves["bf16_vs_fp32"] <= 2 * curves["fp32_noise"])
    text = "\n".join(training_step.markdown(out))
    assert "reference: fp32 forward + loss + backward" in text and "noise" in text


def _contention(shares: dict[str, float]) -> dict:
    rows = {
        kind: {"unit": "x/s", "solo": 10.0, "beside_neighbour": 10.0 * s, "share": s}
        for kind, s in shares.items()
    }
    return {"seconds_per_measurement": 12.0, "neighbour": "demo training steps", "rows": {"passive": rows}}


def test_the_report_judges_speedup_curves_and_the_worst_contention_share() -> None:
    result = {
        "preset": "base",
        "training": {
            "speedup_full_step": 1.8,
            "loss_curves": {"bf16_vs_fp32": 0.03, "fp32_noise": 0.02},
        },
        "contention": _contention({"extraction": 0.45, "training": 0.38, "serving": 0.6}),
    }
    rows = {row["claim"]: row for row in checks(result)}
    step = next(v for k, v in rows.items() if k.startswith("our training step"))
    assert step["met"] is True and step["value"] == "1.80"
    curve = next(v for k, v in rows.items() if k.startswith("bf16 loss curve"))
    assert curve["met"] is True and curve["value"] == "1.50"
    fair = next(v for k, v in rows.items() if k.startswith("throughput kept beside a busy neighbour"))
    assert fair["met"] is False and fair["value"] == "38%"  # the worst job decides
    lines = contention.markdown(result["contention"])
    assert any("| passive | training | 10.00 x/s | 3.80 | 38% |" in line for line in lines)


def test_render_says_not_measured_for_absent_sections() -> None:
    result = minimal_result("python -m bench --only machine")
    result["checks"] = checks(result)
    text = render(result)
    assert "## The training step" in text and "--only training" in text
    assert "## Fair under contention" in text and "--only contention" in text
