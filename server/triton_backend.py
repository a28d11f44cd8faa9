"""The `triton` backend: the exported graphs served by Triton, reached with tritonclient over HTTP.

The only module that imports `tritonclient`.  Tensors travel as binary data (not JSON lists), the
request id is forwarded as Triton's request `id` so logs line up, and readiness is asked per model
(``GET /v2/models/NAME/ready``): when a python-backend stub dies, server-level readiness can still say
ready while that one model cannot answer.  Triton's python backend goes further: a stub killed
under it leaves its model reporting *ready* while every request fails ("Stub process ... is not
healthy") and the stub is never restarted.  So a model whose request failed that way is reported
not ready here until a request to it succeeds again (after Triton is restarted).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

import numpy as np

from server.backend import Arrays, BackendError, graph_names
from vilbert.contract import DType

_WIRE = {np.dtype("float32"): DType.FP32.wire, np.dtype("int64"): DType.INT64.wire}


class TritonBackend:
    """Per-graph inference through a Triton server's HTTP/REST endpoint."""

    name = "triton"

    def __init__(self, url: str, timeout_s: float = 30.0, client=None) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._shared = client  # a given client (tests) is used from every thread
        # tritonclient.http runs on gevent greenlets, which cannot cross threads: each gateway worker
        # thread (and the event-loop thread probing readiness) gets its own client.
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        self._io: dict[str, tuple[list[str], list[str]]] = {}
        self._served: dict[str, bool] = {}  # optional graphs (split trunk, pre-filter) found ready
        self._dead_stub: dict[str, str] = {}  # model -> Triton's error, while its stub is known dead

    @property
    def client(self):
        if self._shared is not None:
            return self._shared
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(
                url=self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
            )
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _names(self, model: str) -> tuple[list[tuple[str, int]], list[str]]:
        """([(input name, wire rank)], output names) of a model, from its metadata (asked once)."""
        if model not in self._io:
            meta = self.client.get_model_metadata(model)
            inputs = [(i["name"], len(i.get("shape", []))) for i in meta["inputs"]]
            self._io[model] = (inputs, [o["name"] for o in meta["outputs"]])
        return self._io[model]

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], request_id: str | None = None) -> Arrays:
        import tritonclient.http as httpclient

        try:
            input_names, wanted = self._names(model)
            infer_inputs = []
            for name, rank in input_names:
                array = np.ascontiguousarray(inputs[name])
                if rank == array.ndim + 1:
                    # A per-row scalar (task_ids (B,)) travels as (B, 1) to a batching model and is
                    # reshaped back by its config (vilbert.contract.wire_shape).
                    array = array.reshape(*array.shape, 1)
                item = httpclient.InferInput(name, list(array.shape), _WIRE[array.dtype])
                item.set_data_from_numpy(array, binary_data=True)
                infer_inputs.append(item)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in wanted]
            result = self.client.infer(model, infer_inputs, outputs=outputs, request_id=request_id or "")
        except KeyError as exc:
            raise BackendError(f"{model}: missing input {exc}") from exc
        except Exception as exc:  # connection refused, model unavailable, server-side failure
            if "stub process" in str(exc).lower():
                self._dead_stub[model] = str(exc)
            raise BackendError(f"triton {self.url} {model}: {exc}") from exc
        self._dead_stub.pop(model, None)
        return {n: result.as_numpy(n) for n in wanted}

    def has_graph(self, model: str) -> bool:
        """Whether the server has `model` ready; a positive answer is remembered, a negative asked again."""
        if not self._served.get(model):
            try:
                self._served[model] = bool(self.client.is_model_ready(model))
            except Exception:  # unreachable server: the request path reports it
                return False
        return self._served[model]

    def ready(self) -> dict[str, bool]:
        status = {}
        for model in graph_names():
            try:
                status[model] = bool(self.client.is_model_ready(model)) and model not in self._dead_stub
            except Exception:  # server unreachable: every model is not ready
                status[model] = False
        return status

    def close(self) -> None:
        clients = [self._shared] if self._shared is not None else self._clients
        for client in clients:
            # Closing a client whose server is gone must not fail shutdown.
            with contextlib.suppress(Exception):
                client.close()
