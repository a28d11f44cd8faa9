"""`/verify`: is a statement true of one image (SNLI-VE) or of a pair of images (NLVR2)?

images -> regions (server/images.py) -> one trunk row per (statement, image), the task's head over
the rows (server/inference.py) -> a softmax over the task's labels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from server import schemas as s
from server.errors import InvalidInputError
from server.images import Images
from server.inference import Inference, batch_of, softmax
from vilbert.tasks import Endpoint, task_for_dataset


class Verify:
    def __init__(self, images: Images, inference: Inference) -> None:
        self.images = images
        self.inference = inference

    def __call__(
        self, req: s.VerifyRequest, uploads: Mapping[str, bytes], rid: str | None = None
    ) -> s.VerifyResponse:
        task = task_for_dataset(Endpoint.VERIFY, req.dataset)
        statement = self.inference.text(req.statement, "statement")
        if len(req.images) != task.images_per_example:
            raise InvalidInputError(
                f"images: {req.dataset} takes {task.images_per_example} image(s), not {len(req.images)}",
                "images",
            )
        images = [
            self.images.resolve(ref, uploads, f"images.{i}").regions for i, ref in enumerate(req.images)
        ]
        rows = len(images)
        ids, mask = self.inference.tokens(statement, task, rows)
        regions = batch_of(images, task.max_regions)
        logits = self.inference.example_logits(task, ids, mask, regions, rid)  # rows: (statement, image i)
        probs = softmax(logits)
        labels = task.labels or tuple(f"label_{i}" for i in range(len(probs)))
        best = int(np.argmax(probs))
        return s.VerifyResponse(
            task=task.slug, label=labels[best], scores={labels[i]: float(p) for i, p in enumerate(probs)}
        )
