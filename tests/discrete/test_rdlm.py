"""RDLM (reverie.discrete.rdlm): the sphere map of the statistical manifold against the
Fisher-Rao distance, the logarithm bridge reaching its vertex, the symmetry that maps the bridge
to token 0 onto every token (used for the training states), and the sampler with a fixed
prediction; each check rejects a wrong variant."""

from __future__ import annotations

import pytest
import torch

from reverie.discrete.rdlm import (
    RiemannianBridge,
    fisher_rao,
    sphere_exp,
    sphere_log,
    to_simplex,
    to_sphere,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sphere_map_carries_fisher_rao_to_twice_the_great_circle():
    p = torch.softmax(torch.randn(50, 4, generator=gen(), dtype=torch.float64), -1)
    q = torch.softmax(torch.randn(50, 4, generator=gen(1), dtype=torch.float64), -1)
    u, w = to_sphere(p), to_sphere(q)
    assert torch.allclose(u.norm(dim=-1), torch.ones(50, dtype=torch.float64))
    assert torch.allclose(to_simplex(u), p)
    v = sphere_log(u, w)
    assert torch.allclose((v * u).sum(-1), torch.zeros(50, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(sphere_exp(u, v), w, atol=1e-10)
    # Fisher-Rao = 2 x the geodesic length on the sphere; the plain chord (Hellinger) is not
    assert torch.allclose(fisher_rao(p, q), 2 * v.norm(dim=-1), atol=1e-10)
    assert not torch.allclose(fisher_rao(p, q), 2 * (u - w).norm(dim=-1), atol=1e-3)


@pytest.mark.parametrize("prior", ["masked", "uniform"])
def test_the_logarithm_bridge_reaches_its_vertex(prior):
    """From the prior point, the bridge to e_k ends within 0.5 rad of e_k on every path and
    decodes to k; with gamma_t = 1 (not a bridge) it does not."""
    proc = RiemannianBridge(3, prior)
    tokens = torch.randint(0, 3, (500, 2), generator=gen())
    target = torch.nn.functional.one_hot(tokens, proc.dim).double()
    end = proc.bridge_paths(tokens, 100, gen(1))[-1]
    angle = torch.arccos((end * target).sum(-1).clamp(-1, 1))
    assert float(angle.max()) < 0.5
    assert bool((to_simplex(end)[..., :3].argmax(-1) == tokens).all())
    proc.drift_coeff = lambda t: torch.ones_like(t)
    loose = proc.bridge_paths(tokens, 100, gen(1))[-1]
    assert float(torch.arccos((loose * target).sum(-1).clamp(-1, 1)).mean()) > 0.6


def test_bank_states_are_the_bridge_to_each_token():
    """States drawn from a bank of bridges to token 0, with coordinates 0 and k swapped, have
    the direct bridge-to-k law: mean projections on e_k and on the mask vertex per time agree
    within Monte Carlo error; the unswapped bank does not."""
    proc = RiemannianBridge(3)
    bank = proc.bridge_paths(torch.zeros(3000, 1, dtype=torch.long), 20, gen())[:, :, 0]
    tokens = torch.full((3000, 1), 2)
    direct = proc.bridge_paths(tokens, 20, gen(1))[:, :, 0]  # [21, 3000, D]
    x, t = proc.bank_states(bank, tokens, gen(2))
    j = torch.round(t / (1 - 1e-3) * 20).long()  # grid index of each drawn time
    for k in (5, 12):
        sel = x[j == k, 0]
        for coord in (2, 3):
            mc = 4 * (direct[k, :, coord].std() / len(sel) ** 0.5)
            assert abs(float(sel[:, coord].mean() - direct[k, :, coord].mean())) < mc
        assert abs(float(bank[k, :, 2].mean() - direct[k, :, 2].mean())) > 0.1


def test_sampler_follows_a_fixed_prediction():
    """A model sure of token k at every state walks every position to k; a prediction that
    ignores the mixture weights (all on token 0) does not give k."""
    proc = RiemannianBridge(3)
    want = torch.tensor([2, 0, 1])

    def sure(x, t):
        return torch.nn.functional.one_hot(want, 3).double().expand(x.shape[0], -1, -1) * 50

    x = proc.sample(sure, 200, 3, steps=50, generator=gen())
    assert bool((x == want).all())
    x = proc.sample(lambda x, t: sure(x, t).roll(1, -1), 200, 3, steps=50, generator=gen())
    assert not bool((x == want).any())


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="prior must be"):
        RiemannianBridge(3, "gaussian")
    with pytest.raises(ValueError, match="beta_0"):
        RiemannianBridge(3, beta_0=0.0)
