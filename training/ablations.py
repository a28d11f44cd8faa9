"""`python -m training.ablations --config C [--variants ...] [--reuse V=DIR] [--doc F] [key=value ...]`

Trains the comparison of the paper's Table 2 (rows 2 and 4) and Table 6 (rows 1-4) on one data
root and writes one Markdown table (test metric per task, and the average) with the exact commands
into the ablation section of `--doc` (between the `ablations:start`/`ablations:end` markers; the
rest of the file is kept):

    single_task        one model per task, the same iterations on its task  (Table 2 row 2)
    all_task           all tasks, DSG, a token per dataset                   (Table 2 row 4 = Table 6 row 1)
    token_per_head     all tasks, DSG, a token per head                      (Table 6 row 2)
    no_task_token      all tasks, DSG, no task token                         (Table 6 row 3)
    no_dsg             all tasks, vanilla round-robin, tokens                (Table 6 row 4)

`--reuse all_task=runs/demo` takes a finished run's `metrics.json` instead of training again, but
only when that run's saved config is exactly the variant's config (apart from `out`);
`--reuse single_task=DIR` does so for each task's run in `DIR/<task>`.
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
from vilbert.checkpoint import META_FILE

VARIANTS: dict[str, list[str]] = {
    "single_task": [],  # expanded to one run per task
    "all_task": [],
    "token_per_head": ["schedule.task_tokens=head"],
    "no_task_token": ["schedule.task_tokens=none"],
    "no_dsg": ["schedule.kind=round_robin"],
}
DEFAULT_VARIANTS = ["single_task", "all_task", "no_task_token", "no_dsg"]  # what issue #5 asks for
START, END = "<!-- ablations:start -->", "<!-- ablations:end -->"


def _comparable(cfg: dict) -> dict:
    """The config keys that change what a run trains (a disabled pre-filter's knobs do not)."""
    skip = {"out", "progress", "tensorboard"}
    if not (cfg.get("prefilter") or {}).get("enabled", False):
        skip.add("prefilter")
    out = {k: v for k, v in cfg.items() if k not in skip}
    if isinstance(out.get("optim"), dict):  # knobs added later: empty compares equal to a run without them
        out["optim"] = {
            k: v for k, v in out["optim"].items() if not (k in ("loss_scale", "head_lr_scale") and not v)
        }
    return out


def run_variant(config: Path, overrides: list[str], out: Path, reuse: Path | None = None) -> dict[str, dict]:
    cfg = FitConfig.load(config, [*overrides, f"out={out}", "final_eval=true"])
    if reuse is not None:
        meta = json.loads((reuse / "model" / META_FILE).read_text())
        saved = _comparable(meta.get("fit_config", {}))
        want = _comparable(json.loads(json.dumps(cfg.to_dict())))
        if saved != want:
            diff = sorted(k for k in want.keys() | saved.keys() if saved.get(k) != want.get(k))
            raise SystemExit(f"--reuse {reuse}: its config differs from this variant's in {diff}")
        print(f"reusing {reuse}/metrics.json (same config)")
        return json.loads((reuse / "metrics.json").read_text())
    Trainer(cfg).run()
    return json.loads((out / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.ablations", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--variants", nargs="*", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument(
        "--reuse", action="append", default=[], metavar="VARIANT=DIR", help="take a finished run's metrics"
    )
    parser.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    args = parser.parse_intermixed_args(argv)
    base = FitConfig.load(args.config, args.overrides)
    reuse = {k: Path(v) for k, v in (item.split("=", 1) for item in args.reuse)}
    results: dict[str, dict[str, float]] = {}
    commands: dict[str, str] = {}
    minutes: dict[str, float] = {}
    for variant in args.variants:
        t0 = time.time()
        if variant == "single_task":
            results[variant] = {}
            for slug in base.tasks:
                extra = [*args.overrides, f"tasks=[{slug}]"]
                out = args.out / variant / slug
                done = reuse[variant] / slug if variant in reuse else None
                rows = run_variant(args.config, extra, out, done)
                results[variant][slug] = rows[slug].get("score", float("nan"))
                commands[f"{variant}/{slug}"] = _command(args.config, extra, done or out)
            if variant not in reuse:
                minutes[variant] = (time.time() - t0) / 60
            continue
        extra = [*args.overrides, *VARIANTS[variant]]
        out = args.out / variant
        rows = run_variant(args.config, extra, out, reuse.get(variant))
        results[variant] = {slug: r.get("score", float("nan")) for slug, r in rows.items()}
        commands[variant] = _command(args.config, extra, reuse.get(variant, out))
        if variant not in reuse:
            minutes[variant] = (time.time() - t0) / 60
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    section = _markdown(base.tasks, results, commands, minutes)
    old = args.doc.read_text() if args.doc.is_file() else ""
    if START in old and END in old:
        text = old[: old.index(START)] + section + old[old.index(END) + len(END) :]
    else:
        text = (old.rstrip() + "\n\n" if old else "") + section + "\n"
    args.doc.write_text(text)
    print(f"wrote {args.doc}")
    return 0


def _command(config: Path, overrides: list[str], out: Path) -> str:
    return shlex.join(["python", "-m", "training.fit", "--config", str(config), *overrides, f"out={out}"])


def _markdown(
    tasks: list[str],
    results: dict[str, dict[str, float]],
    commands: dict[str, str],
    minutes: dict[str, float],
) -> str:
    head = "| variant | " + " | ".join(tasks) + " | average |"
    spent = ", ".join(f"{v} {m:.0f}" for v, m in minutes.items())
    reused = [v for v in results if v not in minutes]
    notes = []
    if spent:
        notes.append(f"minutes per variant trained here: {spent}")
    if reused:
        notes.append(f"taken from finished runs: {', '.join(reused)}")
    lines = [
        START,
        "Test metric per task (VQA soft accuracy, R@1, grounding/pointing accuracy, accuracy), "
        f"produced by `python -m training.ablations` ({'; '.join(notes)}).",
        "",
        head,
        "|---|" + "---:|" * (len(tasks) + 1),
    ]
    for variant, scores in results.items():
        values = [scores.get(t, float("nan")) for t in tasks]
        avg = sum(values) / len(values) if values else float("nan")
        lines.append(f"| {variant} | " + " | ".join(f"{v:.1f}" for v in values) + f" | {avg:.1f} |")
    lines += ["", "Commands (each row's run):", ""]
    lines += [f"- `{name}`: `{cmd}`" for name, cmd in commands.items()]
    return "\n".join([*lines, "", END])


if __name__ == "__main__":
    sys.exit(main())
