"""`/vqa`: a question about one image -> answers from the task's vocabulary, best first.

image -> regions (server/images.py) -> tokens, `trunk`, `head_answer` (server/inference.py) -> a
sigmoid per answer of the vocabulary (VQA v2, Visual Genome QA or GQA).
"""

from __future__ import annotations

from collections.abc import Mapping

from server import schemas as s
from server.images import Images
from server.inference import Inference, batch_of, best_first, clamp_top_k, sigmoid
from server.settings import Settings
from vilbert.tasks import Endpoint, task_for_dataset


class VQA:
    def __init__(
        self, settings: Settings, images: Images, inference: Inference, answers: Mapping[str, list[str]]
    ) -> None:
        self.settings = settings
        self.images = images
        self.inference = inference
        self.answers = answers

    def __call__(
        self, req: s.VQARequest, uploads: Mapping[str, bytes], rid: str | None = None
    ) -> s.VQAResponse:
        task = task_for_dataset(Endpoint.VQA, req.dataset)
        question = self.inference.text(req.question, "question")
        image = self.images.resolve(req.image, uploads, "image")
        ids, mask = self.inference.tokens(question, task)
        regions = batch_of([image.regions], task.max_regions)
        logits = self.inference.example_logits(task, ids, mask, regions, rid)
        vocab = self.answers.get(task.answer_vocab) or [f"answer_{i}" for i in range(len(logits))]
        n = min(len(vocab), len(logits))
        probs = sigmoid(logits[:n])
        k = clamp_top_k(req.top_k, n, self.settings.max_top_k)
        order = best_first(probs, k)
        return s.VQAResponse(
            task=task.slug, answers=[s.Answer(answer=vocab[i], score=float(probs[i])) for i in order]
        )
