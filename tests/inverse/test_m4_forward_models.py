"""Diffusion with forward models (Tewari et al., NeurIPS 2023) on a linear case with an exact law.

A 2-D Gaussian signal ``x`` is never observed; the training data are pairs of noiseless
projections ``o_c = a_c . x`` (context) and ``o_t = a_t . x`` (target). The generator trained
through the target forward model must sample ``p(x | o_c)``, a Gaussian on the line
``a_c . x = o_c`` (closed form: :func:`reverie.reference.linear_gaussian_posterior`)."""

import math

import pytest
import torch

from reverie.inverse.forward_models import SignalGenerator, dfm_loss, dfm_sample, train_dfm
from reverie.process import VPLinear
from reverie.reference import Gaussian, linear_gaussian_posterior
from reverie.timeseries.metrics import gaussian_w2

F64 = torch.float64
A_C = torch.tensor([[0.3, 1.0]])  # context view
A_T = torch.tensor([[1.0, -0.4]])  # target view: [A_C; A_T] is invertible
PRIOR = Gaussian([0.5, -0.5], torch.tensor([[1.0, 0.6], [0.6, 0.8]]))
PROC = VPLinear()


def _train(context_weight=1.0, steps=800):
    g = torch.Generator().manual_seed(0)
    x = PRIOR.sample(4000, g).float()  # the signals: only their projections are used
    torch.manual_seed(0)
    gen = SignalGenerator(1, 1, 2, hidden=32, depth=2, t_max=PROC.t_max)
    return train_dfm(gen, PROC, lambda s: s @ A_T.T, x @ A_C.T, x @ A_T.T,
                     context_forward=lambda s: s @ A_C.T, context_weight=context_weight,
                     steps=steps, batch_size=128, lr=3e-3, ema_decay=0.99).ema


def exact_generator(context, noisy, t):
    """The minimiser of the loss: ``E[x | o_c, o_t^tau]`` (Gaussian conditioning on
    ``[o_c, o_t^tau] = [a_c; alpha a_t] x + [0, sigma eps]``)."""
    t = t.double()
    a, s = PROC.alpha(t)[:, None, None], PROC.sigma(t)
    A = torch.cat([A_C.double().expand(len(t), 1, 2), a * A_T.double()], dim=1)  # [B, 2, 2]
    S, mu = PRIOR.covariances[0], PRIOR.means[0]
    G = A @ S @ A.transpose(1, 2) + torch.diag_embed(torch.stack([0 * s, s**2], dim=1))
    y = torch.cat([context, noisy], dim=1).double() - (A @ mu)
    return mu + (S @ A.transpose(1, 2) @ torch.linalg.solve(G, y.unsqueeze(-1))).squeeze(-1)


def test_the_loss_minimiser_samples_the_exact_posterior():
    # the sampling side alone: with the closed-form minimiser of the loss, the walk in the
    # target observation and the last signal are exact (up to sampling and step error)
    s = _sample(exact_generator, 0.8)
    assert _w2(s, 0.8) < 0.03
    # and the loss ranks it first: a 15% gain on its output costs more
    g = torch.Generator().manual_seed(5)
    x = PRIOR.sample(20000, g)
    t = PROC.t_min + torch.rand(20000, generator=g, dtype=F64) * (PROC.t_max - PROC.t_min)
    eps = torch.randn(20000, 1, generator=g, dtype=F64)
    kw = {"context_forward": lambda s: s @ A_C.double().T}
    args = (PROC, lambda s: s @ A_T.double().T, x @ A_C.double().T, x @ A_T.double().T, eps, t)
    best = float(dfm_loss(exact_generator, *args, **kw))
    off = float(dfm_loss(lambda *a: 1.15 * exact_generator(*a), *args, **kw))
    assert best < off - 0.01, (best, off)


@pytest.fixture(scope="module")
def trained():
    return _train()


def _w2(s, yc):
    post = linear_gaussian_posterior(PRIOR, A_C.double(), torch.tensor([yc], dtype=F64), 0.0)
    return gaussian_w2(s.mean(0), torch.cov(s.T), post.means[0], post.covariances[0])


def _sample(gen, yc, a_t=A_T, seed=1):
    f = lambda s: s @ a_t.T.to(s.dtype)  # noqa: E731
    return dfm_sample(gen, PROC, f, torch.tensor([float(yc)]), 1, n=1000,
                      generator=torch.Generator().manual_seed(seed))


def test_dfm_samples_the_exact_posterior_of_an_unobserved_signal(trained):
    for yc in (0.8, -1.0):
        s = _sample(trained, yc)
        w = _w2(s, yc)
        assert w < 0.1, (yc, w)
        assert float((s @ A_C.double().T - yc).abs().max()) < 0.1  # on the context line
        # siblings: a point estimate (the posterior mean) and the prior are rejected
        post = linear_gaussian_posterior(PRIOR, A_C.double(), torch.tensor([yc], dtype=F64), 0.0)
        assert _w2(post.means[0] + 1e-3 * torch.randn(1000, 2, dtype=F64), yc) > 3 * w
        assert _w2(PRIOR.sample(1000, torch.Generator().manual_seed(2)), yc) > 3 * w
        # sibling: walking with a target view 15% off moves the law off the posterior
        assert _w2(_sample(trained, yc, a_t=1.15 * A_T), yc) > 1.5 * w


def test_dfm_with_observed_contexts_recovers_the_unobserved_prior(trained):
    # contexts of held-out signals: the sampled signals follow the prior, which no training
    # example showed
    x = PRIOR.sample(1000, torch.Generator().manual_seed(7))
    s = dfm_sample(trained, PROC, lambda s: s @ A_T.T.to(s.dtype), (x @ A_C.double().T).float(),
                   1, n=1000, generator=torch.Generator().manual_seed(8))
    law = (PRIOR.means[0], PRIOR.covariances[0])
    w = gaussian_w2(s.mean(0), torch.cov(s.T), *law)
    assert w < 0.1, w
    # sibling: the context observations lifted by the pseudo-inverse (no generator) are rejected
    lifted = (x @ A_C.double().T) @ torch.linalg.pinv(A_C.double()).T
    assert gaussian_w2(lifted.mean(0), torch.cov(lifted.T), *law) > 3 * w


def _view(angle):
    return torch.tensor([math.cos(angle), math.sin(angle)])


def test_random_target_views_give_the_same_posterior_from_every_view():
    # the paper's setting: each pair has its own target view (camera), given to the generator
    # and the forward model; sampling from any view must give the same law p(x | o_c)
    g = torch.Generator().manual_seed(0)
    x = PRIOR.sample(4000, g).float()
    normal = math.atan2(A_C[0, 1], A_C[0, 0]) + math.pi / 2  # the view orthogonal to a_c
    views = torch.stack([_view(normal + 1.2 * (float(u) - 0.5))
                         for u in torch.rand(4000, generator=g)])
    fwd = lambda s, v: (s * v.to(s.dtype)).sum(1, keepdim=True)  # noqa: E731
    torch.manual_seed(0)
    gen = SignalGenerator(1, 1, 2, hidden=32, depth=2, t_max=PROC.t_max, view_dim=2)
    gen = train_dfm(gen, PROC, fwd, x @ A_C.T, fwd(x, views), views=views,
                    context_forward=lambda s: s @ A_C.T.to(s.dtype), steps=1500,
                    batch_size=128, lr=3e-3, ema_decay=0.99).ema
    kw = {"n": 1000, "generator": torch.Generator().manual_seed(1)}
    for yc in (0.8, -1.0):
        for angle in (normal - 0.4, normal + 0.4):
            s = dfm_sample(gen, PROC, fwd, torch.tensor([yc]), 1, view=_view(angle), **kw)
            assert _w2(s, yc) < 0.1, (yc, angle, _w2(s, yc))
    # sibling: the generator told one view while the forward model renders another
    wrong = lambda s, v: fwd(s, _view(normal - 0.4).expand_as(v))  # noqa: E731
    s = dfm_sample(gen, PROC, wrong, torch.tensor([0.8]), 1, view=_view(normal + 0.4), **kw)
    assert _w2(s, 0.8) > 0.3, _w2(s, 0.8)


def test_dfm_needs_the_context_term_and_the_right_forward_model(trained):
    yc, good = 0.8, _w2(_sample(trained, 0.8), 0.8)
    # without the context re-projection the null space of the target view is never trained:
    # the signals leave the context line
    free = _sample(_train(context_weight=0.0, steps=200), yc)
    assert _w2(free, yc) > 3 * good
    assert float((free @ A_C.double().T - yc).abs().mean()) > 0.3


def test_dfm_bad_input(trained):
    f = lambda s: s @ A_T.T  # noqa: E731
    with pytest.raises(ValueError, match="as many context as target"):
        train_dfm(trained, PROC, f, torch.zeros(3, 1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match=r"\[N, dim\]"):
        train_dfm(trained, PROC, f, torch.zeros(3), torch.zeros(3, 1))
    with pytest.raises(ValueError, match="context_weight"):
        train_dfm(trained, PROC, f, torch.zeros(3, 1), torch.zeros(3, 1), context_weight=-1.0)
    with pytest.raises(ValueError, match="time_sampling must be one of"):
        train_dfm(trained, PROC, f, torch.zeros(3, 1), torch.zeros(3, 1), time_sampling="log")
    with pytest.raises(ValueError, match="views must be"):
        train_dfm(trained, PROC, f, torch.zeros(3, 1), torch.zeros(3, 1), views=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="target view"):
        SignalGenerator(1, 1, 2, view_dim=2)(torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2))
    with pytest.raises(ValueError, match="one per sample"):
        dfm_sample(trained, PROC, f, torch.zeros(3, 1), 1, n=2)
    with pytest.raises(ValueError, match="noisy target"):
        trained(torch.zeros(2, 1), torch.zeros(2, 2), torch.zeros(2))
