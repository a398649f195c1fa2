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
