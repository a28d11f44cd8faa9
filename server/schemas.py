"""Request and response bodies, one pydantic model per kind of answer.

Images are referenced by `ImageRef`: base64 bytes in the JSON, the name of a multipart file part, or
an `image_id` returned by ``POST /images`` (the sha256 of the image's bytes); a plain base64 string
or a base64 ``data:`` URL stands for ``{"base64": ...}``.
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError

from vilbert.tasks import Endpoint, default_task, tasks_for_endpoint


def _datasets(endpoint: Endpoint) -> tuple[object, str]:
    """The `dataset` choices of an endpoint and its default, both from the task table."""
    choices = tuple(t.dataset for t in tasks_for_endpoint(endpoint))
    return Literal[choices], default_task(endpoint).dataset  # type: ignore[valid-type]


VQADataset, VQA_DEFAULT = _datasets(Endpoint.VQA)
GroundDataset, GROUND_DEFAULT = _datasets(Endpoint.GROUND)
RetrieveDataset, RETRIEVE_DEFAULT = _datasets(Endpoint.RETRIEVE)
VerifyDataset, VERIFY_DEFAULT = _datasets(Endpoint.VERIFY)

GALLERY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
IMAGE_ID = r"^[A-Za-z0-9._:-]{1,128}$"  # sha256 hex, as POST /images returns


class Strict(BaseModel):
    """Unknown fields are an error: a typo such as `questoin` must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


IMAGE_FORMS = (
    'an image is {"base64": "<bytes>"}, {"upload": "<multipart part>"}, {"image_id": "<id>"}, '
    "a plain base64 string, or a data: URL (data:image/png;base64,<bytes>)"
)


class ImageRef(Strict):
    """Exactly one of `base64`, `upload` (a multipart part name) or `image_id`.

    Shorthand: a JSON string in place of the object is the image's base64 bytes, plain or as a
    base64 ``data:`` URL (``data:image/png;base64,...``, what a browser's FileReader gives)."""

    base64: str | None = Field(None, description="the image file's bytes, base64-encoded")
    upload: str | None = Field(None, description="name of a multipart file part of this request")
    image_id: str | None = Field(None, description="an id returned by POST /images", max_length=128)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: object) -> object:
        if isinstance(value, str):
            return {"base64": base64_of(value)}
        if not isinstance(value, dict | ImageRef):
            raise PydanticCustomError("image_form", IMAGE_FORMS)
        return value

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The object, or the string shorthand (so OpenAPI and its clients know both forms)."""
        schema = handler.resolve_ref_schema(handler(core_schema))
        shorthand = {
            "type": "string",
            "description": "the image's bytes as base64, or a data: URL (data:image/png;base64,...)",
        }
        return {"anyOf": [dict(schema), shorthand], "title": schema.get("title", cls.__name__)}

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageRef:
        given = [k for k in ("base64", "upload", "image_id") if getattr(self, k) is not None]
        if len(given) != 1:
            message = "give exactly one of base64, upload, image_id: " + IMAGE_FORMS
            raise PydanticCustomError("image_form", message)
        return self


def base64_of(text: str) -> str:
    """The base64 payload of an image string: the text itself, or the data of a base64 data: URL."""
    text = text.strip()
    if text[:5].lower() != "data:":
        return text
    header, comma, payload = text.partition(",")
    if not comma or header.lower().split(";")[-1] != "base64":
        raise PydanticCustomError(
            "image_data_url", "a data: URL image must be base64 (data:image/png;base64,<bytes>)"
        )
    return payload


class Box(BaseModel):
    """A box in original-image pixels."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float


# --------------------------------------------------------------------------------------------- requests


class ImagesRequest(Strict):
    image: ImageRef


class VQARequest(Strict):
    image: ImageRef
    question: str
    dataset: VQADataset = VQA_DEFAULT
    top_k: int = Field(5, ge=1, le=1000)


class DialogTurn(Strict):
    question: str
    answer: str


class GroundRequest(Strict):
    image: ImageRef
    dataset: GroundDataset = GROUND_DEFAULT
    expression: str | None = None
    dialog: list[DialogTurn] | None = Field(None, description="guesswhat: the dialog about the object")
    candidates: list[Box] | None = Field(
        None, description="visual7w (required) / guesswhat (optional): boxes to choose among"
    )
    top_k: int = Field(3, ge=1, le=1000)


class RetrieveMode(enum.StrEnum):
    """How /retrieve searches (see docs/performance.md, "Two-stage retrieval")."""

    TWO_STAGE = "two_stage"  # pre-filter embeddings rank every image; the trunk re-ranks the top K
    EXHAUSTIVE = "exhaustive"  # the trunk scores every image


class RetrieveRequest(Strict):
    caption: str
    images: list[ImageRef] | None = None
    gallery: str | None = Field(None, pattern=GALLERY_NAME)
    dataset: RetrieveDataset = RETRIEVE_DEFAULT
    top_k: int = Field(10, ge=1, le=100_000)
    mode: RetrieveMode | None = Field(
        None,
        description="two_stage: the retrieval pre-filter ranks every image, the trunk re-ranks the top "
        "`rerank_k`; exhaustive: the trunk scores every image.  Default: two_stage when the model has "
        "a pre-filter, else exhaustive; asking for two_stage from a model without one is a 422.",
    )
    rerank_k: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="two_stage: how many pre-filter candidates the trunk re-ranks (at least top_k; "
        "default: the server's retrieve_rerank_k)",
    )

    @model_validator(mode="after")
    def _one_source(self) -> RetrieveRequest:
        if (self.images is None) == (self.gallery is None):
            raise ValueError("give exactly one of images, gallery")
        return self


class VerifyRequest(Strict):
    images: list[ImageRef] = Field(..., min_length=1)
    statement: str
    dataset: VerifyDataset = VERIFY_DEFAULT


class GalleryRequest(Strict):
    images: list[ImageRef] = Field(..., min_length=1)


# --------------------------------------------------------------------------------------------- responses


class RegionOut(BaseModel):
    box: Box
    score: float = Field(description="probability that this region is the one meant")
    label: str | None = Field(None, description="detector class of the region, when known")


class ImageInfo(BaseModel):
    image_id: str
    width: int
    height: int
    boxes: list[RegionOut]
    cached: bool


class Answer(BaseModel):
    answer: str
    score: float = Field(description="sigmoid probability of the answer")


class VQAResponse(BaseModel):
    task: str
    answers: list[Answer]


class GroundResponse(BaseModel):
    task: str
    regions: list[RegionOut]
    no_match: bool = Field(description="true when no region is a confident match")


class RankedImage(BaseModel):
    image_id: str
    score: float = Field(description="match logit; higher is a better match")
    rank: int


class RetrieveResponse(BaseModel):
    task: str
    results: list[RankedImage]
    mode: RetrieveMode = Field(description="the search that ran")
    scored: int = Field(
        description="images the trunk scored: the re-ranked candidates (two_stage) or all (exhaustive)"
    )


class VerifyResponse(BaseModel):
    task: str
    label: str
    scores: dict[str, float]


class GallerySummary(BaseModel):
    """A gallery as the served model version sees it (server/galleries.py)."""

    name: str
    size: int = Field(description="images in the gallery")
    prefilter: bool = Field(
        False,
        description="two-stage /retrieve is ready: the images' pre-filter embeddings for the served model "
        "version and their index are stored (false while they are rebuilt after a version switch)",
    )
    model_version: int | None = Field(
        None,
        description="the model version served, whose embeddings the other fields describe (null: a "
        "backend without versions)",
    )
    embedded: int = Field(0, description="images with pre-filter embeddings for that version")
    index: Literal["flat", "hnsw"] | None = Field(
        None, description="stage 1's index: exact inner product (flat), or HNSW for large galleries"
    )
    missing: int = Field(
        0,
        description="images whose region features were not found after a restart: searches skip them "
        "until they are added again",
    )
    stored_bytes: int = Field(0, description="bytes the gallery takes in the gallery store")


class GalleryInfo(GallerySummary):
    image_ids: list[str] = Field(description="the images in order (a window of them: `offset`, `limit`)")
    offset: int = 0


class GalleryAppended(GallerySummary):
    added: list[str] = Field(description="image ids added by this request")
    present: list[str] = Field(description="image ids the request sent that the gallery already held")


class GalleryDeleted(BaseModel):
    name: str
    deleted: bool
    size: int = Field(description="images the gallery held")


class GalleryList(BaseModel):
    galleries: list[GallerySummary]
    stored_bytes: int = Field(description="bytes all galleries take")
    quota_bytes: int = Field(description="what they may take (TWELVE_GALLERY_QUOTA_BYTES); past it, 507")
    persistent: bool = Field(description="the galleries are kept on disk (TWELVE_DATA_DIR) across restarts")


class ErrorBody(BaseModel):
    code: int
    message: str
    field: str | None = None
    request_id: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
