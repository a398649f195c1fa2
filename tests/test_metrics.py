"""Sample-set distances against closed forms."""

import math

import pytest
import torch

from reverie.metrics import SlicedWasserstein, sliced_wasserstein


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_sliced_wasserstein_of_a_shift_is_the_projected_shift():
    """y = x + m: every projection differs by u.m after sorting, so SW2 = sqrt(mean_u (u.m)^2)
    and SW1 = mean_u |u.m| exactly, with the same directions."""
    x = torch.randn(500, 3, generator=_gen(0), dtype=torch.float64)
    m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    u = torch.randn(3, 64, generator=_gen(1), dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    shift = m @ u
    assert sliced_wasserstein(x + m, x, 64, _gen(1)) == pytest.approx(
        math.sqrt(float((shift**2).mean())), rel=1e-12)
    assert sliced_wasserstein(x + m, x, 64, _gen(1), p=1) == pytest.approx(
        float(shift.abs().mean()), rel=1e-12)


def test_reference_object_matches_the_function_for_any_sizes():
    ref = torch.randn(4000, 4, generator=_gen(2), dtype=torch.float64)
    sw = SlicedWasserstein(ref, 32, _gen(3))
    for n in (1000, 4000, 6000):
        x = torch.randn(n, 4, generator=_gen(n), dtype=torch.float64) * 1.3
        assert sw(x) == pytest.approx(sliced_wasserstein(x, ref, 32, _gen(3)), rel=1e-12)
    # after the cache holds other sizes, a shifted copy of the reference is at the closed-form
    # distance sqrt(mean_u (u.m)^2) along the object's own directions (and a 10% longer shift
    # is not)
    m = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    exact = math.sqrt(float(((m @ sw.u) ** 2).mean()))
    assert sw(ref + m) == pytest.approx(exact, rel=1e-12)
    assert sw(ref + 1.1 * m) == pytest.approx(1.1 * exact, rel=1e-12)
    with pytest.raises(ValueError, match="dimensions differ"):
        sw(torch.zeros(10, 5))
    with pytest.raises(ValueError, match="p must be 1 or 2"):
        SlicedWasserstein(ref, p=3)
