"""The web page in headless Chromium: every endpoint (VQA, grounding, retrieval, verification) run
from the page on its example images.

Uses Debian's `chromium` (``apt-get install chromium``); skipped when it is not installed.  The page's
``?run=vqa,ground,retrieve,verify`` parameter runs those tasks on the first example, each with its
endpoint's default dataset; the DOM after the run must show each answer (the VQA answer, the boxes
drawn on the canvas, the example images ranked, the verification label), and a screenshot is saved.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from testkit.tiny_gateway import VQA_ANSWERS
from vilbert.tasks import SNLI_VE_LABELS

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
        # Virtual time waits for the page's fetches to the live server.  The whole run (4 tasks, 4
        # example uploads) needs more than 60 s of it with Chromium 156 even when the server answers
        # each call in milliseconds; the subprocess timeout bounds the real time.
        "--virtual-time-budget=600000",
        *args,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_page_runs_every_endpoint(live_url, client, tmp_path):
    url = f"{live_url}/?run=vqa,ground,retrieve,verify"
    dom = chromium("--dump-dom", url)
    assert 'data-ready="true"' in dom, dom[-3000:]
    history = dict(re.findall(r'<li data-task="(\w+)">\1: ([^<]*)</li>', dom))
    assert set(history) == {"vqa", "ground", "retrieve", "verify"}, dom[-3000:]
    assert not [t for t, summary in history.items() if summary.startswith("error")], history
    # vqa: an answer from the model's answer list
    assert history["vqa"] in VQA_ANSWERS, history
    # ground (refcoco): the regions drawn on the canvas
    ground = re.fullmatch(r"(\d+) boxes drawn.*", history["ground"])
    assert ground and int(ground.group(1)) >= 1, history
    boxes = re.search(r'<canvas id="canvas"[^>]*data-boxes="(\d+)"', dom)
    assert boxes and int(boxes.group(1)) == int(ground.group(1))
    # retrieve (coco): every example image ranked, best first
    names = [e["name"] for e in client.get("/examples").json()["examples"]]
    best = re.fullmatch(r"best: (.+)", history["retrieve"])
    assert best and best.group(1) in names, history
    ranked = re.findall(r'<figure><img src="/examples/([^"]+)\.png"[^>]*><figcaption>#(\d+) ', dom)
    assert [int(rank) for _, rank in ranked] == list(range(1, len(names) + 1))
    assert sorted(name for name, _ in ranked) == sorted(names) and ranked[0][0] == best.group(1)
    # verify (snli_ve): one of the task's labels
    assert history["verify"] in SNLI_VE_LABELS, history
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOT_DIR / "web-page.png"
    chromium(f"--screenshot={shot}", url)
    assert shot.stat().st_size > 10_000
