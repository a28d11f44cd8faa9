"""The SDK and CLI against the running app (live uvicorn for sync, ASGI transport for async)."""

from __future__ import annotations

import asyncio
import io
import json

import httpx
import pytest
from PIL import Image

from clients import APIError, AsyncClient, Box, Client, ImageId
from clients.__main__ import main as cli
from clients.sdk import image_ref


@pytest.fixture(scope="module")
def client(live_url):
    with Client(live_url) as c:
        yield c


@pytest.fixture
def png_path(tmp_path, pngs):
    path = tmp_path / "scene.png"
    path.write_bytes(pngs[0])
    return path


def test_images_from_path_bytes_pil_and_id(client, png_path, pngs):
    info = client.upload_image(png_path)
    assert (info.width, info.height) == (96, 80) and info.boxes
    pil = Image.open(io.BytesIO(pngs[0]))
    by_path = client.vqa(png_path, "what colour?")
    by_bytes = client.vqa(pngs[0], "what colour?")
    by_id = client.vqa(info.ref, "what colour?")
    assert by_path == by_bytes == by_id
    assert by_path.task == "vqa" and len(by_path.answers) == 5 and by_path.best == by_path.answers[0].answer
    assert client.vqa(pil, "what colour?", dataset="gqa", top_k=2).task == "gqa"


def test_every_endpoint(client, pngs):
    g = client.ground(pngs[0], "the red circle")
    assert g.task == "refcoco" and g.best is not None and isinstance(g.best.box, Box)
    v7w = client.ground(
        pngs[0], "which one?", dataset="visual7w", candidates=[(2, 2, 30, 30), Box(40, 10, 90, 70)]
    )
    assert {r.box.as_tuple() for r in v7w.regions} <= {(2, 2, 30, 30), (40, 10, 90, 70)}
    gw = client.ground(pngs[0], dataset="guesswhat", dialog=[("is it red?", "yes")])
    assert gw.task == "guesswhat"
    ranked = client.retrieve("a blue square", images=pngs[:3], top_k=2)
    assert [r.rank for r in ranked.results] == [1, 2]
    gallery = client.put_gallery("sdk", pngs)
    assert gallery.size == len(pngs)
    assert client.retrieve("a blue square", gallery="sdk", dataset="flickr30k").task == "retrieval_flickr30k"
    assert client.verify([pngs[0]], "a circle").task == "snli_ve"
    pair = client.verify([pngs[0], pngs[1]], "a circle")
    assert pair.task == "nlvr2" and set(pair.scores) == {"False", "True"}
    assert len(client.tasks()) == 12 and client.ready()


def test_helpful_errors(client, pngs, tmp_path):
    with pytest.raises(APIError) as e:
        client.vqa(pngs[0], "q", dataset="okvqa")
    assert e.value.status == 422 and e.value.field == "dataset" and e.value.request_id
    assert "dataset" in str(e.value)
    with pytest.raises(APIError) as e:
        client.vqa(ImageId("0" * 64), "q")
    assert e.value.status == 404
    with pytest.raises(FileNotFoundError):
        client.vqa(tmp_path / "missing.png", "q")
    with pytest.raises(TypeError):
        image_ref(3.5)
    with pytest.raises(APIError) as e:
        Client("http://127.0.0.1:9", max_retries=0, timeout=2).vqa(pngs[0], "q")
    assert e.value.status == 0 and "cannot reach" in str(e.value)


def flaky_transport(statuses: list[int], seen: list[httpx.Request]):
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = statuses.pop(0) if statuses else 200
        if status == 200:
            return httpx.Response(200, json={"tasks": [{"slug": "vqa"}]})
        return httpx.Response(
            status,
            headers={"Retry-After": "2"},
            json={"error": {"code": status, "message": "busy", "field": None, "request_id": "r1"}},
        )

    return handler


def test_retries_honour_retry_after():
    seen: list[httpx.Request] = []
    waits: list[float] = []
    c = Client(
        "http://x", transport=httpx.MockTransport(flaky_transport([429, 503], seen)), sleep=waits.append
    )
    assert c.tasks() == [{"slug": "vqa"}]
    assert waits == [2.0, 2.0] and len(seen) == 3
    c2 = Client(
        "http://x",
        max_retries=1,
        transport=httpx.MockTransport(flaky_transport([503] * 5, [])),
        sleep=waits.append,
    )
    with pytest.raises(APIError) as e:
        c2.tasks()
    assert e.value.status == 503 and e.value.request_id == "r1"


def test_async_client(app, pngs):
    async def go():
        waits: list[float] = []

        async def sleep(s: float) -> None:
            waits.append(s)

        async with AsyncClient("http://test", transport=httpx.ASGITransport(app=app), sleep=sleep) as c:
            info = await c.upload_image(pngs[2])
            results = await asyncio.gather(
                c.vqa(info.ref, "what shape?"),
                c.ground(info.ref, "the square", dataset="refcocog"),
                c.retrieve("a square", images=[info.ref, pngs[0]]),
                c.verify([info.ref], "there is a square"),
            )
            assert len(await c.tasks()) == 12
            with pytest.raises(APIError):
                await c.vqa(info.ref, "")
            return results

    vqa, ground, retrieve, verify = asyncio.run(go())
    assert vqa.task == "vqa" and ground.task == "refcocog"
    assert len(retrieve.results) == 2 and verify.label in verify.scores


def test_async_retries():
    seen: list[httpx.Request] = []
    waits: list[float] = []

    sync_handler = flaky_transport([429], seen)

    async def handler(request: httpx.Request) -> httpx.Response:
        return sync_handler(request)

    async def sleep(s: float) -> None:
        waits.append(s)

    async def go():
        async with AsyncClient("http://x", transport=httpx.MockTransport(handler), sleep=sleep) as c:
            return await c.tasks()

    assert asyncio.run(go()) == [{"slug": "vqa"}] and waits == [2.0]


def test_cli(live_url, png_path, capsys):
    assert cli(["--url", live_url, "vqa", str(png_path), "what colour?", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(len(line.split(maxsplit=1)) == 2 for line in lines)
    assert cli(["--url", live_url, "--json", "ground", str(png_path), "the circle"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "refcoco"
    args = [
        "--url",
        live_url,
        "ground",
        str(png_path),
        "x",
        "--dataset",
        "visual7w",
        "--candidate",
        "1,1,20,20",
    ]
    assert cli(args) == 0
    assert cli(["--url", live_url, "verify", str(png_path), str(png_path), "two shapes"]) == 0
    assert capsys.readouterr().out.split()[-2].startswith("False=")  # a pair: the server's NLVR2 task
    assert cli(["--url", live_url, "--json", "verify", str(png_path), "a shape"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "snli_ve"
    assert cli(["--url", live_url, "retrieve", str(png_path), str(png_path), "a circle", "--top-k", "1"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    assert cli(["--url", live_url, "tasks"]) == 0
    listing = capsys.readouterr().out
    assert "nlvr2" in listing and " refcoco* " in listing and " refcocog " in listing
    assert cli(["--url", live_url, "vqa", str(png_path), "q", "--dataset", "gqa", "--top-k", "0"]) == 1
    assert "top_k" in capsys.readouterr().err


def table_transport(seen: list[httpx.Request]):
    """A server whose task table uses names the SDK cannot know: it must take them from GET /tasks."""
    table = [
        {"endpoint": "verify", "dataset": "pairs_x", "images_per_example": 2, "default": False},
        {"endpoint": "verify", "dataset": "single_y", "images_per_example": 1, "default": True},
        {"endpoint": "vqa", "dataset": "qa_z", "images_per_example": 1, "default": True},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/tasks":
            return httpx.Response(200, json={"tasks": table})
        body = json.loads(request.content)
        if request.url.path == "/vqa":
            return httpx.Response(200, json={"task": body.get("dataset", "qa_z"), "answers": []})
        task = body.get("dataset", "single_y")
        return httpx.Response(200, json={"task": task, "label": "yes", "scores": {"yes": 1.0}})

    return handler


def test_without_dataset_the_servers_default_applies():
    seen: list[httpx.Request] = []
    with Client("http://x", transport=httpx.MockTransport(table_transport(seen))) as c:
        assert c.vqa(b"png", "what?").task == "qa_z"
        assert "dataset" not in json.loads(seen[-1].content)  # the server's default, not the SDK's
        assert c.vqa(b"png", "what?", dataset="other").task == "other"
        assert c.verify([b"a", b"b"], "two").task == "pairs_x"  # the server's task for a pair
        assert c.verify([b"a"], "one").task == "single_y"
        assert c.verify([b"a", b"b", b"c"], "three").task == "single_y"  # none fits: the server answers
        assert "dataset" not in json.loads(seen[-1].content)
    assert [r.url.path for r in seen].count("/tasks") == 1  # the table is read once per client


def test_async_verify_reads_the_servers_table():
    seen: list[httpx.Request] = []
    sync_handler = table_transport(seen)

    async def handler(request: httpx.Request) -> httpx.Response:
        return sync_handler(request)

    async def go():
        async with AsyncClient("http://x", transport=httpx.MockTransport(handler)) as c:
            return [(await c.verify([b"a", b"b"], "two")).task, (await c.verify([b"a"], "one")).task]

    assert asyncio.run(go()) == ["pairs_x", "single_y"]
    assert [r.url.path for r in seen].count("/tasks") == 1
