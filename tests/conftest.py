"""Suite-wide settings: one BLAS thread per xdist worker (the suite runs with -n 2 on 2 cores)."""

import os

from vilbert.threads import fair_share

fair_share()  # before torch: the suite's two workers share 2 cores (vilbert/threads.py)

import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
