"""Fault scenarios with the real bundled tritonserver behind the gateway (`triton` backend).

`kill_triton` SIGKILLs Triton (and its stubs) under load, restarts it on the same ports and measures
how the gateway answered meanwhile: the time to the first 503 and to /readyz saying not-ready, that
every 503 carried Retry-After, nothing was lost, and the time from the restart to the first 200
(the gateway reconnects by itself).  `kill_stub` SIGKILLs the python-backend stub of the model
/vqa needs: Triton keeps reporting that model ready and never restarts the stub, so the gateway
marks it not ready from the first failed request (server/triton_backend.py); recovery is a Triton
restart.  Used by tests/export/test_triton_faults.py and `python -m bench.reliability`.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from bench.load import LoadResult, run_load, served

VQA_MODEL = "head_answer"  # the head graph /vqa (dataset vqa) runs after the trunk


def _png() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8), "RGB").save(buf, "PNG")
    return buf.getvalue()


@dataclass
class Timeline:
    load: LoadResult | None = None
    ready: list[tuple[float, int, dict]] = field(default_factory=list)  # (t, status, models)

    def first(self, status: int, after: float) -> float | None:
        """Monotonic time of the first answer with `status` that finished after `after`."""
        assert self.load is not None
        ends = [o.start + o.latency for o in self.load.outcomes if o.status == status]
        ends = [t for t in ends if t >= after]
        return min(ends) if ends else None

    def first_200_sent_after(self, after: float) -> float | None:
        assert self.load is not None
        ends = [o.start + o.latency for o in self.load.outcomes if o.status == 200 and o.start >= after]
        return min(ends) if ends else None

    def first_not_ready(self, after: float) -> float | None:
        times = [t for t, status, _ in self.ready if t >= after and status == 503]
        return min(times) if times else None


@dataclass
class FaultReport:
    scenario: str
    sent: int
    statuses: dict
    lost: int
    other_5xx: int
    rejected_without_retry_after: int
    to_first_503_s: float | None
    to_not_ready_s: float | None
    restart_to_first_200_s: float | None  # from the restart command to the gateway's first 200
    triton_start_s: float  # of which Triton's own start until every model was ready
    model_marked_not_ready: bool | None = None


class _Probe:
    """Polls /readyz every 50 ms in a thread, recording (t, status, models)."""

    def __init__(self, url: str, out: list) -> None:
        self.url, self.out, self.stop = url, out, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while not self.stop.is_set():
                try:
                    r = client.get("/readyz")
                    self.out.append((time.monotonic(), r.status_code, r.json().get("models", {})))
                except httpx.HTTPError:
                    self.out.append((time.monotonic(), -1, {}))
                time.sleep(0.05)

    def __enter__(self) -> _Probe:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _gateway(repository: Path, checkpoint: Path, extractor, triton_url: str):
    from server.app import create_app
    from server.loading import Components, read_answers
    from server.settings import BackendKind, Settings
    from server.triton_backend import TritonBackend
    from vilbert.tokenizer import load_tokenizer

    settings = Settings(
        backend=BackendKind.TRITON,
        checkpoint=checkpoint,
        model_repository=repository,
        triton_url=triton_url,
        deadline_s=5.0,
        max_queue=8,
        cache_dir=None,
    )
    components = Components(
        TritonBackend(triton_url, timeout_s=5.0),
        extractor,
        load_tokenizer(),
        read_answers(checkpoint),
    )
    return create_app(settings, components), settings


def _report(scenario: str, tl: Timeline, fault_at: float, restart_at: float, ready_at: float) -> FaultReport:
    assert tl.load is not None
    first_503 = tl.first(503, fault_at)
    not_ready = tl.first_not_ready(fault_at)
    first_200 = tl.first_200_sent_after(restart_at)
    return FaultReport(
        scenario=scenario,
        sent=tl.load.sent,
        statuses={str(k): v for k, v in sorted(tl.load.statuses.items(), key=lambda kv: str(kv[0]))},
        lost=tl.load.lost,
        other_5xx=tl.load.server_errors,
        rejected_without_retry_after=tl.load.rejected_without_retry_after,
        to_first_503_s=None if first_503 is None else first_503 - fault_at,
        to_not_ready_s=None if not_ready is None else not_ready - fault_at,
        restart_to_first_200_s=None if first_200 is None else first_200 - restart_at,
        triton_start_s=ready_at - restart_at,
    )


def run_faults(
    repository: Path,
    checkpoint: Path,
    extractor,
    *,
    warm_s: float = 1.5,
    down_s: float = 1.5,
    after_s: float = 2.0,
    concurrency: int = 2,
    log=lambda _msg: None,
) -> list[FaultReport]:
    """Both scenarios against one gateway: Triton SIGKILL + restart, then a stub SIGKILL + restart.

    `extractor` (a regions RegionExtractor) must give the region-feature size the checkpoint expects.
    """
    from export.triton_server import TritonServer, free_port

    ports = {"http_port": free_port(), "grpc_port": free_port(), "metrics_port": free_port()}
    body = {"image": {"base64": base64.b64encode(_png()).decode()}, "question": "what colour is it?"}
    reports = []
    started = time.monotonic()
    triton = TritonServer(repository, startup_timeout=300, **ports).start()
    log(f"  tritonserver ready in {time.monotonic() - started:.1f} s")
    try:
        app, settings = _gateway(repository, checkpoint, extractor, triton.http_url)
        with served(app, settings) as url:
            httpx.post(f"{url}/images", json={"image": body["image"]}, timeout=60)  # detector work first
            for scenario in ("triton-sigkill", "stub-sigkill"):
                tl, stop = Timeline(), threading.Event()

                def load(tl=tl, stop=stop) -> None:
                    tl.load = run_load(url, body, concurrency, seconds=120, timeout=30, stop=stop)

                with _Probe(url, tl.ready):
                    loader = threading.Thread(target=load, daemon=True)
                    loader.start()
                    time.sleep(warm_s)
                    fault_at = time.monotonic()
                    if scenario == "triton-sigkill":
                        triton.kill()
                    else:
                        import os
                        import signal

                        os.kill(triton.stub_pids()[VQA_MODEL], signal.SIGKILL)
                    # Triton notices a dead stub only when a request reaches it (about 1 s here).
                    until = time.monotonic() + 10
                    while time.monotonic() < until and tl.first_not_ready(fault_at) is None:
                        time.sleep(0.05)
                    time.sleep(down_s)
                    marked = (
                        None
                        if scenario == "triton-sigkill"
                        else any(models.get(VQA_MODEL) is False for t, _, models in tl.ready if t >= fault_at)
                    )
                    triton.kill()  # as a supervisor would: a dead stub makes SIGTERM wait its exit timeout
                    triton.stop()
                    restart_at = time.monotonic()
                    triton = TritonServer(repository, startup_timeout=300, **ports).start()
                    ready_at = time.monotonic()
                    log(f"  {scenario}: Triton back in {ready_at - restart_at:.1f} s")
                    time.sleep(after_s)
                    stop.set()
                    loader.join(timeout=60)
                report = _report(scenario, tl, fault_at, restart_at, ready_at)
                report.model_marked_not_ready = marked
                reports.append(report)
    finally:
        triton.stop()
    return reports
