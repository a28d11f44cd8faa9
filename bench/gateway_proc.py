"""The gateway in a child process, over the tiny test model with a fixed added model latency.

`python -m bench.gateway_proc --checkpoint DIR --port N [--delay S --workers W --max-queue Q]` serves
the tiny checkpoint (testkit/tiny_gateway.py: torch backend, random-weight tiny detector) exactly as
`python -m server` serves a real one (`server.__main__.serve`: graceful SIGTERM), with `--delay`
seconds added to every graph call to stand in for a real model's latency.  `sigterm_drain` starts
one, puts requests in flight, sends SIGTERM and reports what happened to each of them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


class DelayedBackend:
    """A backend whose every graph call takes `delay` seconds longer (a slower model)."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.name = inner, delay, f"{inner.name}+{delay:g}s"

    def infer(self, model, inputs, request_id=None):
        time.sleep(self.delay)
        return self.inner.infer(model, inputs, request_id)

    def ready(self):
        return self.inner.ready()

    def close(self):
        self.inner.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.gateway_proc", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a tiny checkpoint (tests fixtures)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--max-queue", type=int, default=8)
    p.add_argument("--deadline", type=float, default=10.0)
    args = p.parse_args(argv)

    import torch

    from server.__main__ import serve
    from server.app import create_app
    from server.loading import Components
    from testkit.tiny_gateway import tiny_components, tiny_settings

    torch.set_num_threads(1)
    parts = tiny_components(args.checkpoint)
    backend = DelayedBackend(parts.backend, args.delay)
    components = Components(backend, parts.extractor, parts.tokenizer, parts.answers)
    settings = tiny_settings(
        Path(os.environ.get("TMPDIR", "/tmp")),
        args.checkpoint,
        cache_dir=None,
        port=args.port,
        workers=args.workers,
        max_queue=args.max_queue,
        deadline_s=args.deadline,
    )
    serve(create_app(settings, components), settings)


def start(checkpoint: Path, port: int, **flags: object) -> subprocess.Popen:
    """Start one and wait until it answers /healthz."""
    cmd = [sys.executable, "-m", "bench.gateway_proc", "--checkpoint", str(checkpoint), "--port", str(port)]
    for key, value in flags.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gateway did not start")


@dataclass
class DrainReport:
    in_flight: int  # requests sent before SIGTERM (all accepted: under the queue bound)
    completed: int  # of those, answered 200
    in_flight_statuses: dict
    new_refused: int  # requests sent after SIGTERM that were refused (connection refused or 503)
    new_sent: int
    new_503_without_retry_after: int
    drain_s: float  # SIGTERM to process exit
    exit_code: int | None
    grace_s: float

    @property
    def drained_share(self) -> float:
        return self.completed / self.in_flight if self.in_flight else float("nan")


def sigterm_drain(checkpoint: Path, port: int, in_flight: int = 6, delay: float = 0.3) -> DrainReport:
    """Put `in_flight` /vqa requests in flight, SIGTERM the gateway, try new ones, wait for exit."""
    import base64

    from bench.triton_faults import _png

    deadline = 10.0
    proc = start(checkpoint, port, delay=delay, workers=2, max_queue=max(8, in_flight), deadline=deadline)
    url = f"http://127.0.0.1:{port}"
    body = {"image": {"base64": base64.b64encode(_png()).decode()}, "question": "what is it?"}
    try:
        httpx.post(f"{url}/images", json={"image": body["image"]}, timeout=60)  # detector work first
        results: list[int | str] = [""] * in_flight

        def send(i: int) -> None:
            try:
                results[i] = httpx.post(f"{url}/vqa", json=body, timeout=60).status_code
            except httpx.HTTPError as exc:
                results[i] = type(exc).__name__

        threads = [threading.Thread(target=send, args=(i,)) for i in range(in_flight)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # every request admitted; the first ones are running
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        new, refused, no_retry = 0, 0, 0
        for _ in range(5):
            new += 1
            try:
                r = httpx.post(f"{url}/vqa", json=body, timeout=5)
                refused += r.status_code == 503
                no_retry += r.status_code == 503 and "retry-after" not in r.headers
            except httpx.ConnectError:
                refused += 1
            time.sleep(0.05)
        for t in threads:
            t.join(timeout=60)
        code = proc.wait(timeout=deadline + 30)
        drain = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    statuses: dict = {}
    for r in results:
        statuses[str(r)] = statuses.get(str(r), 0) + 1
    return DrainReport(
        in_flight=in_flight,
        completed=sum(r == 200 for r in results),
        in_flight_statuses=statuses,
        new_refused=refused,
        new_sent=new,
        new_503_without_retry_after=no_retry,
        drain_s=drain,
        exit_code=code,
        grace_s=deadline + 5,
    )


if __name__ == "__main__":
    main()
