r"""Command line for the gateway: ``python -m clients vqa IMAGE "question"`` and friends.

    python -m clients vqa scene.png "what colour is the circle?" --dataset gqa
    python -m clients ground scene.png "the large red square"
    python -m clients ground scene.png "which one is red?" --dataset visual7w \
        --candidate 10,10,50,50 --candidate 60,5,90,40
    python -m clients retrieve "a blue circle" a.png b.png c.png
    python -m clients verify "there are two squares" left.png right.png
    python -m clients tasks

`--url` (or TWELVE_URL) picks the server, `--api-key` (or TWELVE_API_KEY) the key; `--json` prints the
raw answer.  Exit status 1 on an API error, with the server's message on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence

from clients.sdk import DEFAULT_URL, APIError, Client
from vilbert.tasks import Endpoint, tasks_for_endpoint


def _datasets(endpoint: Endpoint) -> list[str]:
    """`--dataset` choices of a command, from the task table (standard library only, no torch)."""
    return [t.dataset for t in tasks_for_endpoint(endpoint)]


def _box(text: str) -> tuple[float, float, float, float]:
    parts = [float(v) for v in text.split(",")]
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"a box is xmin,ymin,xmax,ymax, got {text!r}")
    return (parts[0], parts[1], parts[2], parts[3])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m clients", description="twelve-in-one API client")
    p.add_argument("--url", default=os.environ.get("TWELVE_URL", DEFAULT_URL))
    p.add_argument("--api-key", default=os.environ.get("TWELVE_API_KEY"))
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("vqa", help="answer a question about an image")
    q.add_argument("image")
    q.add_argument("question")
    q.add_argument("--dataset", default="vqa", choices=_datasets(Endpoint.VQA))
    q.add_argument("--top-k", type=int, default=5)

    g = sub.add_parser("ground", help="find the region an expression refers to")
    g.add_argument("image")
    g.add_argument("expression", nargs="?")
    g.add_argument(
        "--dataset",
        default="refcoco",
        choices=_datasets(Endpoint.GROUND),
    )
    g.add_argument("--candidate", type=_box, action="append", help="xmin,ymin,xmax,ymax (repeatable)")
    g.add_argument(
        "--turn", nargs=2, action="append", metavar=("QUESTION", "ANSWER"), help="guesswhat dialog turn"
    )
    g.add_argument("--top-k", type=int, default=3)

    r = sub.add_parser("retrieve", help="rank images by a caption")
    r.add_argument("caption")
    r.add_argument("images", nargs="*")
    r.add_argument("--gallery")
    r.add_argument("--dataset", default="coco", choices=_datasets(Endpoint.RETRIEVE))
    r.add_argument("--top-k", type=int, default=10)
    r.add_argument("--mode", choices=["two_stage", "exhaustive"], help="default: the server's")
    r.add_argument("--rerank-k", type=int, help="two_stage: candidates the trunk re-ranks")

    v = sub.add_parser("verify", help="is a statement true of one (snli_ve) or two (nlvr2) images?")
    v.add_argument("statement")
    v.add_argument("images", nargs="+")
    v.add_argument("--dataset", choices=_datasets(Endpoint.VERIFY))

    u = sub.add_parser("upload", help="extract and cache an image's regions; prints its image_id")
    u.add_argument("image")

    gal = sub.add_parser("gallery", help="register a named gallery for retrieval")
    gal.add_argument("name")
    gal.add_argument("images", nargs="+")

    sub.add_parser("tasks", help="list the twelve tasks")
    return p


def run(args: argparse.Namespace, client: Client) -> object:
    match args.command:
        case "vqa":
            return client.vqa(args.image, args.question, args.dataset, args.top_k)
        case "ground":
            return client.ground(
                args.image, args.expression, args.dataset, args.top_k, args.candidate, args.turn
            )
        case "retrieve":
            return client.retrieve(
                args.caption,
                args.images or None,
                args.gallery,
                args.dataset,
                args.top_k,
                args.mode,
                args.rerank_k,
            )
        case "verify":
            return client.verify(args.images, args.statement, args.dataset)
        case "upload":
            return client.upload_image(args.image)
        case "gallery":
            return client.put_gallery(args.name, args.images)
        case "tasks":
            return client.tasks()
    raise ValueError(args.command)


def render(result: object) -> str:
    """A short human-readable rendering of a result."""
    from clients import sdk

    match result:
        case sdk.VQAResult():
            return "\n".join(f"{a.score:.3f}  {a.answer}" for a in result.answers)
        case sdk.GroundResult():
            lines = [f"{'no confident match' if result.no_match else 'match'} ({result.task})"]
            for r in result.regions:
                box = ", ".join(f"{v:.0f}" for v in r.box.as_tuple())
                lines.append(f"{r.score:.3f}  [{box}]  {r.label or ''}".rstrip())
            return "\n".join(lines)
        case sdk.RetrieveResult():
            return "\n".join(f"{r.rank:>3}  {r.score:+.3f}  {r.image_id}" for r in result.results)
        case sdk.VerifyResult():
            return f"{result.label}  " + "  ".join(f"{k}={v:.3f}" for k, v in result.scores.items())
        case sdk.ImageInfo():
            return f"{result.image_id}  {result.width}x{result.height}  {len(result.boxes)} regions"
        case list():
            return "\n".join(f"{t['endpoint']:>8}  {t['dataset']:<13} {t['title']}" for t in result)
    return json.dumps(result, indent=2, default=str)


def main(argv: Sequence[str] | None = None, client: Client | None = None) -> int:
    args = build_parser().parse_args(argv)
    own = client is None
    client = client or Client(args.url, api_key=args.api_key)
    try:
        result = run(args, client)
    except (APIError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if own:
            client.close()
    if args.json:
        print(
            json.dumps(dataclasses.asdict(result) if dataclasses.is_dataclass(result) else result, indent=2)
        )
    else:
        print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
