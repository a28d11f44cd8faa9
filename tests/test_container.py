"""The container files (Dockerfile, Dockerfile.cpu, compose.yaml, .dockerignore, docker/start.sh).

No Docker engine exists on the machines this project is developed on, so the images are never built
here.  Instead: (a) docker/start.sh runs OUTSIDE Docker with Dockerfile.cpu's environment (paths and
ports pointed at a tiny model) up to a ready gateway that answers /vqa, then SIGTERM stops it and
everything it started; (b) static checks keep each defect the first Dockerfile had from coming back.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from bootstrap.layout import ROOT, Paths
from export import triton_server
from server.settings import Settings

START = ROOT / "docker" / "start.sh"
DOCKERFILES = {"gpu": ROOT / "Dockerfile", "cpu": ROOT / "Dockerfile.cpu"}
COMPOSE = ROOT / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"
WORKDIR = "/opt/twelve-in-one"

# The setting each `make serve` output is passed in (bootstrap/layout.py -> the gateway's TWELVE_*).
LAYOUT_ENV = {
    "TWELVE_CHECKPOINT": Paths().checkpoint,
    "TWELVE_DETECTOR_WEIGHTS": Paths().detector,
    "TWELVE_MODEL_REPOSITORY": Paths().repository,
    "TWELVE_EXAMPLES_DIR": Paths().examples,
    "TWELVE_CACHE_DIR": Paths().cache,
    "TWELVE_DATA_DIR": Paths().galleries,
}
PORT_ENV = {
    "TWELVE_TRITON_HTTP_PORT": triton_server.DEFAULT_HTTP_PORT,
    "TWELVE_TRITON_GRPC_PORT": triton_server.DEFAULT_GRPC_PORT,
    "TWELVE_TRITON_METRICS_PORT": triton_server.DEFAULT_METRICS_PORT,
}


# --- parsing ---------------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#"):  # comments, also between continued lines
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            lines.append(current.strip())
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerfile_env(path: Path) -> dict[str, str]:
    env = {}
    for name, args in dockerfile_instructions(path):
        if name == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def start_defaults() -> dict[str, str]:
    """docker/start.sh's `: "${NAME:=default}"` lines."""
    return dict(re.findall(r'^: "\$\{(\w+):=([^}]*)\}"', START.read_text(), re.M))


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins, `!` re-includes, a pattern that
    matches a folder excludes what is inside it, and a leading `**/` matches at any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    anywhere = ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!")
        candidates = anywhere if body.startswith("**/") else prefixes
        if any(fnmatch.fnmatchcase(c, body.removeprefix("**/")) for c in candidates):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    return [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"]


# --- (b) static checks -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfile_paths_are_what_make_serve_writes(kind):
    env = dockerfile_env(DOCKERFILES[kind])
    for name, built in LAYOUT_ENV.items():
        assert env.get(name) == str(built.relative_to(ROOT)), (kind, name, env.get(name))
    assert env["TWELVE_CHECKPOINT"] == "runs/demo/model"  # not runs/demo/checkpoint


def test_start_script_defaults_are_what_make_serve_writes_and_the_launcher_ports():
    defaults = start_defaults()
    for name, built in LAYOUT_ENV.items():
        assert defaults[name] == str(built.relative_to(ROOT)), name
    for name, port in PORT_ENV.items():
        assert int(defaults[name]) == port, name


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_triton_url_is_the_launchers_http_port_the_client_speaks(kind):
    env = dockerfile_env(DOCKERFILES[kind])
    for name, port in PORT_ENV.items():
        assert int(env[name]) == port, (kind, name)
    # The gateway's client is tritonclient.http: its URL must be Triton's HTTP port, not gRPC's.
    client = (ROOT / "server" / "triton_backend.py").read_text()
    assert "import tritonclient.http" in client and "tritonclient.grpc" not in client
    default_url = Settings.model_fields["triton_url"].default
    assert default_url == f"127.0.0.1:{triton_server.DEFAULT_HTTP_PORT}"
    assert "TWELVE_TRITON_URL" not in env or env["TWELVE_TRITON_URL"].endswith(
        f":{env['TWELVE_TRITON_HTTP_PORT']}"
    )
    script = START.read_text()
    assert 'export TWELVE_TRITON_URL="127.0.0.1:$TWELVE_TRITON_HTTP_PORT"' in script
    assert '--http-port "$TWELVE_TRITON_HTTP_PORT"' in script
    assert re.search(r'-m server --backend triton --triton-url "\$1"', script)
    # The gateway's own port never takes one of Triton's, and it is the one the image exposes.
    assert int(env["TWELVE_PORT"]) not in PORT_ENV.values()
    exposed = [args for name, args in dockerfile_instructions(DOCKERFILES[kind]) if name == "EXPOSE"]
    assert exposed == [env["TWELVE_PORT"]]


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_dockerfiles_start_through_the_script(kind):
    instructions = dockerfile_instructions(DOCKERFILES[kind])
    cmd = [json.loads(args) for name, args in instructions if name == "CMD"]
    assert cmd == [["docker/start.sh"]]
    workdir = [args for name, args in instructions if name == "WORKDIR"]
    assert workdir == [WORKDIR]
    env = dockerfile_env(DOCKERFILES[kind])
    assert env["TWELVE_HOST"] == "0.0.0.0"  # reachable from outside the container; Triton stays loopback


def test_start_script_passes_detector_weights_and_is_strict_bash():
    script = START.read_text()
    assert os.access(START, os.X_OK)
    assert script.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in script
    subprocess.run(["bash", "-n", str(START)], check=True)
    assert '--detector-weights "$TWELVE_DETECTOR_WEIGHTS"' in script  # the gateway runs the detector
    assert '--detector "$TWELVE_DETECTOR_WEIGHTS"' in script  # the export's detector graphs
    assert "-m export.triton_server" in script  # Triton through the project launcher (loopback)
    assert "trap on_signal TERM INT" in script


def test_gpu_image_installs_tensorrt_since_it_offers_it():
    text = DOCKERFILES["gpu"].read_text()
    offered = "tensorrt" in text.lower()
    installs = re.search(r"pip install[^\n]*tensorrt[\w-]*==", text)
    assert not offered or installs, "the GPU Dockerfile offers TensorRT without installing it"
    assert dockerfile_env(DOCKERFILES["gpu"])["TWELVE_TRITONSERVER"] == "/opt/tritonserver/bin/tritonserver"


def test_cpu_image_serves_the_bundled_triton_with_the_python_backend():
    env = dockerfile_env(DOCKERFILES["cpu"])
    assert env["TWELVE_EXPORT_BACKEND"] == "python"  # the nvidia-pytriton Triton's only backend
    assert env["TWELVE_TRITONSERVER"] == "" and env["TWELVE_TRITON_BACKEND_DIRECTORY"] == ""
    assert "tensorrt" not in DOCKERFILES["cpu"].read_text().lower()
    (base,) = [args for name, args in dockerfile_instructions(DOCKERFILES["cpu"]) if name == "FROM"]
    assert base.startswith("python:3.11")


def test_every_container_file_says_no_docker_engine_exists_here():
    for path in (*DOCKERFILES.values(), COMPOSE, DOCKERIGNORE, START):
        head = " ".join(path.read_text().splitlines()[:12])
        assert "no docker engine exists" in head.lower(), path


def test_dockerignore_keeps_local_state_out_and_the_code_in():
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        "data/synthetic/summary.md",
        "artifacts/detector/synthetic-detector.safetensors",
        "runs/demo/model/model.safetensors",
        "model_repository/trunk/config.pbtxt",
        "model_repository/export.json",
        ".model_repository.work/exported/trunk.onnx",
        ".git/HEAD",
        "export/__pycache__/triton_server.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
    ):
        assert dockerignored(path, patterns), path
    for path in (
        "docker/start.sh",
        "pyproject.toml",
        "export/triton_server.py",
        "server/static/index.html",
        "model_repository/README.md",
    ):
        assert not dockerignored(path, patterns), path


def test_compose_runs_triton_and_gateway_from_one_image_sharing_the_repository():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"triton", "gateway"}
    triton, gateway = services["triton"], services["gateway"]
    assert triton["image"] == gateway["image"]
    assert triton["command"] == ["docker/start.sh", "triton"]
    assert gateway["command"] == ["docker/start.sh", "gateway"]
    # Triton binds 127.0.0.1: the gateway must share its network namespace to reach it.
    assert gateway["network_mode"] == "service:triton"
    assert gateway["depends_on"]["triton"]["condition"] == "service_healthy"
    assert triton["healthcheck"]["test"] == ["CMD", "docker/start.sh", "health"]
    port = dockerfile_env(DOCKERFILES["cpu"])["TWELVE_PORT"]
    assert [p.rsplit(":", 1)[1] for p in triton["ports"]] == [port]
    # The repository volume is mounted ABOVE the repository (the export swaps a sibling directory in).
    for service in (triton, gateway):
        repository = Path(WORKDIR) / service["environment"]["TWELVE_MODEL_REPOSITORY"]
        mounts = {v.split(":")[0]: Path(v.split(":")[1]) for v in service["volumes"]}
        target = mounts["model-repository"]
        assert repository.parent == target and repository != target
    assert set(compose["volumes"]) >= {"model-repository"}


def test_start_script_stops_with_one_line_when_the_detector_is_missing(tmp_path):
    env = dict(os.environ, TWELVE_DETECTOR_WEIGHTS=str(tmp_path / "none.safetensors"))
    env["TWELVE_CHECKPOINT"] = str(tmp_path / "no-checkpoint")
    done = subprocess.run([str(START)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: no detector weights at {tmp_path}")
    done = subprocess.run([str(START), "bogus"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown mode 'bogus'" in done.stderr


# --- (a) the start script, outside Docker, on a tiny model ------------------------------------------------
def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _descendants(pid: int) -> dict[int, str]:
    out, todo = {}, [pid]
    while todo:
        for child in _children(todo.pop()):
            try:
                cmd = (Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")).decode()
            except OSError:
                continue
            out[child] = cmd
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _get(url: str, timeout: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny checkpoint (testkit) and a tiny random-weight detector whose features fit it."""
    from regions.detector import build_detector
    from regions.weights import save_detector
    from testkit.tiny_gateway import build_tiny_checkpoint, tiny_detector_preset

    root = tmp_path_factory.mktemp("container-model")
    checkpoint = build_tiny_checkpoint(root / "runs" / "demo" / "model")
    detector, _ = save_detector(
        build_detector(tiny_detector_preset()),
        root / "artifacts" / "detector" / "synthetic-detector.safetensors",
    )
    return checkpoint, detector


@pytest.mark.slow
def test_start_script_serves_vqa_through_triton_and_stops_on_sigterm(tiny_model, tmp_path):
    from testkit.tiny_gateway import scene_png, task_body
    from vilbert.tasks import TASKS

    checkpoint, detector = tiny_model
    image_env = dockerfile_env(DOCKERFILES["cpu"])
    ports = {name: str(triton_server.free_port()) for name in (*PORT_ENV, "TWELVE_PORT")}
    overrides = {
        "TWELVE_CHECKPOINT": str(checkpoint),
        "TWELVE_DETECTOR_WEIGHTS": str(detector),
        "TWELVE_MODEL_REPOSITORY": str(tmp_path / "serving" / "model_repository"),
        "TWELVE_EXAMPLES_DIR": str(tmp_path / "examples"),  # none: the page serves without examples
        "TWELVE_CACHE_DIR": str(tmp_path / "region-cache"),
        "TWELVE_DATA_DIR": str(tmp_path / "galleries"),
        "TWELVE_HOST": "127.0.0.1",  # not 0.0.0.0 on a shared development machine
        **ports,
    }
    assert set(overrides) <= set(image_env), "the test sets a variable the image does not"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TWELVE_")}
    env.update(image_env)
    env.update(overrides)
    if not (ROOT / ".venv" / "bin" / "python").exists():
        env["TWELVE_PYTHON"] = sys.executable
    log_path = tmp_path / "start.log"
    base = f"http://127.0.0.1:{ports['TWELVE_PORT']}"
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [str(START)], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    started: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 900  # export + Triton + gateway on 2 busy cores
        while _get(f"{base}/readyz") != 200:
            assert process.poll() is None, log_path.read_text()[-6000:]
            assert time.monotonic() < deadline, log_path.read_text()[-6000:]
            time.sleep(1)
        ready_s = time.monotonic() - t0
        from export.versions import read_manifest

        manifest = read_manifest(Path(overrides["TWELVE_MODEL_REPOSITORY"]))
        assert manifest["backend"] == "python" and manifest["precision"] == "fp32"

        body = json.dumps(task_body(TASKS[0], scene_png(3))).encode()
        request = urllib.request.Request(
            f"{base}/vqa", data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as r:
            assert r.status == 200
            answer = json.loads(r.read())
        assert answer["answers"], answer
        text = log_path.read_text()
        assert "backend: triton (Triton at 127.0.0.1:" + ports["TWELVE_TRITON_HTTP_PORT"] + ")" in text
        assert _get(f"http://127.0.0.1:{ports['TWELVE_TRITON_HTTP_PORT']}/v2/health/ready") == 200

        started = _descendants(process.pid)
        commands = " | ".join(started.values())
        assert "-m export.triton_server" in commands and "tritonserver" in commands
        assert "-m server --backend triton" in commands
        gateway = [pid for pid, cmd in started.items() if "-m server --backend triton" in cmd]
        detector_flag = f"--detector-weights {detector}"
        assert all(detector_flag in started[pid] for pid in gateway)

        t_stop = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0, log_path.read_text()[-6000:]
        stop_s = time.monotonic() - t_stop
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {pid: cmd for pid, cmd in started.items() if _alive(pid)}
        assert not left, f"left running after SIGTERM: {left}"
        assert _get(f"{base}/healthz", timeout=2) == 0
        lines = [line for line in log_path.read_text().splitlines() if line.startswith("start.sh:")]
        print("\n".join(lines) + f"\nready after {ready_s:.0f} s, stopped {stop_s:.1f} s after SIGTERM")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
