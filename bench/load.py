"""Closed-loop HTTP load against a gateway, with the accounting that says nothing was lost.

`run_load` keeps `concurrency` virtual clients busy (each sends its next request when the last one
is answered) and records every outcome: the status, whether a 429/503 carried Retry-After, the
latency, and transport errors (a reset, a refused connection, a client timeout).  `LoadResult`
checks the identity ``sent = 2xx + 4xx + 429 + 503 + 504 + transport errors`` and counts anything
else (a 500) as a failure.  `served` runs an app with the gateway's own uvicorn settings in a
thread, for tests; `gateway_process` (bench/gateway_proc.py) runs one in a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process (this one by default), from /proc."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Outcome:
    start: float  # monotonic
    latency: float
    status: int | None  # None: transport error
    retry_after: bool = False
    error: str = ""


@dataclass
class LoadResult:
    concurrency: int
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)  # samples of the server's RSS during the run

    @property
    def sent(self) -> int:
        return len(self.outcomes)

    @property
    def statuses(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    def count(self, *statuses: int) -> int:
        return sum(self.statuses[s] for s in statuses)

    @property
    def ok(self) -> int:
        return sum(n for s, n in self.statuses.items() if s is not None and 200 <= s < 300)

    @property
    def client_errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s is not None and 400 <= s < 500 and s != 429)

    @property
    def transport_errors(self) -> int:
        return self.statuses[None]

    @property
    def server_errors(self) -> int:
        """5xx other than the intended 503 and 504."""
        return sum(n for s, n in self.statuses.items() if s is not None and s >= 500 and s not in (503, 504))

    @property
    def lost(self) -> int:
        """Requests without exactly one of the allowed final answers: sent - (2xx+4xx+429+503+504)."""
        answered = self.ok + self.client_errors + self.count(429, 503, 504)
        return self.sent - answered

    @property
    def rejected_without_retry_after(self) -> int:
        return sum(1 for o in self.outcomes if o.status in (429, 503) and not o.retry_after)

    def latency(self, q: float, status: int = 200) -> float:
        values = sorted(o.latency for o in self.outcomes if o.status == status)
        if not values:
            return float("nan")
        return values[min(len(values) - 1, int(q * len(values)))]

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def row(self) -> dict:
        return {
            "concurrency": self.concurrency,
            "sent": self.sent,
            "2xx": self.ok,
            "4xx": self.client_errors,
            "429": self.count(429),
            "503": self.count(503),
            "504": self.count(504),
            "other_5xx": self.server_errors,
            "transport_errors": self.transport_errors,
            "lost": self.lost,
            "rejected_share": (self.count(429, 503) / self.sent) if self.sent else 0.0,
            "rejected_without_retry_after": self.rejected_without_retry_after,
            "p50_ok_s": self.latency(0.50),
            "p99_ok_s": self.latency(0.99),
            "max_ok_s": max((o.latency for o in self.outcomes if o.status == 200), default=float("nan")),
            "throughput_rps": self.throughput,
            "rss_mb_first": self.rss_mb[0] if self.rss_mb else float("nan"),
            "rss_mb_peak": max(self.rss_mb, default=float("nan")),
        }


async def _client_loop(
    client: httpx.AsyncClient,
    path: str,
    body: dict,
    stop_at: float,
    per_client: int | None,
    out: list,
    stop: threading.Event | None,
) -> None:
    sent = 0
    while time.monotonic() < stop_at and (per_client is None or sent < per_client):
        if stop is not None and stop.is_set():
            break
        start = time.monotonic()
        try:
            r = await client.post(path, json=body)
            out.append(Outcome(start, time.monotonic() - start, r.status_code, "retry-after" in r.headers))
        except httpx.HTTPError as exc:
            out.append(Outcome(start, time.monotonic() - start, None, error=type(exc).__name__))
        sent += 1


async def _load(
    url: str,
    path: str,
    body: dict,
    concurrency: int,
    seconds: float,
    per_client: int | None,
    timeout: float,
    rss_pid: int | None,
    stop: threading.Event | None,
) -> LoadResult:
    result = LoadResult(concurrency, seconds)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        started = time.monotonic()
        stop_at = started + seconds
        tasks = [
            asyncio.create_task(_client_loop(client, path, body, stop_at, per_client, result.outcomes, stop))
            for _ in range(concurrency)
        ]
        while not all(t.done() for t in tasks):
            with contextlib.suppress(OSError):
                result.rss_mb.append(rss_mb(rss_pid))
            await asyncio.sleep(0.1)
        await asyncio.gather(*tasks)
        result.seconds = time.monotonic() - started
    return result


def run_load(
    url: str,
    body: dict,
    concurrency: int,
    seconds: float = 5.0,
    *,
    path: str = "/vqa",
    per_client: int | None = None,
    timeout: float = 60.0,
    rss_pid: int | None = None,
    stop: threading.Event | None = None,
) -> LoadResult:
    """`concurrency` clients posting `body` to `url + path` for `seconds` (or `per_client` requests
    each, or until `stop` is set); the server's RSS is sampled from `rss_pid` (default: this process)."""
    return asyncio.run(_load(url, path, body, concurrency, seconds, per_client, timeout, rss_pid, stop))


@contextlib.contextmanager
def served(app, settings) -> Iterator[str]:
    """`app` served by uvicorn (the gateway's own config) in a thread on a free loopback port."""
    import uvicorn

    from server.__main__ import uvicorn_config

    settings = settings.model_copy(update={"host": "127.0.0.1", "port": free_port()})
    server = uvicorn.Server(uvicorn_config(app, settings, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{settings.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
