"""`python -m training.ablations --config C [--variants ...] [--doc docs/results.md] [key=value ...]`

Trains the comparison of the paper's Table 2 (rows 2 and 4) and Table 6 (rows 1-4) on one data
root and writes one Markdown table (test metric per task, and the average) with the exact commands:

    single_task        one model per task                          (Table 2 row 2)
    all_task           all tasks, DSG, a token per dataset          (Table 2 row 4 = Table 6 row 1)
    token_per_head     all tasks, DSG, a token per head             (Table 6 row 2)
    no_task_token      all tasks, DSG, no task token                (Table 6 row 3)
    no_dsg             all tasks, vanilla round-robin, tokens       (Table 6 row 4)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from training.config import FitConfig
from training.fit import Trainer

VARIANTS: dict[str, list[str]] = {
    "all_task": [],
    "token_per_head": ["schedule.task_tokens=head"],
    "no_task_token": ["schedule.task_tokens=none"],
    "no_dsg": ["schedule.kind=round_robin"],
    "single_task": [],  # expanded to one run per task
}


def run_variant(config: Path, overrides: list[str], out: Path) -> dict[str, dict]:
    cfg = FitConfig.load(config, [*overrides, f"out={out}", "final_eval=true"])
    Trainer(cfg).run()
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ablations", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = parser.parse_intermixed_args(argv)
    base = FitConfig.load(args.config, args.overrides)
    results: dict[str, dict[str, float]] = {}
    commands: dict[str, str] = {}
    started = time.time()
    for variant in args.variants:
        if variant == "single_task":
            results[variant] = {}
            for slug in base.tasks:
                extra = [*args.overrides, f"tasks=[{slug}]"]
                out = args.out / variant / slug
                rows = run_variant(args.config, extra, out)
                results[variant][slug] = rows[slug].get("score", float("nan"))
                commands[f"{variant}/{slug}"] = _command(args.config, extra, out)
            continue
        extra = [*args.overrides, *VARIANTS[variant]]
        out = args.out / variant
        rows = run_variant(args.config, extra, out)
        results[variant] = {slug: r.get("score", float("nan")) for slug, r in rows.items()}
        commands[variant] = _command(args.config, extra, out)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(_markdown(base.tasks, results, commands, time.time() - started))
    print(f"wrote {args.doc}")
    return 0


def _command(config: Path, overrides: list[str], out: Path) -> str:
    return shlex.join(["python", "-m", "training.fit", "--config", str(config), *overrides, f"out={out}"])


def _markdown(
    tasks: list[str], results: dict[str, dict[str, float]], commands: dict[str, str], seconds: float
) -> str:
    head = "| variant | " + " | ".join(tasks) + " | average |"
    lines = [
        "# Multi-task vs single-task on the synthetic world",
        "",
        "Test metric per task (VQA soft accuracy, R@1, grounding/pointing accuracy, accuracy), "
        f"produced by `python -m training.ablations` in {seconds / 60:.0f} minutes.",
        "",
        head,
        "|---|" + "---:|" * (len(tasks) + 1),
    ]
    for variant, scores in results.items():
        values = [scores.get(t, float("nan")) for t in tasks]
        avg = sum(values) / len(values) if values else float("nan")
        lines.append(f"| {variant} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {avg:.1f} |")
    lines += ["", "## Commands", ""]
    lines += [f"- `{name}`: `{cmd}`" for name, cmd in commands.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
