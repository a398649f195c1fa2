"""CDDB (Chung et al., NeurIPS 2023) on the exact Gaussian case: a Brownian bridge from the
degraded image ``A^+ y`` to the exact posterior ``p(x | y)`` of a Gaussian prior, with the exact
bridge denoiser and with a biased one (a stand-in for an imperfect network)."""

import pytest
import torch

from reverie.bridge import BrownianBridge, GaussianBridgeReference
from reverie.inverse import MatrixOperator
from reverie.inverse.cddb import cddb
from reverie.timeseries.metrics import gaussian_w2

F64 = torch.float64


def _case():
    g = torch.Generator().manual_seed(0)
    L = 0.4 * torch.randn(4, 4, generator=g, dtype=F64)
    mu = torch.tensor([0.5, -0.3, 0.2, 0.0], dtype=F64)
    cov = L @ L.T + 0.3 * torch.eye(4, dtype=F64)
    A = torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]], dtype=F64) / 2  # 2x average pooling
    sy = 0.1
    gain = cov @ A.T @ torch.linalg.inv(A @ cov @ A.T + sy**2 * torch.eye(2, dtype=F64))
    post_cov = cov - gain @ A @ cov
    y1 = A @ (mu + L @ torch.randn(4, generator=g, dtype=F64)) + sy * torch.randn(2, generator=g,
                                                                                   dtype=F64)
    post_mean = mu + gain @ (y1 - A @ mu)
    bridge = BrownianBridge()
    # x0 | source is the posterior (source = A^+ y and y = A source): mean G A source + (I - G A) mu
    exact = GaussianBridgeReference.build(bridge, gain @ A, mu - gain @ A @ mu, post_cov)
    n = 2000
    src = (torch.linalg.pinv(A) @ y1).expand(n, 4).clone()
    return exact, bridge, A, y1.expand(n, 2).clone(), src, post_mean, post_cov, g


def _w2(x, mean, cov):
    return gaussian_w2(x.mean(0), torch.cov(x.T), mean, cov)


def test_cddb_restores_consistency_and_posterior_of_a_biased_bridge():
    exact, bridge, A, y, src, pm, pc, g = _case()
    op = MatrixOperator(A)
    offset = torch.tensor([0.3, 0.3, -0.2, -0.2], dtype=F64)
    biased = lambda x, t, s: exact(x, t, s) + offset  # noqa: E731
    kw = {"steps": 20, "generator": g}
    ddb = cddb(biased, src, bridge, op, y, step_size=0.0, **kw)
    fix = cddb(biased, src, bridge, op, y, step_size=2.0, **kw)  # 1 / |A A^T|: a projection
    ref = cddb(exact, src, bridge, op, y, step_size=0.0, **kw)
    resid = lambda x: float((x @ A.T - y).norm(dim=1).mean())  # noqa: E731
    assert resid(fix) < 0.05 * resid(ddb)  # data consistency gain
    w_ddb, w_fix, w_ref = _w2(ddb, pm, pc), _w2(fix, pm, pc), _w2(ref, pm, pc)
    assert w_fix < 0.6 * w_ddb and w_fix < w_ref + 0.1, (w_ddb, w_fix, w_ref)
    # sibling: the correction with the wrong operator (pooling the other pairs) is rejected
    wrong = MatrixOperator(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]], dtype=F64) / 2)
    bad = cddb(biased, src, bridge, wrong, y, step_size=2.0, **kw)
    assert resid(bad) > 0.5 * resid(ddb) and _w2(bad, pm, pc) > 2 * w_ddb


def test_cddb_bad_input():
    exact, bridge, A, y, src, *_ = _case()
    with pytest.raises(ValueError, match="y must have shape"):
        cddb(exact, src, bridge, MatrixOperator(A), y[:, :1])
    with pytest.raises(TypeError, match="LinearOperator"):
        cddb(exact, src, bridge, lambda x: x, y)
    with pytest.raises(ValueError, match="step_size"):
        cddb(exact, src, bridge, MatrixOperator(A), y, step_size=-1.0)
