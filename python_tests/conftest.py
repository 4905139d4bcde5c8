import os
import sys
from typing import Iterator

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Run a test module on one thread, then restore the thread count (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): for tiny models more threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
