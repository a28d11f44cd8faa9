"""The `triton` backend: the exported graphs served by Triton, reached with tritonclient over HTTP.

The only module that imports `tritonclient`.  Tensors travel as binary data (not JSON lists), the
request id is forwarded as Triton's request `id` so logs line up, and readiness is asked per model
(``GET /v2/models/NAME/ready``): when a python-backend stub dies, server-level readiness can still say
ready while that one model cannot answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import numpy as np

from export.spec import DType
from server.backend import Arrays, BackendError, graph_names

_WIRE = {np.dtype("float32"): DType.FP32.wire, np.dtype("int64"): DType.INT64.wire}


class TritonBackend:
    """Per-graph inference through a Triton server's HTTP/REST endpoint."""

    name = "triton"

    def __init__(self, url: str, timeout_s: float = 30.0, client=None) -> None:
        if client is None:
            import tritonclient.http as httpclient

            client = httpclient.InferenceServerClient(
                url=url, connection_timeout=timeout_s, network_timeout=timeout_s
            )
        self.url = url
        self.client = client
        self._outputs: dict[str, list[str]] = {}

    def _output_names(self, model: str) -> list[str]:
        if model not in self._outputs:
            meta = self.client.get_model_metadata(model)
            self._outputs[model] = [o["name"] for o in meta["outputs"]]
        return self._outputs[model]

    def infer(self, model: str, inputs: Mapping[str, np.ndarray], request_id: str | None = None) -> Arrays:
        import tritonclient.http as httpclient

        try:
            wanted = self._output_names(model)
            meta_inputs = [i["name"] for i in self.client.get_model_metadata(model)["inputs"]]
            infer_inputs = []
            for name in meta_inputs:
                array = np.ascontiguousarray(inputs[name])
                item = httpclient.InferInput(name, list(array.shape), _WIRE[array.dtype])
                item.set_data_from_numpy(array, binary_data=True)
                infer_inputs.append(item)
            outputs = [httpclient.InferRequestedOutput(n, binary_data=True) for n in wanted]
            result = self.client.infer(model, infer_inputs, outputs=outputs, request_id=request_id or "")
        except KeyError as exc:
            raise BackendError(f"{model}: missing input {exc}") from exc
        except Exception as exc:  # connection refused, model unavailable, server-side failure
            raise BackendError(f"triton {self.url} {model}: {exc}") from exc
        return {n: result.as_numpy(n) for n in wanted}

    def ready(self) -> dict[str, bool]:
        status = {}
        for model in graph_names():
            try:
                status[model] = bool(self.client.is_model_ready(model))
            except Exception:  # server unreachable: every model is not ready
                status[model] = False
        return status

    def close(self) -> None:
        # Closing a client whose server is gone must not fail shutdown.
        with contextlib.suppress(Exception):
            self.client.close()
