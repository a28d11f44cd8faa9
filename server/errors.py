"""Domain errors and their one mapping to HTTP.

The service layer raises these (and `regions.decode.ImageDecodeError`, which carries its own status);
`install_error_handlers` is the only place that turns an exception into a status code.  Every answer
is JSON ``{"error": {"code", "message", "field", "request_id"}}``; anything unexpected becomes a 500
with the same shape and a request id to look up in the log, never a bare traceback.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from regions.decode import ImageDecodeError

log = logging.getLogger("server")


class ServiceError(Exception):
    """Base of the gateway's domain errors; `status` is the HTTP status it maps to."""

    status = 400

    def __init__(self, message: str, field: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after


class BadRequestError(ServiceError):
    status = 400


class NotFoundError(ServiceError):
    status = 404


class RequestTimeoutError(ServiceError):
    """The client did not send its body within the body timeout (a slow sender)."""

    status = 408


class PayloadTooLargeError(ServiceError):
    status = 413


class UnsupportedMediaError(ServiceError):
    status = 415


class InvalidInputError(ServiceError):
    """Well-formed JSON whose values are unusable (unknown dataset, text too long, top_k out of range)."""

    status = 422


class UnauthorizedError(ServiceError):
    status = 401


class OverloadedError(ServiceError):
    """The bounded queue is full: retry later (429 + Retry-After)."""

    status = 429


class BackendUnavailableError(ServiceError):
    """A model backend is not ready or failed to answer (503 + Retry-After)."""

    status = 503


class DeadlineExceededError(ServiceError):
    status = 504


class RebuildingError(ServiceError):
    """A gallery's search index for the served model version is being (re)built (503 + Retry-After)."""

    status = 503


class InsufficientStorageError(ServiceError):
    """The gallery store would go over its quota, or its disk is full (507)."""

    status = 507


def _field_name(loc: tuple | list) -> str:
    return ".".join(str(p) for p in loc if p not in ("body",)) or "body"


def validation_message(err: ValidationError | RequestValidationError) -> tuple[str, str]:
    """(message, field) of the first pydantic error: the field is named so a user can fix it."""
    first = err.errors()[0]
    field = _field_name(first.get("loc", ()))
    return f"{field}: {first.get('msg', 'invalid value')}", field


def error_response(
    request: Request,
    status: int,
    message: str,
    field: str | None = None,
    retry_after: int | None = None,
) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None)
    # X-Request-ID itself is added to every response by the app's Guard middleware.
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    body = {"error": {"code": status, "message": message, "field": field, "request_id": request_id}}
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception the routes can raise to one JSON error shape and status."""

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(request, exc.status, exc.message, exc.field, exc.retry_after)

    @app.exception_handler(ImageDecodeError)
    async def _image(request: Request, exc: ImageDecodeError) -> JSONResponse:
        field = getattr(exc, "field", None) or "image"
        return error_response(request, exc.code, f"{field}: {exc.message}", field)

    @app.exception_handler(ValidationError)
    async def _pydantic(request: Request, exc: ValidationError) -> JSONResponse:
        message, field = validation_message(exc)
        return error_response(request, 422, message, field)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = validation_message(exc)
        return error_response(request, 422, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A bug, not bad input: log it with the request id and answer in the same JSON shape.
        request_id = getattr(request.state, "request_id", None)
        log.exception("unhandled error in %s (request %s)", request.url.path, request_id)
        return error_response(request, 500, "internal error; see the server log for this request id")
