"""Reading the reference release's pickles without letting them run code.

The 12-in-1 release ships its answer vocabularies (`trainval_label2ans.pkl`, `trainval_ans2label.pkl`)
and its dataset caches as plain pickles.  `pickle.load` on such a file executes whatever callable the
file names, so a tampered download runs code.  `load_pickle` admits only what these files are made of:

* `builtins` (the default): lists, dicts, tuples, strings, bytes, numbers, booleans, None — which
  need no global at all — plus the few harmless constructors older protocols spell as globals
  (`set`, `frozenset`, `complex`, `bytearray`, `collections.OrderedDict`, `_codecs.encode` for bytes).
* `numpy=True` adds numpy arrays, scalars and dtypes (the hard-negative pools of the retrieval caches).

Any other global stops the load with an `UnsafePickleError` naming the file and the global.
Standard library only.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from pathlib import Path
from typing import Any

BUILTIN_GLOBALS = frozenset(
    {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol <= 2 spells bytes as _codecs.encode(str, "latin1")
    }
)
NUMPY_GLOBALS = frozenset(
    {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {("numpy", "ndarray"), ("numpy", "dtype")}
)


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the admitted set (it could run code), or is not a pickle."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose `find_class` admits only `allowed` (module, name) pairs."""

    def __init__(self, file, allowed: frozenset[tuple[str, str]], origin: str) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 str pickles decode as text
        self.allowed = allowed
        self.origin = origin

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol <= 2 pickles: `__builtin__.set`) as the base class maps them.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.origin}: refuses the global {module}.{name}: only plain lists, dicts, strings and "
            "numbers are accepted here (a pickle naming other callables can run code when loaded)"
        )


def loads_pickle(data: bytes, *, numpy: bool = False, origin: str = "<bytes>") -> Any:
    allowed = BUILTIN_GLOBALS | NUMPY_GLOBALS if numpy else BUILTIN_GLOBALS
    try:
        return RestrictedUnpickler(io.BytesIO(data), allowed, origin).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise UnsafePickleError(f"{origin}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def load_pickle(path: str | Path, *, numpy: bool = False) -> Any:
    """The object in a pickle file, built from admitted types only (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return loads_pickle(path.read_bytes(), numpy=numpy, origin=str(path))
