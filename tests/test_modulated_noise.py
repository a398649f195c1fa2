"""Structure-modulated noise (SAM-DiffSR, reverie.modulated_noise): the encoding against brute
force, the forward noise statistics per segment, the training target's exact minimiser and the
unchanged reverse process on exact mixture references; each with a wrong sibling."""

from __future__ import annotations

import pytest
import torch

from reverie.metrics import mode_weight_error
from reverie.modulated_noise import (
    ModulatedMixtureReference,
    encode_segments,
    modulated_add_noise,
    position_embedding,
)
from reverie.process import VPLinear
from reverie.reference import GaussianMixture
from reverie.samplers import sample
from reverie.train.modulated import modulated_loss, train_modulated

D64 = torch.float64
MIX = GaussianMixture([[-1.5, 0.5], [1.0, -0.5]], torch.tensor([0.2, 0.3]), [0.4, 0.6])
OFFSETS = [[1.5, -1.0], [-1.0, 1.2]]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_encode_segments_matches_brute_force():
    g = _gen(0)
    labels = torch.randint(-1, 4, (2, 6, 5), generator=g)
    emb = position_embedding(6, 5)
    enc = encode_segments(labels)
    want = torch.zeros(2, 6, 5, dtype=D64)
    for b in range(2):
        for k in range(4):
            seg = labels[b] == k
            want[b][seg] = float((emb * seg).mean())  # the paper's (embedding * mask).mean()
    assert torch.allclose(enc, want)
    # the mean over the segment alone (a different encoding) is not what the paper does
    seg = labels[0] == 1
    assert abs(float(enc[0][seg][0]) - float(emb[seg].mean())) > 1e-3
    with pytest.raises(TypeError, match="integer"):
        encode_segments(torch.zeros(4, 4))


def test_forward_noise_has_the_segment_means():
    proc = VPLinear()
    labels = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 2, 1]])
    enc = 10 * encode_segments(labels)[None].expand(4000, 3, 4)
    x0 = torch.randn(4000, 3, 4, generator=_gen(1), dtype=D64)
    x_t, eps_m = modulated_add_noise(proc, x0, enc, 0.4, _gen(2))
    a, s = float(proc.alpha(0.4)), float(proc.sigma(0.4))
    noise = (x_t - a * x0) / s
    assert torch.allclose(noise, eps_m)
    assert float((noise.mean(0) - enc[0]).abs().max()) < 0.06          # per-segment mean E
    assert abs(float(noise.var(0).mean()) - 1.0) < 0.04                 # unit variance
    # plain Gaussian noise (no modulation) is rejected
    plain = proc.add_noise(x0, torch.randn(x0.shape, generator=_gen(3), dtype=D64), 0.4)
    assert float((((plain - a * x0) / s).mean(0) - enc[0]).abs().max()) > 0.2


def test_exact_modulated_eps_minimises_the_training_loss():
    proc = VPLinear()
    ref = ModulatedMixtureReference(MIX, OFFSETS, proc)
    n, t = 40000, 0.5
    g = _gen(4)
    k = torch.multinomial(MIX.weights, n, replacement=True, generator=g)
    x0 = ref._draw(k, g)
    enc = ref.offsets[k]
    tt = torch.full((n,), t, dtype=D64)

    def loss(fn):
        return float(modulated_loss(fn, proc, x0, enc, tt, _gen(5)))

    best = loss(lambda x, s: ref.eps(x, t))
    assert best < loss(lambda x, s: 1.15 * ref.eps(x, t)) - 0.01
    plain = MIX.denoiser(proc)                      # E[eps | x_t] without the modulation
    assert best < loss(lambda x, s: plain.eps(x, s)) - 0.05


def test_unchanged_reverse_process_samples_the_data():
    proc = VPLinear()
    ref = ModulatedMixtureReference(MIX, OFFSETS, proc)
    x_T = ref.prior_sample(3000, proc.t_max, _gen(6))
    noise = x_T / float(proc.sigma(proc.t_max))    # samplers take unit noise scaled by sigma_max

    def errors(den, start=noise):
        x = sample(den, start, "heun", 30)
        cov = MIX.covariance()
        return (float((x.mean(0) - MIX.mean()).norm()),
                float((torch.cov(x.T) - cov).norm() / cov.norm()), mode_weight_error(x, MIX))

    m, c, w = errors(ref.denoiser())
    assert m < 0.07 and c < 0.07 and w < 0.03, (m, c, w)
    # the plain (unmodulated) denoiser on the modulated prior is rejected
    m, c, w = errors(MIX.denoiser(proc))
    assert m > 0.2 and w > 0.05, (m, c, w)
    # the paper's unchanged start N(0, sigma_T^2 I) ignores the prior's shift sigma_T E: measurable
    m, c, w = errors(ref.denoiser(), torch.randn(3000, 2, generator=_gen(7), dtype=D64))
    assert m > 0.1, (m, c, w)


def test_train_modulated_learns_the_modulated_noise():
    from reverie.nets import MLP

    proc = VPLinear()
    offsets = torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=D64)
    ref = ModulatedMixtureReference(MIX, offsets, proc)
    data = MIX.sample(2000, _gen(7)).float()
    enc = offsets[:1].float().expand(2000, 2).contiguous()
    torch.manual_seed(0)
    res = train_modulated(MLP(dim=2, hidden=32, depth=1), data, enc, proc, steps=100,
                          batch_size=64, lr=1e-2, ema_decay=0.9, log_every=25)
    x = ref.prior_sample(1000, 0.3, _gen(8))
    exact = ref.eps(x, 0.3)
    with torch.no_grad():
        got = res.ema(x.float(), torch.full((1000,), 0.3)).double()
    err = float(((got - exact) ** 2).sum(1).mean())
    plain = float(((MIX.denoiser(proc).eps(x, 0.3) - exact) ** 2).sum(1).mean())
    assert err < 0.5 * plain, (err, plain)   # closer than the unmodulated exact eps
    assert res.losses[-1] < res.losses[0]
    with pytest.raises(ValueError, match="encoded"):
        train_modulated(MLP(dim=2), data, enc[:10], proc, steps=1)
