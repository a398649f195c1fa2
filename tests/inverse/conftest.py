"""Shared fixtures for the inverse-problem tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The problems here are tiny: one torch thread is fastest (and robust on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
