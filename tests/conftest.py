"""Suite-wide settings: one BLAS thread per xdist worker (the suite runs with -n 2 on 2 cores)."""

import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
