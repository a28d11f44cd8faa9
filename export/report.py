"""The parity report written next to the repository: `<out>.parity.json` and `<out>.parity.md`."""

from __future__ import annotations

import json
from pathlib import Path


def report_paths(out: Path) -> tuple[Path, Path]:
    out = Path(out)
    return out.with_name(f"{out.name}.parity.json"), out.with_name(f"{out.name}.parity.md")


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def render_markdown(report: dict) -> str:
    gate = report["gate"]
    status = "PASSED" if gate["passed"] else "FAILED"
    lines = [
        f"# Export parity report — {report['preset']} ({status})",
        "",
        f"- checkpoint: `{report['checkpoint']}`",
        f"- repository: `{report['repository']}` (backend `{report['backend']}`, "
        f"precision `{report['precision']}`, version {report['version']})",
        f"- gate: fp32 max |diff| <= {report['tolerance']:g} on generated inputs; metric unchanged in fp32"
        + (f", within {report['int8_points']:g} point in int8" if gate["gated_precision"] == "int8" else "")
        + ("" if gate["metric_measured"] else " — **metric part skipped (no data root)**"),
        f"- data: `{report.get('data_root') or '—'}`; seconds: export {report['seconds']['export']:.1f}, "
        f"gate {gate['seconds']:.1f}",
        *(
            [f"- metric skipped (dataset not under the data root): {', '.join(gate['metric_skipped'])}"]
            if gate.get("metric_skipped")
            else []
        ),
        "",
        "## Tasks",
        "",
        "| task | head | logits | max diff fp32 | max diff int8 | metric | split | examples "
        "| PyTorch | fp32 | int8 |",
        "|---|---|---|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for t in gate["tasks"]:
        lines.append(
            f"| {t['task']}{'' if t['passed'] else ' **FAIL**'} | {t['head']} | {tuple(t['logits_shape'])} "
            f"| {t['max_abs_diff_fp32']:.2e} | {_num(t['max_abs_diff_int8'], '.2e')} | {t['metric']} "
            f"| {t['split'] or '—'}{' *' if t['split_note'] else ''} | {t['examples']} "
            f"| {_num(t['metric_torch'], '.2f')} | {_num(t['metric_fp32'], '.2f')} "
            f"| {_num(t['metric_int8'], '.2f')} |"
        )
    notes = sorted({f"{t['task']}: {t['split_note']}" for t in gate["tasks"] if t["split_note"]})
    if notes:
        lines += ["", "\\* " + "; ".join(notes)]
    if gate["detector"]:
        lines += ["", "## Detector graphs", "", "| graph | max diff | max abs value |", "|---|---:|---:|"]
        for d in gate["detector"]:
            lines.append(f"| {d['graph']} | {d['max_abs_diff']:.2e} | {d['max_abs_value']:.3g} |")
    if gate.get("split"):
        lines += [
            "",
            "## Split trunk and pre-filter graphs (retrieval: one caption, several images)",
            "",
            "| graph | max diff | max abs value |",
            "|---|---:|---:|",
        ]
        for d in gate["split"]:
            lines.append(f"| {d['graph']} | {d['max_abs_diff']:.2e} | {d['max_abs_value']:.3g} |")
    lines += [
        "",
        "## Graphs",
        "",
        "| graph | weights | nodes (served) | exported fp32 | served fp32 | int8 | export s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, g in report["graphs"].items():
        lines.append(
            f"| {name} | {g['parameters']:,} | {g['nodes']} | {_mb(g['bytes_exported'])} "
            f"| {_mb(g['bytes_fp32'])} "
            f"| {_mb(g.get('bytes_int8'))} | {g['export_seconds']:.1f} |"
        )
    totals = report["totals"]
    lines.append(
        f"| **total** | {totals['parameters']:,} | | {_mb(totals['bytes_exported'])} "
        f"| {_mb(totals['bytes_fp32'])} "
        f"| {_mb(totals.get('bytes_int8'))} | |"
    )
    if gate["failures"]:
        lines += ["", "## Failures", "", *(f"- {f}" for f in gate["failures"])]
    for note in report.get("notes", []):
        lines += ["", f"> {note}"]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict) -> tuple[Path, Path]:
    from vilbert.io import atomic_write_text

    json_path, md_path = report_paths(out)
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")  # 0644 whatever the umask
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path
