"""The HTTP gateway: all twelve tasks behind one FastAPI app (`python -m server`).

Modules: `settings` (typed limits and paths), `app` (`create_app`, admission queue, deadline, body cap,
request ids), `routes` (thin routers), `deps` (typed FastAPI dependencies the routes take),
`schemas` (request/answer models), `service` (wires the parts below, no logic), `images` (image
reference -> bytes -> decode -> detector -> region cache), `inference` (text checks, tokens, padded
regions, the graph calls), the readouts `vqa`, `ground`, `retrieve`, `verify` (one per task
endpoint), `galleries` (named galleries for /retrieve: append, delete, background rebuilds), with
`gallery_store` (their files under data_dir: segments + a manifest committed last) and
`vector_index` (faiss: exact or HNSW stage-1 search), `protocols` (what the gateway calls on the
extractor and the tokenizer), `errors` (domain errors -> HTTP, in one place), `backend` (the Protocol
+ `local` onnxruntime and `torch` backends), `triton_backend` (tritonclient), `region_cache` (memory
LRU + LMDB by image sha256), `metrics` (Prometheus), `loading`, `examples` (the page's example images,
files rendered at build time), `static/` (the web page).

`POST /vqa` from route to logits, file by file:

1. `routes.py` `vqa`: parse the JSON or multipart body into `VQARequest`, run the readout in a
   worker thread (`Gateway.run`, app.py); the readout comes in as `VQADep` (`deps.py`).
2. `vqa.py` `VQA.__call__`: the dataset's task, the checked question, the image's regions, tokens,
   trunk, head, then the answer vocabulary's top-k by sigmoid.
3. `images.py` `Images.resolve`: base64 / upload / `image_id` -> sha256 -> region cache, or decode ->
   detector -> cache.
4. `inference.py` `Inference.tokens`, `batch_of`, `Inference.trunk`, `Inference.head` (fed as
   `vilbert.contract.head_feeds` says): numpy inputs by the contract's tensor names.
5. `backend.py` `Backend.infer` (`OnnxBackend`, `TorchBackend`; `triton_backend.py` for Triton):
   the graph's outputs, `logits` among them.

The gateway only: the build pipeline behind `make serve` is `bootstrap/`, the Triton launcher is
`export.triton_server`, and serving imports neither the training code nor the export-building
modules (tests/server/test_door.py).  Importing the package builds nothing.
"""

from vilbert.threads import fair_share

fair_share()  # before anything imports torch: OpenMP threads wait without spinning (vilbert/threads.py)
