"""vilbert.io: atomic file and directory writes (readable by everyone) and the strict state-dict check."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import torch
from torch import nn

from vilbert.io import (
    StateDictMismatchError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_text,
    check_state_dict,
    load_state_dict_strict,
    restore_interrupted_dir,
)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def private_umask():
    previous = os.umask(0o077)
    yield
    os.umask(previous)


class BoomError(RuntimeError):
    pass


def test_atomic_file_is_readable_by_everyone_and_leaves_no_temp(tmp_path, private_umask) -> None:
    path = atomic_write_text(tmp_path / "a" / "b" / "x.json", "{}\n")
    assert path.read_text() == "{}\n"
    assert mode(path) == 0o644
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o755
    atomic_write_bytes(path, b"second")
    assert path.read_bytes() == b"second" and mode(path) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_atomic_file_failure_keeps_the_old_content(tmp_path) -> None:
    path = atomic_write_bytes(tmp_path / "w.bin", b"old")

    def half(f) -> None:
        f.write(b"ne")
        raise BoomError

    with pytest.raises(BoomError):
        atomic_write(path, half)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_atomic_dir_replaces_and_publishes(tmp_path, private_umask) -> None:
    def write(version: str):
        def fill(tmp) -> None:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "f.txt").write_text(version)
            (tmp / "top.txt").write_text(version)

        return fill

    target = atomic_write_dir(tmp_path / "ckpt", write("1"))
    atomic_write_dir(target, write("2"))
    assert (target / "sub" / "f.txt").read_text() == "2"
    assert mode(target) == mode(target / "sub") == 0o755  # mkdtemp / the umask would make them 0700
    assert mode(target / "top.txt") == mode(target / "sub" / "f.txt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]

    def fail(tmp) -> None:
        (tmp / "top.txt").write_text("3")
        raise BoomError

    with pytest.raises(BoomError):
        atomic_write_dir(target, fail)
    assert (target / "top.txt").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_restore_interrupted_dir_puts_the_old_copy_back(tmp_path) -> None:
    target = atomic_write_dir(tmp_path / "repo", lambda tmp: (tmp / "v").write_text("old"))
    os.replace(target, tmp_path / ".repo.old-123")  # killed between the two renames
    assert restore_interrupted_dir(target)
    assert (target / "v").read_text() == "old"
    assert not restore_interrupted_dir(target)


def test_io_does_not_import_torch() -> None:
    code = "import sys, vilbert.io; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=os.getcwd())


def test_check_state_dict_names_every_offending_key() -> None:
    expected = {"a": (2, 3), "b": (4,), "c": (1,), "d": None}
    got = {"a": torch.zeros(3, 2), "b": torch.zeros(4), "d": torch.zeros(9)}
    got |= {"x": torch.zeros(1), "y": torch.zeros(1)}
    with pytest.raises(StateDictMismatchError) as info:
        check_state_dict(expected, got, what="file.pth does not fit")
    assert str(info.value) == (
        "file.pth does not fit: missing keys: c; unexpected keys: x, y; "
        "mis-shaped keys: a has shape [3, 2], expected [2, 3]"
    )
    fixed = {**got, "a": torch.zeros(2, 3), "c": torch.zeros(1)}
    check_state_dict(expected, fixed, what="-", ignore=("x", "y"))  # "d": any shape


def test_check_state_dict_raises_the_callers_error_with_a_hint() -> None:
    class MyError(ValueError):
        pass

    with pytest.raises(MyError, match=r"missing keys: w \(the stream has 2 layers\)"):
        check_state_dict({"w": (1,)}, {}, what="ckpt", hint="the stream has 2 layers", error=MyError)


def test_load_state_dict_strict() -> None:
    module = nn.Linear(3, 2)
    good = {"weight": torch.ones(2, 3), "bias": torch.ones(2)}
    load_state_dict_strict(module, good, what="w")
    assert torch.equal(module.weight, torch.ones(2, 3))
    with pytest.raises(StateDictMismatchError, match=r"missing keys: bias; mis-shaped keys: weight"):
        load_state_dict_strict(module, {"weight": torch.zeros(3, 3)}, what="w")
    assert torch.equal(module.weight, torch.ones(2, 3))  # nothing loaded on a mismatch
