"""Every case of the bad-input catalogue (bench/bad_inputs.py) gets its expected answer, never a 5xx.

The catalogue covers four families: image bytes (decompression bombs past Pillow's 89,478,485-pixel
limit, truncated or unsupported files), text, schema (wrong types, missing or extra fields) and
transport (body size, multipart abuse).  Each answer that is an error has the JSON error shape with a message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bad_inputs import cases
from testkit.tiny_gateway import scene_png, tiny_settings

_SETTINGS = tiny_settings(Path("/nonexistent"), None)  # only its limits are read
CASES = cases(scene_png(0), max_body=_SETTINGS.max_body_bytes, max_text=_SETTINGS.max_text_chars)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind}:{c.name}" for c in CASES])
def test_bad_input_gets_its_answer(client, case):
    r = client.request(case.method, case.path, **case.request_kwargs())
    assert r.status_code in case.expect, (case.name, r.status_code, r.text[:300])
    if (r.status_code >= 400 and r.status_code != 405) or r.status_code == 404:
        error = r.json()["error"]
        assert error["code"] == r.status_code and error["message"]


def test_catalogue_covers_every_checklist_class():
    kinds = {c.kind for c in CASES}
    assert kinds == {"image", "text", "schema", "transport"}
    assert len({(c.kind, c.name) for c in CASES}) == len(CASES)
    assert all(s < 500 for c in CASES for s in c.expect)
