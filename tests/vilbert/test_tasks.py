"""Convention tests over the task table: every row is complete and consistent."""

import subprocess
import sys

import pytest

from vilbert.tasks import (
    TASKS,
    Endpoint,
    Family,
    Head,
    Loss,
    Readout,
    default_task,
    get_task,
    task_for_dataset,
    tasks_for_endpoint,
    tasks_of_family,
)

OFFICIAL_IDS = {1, 2, 4, 7, 8, 9, 10, 11, 12, 13, 15, 17}


def test_twelve_tasks_with_the_official_ids():
    assert len(TASKS) == 12
    assert {t.task_id for t in TASKS} == OFFICIAL_IDS
    assert len({t.slug for t in TASKS}) == 12


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.slug)
def test_every_task_has_head_loss_readout_and_budgets(task):
    assert isinstance(task.head, Head)
    assert isinstance(task.loss, Loss)
    assert isinstance(task.readout, Readout)
    assert task.max_text_tokens >= 20 and task.max_regions >= 101
    assert task.images_per_example in (1, 2)
    if task.readout is Readout.LABEL:
        assert len(task.labels) == {Head.PAIR: 2, Head.TRIPLE: 3}[task.head]
    if task.readout is Readout.ANSWER_VOCAB:
        assert task.answer_vocab in ("vqa", "gqa")
    if task.readout is Readout.BEST_CANDIDATE:
        assert task.num_candidates > 0 and task.max_regions > 101


def test_twelve_tasks_share_six_heads_as_the_official_checkpoint():
    assert {t.head for t in TASKS} == set(Head)
    shared = {h: sorted(t.task_id for t in TASKS if t.head is h) for h in Head}
    assert shared == {
        Head.ANSWER: [1, 2],
        Head.ANSWER_GQA: [15],
        Head.MATCH: [7, 8],
        Head.REGION: [4, 9, 10, 11, 17],
        Head.PAIR: [12],
        Head.TRIPLE: [13],
    }


def test_reference_budgets_from_vilbert_tasks_yml():
    budgets = {t.task_id: (t.max_text_tokens, t.max_regions) for t in TASKS}
    assert budgets[1] == (23, 101) and budgets[12] == (40, 101) and budgets[13] == (56, 101)
    assert budgets[4] == (20, 200) and budgets[17] == (256, 306)


def test_endpoints_cover_every_task_once():
    assert sum(len(tasks_for_endpoint(e)) for e in Endpoint) == 12
    assert task_for_dataset("ground", "refcoco_plus").task_id == 10
    assert task_for_dataset(Endpoint.RETRIEVE, "flickr30k").task_id == 8
    with pytest.raises(KeyError, match="expected one of: vqa, vg_qa, gqa"):
        task_for_dataset("vqa", "coco")


def test_one_default_dataset_per_endpoint():
    """The table is the only place that says what a request without `dataset` gets."""
    defaults = {e: [t.dataset for t in tasks_for_endpoint(e) if t.default] for e in Endpoint}
    assert defaults == {
        Endpoint.VQA: ["vqa"],
        Endpoint.GROUND: ["refcoco"],
        Endpoint.RETRIEVE: ["coco"],
        Endpoint.VERIFY: ["snli_ve"],
    }
    assert all(default_task(e).dataset == d for e, (d,) in defaults.items())
    assert default_task("verify") is get_task("snli_ve")


def test_tasks_of_a_family():
    assert [t.slug for t in tasks_of_family(Family.RETRIEVAL)] == ["retrieval_coco", "retrieval_flickr30k"]
    assert sum(len(tasks_of_family(f)) for f in Family) == 12


def test_lookup_by_slug_or_id_and_clear_errors():
    assert get_task(13) is get_task("snli_ve")
    with pytest.raises(KeyError, match=r"unknown task 'vqa3'.*known tasks"):
        get_task("vqa3")


def test_tasks_module_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import vilbert.tasks as t; print(len(t.TASKS))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "12"
