"""Fair CPU sharing: OpenMP worker threads sleep when they wait instead of spinning.

libgomp (torch's OpenMP runtime) keeps a waiting thread spinning at a barrier by default.  Beside
another CPU-bound process on a small machine that is a collapse, not a fair share: each parallel
region waits for a thread the kernel descheduled, while the waiting threads burn the core it needs.
Measured on the 2-core development machine (a 2-thread demo-trunk forward beside a niced one-thread
job): 0.63 forwards/s with the default policy, 10.7 with `OMP_WAIT_POLICY=PASSIVE`; `python -m bench
--only contention` measures it for extraction, the training step and served answers.

`fair_share()` sets the policy unless the environment already names one, or `TWELVE_OMP_SPIN=1`
keeps libgomp's default (a machine given to one job; the bench's comparison row).  libgomp reads it once, when
torch is first imported, so every entry point (the packages' `__init__`) calls it before importing
torch, and child processes (Triton, the gateway, torchrun workers) inherit it.  onnxruntime's pool is
told the same per session (`session.intra_op.allow_spinning = 0`, server/backend.py).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

FAIR_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def fair_share(environ: MutableMapping[str, str] = os.environ) -> None:
    if environ.get("TWELVE_OMP_SPIN") == "1":
        return
    for key, value in FAIR_ENV.items():
        environ.setdefault(key, value)
