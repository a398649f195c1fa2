"""BayesDiff with a Conv2d last layer (a UNet's conv_out): the diagonal Laplace equals the
Linear case on an equivalent 1x1 layer, its 3x3 precision is the patch-wise closed form, and
the sample filtering keeps the least uncertain samples."""

import pytest
import torch

import reverie
from reverie.inverse import bayesdiff, filter_samples, last_layer_laplace

PROC = reverie.VP.linear()
F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class TinyNet(torch.nn.Module):
    """eps = (1 + t) * last(phi(x)) with fixed features phi; ``last`` a Conv2d, or a Linear
    over the channels (the same weights as a 1x1 conv)."""

    def __init__(self, last):
        super().__init__()
        self.first = torch.nn.Conv2d(1, 3, 3, padding=1).to(F64)
        torch.nn.init.normal_(self.first.weight, generator=_gen(0))
        self.last = last.to(F64)

    def forward(self, x, t):
        phi = torch.tanh(self.first(x))
        if isinstance(self.last, torch.nn.Linear):
            out = self.last(phi.movedim(1, -1)).movedim(-1, 1)
        else:
            out = self.last(phi)
        return (1 + t)[:, None, None, None] * out  # an affine map after the layer


def _pair():
    conv, lin = TinyNet(torch.nn.Conv2d(3, 1, 1)), TinyNet(torch.nn.Linear(3, 1))
    lin.first.load_state_dict(conv.first.state_dict())
    with torch.no_grad():
        lin.last.weight.copy_(conv.last.weight.reshape(1, 3))
        lin.last.bias.copy_(conv.last.bias)
    return conv, lin


def test_conv_laplace_equals_linear_on_a_1x1_layer():
    """Weight and bias variances and the propagated eps variance of a 1x1 Conv2d last layer
    equal those of the same weights as a Linear (gain (1 + t)^2 included); a precision 15%
    off is rejected by the same comparison."""
    conv, lin = _pair()
    data = torch.randn(6, 1, 5, 5, generator=_gen(1), dtype=F64)
    kw = dict(prior_precision=0.5, noise_var=2.0, draws=2)
    lc = last_layer_laplace(conv, conv.last, PROC, data, generator=_gen(2), **kw)
    ll = last_layer_laplace(lin, lin.last, PROC, data, generator=_gen(2), **kw)
    assert torch.allclose(lc.weight_var.reshape(1, 3), ll.weight_var, rtol=1e-10, atol=0)
    assert torch.allclose(lc.bias_var, ll.bias_var, rtol=1e-10, atol=0)
    x, t = data[:2], torch.tensor([0.3, 0.7], dtype=F64)
    (mc, vc), (ml, vl) = lc.moments(x, t), ll.moments(x, t)
    assert torch.allclose(mc, ml) and torch.allclose(vc, vl, rtol=1e-10, atol=0)
    # the closed form of the Linear case: precision sum (1 + t)^2 phi^2 / noise_var + prior,
    # over the same two noisings
    g, prec = _gen(2), torch.full((3,), 0.5, dtype=F64)
    for _ in range(2):
        tt = PROC.t_clean + (PROC.t_max - PROC.t_clean) * torch.rand(6, generator=g, dtype=F64)
        xt = PROC.alpha(tt)[:, None, None, None] * data + PROC.sigma(tt)[:, None, None, None] \
            * torch.randn(data.shape, generator=g, dtype=F64)
        phi2 = torch.tanh(lin.first(xt)) ** 2 * ((1 + tt) ** 2)[:, None, None, None]
        prec = prec + phi2.sum((0, 2, 3)) / 2.0
    assert torch.allclose(1 / ll.weight_var[0], prec, rtol=1e-10, atol=0)
    wrong = 1 / (1.15 / lc.weight_var)  # a 15% larger precision
    assert not torch.allclose(wrong.reshape(1, 3), ll.weight_var, rtol=0.05, atol=0)


def test_conv3x3_precision_is_the_patchwise_closed_form():
    """A 3x3 last layer: precision of weight [o, i, k] = sum over pixels of g^2 patch[i, k]^2
    / noise_var + prior, computed here by unfolding the patches."""
    net = TinyNet(torch.nn.Conv2d(3, 2, 3, padding=1))
    data = torch.randn(4, 1, 5, 5, generator=_gen(3), dtype=F64)
    lap = last_layer_laplace(net, net.last, PROC, data, prior_precision=1.0, noise_var=1.0,
                             generator=_gen(4))
    g = _gen(4)
    tt = PROC.t_clean + (PROC.t_max - PROC.t_clean) * torch.rand(4, generator=g, dtype=F64)
    xt = PROC.alpha(tt)[:, None, None, None] * data + PROC.sigma(tt)[:, None, None, None] * \
        torch.randn(data.shape, generator=g, dtype=F64)
    patches = torch.nn.functional.unfold(torch.tanh(net.first(xt)), 3, padding=1)  # [B, 27, P]
    want = ((1 + tt) ** 2 * (patches**2).sum(-1).T).sum(-1) + 1.0  # same for both outputs
    assert torch.allclose(1 / lap.weight_var.reshape(2, 27), want.expand(2, 27), rtol=1e-10, atol=0)
    assert not torch.allclose(1 / lap.weight_var.reshape(2, 27), 1.15 * want, rtol=0.05, atol=0)


def test_filter_samples_keeps_the_least_uncertain():
    """End to end on the tiny conv net: BayesDiff's maps are positive and finite, and the
    filtering keeps round(0.8 n) samples whose summed variance is below every dropped one's."""
    net = TinyNet(torch.nn.Conv2d(3, 1, 3, padding=1))
    lap = last_layer_laplace(net, net.last, PROC, torch.randn(8, 1, 4, 4, generator=_gen(5),
                                                              dtype=F64), generator=_gen(6))
    x = torch.randn(10, 1, 4, 4, generator=_gen(7), dtype=F64)
    res = bayesdiff(lap, x, torch.linspace(PROC.t_max, PROC.t_clean, 4, dtype=F64), mc=2,
                    generator=_gen(8))
    assert torch.isfinite(res.variance).all() and (res.variance > 0).all()
    kept = filter_samples(res, 0.8)
    score = res.variance.sum((1, 2, 3))
    dropped = torch.tensor([i for i in range(10) if i not in kept.tolist()])
    assert len(kept) == 8 and float(score[kept].max()) <= float(score[dropped].min())
    assert score[kept].tolist() == sorted(score[kept].tolist())
    with pytest.raises(ValueError, match="keep"):
        filter_samples(res, 0.0)
