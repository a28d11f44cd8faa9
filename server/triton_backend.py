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

from export.versions import CONTROL_HEADER
from server.backend import Arrays, BackendError, graph_names
from vilbert.contract import DType

_WIRE = {np.dtype("float32"): DType.FP32.wire, np.dtype("int64"): DType.INT64.wire}


class TritonBackend:
    """Per-graph inference through a Triton server's HTTP/REST endpoint."""

    name = "triton"

    def __init__(
        self,
        url: str,
        timeout_s: float = 30.0,
        client=None,
        version: int | None = None,
        control_key: str | None = None,
    ) -> None:
        self.url = url
        self.timeout_s = timeout_s
        # Every call names this model version (Triton holds two during a switch); None: Triton's choice.
        self.version = version
        self._v = "" if version is None else str(version)
        self.control_key = control_key  # Triton's repository-API key (export/versions.py CONTROL_HEADER)
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
            meta = self.client.get_model_metadata(model, model_version=self._v)
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
            result = self.client.infer(
                model, infer_inputs, model_version=self._v, outputs=outputs, request_id=request_id or ""
            )
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
                self._served[model] = bool(self.client.is_model_ready(model, model_version=self._v))
            except Exception:  # unreachable server: the request path reports it
                return False
        return self._served[model]

    def ready(self) -> dict[str, bool]:
        status = {}
        for model in graph_names():
            try:
                ready = self.client.is_model_ready(model, model_version=self._v)
                status[model] = bool(ready) and model not in self._dead_stub
            except Exception:  # server unreachable: every model is not ready
                status[model] = False
        return status

    def close(self) -> None:
        clients = [self._shared] if self._shared is not None else self._clients
        for client in clients:
            # Closing a client whose server is gone must not fail shutdown.
            with contextlib.suppress(Exception):
                client.close()

    # --- the repository API (explicit model control), for version switches (server/models.py) ---
    # A full-size trunk takes minutes to load on a CPU: its own client, with its own timeout.
    LOAD_TIMEOUT_S = 900.0

    def _control(self, action: str, model: str) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(
            url=self.url, connection_timeout=self.timeout_s, network_timeout=self.LOAD_TIMEOUT_S
        )
        try:
            headers = {CONTROL_HEADER: self.control_key} if self.control_key else None
            getattr(client, f"{action}_model")(model, headers=headers)
        except Exception as exc:
            raise BackendError(f"triton {self.url}: {action}ing {model}: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def load(self, model: str) -> None:
        """Ask Triton to (re)load `model` from its config.pbtxt; returns once it has loaded."""
        self._control("load", model)
        self._io.pop(model, None)

    def unload(self, model: str) -> None:
        self._control("unload", model)

    def version_ready(self, model: str, version: int) -> bool:
        try:
            return bool(self.client.is_model_ready(model, model_version=str(version)))
        except Exception:
            return False
