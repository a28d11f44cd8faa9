"""Python SDK (+ CLI: ``python -m clients``) for the twelve-in-one HTTP API."""

from clients.sdk import (
    Answer,
    APIError,
    AsyncClient,
    Box,
    Client,
    GalleryInfo,
    GroundResult,
    ImageId,
    ImageInfo,
    RankedImage,
    Region,
    RetrieveResult,
    VerifyResult,
    VQAResult,
)

__all__ = [
    "APIError",
    "Answer",
    "AsyncClient",
    "Box",
    "Client",
    "GalleryInfo",
    "GroundResult",
    "ImageId",
    "ImageInfo",
    "RankedImage",
    "Region",
    "RetrieveResult",
    "VQAResult",
    "VerifyResult",
]
