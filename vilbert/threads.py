"""Fair CPU sharing: OpenMP worker threads sleep when they wait instead of spinning.

libgomp (torch's OpenMP runtime) keeps a waiting thread spinning at a barrier by default.  Beside
another CPU-bound process on a small machine that is a collapse, not a fair share: each parallel
region waits for a thread the kernel descheduled, while the waiting threads burn the core it needs.
Measured on the 2-core development machine (a 2-thread demo-trunk forward beside a niced one-thread
job): 0.63 forwards/s with the default policy, 10.7 with `OMP_WAIT_POLICY=PASSIVE`; `python -m bench
--only contention` measures it for extraction, the training step and served answers.

What it costs alone: spinning answers a short wait faster.  Measured with the bench's workers
(`python -m bench.contention --worker extraction|training ...`, 10 s each, 2026-12-06; "beside" = with a
second process running demo training steps), by libgomp spin count before a waiting thread sleeps:

| spin count | extraction alone / beside (images/s) | training step alone / beside (steps/s) |
|---|---|---|
| 0 (PASSIVE, our default) | 25.0 / 23.4 (94 %) | 2.46 / 1.67 (68 %) |
| 3,000 | 28.9 / 13.5 (47 %) | 3.03 / 1.31 (43 %) |
| 30,000 | 33.0 / 3.3 (10 %) | 3.01 / 0.37 (12 %) |
| 300,000 (libgomp's default) | 31.9 / 0.79 (2 %) | 3.36 / 0.55 (16 %) |

Passive gives up 20-27 % alone to keep 68-94 % beside another job; a machine given to one job can set
`TWELVE_OMP_SPIN=1` (or `OMP_WAIT_POLICY` / `GOMP_SPINCOUNT` itself).

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
# Set beside the policy when fair_share chose it, so a later step can tell our default from a user's choice.
DEFAULT_MARK = "TWELVE_OMP_DEFAULT"
# `make serve`'s build steps run one after another on a machine given to them: a short spin keeps most of
# the solo speed (table above) and 39-48 % beside a neighbour (bench contention): the cold start
# needs the speed.
BUILD_STEP_ENV = {"TWELVE_OMP_SPIN": "1", "GOMP_SPINCOUNT": "3000"}


def fair_share(environ: MutableMapping[str, str] = os.environ) -> None:
    if environ.get("TWELVE_OMP_SPIN") == "1":
        return
    for key, value in FAIR_ENV.items():
        if key not in environ:
            environ[key] = value
            environ[DEFAULT_MARK] = "1"


def build_step_env(environ: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """The environment for a build step that runs alone: the short spin of BUILD_STEP_ENV instead of our
    passive default; a policy the user chose (OMP_WAIT_POLICY, GOMP_SPINCOUNT) is kept."""
    env = dict(environ)
    if env.get(DEFAULT_MARK) == "1" or "OMP_WAIT_POLICY" not in env:
        env.pop("OMP_WAIT_POLICY", None)
        env.pop(DEFAULT_MARK, None)
        for key, value in BUILD_STEP_ENV.items():
            env.setdefault(key, value)
    return env
