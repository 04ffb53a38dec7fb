"""Shared test settings.

The suite runs on 2 CPU cores under pytest-xdist (two workers): each worker keeps to one intra-op
thread, since two OpenMP threads per worker would oversubscribe the cores and make tiny models'
steps many times slower. Subprocesses started by tests inherit the same limit.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
