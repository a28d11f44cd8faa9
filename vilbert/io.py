"""File I/O shared by the whole project: atomic writes and the strict state-dict check.

Standard library only (no torch import): `regions`, `export`, `training` and `server` use it too.

Atomic writes leave either the old content or the new one under a name, never half of either:

* `atomic_write(path, write)`, `atomic_write_bytes`, `atomic_write_text`: a file, written into a
  temporary sibling ``.NAME.XXXX.tmp`` that is fsynced, renamed over NAME, then the directory fsynced.
* `atomic_write_dir(target, write)`: a directory, filled by ``write(tmp)`` in a temporary sibling
  ``.NAME.tmp-XXXX``, its files fsynced, then swapped in: NAME is renamed to ``.NAME.old-PID``, the
  temporary directory to NAME, and the old copy removed.  `restore_interrupted_dir(target)` puts the
  old copy back when a crash fell between the two renames.

What they create is readable by everyone (files 0644, directories 0755, whatever the umask or
``mkstemp``/``mkdtemp``'s private 0600/0700): checkpoints and model repositories are read by servers
that may run as another user.

`check_state_dict(expected, got, what=...)` compares names and shapes and raises one error naming
every missing, unexpected and mis-shaped key; `load_state_dict_strict(module, state, what=...)` runs
it against a module's own state dict and then loads.  Shapes are read through ``.shape`` (any tensor
or array) and compared as tuples of ints.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o644
DIR_MODE = 0o755

# ---------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------


def fsync_dir(directory: str | Path) -> None:
    """Make renames inside `directory` durable (a crash after this keeps them)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write a file through ``write(binary_file)``: temp sibling, fsync, rename, fsync the directory.

    The parent directories are created (0755).  On any error the temporary file is removed and an
    existing file at `path` is left as it was.
    """
    path = Path(path)
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp creates 0600
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace `path` with `data` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Replace `path` with `text` atomically (see `atomic_write`)."""
    return atomic_write_bytes(path, text.encode(encoding))


def make_dirs(directory: str | Path) -> Path:
    """`mkdir -p` whose new directories are 0755 whatever the umask (existing ones keep their mode)."""
    directory = Path(directory)
    new = []
    d = directory
    while not d.exists() and d.parent != d:
        new.append(d)
        d = d.parent
    directory.mkdir(parents=True, exist_ok=True)
    for d in new:
        d.chmod(DIR_MODE)
    return directory


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link `src` to `dst` when possible (graphs and weights can be gigabytes), else copy it."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _old_copy(target: Path) -> Path:
    return target.with_name(f".{target.name}.old-{os.getpid()}")


def atomic_write_dir(target: str | Path, write: Callable[[Path], Any]) -> Path:
    """Write a directory's content via ``write(tmp_dir)`` into a temporary sibling, then swap it in.

    Every file is fsynced and made readable by everyone before the swap; the parent is fsynced
    after it.  On an error the temporary directory is removed and the previous `target`, if any,
    is still (or again) in place.
    """
    target = Path(target)
    make_dirs(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old = _old_copy(target)
    try:
        write(tmp)
        _publish_tree(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not target.exists():
            os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


def restore_interrupted_dir(target: str | Path) -> bool:
    """If a crash fell between `atomic_write_dir`'s two renames (`target` gone, ``.NAME.old-*``
    there), rename the newest old copy back to `target`.  Returns whether it did."""
    target = Path(target)
    if target.exists():
        return False
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.replace(olds[-1], target)
    return True


def _publish_tree(root: Path) -> None:
    """fsync every file under `root` and make everything readable by everyone (dirs traversable)."""
    root.chmod(DIR_MODE)  # mkdtemp makes it 0700
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = Path(dirpath, name)
            p.chmod(stat.S_IMODE(p.stat().st_mode) | DIR_MODE)
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_symlink():
                continue
            p.chmod(stat.S_IMODE(p.stat().st_mode) | FILE_MODE)
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------------------
# The strict state-dict check
# ---------------------------------------------------------------------------------------------------


class StateDictMismatchError(ValueError):
    """Names and shapes of a state dict differ from what was expected; the message names every key."""


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in value.shape)


def _dims(shape: Iterable[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def state_dict_problems(
    expected: Mapping[str, Iterable[int] | None],
    got: Mapping[str, Any],
    *,
    ignore: Iterable[str] = (),
) -> list[str]:
    """What differs, in words: "missing keys: ...", "unexpected keys: ...", "mis-shaped keys: ...".

    expected: name -> shape (None: any shape); got: name -> a tensor (anything with ``.shape``).
    Names in `ignore` may appear in `got` without being expected.  Every offending key is named;
    missing and mis-shaped keys in `expected`'s order, unexpected ones in `got`'s.
    """
    ignored = set(ignore)
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected and k not in ignored]
    misshaped = []
    for k, want in expected.items():
        if want is None or k not in got:
            continue
        have = _shape(got[k])
        if have != tuple(int(s) for s in want):
            misshaped.append(f"{k} has shape {_dims(have)}, expected {_dims(want)}")
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if misshaped:
        problems.append("mis-shaped keys: " + ", ".join(misshaped))
    return problems


def check_state_dict(
    expected: Mapping[str, Iterable[int] | None],
    got: Mapping[str, Any],
    *,
    what: str,
    ignore: Iterable[str] = (),
    hint: str = "",
    error: type[Exception] = StateDictMismatchError,
) -> None:
    """Raise ``error("{what}: missing keys: ...; unexpected keys: ...; mis-shaped keys: ...")``
    naming every offending key (see `state_dict_problems`), with `hint` appended; else return."""
    problems = state_dict_problems(expected, got, ignore=ignore)
    if problems:
        raise error(f"{what}: " + "; ".join(problems) + (f" ({hint})" if hint else ""))


def load_state_dict_strict(
    module: Any,
    state: Mapping[str, Any],
    *,
    what: str,
    error: type[Exception] = StateDictMismatchError,
    assign: bool = False,
) -> None:
    """``module.load_state_dict(state, strict=True)`` after `check_state_dict` against the module's
    own names and shapes, so a mismatch raises one error naming every offending key."""
    own = {k: _shape(v) for k, v in module.state_dict().items()}
    check_state_dict(own, state, what=what, error=error)
    module.load_state_dict(state, strict=True, assign=assign)
