"""Steerable conditional diffusion (reverie.inverse.steerable_solve): LoRA test-time
adaptation to one measurement of an out-of-distribution image, against the exact posterior."""

import pytest
import torch

import reverie
from reverie.inverse import Inpainting, add_lora, steerable_solve

F64 = torch.float64
PROC = reverie.VP.linear()
SHIFT = 2.0  # the data: N(SHIFT, I) per pixel; the pretrained prior: N(0, I)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class PixelNet(torch.nn.Module):
    """The exact x0-prediction of N(0, I) data, D(x_t) = alpha x_t / (alpha^2 + sigma^2), as one
    linear layer shared by all pixels on the features [k_t x, 1] (like a 1x1 convolution)."""

    def __init__(self):
        super().__init__()
        self.last = torch.nn.Linear(2, 1).to(F64)
        with torch.no_grad():
            self.last.weight.copy_(torch.tensor([[1.0, 0.0]]))
            self.last.bias.zero_()

    def forward(self, x, t):
        a, s = PROC.alpha(t)[:, None], PROC.sigma(t)[:, None]
        phi = torch.stack([a / (a**2 + s**2) * x, torch.ones_like(x)], -1)
        return self.last(phi).squeeze(-1)


def test_adaptation_moves_the_unobserved_pixels_to_the_true_prior():
    """Half of 8 pixels observed (sigma_y = 0.1) from N(2, I) data, the model trained on
    N(0, I): the exact posterior mean of an unobserved pixel under the true prior is 2 (the
    prior is diagonal), the pretrained model's is 0. The adapters, shared by all pixels, learn
    the shift from the observed ones: the unobserved pixels' mean is within 0.5 of 2; without
    adaptation (adapt_steps 0: DDS with the pretrained network) it stays near 0 and fails the
    same check. The pretrained network is unchanged."""
    g = _gen(0)
    mask = torch.tensor([True, False] * 4)
    op = Inpainting(mask)
    x_true = SHIFT + torch.randn(8, generator=g, dtype=F64)
    y = op.A(x_true[None])[0] + 0.1 * torch.randn(4, generator=g, dtype=F64)
    net = PixelNet()
    den = reverie.Denoiser(net, PROC, "x0")

    def unobserved_mean(adapt_steps):
        x = steerable_solve(den, op, y, n=64, steps=30, adapt_steps=adapt_steps, lr=0.05,
                            rank=1, generator=_gen(1))
        return float(x[:, ~mask].mean()), x

    adapted, x = unobserved_mean(3)
    assert abs(adapted - SHIFT) < 0.5, adapted
    assert float((x[:, mask] - y).abs().mean()) < 0.3  # the observed pixels fit y
    plain, _ = unobserved_mean(0)
    assert abs(plain - SHIFT) > 0.5, plain
    assert float(net.last.bias.detach()) == 0.0 and net.last.weight.requires_grad


def test_steerable_bad_input():
    den = reverie.Denoiser(PixelNet(), PROC, "x0")
    op = Inpainting(torch.tensor([True, False] * 4))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        steerable_solve(reverie.Denoiser(lambda x, t: x, PROC, "x0"), op, torch.zeros(4))
    with pytest.raises(ValueError, match="adapt_steps"):
        steerable_solve(den, op, torch.zeros(4, dtype=F64), adapt_steps=-1)
    with pytest.raises(ValueError, match="no torch.nn.Linear"):
        add_lora(torch.nn.Sequential(torch.nn.ReLU()))
