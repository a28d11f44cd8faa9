"""The web page's example images: static files that `make serve` renders at build time.

``python -m training.synthetic.examples --out DIR`` (a step of `python -m bootstrap`) writes the PNGs
and ``DIR/examples.json``; the gateway only reads them (``--examples-dir``, default
``artifacts/examples``), so serving never imports the training code.  No directory: no examples.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("server")
INDEX = "examples.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Example:
    name: str
    png: bytes
    objects: list[dict]  # shape, colour, size, box (for hints and tests)


def load_examples(directory: Path | None) -> tuple[Example, ...]:
    """The examples listed in `directory`/examples.json, read once (a few small PNGs)."""
    if directory is None:
        return ()
    index = Path(directory) / INDEX
    if not index.is_file():
        log.warning("no example images: %s is missing (python -m training.synthetic.examples)", index)
        return ()
    out = []
    for row in json.loads(index.read_text())["examples"]:
        name, file = str(row["name"]), Path(str(row["file"]))
        if not NAME.match(name) or file.name != str(file):  # names go into URLs; files stay in the folder
            raise ValueError(f"{index}: bad example entry {name!r} -> {file}")
        out.append(Example(name, (index.parent / file).read_bytes(), list(row.get("objects", []))))
    return tuple(out)
