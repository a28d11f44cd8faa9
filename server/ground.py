"""`/ground`: the region an expression (or a GuessWhat dialog) refers to; boxes in image pixels.

image -> regions (server/images.py) -> tokens, `trunk` over the detections (followed by the
candidates' own features when the task chooses among given boxes), the task's head
(server/inference.py) -> a sigmoid per region, best first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from regions.inputs import box_locations
from server import schemas as s
from server.errors import InvalidInputError
from server.images import ImageInput, Images, box_out
from server.inference import Inference, best_first, clamp_top_k, inputs_of, pad_regions, sigmoid
from server.settings import Settings
from vilbert.tasks import Endpoint, Readout, Task, task_for_dataset, tasks_for_endpoint

WHOLE_IMAGE_LABEL = "whole image"


def dialog_text(turns: Sequence[s.DialogTurn]) -> str:
    """GuessWhat dialog as one sentence, in the format the model was trained on
    (training/datasets/grounding.py `dialog_text`): "start Q answer A stop " per turn."""
    return "".join(f"start {t.question} answer {t.answer} stop " for t in turns)


class Ground:
    def __init__(self, settings: Settings, images: Images, inference: Inference) -> None:
        self.settings = settings
        self.images = images
        self.inference = inference

    def __call__(
        self, req: s.GroundRequest, uploads: Mapping[str, bytes], rid: str | None = None
    ) -> s.GroundResponse:
        task = task_for_dataset(Endpoint.GROUND, req.dataset)
        text = self.text(req, task)
        candidates = self.candidates(req, task)
        image = self.images.resolve(req.image, uploads, "image", need_pixels=candidates is not None)
        ids, mask = self.inference.tokens(text, task)
        labels: list[str | None]
        if candidates is None:
            feats, locs, boxes = inputs_of(image.regions, task.max_regions)
            # Pointing without candidates (guesswhat) chooses among the detections, never the whole image.
            choices = np.arange(1 if task.readout is Readout.BEST_CANDIDATE else 0, len(feats))
            labels = [WHOLE_IMAGE_LABEL] + [
                self.images.label(image.regions, i) for i in range(len(feats) - 1)
            ]
        else:
            feats, locs, boxes, choices = self.with_candidates(image, candidates, task)
            labels = [None] * len(feats)
        if len(choices) == 0:
            return s.GroundResponse(task=task.slug, regions=[], no_match=True)
        regions = pad_regions([(feats, locs, boxes)])
        logits = self.inference.example_logits(task, ids, mask, regions, rid)
        probs = sigmoid(logits[choices])
        k = clamp_top_k(req.top_k, len(choices), self.settings.max_top_k)
        order = best_first(probs, k)
        found = [
            s.RegionOut(box=box_out(boxes[choices[i]]), score=float(probs[i]), label=labels[choices[i]])
            for i in order
        ]
        return s.GroundResponse(
            task=task.slug, regions=found, no_match=bool(probs.max() < self.settings.no_match_threshold)
        )

    def text(self, req: s.GroundRequest, task: Task) -> str:
        """The text to ground: the expression, or the dialog as one sentence for a dialog task."""
        check = self.inference.text
        if task.dialog:
            if not req.dialog:
                raise InvalidInputError(
                    f"dialog: {req.dataset} needs a dialog of question/answer turns", "dialog"
                )
            for i, turn in enumerate(req.dialog):
                check(turn.question, f"dialog.{i}.question")
            return check(dialog_text(req.dialog), "dialog")
        if req.dialog is not None:
            takers = ", ".join(t.dataset for t in tasks_for_endpoint(Endpoint.GROUND) if t.dialog)
            raise InvalidInputError(f"dialog: only {takers} takes a dialog, not {req.dataset}", "dialog")
        if req.expression is None:
            raise InvalidInputError(f"expression: {req.dataset} needs an expression", "expression")
        return check(req.expression, "expression")

    def candidates(self, req: s.GroundRequest, task: Task) -> np.ndarray | None:
        """The request's candidate boxes (K, 4), checked against the task; None without candidates."""
        if req.candidates is None:
            if task.requires_candidates:
                raise InvalidInputError(
                    f"candidates: {req.dataset} chooses among candidate boxes; give them", "candidates"
                )
            return None
        if task.readout is not Readout.BEST_CANDIDATE:
            raise InvalidInputError(
                f"candidates: {req.dataset} grounds among detections; drop candidates", "candidates"
            )
        limit = min(self.settings.max_candidates, task.max_regions - 1)
        if not 1 <= len(req.candidates) <= limit:
            raise InvalidInputError(
                f"candidates: give 1 to {limit} boxes, not {len(req.candidates)}", "candidates"
            )
        boxes = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in req.candidates], dtype=np.float32)
        for i, b in enumerate(boxes):
            if not np.isfinite(b).all() or b[2] <= b[0] or b[3] <= b[1]:
                raise InvalidInputError(
                    f"candidates.{i}: need finite xmin < xmax and ymin < ymax", f"candidates.{i}"
                )
        return boxes

    def with_candidates(
        self, image: ImageInput, candidates: np.ndarray, task: Task
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Detections (global first) followed by the candidates' own features, as in the reference;
        and the candidates' row indices."""
        r = image.regions
        clipped = candidates.copy()
        np.clip(clipped[:, 0::2], 0, r.width, out=clipped[:, 0::2])
        np.clip(clipped[:, 1::2], 0, r.height, out=clipped[:, 1::2])
        if ((clipped[:, 2] - clipped[:, 0]) <= 0).any() or ((clipped[:, 3] - clipped[:, 1]) <= 0).any():
            raise InvalidInputError("candidates: a box lies outside the image", "candidates")
        assert image.rgb is not None  # resolved with need_pixels
        cand_feats = self.images.features_at(image.rgb, clipped)
        feats, locs, boxes = inputs_of(r, task.max_regions - len(clipped))
        cand_locs = box_locations(clipped, r.width, r.height)
        start = len(feats)
        return (
            np.concatenate([feats, cand_feats]),
            np.concatenate([locs, cand_locs]),
            np.concatenate([boxes, clipped]),
            np.arange(start, start + len(clipped)),
        )
