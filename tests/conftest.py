"""Every test runs from a fixed seed derived from its id (printed, so a failure is reproducible:
``pytest 'tests/test_x.py::test_y[case]'`` reruns it with the same seed)."""

import random
import zlib

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def fixed_seed(request):
    seed = zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    print(f"[seed] {request.node.nodeid}: torch/random/numpy seeded with {seed}")
    return seed
