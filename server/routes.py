"""Thin routers: parse the body (JSON or multipart), hand it to the service, return its schema.

Task routes accept either ``application/json`` (images as base64 or `image_id`) or
``multipart/form-data`` with a ``request`` field holding the same JSON and image file parts that the
JSON names with ``{"upload": "<part name>"}`` (a single file part fills a missing `image`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, PlainTextResponse, Response
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from server import schemas as s
from server.deps import (
    GalleriesDep,
    GatewayDep,
    GroundDep,
    ImagesDep,
    MetricsDep,
    ModelsDep,
    RetrieveDep,
    ServiceDep,
    SettingsDep,
    VerifyDep,
    VQADep,
)
from server.errors import (
    BadRequestError,
    InvalidInputError,
    NotFoundError,
    UnauthorizedError,
    UnsupportedMediaError,
)
from server.examples import Example, load_examples
from server.settings import Settings
from vilbert.tasks import TASKS, as_dict

STATIC = Path(__file__).parent / "static"
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": s.ErrorResponse, "description": text}
    for code, text in (
        (400, "malformed body or image"),
        (401, "missing or wrong API key (when the server has one)"),
        (404, "unknown route, image_id or gallery"),
        (408, "the request body did not arrive in time"),
        (413, "body or image over a limit"),
        (415, "unsupported content type or image format"),
        (422, "a field's value is invalid (the message names it)"),
        (429, "queue full; retry after Retry-After seconds"),
        (503, "model backend unavailable; retry after Retry-After seconds"),
        (504, "deadline exceeded"),
        (507, "the gallery store is over its quota (TWELVE_GALLERY_QUOTA_BYTES) or its disk is full"),
    )
}


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    image = {"type": "string", "format": "binary"}
    needed = {name for name, f in model.model_fields.items() if f.is_required()}
    if needed <= {"image"}:  # POST /images: the image part alone is a complete request
        multipart = {"type": "object", "properties": {"image": image}, "required": ["image"]}
    else:
        about = f"{model.__name__} as JSON"
        properties = {"request": {"type": "string", "description": about}, "image": image}
        multipart = {"type": "object", "properties": properties, "required": ["request"]}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ref},
                "multipart/form-data": {"schema": multipart},
            },
        }
    }


async def parse(request: Request, model: type[M], max_files: int) -> tuple[M, dict[str, bytes]]:
    """The request model and the uploaded files' bytes, from a JSON or a multipart body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    uploads: dict[str, bytes] = {}
    if ctype == "multipart/form-data":
        form = await request.form(max_files=max_files, max_fields=8, max_part_size=1024 * 1024)
        raw_request: Any = None
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key in uploads:
                    raise InvalidInputError(f"{key}: two file parts share this name", key)
                uploads[key] = await value.read()
            elif key == "request":
                if raw_request is not None:
                    raise BadRequestError("request: more than one `request` part", "request")
                raw_request = value
        raw_request = "{}" if raw_request is None else raw_request
        data = _json(raw_request, "request")
        if (
            isinstance(data, dict)
            and "image" in model.model_fields
            and "image" not in data
            and len(uploads) == 1
        ):
            data["image"] = {"upload": next(iter(uploads))}
    elif ctype in ("application/json", ""):
        data = _json(await request.body(), "body")
    else:
        raise UnsupportedMediaError(
            f"content-type: {ctype!r}; send application/json or multipart/form-data", "content-type"
        )
    return model.model_validate(data), uploads


def _json(raw: str | bytes, field: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequestError(f"{field}: not valid JSON", field) from None


def require_key(request: Request, settings: SettingsDep) -> None:
    """Optional API key (X-API-Key or Bearer), compared in constant time."""
    if settings.api_key is None:
        return
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
    given = request.headers.get("x-api-key") or bearer
    if not hmac.compare_digest(given.encode(), settings.api_key.get_secret_value().encode()):
        raise UnauthorizedError("X-API-Key: missing or wrong API key", "X-API-Key")


Auth = Annotated[None, Depends(require_key)]


def require_admin(request: Request) -> None:
    """The admin key (server/models.py `admin_key`): X-API-Key or Bearer, compared in constant time."""
    key: str | None = request.app.state.admin_key
    if key is None:
        raise UnauthorizedError(
            "admin routes are disabled: set TWELVE_ADMIN_KEY (no key could be written beside the "
            "model repository)",
            "X-API-Key",
        )
    bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
    given = request.headers.get("x-api-key") or bearer
    if not hmac.compare_digest(given.encode(), key.encode()):
        raise UnauthorizedError("X-API-Key: missing or wrong admin key", "X-API-Key")


def api_router(settings: Settings) -> APIRouter:
    router = APIRouter(dependencies=[Depends(require_key)], responses=ERRORS)
    files = settings.max_images_per_request

    async def run(request: Request, gateway: GatewayDep, task: str, fn: Callable[[], T]) -> T:
        request.scope["state"]["task"] = task  # labels this request's metrics (see app.Guard)
        return await gateway.run(fn)

    @router.post(
        "/images", response_model=s.ImageInfo, openapi_extra=body_doc(s.ImagesRequest), tags=["images"]
    )
    async def post_image(request: Request, images: ImagesDep, gateway: GatewayDep) -> s.ImageInfo:
        """Run region extraction on an image and cache it; use the returned `image_id` afterwards."""
        req, uploads = await parse(request, s.ImagesRequest, 1)
        return await run(request, gateway, "images", lambda: images.register(req, uploads))

    @router.post("/vqa", response_model=s.VQAResponse, openapi_extra=body_doc(s.VQARequest), tags=["tasks"])
    async def vqa(request: Request, vqa: VQADep, gateway: GatewayDep) -> s.VQAResponse:
        """Answer a question about an image (VQA v2, Visual Genome QA or GQA answer vocabulary)."""
        req, uploads = await parse(request, s.VQARequest, 1)
        rid = request.state.request_id
        return await run(request, gateway, req.dataset, lambda: vqa(req, uploads, rid))

    @router.post(
        "/ground", response_model=s.GroundResponse, openapi_extra=body_doc(s.GroundRequest), tags=["tasks"]
    )
    async def ground(request: Request, ground: GroundDep, gateway: GatewayDep) -> s.GroundResponse:
        """Find the region an expression (or a GuessWhat dialog) refers to; boxes in image pixels."""
        req, uploads = await parse(request, s.GroundRequest, 1)
        rid = request.state.request_id
        return await run(request, gateway, req.dataset, lambda: ground(req, uploads, rid))

    @router.post(
        "/retrieve",
        response_model=s.RetrieveResponse,
        openapi_extra=body_doc(s.RetrieveRequest),
        tags=["tasks"],
    )
    async def retrieve(request: Request, retrieve: RetrieveDep, gateway: GatewayDep) -> s.RetrieveResponse:
        """Rank images (sent here, or a registered gallery) by how well they match a caption.

        With a model trained with the retrieval pre-filter the search is two-stage by default: the
        pre-filter's embeddings rank every image and the trunk re-ranks the top `rerank_k`;
        `mode=exhaustive` has the trunk score every image.  The response says which ran.
        """
        req, uploads = await parse(request, s.RetrieveRequest, files)
        rid = request.state.request_id
        return await run(request, gateway, req.dataset, lambda: retrieve(req, uploads, rid))

    @router.post(
        "/verify", response_model=s.VerifyResponse, openapi_extra=body_doc(s.VerifyRequest), tags=["tasks"]
    )
    async def verify(request: Request, verify: VerifyDep, gateway: GatewayDep) -> s.VerifyResponse:
        """Is a statement true of one image (SNLI-VE) or of a pair of images (NLVR2)?"""
        req, uploads = await parse(request, s.VerifyRequest, 2)
        rid = request.state.request_id
        return await run(request, gateway, req.dataset, lambda: verify(req, uploads, rid))

    @router.put(
        "/galleries/{name}",
        response_model=s.GalleryInfo,
        openapi_extra=body_doc(s.GalleryRequest),
        tags=["images"],
    )
    async def put_gallery(
        request: Request,
        name: Annotated[str, PathParam(pattern=s.GALLERY_NAME)],
        galleries: GalleriesDep,
        gateway: GatewayDep,
    ) -> s.GalleryInfo:
        """Register (or replace) a named gallery for /retrieve; its region features stay cached and,
        with a pre-filter, its image embeddings and their index are stored for two-stage search.  With
        a data dir (TWELVE_DATA_DIR) the gallery is kept across restarts."""
        req, uploads = await parse(request, s.GalleryRequest, settings.max_gallery_images)
        return await run(request, gateway, "gallery", lambda: galleries.register(name, req, uploads))

    @router.post(
        "/galleries/{name}/images",
        response_model=s.GalleryAppended,
        openapi_extra=body_doc(s.GalleryRequest),
        tags=["images"],
    )
    async def append_gallery(
        request: Request,
        name: Annotated[str, PathParam(pattern=s.GALLERY_NAME)],
        galleries: GalleriesDep,
        gateway: GatewayDep,
    ) -> s.GalleryAppended:
        """Add images to a gallery (created if missing); images it already holds are left as they are.
        Galleries have no image cap, only the store's quota (507 past it) and a per-request cap."""
        req, uploads = await parse(request, s.GalleryRequest, settings.max_gallery_images)
        return await run(request, gateway, "gallery", lambda: galleries.append(name, req, uploads))

    @router.delete("/galleries/{name}/images/{image_id}", response_model=s.GallerySummary, tags=["images"])
    async def delete_gallery_image(
        request: Request,
        name: Annotated[str, PathParam(pattern=s.GALLERY_NAME)],
        image_id: Annotated[str, PathParam(pattern=s.IMAGE_ID)],
        galleries: GalleriesDep,
        gateway: GatewayDep,
    ) -> s.GallerySummary:
        """Remove one image from a gallery (its region features stay in the region cache)."""
        return await run(request, gateway, "gallery", lambda: galleries.remove(name, image_id))

    @router.delete("/galleries/{name}", response_model=s.GalleryDeleted, tags=["images"])
    async def delete_gallery(
        request: Request,
        name: Annotated[str, PathParam(pattern=s.GALLERY_NAME)],
        galleries: GalleriesDep,
        gateway: GatewayDep,
    ) -> s.GalleryDeleted:
        """Delete a gallery and what the store kept for it."""
        return await run(request, gateway, "gallery", lambda: galleries.drop(name))

    @router.get("/galleries", response_model=s.GalleryList, tags=["images"])
    async def list_galleries(galleries: GalleriesDep) -> s.GalleryList:
        """Every gallery: its size, whether two-stage search on it is ready for the served model
        version, the bytes it takes, and the store's quota."""
        return galleries.listing()

    @router.get("/galleries/{name}", response_model=s.GalleryInfo, tags=["images"])
    async def get_gallery(
        name: Annotated[str, PathParam(pattern=s.GALLERY_NAME)],
        galleries: GalleriesDep,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    ) -> s.GalleryInfo:
        """A gallery and its image ids in order (`limit` of them from `offset`)."""
        return galleries.info(name, offset, limit)

    @router.get("/tasks", tags=["meta"])
    async def tasks(service: ServiceDep) -> dict[str, Any]:
        """The task table: which endpoint and `dataset` value serves each of the twelve tasks, and
        (`default`) which dataset a request without a `dataset` field gets.  Tasks answering from a
        vocabulary say whether it is `answers: "loaded"` or `"missing"` (answers then come back as
        `answer_<index>`); `warnings` lists what is missing; `model_version` is the version answering
        (null for a backend without versions)."""
        answers = service.answers
        rows, missing = [], []
        for t in TASKS:
            row = as_dict(t) | {"default": t.default}
            if t.answer_vocab:
                row["answers"] = "loaded" if answers.get(t.answer_vocab) else "missing"
                if row["answers"] == "missing":
                    missing.append(t.slug)
            rows.append(row)
        body: dict[str, Any] = {"tasks": rows, "model_version": service.version}
        if missing:
            body["warnings"] = [
                f"no answer vocabulary for {', '.join(missing)}: their answers are served as "
                "answer_<index>; convert the model with the release's answer lists "
                "(python -m vilbert.convert --release DIR, or --official with --vqa-answers/--gqa-answers)"
            ]
        return body

    @router.get("/metrics", tags=["meta"], response_class=PlainTextResponse)
    async def metrics(metrics: MetricsDep) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router


def admin_router() -> APIRouter:
    """Routes that change what is served; they need the admin key (`require_admin`), not the API key."""
    router = APIRouter(dependencies=[Depends(require_admin)], responses=ERRORS, tags=["admin"])

    @router.get("/admin/models")
    async def list_models(models: ModelsDep) -> dict[str, Any]:
        """The model repository's versions, which one answers (`active`) and the one before it."""
        return models.listing()

    @router.post("/admin/models/{version}:activate")
    async def activate_model(version: Annotated[int, PathParam(ge=1)], models: ModelsDep) -> dict[str, Any]:
        """Serve model version `version` from now on, with no failed request: it is loaded beside the
        served one, requests in flight finish on the old one, then the old one is unloaded
        (server/models.py).  Rollback: activate the previous version."""
        return await asyncio.to_thread(models.activate, version)

    return router


def page_router() -> APIRouter:
    """Unauthenticated routes: the web page, its example images, health and readiness."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: Annotated[str, PathParam(pattern=r"^[a-z0-9_-]+\.(js|css)$")]) -> FileResponse:
        path = STATIC / name
        if not path.is_file():
            raise NotFoundError(f"no static file {name!r}")
        return FileResponse(path)

    def examples(request: Request) -> tuple[Example, ...]:
        state = request.app.state
        if getattr(state, "examples", None) is None:  # read once, on first use
            state.examples = load_examples(state.settings.examples_dir)
        return state.examples

    @router.get("/examples", tags=["meta"])
    async def example_list(request: Request) -> dict[str, Any]:
        """Example images (synthetic scenes rendered by `make serve`) for the page and quick tries."""
        return {
            "examples": [
                {"name": e.name, "url": f"/examples/{e.name}.png", "objects": e.objects}
                for e in examples(request)
            ]
        }

    @router.get("/examples/{name}.png", tags=["meta"], responses={404: ERRORS[404]})
    async def example_png(request: Request, name: str) -> Response:
        for e in examples(request):
            if e.name == name:
                return Response(e.png, media_type="image/png")
        raise NotFoundError(f"name: no example {name!r}", "name")

    @router.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @router.get("/readyz", tags=["meta"])
    async def readyz(service: ServiceDep, gateway: GatewayDep, settings: SettingsDep) -> Response:
        """Readiness: every graph of the backend is ready and the gateway accepts work."""
        models = service.backend.ready()
        ready = gateway.accepting and all(models.values())
        body = json.dumps(
            {"ready": ready, "models": models, "queued": gateway.admitted, "model_version": service.version}
        )
        headers = {} if ready else {"Retry-After": str(settings.retry_after_s)}
        return Response(
            body, status_code=200 if ready else 503, media_type="application/json", headers=headers
        )

    return router
