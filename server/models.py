r"""Model versions on a running gateway: which one answers, and switching to another with no failed request.

The switch to version N+1 (``POST /admin/models/{N+1}:activate``, or this module's CLI)::

    1. checks N+1 exists in the repository and can be served beside N (same detector and region width);
    2. Triton: writes the serving configs naming N and N+1 (export/versions.py) and asks Triton to
       load every graph whose config changed (explicit model control; Triton keeps answering on N
       while it loads), then checks every graph of N+1 is ready;  local: opens N+1's ONNX sessions;
    3. builds the gateway's parts over N+1 (answer lists, backend pinned to N+1, head routing, the
       galleries' pre-filter embeddings) and swaps them in with one assignment: a request takes the
       parts once, when it starts, so requests in flight finish on N and every later one runs on N+1;
    4. records N+1 in ``active.json`` (a restart serves it);
    5. in the background, once no request uses N any more (at most the request deadline), unloads N.

A failure before step 3 leaves N serving and its configs as they were.  Rollback is a switch to the
previous version.  Every response names the version that answered (``X-Model-Version``).

CLI (talks to the running gateway; the admin key is ``--admin-key``, ``TWELVE_ADMIN_KEY``, or the one
the gateway wrote to ``<repository>/.admin-key`` when none was configured)::

    python -m server.models list                 the repository's versions, the active one marked
    python -m server.models activate 2           switch to version 2 (prints the time it took)
    python -m server.models rollback             switch back to the previous version
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from export.versions import (
    VersionError,
    active_version,
    models_of,
    read_active,
    read_manifest,
    resolve,
    versions,
    write_active,
    write_serving_configs,
)
from server.backend import Backend, BackendError
from server.errors import ServiceError
from server.service import Service
from server.settings import Settings
from vilbert.cli import ArgumentParser, UserError, run

log = logging.getLogger("server")
ADMIN_KEY_FILE = ".admin-key"
BuildParts = Callable[[int], tuple[Backend, dict[str, list[str]]]]  # version -> (backend, answer lists)


class SwitchError(ServiceError):
    """A switch that cannot be done: 409 (another switch, an incompatible version), 404 (no such
    version), 503 (the new version's graphs did not load; the old one still serves)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message, "version")
        self.status = status


class ModelVersions:
    """The served `Service` (one model version) and the switch to another, one switch at a time."""

    def __init__(
        self,
        settings: Settings,
        service: Service,
        repository: Path | None = None,
        build: BuildParts | None = None,
        control: object | None = None,  # TritonBackend: load / unload / version_ready (None: local)
    ) -> None:
        self.settings = settings
        self.current = service  # read once per request (server/deps.py); replaced by one assignment
        self.repository = Path(repository) if repository is not None else None
        self.build = build
        self.control = control
        self._switch = threading.Lock()
        self._retiring: threading.Thread | None = None
        self.grace_s = settings.deadline_s + 1.0  # longest a request on the old version may still run

    @property
    def switchable(self) -> bool:
        return self.repository is not None and self.build is not None and self.current.version is not None

    def listing(self) -> dict:
        """The repository's versions (what each was exported from), the active and previous one."""
        listing = listing_of(self.repository) if self.repository is not None else {"versions": []}
        return listing | {"active": self.current.version, "switching": self._switch.locked()}

    def activate(self, version: int) -> dict:
        """Switch the gateway (and Triton) to `version`; returns the timings.  Raises `SwitchError`."""
        if not self.switchable:
            raise SwitchError(
                "this gateway serves no versioned model repository (backend torch, or no --model-repository)"
            )
        if not self._switch.acquire(blocking=False):
            raise SwitchError("another switch is in progress; try again when it has finished")
        try:
            return self._activate(version)
        finally:
            self._switch.release()

    def _activate(self, version: int) -> dict:
        assert self.repository is not None and self.build is not None
        started = time.perf_counter()
        self.wait_retired()
        old = self.current
        try:
            version = resolve(self.repository, version)
        except VersionError as exc:
            raise SwitchError(str(exc), 404) from None
        if version == old.version:
            return {"version": version, "previous": old.version, "switched": False, "seconds": 0.0}
        assert old.version is not None
        self._check_compatible(old.version, version)
        loaded_s = 0.0
        if self.control is not None:
            loaded_s = self._load_beside(old.version, version)
        try:
            backend, answers = self.build(version)
        except (BackendError, OSError, ValueError) as exc:
            self._unload_all_but(old.version)
            raise SwitchError(f"version {version}: {exc}", 503) from None
        new = old.derive(backend, answers, version)
        self.current = new  # the switch: every request from here on takes version `version`
        switched_s = time.perf_counter() - started
        write_active(self.repository, version, old.version)
        log.info("model version %s active (was %s) after %.2f s", version, old.version, switched_s)
        self._retiring = threading.Thread(target=self._retire, args=(old,), name="twelve-retire", daemon=True)
        self._retiring.start()
        return {
            "version": version,
            "previous": old.version,
            "switched": True,
            "load_seconds": round(loaded_s, 3),
            "seconds": round(switched_s, 3),
        }

    def _check_compatible(self, old: int, new: int) -> None:
        assert self.repository is not None
        a, b = read_manifest(self.repository, old), read_manifest(self.repository, new)
        width = "v_feature_size"
        other_shape = (a.get("detector") or {}) != (b.get("detector") or {})
        other_weights = a.get("detector_sha256") != b.get("detector_sha256")
        if a.get("detector") and b.get("detector") and (other_shape or other_weights):
            raise SwitchError(
                f"version {new} was exported with another detector than version {old}; the gateway "
                "extracts regions with the detector it started with: restart it on version "
                f"{new} (python -m server --detector-weights ...) instead"
            )
        if a["model_config"].get(width) != b["model_config"].get(width):
            raise SwitchError(
                f"version {new} reads {b['model_config'].get(width)}-d region features, version {old} "
                f"{a['model_config'].get(width)}-d: restart the gateway with version {new}'s detector"
            )

    def _load_beside(self, old: int, new: int) -> float:
        """Triton: serve `old` and `new` side by side; undone (old alone) when any graph fails."""
        assert self.repository is not None
        started = time.perf_counter()
        try:
            changed = write_serving_configs(self.repository, [old, new])
        except VersionError as exc:
            raise SwitchError(str(exc)) from None
        try:
            for model in changed:
                self.control.load(model)  # type: ignore[attr-defined]
            missing = [m for m in models_of(self.repository, new) if not self.control.version_ready(m, new)]  # type: ignore[attr-defined]
            if missing:
                raise BackendError(f"not ready after loading: {', '.join(missing)}")
        except BackendError as exc:
            self._unload_all_but(old)
            raise SwitchError(f"Triton could not load version {new}: {exc}", 503) from None
        return time.perf_counter() - started

    def _unload_all_but(self, keep: int) -> None:
        """Serve `keep` alone again (Triton): configs naming only it, graphs of no other version unloaded."""
        if self.control is None or self.repository is None:
            return
        keep_models = set(models_of(self.repository, keep))
        for model in write_serving_configs(self.repository, [keep]):
            with contextlib.suppress(BackendError):
                self.control.load(model)  # type: ignore[attr-defined]
        others = {m for v in versions(self.repository) for m in models_of(self.repository, v)} - keep_models
        for model in sorted(others):
            with contextlib.suppress(BackendError):
                self.control.unload(model)  # type: ignore[attr-defined]

    def _retire(self, old: Service) -> None:
        """Once no request uses `old` (or the deadline has passed), unload its version."""
        deadline = time.monotonic() + self.grace_s
        while old.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        version = self.current.version
        if version is not None:
            self._unload_all_but(version)
        old.backend.close()
        log.info("model version %s unloaded", old.version)

    def wait_retired(self, timeout: float | None = None) -> None:
        """Block until the last switch has unloaded the version it replaced."""
        if self._retiring is not None:
            self._retiring.join(timeout)

    def close(self) -> None:
        self.wait_retired(timeout=self.grace_s)


def listing_of(repository: Path) -> dict:
    """What `repository` holds, from disk: every version's preset, precision, checkpoint, answer lists."""
    rows = []
    for v in versions(repository):
        m = read_manifest(repository, v)
        rows.append(
            {
                "version": v,
                "preset": m.get("preset"),
                "precision": m.get("precision"),
                "checkpoint": m.get("checkpoint"),
                "answers": {k: len(a) for k, a in _answers(repository, v).items()},
                "graphs": len(m.get("models", {})),
            }
        )
    active = read_active(repository)
    return {
        "active": active_version(repository) if rows else None,
        "previous": active.get("previous"),
        "versions": rows,
    }


def _answers(repository: Path, version: int) -> dict[str, list[str]]:
    from export.versions import read_answers

    try:
        return read_answers(repository, version)
    except (OSError, ValueError, KeyError):
        return {}


def admin_key(settings: Settings) -> str | None:
    """The key the admin routes require: TWELVE_ADMIN_KEY, else TWELVE_API_KEY, else one made now and
    written (0600) to ``<repository>/.admin-key`` for this machine's CLI.  None: no key can be had."""
    for given in (settings.admin_key, settings.api_key):
        if given is not None:
            return given.get_secret_value()
    if settings.model_repository is None:
        return None
    key = secrets.token_urlsafe(24)
    path = Path(settings.model_repository) / ADMIN_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
    except OSError as exc:
        log.warning("admin API disabled: no TWELVE_ADMIN_KEY and %s cannot be written (%s)", path, exc)
        return None
    return key


# --- CLI: a client of the running gateway's admin routes ---


def _client_key(args) -> str:
    if args.admin_key:
        return args.admin_key
    for name in ("TWELVE_ADMIN_KEY", "TWELVE_API_KEY"):
        if os.environ.get(name):
            return os.environ[name]
    path = args.repository / ADMIN_KEY_FILE
    try:
        return path.read_text().strip()
    except OSError:
        raise UserError(
            f"no admin key: pass --admin-key, set TWELVE_ADMIN_KEY, or run this beside the gateway "
            f"(it writes {path})"
        ) from None


def _request(args, method: str, path: str) -> dict:
    import httpx

    try:
        response = httpx.request(
            method,
            args.url.rstrip("/") + path,
            headers={"X-API-Key": _client_key(args)},
            timeout=args.timeout,
        )
    except httpx.HTTPError as exc:
        raise UserError(f"{args.url}: no gateway answered ({exc}); start it with `make serve`") from None
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code >= 400:
        message = (body.get("error") or {}).get("message") or response.text
        raise UserError(f"{method} {path}: {response.status_code} {message}")
    return body


def _print_listing(listing: dict) -> None:
    print(f"{'':2}{'version':>7}  {'preset':<8} {'precision':<9} {'graphs':>6}  answers  checkpoint")
    for row in listing["versions"]:
        mark = "*" if row["version"] == listing["active"] else " "
        answers = ",".join(f"{k}:{n}" for k, n in sorted(row["answers"].items())) or "-"
        print(
            f"{mark:2}{row['version']:>7}  {row['preset'] or '-':<8} {row['precision'] or '-':<9} "
            f"{row['graphs']:>6}  {answers}  {row['checkpoint'] or '-'}"
        )
    print(f"active: {listing['active']}  previous: {listing.get('previous')}")


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgumentParser(prog="python -m server.models", description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["list", "activate", "rollback"])
    p.add_argument("version", nargs="?", type=int, help="activate: the version to serve")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the gateway (default %(default)s)")
    p.add_argument("--repository", type=Path, default=Path("model_repository"), help="its model repository")
    p.add_argument("--admin-key", help="the admin key (default: TWELVE_ADMIN_KEY or <repository>/.admin-key)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for a switch")
    args = p.parse_args(argv)
    if args.action == "list":
        try:
            listing = _request(args, "GET", "/admin/models")
        except UserError as exc:  # no gateway: what the repository on disk says
            if not versions(args.repository):
                raise
            print(f"({exc}; showing {args.repository} on disk)", file=sys.stderr)
            listing = listing_of(args.repository)
        _print_listing(listing)
        return 0
    if args.action == "activate":
        if args.version is None:
            raise UserError("activate: which version? (python -m server.models activate N)")
        target = args.version
    else:
        previous = _request(args, "GET", "/admin/models").get("previous")
        if previous is None:
            raise UserError("rollback: no previous version is recorded")
        target = int(previous)
    result = _request(args, "POST", f"/admin/models/{target}:activate")
    if not result.get("switched"):
        print(f"version {result['version']} is already active")
    else:
        print(
            f"version {result['version']} active (was {result['previous']}): switched in "
            f"{result['seconds']:.2f} s (Triton load {result.get('load_seconds', 0):.2f} s)"
        )
    return 0


if __name__ == "__main__":
    run(main)
