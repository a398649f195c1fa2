"""reverie.train: targets, an end-to-end fit to a known distribution, resume, label dropout."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie.denoisers import to_x0
from reverie.nets import MLP
from reverie.train import _target, train


@pytest.mark.parametrize("prediction", ["eps", "x0", "v", "flow"])
@pytest.mark.parametrize(
    "process",
    [reverie.VP.linear(), reverie.VPCosine(), reverie.EDM(), reverie.RectifiedFlow()],
    ids=repr,
)
def test_targets_are_what_the_denoiser_adapter_inverts(prediction, process):
    """A network that outputs the exact training target is turned back into x0 by the same
    conversion the samplers use (to_x0): training and sampling agree on each prediction type."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 3, generator=g, dtype=torch.float64)
    u = torch.rand(16, generator=g, dtype=torch.float64)
    t = process.t_min + u * (process.t_max * 0.99 - process.t_min)
    xt = process.add_noise(x0, eps, t)
    target = _target(prediction, x0, eps, t, process)
    assert torch.allclose(to_x0(target, prediction, xt, t, process), x0, atol=1e-6)


def _gaussian_data(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([1.0, -2.0])
    std = torch.tensor([0.5, 0.2])
    return mean, std, mean + std * torch.randn(n, 2, generator=g)


@pytest.mark.parametrize("objective,process", [("edm", None), ("v", reverie.VPCosine())])
def test_fits_a_gaussian(objective, process):
    """A small MLP trained a few hundred steps samples N(mean, diag(std^2)): sample mean and
    std within a tolerance far above the Monte Carlo error (n = 2000: ~0.01) but far below the
    error of an untrained model (the data scale)."""
    mean, std, data = _gaussian_data()
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=64, depth=2)
    res = train(
        net,
        data,
        process=process,
        prediction=objective,
        sigma_data=0.4,
        steps=600,
        batch_size=256,
        lr=3e-3,
        warmup=50,
        ema_decay=0.99,
        progress=False,
    )
    assert res.losses[-1] < res.losses[0]
    den = reverie.Denoiser(res.model, res.process, res.prediction)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    x = reverie.sample(den, noise, sampler="dpmpp_2m", steps=20)
    assert torch.allclose(x.mean(0), mean, atol=0.1), x.mean(0)
    assert torch.allclose(x.std(0), std, atol=0.1), x.std(0)


def test_resume_is_bit_for_bit(tmp_path):
    _, _, data = _gaussian_data(512)
    labels = (data[:, 0] > 1).long()

    def fresh():
        torch.manual_seed(0)
        return MLP(dim=2, hidden=16, depth=1, num_class_embeds=3)

    kw = dict(labels=labels, num_classes=2, batch_size=32, warmup=5, progress=False, seed=3)
    full = train(fresh(), data, steps=40, **kw)
    ckpt = tmp_path / "ck.pt"
    train(fresh(), data, steps=20, checkpoint=ckpt, checkpoint_every=10, **kw)
    resumed = train(fresh(), data, steps=40, checkpoint=ckpt, resume=True, **kw)
    for a, b in zip(full.ema.state_dict().values(), resumed.ema.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.steps == 40


def test_label_dropout_rate():
    """Labels are replaced by the null class with probability label_dropout (binomial
    tolerance: 5 standard deviations)."""
    _, _, data = _gaussian_data(256)
    labels = torch.arange(256) % 4
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x, t, class_labels=None):
            seen.append(class_labels.clone())
            return self.lin(x)

    p, steps, batch = 0.2, 50, 64
    train(
        Spy(),
        data,
        labels=labels,
        num_classes=4,
        label_dropout=p,
        steps=steps,
        batch_size=batch,
        progress=False,
    )
    allseen = torch.cat(seen)
    n = allseen.numel()
    frac = float((allseen == 4).float().mean())
    assert abs(frac - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert int(allseen.max()) == 4 and int(allseen.min()) == 0


def test_ema_decay_zero_is_the_net():
    _, _, data = _gaussian_data(256)
    torch.manual_seed(0)
    res = train(MLP(dim=2, hidden=8, depth=1), data, steps=5, ema_decay=0.0, progress=False)
    for a, b in zip(res.ema.parameters(), res.net.parameters()):
        assert torch.equal(a, b)


def _train_recording(steps: int, **kw):
    """Train a small MLP and record the net's weights before training and after each step."""
    _, _, data = _gaussian_data(256)
    torch.manual_seed(0)
    net = MLP(dim=2, hidden=8, depth=1)
    history = [[p.detach().clone() for p in net.parameters()]]
    res = train(net, data, steps=steps, batch_size=32, progress=False,
                callback=lambda step, loss: history.append(
                    [p.detach().clone() for p in net.parameters()]), **kw)
    return res, history


def ema_of(history, decay) -> list[torch.Tensor]:
    """The EMA recursion ``e_0 = w_0``, ``e_{k+1} = d_k e_k + (1 - d_k) w_{k+1}``."""
    ema = [w.clone() for w in history[0]]
    for k, weights in enumerate(history[1:]):
        d = decay(k)
        ema = [d * e + (1 - d) * w for e, w in zip(ema, weights)]
    return ema


def _ema_error(res, expected) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(res.ema.parameters(), expected))


@pytest.mark.parametrize("steps", [1, 7, 40])
def test_ema_decay_warms_up(steps):
    """After k steps the EMA is the recursion with decay min(ema_decay, (1 + k) / (10 + k))
    (to float rounding, ~1e-7); without the warm-up (decay ema_decay from the start) the EMA
    would stay near the initial weights: 2e-4, 4e-3 and 4e-2 away after 1, 7 and 40 steps."""
    res, history = _train_recording(steps, ema_decay=0.999, warmup=5)
    assert _ema_error(res, ema_of(history, lambda k: min(0.999, (1 + k) / (10 + k)))) < 1e-6
    assert _ema_error(res, ema_of(history, lambda k: 0.999)) > 1e-4


def test_lr_warms_up_linearly():
    """Adam's first update moves each weight by lr_1 = lr / warmup (its first step is
    lr * g / |g|); without warm-up it would move by lr."""
    lr, warmup = 1e-2, 4
    _, history = _train_recording(1, lr=lr, warmup=warmup)
    moved = max(float((b - a).abs().max()) for a, b in zip(history[0], history[1]))
    assert moved == pytest.approx(lr / warmup, rel=1e-3)
    _, history = _train_recording(1, lr=lr, warmup=1)
    moved = max(float((b - a).abs().max()) for a, b in zip(history[0], history[1]))
    assert moved == pytest.approx(lr, rel=1e-3)


def test_bad_input():
    _, _, data = _gaussian_data(64)
    net = MLP(dim=2, hidden=8, depth=1)
    with pytest.raises(ValueError, match="unknown objective"):
        train(net, data, prediction="score")
    with pytest.raises(ValueError, match="needs a process"):
        train(net, data, prediction="eps")
    with pytest.raises(ValueError, match="edm objective needs"):
        train(net, data, prediction="edm", process=reverie.VP.linear())
    with pytest.raises(ValueError, match="both labels and num_classes"):
        train(net, data, labels=torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        train(net, data, labels=torch.full((64,), 5), num_classes=2)
    with pytest.raises(TypeError):
        train(net, data.long())
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(net, data, resume=True, checkpoint="/nonexistent/ck.pt")
