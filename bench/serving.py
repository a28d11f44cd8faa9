"""End-to-end serving figures: gateways in their own processes, measured over HTTP side by side.

What runs (all on the served demo model: `model_repository`, the demo checkpoint's answer
vocabularies, the synthetic detector):

* ``local``: `python -m server --backend local` (onnxruntime in the gateway process);
* ``local_padded``: the same with ``TWELVE_PAD_TO_TASK_MAX=1`` (every request padded to its task's
  maximum text length and region count, as the reference code pads);
* ``triton``: `python -m server --backend triton` in front of the bundled tritonserver
  (`export.triton_server.TritonServer`, python-backend models running onnxruntime);
* ``in_process``: the same `Service` code with an `OnnxBackend`, called directly in this process (no
  HTTP, no second process): what the serving layers add is measured against it.

The workload is the synthetic VQA test split (its questions, its images: region counts as the synthetic
detector finds them).  Images are registered first (POST /images), so model timings have features
cached; the cold/cached comparison sends new image bytes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.timing import Timing


@dataclass(frozen=True)
class ServedModel:
    repository: Path
    checkpoint: Path
    detector: Path
    data_root: Path

    def missing(self) -> list[str]:
        paths = (self.repository / "trunk", self.checkpoint, self.detector, self.data_root)
        return [str(p) for p in paths if not p.exists()]


@dataclass(frozen=True)
class Question:
    image: Path
    question: str


def vqa_test_questions(data_root: Path, images: int) -> list[Question]:
    """Questions of the synthetic VQA test split on its first `images` images (all their questions)."""
    vqa = data_root / "datasets" / "VQA"
    questions = json.loads((vqa / "v2_OpenEnded_mscoco_test2015_questions.json").read_text())["questions"]
    folder = data_root / "images" / "coco" / "test2015"
    by_image: dict[int, list[str]] = {}
    for q in questions:
        by_image.setdefault(q["image_id"], []).append(q["question"])
    out = []
    for image_id in sorted(by_image)[:images]:
        path = folder / f"COCO_test2015_{image_id:012d}.jpg"
        out += [Question(path, text) for text in by_image[image_id]]
    return out


def cold_images(data_root: Path, count: int) -> list[Path]:
    """Images the bench never registers (VQA train images): each is new to every gateway."""
    folder = data_root / "images" / "coco" / "train2014"
    return sorted(folder.glob("*.jpg"))[:count]


# ------------------------------------------------------------------------------------------ processes


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mb(pid: int, children: bool = True) -> float:
    """Peak resident memory (VmHWM) of a process, plus its descendants' (Triton's python stubs)."""
    pids = [pid] + (_descendants(pid) if children else [])
    total = 0.0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class Gateway:
    name: str
    url: str
    process: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.process.pid)


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"gateway exited ({process.returncode}); log {log}:\n{log.read_text()[-2000:]}"
            )
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"gateway at {url} not ready after {timeout:.0f} s; log {log}")


@contextlib.contextmanager
def gateway(name: str, model: ServedModel, work: Path, threads: int, **settings: str) -> Iterator[Gateway]:
    """`python -m server` in a child process with `settings` as TWELVE_* variables."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]),
        "TWELVE_MAX_QUEUE": "64",
        "TWELVE_MAX_OPEN_REQUESTS": "128",
        "TWELVE_DEADLINE_S": "120",
        "TWELVE_CACHE_ENTRIES": "4096",
        **{f"TWELVE_{k.upper()}": str(v) for k, v in settings.items()},
    }
    cmd = [
        sys.executable,
        "-m",
        "server",
        "--port",
        str(port),
        "--checkpoint",
        str(model.checkpoint),
        "--model-repository",
        str(model.repository),
        "--detector-weights",
        str(model.detector),
        "--threads",
        str(threads),
    ]
    work.mkdir(parents=True, exist_ok=True)
    log = work / f"gateway-{name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        yield Gateway(name, url, process, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------------------ requests


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


class Client:
    """One keep-alive HTTP client per thread."""

    def __init__(self, url: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, timeout=180.0)

    def post(self, path: str, body: dict) -> tuple[float, dict]:
        t0 = time.perf_counter()
        r = self.http.post(path, json=body)
        elapsed = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
        return elapsed, r.json()

    def close(self) -> None:
        self.http.close()


def register(client: Client, images: list[Path]) -> tuple[dict[Path, str], Timing]:
    """POST /images for each image: (path -> image_id, detector-path latencies)."""
    ids, samples = {}, []
    for path in images:
        elapsed, body = client.post("/images", {"image": {"base64": _b64(path)}})
        ids[path] = body["image_id"]
        samples.append(elapsed)
    return ids, Timing(tuple(samples))


def vqa_body(q: Question, image_ids: dict[Path, str]) -> dict:
    return {"image": {"image_id": image_ids[q.image]}, "question": q.question, "dataset": "vqa", "top_k": 5}


def closed_loop(url: str, bodies: list[dict], concurrency: int, seconds: float) -> dict:
    """`concurrency` clients, each sending its next /vqa when the last is answered, for `seconds`."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def worker(k: int) -> None:
        client = Client(url)
        i = k
        try:
            while time.perf_counter() < stop:
                try:
                    elapsed, _ = client.post("/vqa", bodies[i % len(bodies)])
                except Exception as exc:  # counted, not hidden
                    with lock:
                        errors.append(str(exc)[:200])
                    continue
                with lock:
                    latencies.append(elapsed)
                i += concurrency
        finally:
            client.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    timing = Timing(tuple(latencies)) if latencies else None
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": errors[:3],
        "seconds": wall,
        "answers_per_s": len(latencies) / wall,
        "p50_s": timing.percentile(50) if timing else None,
        "p99_s": timing.percentile(99) if timing else None,
    }


def cold_vs_cached(client: Client, paths: list[Path]) -> dict:
    """/vqa about each new image (decode + detector + model), then about the same image again: sent as
    the same bytes (found by content hash) and by the `image_id` POST /images returns."""
    cold, again, by_id = [], [], []
    for path in paths:
        body = {
            "image": {"base64": _b64(path)},
            "question": "what color is the large object?",
            "dataset": "vqa",
        }
        cold.append(client.post("/vqa", body)[0])
        again.append(client.post("/vqa", body)[0])
        _, info = client.post("/images", {"image": body["image"]})
        by_id.append(client.post("/vqa", {**body, "image": {"image_id": info["image_id"]}})[0])
    t_cold, t_again, t_id = Timing(tuple(cold)), Timing(tuple(again)), Timing(tuple(by_id))
    return {
        "images": len(paths),
        "cold_s": t_cold.as_dict(),
        "cached_same_bytes_s": t_again.as_dict(),
        "cached_image_id_s": t_id.as_dict(),
        "ratio_cold_over_cached_bytes": t_cold.median / t_again.median,
        "ratio_cold_over_cached_id": t_cold.median / t_id.median,
    }


# ------------------------------------------------------------------------------------------ in process


class InProcess:
    """The gateway's Service with an OnnxBackend, called directly (no HTTP)."""

    def __init__(self, model: ServedModel, threads: int) -> None:
        from server import schemas as s
        from server.loading import load_components
        from server.metrics import Metrics
        from server.region_cache import RegionCache
        from server.service import Service
        from server.settings import BackendKind, Settings

        settings = Settings(
            backend=BackendKind.LOCAL,
            checkpoint=model.checkpoint,
            model_repository=model.repository,
            detector_weights=model.detector,
            threads=threads,
            cache_entries=4096,
        )
        c = load_components(settings)
        self.schemas = s
        self.backend = c.backend
        self.service = Service(
            settings, c.backend, c.extractor, c.tokenizer, c.answers, Metrics(), RegionCache(4096, None, 0)
        )

    def register(self, images: list[Path]) -> None:
        for path in images:
            self.service.images.register(self.schemas.ImagesRequest(image={"base64": _b64(path)}), {})

    def vqa(self, body: dict) -> float:
        t0 = time.perf_counter()
        self.service.vqa(self.schemas.VQARequest(**body), {})
        return time.perf_counter() - t0

    def graphs_only(self, body: dict) -> float:
        """Just the two graph calls of the same request (inputs prepared beforehand)."""
        from server.inference import batch_of
        from vilbert.contract import FUSED, TRUNK
        from vilbert.tasks import task_for_dataset

        svc = self.service
        task = task_for_dataset("vqa", "vqa")
        regions = svc.cache.get(body["image"]["image_id"])[0]
        ids, mask = svc.inference.tokens(body["question"], task)
        padded = batch_of([regions], task.max_regions)
        inputs = {
            "input_ids": ids,
            "attention_mask": mask,
            "task_ids": np.full((1,), task.task_id, np.int64),
            "region_features": padded.features,
            "region_locations": padded.locations,
            "region_mask": padded.mask,
        }
        t0 = time.perf_counter()
        fused = self.backend.infer(TRUNK, inputs)[FUSED]
        self.backend.infer(f"head_{task.head.value}", {FUSED: fused})
        return time.perf_counter() - t0


def input_sizes(inproc: InProcess, bodies: list[dict]) -> dict:
    """Text tokens and regions per request as served, vs the task maximum the reference pads to."""
    from vilbert.tasks import task_for_dataset

    svc, task = inproc.service, task_for_dataset("vqa", "vqa")
    tokens = [svc.inference.tokens(b["question"], task)[0].shape[1] for b in bodies]
    regions = [
        min(svc.cache.get(b["image"]["image_id"])[0].boxes.shape[0] + 1, task.max_regions) for b in bodies
    ]
    return {
        "text_tokens_mean": float(np.mean(tokens)),
        "regions_mean": float(np.mean(regions)),
        "task_max_text_tokens": task.max_text_tokens,
        "task_max_regions": task.max_regions,
    }


# ------------------------------------------------------------------------------------------ the run


def run(model: ServedModel, work: Path, *, quick: bool, threads: int, log=print) -> dict:
    from export.triton_server import TritonServer

    n_images = 8 if quick else 30
    n_cold = 4 if quick else 12
    seconds = 6.0 if quick else 15.0
    questions = vqa_test_questions(model.data_root, n_images)
    images = sorted({q.image for q in questions})
    colds = cold_images(model.data_root, n_cold)
    out: dict = {"workload": f"synthetic VQA test split: {len(questions)} questions on {len(images)} images"}
    log(f"serving: {out['workload']}; starting tritonserver and gateways ...")

    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        triton = stack.enter_context(TritonServer(model.repository, log_file=work / "tritonserver.log"))
        out["triton_start_s"] = time.perf_counter() - t0
        gws = {
            "local": stack.enter_context(gateway("local", model, work, threads)),
            "local_padded": stack.enter_context(
                gateway("local_padded", model, work, threads, pad_to_task_max="1")
            ),
            "triton": stack.enter_context(
                gateway(
                    "triton", model, work, threads, backend="triton", triton_url=triton.http_url, workers="4"
                )
            ),
        }
        inproc = InProcess(model, threads)
        clients = {name: Client(g.url) for name, g in gws.items()}
        stack.callback(lambda: [c.close() for c in clients.values()])

        # Cold image (detector on the request path) vs an image seen before, on the local gateway.
        log("  cold vs cached image ...")
        out["cold_vs_cached"] = cold_vs_cached(clients["local"], colds)

        log(f"  registering {len(images)} images on each gateway ...")
        ids: dict[Path, str] = {}
        register_times = {}
        for name, client in clients.items():
            ids, t = register(client, images)
            register_times[name] = t.as_dict()
        inproc.register(images)
        out["register_images_s"] = register_times
        bodies = [vqa_body(q, ids) for q in questions]
        out["input_sizes"] = input_sizes(inproc, bodies)

        # Concurrency 1, side by side: every request goes to each path in turn.
        log("  latency at concurrency 1 (side by side) ...")
        paths = {
            "gateway_local": lambda b: clients["local"].post("/vqa", b)[0],
            "gateway_triton": lambda b: clients["triton"].post("/vqa", b)[0],
            "gateway_local_padded": lambda b: clients["local_padded"].post("/vqa", b)[0],
            "in_process_service": inproc.vqa,
            "in_process_graphs": inproc.graphs_only,
        }
        for fn in paths.values():  # warm-up (first calls at new shapes)
            for b in bodies[:3]:
                fn(b)
        samples: dict[str, list[float]] = {k: [] for k in paths}
        rounds = 1 if quick else 2
        for _ in range(rounds):
            for b in bodies:
                for name, fn in paths.items():
                    samples[name].append(fn(b))
        lat = {k: Timing(tuple(v)) for k, v in samples.items()}
        out["latency_c1"] = {
            k: t.as_dict() | {"p50_s": t.percentile(50), "p99_s": t.percentile(99)} for k, t in lat.items()
        }
        base = lat["in_process_graphs"].median
        out["overhead"] = {
            "triton_over_in_process_graphs": lat["gateway_triton"].median / base - 1,
            "triton_over_in_process_service": lat["gateway_triton"].median / lat["in_process_service"].median
            - 1,
            "local_over_in_process_graphs": lat["gateway_local"].median / base - 1,
            "local_over_in_process_service": lat["gateway_local"].median / lat["in_process_service"].median
            - 1,
        }
        # Same questions, same order, alternating: answers/s is 1 / mean latency at concurrency 1.
        plain = sum(samples["gateway_local"])
        padded = sum(samples["gateway_local_padded"])
        out["padding"] = {
            "answers_per_s_as_needed": len(samples["gateway_local"]) / plain,
            "answers_per_s_padded_to_task_max": len(samples["gateway_local_padded"]) / padded,
            "ratio": padded / plain,
        }

        log("  concurrency 1/4/8/16 ...")
        levels = (1, 4, 8, 16)
        conc: dict = {}
        for level in levels:
            for name in ("local", "triton"):
                conc.setdefault(name, []).append(closed_loop(gws[name].url, bodies, level, seconds))
                log(
                    f"    {name:<7} c={level:<2} {conc[name][-1]['answers_per_s']:6.1f}/s  "
                    f"p50 {conc[name][-1]['p50_s'] * 1e3:6.0f} ms  p99 {conc[name][-1]['p99_s'] * 1e3:6.0f} "
                    "ms"
                )
        out["concurrency"] = conc

        # Answers/s of a loaded server (4 clients, closed loop), padded as needed vs to the task maximum;
        # short slices alternating between the two gateways so load from elsewhere hits both alike.
        log("  padding under load (4 clients, alternating) ...")
        loads: dict[str, list[dict]] = {"as_needed": [], "padded_to_task_max": []}
        for _ in range(2 if quick else 3):  # slices of `seconds` (15 s): shorter ones swung 1.49-1.67x
            loads["as_needed"].append(closed_loop(gws["local"].url, bodies, 4, seconds))
            loads["padded_to_task_max"].append(closed_loop(gws["local_padded"].url, bodies, 4, seconds))
        rate = {k: sum(r["requests"] for r in v) / sum(r["seconds"] for r in v) for k, v in loads.items()}
        out["padding_under_load"] = {
            "clients": 4,
            "answers_per_s_as_needed": rate["as_needed"],
            "answers_per_s_padded_to_task_max": rate["padded_to_task_max"],
            "ratio": rate["as_needed"] / rate["padded_to_task_max"],
            "errors": sum(r["errors"] for v in loads.values() for r in v),
        }

        out["peak_rss_mb"] = {
            **{f"gateway_{k}": g.peak_rss_mb() for k, g in gws.items()},
            "tritonserver_with_stubs": peak_rss_mb(triton._process.pid) if triton._process else None,
        }
        out["retrieval_fallback"] = exhaustive_retrieval(inproc, quick=quick, log=log)
    return out


def exhaustive_retrieval(inproc: InProcess, *, quick: bool, log=print) -> dict:
    """Exhaustive /retrieve over galleries of 100 and 1000 images, in process (features cached).

    Gallery images are the registered images' regions under new ids (the detector is not what is
    timed here, and 1000 distinct synthetic images would take minutes to detect)."""
    import dataclasses

    from server import schemas as s

    svc = inproc.service
    base = list(svc.cache.memory._items.values())
    sizes = (100,) if quick else (100, 1000)
    out = {}
    for size in sizes:
        gallery = [dataclasses.replace(base[i % len(base)], image_id=f"g{size}-{i}") for i in range(size)]
        for g in gallery:
            svc.cache.put(g)
        name = f"bench{size}"
        svc.galleries.register(name, s.GalleryRequest(images=[{"image_id": g.image_id} for g in gallery]), {})
        row = {}
        for mode in ("exhaustive", "two_stage"):
            try:
                req = s.RetrieveRequest(
                    caption="a red circle", gallery=name, dataset="coco", top_k=5, mode=mode
                )
            except Exception:
                continue
            try:
                t0 = time.perf_counter()
                svc.retrieve(req, {})
                row[f"{mode}_s"] = time.perf_counter() - t0
            except Exception as exc:  # e.g. two_stage on a model without a pre-filter
                row[f"{mode}_s"] = None
                row[f"{mode}_note"] = str(exc)[:160]
        out[str(size)] = row
        log(f"    retrieval gallery {size}: {row}")
    return out


# ------------------------------------------------------------------------------------------ base model


def base_detector(root: Path) -> Path:
    """The 12-in-1 region extractor's architecture (`regions.presets.VG_X152_FPN`: ResNeXt-152 32x8d
    FPN Faster R-CNN, images resized to 800-1333 px, 100 boxes of 2048-d features) with random weights.

    What it finds does not matter for timing: its cost is the official detector's (the proposal counts
    are fixed top-N settings, the 100 kept boxes are unconditional), so a question about a new image
    pays what it pays with the released detectron_model.pth loaded (`regions.maskrcnn_import`)."""
    import torch

    from regions.detector import build_detector
    from regions.presets import VG_X152_FPN
    from regions.weights import save_detector

    path = root / "detector-x152" / "detector.safetensors"
    if path.is_file():
        return path
    torch.manual_seed(0)
    save_detector(build_detector(VG_X152_FPN), path)
    return path


def base_repository(graphs, root: Path) -> Path:
    """A python-backend Triton repository of the cached `base` graphs (fp32, no detector graphs)."""
    import dataclasses

    from export.repository import write_repository
    from export.triton_config import Deployment
    from vilbert.contract import build_spec

    out = root / "model_repository"
    if (out / "active.json").is_file():
        return out
    spec = build_spec(graphs.config)
    # Graphs the spec gained after the cached export (optional retrieval graphs) are left out: the
    # gateway serves every task through `trunk` + heads without them.
    spec = dataclasses.replace(spec, graphs=tuple(g for g in spec.graphs if g.name in graphs.fp32))
    files = {g.name: graphs.fp32[g.name] for g in spec.graphs}
    manifest = {"precision": "fp32", "preset": "base", "checkpoint": str(graphs.checkpoint)}
    return write_repository(out, spec, Deployment(), files, manifest=manifest)


def base_overhead(
    graphs, root: Path, work: Path, data_root: Path, *, quick: bool, threads: int, log=print
) -> dict:
    """Gateway + Triton vs in-process onnxruntime on the `base` model at the official input size
    (100 detector boxes + the global row), concurrency 1, side by side; then questions about new
    images vs the same images again, with the official detector architecture (`base_detector`)."""
    from export.triton_server import TritonServer

    detector = base_detector(root)
    model = ServedModel(base_repository(graphs, root), graphs.checkpoint, detector, data_root)
    questions = vqa_test_questions(data_root, 2 if quick else 4)
    images = sorted({q.image for q in questions})
    out: dict = {"workload": f"{len(questions)} VQA test questions on {len(images)} images, base model"}
    log(f"  base model behind Triton: {out['workload']} ...")
    with contextlib.ExitStack() as stack:
        triton = stack.enter_context(
            TritonServer(model.repository, log_file=work / "tritonserver-base.log", startup_timeout=600)
        )
        gw = stack.enter_context(
            gateway("triton_base", model, work, threads, backend="triton", triton_url=triton.http_url)
        )
        client = Client(gw.url)
        stack.callback(client.close)
        inproc = InProcess(model, threads)
        ids, _ = register(client, images)
        inproc.register(images)
        bodies = [vqa_body(q, ids) for q in questions]
        out["input_sizes"] = input_sizes(inproc, bodies)
        paths = {
            "gateway_triton": lambda b: client.post("/vqa", b)[0],
            "in_process_service": inproc.vqa,
            "in_process_graphs": inproc.graphs_only,
        }
        for fn in paths.values():
            fn(bodies[0])
        samples: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(1 if quick else 3):  # 20 questions x 3 rounds: a median that holds still
            for b in bodies:
                for name, fn in paths.items():
                    samples[name].append(fn(b))
        lat = {k: Timing(tuple(v)) for k, v in samples.items()}
        out["latency_c1"] = {k: t.as_dict() for k, t in lat.items()}
        out["triton_over_in_process_graphs"] = (
            lat["gateway_triton"].median / lat["in_process_graphs"].median - 1
        )
        out["triton_over_in_process_service"] = (
            lat["gateway_triton"].median / lat["in_process_service"].median - 1
        )
        log("    base: new vs already-seen image (the 12-in-1 detector's architecture) ...")
        out["cold_vs_cached"] = cold_vs_cached(client, cold_images(data_root, 2 if quick else 3))
        out["peak_rss_mb"] = {
            "gateway_triton_base": gw.peak_rss_mb(),
            "tritonserver_with_stubs_base": peak_rss_mb(triton._process.pid) if triton._process else None,
        }
        log(
            f"    base: gateway+Triton {lat['gateway_triton'].median * 1e3:.0f} ms vs in-process graphs "
            f"{lat['in_process_graphs'].median * 1e3:.0f} ms ({out['triton_over_in_process_graphs']:+.1%})"
        )
    return out
