"""The smallest bench result `bench.report.render` accepts: machine facts and a ceiling, plus sections."""

from __future__ import annotations


def minimal_result(command: str, **sections: object) -> dict:
    return {
        "command": command,
        "quick": True,
        "seconds": 1.0,
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "cpu_flags": [],
            "threads": 2,
            "load_average_start": (0.0, 0.0, 0.0),
            "versions": {},
        },
        "ceiling": {"n": 1, "torch": {"gflops": 1.0}, "onnxruntime": {"gflops": 1.0}, "ceiling_gflops": 1.0},
        **sections,
    }
