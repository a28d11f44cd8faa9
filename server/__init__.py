"""The HTTP gateway: all twelve tasks behind one FastAPI app (`python -m server`).

Modules: `settings` (typed limits and paths), `app` (`create_app`, admission queue, deadline, body cap,
request ids), `routes` (thin routers), `schemas` (request/answer models), `service` (decode -> region
cache -> tokens -> trunk -> head -> readable answer), `errors` (domain errors -> HTTP, in one place),
`backend` (the Protocol + `local` onnxruntime and `torch` backends), `triton_backend` (tritonclient),
`region_cache` (memory LRU + LMDB by image sha256), `metrics` (Prometheus), `loading`, `examples`
(the page's example images, files rendered at build time), `static/` (the web page).

The gateway only: the build pipeline behind `make serve` is `bootstrap/`, the Triton launcher is
`export.triton_server`, and serving imports neither the training code nor the export-building
modules (tests/server/test_door.py).  Importing the package builds nothing.
"""
