"""Export: the trunk, the six heads and the detector as ONNX graphs in a Triton model repository.

Modules, in the order an export runs through them:

- `vilbert.contract`     (the wire contract, beside the task table) names, dtypes, shapes, per-task
                         routes and each head's I/O; `vilbert.graphs` the PyTorch module of each graph
- `export.graphs`        the detector graphs' modules; ONNX export, optimisation, int8, fp16
- `export.parity`        the parity gate (generated inputs + task metric), `export.runtime` runs graphs
- `export.triton_config` config.pbtxt per model (python / onnxruntime / tensorrt renderings)
- `export.repository`    the repository layout (+ `export.triton_model`, the python-backend model.py)
- `export.versions`      model versions in one repository: which is active, the serving configs
- `export.pipeline`      `run_export`, what `python -m export` calls; `export.report` the parity report
- `export.check`         `python -m export.check [--fix]`: generated configs vs committed goldens
"""

from vilbert.threads import fair_share

fair_share()  # before anything imports torch: OpenMP threads wait without spinning (vilbert/threads.py)
