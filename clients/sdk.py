"""Python SDK for the twelve-in-one gateway: `Client` (sync) and `AsyncClient` (httpx).

    from clients import Client
    with Client("http://127.0.0.1:8000") as c:
        print(c.vqa("scene.png", "what colour is the circle?").answers[0].answer)

Images may be a path, raw bytes, a PIL image, or an `ImageId` returned by `upload_image`.  A method
called without `dataset` leaves the choice to the server (each endpoint's default, listed with the
datasets by ``GET /tasks``); `verify` picks the server's task for the number of images.  The SDK
needs httpx only: it knows no dataset names of its own.  Requests that get 429 or 503 are retried,
waiting as long as the server's ``Retry-After`` says (bounded).  Errors raise `APIError` with the
status, the server's message (it names the offending field) and the request id to quote in a bug
report.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import httpx

RETRY_STATUSES = (429, 503)
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ImageId:
    """An image already known to the server (from `upload_image`)."""

    id: str


ImageLike = Union[str, os.PathLike, bytes, bytearray, ImageId, Any]  # Any: a PIL.Image.Image  # noqa: UP007


class APIError(Exception):
    """The gateway answered with an error status."""

    def __init__(self, status: int, message: str, field: str | None = None, request_id: str | None = None):
        detail = f" (field {field})" if field else ""
        rid = f" [request {request_id}]" if request_id else ""
        super().__init__(f"HTTP {status}: {message}{detail}{rid}")
        self.status = status
        self.message = message
        self.field = field
        self.request_id = request_id


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Box:
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.xmin, self.ymin, self.xmax, self.ymax)


@dataclass(frozen=True)
class Region:
    box: Box
    score: float
    label: str | None = None


@dataclass(frozen=True)
class Answer:
    answer: str
    score: float


@dataclass(frozen=True)
class VQAResult:
    task: str
    answers: list[Answer]

    @property
    def best(self) -> str:
        return self.answers[0].answer


@dataclass(frozen=True)
class GroundResult:
    task: str
    regions: list[Region]
    no_match: bool

    @property
    def best(self) -> Region | None:
        return self.regions[0] if self.regions else None


@dataclass(frozen=True)
class RankedImage:
    image_id: str
    score: float
    rank: int


@dataclass(frozen=True)
class RetrieveResult:
    task: str
    results: list[RankedImage]
    mode: str = "exhaustive"  # the search that ran: "two_stage" or "exhaustive"
    scored: int = 0  # images the trunk scored (the re-ranked candidates in two-stage search)


@dataclass(frozen=True)
class VerifyResult:
    task: str
    label: str
    scores: dict[str, float]


@dataclass(frozen=True)
class ImageInfo:
    image_id: str
    width: int
    height: int
    boxes: list[Region]
    cached: bool = False

    @property
    def ref(self) -> ImageId:
        return ImageId(self.image_id)


@dataclass(frozen=True)
class GalleryInfo:
    name: str
    size: int
    image_ids: list[str] = field(default_factory=list)
    prefilter: bool = False  # image embeddings stored for two-stage /retrieve


@dataclass(frozen=True)
class GalleryAdded:
    """What `add_gallery_images` sent: ids the gallery gained, ids it already held, its size now."""

    name: str
    size: int
    added: list[str]
    present: list[str]
    prefilter: bool = False


@dataclass(frozen=True)
class FolderRegistration:
    """What `register_folder` did: image files found, already in the gallery (resumed), added."""

    name: str
    files: int
    skipped: int
    added: int
    size: int


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})


def folder_images(folder: str | os.PathLike) -> list[Path]:
    """The image files under `folder` (recursively, by suffix), in a stable order."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def file_image_id(path: Path) -> str:
    """The id the server gives an image: the sha256 of its file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def batches(paths: Sequence[Path], max_files: int, max_bytes: int) -> Iterator[list[Path]]:
    """`paths` in order, in batches of at most `max_files` files and `max_bytes` of file bytes (a
    file larger than that goes alone: the server then names the limit it breaks)."""
    batch: list[Path] = []
    size = 0
    for path in paths:
        n = path.stat().st_size
        if batch and (len(batch) >= max_files or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += n
    if batch:
        yield batch


class Progress:
    """A one-line progress bar on stderr (the SDK needs httpx only, so no tqdm)."""

    def __init__(self, total: int, label: str, done: int = 0, enabled: bool = True) -> None:
        self.total, self.label, self.done = total, label, done
        self.enabled = enabled
        self.started = time.monotonic()
        self.first = done
        self._draw()

    def update(self, n: int) -> None:
        self.done += n
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total) if self.total else width
        rate = (self.done - self.first) / max(time.monotonic() - self.started, 1e-9)
        line = f"\r{self.label}: [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} images"
        print(line + (f"  {rate:.1f} img/s" if self.done > self.first else ""), end="", file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _region(d: dict) -> Region:
    return Region(Box(**d["box"]), float(d["score"]), d.get("label"))


def _parse(kind: str, d: dict) -> Any:
    match kind:
        case "vqa":
            return VQAResult(d["task"], [Answer(a["answer"], float(a["score"])) for a in d["answers"]])
        case "ground":
            return GroundResult(d["task"], [_region(r) for r in d["regions"]], bool(d["no_match"]))
        case "retrieve":
            return RetrieveResult(
                d["task"],
                [RankedImage(r["image_id"], r["score"], r["rank"]) for r in d["results"]],
                d.get("mode", "exhaustive"),
                int(d.get("scored", len(d["results"]))),
            )
        case "verify":
            return VerifyResult(d["task"], d["label"], dict(d["scores"]))
        case "image":
            return ImageInfo(
                d["image_id"], d["width"], d["height"], [_region(r) for r in d["boxes"]], d["cached"]
            )
        case "gallery":
            return GalleryInfo(d["name"], d["size"], list(d["image_ids"]), bool(d.get("prefilter", False)))
        case "gallery_added":
            return GalleryAdded(
                d["name"], d["size"], list(d["added"]), list(d["present"]), bool(d.get("prefilter", False))
            )
    return d


# --------------------------------------------------------------------------------------------- requests


def image_ref(image: ImageLike) -> dict[str, str]:
    """The JSON `ImageRef` of an image argument."""
    if isinstance(image, ImageId):
        return {"image_id": image.id}
    if isinstance(image, bytes | bytearray | memoryview):
        data = bytes(image)
    elif isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        data = path.read_bytes()
    elif hasattr(image, "save") and hasattr(image, "mode"):  # PIL.Image.Image, without importing PIL
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        data = buf.getvalue()
    else:
        raise TypeError(
            f"cannot send {type(image).__name__} as an image; give a path, bytes, PIL image or ImageId"
        )
    return {"base64": base64.b64encode(data).decode("ascii")}


def _box(b: Box | Sequence[float]) -> dict[str, float]:
    x = b.as_tuple() if isinstance(b, Box) else tuple(b)
    if len(x) != 4:
        raise ValueError(f"a box is (xmin, ymin, xmax, ymax), got {b!r}")
    return dict(zip(("xmin", "ymin", "xmax", "ymax"), map(float, x), strict=True))


def _with_dataset(body: dict[str, Any], dataset: str | None) -> dict[str, Any]:
    """No `dataset` field when none is given: the server applies its endpoint's default."""
    return body if dataset is None else {**body, "dataset": dataset}


def vqa_body(image: ImageLike, question: str, dataset: str | None, top_k: int) -> dict:
    return _with_dataset({"image": image_ref(image), "question": question, "top_k": top_k}, dataset)


def ground_body(
    image: ImageLike,
    expression: str | None,
    dataset: str | None,
    top_k: int,
    candidates: Iterable[Box | Sequence[float]] | None,
    dialog: Iterable[tuple[str, str]] | None,
) -> dict:
    body: dict[str, Any] = _with_dataset({"image": image_ref(image), "top_k": top_k}, dataset)
    if expression is not None:
        body["expression"] = expression
    if candidates is not None:
        body["candidates"] = [_box(b) for b in candidates]
    if dialog is not None:
        body["dialog"] = [{"question": q, "answer": a} for q, a in dialog]
    return body


def retrieve_body(
    caption: str,
    images: Iterable[ImageLike] | None,
    gallery: str | None,
    dataset: str | None,
    top_k: int,
    mode: str | None = None,
    rerank_k: int | None = None,
) -> dict:
    body: dict[str, Any] = _with_dataset({"caption": caption, "top_k": top_k}, dataset)
    if mode is not None:
        body["mode"] = mode
    if rerank_k is not None:
        body["rerank_k"] = rerank_k
    if images is not None:
        body["images"] = [image_ref(i) for i in images]
    if gallery is not None:
        body["gallery"] = gallery
    return body


def verify_body(images: Sequence[ImageLike], statement: str, dataset: str | None) -> dict:
    return _with_dataset({"images": [image_ref(i) for i in images], "statement": statement}, dataset)


# ------------------------------------------------------------------------------------ the server's tasks


def endpoint_tasks(tasks: Iterable[dict], endpoint: str) -> list[dict]:
    """Rows of the server's task table (``GET /tasks``) served by one endpoint, in table order."""
    return [t for t in tasks if t.get("endpoint") == endpoint]


def endpoint_datasets(tasks: Iterable[dict], endpoint: str) -> list[str]:
    """The `dataset` values an endpoint of the server accepts."""
    return [t["dataset"] for t in endpoint_tasks(tasks, endpoint)]


def default_dataset(tasks: Iterable[dict], endpoint: str) -> str | None:
    """The dataset the server gives a request to `endpoint` without a `dataset` field."""
    return next((t["dataset"] for t in endpoint_tasks(tasks, endpoint) if t.get("default")), None)


def verify_dataset(tasks: Iterable[dict], n_images: int) -> str | None:
    """The verification dataset for `n_images` images: the server's default when it takes that many,
    else the one that does (NLVR2 for a pair).  None (let the server decide and explain) otherwise."""
    rows = [t for t in endpoint_tasks(tasks, "verify") if t.get("images_per_example", 1) == n_images]
    rows.sort(key=lambda t: not t.get("default"))
    return rows[0]["dataset"] if rows else None


def raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
        raise APIError(response.status_code, err["message"], err.get("field"), err.get("request_id"))
    except (ValueError, KeyError, TypeError):
        raise APIError(
            response.status_code,
            response.text[:500] or response.reason_phrase,
            None,
            response.headers.get("x-request-id"),
        ) from None


def retry_delay(response: httpx.Response, attempt: int, max_wait: float) -> float:
    """Seconds to wait before retrying: the server's Retry-After, else exponential backoff."""
    value = response.headers.get("retry-after", "")
    try:
        wait = float(value)
    except ValueError:
        wait = 0.5 * 2**attempt
    return max(0.0, min(wait, max_wait))


class _Base:
    def __init__(
        self, url: str, api_key: str | None, timeout: float, max_retries: int, max_retry_wait: float
    ) -> None:
        self.url = url.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self._task_table: list[dict] | None = None  # GET /tasks, read once when needed


class Client(_Base):
    """Synchronous client.  `transport` lets tests talk to an app in-process."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(url, api_key, timeout, max_retries, max_retry_wait)
        self._http = httpx.Client(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._sleep = sleep

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                raise APIError(0, f"cannot reach {self.url}{path}: {exc}") from exc
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                self._sleep(retry_delay(response, attempt, self.max_retry_wait))
                continue
            raise_for(response)
            return response.json()
        raise AssertionError("unreachable")

    def upload_image(self, image: ImageLike) -> ImageInfo:
        return _parse("image", self.request("POST", "/images", {"image": image_ref(image)}))

    def vqa(self, image: ImageLike, question: str, dataset: str | None = None, top_k: int = 5) -> VQAResult:
        return _parse("vqa", self.request("POST", "/vqa", vqa_body(image, question, dataset, top_k)))

    def ground(
        self,
        image: ImageLike,
        expression: str | None = None,
        dataset: str | None = None,
        top_k: int = 3,
        candidates: Iterable[Box | Sequence[float]] | None = None,
        dialog: Iterable[tuple[str, str]] | None = None,
    ) -> GroundResult:
        body = ground_body(image, expression, dataset, top_k, candidates, dialog)
        return _parse("ground", self.request("POST", "/ground", body))

    def retrieve(
        self,
        caption: str,
        images: Iterable[ImageLike] | None = None,
        gallery: str | None = None,
        dataset: str | None = None,
        top_k: int = 10,
        mode: str | None = None,
        rerank_k: int | None = None,
    ) -> RetrieveResult:
        """`mode`: "two_stage" (pre-filter, then the trunk re-ranks the top `rerank_k`) or "exhaustive";
        None: the server's default (two-stage when the model has a pre-filter)."""
        body = retrieve_body(caption, images, gallery, dataset, top_k, mode, rerank_k)
        return _parse("retrieve", self.request("POST", "/retrieve", body))

    def verify(self, images: Sequence[ImageLike], statement: str, dataset: str | None = None) -> VerifyResult:
        """`dataset` None: the server's task for this many images (snli_ve for one, nlvr2 for a pair)."""
        if dataset is None:
            dataset = verify_dataset(self.task_table(), len(images))
        return _parse("verify", self.request("POST", "/verify", verify_body(images, statement, dataset)))

    def put_gallery(self, name: str, images: Iterable[ImageLike]) -> GalleryInfo:
        """Register (or replace) gallery `name` with these images."""
        body = {"images": [image_ref(i) for i in images]}
        return _parse("gallery", self.request("PUT", f"/galleries/{name}", body))

    def add_gallery_images(self, name: str, images: Iterable[ImageLike]) -> GalleryAdded:
        """Append images to gallery `name` (created if missing); images it holds already are skipped."""
        body = {"images": [image_ref(i) for i in images]}
        return _parse("gallery_added", self.request("POST", f"/galleries/{name}/images", body))

    def gallery_image_ids(self, name: str, page: int = 1000) -> list[str]:
        """Every image id of gallery `name`, asked page by page ([] when there is no such gallery)."""
        ids: list[str] = []
        while True:
            try:
                info = self.request("GET", f"/galleries/{name}?offset={len(ids)}&limit={page}")
            except APIError as exc:
                if exc.status == 404:
                    return []
                raise
            ids += info["image_ids"]
            if not info["image_ids"] or len(ids) >= info["size"]:
                return ids

    def galleries(self) -> dict:
        """`GET /galleries`: every gallery's size and readiness, bytes stored and the quota."""
        return self.request("GET", "/galleries")

    def delete_gallery_image(self, name: str, image_id: str) -> dict:
        return self.request("DELETE", f"/galleries/{name}/images/{image_id}")

    def delete_gallery(self, name: str) -> dict:
        return self.request("DELETE", f"/galleries/{name}")

    def register_folder(
        self,
        name: str,
        folder: str | os.PathLike,
        *,
        batch_files: int = 16,
        batch_bytes: int = 8 * 1024 * 1024,
        progress: bool = True,
    ) -> FolderRegistration:
        """Add every image under `folder` to gallery `name`, in batches, with a progress bar.

        Resumable: an image's id is the sha256 of its file, so the images the gallery already holds
        (sent by an earlier run that stopped) are skipped without being sent again."""
        paths = folder_images(folder)
        held = set(self.gallery_image_ids(name))
        todo = [p for p in paths if file_image_id(p) not in held]
        bar = Progress(len(paths), f"gallery {name}", len(paths) - len(todo), progress)
        added = 0
        size = len(held)
        try:
            for batch in batches(todo, batch_files, batch_bytes):
                result = self.add_gallery_images(name, batch)
                added += len(result.added)
                size = result.size
                bar.update(len(batch))
        finally:
            bar.close()
        return FolderRegistration(name, len(paths), len(paths) - len(todo), added, size)

    def tasks(self) -> list[dict]:
        """The server's task table: endpoint, `dataset` value and `default` flag of each task."""
        self._task_table = self.request("GET", "/tasks")["tasks"]
        return self._task_table

    def task_table(self) -> list[dict]:
        """`tasks()`, asked of the server once per client."""
        return self._task_table if self._task_table is not None else self.tasks()

    def ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False


class AsyncClient(_Base):
    """Asynchronous client with the same methods as `Client` (awaitable)."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        super().__init__(url, api_key, timeout, max_retries, max_retry_wait)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._sleep = sleep

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, body: dict | None = None) -> Any:
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                raise APIError(0, f"cannot reach {self.url}{path}: {exc}") from exc
            if response.status_code in RETRY_STATUSES and attempt < self.max_retries:
                await self._sleep(retry_delay(response, attempt, self.max_retry_wait))
                continue
            raise_for(response)
            return response.json()
        raise AssertionError("unreachable")

    async def upload_image(self, image: ImageLike) -> ImageInfo:
        return _parse("image", await self.request("POST", "/images", {"image": image_ref(image)}))

    async def vqa(
        self, image: ImageLike, question: str, dataset: str | None = None, top_k: int = 5
    ) -> VQAResult:
        return _parse("vqa", await self.request("POST", "/vqa", vqa_body(image, question, dataset, top_k)))

    async def ground(
        self,
        image: ImageLike,
        expression: str | None = None,
        dataset: str | None = None,
        top_k: int = 3,
        candidates: Iterable[Box | Sequence[float]] | None = None,
        dialog: Iterable[tuple[str, str]] | None = None,
    ) -> GroundResult:
        body = ground_body(image, expression, dataset, top_k, candidates, dialog)
        return _parse("ground", await self.request("POST", "/ground", body))

    async def retrieve(
        self,
        caption: str,
        images: Iterable[ImageLike] | None = None,
        gallery: str | None = None,
        dataset: str | None = None,
        top_k: int = 10,
        mode: str | None = None,
        rerank_k: int | None = None,
    ) -> RetrieveResult:
        """`mode`: "two_stage" (pre-filter, then the trunk re-ranks the top `rerank_k`) or "exhaustive";
        None: the server's default (two-stage when the model has a pre-filter)."""
        body = retrieve_body(caption, images, gallery, dataset, top_k, mode, rerank_k)
        return _parse("retrieve", await self.request("POST", "/retrieve", body))

    async def verify(
        self, images: Sequence[ImageLike], statement: str, dataset: str | None = None
    ) -> VerifyResult:
        if dataset is None:
            dataset = verify_dataset(await self.task_table(), len(images))
        return _parse(
            "verify", await self.request("POST", "/verify", verify_body(images, statement, dataset))
        )

    async def put_gallery(self, name: str, images: Iterable[ImageLike]) -> GalleryInfo:
        body = {"images": [image_ref(i) for i in images]}
        return _parse("gallery", await self.request("PUT", f"/galleries/{name}", body))

    async def add_gallery_images(self, name: str, images: Iterable[ImageLike]) -> GalleryAdded:
        body = {"images": [image_ref(i) for i in images]}
        return _parse("gallery_added", await self.request("POST", f"/galleries/{name}/images", body))

    async def galleries(self) -> dict:
        return await self.request("GET", "/galleries")

    async def delete_gallery_image(self, name: str, image_id: str) -> dict:
        return await self.request("DELETE", f"/galleries/{name}/images/{image_id}")

    async def delete_gallery(self, name: str) -> dict:
        return await self.request("DELETE", f"/galleries/{name}")

    async def tasks(self) -> list[dict]:
        self._task_table = (await self.request("GET", "/tasks"))["tasks"]
        return self._task_table

    async def task_table(self) -> list[dict]:
        return self._task_table if self._task_table is not None else await self.tasks()
