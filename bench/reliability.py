"""`python -m bench.reliability [--quick]`: measure the gateway's reliability and regenerate
docs/reliability.md with the numbers (issue #8).

What it runs, each on the tiny test model (testkit/tiny_gateway.py) so it needs no trained model:

1. concurrency held and overload: the gateway in a child process (`bench.gateway_proc`, a fixed
   added model latency, queue bound Q = N*), closed-loop load at N*, 2N* and 4N*; the accounting
   identity, Retry-After on every 429/503, p99 of accepted requests vs the deadline, server RSS;
2. Triton faults (`bench.triton_faults`): the tiny model exported and served by the bundled
   tritonserver; SIGKILL of Triton and of one python-backend stub under load;
3. SIGTERM to the gateway under load (`bench.gateway_proc.sigterm_drain`);
4. schema fuzzing with schemathesis (`bench.schema_fuzz`) and the bad-input catalogue
   (`bench.bad_inputs`) against a live gateway;
5. training: SIGKILL trials during checkpoint writes and against the real `training.fit` CLI;
6. `pip-audit` of the environment, when its vulnerability service can be reached.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------ machine


def machine_info() -> dict:
    import fastapi
    import onnxruntime
    import starlette
    import torch
    import uvicorn

    model = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for name in ("schemathesis", "hypothesis", "nvidia-pytriton", "tritonclient", "python-multipart"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:
            versions[name] = "-"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "fastapi": fastapi.__version__,
        "starlette": starlette.__version__,
        "uvicorn": uvicorn.__version__,
        **versions,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# ------------------------------------------------------------------------------------------ sections


def overload(checkpoint: Path, seconds: float, n_star: int, delay: float) -> dict:
    from bench.gateway_proc import start
    from bench.load import free_port, run_load
    from bench.triton_faults import _png

    port = free_port()
    deadline = 10.0
    proc = start(checkpoint, port, delay=delay, workers=1, max_queue=n_star, deadline=deadline)
    url = f"http://127.0.0.1:{port}"
    image = {"base64": base64.b64encode(_png()).decode()}
    rows = []
    try:
        run_load(url, {"image": image}, 1, per_client=1, path="/images")
        body = {"image": image, "question": "what colour is it?"}
        for factor in (1, 2, 4):
            log(f"  load at {factor}N* = {factor * n_star} clients for {seconds:g} s")
            r = run_load(url, body, factor * n_star, seconds=seconds, rss_pid=proc.pid, timeout=60)
            rows.append({"factor": factor, **r.row(), "statuses": {str(k): v for k, v in r.statuses.items()}})
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"n_star": n_star, "delay_s": delay, "deadline_s": deadline, "seconds": seconds, "rows": rows}


def triton_faults(checkpoint: Path, work: Path) -> dict:
    import torch

    from bench.triton_faults import run_faults
    from export.pipeline import ExportOptions, run_export
    from regions.detector import build_detector
    from regions.extractor import RegionExtractor
    from testkit.tiny_gateway import tiny_detector_preset

    repo = work / "model_repository"
    started = time.monotonic()
    run_export(
        ExportOptions(checkpoint=checkpoint, out=repo, skip_metric=True, measure_int8=False),
        log=lambda _: None,
    )
    export_s = time.monotonic() - started
    log(f"  exported in {export_s:.0f} s")
    torch.manual_seed(0)
    extractor = RegionExtractor(build_detector(tiny_detector_preset()), batch_size=1)
    reports = run_faults(repo, checkpoint, extractor, warm_s=2.0, down_s=2.0, after_s=2.0, log=log)
    return {"export_s": export_s, "reports": [dataclasses.asdict(r) for r in reports]}


def drain(checkpoint: Path, in_flight: int) -> dict:
    from bench.gateway_proc import sigterm_drain
    from bench.load import free_port

    r = sigterm_drain(checkpoint, free_port(), in_flight=in_flight, delay=0.3)
    return {**dataclasses.asdict(r), "drained_share": r.drained_share}


def fuzz_and_bad_inputs(checkpoint: Path, work: Path, max_examples: int) -> dict:
    import httpx

    from bench.bad_inputs import cases
    from bench.load import served
    from bench.schema_fuzz import fuzz
    from server.app import create_app
    from testkit.tiny_gateway import scene_png, tiny_components, tiny_settings

    settings = tiny_settings(work, checkpoint)  # with the on-disk (LMDB) region cache
    app = create_app(settings, tiny_components(checkpoint))
    started = time.monotonic()
    stats = fuzz(app, max_examples=max_examples)
    fuzz_s = time.monotonic() - started
    catalogue = cases(scene_png(0), max_body=settings.max_body_bytes, max_text=settings.max_text_chars)
    per_kind: dict[str, Counter] = {}
    wrong, statuses, slowest = [], Counter(), 0.0
    with served(app, settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        for case in catalogue:
            t = time.monotonic()
            try:
                status = client.request(case.method, case.path, **case.request_kwargs()).status_code
            except httpx.LocalProtocolError:  # a lying Content-Length, CR-LF in a header: httpx
                status = _raw_status(url, case)  # refuses to send them, a socket does
            slowest = max(slowest, time.monotonic() - t)
            kind = per_kind.setdefault(case.kind, Counter())
            kind["tried"] += 1
            kind["as_expected"] += status in case.expect
            kind["5xx"] += status >= 500
            kind["4xx"] += 400 <= status < 500
            kind["200"] += status == 200
            statuses[status] += 1
            if status not in case.expect:
                wrong.append(f"{case.kind}:{case.name} -> {status}")
    return {
        "fuzz": {
            "cases": stats.cases,
            "max_examples_per_operation_and_mode": max_examples,
            "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
            "server_errors": stats.server_errors,
            "schema_violations": stats.schema_violations,
            "failures": dict(stats.failures),
            "examples": stats.examples,
            "seconds": fuzz_s,
        },
        "bad_inputs": {
            "per_kind": {k: dict(v) for k, v in per_kind.items()},
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "unexpected": wrong,
            "slowest_s": slowest,
        },
    }


def _raw_status(url: str, case) -> int:
    """Send a case byte for byte over a socket (for headers an HTTP client would not send)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    head = f"{case.method} {case.path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in case.headers.items())
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + b"\r\n" + (case.content or b""))
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return 0  # closed without an answer: counted as unexpected
            data += chunk
    return int(data.split()[1])


def training(work: Path, writer_trials: int, cli_trials: int) -> dict:
    import json as _json

    from bench.training_kills import checkpoint_kill_trials, cli_kill_trials

    started = time.monotonic()
    writer = checkpoint_kill_trials(work / "writer", trials=writer_trials, seed=1)
    out = {"writer": {**dataclasses.asdict(writer), "ok": writer.ok, "seconds": time.monotonic() - started}}
    if cli_trials:
        from testkit.reference_datasets import FIXTURE_CONFIG, build_reference_fixture

        root = build_reference_fixture(work / "reference")
        (root / "datasets" / "loader_config.json").write_text(_json.dumps(FIXTURE_CONFIG))
        started = time.monotonic()
        cli = cli_kill_trials(root, work / "cli", trials=cli_trials, seed=1)
        out["cli"] = {**dataclasses.asdict(cli), "ok": cli.ok, "seconds": time.monotonic() - started}
    return out


def pip_audit() -> dict:
    cmd = [sys.executable, "-m", "pip_audit", "-l", "--progress-spinner", "off", "-f", "json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"ran": False, "error": str(exc)}
    try:
        data = json.loads(p.stdout)
    except ValueError:
        return {"ran": False, "error": (p.stderr or p.stdout)[-500:]}
    deps = data.get("dependencies", [])
    skipped = [d for d in deps if d.get("skip_reason")]
    vulns = [d for d in deps if d.get("vulns")]
    return {
        "ran": True,
        "packages": len(deps),
        "audited": len(deps) - len(skipped),
        "skipped": len(skipped),
        "skip_reason_example": skipped[0]["skip_reason"] if skipped else "",
        "vulnerable": [f"{d['name']} {d['version']}: {[v['id'] for v in d['vulns']]}" for d in vulns],
    }


# ------------------------------------------------------------------------------------------ the doc


def _f(x: float | None, digits: int = 2) -> str:
    return "—" if x is None or x != x else f"{x:.{digits}f}"


def render(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Reliability and security",
        "",
        "Generated by `python -m bench.reliability"
        + (" --quick" if r["quick"] else "")
        + f"` in {r['seconds']:.0f} s on {m['date_utc']}; do not edit by hand. Issue #8;",
        "the checklist: bad image bytes, text, schema and transport (bench/bad_inputs.py), overload,",
        "Triton faults, SIGTERM drain, schema fuzzing, training kills. The rule: every request the gateway",
        "accepts ends in exactly one final response — 200; a 4xx naming the problem; 429/503 with",
        "`Retry-After`; 504 past the deadline — never a 500, a reset connection or a hang.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores (shared with other work: load average "
        f"{', '.join(f'{x:.1f}' for x in m['load_avg_at_start'])} at start; latencies are inflated by it)",
        f"- Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}, fastapi "
        f"{m['fastapi']}, starlette {m['starlette']}, uvicorn {m['uvicorn']}, python-multipart "
        f"{m['python-multipart']}",
        f"- tritonserver from nvidia-pytriton {m['nvidia-pytriton']} (tritonclient {m['tritonclient']}); "
        f"schemathesis {m['schemathesis']} (hypothesis {m['hypothesis']})",
        "- Model: the tiny test model (testkit/tiny_gateway.py: hidden 32, random weights, random tiny",
        "  detector), so the numbers are about the gateway's behaviour, not model speed.",
        "",
    ]
    o = r.get("overload")
    if o:
        held = o["rows"][0]
        lines += [
            "## Concurrency held and overload",
            "",
            "The gateway in its own process (`python -m bench.gateway_proc`: uvicorn with the gateway's",
            f"settings, 1 worker thread, every graph call made {o['delay_s'] * 1000:.0f} ms slower to",
            f"stand in for a real model), admission queue bound Q = {o['n_star']}, deadline "
            f"{o['deadline_s']:g} s. Closed-loop clients for {o['seconds']:g} s per row.",
            f"**N\\* = {o['n_star']}** (= Q: each client has",
            "one request in flight, so all are admitted): held with "
            f"**{held['other_5xx'] + held['transport_errors']} 5xx/transport errors** and "
            f"{held['429'] + held['503']} rejections.",
            "",
            "| load | clients | sent | 2xx | 4xx | 429 | 503 | 504 | other 5xx | transport errors | **lost** "
            "| rejected share | 429/503 without Retry-After | p50 / p99 / max accepted (s) | 2xx/s "
            "| server RSS first → peak (MB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in o["rows"]:
            lines.append(
                f"| {row['factor']}N\\* | {row['concurrency']} | {row['sent']} | {row['2xx']} | {row['4xx']} "
                f"| {row['429']} | {row['503']} | {row['504']} | {row['other_5xx']} "
                f"| {row['transport_errors']} "
                f"| **{row['lost']}** | {row['rejected_share']:.0%} | {row['rejected_without_retry_after']} "
                f"| {_f(row['p50_ok_s'])} / {_f(row['p99_ok_s'])} / {_f(row['max_ok_s'])} "
                f"| {row['throughput_rps']:.1f} | {row['rss_mb_first']:.0f} → {row['rss_mb_peak']:.0f} |"
            )
        lines += [
            "",
            "lost = sent − (2xx + 4xx + 429 + 503 + 504); a transport error would count as lost. Accepted",
            "requests must finish within the deadline: max accepted latency vs "
            f"{o['deadline_s']:g} s above. Beyond the queue, the gateway also caps open requests",
            "(`TWELVE_MAX_OPEN_REQUESTS`, 503 + Retry-After) instead of uvicorn's `limit_concurrency`, whose",
            "503 has no Retry-After.",
            "",
        ]
    t = r.get("triton")
    if t:
        kill, stub = t["reports"]
        lines += [
            "## Triton faults (real bundled tritonserver, python backend)",
            "",
            "The tiny model exported (`export.pipeline.run_export`, "
            f"{t['export_s']:.0f} s) and served by the tritonserver of nvidia-pytriton; the gateway",
            "(`triton` backend) under 2 closed-loop clients on /vqa; /readyz polled every 50 ms.",
            "",
            "| fault | sent | answers | lost | other 5xx | 503 without Retry-After | time to first 503 (s) "
            "| time to /readyz not-ready (s) | restart → first 200 (s) "
            "| Triton's start until all models ready (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for rep, name in ((kill, "SIGKILL tritonserver"), (stub, "SIGKILL the `head_answer` python stub")):
            answers = ", ".join(f"{k}: {v}" for k, v in rep["statuses"].items())
            lines.append(
                f"| {name} | {rep['sent']} | {answers} | {rep['lost']} | {rep['other_5xx']} "
                f"| {rep['rejected_without_retry_after']} | {_f(rep['to_first_503_s'], 3)} "
                f"| {_f(rep['to_not_ready_s'], 3)} | {_f(rep['restart_to_first_200_s'])} "
                f"| {_f(rep['triton_start_s'])} |"
            )
        lines += [
            "",
            "- Triton killed: connections are refused at once, so the gateway answers 503 + Retry-After and",
            "  /readyz says not ready within the times above; when Triton is back on the same ports the",
            "  gateway answers 200 again by itself (no gateway restart), the first 200 arriving as soon as",
            "  Triton serves.",
            "- Stub killed: Triton (this build) keeps reporting the model **ready** (`/v2/models/head_answer/"
            "ready` = 200)",
            '  and never restarts the stub; every request to it fails with "Stub process ... is not',
            '  healthy" after Triton notices (about a second). The gateway therefore marks a model whose',
            "  request failed that way as not ready in its own per-model readiness (`/readyz` → 503,",
            f"  `models.head_answer: false`: {'seen' if stub.get('model_marked_not_ready') else 'NOT seen'})",
            "  until a request to it succeeds again; recovery needs a Triton restart (a supervisor's job),",
            "  after which the gateway recovers by itself.",
            "",
        ]
    d = r.get("drain")
    if d:
        lines += [
            "## SIGTERM to the gateway under load",
            "",
            f"{d['in_flight']} /vqa requests in flight (2 workers, each graph call +300 ms), then SIGTERM, "
            "then "
            f"{d['new_sent']} new requests.",
            "",
            f"- **Drained in flight: {d['completed']}/{d['in_flight']} = {d['drained_share']:.0%}** "
            f"(answers: {d['in_flight_statuses']})",
            f"- New requests after the signal refused: {d['new_refused']}/{d['new_sent']} "
            "(connection refused",
            "  once uvicorn closed its socket, or 503 + Retry-After on an open connection: readiness goes",
            f"  false first); 503 without Retry-After: {d['new_503_without_retry_after']}",
            f"- SIGTERM → exit: {d['drain_s']:.2f} s (grace {d['grace_s']:g} s = deadline + 5 s); "
            "exit status "
            f"{d['exit_code']} (uvicorn re-raises the SIGTERM it handled once shutdown is complete)",
            "",
        ]
    fb = r.get("fuzz_bad")
    if fb:
        f, b = fb["fuzz"], fb["bad_inputs"]
        lines += [
            "## Schema fuzzing (schemathesis)",
            "",
            f"Every operation of the gateway's OpenAPI, positive and negative data, "
            f"{f['max_examples_per_operation_and_mode']} examples per operation and mode "
            f"(`bench/schema_fuzz.py`; `make test` runs a bounded version): **{f['cases']} cases, "
            f"{f['server_errors']} server errors, {f['schema_violations']} schema violations** "
            "(checks: not_a_server_error, status_code_conformance, response_schema_conformance,",
            "content_type_conformance, negative_data_rejection) in " + f"{f['seconds']:.0f} s.",
            f"Statuses: {', '.join(f'{k}: {v}' for k, v in f['statuses'].items())}.",
        ]
        if f["examples"]:
            lines += ["", "Failures:", "", *[f"- `{e[:300]}`" for e in f["examples"]]]
        lines += [
            "",
            "## Bad inputs (the checklist)",
            "",
            "The catalogue in `bench/bad_inputs.py` (also run by `tests/server/test_bad_inputs.py`) sent",
            "to a live gateway; each case has the set of answers that count as right (a 4xx naming the",
            "problem for bad input, 200 for odd-but-valid input).",
            "",
            "| class | tried | as expected | 200 | 4xx | 5xx |",
            "|---|---|---|---|---|---|",
        ]
        total = Counter()
        for kind, c in b["per_kind"].items():
            total.update(c)
            lines.append(
                f"| {kind} | {c.get('tried', 0)} | {c.get('as_expected', 0)} | {c.get('200', 0)} "
                f"| {c.get('4xx', 0)} | {c.get('5xx', 0)} |"
            )
        lines.append(
            f"| **all** | **{total['tried']}** | **{total['as_expected']}** | {total['200']} "
            f"| {total['4xx']} "
            f"| **{total['5xx']}** |"
        )
        lines += [
            "",
            f"Statuses: {', '.join(f'{k}: {v}' for k, v in b['statuses'].items())}; slowest answer "
            f"{b['slowest_s']:.2f} s. "
            + ("Unexpected: " + "; ".join(b["unexpected"]) if b["unexpected"] else "No unexpected answer."),
            "Transport cases that need a raw socket are in tests/server/test_reliability.py: 413 on an",
            "announced 10 MB body before any of it is sent, 413 on an endless chunked body, 408 for a",
            "body that stops arriving (`TWELVE_BODY_TIMEOUT_S`) while other clients are served, 100 KB",
            "headers answered and endless headers cut at 64 KB.",
            "",
        ]
    tr = r.get("training")
    if tr:
        w = tr["writer"]
        lines += [
            "## Training: SIGKILL at random moments",
            "",
            "A forked writer saves a tiny model through `vilbert.checkpoint.save_rotating` (what",
            "`training.fit` calls) back to back and is SIGKILLed at a random moment (0.1–0.5 s) each trial,",
            "so kills land inside weight writes, fsyncs, renames, the `latest` pointer update and the",
            "deletion of old checkpoints. After each kill: the start-up clean, then every checkpoint loads,",
            "`latest` names a complete checkpoint whose trainer state and weights agree with its step.",
            "",
            f"- **{w['trials']} kill trials: {w['resumed_ok']}/{w['trials']} resumable, "
            f"{len(w['unloadable'])} unloadable, lost ≤ {w['max_lost_intervals']} interval(s), "
            f"{w['leftovers_after_clean']} leftovers after clean** ({w['cleaned']} orphaned temp/trash "
            f"entries cleaned, i.e. kills inside a write or deletion); the writer reached step "
            f"{w['extra'].get('last_step')}; {w['seconds']:.0f} s.",
        ]
        c = tr.get("cli")
        if c:
            lines += [
                "- **The real CLI** (`python -m training.fit`, tiny config, 7 tasks, 12 epochs, a checkpoint "
                "every step), "
                f"SIGKILLed {c['trials']} times, each at a random moment of the second after that launch's "
                "first new checkpoint, and resumed each time (uninterrupted run "
                f"{c['extra'].get('uninterrupted_run_s', 0):.0f} s): "
                f"{c['resumed_ok']}/{c['trials']} resumable, {len(c['unloadable'])} unloadable, lost ≤ "
                f"{c['max_lost_intervals']} interval(s), {c['leftovers_after_clean']} leftovers after clean "
                f"({c['cleaned']} cleaned: kills inside a write); "
                "final run exit "
                f"{c['extra'].get('final_exit')}, losses equal to the uninterrupted run's: "
                f"{c['extra'].get('losses_match_uninterrupted')}; {c['seconds']:.0f} s.",
            ]
        lines.append("")
    a = r.get("audit") or {}
    lines += [
        "## Security defaults",
        "",
        "- Binds 127.0.0.1 unless told otherwise (`TWELVE_HOST`); Triton too, with model control mode",
        "  `none` (no repository or load/unload API) — tests/server/test_reliability.py,",
        "  tests/export/test_triton.py.",
        "- Optional API key (`TWELVE_API_KEY`), X-API-Key or Bearer, compared with `hmac.compare_digest`;",
        "  probes (/healthz, /readyz) and the page need none.",
        "- No model-loading, repository or configuration endpoint on the data plane; no URL input (images",
        "  are bytes, uploads or ids of images already sent), so nothing to fetch and no SSRF.",
        "- Weights: safetensors; every `torch.load` passes `weights_only=True` (a test scans the code).",
        "  Answer-list pickles and the reference dataset caches go through the restricted unpickler",
        "  vilbert/safe_pickle.py (lists, dicts, strings, numbers only; any other class is refused).",
        "  Region-feature LMDB values (regions/store.py, server/region_cache.py) are read with plain",
        "  `pickle.loads`: an LMDB store is trusted like code, so only open stores you wrote or trust.",
        "- Request limits: body cap (413 before reading it), open-request cap (503 + Retry-After), queue",
        "  (429 + Retry-After), body timeout (408), deadline (504), header size cap (64 KB), image",
        "  decoding hardened in regions/decode.py (formats sniffed before parsing, pixel cap before decode).",
    ]
    if a.get("ran"):
        lines.append(
            f"- `pip-audit` (pinned in the dev extras): {a['packages']} packages, "
            f"**{a['audited']} audited**, "
            f"{a['skipped']} skipped"
            + (f' ("{a["skip_reason_example"]}")' if a["skipped"] else "")
            + (f"; vulnerable: {a['vulnerable']}" if a["vulnerable"] else "; no known vulnerability found")
            + "."
        )
        if a["skipped"] and a["audited"] == 0:
            lines += [
                "  From this workplace pip-audit cannot reach its vulnerability service (PyPI's JSON API",
                "  is not reachable, only the package index), so **no package was actually audited**; it",
                "  is therefore not part of `make lint`. Run `make audit` on a machine with network access.",
            ]
    else:
        lines.append(f"- `pip-audit` could not run here: {a.get('error', 'not run')}.")
    if r.get("errors"):
        lines += ["", "## Sections that failed in this run", ""]
        lines += [f"- {name}: `{err[:500]}`" for name, err in r["errors"].items()]
    lines += ["", "## Raw results", "", "```json", json.dumps(r, indent=1, default=str)[:20000], "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="shorter runs (about a third of the time)")
    p.add_argument("--out", type=Path, default=DOC)
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["overload", "triton", "drain", "fuzz", "training", "audit"],
        help="sections to leave out",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from testkit.tiny_gateway import build_tiny_checkpoint

    started = time.monotonic()
    results: dict = {"quick": args.quick, "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="twelve-reliability-") as tmp:
        work = Path(tmp)
        checkpoint = build_tiny_checkpoint(work / "checkpoint")
        steps = [
            ("overload", lambda: overload(checkpoint, 5.0 if args.quick else 20.0, 4, 0.05)),
            ("triton", lambda: triton_faults(checkpoint, work / "triton")),
            ("drain", lambda: drain(checkpoint, 6 if args.quick else 12)),
            ("fuzz_bad", lambda: fuzz_and_bad_inputs(checkpoint, work / "fuzz", 8 if args.quick else 40)),
            (
                "training",
                lambda: training(work / "training", 20 if args.quick else 30, 0 if args.quick else 4),
            ),
            ("audit", pip_audit),
        ]
        for name, run in steps:
            if name.split("_")[0] in args.skip:
                continue
            log(f"{name} ...")
            t = time.monotonic()
            try:
                results[name] = run()
            except Exception as exc:  # one broken section must not lose the others' numbers
                import traceback

                traceback.print_exc()
                results.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            log(f"{name} done in {time.monotonic() - t:.0f} s")
    results["seconds"] = time.monotonic() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results))
    log(f"wrote {args.out} ({results['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
