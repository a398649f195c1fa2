"""A labelled Gaussian mixture: exact class-conditional laws, an exact time-dependent classifier
and exact guidance targets (for :mod:`reverie.guidance`).

Each component ``k`` of a :class:`GaussianMixture` carries a class ``label[k]``. Then

* ``p(x | c)`` is the sub-mixture of the components labelled ``c`` (weights renormalised), and
  its marginal under any Gaussian process is that sub-mixture's marginal;
* the classifier at time ``t`` is exact: ``p(c | x_t) = sum_{k: label k = c} p(k | x_t)`` (the
  component responsibilities of the marginal ``p_t``);
* the class-conditional denoiser ``D(x, t | c)`` is the sub-mixture's exact denoiser, and the
  null class ``num_classes`` gives the unconditional one (for classifier-free guidance);
* the CFG target ``p(x | c)^w p(x)^(1 - w) / Z`` at the data end has no closed form, but in
  two dimensions it is sampled exactly up to a grid of cell side ``h`` (inverse CDF over a fine
  grid, then uniform within the cell; a W2 error below ``h``): :meth:`tilted_sample`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reverie._random import Generators, randn
from reverie.denoisers import Denoiser
from reverie.process import GaussianProcess
from reverie.reference.gaussian import GaussianMixture, _common_time

__all__ = ["LabelledMixture"]


class LabelledMixture:
    """``mixture`` with a class label per component (module docstring)."""

    def __init__(self, mixture: GaussianMixture, labels: Sequence[int] | Tensor):
        lab = torch.as_tensor(labels, dtype=torch.long).flatten()
        if lab.shape != (mixture.n_components,) or bool((lab < 0).any()):
            raise ValueError(f"labels must be {mixture.n_components} non-negative ints, got "
                             f"{lab.tolist()}")
        self.mixture, self.labels = mixture, lab
        self.num_classes = int(lab.max()) + 1
        missing = set(range(self.num_classes)) - set(lab.tolist())
        if missing:
            raise ValueError(f"classes {sorted(missing)} have no component")
        self.null_class = self.num_classes

    def __repr__(self) -> str:
        return f"LabelledMixture({self.mixture!r}, labels={self.labels.tolist()})"

    def conditional(self, c: int) -> GaussianMixture:
        """``p(x | c)``: the components labelled ``c``."""
        keep = self.labels == int(c)
        m = self.mixture
        return GaussianMixture(m.means[keep], m.covariances[keep], m.weights[keep])

    def class_weights(self) -> Tensor:
        """``p(c)`` for each class."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(
            0, self.labels, self.mixture.weights)

    def log_posterior(self, x: Tensor, t: Tensor | float, process: GaussianProcess) -> Tensor:
        """``log p(c | x_t)`` for every class, ``[B, C]`` (float64)."""
        t = _common_time(t)
        resp = self.mixture.responsibilities_at(x, process.alpha(t), process.sigma(t))
        probs = torch.zeros(resp.shape[0], self.num_classes, dtype=resp.dtype)
        return torch.log(probs.index_add_(1, self.labels, resp).clamp_min(1e-300))

    def classifier(self, process: GaussianProcess, c: int | Tensor):
        """The exact classifier of class ``c`` (an int or one per row): ``(x, t) -> log p(c |
        x_t)`` per row, differentiable in ``x`` (for :func:`reverie.guidance.guide`)."""

        def log_p(x: Tensor, t: Tensor) -> Tensor:
            tt = _common_time(t)
            a, s = process.alpha(tt), process.sigma(tt)
            mix = self.mixture
            x64 = x.reshape(x.shape[0], -1).to(torch.float64)
            diff = x64[:, None, :] - a * mix.means[None]  # [B, K, D]
            r = diff if mix.evecs is None else torch.einsum("kji,bkj->bki", mix.evecs, diff)
            var = a**2 * mix.evals[None] + s**2
            loglik = mix.log_weights - 0.5 * ((r**2 / var).sum(-1) + torch.log(var).sum(-1))
            cls = torch.as_tensor(c).to(x.device).reshape(-1).expand(x.shape[0])
            mask = self.labels[None, :] == cls[:, None]  # components of each row's class
            num = torch.logsumexp(loglik.masked_fill(~mask, -torch.inf), dim=1)
            return (num - torch.logsumexp(loglik, dim=1)).to(x.dtype)

        return log_p

    def denoiser(self, process: GaussianProcess) -> Denoiser:
        """The exact class-conditional denoiser: ``D(x, t, class_labels=c)`` with ``c`` an int
        tensor per row; the null class :attr:`null_class` (= ``num_classes``) is the
        unconditional model."""
        parts = [self.conditional(c) for c in range(self.num_classes)] + [self.mixture]

        def fn(x: Tensor, t: Tensor, class_labels: Tensor) -> Tensor:
            tt = _common_time(t)
            a, s = process.alpha(tt), process.sigma(tt)
            out = torch.empty_like(x)
            labels = class_labels.reshape(-1).to(x.device)
            if labels.numel() == 1:
                labels = labels.expand(x.shape[0])
            for c in labels.unique().tolist():
                rows = labels == c
                a_r = a if a.ndim == 0 else a[rows]
                s_r = s if s.ndim == 0 else s[rows]
                out[rows] = parts[c].denoise_at(x[rows], a_r, s_r)
            return out

        return Denoiser(fn, process, prediction="x0")

    def tilted_log_prob(self, x: Tensor, c: int, w: float) -> Tensor:
        """``w log p(x | c) + (1 - w) log p(x)`` (unnormalised), ``[B]``."""
        return w * self.conditional(c).log_prob(x) + (1 - w) * self.mixture.log_prob(x)

    def tilted_sample(self, c: int, w: float, n: int, generator: Generators = None, *,
                      cell: float = 0.02, margin: float = 6.0) -> Tensor:
        """Exact samples (up to the grid, module docstring) of ``p(x | c)^w p(x)^(1 - w) / Z``
        in two dimensions."""
        m = self.mixture
        if m.dim != 2:
            raise ValueError(f"tilted_sample works in 2-D, this mixture has {m.dim} dims")
        sd = m.covariances.diagonal(dim1=1, dim2=2).sqrt().max()
        lo = (m.means.min(0).values - margin * sd).tolist()
        hi = (m.means.max(0).values + margin * sd).tolist()
        xs = torch.arange(lo[0], hi[0], cell, dtype=torch.float64) + cell / 2
        ys = torch.arange(lo[1], hi[1], cell, dtype=torch.float64) + cell / 2
        grid = torch.cartesian_prod(xs, ys)
        logp = self.tilted_log_prob(grid, c, w)
        probs = torch.softmax(logp, 0)
        gen = generator if isinstance(generator, torch.Generator) or generator is None else None
        idx = torch.multinomial(probs, n, replacement=True, generator=gen)
        jitter = torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5
        return grid[idx] + cell * jitter

    def noise(self, n: int, generator: Generators = None) -> Tensor:
        return randn((n, self.mixture.dim), generator, dtype=torch.float64)
