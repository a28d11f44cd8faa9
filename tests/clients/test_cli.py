"""The CLI's argument order (images first, text last) and its user errors: one line, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clients.__main__ import main as cli

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def png_path(tmp_path, pngs):
    path = tmp_path / "scene.png"
    path.write_bytes(pngs[0])
    return path


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and not captured.out, captured
    assert "Traceback" not in captured.err
    return lines[0]


def test_missing_image_file(tmp_path, capsys):
    assert cli(["--url", UNREACHABLE, "vqa", str(tmp_path / "nope.png"), "what colour?"]) == 1
    assert one_error_line(capsys) == f"error: image file not found: {tmp_path / 'nope.png'}"
    assert cli(["--url", UNREACHABLE, "ground", str(tmp_path), "the circle"]) == 1
    assert one_error_line(capsys) == f"error: not an image file but a directory: {tmp_path}"


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["vqa", "what colour is it?", "{png}"], "vqa IMAGE QUESTION"),
        (["verify", "there are two squares", "{png}", "{png}"], "verify IMAGE [IMAGE2] STATEMENT"),
        (["verify", "{png}", "two squares", "{png}"], "verify IMAGE [IMAGE2] STATEMENT"),
        (["ground", "red?", "{png}"], "ground IMAGE [EXPRESSION]"),
        (["retrieve", "a blue circle", "{png}"], "retrieve IMAGE [IMAGE ...] CAPTION"),
        (["vqa", "colour", "{png}"], "vqa IMAGE QUESTION"),  # one word, but the text is an image file
    ],
)
def test_text_where_an_image_belongs_names_the_order(argv, usage, png_path, capsys):
    args = [a.replace("{png}", str(png_path)) for a in argv]
    assert cli(["--url", UNREACHABLE, *args]) == 1  # caught before any request
    line = one_error_line(capsys)
    assert line.startswith("error: image file not found: '") and "looks like text" in line, line
    assert f"the order is images first, text last: python -m clients {usage}" in line, line


def test_an_image_file_where_the_text_belongs(png_path, capsys):
    assert cli(["--url", UNREACHABLE, "retrieve", str(png_path)]) == 1
    line = one_error_line(capsys)
    assert f"the caption '{png_path}' is a file" in line and "images first, text last" in line


def test_server_not_reachable(png_path, capsys):
    assert cli(["--url", UNREACHABLE, "vqa", str(png_path), "what colour?"]) == 1
    line = one_error_line(capsys)
    assert line.startswith(f"error: cannot reach {UNREACHABLE}/vqa: ") and "is the gateway running?" in line
    assert cli(["vqa", str(png_path), "q", "--url", "localhost:8000"]) == 1  # options after the command too
    assert one_error_line(capsys) == "error: --url 'localhost:8000' is not an http:// or https:// address"


def test_wrong_dataset_lists_the_servers_choices(live_url, png_path, capsys):
    assert cli(["--url", live_url, "vqa", str(png_path), "what?", "--dataset", "okvqa"]) == 1
    line = one_error_line(capsys)
    assert line == f"error: unknown dataset 'okvqa' for vqa; the server at {live_url} offers: vqa, vg_qa, gqa"
    assert cli(["--url", live_url, "verify", str(png_path), "a circle", "--dataset", "coco"]) == 1
    assert "offers: nlvr2, snli_ve" in one_error_line(capsys)


def test_api_errors_and_malformed_command_lines_are_one_line(live_url, png_path, capsys):
    assert cli(["--url", live_url, "ground", str(png_path), "--dataset", "visual7w"]) == 1
    assert one_error_line(capsys).startswith("error: HTTP 422: ")
    for argv in (["vqa", str(png_path)], ["vqa", str(png_path), "q", "--top-k", "many"], ["frobnicate"], []):
        with pytest.raises(SystemExit) as e:
            cli(["--url", live_url, *argv])
        assert e.value.code == 2
        line = one_error_line(capsys)
        assert line.startswith("python -m clients") and ": error: " in line and line.endswith("--help)")


def test_a_real_process_prints_no_traceback(tmp_path):
    """The installed entry point behaves as main() does: one line on stderr, exit status 1."""
    cmd = [sys.executable, "-m", "clients", "--url", UNREACHABLE, "vqa", str(tmp_path / "x.png"), "q"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 1 and out.stderr == f"error: image file not found: {tmp_path / 'x.png'}\n"
