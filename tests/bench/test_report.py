"""bench/report.py: the claims table judges each number in the right direction and marks info rows."""

from __future__ import annotations

from bench.report import checks


def _result(**overrides) -> dict:
    r = {
        "preset": "base",
        "ceiling": {"ceiling_gflops": 200.0},
        "model": {
            "engines": {
                "batches": {
                    "1": {"eager_pytorch": {"pairs_per_s": 4.0}, "onnxruntime_fp32": {"pairs_per_s": 6.0}},
                    "8": {
                        "eager_pytorch": {"pairs_per_s": 8.0},
                        "onnxruntime_fp32": {"pairs_per_s": 7.0},
                        "onnxruntime_int8": {"pairs_per_s": 14.0},
                    },
                }
            },
            "trunk_fp32": {"batches": {"8": {"gflops": 170.0}}},
        },
        "accuracy": {"max_abs_delta": {"onnxruntime_fp32": 0.0, "int8": 0.7, "int8_served": 0.5}},
        "serving": {
            "padding": {"ratio": 1.4},
            "padding_under_load": {"ratio": 1.6},
            "overhead": {"triton_over_in_process_graphs": 1.2, "triton_over_in_process_service": 0.9},
            "cold_vs_cached": {"ratio_cold_over_cached_bytes": 5.0, "ratio_cold_over_cached_id": 6.0},
        },
        "serving_base": {
            "triton_over_in_process_graphs": 0.11,
            "cold_vs_cached": {"ratio_cold_over_cached_bytes": 70.0, "ratio_cold_over_cached_id": 9.0},
        },
    }
    r.update(overrides)
    return r


def _by_claim(rows: list[dict]) -> dict[str, dict]:
    return {row["claim"]: row for row in rows}


def test_each_claim_is_judged_in_its_direction() -> None:
    rows = _by_claim(checks(_result()))
    assert rows["onnxruntime fp32 / eager PyTorch pairs/s, base, batch 1 (>= 1.3x)"]["met"] is True  # 1.5
    assert rows["onnxruntime fp32 / eager PyTorch pairs/s, base, batch 8 (>= 1.0x)"]["met"] is False  # 0.875
    assert rows["batched fp32 trunk throughput / matmul ceiling (>= 80%)"]["value"] == "85%"
    served = next(v for k, v in rows.items() if k.startswith("int8 metric as served"))
    assert served["met"] is True and served["value"] == "0.50"  # <= 0.5: the boundary counts
    base = next(v for k, v in rows.items() if k.startswith("gateway + Triton latency") and "base" in k)
    assert base["met"] is False and base["value"] == "+11.0%"
    cold = [v for k, v in rows.items() if k.startswith("question about a new image")]
    assert [c["met"] for c in cold] == [True, False]  # 70x and 9x against >= 10x


def test_info_rows_are_not_claims() -> None:
    rows = checks(_result())
    info = [row for row in rows if row.get("info")]
    assert info and all(row["claim"].startswith("the same") for row in info)
    assert not any(row.get("info") for row in rows if row["claim"].startswith("served answers/s"))


def test_a_missing_section_is_not_measured_rather_than_failed() -> None:
    rows = checks(_result(serving_base=None, accuracy=None))
    for row in rows:
        if "base model" in row["claim"] or "int8 metric" in row["claim"]:
            assert row["met"] is None and row["value"] is None, row["claim"]
    assert rows[-1]["claim"].startswith("TensorRT") and rows[-1]["value"] == "not run"
