"""`python -m bench.swap`: requests failed while the served model is replaced, and how long the switch takes.

On a copy of the served repository (the demo model `make serve` built), the served version is published
again as the next version (hard links: the same graphs, so what is timed is Triton loading a version
beside the served one and the gateway switching to it, not an export).  A gateway over the bundled
tritonserver then answers 4 closed-loop clients (/vqa and /ground on a cached image) while the new
version is activated (`POST /admin/models/{N+1}:activate`), and again while it is rolled back.

Reported per switch: requests sent, requests failed (goal 0), requests answered by the wrong version,
the switch time (load beside the served version + swap) and Triton's load time alone.
`python -m bench --only swap --merge` puts the row into docs/performance.md.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from export.triton_server import TritonServer, free_port
from export.versions import VERSIONS_DIR, active_version, models_of, next_version, version_dir
from vilbert.cli import ArgumentParser, run

ADMIN_KEY = "bench-swap"


def publish_again(repository: Path, version: int) -> int:
    """`version`'s graphs and manifest as a new version (hard links); returns its number."""
    new = next_version(repository)
    for model in models_of(repository, version):
        shutil.copytree(
            repository / model / str(version), repository / model / str(new), copy_function=os.link
        )
    meta = repository / VERSIONS_DIR / str(new)
    shutil.copytree(version_dir(repository, version), meta)
    manifest = json.loads((meta / "export.json").read_text())
    (meta / "export.json").write_text(json.dumps(manifest | {"version": new}, indent=2) + "\n")
    return new


def measure(repository: Path, detector: Path, image: Path, log: Callable[[str], None] = print) -> dict:
    """Copy `repository`, add a version, serve it through Triton and switch under load both ways."""
    import httpx

    from server.app import create_app
    from server.settings import BackendKind, Settings
    from testkit.swap import Loop, gateway_thread

    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        copy = Path(tmp) / "model_repository"
        shutil.copytree(repository, copy, copy_function=os.link, ignore=shutil.ignore_patterns(".*"))
        served = active_version(copy)
        new = publish_again(copy, served)
        log(f"swap: {copy} versions {served} -> {new} (Triton, 4 clients) ...")
        with TritonServer(copy, startup_timeout=600) as triton:
            settings = Settings(
                backend=BackendKind.TRITON,
                model_repository=copy,
                triton_url=triton.http_url,
                detector_weights=detector,
                admin_key=ADMIN_KEY,
                port=free_port(),
                workers=4,
                max_queue=16,
                cache_dir=Path(tmp) / "cache",
            )
            app = create_app(settings)
            with gateway_thread(app, settings) as url, httpx.Client(base_url=url, timeout=900) as client:
                png = base64.b64encode(image.read_bytes()).decode()
                image_id = client.post("/images", json={"image": png}).json()["image_id"]
                ref = {"image_id": image_id}
                bodies = [
                    ("/vqa", {"image": ref, "question": "what color is the circle?"}),
                    ("/ground", {"image": ref, "expression": "the red circle"}),
                ]
                loop = Loop(url, bodies)
                rows = {}
                for old, target in ((served, new), (new, served)):

                    def switch(target: int = target) -> dict:
                        r = client.post(f"/admin/models/{target}:activate", headers={"X-API-Key": ADMIN_KEY})
                        r.raise_for_status()
                        return r.json()

                    result, begun, ended = loop.around(switch)
                    app.state.models.wait_retired()
                    row = loop.summary(str(old), str(target), begun, ended)
                    row |= {"switch_s": result["seconds"], "triton_load_s": result["load_seconds"]}
                    rows[f"{old}->{target}"] = row
                    log(
                        f"  {old} -> {target}: {row['requests']} requests, {row['failed']} failed, "
                        f"{row['wrong_version']} by the wrong version; switch {row['switch_s']:.2f} s "
                        f"(Triton load {row['triton_load_s']:.2f} s)"
                    )
    return {"clients": 4, "graphs": len(models_of(repository, served)), "switches": rows}


def markdown(result: dict | None) -> list[str]:
    if not result:
        return ["not measured (needs the served demo model: `make serve` once)"]
    if "missing" in result:
        return [f"not measured: {result['missing']}"]
    lines = [
        "`python -m bench.swap`: the served demo model's version published again beside it, a gateway over",
        f"Triton, {result['clients']} closed-loop clients (/vqa, /ground) during each switch "
        f"({result['graphs']} graphs loaded beside the served ones, then the old ones unloaded).",
        "",
        "| switch | requests | failed | wrong version | switch time | Triton load |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["switches"].items():
        lines.append(
            f"| {name} | {row['requests']} | {row['failed']} | {row['wrong_version']} | "
            f"{row['switch_s']:.2f} s | {row['triton_load_s']:.2f} s |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m bench.swap", description=__doc__.splitlines()[0])
    p.add_argument("--repository", type=Path, default=Path("model_repository"))
    p.add_argument("--detector", type=Path, default=Path("artifacts/detector/synthetic-detector.safetensors"))
    p.add_argument("--image", type=Path, help="a PNG/JPEG to ask about (default: an example image)")
    args = p.parse_args(argv)
    image = args.image or next(Path("artifacts/examples").glob("*.png"), None)
    if image is None:
        p.error("no --image and no artifacts/examples/*.png (run `make serve` once)")
    print(json.dumps(measure(args.repository, args.detector, image), indent=2))
    return 0


if __name__ == "__main__":
    run(main)
