"""Typed FastAPI dependencies: what a route may ask for, as ``name: XDep`` parameters.

Each alias is ``Annotated[X, Depends(get_x)]``; the getters read the objects `create_app` put on
``app.state`` (server/app.py) and are async so that FastAPI runs them inline, not in a thread.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from server.app import Gateway
from server.galleries import Galleries
from server.ground import Ground
from server.images import Images
from server.metrics import Metrics
from server.models import ModelVersions
from server.retrieve import Retrieve
from server.service import Service
from server.settings import Settings
from server.verify import Verify
from server.vqa import VQA


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_service(request: Request) -> AsyncIterator[Service]:
    """The served model version's parts, taken once per request: a switch (server/models.py) during
    the request does not change them, so the request finishes on the version it started on, and
    the response names it (``X-Model-Version``)."""
    service = request.app.state.models.current
    request.scope.setdefault("state", {})["model_version"] = service.version
    with service.use():
        yield service


async def get_models(request: Request) -> ModelVersions:
    return request.app.state.models


async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[Service, Depends(get_service)]
GatewayDep = Annotated[Gateway, Depends(get_gateway)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ModelsDep = Annotated[ModelVersions, Depends(get_models)]


async def get_images(service: ServiceDep) -> Images:
    return service.images


async def get_galleries(service: ServiceDep) -> Galleries:
    return service.galleries


async def get_vqa(service: ServiceDep) -> VQA:
    return service.vqa


async def get_ground(service: ServiceDep) -> Ground:
    return service.ground


async def get_retrieve(service: ServiceDep) -> Retrieve:
    return service.retrieve


async def get_verify(service: ServiceDep) -> Verify:
    return service.verify


ImagesDep = Annotated[Images, Depends(get_images)]
GalleriesDep = Annotated[Galleries, Depends(get_galleries)]
VQADep = Annotated[VQA, Depends(get_vqa)]
GroundDep = Annotated[Ground, Depends(get_ground)]
RetrieveDep = Annotated[Retrieve, Depends(get_retrieve)]
VerifyDep = Annotated[Verify, Depends(get_verify)]
