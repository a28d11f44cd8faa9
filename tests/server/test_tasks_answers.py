"""GET /tasks says whether each answer-vocabulary task has its answers (a converted release without
answer lists serves `answer_<index>`: the API must say so, not hide it)."""

from __future__ import annotations

import dataclasses

from fastapi.testclient import TestClient

from server.app import create_app
from testkit.tiny_gateway import b64, scene_png, tiny_settings
from vilbert.tasks import TASKS


def test_tasks_report_loaded_answers(client):
    body = client.get("/tasks").json()
    rows = {t["slug"]: t for t in body["tasks"]}
    assert "warnings" not in body
    assert {s: r["answers"] for s, r in rows.items() if "answers" in r} == {
        t.slug: "loaded" for t in TASKS if t.answer_vocab
    }
    assert all("answers" not in r for r in rows.values() if not r["answer_vocab"])


def test_tasks_report_missing_answers(tmp_path, tiny_checkpoint, components):
    app = create_app(
        tiny_settings(tmp_path, tiny_checkpoint), dataclasses.replace(components, answers={"gqa": ["left"]})
    )
    client = TestClient(app, raise_server_exceptions=False)
    body = client.get("/tasks").json()
    status = {t["slug"]: t.get("answers") for t in body["tasks"]}
    vqa_vocab = [t.slug for t in TASKS if t.answer_vocab == "vqa"]
    assert [s for s, a in status.items() if a == "missing"] == vqa_vocab  # vqa and vg_qa share it
    assert status["gqa"] == "loaded"
    assert len(body["warnings"]) == 1 and ", ".join(vqa_vocab) in body["warnings"][0]
    assert "answer_<index>" in body["warnings"][0]
    # ... and that is what /vqa then answers with.
    r = client.post("/vqa", json={"image": b64(scene_png(0)), "question": "what colour?", "dataset": "vqa"})
    assert r.status_code == 200, r.text
    assert all(a["answer"].startswith("answer_") for a in r.json()["answers"])
