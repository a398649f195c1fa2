import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from reverie.reference import MarkovChain  # noqa: E402


@pytest.fixture(scope="module")
def chain() -> MarkovChain:
    """A 3-symbol chain with strongly dependent neighbours (parallel decoding is visibly off)."""
    return MarkovChain.random(3, torch.Generator().manual_seed(0), sharpness=2.0)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run many tiny tensor ops; on a shared 2-core machine OpenMP threads only
    add synchronisation cost (7x slower measured), so use one thread and restore afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
