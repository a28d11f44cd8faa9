"""The gateway's parts, wired once per app: no logic of its own.

`Images` (server/images.py: image reference -> cached regions), `Inference` (server/inference.py:
tokens, padded regions, graph calls through the `Backend`), `Galleries` (server/galleries.py), and one
readout per task endpoint: `VQA` (server/vqa.py), `Ground` (server/ground.py), `Retrieve`
(server/retrieve.py), `Verify` (server/verify.py).  Each readout is called as
``readout(request, uploads, request_id)``; everything is synchronous (it runs in the gateway's worker
threads) and raises only `server.errors` types.  Routes reach the parts through server/deps.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from server.backend import Backend
from server.galleries import Galleries
from server.ground import Ground
from server.images import Images
from server.inference import Inference
from server.metrics import Metrics
from server.protocols import Extractor, Tokenizer
from server.region_cache import RegionCache
from server.retrieve import Retrieve
from server.settings import Settings
from server.verify import Verify
from server.vqa import VQA


class Service:
    """The parts the routes call, built from a backend, a region extractor and a tokenizer."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        extractor: Extractor,
        tokenizer: Tokenizer,
        answers: Mapping[str, list[str]],
        metrics: Metrics,
        cache: RegionCache,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = metrics
        self.cache = cache
        self.answers = dict(answers)
        self.images = Images(settings, metrics, cache, extractor)
        self.inference = Inference(settings, backend, tokenizer, metrics)
        self.galleries = Galleries(settings, self.images, self.inference)
        self.vqa = VQA(settings, self.images, self.inference, self.answers)
        self.ground = Ground(settings, self.images, self.inference)
        self.retrieve = Retrieve(settings, self.images, self.inference, self.galleries)
        self.verify = Verify(self.images, self.inference)
