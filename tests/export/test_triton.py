"""The issue's main test: export tiny, start the REAL bundled tritonserver on the generated
repository, send every one of the twelve tasks through tritonclient, compare with PyTorch."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from export.parity import FP32_TOLERANCE, task_inputs, torch_task_logits
from export.runtime import OnnxGraphs
from export.triton_server import HOST, free_port, repository_models
from tests.export.triton_calls import infer, request, task_logits
from vilbert.checkpoint import load_checkpoint
from vilbert.contract import DETECTOR_BACKBONE, DETECTOR_BOX_HEAD
from vilbert.tasks import TASKS

tritonclient_http = pytest.importorskip("tritonclient.http")
tritonclient_grpc = pytest.importorskip("tritonclient.grpc")
pytest.importorskip("pytriton")

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(triton_server):
    return triton_server  # the session's Triton (tests/export/conftest.py)


def test_every_task_through_triton_matches_pytorch(server, tiny_export):
    graphs = OnnxGraphs.from_repository(tiny_export.repository)
    model = load_checkpoint(tiny_export.inputs.checkpoint).model.eval()
    http = tritonclient_http.InferenceServerClient(server.http_url)
    grpc = tritonclient_grpc.InferenceServerClient(server.grpc_url)
    for i, task in enumerate(TASKS):
        feeds = task_inputs(graphs.spec, task, np.random.default_rng(1000 + task.task_id))
        # Both protocols: gRPC for every other task.
        client, module = (grpc, tritonclient_grpc) if i % 2 else (http, tritonclient_http)
        got = task_logits(client, module, graphs.spec, task, feeds)
        ref = torch_task_logits(model, task, feeds)
        assert got.shape == ref.shape, task.slug
        diff = float(np.abs(got - ref).max())
        assert diff <= FP32_TOLERANCE, f"{task.slug}: Triton vs PyTorch max |diff| {diff:.3g}"


def test_detector_graphs_through_triton(server, tiny_export):
    from regions.weights import load_detector

    graphs = OnnxGraphs.from_repository(tiny_export.repository)
    detector = load_detector(tiny_export.inputs.detector).eval()
    http = tritonclient_http.InferenceServerClient(server.http_url)
    image = np.random.default_rng(0).standard_normal((1, 3, 160, 224)).astype(np.float32)
    pyramid = infer(http, tritonclient_http, graphs.spec.graph(DETECTOR_BACKBONE), {"images": image})
    with torch.no_grad():
        ref = list(detector.backbone(torch.from_numpy(image)).values())
    for got, want in zip(pyramid.values(), ref):
        assert np.abs(got - want.numpy()).max() <= FP32_TOLERANCE
    box_graph = graphs.spec.graph(DETECTOR_BOX_HEAD)
    boxes = np.random.default_rng(1).standard_normal((7, box_graph.inputs[0].shape[1])).astype(np.float32)
    got = infer(http, tritonclient_http, box_graph, {"box_inputs": boxes})
    local = graphs.run(DETECTOR_BOX_HEAD, {"box_inputs": boxes})
    assert all(np.abs(got[k] - local[k]).max() <= FP32_TOLERANCE for k in local)


def test_concurrent_requests_are_batched_and_answered_individually(server, tiny_export):
    """The trunk's dynamic batcher merges equal-shaped requests; each still gets its own rows.

    gRPC's async calls are really concurrent (the HTTP client's gevent pool sends them one by one).
    """
    graphs = OnnxGraphs.from_repository(tiny_export.repository)
    feeds = [task_inputs(graphs.spec, TASKS[0], np.random.default_rng(seed), batch=1) for seed in range(16)]
    expected = [graphs.trunk(f)["fused"] for f in feeds]
    grpc = tritonclient_grpc.InferenceServerClient(server.grpc_url)
    before = _trunk_stats(grpc)
    results: dict[int, object] = {}
    finished = threading.Event()

    def done(index: int, result, error) -> None:
        results[index] = error or result
        if len(results) == len(feeds):
            finished.set()

    for i, f in enumerate(feeds):
        inputs, outputs = request(tritonclient_grpc, graphs.spec.trunk, f)
        grpc.async_infer("trunk", inputs, functools.partial(done, i), outputs=outputs)
    assert finished.wait(60)
    for i, want in enumerate(expected):
        got = results[i].as_numpy("fused")
        assert np.abs(got - want).max() <= FP32_TOLERANCE
    deadline = time.monotonic() + 10  # the statistics can trail the last response by a moment
    while True:
        after = _trunk_stats(grpc)
        inferences, executions = (after[k] - before[k] for k in ("inference_count", "execution_count"))
        if inferences >= 16 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert inferences == 16
    assert executions < inferences, "no two requests were ever batched"


def _trunk_stats(client) -> dict[str, int]:
    stats = client.get_inference_statistics("trunk", as_json=True)["model_stats"][0]
    return {k: int(stats[k]) for k in ("inference_count", "execution_count")}


def test_launcher_binds_loopback_and_keeps_the_repository_api_to_key_holders(server):
    """Explicit model control (the version switch loads and unloads), but only with the launcher's key."""
    from export.versions import CONTROL_HEADER, CONTROL_KEY_FILE

    command = " ".join(server.command(Path("tritonserver"), Path("/backends")))
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--model-control-mode=explicit"):
        assert flag in command
    assert f"--http-restricted-api=model-repository:{CONTROL_HEADER}=" in command
    url = f"http://{server.http_url}/v2/repository/index"
    for headers in ({}, {CONTROL_HEADER: "wrong"}):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(urllib.request.Request(url, b"{}", headers, method="POST"), timeout=5)
    key = (server.repository / CONTROL_KEY_FILE).read_text().strip()
    assert key == server.control_key and (server.repository / CONTROL_KEY_FILE).stat().st_mode & 0o077 == 0
    request = urllib.request.Request(url, b"{}", {CONTROL_HEADER: key}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        index = json.loads(r.read())
    assert {m["name"] for m in index if m.get("state") == "READY"} >= {"trunk", "head_answer"}
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/trunk/ready", timeout=5) as r:
        assert r.status == 200


def test_cli_starts_waits_for_every_model_and_stops_on_sigterm(tiny_export):
    ports = [free_port() for _ in range(3)]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "export.triton_server",
            "--repository",
            str(tiny_export.repository),
            "--http-port",
            str(ports[0]),
            "--grpc-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if line.startswith("ready:") or not line:
                break
        assert lines[-1].startswith("ready:"), "".join(lines)
        for name in repository_models(tiny_export.repository):
            with urllib.request.urlopen(f"http://{HOST}:{ports[0]}/v2/models/{name}/ready", timeout=5) as r:
                assert r.status == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append((int(stat.parent.name), cmd))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_serve_never_leaves_tritonserver_behind(tiny_inputs, tiny_export, tmp_path, sig):
    """`make serve`'s serve step (Triton + gateway in one process): stopping it with SIGTERM (after
    uvicorn's drain) or killing it with SIGKILL also ends tritonserver and its stubs."""
    port = free_port()
    code = (
        "import sys; from pathlib import Path; from bootstrap.pipeline import Paths, serve\n"
        "p = Paths(world=Path(sys.argv[1]), detector=Path(sys.argv[2]), checkpoint=Path(sys.argv[3]),"
        " repository=Path(sys.argv[4]), cache=Path(sys.argv[5]), galleries=Path(sys.argv[7]))\n"
        "serve(p, 'triton', '127.0.0.1', int(sys.argv[6]))\n"
    )
    args = [tiny_inputs.world, tiny_inputs.detector, tiny_inputs.checkpoint, tiny_export.repository]
    args += [tmp_path / "cache", port, tmp_path / "galleries"]  # each run its own gallery store
    process = subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        tritons = [pid for pid, cmd in _children(process.pid) if "tritonserver" in cmd]
        assert len(tritons) == 1
        stubs = [pid for pid, _ in _children(tritons[0])]
        assert stubs  # one python-backend stub per model instance
        process.send_signal(sig)
        process.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(p) for p in [*tritons, *stubs]):
            time.sleep(0.2)
        assert not [p for p in [*tritons, *stubs] if _alive(p)], "tritonserver outlived the gateway"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
