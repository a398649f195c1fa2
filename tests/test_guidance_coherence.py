"""The bundled weak digits model (autoguidance) and coherence-aware training and guidance
(Dufour et al. 2024, "Don't drop your samples!") on the bundled digits-noisy / digits-coherence
models, trained with the same recipe on the same noisy labels."""

from __future__ import annotations

import pytest
import torch

import reverie
from reverie.data import load_digits
from reverie.guidance import METHODS, guide
from reverie.train.recipes import noisy_digit_labels

SIGMAS = (0.2, 0.5, 1.0)  # EDM noise levels of the held-out denoising loss


class _Models(dict):
    """The bundled models, each loaded on first use."""

    def __missing__(self, name: str):
        self[name] = reverie.load(name)
        return self[name]


@pytest.fixture(scope="module")
def models():
    return _Models()


@pytest.fixture(scope="module")
def classifier():
    """A classifier of the TRUE labels (logistic regression on the clean training digits;
    about 0.97 on the held-out ones)."""
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits("train")
    clf = LogisticRegression(max_iter=500).fit(x.flatten(1).numpy(), y.numpy())
    return lambda s: torch.from_numpy(clf.predict(s.flatten(1).numpy()))


def denoising_losses(model, n: int = 150) -> torch.Tensor:
    """Mean squared error of the data prediction on the first ``n`` held-out digits at each
    noise level of :data:`SIGMAS` (fixed noise, the true labels)."""
    x0, y = (v[:n] for v in load_digits("test"))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=x0.dtype)
    out = []
    for sigma in SIGMAS:
        with torch.no_grad():
            d = model.denoiser(x0 + sigma * eps, torch.full((n,), sigma), class_labels=y)
        out.append(float(((d - x0) ** 2).mean()))
    return torch.tensor(out)


def is_weaker(weak: torch.Tensor, strong: torch.Tensor, margin: float = 0.05) -> bool:
    """Whether the held-out losses ``weak`` exceed ``strong`` by ``margin`` (relative) at every
    noise level."""
    return bool((weak > (1 + margin) * strong).all())


def test_weak_model_has_the_same_interface_and_is_weaker(models):
    """digits-weak: same data shape, classes, null class and process as digits, a quarter of
    the parameters, and a higher held-out denoising loss at every level; fed the main model
    itself (or the two swapped), the check rejects it."""
    main, weak = models["digits"], models["digits-weak"]
    assert (weak.sample_shape, weak.num_classes, weak.has_null_class) == (
        main.sample_shape, main.num_classes, main.has_null_class)
    assert repr(weak.process) == repr(main.process)
    count = lambda m: sum(p.numel() for p in m.net.parameters())  # noqa: E731
    assert count(weak) < 0.3 * count(main)
    lw, lm = denoising_losses(weak), denoising_losses(main)
    assert is_weaker(lw, lm), (lw, lm)  # measured: 16-24% higher
    assert not is_weaker(lm, lm) and not is_weaker(lm, lw)


def test_autoguidance_with_the_weak_model(models):
    """Autoguidance with the real weak model samples finite digits; at scale 1 it is the main
    model; at scale 2 it moves the prediction away from the weak one, D_weak + 2 (D - D_weak)."""
    main, weak = models["digits"], models["digits-weak"]
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(8)
    t = torch.full((8,), 1.0)
    den = guide(main.denoiser, "autoguidance", 2.0, uncond=weak.denoiser)
    d, d_weak = main.denoiser(x, t, class_labels=labels), weak.denoiser(x, t, class_labels=labels)
    torch.testing.assert_close(den(x, t, class_labels=labels), d_weak + 2 * (d - d_weak))
    out = reverie.sample(den, x, sampler="ddim", steps=4, cond={"class_labels": labels})
    plain = reverie.sample(main.denoiser, x, sampler="ddim", steps=4,
                           cond={"class_labels": labels})
    assert bool(torch.isfinite(out).all()) and not torch.allclose(out, plain)


def test_noisy_labels_are_as_documented():
    """Coherence ~ U(0, 1); a label is resampled with probability 1 - c (half of them), so the
    fraction of wrong labels falls with the coherence."""
    _, y = load_digits("train")
    noisy, c = noisy_digit_labels(y)
    wrong = noisy != y
    assert 0.4 < float(wrong.float().mean()) < 0.5  # 0.5 resampled x 0.9 land elsewhere
    assert float(wrong[c > 0.8].float().mean()) < 0.2 < 0.7 < float(wrong[c < 0.2].float().mean())
    torch.testing.assert_close(noisy_digit_labels(y), (noisy, c))  # seeded


def test_coherence_denoiser_interface(models):
    """digits-coherence takes coherence= (a number or one per sample, default 1); out of
    [0, 1], NaN or the wrong count is a one-line error."""
    den = models["digits-coherence"].denoiser
    x, t, y = torch.randn(3, 1, 8, 8), torch.full((3,), 0.5), torch.tensor([1, 2, 3])
    one = den(x, t, class_labels=y, coherence=1.0)
    torch.testing.assert_close(den(x, t, class_labels=y), one)
    torch.testing.assert_close(den(x, t, class_labels=y, coherence=torch.ones(3)), one)
    assert not torch.allclose(den(x, t, class_labels=y, coherence=0.0), one)
    for bad in (1.5, -0.1, float("nan"), torch.tensor([0.5, 2.0, 0.5])):
        with pytest.raises(ValueError, match=r"coherence must lie in \[0, 1\]"):
            den(x, t, class_labels=y, coherence=bad)
    with pytest.raises(ValueError, match="one per sample"):
        den(x, t, class_labels=y, coherence=torch.ones(2))


def test_coherence_cfg_algebra(models):
    """coherence_cfg = D(y, c=low) + w (D(y, c=high) - D(y, c=low)), against the branches
    computed by hand (defaults 0 and 1, and other options); a wrong coefficient or swapped
    branches are rejected by the same comparison."""
    den = models["digits-coherence"].denoiser
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t, y = torch.full((4,), 0.8), torch.tensor([0, 3, 5, 7])
    assert METHODS["coherence_cfg"].needs == ()
    for w, high, low in ((2.0, 1.0, 0.0), (3.5, 0.9, 0.3), (1.0, 0.7, 0.2)):
        opts = {} if (high, low) == (1.0, 0.0) else {"high": high, "low": low}
        got = guide(den, "coherence_cfg", w, **opts)(x, t, class_labels=y)
        d_hi = den(x, t, class_labels=y, coherence=high)
        d_lo = den(x, t, class_labels=y, coherence=low)
        torch.testing.assert_close(got, d_lo + w * (d_hi - d_lo), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got, d_lo + 1.15 * w * (d_hi - d_lo), atol=1e-4) or w == 0
        assert not torch.allclose(got, d_hi + w * (d_lo - d_hi), atol=1e-4)


def test_coherence_cfg_bad_input(models):
    den = models["digits-coherence"].denoiser
    x, t, y = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="0 <= low <= high <= 1"):
        guide(den, "coherence_cfg", 2.0, low=0.8, high=0.2)(x, t, class_labels=y)
    with pytest.raises(ValueError, match="not coherence="):
        guide(den, "coherence_cfg", 2.0)(x, t, class_labels=y, coherence=0.5)
    with pytest.raises(ValueError, match="coherence-conditioned denoiser"):
        guide(models["digits"].denoiser, "coherence_cfg", 2.0)(x, t, class_labels=y)


def _accuracy(model, classifier, n: int = 100, **kw) -> float:
    labels = torch.arange(n) % 10
    x = model.sample(n, sampler="ddim", steps=8, seed=5, labels=labels, **kw)
    return float((classifier(x) == labels).float().mean())


def test_coherence_beats_ignoring_the_noise(models, classifier):
    """On the same noisy labels and recipe, the coherence model asked for coherence 1 (no
    guidance) and with coherence-aware CFG at scale 2 follows the TRUE labels better than
    the model that ignores the noise (no guidance; plain CFG at 2). Asked for coherence 0 --
    the sibling -- it is far worse: the label is ignored."""
    noisy, coh = models["digits-noisy"], models["digits-coherence"]
    base = {w: _accuracy(noisy, classifier, cfg_scale=w) for w in (1.0, 2.0)}
    high = _accuracy(coh, classifier)  # coherence 1 (the default)
    guided = _accuracy(coh, classifier, cfg_scale=2.0, guidance="coherence_cfg")
    low = _accuracy(coh, classifier, guidance="coherence_cfg",
                    guidance_options={"high": 0.0})  # w = 1 at high = 0: coherence 0
    # measured (1000 training steps each): noisy 0.42 / 0.65 (CFG 2); coherence 1: 0.52,
    # coherence-aware CFG 2: 0.76; coherence 0: 0.32
    assert high > base[1.0] + 0.05, (high, base)
    assert guided > base[2.0] + 0.05, (guided, base)
    assert not low > base[1.0] + 0.05, (low, base)  # the same check rejects coherence 0
    assert low < high - 0.1, (low, high)


def test_cli_coherence_cfg(tmp_path, models):
    """``reverie sample --model digits-coherence --guidance coherence_cfg --option low=0.2``
    gives the samples of the Python API; plain CFG at the same scale gives others."""
    import numpy as np

    from reverie.cli import main

    base = ["sample", "--model", "digits-coherence", "--label", "3", "--cfg", "2", "--n", "4",
            "--steps", "4", "--quiet", "--seed", "1"]
    assert main([*base, "--guidance", "coherence_cfg", "--option", "low=0.2", "--out",
                 str(tmp_path / "c.npy")]) == 0
    api = models["digits-coherence"].sample(4, steps=4, seed=1, labels=3, cfg_scale=2.0,
                                            guidance="coherence_cfg",
                                            guidance_options={"low": 0.2})
    cli = np.load(tmp_path / "c.npy")
    assert np.allclose(cli, api.numpy(), atol=1e-5)
    assert main([*base, "--out", str(tmp_path / "cfg.npy")]) == 0
    assert not np.allclose(np.load(tmp_path / "cfg.npy"), cli, atol=1e-3)
