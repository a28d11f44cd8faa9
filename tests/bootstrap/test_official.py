"""`python -m bootstrap --official DIR` (what `make serve OFFICIAL=DIR` runs): release files -> served.

The full-size test writes a fake 12-in-1 release (random weights under the released 560 + 810 key
names and shapes, saved as the release saved them, answer pickles of 3129 and 1533 strings) and
takes it through conversion, export and the real tritonserver to answers on all four endpoints.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from bootstrap.layout import ROOT
from testkit.release_files import fake_answers, write_fake_release
from testkit.tiny_gateway import scene_png


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bootstrap(*args: str, log: Path, **kw) -> subprocess.Popen:
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "bootstrap", *args],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **kw,
        )


def test_a_wrong_release_stops_before_any_heavy_work_naming_the_file(tmp_path):
    """A missing answer list stops the build in seconds, names the file, and writes nothing."""
    from vilbert.config import tiny

    release = write_fake_release(tmp_path / "release", detector=False, cfg=tiny(), answers=True)
    release.gqa_answers.unlink()
    out = tmp_path / "outputs"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "bootstrap", "--official", str(release.root), "--outputs", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "gqa" in lines[0] and "trainval_label2ans.pkl" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (out / "runs").exists() and not (out / "model_repository").exists()
    assert time.monotonic() - started < 60


# Full-size (270M + X-152) work: one such test at a time, on one worker (2 cores, ~6 GB each).
@pytest.mark.slow
@pytest.mark.xdist_group("full_size")
def test_full_size_release_is_served_on_all_four_endpoints_through_triton(tmp_path):
    release = write_fake_release(tmp_path / "release", detector_values="random")  # base: released shapes
    out = tmp_path / "outputs"
    port = _free_port()
    env = {**os.environ, "TWELVE_WORKERS": "2"}
    log = tmp_path / "bootstrap.log"
    proc = _bootstrap(
        "--official",
        str(release.root),
        "--outputs",
        str(out),
        "--port",
        str(port),
        "--backend",
        "triton",
        env=env,
        log=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 1500
        with httpx.Client(base_url=url, timeout=600) as client:
            ready = False
            while time.monotonic() < deadline:
                assert proc.poll() is None, "bootstrap exited:\n" + log.read_text()[-4000:]
                try:
                    ready = client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    ready = False
                if ready:
                    break
                time.sleep(2)
            text = log.read_text()
            print(text)
            assert ready, "no ready gateway:\n" + text[-4000:]
            # The step titles of the official build, each with its time.
            assert "check + convert the release" in text and "export (fp32" in text and "done in" in text
            assert "Triton ready" in text

            tasks = client.get("/tasks").json()
            assert "warnings" not in tasks, tasks["warnings"]
            assert {r["answers"] for r in tasks["tasks"] if "answers" in r} == {"loaded"}
            image = {"base64": base64.b64encode(scene_png(3, (160, 120))).decode()}
            t0 = time.perf_counter()
            vqa = client.post("/vqa", json={"image": image, "question": "what color is the ball?"})
            new_image_s = time.perf_counter() - t0
            assert vqa.status_code == 200, vqa.text
            t0 = time.perf_counter()
            for _ in range(5):
                again = client.post("/vqa", json={"image": image, "question": "what color is the ball?"})
                assert again.status_code == 200 and again.json()["answers"] == vqa.json()["answers"]
            cached_s = (time.perf_counter() - t0) / 5
            print(
                f"\n/vqa on a new image: {new_image_s:.1f} s; on the cached image: {cached_s * 1000:.0f} ms"
            )
            answers = vqa.json()["answers"]
            vocabulary = set(fake_answers("vqa", 3129))  # the release's list, not answer_<index>
            assert answers and all(a["answer"] in vocabulary for a in answers), answers
            assert vqa.headers.get("x-request-id")
            ground = client.post("/ground", json={"image": image, "expression": "the red ball"})
            assert ground.status_code == 200, ground.text
            assert ground.json()["regions"]
            verify = client.post("/verify", json={"images": [image], "statement": "a ball is red"})
            assert verify.status_code == 200, verify.text
            assert verify.json()["label"] in ("contradiction", "neutral", "entailment")
            other = {"base64": base64.b64encode(scene_png(4, (160, 120))).decode()}
            pair = client.post(
                "/verify",
                json={"images": [image, other], "statement": "both balls are red", "dataset": "nlvr2"},
            )
            assert pair.status_code == 200, pair.text
            assert pair.json()["label"] in ("False", "True")
            retrieve = client.post("/retrieve", json={"caption": "a red ball", "images": [image, other]})
            assert retrieve.status_code == 200, retrieve.text
            assert len(retrieve.json()["results"]) == 2
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    timings = Path(out / "artifacts" / ".serve" / "timings.json")
    assert timings.is_file()
    print(timings.read_text())
