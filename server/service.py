"""The gateway's parts, wired once per app: no logic of its own.

`Images` (server/images.py: image reference -> cached regions), `Inference` (server/inference.py:
tokens, padded regions, graph calls through the `Backend`), `Galleries` (server/galleries.py), and one
readout per task endpoint: `VQA` (server/vqa.py), `Ground` (server/ground.py), `Retrieve`
(server/retrieve.py), `Verify` (server/verify.py).  Each readout is called as
``readout(request, uploads, request_id)``; everything is synchronous (it runs in the gateway's worker
threads) and raises only `server.errors` types.  Routes reach the parts through server/deps.py.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

from server.backend import Backend
from server.galleries import Galleries
from server.ground import Ground
from server.images import Images
from server.inference import Inference, Pace
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
        *,
        version: int | None = None,
        images: Images | None = None,
        galleries: Galleries | None = None,
        pace: Pace | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.metrics = metrics
        self.cache = cache
        self.answers = dict(answers)
        self.version = version  # the model version served (None: a backend without versions)
        self.tokenizer = tokenizer
        self.images = images or Images(settings, metrics, cache, extractor)
        self.inference = Inference(settings, backend, tokenizer, metrics, pace)
        if galleries is not None:
            self.galleries = galleries.rebuilt(self.inference, version)
        else:
            self.galleries = Galleries(settings, self.images, self.inference, version=version)
        self.vqa = VQA(settings, self.images, self.inference, self.answers)
        self.ground = Ground(settings, self.images, self.inference)
        self.retrieve = Retrieve(settings, self.images, self.inference, self.galleries)
        self.verify = Verify(self.images, self.inference)
        self._in_flight = 0
        self._lock = threading.Lock()

    def derive(self, backend: Backend, answers: Mapping[str, list[str]], version: int) -> Service:
        """The same gateway parts (region cache, images, tokenizer) over another model version: its
        backend and answer lists; the galleries come along, their pre-filter embeddings for `version`
        computed in the background (server/galleries.py), and the trunk's measured pace too."""
        return Service(
            self.settings,
            backend,
            self.images.extractor,
            self.tokenizer,
            answers,
            self.metrics,
            self.cache,
            version=version,
            images=self.images,
            galleries=self.galleries,
            pace=self.inference.pace,
        )

    @contextlib.contextmanager
    def use(self) -> Iterator[Service]:
        """Count a request using this service (a switch retires the old version once none is left)."""
        with self._lock:
            self._in_flight += 1
        try:
            yield self
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        return self._in_flight
