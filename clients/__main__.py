r"""Command line for the gateway: ``python -m clients vqa IMAGE "question"`` and friends.

Every command takes its images first and its text last:

    python -m clients vqa scene.png "what colour is the circle?" --dataset gqa
    python -m clients ground scene.png "the large red square"
    python -m clients ground scene.png "which one is red?" --dataset visual7w \
        --candidate 10,10,50,50 --candidate 60,5,90,40
    python -m clients retrieve a.png b.png c.png "a blue circle"
    python -m clients retrieve --gallery shapes "a blue circle"
    python -m clients verify left.png right.png "there are two squares"
    python -m clients tasks

`--dataset` takes the server's names (``python -m clients tasks`` lists them, `*` marks each endpoint's
default); without it the server's default applies (`verify`: its task for that many images).
`--url` (or TWELVE_URL) picks the server, `--api-key` (or TWELVE_API_KEY) the key; `--json` prints the
raw answer.  A user error (a missing image, a server that does not answer, an unknown dataset, an
API error) is one line on stderr and exit status 1; a malformed command line is one line and status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import httpx

from clients.sdk import DEFAULT_URL, APIError, Client, endpoint_datasets

# The order of each command's arguments, quoted when a user gives the text where an image belongs.
USAGE = {
    "vqa": "vqa IMAGE QUESTION",
    "ground": "ground IMAGE [EXPRESSION]",
    "retrieve": "retrieve IMAGE [IMAGE ...] CAPTION  (or: retrieve --gallery NAME CAPTION)",
    "verify": "verify IMAGE [IMAGE2] STATEMENT",
    "upload": "upload IMAGE",
    "gallery": "gallery NAME IMAGE [IMAGE ...]  (or: gallery NAME --folder DIR | --delete [IMAGE_ID])",
}
TEXT_ARGUMENT = {"vqa": "question", "ground": "expression", "retrieve": "caption", "verify": "statement"}


class UserError(Exception):
    """A mistake on the command line, reported as one line."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage goes to --help, not above every mistake)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


SCRIPT = "twelve-in-one"  # the command `pip install ./clients` puts on PATH (clients/pyproject.toml)


def _prog() -> str:
    """How the user called us: the installed script, else ``python -m clients``."""
    return SCRIPT if sys.argv and Path(sys.argv[0]).name == SCRIPT else "python -m clients"


def _box(text: str) -> tuple[float, float, float, float]:
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"a box is xmin,ymin,xmax,ymax, got {text!r}")
    return (parts[0], parts[1], parts[2], parts[3])


def _dataset_option(p: argparse.ArgumentParser, endpoint: str) -> None:
    p.add_argument(
        "--dataset",
        help=f"one of the server's /{endpoint} datasets (`tasks` lists them); default: the server's",
    )


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog=_prog(), description="twelve-in-one API client (images first, text last)")
    p.add_argument("--url", default=os.environ.get("TWELVE_URL", DEFAULT_URL), help="the gateway")
    p.add_argument("--api-key", default=os.environ.get("TWELVE_API_KEY"))
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    # The same options after the command (`vqa IMAGE Q --url U`); given there, they win.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="the gateway (default: TWELVE_URL)")
    common.add_argument("--api-key", default=argparse.SUPPRESS)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="raw JSON answer")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    add = functools.partial(sub.add_parser, parents=[common])

    q = add("vqa", help="answer a question about an image")
    q.add_argument("image", metavar="IMAGE")
    q.add_argument("question", metavar="QUESTION")
    _dataset_option(q, "vqa")
    q.add_argument("--top-k", type=int, default=5)

    g = add("ground", help="find the region an expression refers to")
    g.add_argument("image", metavar="IMAGE")
    g.add_argument("expression", nargs="?", metavar="EXPRESSION", help="not for guesswhat (--turn)")
    _dataset_option(g, "ground")
    g.add_argument("--candidate", type=_box, action="append", help="xmin,ymin,xmax,ymax (repeatable)")
    g.add_argument(
        "--turn", nargs=2, action="append", metavar=("QUESTION", "ANSWER"), help="guesswhat dialog turn"
    )
    g.add_argument("--top-k", type=int, default=3)

    r = add("retrieve", help="rank images (or a registered gallery) by a caption")
    r.add_argument("images", nargs="*", metavar="IMAGE")
    r.add_argument("caption", metavar="CAPTION")
    r.add_argument("--gallery", help="search this registered gallery instead of IMAGE files")
    _dataset_option(r, "retrieve")
    r.add_argument("--top-k", type=int, default=10)
    r.add_argument("--mode", choices=["two_stage", "exhaustive"], help="default: the server's")
    r.add_argument("--rerank-k", type=int, help="two_stage: candidates the trunk re-ranks")

    v = add("verify", help="is a statement true of an image (or of a pair, with two)?")
    v.add_argument("images", nargs="+", metavar="IMAGE")
    v.add_argument("statement", metavar="STATEMENT")
    _dataset_option(v, "verify")

    u = add("upload", help="extract and cache an image's regions; prints its image_id")
    u.add_argument("image", metavar="IMAGE")

    gal = add("gallery", help="register a named gallery for retrieval (IMAGE files replace it)")
    gal.add_argument("name", metavar="NAME")
    gal.add_argument("images", nargs="*", metavar="IMAGE")
    gal.add_argument(
        "--folder",
        help="add every image under DIR, in batches, with a progress bar; run it again to resume "
        "(images the gallery holds are not sent again)",
    )
    gal.add_argument("--batch-files", type=int, default=16, help="--folder: images per request")
    gal.add_argument(
        "--delete",
        nargs="?",
        const="",
        metavar="IMAGE_ID",
        help="delete this image from the gallery, or (no IMAGE_ID) the whole gallery",
    )

    add("galleries", help="list the registered galleries (sizes, bytes stored, quota)")

    add("tasks", help="list the twelve tasks (* marks each endpoint's default dataset)")
    return p


def _image_args(args: argparse.Namespace) -> list[str]:
    if args.command in ("vqa", "ground", "upload"):
        return [args.image]
    return list(getattr(args, "images", None) or [])


def _is_file(arg: str | None, kind: str = "file") -> bool:
    try:
        return arg is not None and (Path(arg).is_file() if kind == "file" else Path(arg).is_dir())
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a file
        return False


def _looks_like_text(arg: str) -> bool:
    """A sentence, not a file name: words separated by spaces, or a question."""
    return len(arg.split()) > 1 or arg.rstrip().endswith("?")


def check_images(args: argparse.Namespace) -> None:
    """Every image argument is an existing file; a sentence where an image belongs gets the order."""
    text_name = TEXT_ARGUMENT.get(args.command)
    text = getattr(args, text_name, None) if text_name else None
    order = f"the order is images first, text last: {_prog()} {USAGE.get(args.command, '')}"
    for arg in _image_args(args):
        if _is_file(arg):
            continue
        if _looks_like_text(arg) or _is_file(text):
            raise UserError(f"image file not found: {arg!r} looks like text; {order}")
        what = "not an image file but a directory" if _is_file(arg, "dir") else "image file not found"
        raise UserError(f"{what}: {arg}")
    if _is_file(text):
        raise UserError(f"the {text_name} {text!r} is a file; {order}")
    if args.command == "gallery":
        given = [bool(args.images), args.folder is not None, args.delete is not None]
        if sum(given) != 1:
            raise UserError(f"give IMAGE files, --folder DIR or --delete: {_prog()} {USAGE['gallery']}")
        if args.folder is not None and not _is_file(args.folder, "dir"):
            raise UserError(f"--folder {args.folder}: not a folder")
    if args.command == "retrieve" and not args.images and not args.gallery:
        raise UserError(f"give IMAGE files or --gallery NAME to search: {_prog()} {USAGE['retrieve']}")
    if args.command == "retrieve" and args.images and args.gallery:
        raise UserError("give IMAGE files or --gallery NAME, not both")


def check_dataset(args: argparse.Namespace, client: Client) -> None:
    """A `--dataset` the server does not serve on this endpoint: say which ones it does."""
    if getattr(args, "dataset", None) is None:
        return
    choices = endpoint_datasets(client.task_table(), args.command)
    if args.dataset not in choices:
        raise UserError(
            f"unknown dataset {args.dataset!r} for {args.command}; the server at {client.url} offers: "
            + ", ".join(choices)
        )


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
        case "gallery" if args.folder is not None:
            return client.register_folder(args.name, args.folder, batch_files=args.batch_files)
        case "gallery" if args.delete == "":
            return client.delete_gallery(args.name)
        case "gallery" if args.delete is not None:
            return client.delete_gallery_image(args.name, args.delete)
        case "gallery":
            return client.put_gallery(args.name, args.images)
        case "galleries":
            return client.galleries()
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
        case sdk.FolderRegistration():
            return (
                f"gallery {result.name}: {result.size} images ({result.files} files in the folder: "
                f"{result.added} added, {result.skipped} already there)"
            )
        case sdk.GalleryInfo():
            two_stage = " (two-stage search ready)" if result.prefilter else ""
            return f"gallery {result.name}: {result.size} images{two_stage}"
        case list():
            return "\n".join(
                f"{t['endpoint']:>8}  {t['dataset'] + ('*' if t.get('default') else ''):<13} {t['title']}"
                for t in result
            )
    return json.dumps(result, indent=2, default=str)


def _one_line(exc: BaseException | str) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: Sequence[str] | None = None, client: Client | None = None) -> int:
    args = build_parser().parse_args(argv)
    own = client is None
    try:
        if own and not args.url.startswith(("http://", "https://")):
            raise UserError(f"--url {args.url!r} is not an http:// or https:// address")
        check_images(args)
        client = client or Client(args.url, api_key=args.api_key)
        check_dataset(args, client)
        result = run(args, client)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except APIError as exc:
        if exc.status == 0:  # no answer at all
            message = f"{_one_line(exc.message)} (is the gateway running? --url or TWELVE_URL names it)"
        else:
            message = _one_line(exc)
        print(f"error: {message}", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError, httpx.HTTPError, httpx.InvalidURL) as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        if own and client is not None:
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
