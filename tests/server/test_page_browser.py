"""The web page in headless Chromium: a VQA question and a grounding request on a built-in image.

Uses Debian's `chromium` (``apt-get install chromium``); skipped when it is not installed.  The page's
``?run=vqa,ground`` parameter runs the two tasks on the first example; the DOM after the run must
show the answer and the number of boxes drawn on the canvas, and a screenshot is saved.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from testkit.tiny_gateway import VQA_ANSWERS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")]
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


def chromium(*args: str, timeout: float = 90) -> str:
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",  # the test may run as root in a container
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--window-size=1280,1000",
        "--virtual-time-budget=60000",  # virtual time waits for the page's fetches to the live server
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_page_runs_vqa_and_grounding(live_url, tmp_path):
    url = f"{live_url}/?run=vqa,ground"
    dom = chromium("--dump-dom", url)
    assert 'data-ready="true"' in dom, dom[-3000:]
    vqa = re.search(r'<li data-task="vqa">vqa: ([^<]*)</li>', dom)
    ground = re.search(r'<li data-task="ground">ground: (\d+) boxes drawn', dom)
    assert vqa and vqa.group(1) in VQA_ANSWERS, dom[-3000:]
    assert ground and int(ground.group(1)) >= 1
    boxes = re.search(r'<canvas id="canvas"[^>]*data-boxes="(\d+)"', dom)
    assert boxes and int(boxes.group(1)) == int(ground.group(1))
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "web-page.png"
    chromium(f"--screenshot={shot}", url)
    assert shot.stat().st_size > 10_000
