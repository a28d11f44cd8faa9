"""Triton python-backend model that serves one exported ONNX graph with onnxruntime.

`python -m export --backend python` copies this file, unchanged, to ``<model>/<version>/model.py``
next to ``model.onnx``; the same file serves the trunk, every head and the detector graphs, because
tensor names and dtypes are read from the model's config.pbtxt (generated from vilbert/contract.py).
It imports nothing from the project: the repository alone is enough to serve.

The python backend's stub runs the *base* interpreter with its own ``sys.path`` (not the project's
virtual environment) and ignores PYTHONPATH, and numpy 2 in the stub breaks the backend (responses
come back empty).  So before numpy is imported, the site-packages named in the environment variable
``TWELVE_IN_ONE_SITE_PACKAGES`` (set by ``python -m export.triton_server``) are put first on ``sys.path``.
"""

from __future__ import annotations

import os
import sys

SITE_PACKAGES_ENV = "TWELVE_IN_ONE_SITE_PACKAGES"

for _path in reversed([p for p in os.environ.get(SITE_PACKAGES_ENV, "").split(os.pathsep) if p]):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

if int(np.__version__.split(".")[0]) >= 2:
    raise RuntimeError(
        f"numpy {np.__version__} in the Triton python stub: the python backend needs numpy<2 "
        f"(set {SITE_PACKAGES_ENV} to a site-packages with numpy 1.x, as python -m export.triton_server does)"
    )

import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

ONNX_FILE = "model.onnx"


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


class TritonPythonModel:
    """initialize / execute / finalize around one onnxruntime session."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [
            (t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]
        ]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(config, "intra_op_num_threads", "1"))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No spin-waiting between calls: the stubs share a small CPU with the gateway and each other.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_FILE
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        have = [i.name for i in self.session.get_inputs()]
        want = [name for name, _ in self.inputs]
        if have != want:  # a repository edited by hand, or a graph from another spec version
            raise pb_utils.TritonModelException(f"{self.name}: graph inputs {have} != config inputs {want}")

    def execute(self, requests: list) -> list:
        """One response per request; requests of equal shapes (dynamic batching) run as one call."""
        arrays = []
        for request in requests:
            arrays.append(
                [
                    pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(dt, copy=False)
                    for name, dt in self.inputs
                ]
            )
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, feeds in enumerate(arrays):
            key = tuple(a.shape[1:] if self.batched else a.shape for a in feeds)
            groups.setdefault(key if self.batched else (i,), []).append(i)
        for members in groups.values():
            try:
                feeds = [np.concatenate([arrays[i][k] for i in members]) for k in range(len(self.inputs))]
                results = self.session.run(None, dict(zip((n for n, _ in self.inputs), feeds)))
            except Exception as exc:  # one bad request must not take the other requests of the batch down
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"{self.name}: {exc}")
                    )
                continue
            if len(members) == 1:
                parts = [results]
            else:  # batched requests were concatenated along axis 0: give each its rows back
                offsets = np.cumsum([0, *(len(arrays[i][0]) for i in members)])
                parts = [[out[offsets[j] : offsets[j + 1]] for out in results] for j in range(len(members))]
            for i, outs in zip(members, parts):
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(out.astype(dt, copy=False)))
                    for (name, dt), out in zip(self.outputs, outs)
                ]
                responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def finalize(self) -> None:
        self.session = None
