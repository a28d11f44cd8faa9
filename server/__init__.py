"""The HTTP gateway: all twelve tasks behind one FastAPI app (`python -m server`).

Modules: `settings` (typed limits and paths), `app` (`create_app`, admission queue, deadline, body cap,
request ids), `routes` (thin routers), `schemas` (request/answer models), `service` (decode -> region
cache -> tokens -> trunk -> head -> readable answer), `errors` (domain errors -> HTTP, in one place),
`backend` (the Protocol + `local` onnxruntime and `torch` backends), `triton_backend` (tritonclient),
`region_cache` (memory LRU + LMDB by image sha256), `metrics` (Prometheus), `loading`, `examples`,
`bootstrap` (`make serve`), `static/` (the web page).  `triton` (the bundled Triton launcher) belongs
to the export package's side.  Importing the package builds nothing.
"""
