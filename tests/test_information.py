"""Pointwise mutual information from denoising errors (Kong et al., ICLR 2024) against the exact
``log p(x | c) - log p(x)`` of a labelled Gaussian mixture."""

import pytest
import torch

from reverie.likelihood import mmse_gap, mutual_information, pointwise_information
from reverie.process import VE
from reverie.reference.gaussian import GaussianMixture
from reverie.reference.labelled import LabelledMixture


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _case(n=8, seed=0):
    mix = GaussianMixture([[-1.0, 0.0], [1.0, 0.3], [0.0, 1.2]], 0.4, [0.3, 0.3, 0.4])
    lm = LabelledMixture(mix, [0, 1, 1])
    den = lm.denoiser(VE(1e-3, 1e3))
    g = torch.Generator().manual_seed(seed)
    x, comp = mix.sample_with_components(n, g)
    c = lm.labels[comp]
    exact = torch.stack([lm.conditional(int(ci)).log_prob(xi[None])[0] for xi, ci in zip(x, c)])
    exact = exact - mix.log_prob(x)
    conds = ({"class_labels": c}, {"class_labels": torch.full_like(c, lm.null_class)})
    return den, x, conds, exact, g


def test_pointwise_information_matches_exact_and_wrong_weight_is_rejected():
    den, x, (cond, uncond), exact, g = _case()
    assert exact.min() < 0.0 < 0.5 < exact.max()  # both signs: an informative case
    gap = mmse_gap(den, x, cond, uncond, points=96, noise=512, generator=g)
    err = (gap.integrate() - exact).abs().max()
    assert err < 0.08, err
    # sibling: integrating in log-SNR without the Jacobian dg = g dl, or a weight 15% off
    wrong_measure = 0.5 * torch.trapezoid(gap.gap, gap.log_snr, dim=0)
    assert (wrong_measure - exact).abs().max() > 3 * err
    assert (1.15 * gap.integrate() - exact).abs().max() > 2 * err


def test_mutual_information_and_bad_input():
    den, x, (cond, uncond), exact, g = _case(n=16, seed=1)
    mi = mutual_information(den, x, cond, uncond, points=64, noise=64, generator=g)
    assert abs(float(mi) - float(exact.mean())) < 0.05
    # conditioning on the wrong class must lower the information
    flipped = {"class_labels": 1 - cond["class_labels"]}
    assert pointwise_information(den, x, flipped, uncond, points=32, noise=16,
                                 generator=g).mean() < float(exact.mean()) - 0.3
    with pytest.raises(ValueError, match="batch"):
        mmse_gap(den, x[0], cond, uncond)
    with pytest.raises(ValueError, match="lo < hi"):
        mmse_gap(den, x, cond, uncond, log_snr_range=(3.0, -3.0))
