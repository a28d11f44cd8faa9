"""Export: the trunk, the six heads and the detector as ONNX graphs in a Triton model repository.

Modules, in the order an export runs through them:

- `export.spec`          names, dtypes, shapes and per-task routes, generated from the task table
- `export.graphs`        the PyTorch module behind each graph; ONNX export, optimisation, int8, fp16
- `export.parity`        the parity gate (generated inputs + task metric), `export.runtime` runs graphs
- `export.triton_config` config.pbtxt per model (python / onnxruntime / tensorrt renderings)
- `export.repository`    the repository layout (+ `export.triton_model`, the python-backend model.py)
- `export.pipeline`      `run_export`, what `python -m export` calls; `export.report` the parity report
- `export.check`         `python -m export.check [--fix]`: generated configs vs committed goldens
"""
