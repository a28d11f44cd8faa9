"""Closed-loop clients around a model-version switch: what tests/export/test_version_switch.py asserts
and `bench.swap` reports (requests failed during the switch, which version answered each request)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx

# (start, end, HTTP status, X-Model-Version, body) of one request, monotonic seconds
Record = tuple[float, float, int, str | None, dict]


@dataclass
class Loop:
    """`clients` threads, each sending its request again as soon as the previous one is answered."""

    url: str
    bodies: list[tuple[str, dict]]  # (path, JSON body), dealt round-robin to the clients
    headers: dict[str, str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    records: list[list[Record]] = field(default_factory=list)

    def _run(self, index: int) -> None:
        path, body = self.bodies[index % len(self.bodies)]
        mine = self.records[index]
        with httpx.Client(base_url=self.url, timeout=120, headers=self.headers) as client:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    r = client.post(path, json=body)
                    status, version = r.status_code, r.headers.get("x-model-version")
                    payload = (
                        r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    )
                except httpx.HTTPError as exc:  # a dropped connection is a failed request too
                    status, version, payload = 0, None, {"error": str(exc)}
                mine.append((t0, time.monotonic(), status, version, payload))

    def around(self, action: Callable[[], object], clients: int = 4, settle_s: float = 1.5):
        """Run `action()` while `clients` clients load the gateway; returns (its result, start, end)."""
        self.records = [[] for _ in range(clients)]
        threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]
        for t in threads:
            t.start()
        time.sleep(settle_s)
        begun = time.monotonic()
        result = action()
        ended = time.monotonic()
        time.sleep(settle_s)
        self.stop.set()
        for t in threads:
            t.join()
        self.stop.clear()
        return result, begun, ended

    @property
    def flat(self) -> list[Record]:
        return [r for client in self.records for r in client]

    def summary(self, old: str, new: str, begun: float, ended: float) -> dict:
        """Counts: requests, failed (status != 200), answered by the wrong version (finished before the
        switch began but not by `old`, or started after it ended but not by `new`), and clients that
        saw `old` again after `new`."""
        flat = self.flat
        before = [r for r in flat if r[1] < begun]
        after = [r for r in flat if r[0] > ended]
        regressed = 0
        for client in self.records:
            seen = [r[3] for r in client]
            if new in seen and old in seen[seen.index(new) :]:
                regressed += 1
        return {
            "requests": len(flat),
            "failed": sum(r[2] != 200 for r in flat),
            "before": len(before),
            "after": len(after),
            "wrong_version": sum(r[3] != old for r in before) + sum(r[3] != new for r in after),
            "clients_regressed": regressed,
            "first_failures": [r[4] for r in flat if r[2] != 200][:3],
        }


@contextlib.contextmanager
def gateway_thread(app, settings) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread on `settings.port`; yields its URL, stops it on exit."""
    import uvicorn

    from server.__main__ import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("the gateway did not start")
            time.sleep(0.05)
        yield f"http://{settings.host}:{settings.port}"
    finally:
        server.should_exit = True
        thread.join()
