"""Calling the exported models through tritonclient, routed per task as `tasks.json` says.

Test-side code (the gateway has its own Triton adapter): tensor names, dtypes and wire shapes all
come from the export spec, so these helpers are the spec's contract seen from a client.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from export.spec import FUSED, FUSED_PAIRS, LOGITS, REGION_STATES, ExportSpec, GraphSpec, wire_shape
from vilbert.tasks import Head, Task


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


def head_feeds(
    task: Task, trunk_out: Mapping[str, np.ndarray], region_mask: np.ndarray
) -> dict[str, np.ndarray]:
    """What the task's head reads, from the trunk's outputs (NLVR2: rows regrouped per example)."""
    match task.head:
        case Head.REGION:
            return {REGION_STATES: trunk_out[REGION_STATES], "region_mask": region_mask}
        case Head.PAIR:
            fused = trunk_out[FUSED]
            return {FUSED_PAIRS: fused.reshape(-1, task.images_per_example, fused.shape[-1])}
        case _:
            return {FUSED: trunk_out[FUSED]}


def task_logits(client, module, spec: ExportSpec, task: Task, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
    """Trunk, then the task's head: two calls, as the repository's routes say."""
    route = spec.route_for(task)
    trunk_out = infer(
        client, module, spec.trunk, {**feeds, "task_ids": np.full(len(feeds["input_ids"]), route.task_id)}
    )
    logits = infer(
        client, module, spec.graph(route.head_model), head_feeds(task, trunk_out, feeds["region_mask"])
    )
    out = logits[LOGITS]
    return out[:, 0] if task.head is Head.MATCH else out
