"""Fair under contention: each long job's throughput alone and beside a busy neighbour.

Three of our workloads, each in its own process: region extraction (the synthetic detector over the
demo world's images), the training step (the demo preset: forward, loss, backward, AdamW), and served
answers (a `python -m server --backend local` gateway over the demo repository, one client asking
/vqa about a cached image).  Each is measured alone, then beside a neighbour: another process running
training steps without pause (2 threads, as our jobs run by default).  Both are measured twice: with
OpenMP threads that sleep when they wait (`OMP_WAIT_POLICY=PASSIVE`, what every entry point sets:
vilbert/threads.py), with a short spin before sleeping (`GOMP_SPINCOUNT=3000`), and with libgomp's
default spin-waiting (`TWELVE_OMP_SPIN=1`, the old behaviour).
A fair share of 2 cores between 2 jobs is 50 %; the goal is >= 40 % of the solo rate.

    python -m bench --only contention          (needs the demo model `make serve` builds)
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = ("extraction", "training", "serving")
POLICIES = {
    "passive": {},
    # libgomp without a wait policy spins GOMP_SPINCOUNT times before sleeping (default 300,000)
    "short spin (GOMP_SPINCOUNT=3000)": {"TWELVE_OMP_SPIN": "1", "GOMP_SPINCOUNT": "3000"},
    "spin (libgomp default)": {"TWELVE_OMP_SPIN": "1"},
}


def _images(data: Path, n: int = 24) -> list[Path]:
    return sorted((data / "images").rglob("*.png"))[:n] or sorted((data / "images").rglob("*.jpg"))[:n]


def _work_extraction(args) -> tuple[int, str]:
    from regions.decode import decode_file
    from regions.extractor import RegionExtractor
    from regions.weights import load_detector

    extractor = RegionExtractor(load_detector(args.detector), batch_size=1)
    images = [decode_file(str(p)) for p in _images(args.data)]
    extractor(images[0])  # warm-up
    return _loop(lambda i: extractor(images[i % len(images)]), args.seconds), "images/s"


def _demo_step():
    import torch

    from bench.training_step import vqa_batches, vqa_loss
    from vilbert.config import preset
    from vilbert.heads import MultiTaskViLBERT

    torch.manual_seed(0)
    cfg = preset("demo")
    model = MultiTaskViLBERT(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = vqa_batches(cfg, 8, 1)[0]

    def step(_i: int) -> None:
        vqa_loss(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _work_training(args) -> tuple[int, str]:
    step = _demo_step()
    step(0)
    return _loop(step, args.seconds), "steps/s"


def _work_serving(args) -> tuple[int, str]:
    import httpx

    from bench.load import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "server", "--backend", "local", "--port", str(port)]
    cmd += ["--checkpoint", str(args.checkpoint), "--model-repository", str(args.repository)]
    cmd += ["--detector-weights", str(args.detector), "--cache-dir", str(args.work / f"cache-{port}")]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError("the gateway did not become ready in 120 s")
        image = base64.b64encode(_images(args.data, 1)[0].read_bytes()).decode()
        body = {"image": image, "question": "what color is the circle?"}
        with httpx.Client(base_url=url, timeout=60) as client:

            def ask(_i: int) -> None:
                r = client.post("/vqa", json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"/vqa answered {r.status_code}: {r.text[:300]}")

            ask(0)  # the image's regions are computed once, then cached
            return _loop(ask, args.seconds), "answers/s"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _loop(fn, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn(n)
        n += 1
    return n / (time.perf_counter() - t0)


def _child(kind: str, policy_env: dict, args, seconds: float):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | policy_env
    cmd = [sys.executable, "-m", "bench.contention", "--worker", kind, "--seconds", str(seconds)]
    cmd += ["--data", str(args.data), "--detector", str(args.detector), "--work", str(args.work)]
    cmd += ["--checkpoint", str(args.checkpoint), "--repository", str(args.repository)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _rate(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(err[-1500:])
    return json.loads(out.strip().splitlines()[-1])


def run(
    data: Path,
    detector: Path,
    checkpoint: Path,
    repository: Path,
    work: Path,
    seconds: float = 12.0,
    log=print,
) -> dict:
    args = argparse.Namespace(
        data=data, detector=detector, checkpoint=checkpoint, repository=repository, work=work
    )
    work.mkdir(parents=True, exist_ok=True)
    rows: dict = {}
    for policy, env in POLICIES.items():
        for kind in WORKLOADS:
            solo = _rate(_child(kind, env, args, seconds))
            neighbour = _child("training", env, args, 10 * seconds + 120)  # killed when done
            try:
                time.sleep(4)  # the neighbour is running steps by now
                beside = _rate(_child(kind, env, args, seconds))
            finally:
                neighbour.kill()
                neighbour.communicate()
            share = beside["rate"] / solo["rate"] if solo["rate"] else None
            rows.setdefault(policy, {})[kind] = {
                "unit": solo["unit"],
                "solo": solo["rate"],
                "beside_neighbour": beside["rate"],
                "share": share,
            }
            log(
                f"  {policy:<22} {kind:<10} solo {solo['rate']:.2f} {solo['unit']}, beside a neighbour "
                f"{beside['rate']:.2f} ({share:.0%})"
            )
    return {"seconds_per_measurement": seconds, "neighbour": "demo training steps, 2 threads", "rows": rows}


def markdown(c: dict | None) -> list[str]:
    if not c:
        return ["Not measured in this run (`python -m bench --only contention`)."]
    if "error" in c or "missing" in c:
        return [f"Not measured: {c.get('error') or c.get('missing')}"]
    lines = [
        f"Each job alone, then beside a neighbour process ({c['neighbour']}), "
        f"{c['seconds_per_measurement']:g} s each; a fair share of 2 cores is 50 %, the goal >= 40 %.",
        "",
        "| OpenMP wait policy | job | alone | beside a busy neighbour | share kept |",
        "|---|---|---:|---:|---:|",
    ]
    for policy, jobs in c["rows"].items():
        for kind, row in jobs.items():
            lines.append(
                f"| {policy} | {kind} | {row['solo']:.2f} {row['unit']} | {row['beside_neighbour']:.2f} | "
                f"{row['share']:.0%} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.contention", description=__doc__.splitlines()[0])
    p.add_argument("--worker", choices=WORKLOADS, required=True)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--detector", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    args = p.parse_args(argv)
    work = {"extraction": _work_extraction, "training": _work_training, "serving": _work_serving}
    rate, unit = work[args.worker](args)
    print(json.dumps({"rate": rate, "unit": unit}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
