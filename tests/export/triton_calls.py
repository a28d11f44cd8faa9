"""Calling the exported models through tritonclient, routed per task as `tasks.json` says.

Test-side code (the gateway has its own Triton adapter): tensor names, dtypes and wire shapes all
come from the export spec, so these helpers are the spec's contract seen from a client.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vilbert.contract import (
    INPUT_IDS,
    LOGITS,
    REGION_MASK,
    TASK_IDS,
    ExportSpec,
    GraphSpec,
    head_feeds,
    model_logits,
    wire_shape,
)
from vilbert.tasks import Task


def request(module, graph: GraphSpec, feeds: Mapping[str, np.ndarray]) -> tuple[list, list]:
    """InferInput / InferRequestedOutput lists for `graph` (module: tritonclient.http or .grpc)."""
    inputs = []
    for t in graph.inputs:
        array = np.ascontiguousarray(feeds[t.name], dtype=t.dtype.numpy)
        array = array.reshape(wire_shape(t, array.shape, graph.batched))
        item = module.InferInput(t.name, list(array.shape), t.dtype.wire)
        if module.__name__.endswith("http"):
            item.set_data_from_numpy(array, binary_data=True)
        else:
            item.set_data_from_numpy(array)
        inputs.append(item)
    outputs = [
        module.InferRequestedOutput(t.name, binary_data=True)
        if module.__name__.endswith("http")
        else module.InferRequestedOutput(t.name)
        for t in graph.outputs
    ]
    return inputs, outputs


def infer(client, module, graph: GraphSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    inputs, outputs = request(module, graph, feeds)
    result = client.infer(graph.name, inputs, outputs=outputs)
    return {t.name: result.as_numpy(t.name) for t in graph.outputs}


def task_logits(client, module, spec: ExportSpec, task: Task, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """Trunk, then the task's head: two calls, as the repository's routes say."""
    route = spec.route_for(task)
    trunk_out = infer(
        client, module, spec.trunk, {**feeds, TASK_IDS: np.full(len(feeds[INPUT_IDS]), route.task_id)}
    )
    head_in = head_feeds(task.head, trunk_out, feeds[REGION_MASK], route.images_per_example)
    logits = infer(client, module, spec.graph(route.head_model), head_in)
    return model_logits(task.head, logits[LOGITS])
