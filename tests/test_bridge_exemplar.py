"""EBDM's exemplar-guided Brownian bridge in miniature (reverie.bridge with ``exemplar=``): the
bridge sampler with the exact exemplar-conditioned denoiser reaches the Gaussian target given
structure and style; the exemplar-blind denoiser is rejected; training learns the style."""

from __future__ import annotations

import pytest
import torch

from reverie.bridge import (
    BrownianBridge,
    ExemplarBridgeReference,
    GaussianBridgeReference,
    bridge_sample,
)

D64 = torch.float64
A = [[0.5, 0.2], [0.0, -0.8]]
B = [1.0, 0.0]
E = [[1.2, 0.0], [0.4, -0.9]]
S = torch.tensor([[0.2, 0.05], [0.05, 0.1]], dtype=D64)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _reference(bridge, e_scale=1.0):
    return ExemplarBridgeReference.build(bridge, A, B, S, torch.tensor(E) * e_scale)


def test_exemplar_bridge_reaches_the_styled_target():
    bridge = BrownianBridge(1.0)
    ref = _reference(bridge)
    n = 3000
    y = torch.tensor([[0.7, -1.2]], dtype=D64).repeat(n, 1)
    e = torch.tensor([[-0.5, 1.0]], dtype=D64).repeat(n, 1)
    want = y[0] @ torch.tensor(A, dtype=D64).T + torch.tensor(B, dtype=D64) \
        + e[0] @ torch.tensor(E, dtype=D64).T

    def err(den, **kw):
        x = bridge_sample(den, y, bridge, 200, generator=_gen(1), **kw)
        return float((x.mean(0) - want).norm()), float((torch.cov(x.T) - S).norm() / S.norm())

    m, c = err(ref, exemplar=e)
    assert m < 0.03 and c < 0.15, (m, c)
    # the exemplar-blind bridge (style marginalised, e ~ N(0, I)) misses the exemplar's style
    blind = GaussianBridgeReference.build(bridge, A, B, S + torch.tensor(E, dtype=D64)
                                          @ torch.tensor(E, dtype=D64).T)
    assert err(blind)[0] > 0.5
    # a style map 15% off is rejected
    assert err(_reference(bridge, 1.15), exemplar=e)[0] > 0.1
    with pytest.raises(ValueError, match="exemplar"):
        bridge_sample(ref, y, bridge, 4)
    with pytest.raises(ValueError, match="one exemplar per source"):
        bridge_sample(ref, y, bridge, 4, exemplar=e[:5])


def test_train_bridge_with_exemplars_learns_the_style():
    from reverie.nets import MLP
    from reverie.train.interpolants import ExemplarConditioned, train_bridge

    bridge = BrownianBridge(1.0)
    ref = _reference(bridge)
    g = _gen(2)
    n = 4000
    y = torch.randn(n, 2, generator=g, dtype=D64)
    e = torch.randn(n, 2, generator=g, dtype=D64)
    x0 = ref.target_mean(y) + e @ ref.E.T + torch.randn(n, 2, generator=g, dtype=D64) \
        @ torch.linalg.cholesky(S).T
    torch.manual_seed(0)
    net = ExemplarConditioned(MLP(dim=6, hidden=32, depth=1), torch.nn.Linear(2, 2))
    res = train_bridge(net, (x0, y, e), bridge, steps=100, batch_size=64, lr=1e-2,
                       ema_decay=0.9, log_every=25)
    assert res.losses[-1] < res.losses[0]
    t = torch.full((500,), 0.5, dtype=D64)
    x_t = bridge.add_noise(x0[:500], y[:500], torch.randn(500, 2, generator=g, dtype=D64), 0.5)
    exact = ref(x_t, t, y[:500], e[:500])
    with torch.no_grad():
        got = (x_t.float() - res.ema(x_t.float(), t.float(), y[:500].float(),
                                     e[:500].float())).double()
    blind = GaussianBridgeReference.build(bridge, A, B, S + ref.E @ ref.E.T)(x_t, t, y[:500])
    err = float(((got - exact) ** 2).sum(1).mean())
    assert err < 0.1 * float(((blind - exact) ** 2).sum(1).mean()), err
    with pytest.raises(ValueError, match="one exemplar per target"):
        train_bridge(net, (x0, y, e[:3]), bridge, steps=1)
