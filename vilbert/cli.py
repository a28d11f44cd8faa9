"""How every command-line entry point of the project ends a user error: one line naming the fix.

A user error (a missing file, a wrong or missing flag, an unknown preset or task) prints
``error: <what is wrong> (<how to fix it>)`` on stderr and exits with status 2, never a traceback;
a bug still ends in one.  Standard library only, so any entry point can use it::

    from vilbert.cli import ArgumentParser, UserError, run

    def main(argv=None) -> int:
        args = ArgumentParser(prog="python -m pkg.tool").parse_args(argv)
        if not args.data.is_dir():
            raise UserError(f"--data {args.data}: no such directory (write one with ...)")
        ...

    if __name__ == "__main__":
        run(main)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

USAGE_ERROR = 2  # argparse's own status for a usage error


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


def one_line(message: object) -> str:
    """The message on one line (multi-line messages are joined with "; ")."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines) or "failed"


def fail(message: object, code: int = USAGE_ERROR) -> int:
    """Print ``error: <message>`` as one line on stderr; returns `code` (for ``return fail(...)``)."""
    print(f"error: {one_line(message)}", file=sys.stderr, flush=True)
    return code


def describe(exc: BaseException) -> str:
    """A user-facing line for a user error, naming the file for an OSError without a message of ours."""
    if isinstance(exc, FileNotFoundError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: no such file or directory (check the path)"
    return str(exc)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: the problem and where the flags are listed."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (`{self.prog} --help` lists the arguments)")
        raise SystemExit(USAGE_ERROR)


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run an entry point's `main()` and exit with its status; user errors end as one line, status 2.

    `UserError` and `FileNotFoundError` (a path given on the command line that is not there) are
    user errors; any other exception is a bug and keeps its traceback.  Ctrl-C exits with 130.
    """
    try:
        code = main()
    except (UserError, FileNotFoundError) as exc:
        raise SystemExit(fail(describe(exc))) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)
