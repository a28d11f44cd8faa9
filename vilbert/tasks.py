"""The twelve tasks of the 12-in-1 model, declared once.

Training, export, Triton config generation, the gateway's routes and the SDK all read this
table; nobody else writes a list of tasks.  Standard library only: importing it must never
pull in torch (the SDK and config generators use it without a model).

Numeric ids are the official ones (``TASK1`` … ``TASK17`` in the reference ``vilbert_tasks.yml``);
they index the task-token embedding, so they are part of the checkpoint format.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

TASK_TABLE_VERSION = 1


class Head(enum.StrEnum):
    """The six head weight sets of the released checkpoint (12 tasks share them)."""

    ANSWER = "answer"  # vil_prediction: MLP over the fused vector -> 3129 answers (VQA, VG QA)
    ANSWER_GQA = "answer_gqa"  # vil_prediction_gqa: same MLP shape -> 1533 GQA answers
    MATCH = "match"  # vil_logit: 1 logit per (caption, image) pair
    REGION = "region"  # vision_logit: 1 logit per region (grounding and pointing)
    PAIR = "pair"  # vil_binary_prediction: MLP over two fused vectors -> 2 (NLVR2)
    TRIPLE = "triple"  # vil_tri_prediction: linear -> 3 (SNLI-VE)


class Readout(enum.StrEnum):
    """How a head's logits become the answer a user reads."""

    ANSWER_VOCAB = "answer_vocab"  # top-k answer strings from the answer vocabulary
    RANK_IMAGES = "rank_images"  # one score per image; rank descending
    BEST_REGION = "best_region"  # argmax over all regions (detections, global included)
    BEST_CANDIDATE = "best_candidate"  # argmax over given candidate boxes (after the detections)
    LABEL = "label"  # argmax over a small closed label set


class Loss(enum.StrEnum):
    """Training losses, with the reference's scaling (the multiplier of each is noted beside it)."""

    BCE_SOFT_SCORES = "bce_soft_scores"  # BCE x num_answers (VQA-style soft targets)
    BCE_REGIONS = "bce_regions"  # BCE x num regions vs IoU targets (zeroed below 0.5)
    BCE_CANDIDATES = "bce_candidates"  # BCE x num candidates (pointing multiple choice)
    BCE_MEAN = "bce_mean"  # plain mean BCE over B x C (NLVR2, SNLI-VE)
    CE_MULTIPLE_CHOICE = "ce_multiple_choice"  # cross-entropy over 4 retrieval options


class Endpoint(enum.StrEnum):
    """HTTP endpoint that serves a task (the gateway routes by this)."""

    VQA = "vqa"
    RETRIEVE = "retrieve"
    GROUND = "ground"
    VERIFY = "verify"


class Family(enum.StrEnum):
    """Loader family: datasets of one family share their loading code."""

    QA = "qa"
    RETRIEVAL = "retrieval"
    GROUNDING = "grounding"
    VERIFICATION = "verification"


@dataclass(frozen=True)
class Task:
    """One row of the task table."""

    slug: str  # stable name used in configs, checkpoints, URLs and metrics
    task_id: int  # official numeric id; row of the task-token embedding
    title: str  # human name
    dataset: str  # value of the `dataset` field at the endpoint
    endpoint: Endpoint
    family: Family
    head: Head
    readout: Readout
    loss: Loss
    max_text_tokens: int  # T including [CLS]/[SEP]; the model adds one for the task token
    max_regions: int  # regions per image, global region included (plus GT candidates for pointing)
    images_per_example: int = 1
    labels: tuple[str, ...] = ()  # for Readout.LABEL: index -> label
    lr: float = 2e-5  # reference learning rate (loss scale = lr / min lr)
    batch_size: int = 128  # reference batch size
    answer_vocab: str = ""  # name of the answer vocabulary file for ANSWER_VOCAB readouts
    metric: str = "accuracy"
    num_candidates: int = 0  # multiple-choice width (pointing: 4 or 204; retrieval training: 4)
    # What a request brings besides the image: a question/answer dialog instead of one text
    # (GuessWhat), and whether candidate boxes are mandatory (Visual7W points among given boxes).
    dialog: bool = False
    requires_candidates: bool = False
    # The endpoint's default: what a request without a `dataset` field gets (one row per endpoint).
    default: bool = False


NLVR2_LABELS = ("False", "True")
SNLI_VE_LABELS = ("contradiction", "neutral", "entailment")

TASKS: tuple[Task, ...] = (
    Task(
        "vqa",
        1,
        "VQA v2",
        "vqa",
        Endpoint.VQA,
        Family.QA,
        Head.ANSWER,
        Readout.ANSWER_VOCAB,
        Loss.BCE_SOFT_SCORES,
        23,
        101,
        lr=4e-5,
        batch_size=128,
        answer_vocab="vqa",
        metric="vqa_soft_accuracy",
        default=True,
    ),
    Task(
        "vg_qa",
        2,
        "Visual Genome QA",
        "vg_qa",
        Endpoint.VQA,
        Family.QA,
        Head.ANSWER,
        Readout.ANSWER_VOCAB,
        Loss.BCE_SOFT_SCORES,
        26,
        101,
        lr=4e-5,
        batch_size=128,
        answer_vocab="vqa",
        metric="vqa_soft_accuracy",
    ),
    Task(
        "visual7w",
        4,
        "Visual7W pointing",
        "visual7w",
        Endpoint.GROUND,
        Family.GROUNDING,
        Head.REGION,
        Readout.BEST_CANDIDATE,
        Loss.BCE_CANDIDATES,
        20,
        200,
        batch_size=256,
        num_candidates=4,
        metric="pointing_accuracy",
        requires_candidates=True,
    ),
    Task(
        "retrieval_coco",
        7,
        "COCO retrieval",
        "coco",
        Endpoint.RETRIEVE,
        Family.RETRIEVAL,
        Head.MATCH,
        Readout.RANK_IMAGES,
        Loss.CE_MULTIPLE_CHOICE,
        30,
        101,
        batch_size=128,
        num_candidates=4,
        metric="recall_at_k",
        default=True,
    ),
    Task(
        "retrieval_flickr30k",
        8,
        "Flickr30k retrieval",
        "flickr30k",
        Endpoint.RETRIEVE,
        Family.RETRIEVAL,
        Head.MATCH,
        Readout.RANK_IMAGES,
        Loss.CE_MULTIPLE_CHOICE,
        30,
        101,
        batch_size=128,
        num_candidates=4,
        metric="recall_at_k",
    ),
    Task(
        "refcoco",
        9,
        "RefCOCO",
        "refcoco",
        Endpoint.GROUND,
        Family.GROUNDING,
        Head.REGION,
        Readout.BEST_REGION,
        Loss.BCE_REGIONS,
        20,
        101,
        batch_size=256,
        metric="grounding_accuracy",
        default=True,
    ),
    Task(
        "refcoco_plus",
        10,
        "RefCOCO+",
        "refcoco_plus",
        Endpoint.GROUND,
        Family.GROUNDING,
        Head.REGION,
        Readout.BEST_REGION,
        Loss.BCE_REGIONS,
        20,
        101,
        batch_size=256,
        metric="grounding_accuracy",
    ),
    Task(
        "refcocog",
        11,
        "RefCOCOg",
        "refcocog",
        Endpoint.GROUND,
        Family.GROUNDING,
        Head.REGION,
        Readout.BEST_REGION,
        Loss.BCE_REGIONS,
        20,
        101,
        batch_size=256,
        metric="grounding_accuracy",
    ),
    Task(
        "nlvr2",
        12,
        "NLVR2",
        "nlvr2",
        Endpoint.VERIFY,
        Family.VERIFICATION,
        Head.PAIR,
        Readout.LABEL,
        Loss.BCE_MEAN,
        40,
        101,
        images_per_example=2,
        labels=NLVR2_LABELS,
        batch_size=64,
    ),
    Task(
        "snli_ve",
        13,
        "SNLI-VE",
        "snli_ve",
        Endpoint.VERIFY,
        Family.VERIFICATION,
        Head.TRIPLE,
        Readout.LABEL,
        Loss.BCE_MEAN,
        56,
        101,
        labels=SNLI_VE_LABELS,
        batch_size=256,
        default=True,
    ),
    Task(
        "gqa",
        15,
        "GQA",
        "gqa",
        Endpoint.VQA,
        Family.QA,
        Head.ANSWER_GQA,
        Readout.ANSWER_VOCAB,
        Loss.BCE_SOFT_SCORES,
        26,
        101,
        lr=4e-5,
        batch_size=128,
        answer_vocab="gqa",
    ),
    Task(
        "guesswhat",
        17,
        "GuessWhat pointing",
        "guesswhat",
        Endpoint.GROUND,
        Family.GROUNDING,
        Head.REGION,
        Readout.BEST_CANDIDATE,
        Loss.BCE_CANDIDATES,
        256,
        306,
        batch_size=64,
        num_candidates=204,
        metric="pointing_accuracy",
        dialog=True,
    ),
)

NUM_TASK_TOKENS = 20  # rows of the official task embedding; ids 1..17 are used

_BY_SLUG = {t.slug: t for t in TASKS}
_BY_ID = {t.task_id: t for t in TASKS}
_DEFAULTS = {t.endpoint: t for t in TASKS if t.default}
assert len(_DEFAULTS) == len(Endpoint) == sum(t.default for t in TASKS), "one default task per endpoint"


def get_task(name: str | int) -> Task:
    """Look a task up by slug or official numeric id; a clear error names the choices."""
    task = _BY_ID.get(name) if isinstance(name, int) else _BY_SLUG.get(name)
    if task is None:
        choices = ", ".join(f"{t.slug} ({t.task_id})" for t in TASKS)
        raise KeyError(f"unknown task {name!r}; known tasks: {choices}")
    return task


def tasks_for_endpoint(endpoint: Endpoint | str) -> tuple[Task, ...]:
    """Tasks served by one endpoint, in table order."""
    return tuple(t for t in TASKS if t.endpoint == Endpoint(endpoint))


def default_task(endpoint: Endpoint | str) -> Task:
    """The task a request to `endpoint` without a `dataset` field selects."""
    return _DEFAULTS[Endpoint(endpoint)]


def tasks_of_family(family: Family | str) -> tuple[Task, ...]:
    """Tasks of one loader family, in table order."""
    return tuple(t for t in TASKS if t.family == Family(family))


def task_for_dataset(endpoint: Endpoint | str, dataset: str) -> Task:
    """The task an endpoint's `dataset` field selects; error lists the valid values."""
    options = tasks_for_endpoint(endpoint)
    for t in options:
        if t.dataset == dataset:
            return t
    valid = ", ".join(t.dataset for t in options)
    raise KeyError(f"unknown dataset {dataset!r} for /{Endpoint(endpoint)}; expected one of: {valid}")


def tasks_with_head(head: Head | str) -> tuple[Task, ...]:
    return tuple(t for t in TASKS if t.head == Head(head))


def as_dict(task: Task) -> dict[str, object]:
    """JSON-friendly view of one row (served by GET /tasks, written into checkpoints)."""
    return {
        "slug": task.slug,
        "task_id": task.task_id,
        "title": task.title,
        "dataset": task.dataset,
        "endpoint": str(task.endpoint),
        "family": str(task.family),
        "head": str(task.head),
        "readout": str(task.readout),
        "loss": str(task.loss),
        "max_text_tokens": task.max_text_tokens,
        "max_regions": task.max_regions,
        "images_per_example": task.images_per_example,
        "labels": list(task.labels),
        "lr": task.lr,
        "batch_size": task.batch_size,
        "answer_vocab": task.answer_vocab,
        "metric": task.metric,
        "num_candidates": task.num_candidates,
        "dialog": task.dialog,
        "requires_candidates": task.requires_candidates,
    }
