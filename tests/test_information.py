"""Pointwise mutual information from denoising errors (Kong et al., ICLR 2024) against the exact
``log p(x | c) - log p(x)`` of a labelled Gaussian mixture."""

import pytest
import torch

from reverie.likelihood import (
    clid_score,
    mmse_gap,
    mutual_information,
    pointwise_information,
    roc_auc,
)
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


def test_clid_membership_on_an_overfitted_conditional_mixture():
    """Members are the training pairs (x_i, caption i) of a conditional model that memorised
    them (p(x | i) = 0.7 N(x_i, 0.1^2) + 0.3 N(0, I)); non-members are fresh data with the same
    captions. The CLiD score is the exact log-ratio and separates the two."""
    n = 8
    g = torch.Generator().manual_seed(3)
    members = torch.randn(n, 2, generator=g, dtype=torch.float64)
    means = torch.cat([members, torch.zeros(n, 2, dtype=torch.float64)])
    covs = torch.cat([torch.full((n,), 0.01), torch.ones(n)]).double()
    mix = GaussianMixture(means, covs[:, None, None] * torch.eye(2, dtype=torch.float64),
                          torch.cat([torch.full((n,), 0.7), torch.full((n,), 0.3)]) / n)
    lm = LabelledMixture(mix, list(range(n)) * 2)
    den = lm.denoiser(VE(1e-3, 1e3))
    held = torch.randn(n, 2, generator=g, dtype=torch.float64)
    caps = torch.arange(n)
    null = {"class_labels": torch.full_like(caps, lm.null_class)}
    opts = {"points": 64, "noise": 64, "generator": g}
    s_in = clid_score(den, members, {"class_labels": caps}, null, **opts)
    s_out = clid_score(den, held, {"class_labels": caps}, null, **opts)
    exact_in = torch.stack([lm.conditional(i).log_prob(members[i:i + 1])[0] for i in range(n)])
    assert (s_in - (exact_in - mix.log_prob(members))).abs().max() < 0.15
    assert roc_auc(s_in, s_out) == 1.0
    # siblings: random scores, and the unconditional model alone (no discrepancy), do not
    assert roc_auc(torch.randn(n, generator=g), torch.randn(n, generator=g)) < 0.9
    loss_only = clid_score(den, members, null, null, alpha=0.0, **opts)
    assert roc_auc(loss_only, clid_score(den, held, null, null, alpha=0.0, **opts)) < 0.9
    with pytest.raises(ValueError, match="alpha"):
        clid_score(den, members, {"class_labels": caps}, null, alpha=2.0)


def test_clid_bench_part_on_the_digits_model():
    """Smoke run of ``reverie bench likelihood --sections clid`` on 4 + 4 digits, and its TPR at
    1% FPR on scores where the answer is known."""
    import argparse

    from reverie.bench.likelihood import _auc_stats, _clid

    args = argparse.Namespace(clid_n=4, clid_points=2, clid_noise=1, seed=0)
    rows = _clid(args)
    assert [r["score"].split()[0] for r in rows] == ["CLiD", "loss", "unconditional", "loss",
                                                      "null"]
    assert [r["n_members"] for r in rows] == [4, 4, 4, 4, 2]
    for r in rows:
        assert 0.0 <= r["auc_lo"] <= r["auc"] <= r["auc_hi"] <= 1.0
    # non-members 0..99, members shifted by 0.5: one false positive allowed (98 and 99 pass
    # only 98.5 and 99.5); shifted by 1.5 three members pass
    out = torch.arange(100.0)
    assert _auc_stats(out + 0.5, out, 0, reps=20)["tpr_at_1pct_fpr"] == 0.02
    assert _auc_stats(out + 1.5, out, 0, reps=20)["tpr_at_1pct_fpr"] == 0.03
