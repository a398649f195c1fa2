"""How far samples are from an exact Gaussian law (the GP prior or posterior at a location
set): the mean error and the covariance error, both relative to the law's scale."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gaussian_errors"]


def gaussian_errors(samples: Tensor, mean: Tensor, cov: Tensor) -> dict[str, float]:
    """``mean``: RMS of the sample mean minus ``mean``, over the RMS standard deviation
    ``sqrt(tr(cov) / N)``; ``cov``: Frobenius norm of the sample covariance minus ``cov``
    over the norm of ``cov``. Samples ``[n, N]``; one shared ``mean`` ``[N]``, ``cov``
    ``[N, N]``. Monte-Carlo floor: about ``1 / sqrt(n)`` for the mean, ``sqrt(2 / n)`` for
    the covariance."""
    s = torch.as_tensor(samples, dtype=torch.float64)
    mean = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    if s.ndim != 2 or mean.shape != s.shape[1:] or cov.shape != (s.shape[1], s.shape[1]):
        raise ValueError(f"need samples [n, N], mean [N], cov [N, N]; got {list(s.shape)}, "
                         f"{list(mean.shape)}, {list(cov.shape)}")
    scale = (torch.diagonal(cov).mean().clamp(min=1e-30)).sqrt()
    m_err = float(((s.mean(0) - mean) ** 2).mean().sqrt() / scale)
    c_err = float(torch.linalg.norm(torch.cov(s.T).reshape(s.shape[1], -1) - cov)
                  / torch.linalg.norm(cov))
    return {"mean": m_err, "cov": c_err}
