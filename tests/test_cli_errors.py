"""Every command-line tool ends a user's mistake with one line naming the fix, never a traceback.

Each case runs the real entry point (`python -m ...`) in a subprocess with a common mistake: a file
that is not there, a required flag left out, a value outside the choices, an unknown preset.  None of
them gets as far as loading a model or building anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bootstrap.layout import Paths

ROOT = Path(__file__).resolve().parents[1]
NOPE = "/nonexistent-twelve-in-one"

# (id, argv after `python -m`, words the one line must contain: what is wrong and the fix)
CASES = [
    ("server-missing-detector", ["server", "--detector-weights", f"{NOPE}/d.safetensors"], ["not found"]),
    ("server-bad-port", ["server", "--port", "99999"], ["port", "65535", "--port"]),
    ("server-unknown-flag", ["server", "--no-such-flag"], ["unrecognized arguments", "--help"]),
    ("server-unknown-backend", ["server", "--backend", "tpu"], ["invalid choice", "local"]),
    ("bootstrap-unknown-backend", ["bootstrap", "--backend", "tpu"], ["invalid choice", "triton"]),
    ("export-missing-checkpoint", ["export", "--checkpoint", NOPE, "--out", "{tmp}/repo"], [NOPE]),
    ("export-no-checkpoint", ["export"], ["--checkpoint", "required"]),
    ("triton-missing-repository", ["export.triton_server", "--repository", NOPE], ["python -m export"]),
    ("fit-missing-config", ["training.fit", "--config", f"{NOPE}.yaml"], ["config", NOPE]),
    ("evaluate-no-checkpoint-flag", ["training.evaluate"], ["--checkpoint", "required"]),
    ("evaluate-missing-checkpoint", ["training.evaluate", "--checkpoint", NOPE], [NOPE]),
    ("synthetic-no-out", ["training.synthetic"], ["--out", "required"]),
    ("synthetic-unknown-size", ["training.synthetic", "--out", "{tmp}/w", "--size", "huge"], ["demo"]),
    ("examples-no-out", ["training.synthetic.examples"], ["--out", "required"]),
    (
        "extract-synthetic-without-weights",
        ["regions.extract", "--preset", "synthetic", "--images", "{tmp}", "--out", "{tmp}/s.lmdb"],
        ["--weights", "regions.train"],
    ),
    (
        "extract-unknown-preset",
        ["regions.extract", "--preset", "yolo", "--images", "{tmp}", "--out", "{tmp}/s.lmdb"],
        ["yolo", "vg-x152-fpn"],
    ),
    (
        "extract-missing-weights",
        ["regions.extract", "--weights", f"{NOPE}.safetensors", "--jobs", "{tmp}"],
        ["--weights", "regions.train"],
    ),
    ("extract-no-input", ["regions.extract", "--preset", "synthetic"], ["--images", "--jobs"]),
    ("detector-train-missing-data", ["regions.train", "--data", NOPE], ["--data", "training.synthetic"]),
    (
        "prepare-missing-questions",
        [
            *("training.prepare", "--task", "vqa", "--questions", f"{NOPE}.json"),
            *("--annotations", f"{NOPE}.json", "--images", "{tmp}", "--out", "{tmp}/d"),
            *("--detector", f"{NOPE}.safetensors"),
        ],
        ["--questions", NOPE, "no such file"],
    ),
    ("prepare-no-images", ["training.prepare", "--task", "vqa"], ["--questions", "required"]),
    (
        "convert-missing-file",
        ["vilbert.convert", "--official", f"{NOPE}.bin", "--out", "{tmp}/c"],
        ["--official", NOPE],
    ),
    ("convert-no-source", ["vilbert.convert", "--out", "{tmp}/c"], ["--official", "required"]),
    ("summary-unknown-preset", ["vilbert.summary", "huge"], ["preset", "base"]),
    ("clients-missing-image", ["clients", "vqa", f"{NOPE}.png", "what is it?"], [f"{NOPE}.png"]),
]


def run_cli(argv: list[str], tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    args = [a.replace("{tmp}", str(tmp)) for a in argv]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TWELVE_")}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**clean, **(env or {}), "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=180,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, words: list[str]) -> str:
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "error:" in lines[0], lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_mistake_ends_in_one_line_naming_the_fix(argv, words, tmp_path):
    done = run_cli(argv, tmp_path)
    assert_one_line_error(done, words)
    if argv[0] not in ("clients", "export.triton_server") or "--help" in words:
        assert done.returncode == 2  # the usage-error status of argparse and vilbert.cli.run


def test_a_bad_setting_in_the_environment_is_one_line(tmp_path):
    done = run_cli(["server"], tmp_path, env={"TWELVE_PORT": "eighty"})
    assert_one_line_error(done, ["port", "TWELVE_PORT", "eighty"])


@pytest.mark.skipif(Paths().detector.exists(), reason="make serve has built the demo model here")
def test_server_without_the_build_says_run_make_serve(tmp_path):
    done = run_cli(["server"], tmp_path)
    line = assert_one_line_error(done, ["make serve", "--detector-weights"])
    assert "synthetic-detector.safetensors" in line  # which file is missing
