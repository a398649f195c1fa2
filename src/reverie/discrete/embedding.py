"""Continuous diffusion on token embeddings: self-conditioned embedding diffusion (SED,
Strudel et al. 2022, arXiv 2211.04236) and Plaid's likelihood bound (Gulrajani & Hashimoto
2023, "Likelihood-Based Diffusion Language Models", arXiv 2305.18619).

Tokens ``x`` ``[B, L]`` are mapped through an embedding table ``E`` ``[V, d]`` and diffused
with Gaussian noise, ``z = E[x] + sigma * eps`` (variance exploding; a VP process is the same
up to the scale ``alpha``). The network outputs *logits over the vocabulary* per position;
its denoised embedding is ``softmax(logits) @ E`` (CDCD's / SED's score interpolation), and
the last state is rounded to tokens (nearest embedding, or the argmax of the logits).

* ``logits_fn(z, sigma, prev) -> [B, L, V]`` -- the model; ``prev`` is SED's self-conditioning
  input (the previous step's denoised embedding, zeros when there is none);
* :func:`exact_token_logits` -- the exact model for a token law given by enumeration (the
  posterior of ``x`` given ``z`` is a finite sum), the reference of the tests;
* :func:`sample` -- DDPM ancestral sampling in embedding space with self-conditioning, then
  rounding; :func:`sed_loss` -- SED's cross-entropy loss with self-conditioning; both take
  SED's span-masking conditioning (``mask=``: positions held at their clean embeddings and
  flagged to the model as ``logits_fn(z, sigma, prev, mask=mask)``; infilling / prefixes);
  :func:`plaid_nelbo` -- Plaid's continuous-time variational bound (VDM form), nats per row;
  :class:`PlaidEmbedding` -- Plaid's learned embedding table and noise-schedule end points.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ROUNDINGS", "PlaidEmbedding", "denoised", "exact_token_logits", "nearest_tokens",
           "plaid_nelbo", "plaid_nelbo_terms", "sample", "sed_loss", "sigma_grid"]

LogitsFn = Callable[[Tensor, Tensor, Tensor], Tensor]

#: How :func:`sample` turns the last state into tokens.
ROUNDINGS = ("nearest", "argmax")


def _table(table: Tensor) -> Tensor:
    if not isinstance(table, Tensor) or table.ndim != 2:
        got = getattr(table, "shape", table)
        raise ValueError(f"table must be an embedding matrix [V, d], got {got}")
    return table


def nearest_tokens(z: Tensor, table: Tensor) -> Tensor:
    """The token of the nearest embedding per position: ``[B, L, d] -> [B, L]``."""
    return torch.cdist(z, _table(table).to(z)[None].expand(z.shape[0], -1, -1)).argmin(-1)


def denoised(logits: Tensor, table: Tensor) -> Tensor:
    """The denoised embedding ``softmax(logits) @ E`` (the posterior mean when the logits are
    the token posterior's): ``[B, L, V] -> [B, L, d]``."""
    return torch.softmax(logits, -1) @ _table(table).to(logits)


def sigma_grid(sigma_min: float, sigma_max: float, steps: int) -> Tensor:
    """``steps + 1`` noise levels, geometric from ``sigma_max`` down to ``sigma_min``."""
    if not 0 < sigma_min < sigma_max or steps < 1:
        raise ValueError(f"need 0 < sigma_min < sigma_max and steps >= 1, got "
                         f"{sigma_min}, {sigma_max}, {steps}")
    return torch.logspace(math.log10(sigma_max), math.log10(sigma_min), steps + 1,
                          dtype=torch.float64)


def exact_token_logits(seqs: Tensor, probs: Tensor, table: Tensor) -> LogitsFn:
    """The exact model of a token law on ``K`` enumerated sequences ``seqs`` ``[K, L]`` with
    probabilities ``probs`` ``[K]``: at ``z = E[x] + sigma * eps`` the posterior of ``x`` is
    ``probs[k] * prod_i N(z_i; E[seqs[k, i]], sigma^2)`` normalised; the logits returned are
    the log of its per-position marginals (``prev`` is ignored). With ``mask`` ``[B, L]``
    (True: the position is conditioning, ``z`` there is the clean embedding) the likelihood
    runs over the free positions only and the conditioning ones must match exactly."""
    table = _table(table)
    if seqs.ndim != 2 or probs.shape != seqs.shape[:1]:
        raise ValueError(f"seqs must be [K, L] with probs [K], got {tuple(seqs.shape)} and "
                         f"{tuple(probs.shape)}")
    emb = table[seqs]  # [K, L, d]
    onehot = torch.nn.functional.one_hot(seqs, table.shape[0]).to(table)  # [K, L, V]

    def logits_fn(z: Tensor, sigma: Tensor, prev: Tensor | None = None,
                  mask: Tensor | None = None) -> Tensor:
        s = torch.as_tensor(sigma, dtype=z.dtype).reshape(-1, 1)
        sq = ((z[:, None] - emb.to(z)[None]) ** 2).sum(-1)  # [B, K, L]
        logw = probs.to(z).log()[None]
        if mask is not None:  # clean conditioning positions: seq_k must match them exactly
            held = mask.to(torch.bool)[:, None].expand_as(sq)
            logw = logw.masked_fill((held & (sq > 1e-12)).any(-1), -math.inf)
            sq = sq.masked_fill(held, 0.0)
        post = torch.softmax(logw - sq.sum(-1) / (2 * s**2), -1)  # p(x = seq_k | z)
        return torch.einsum("bk,klv->blv", post, onehot.to(z)).clamp_min(1e-300).log()

    return logits_fn


def sample(logits_fn: LogitsFn, table: Tensor, n: int, length: int, sigmas: Tensor, *,
           generator: torch.Generator | None = None, self_condition: bool = True,
           rounding: str | None = "nearest", condition: Tensor | None = None,
           mask: Tensor | None = None) -> Tensor:
    """``n`` sequences of ``length`` tokens by DDPM ancestral steps in embedding space along
    the decreasing ``sigmas`` (variance exploding), starting from ``N(0, sigmas[0]^2)``.
    With ``self_condition`` the model gets the previous step's denoised embedding (SED);
    ``rounding`` -- ``"nearest"`` embedding or ``"argmax"`` of the last logits; ``None``
    returns the last state ``[n, length, d]`` unrounded.

    SED's span masking: ``condition`` tokens and a boolean ``mask`` (each ``[length]`` or
    ``[n, length]``, True = given) hold the masked positions at their clean embeddings
    ``E[condition]`` throughout, and the model is called ``logits_fn(z, sigma, prev,
    mask=mask)``; only the free positions are generated (infilling, prefix completion)."""
    table = _table(table)
    if rounding is not None and rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS} or None, got {rounding!r}")
    if (condition is None) != (mask is None):
        raise ValueError("condition and mask go together: give both or neither")
    sigmas = sigmas.to(table)
    z = sigmas[0] * torch.randn(n, length, table.shape[1], generator=generator, dtype=table.dtype)
    kw = {}
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool).expand(n, length)
        condition = torch.as_tensor(condition).expand(n, length)
        clean, held = table[condition], mask[..., None]
        kw = {"mask": mask}
    prev = torch.zeros_like(z)  # no estimate yet
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        if mask is not None:
            z = torch.where(held, clean, z)  # conditioning positions stay clean
        logits = logits_fn(z, s.expand(n), prev if self_condition else torch.zeros_like(z), **kw)
        x0 = denoised(logits, table)  # E[E[x] | z]
        prev = x0
        r = (s_next / s) ** 2
        # q(z_next | z, x0) of the VE forward process: mean x0 + r (z - x0), var s_next^2 (1 - r)
        noise = torch.randn(z.shape, generator=generator, dtype=z.dtype)
        z = x0 + r * (z - x0) + s_next * (1 - r).sqrt() * noise
    if mask is not None:
        z = torch.where(held, clean, z)
    if rounding is None:
        return z
    if rounding == "argmax":
        x = logits_fn(z, sigmas[-1].expand(n), prev if self_condition else 0 * z, **kw).argmax(-1)
    else:
        x = nearest_tokens(z, table)
    return x if mask is None else torch.where(mask, condition, x)


def sed_loss(logits_fn: LogitsFn, tokens: Tensor, table: Tensor, sigma: Tensor, *,
             generator: torch.Generator | None = None, self_condition_p: float = 0.5,
             mask: Tensor | None = None) -> Tensor:
    """SED's loss, nats per row ``[B]``: the cross-entropy of the tokens under the logits at
    ``z = E[x] + sigma * eps`` (``sigma`` ``[B]``); with probability ``self_condition_p`` per
    row the model first runs with ``prev = 0`` and its denoised embedding (no gradient) is
    the ``prev`` of the graded call. With SED's span ``mask`` (``[B, L]`` or ``[L]``, True =
    conditioning) those positions keep their clean embeddings, the model gets
    ``mask=mask``, and the loss sums over the other (generated) positions only."""
    table = _table(table)
    e = table[tokens]
    z = e + sigma.to(e).reshape(-1, 1, 1) * torch.randn(e.shape, generator=generator, dtype=e.dtype)
    kw, held = {}, torch.zeros(tokens.shape, dtype=torch.bool)
    if mask is not None:
        mask = torch.as_tensor(mask, dtype=torch.bool).expand(tokens.shape)
        z = torch.where(mask[..., None], e, z)  # conditioning positions stay clean
        kw, held = {"mask": mask}, mask
    prev = torch.zeros_like(z)
    use = torch.rand(len(z), generator=generator, dtype=torch.float64) < self_condition_p
    if bool(use.any()):
        with torch.no_grad():
            first = denoised(logits_fn(z, sigma, prev, **kw), table)
        prev = torch.where(use.to(z.device).reshape(-1, 1, 1), first, prev)
    logp = torch.log_softmax(logits_fn(z, sigma, prev, **kw), -1)
    nll = -logp.gather(-1, tokens[..., None]).squeeze(-1)
    return nll.masked_fill(held.to(nll.device), 0.0).sum(-1)  # generated positions only


def plaid_nelbo_terms(logits_fn: LogitsFn, tokens: Tensor, table: Tensor,
                      sigma_min: float | Tensor, sigma_max: float | Tensor, *,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The three terms ``(prior, diffusion, reconstruction)`` of :func:`plaid_nelbo`, each
    nats per row ``[B]``. ``table``, ``sigma_min`` and ``sigma_max`` may be tensors that
    require gradients (Plaid learns all three): the noise enters by reparametrisation, so for
    a fixed ``generator`` seed the bound is a differentiable function of them."""
    table = _table(table)
    e = table[tokens]
    b, dt = len(tokens), e.dtype
    s_min = torch.as_tensor(sigma_min, dtype=dt)
    s_max = torch.as_tensor(sigma_max, dtype=dt)
    if not bool(0 < s_min < s_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {float(s_min)}, {float(s_max)}")
    prior = (e**2).sum((-1, -2)) / (2 * s_max**2)
    # log-uniform sigma, stratified over the batch (row i in its own 1/B of [0, 1): every
    # row's sigma is still log-uniform, the batch mean has less variance)
    u = (torch.randperm(b, generator=generator) + torch.rand(b, generator=generator,
                                                            dtype=torch.float64)) / b
    u = u.to(dt)
    span = torch.log(s_max / s_min)  # = (gamma_max - gamma_min) / 2 with gamma = log sigma^2
    sigma = s_min * torch.exp(u * span)  # log-uniform
    z = e + sigma.reshape(-1, 1, 1) * torch.randn(e.shape, generator=generator, dtype=dt)
    x0 = denoised(logits_fn(z, sigma, torch.zeros_like(z)), table)
    diffusion = span * ((e - x0) ** 2).sum((-1, -2)) / sigma**2
    z0 = e + s_min * torch.randn(e.shape, generator=generator, dtype=dt)
    dec = torch.log_softmax(-torch.cdist(z0, table.to(z0)[None].expand(b, -1, -1)) ** 2
                            / (2 * s_min**2), -1)
    recon = -dec.gather(-1, tokens[..., None]).squeeze(-1).sum(-1)
    return prior, diffusion, recon


def plaid_nelbo(logits_fn: LogitsFn, tokens: Tensor, table: Tensor, sigma_min: float | Tensor,
                sigma_max: float | Tensor, *,
                generator: torch.Generator | None = None) -> Tensor:
    """Plaid's variational bound on ``-log p(x)``, nats per row ``[B]``, one Monte Carlo draw
    (Kingma et al. 2021's continuous-time form, variance exploding, SNR ``1 / sigma^2``):

    * prior: ``KL(N(E[x], sigma_max^2) || N(0, sigma_max^2)) = |E[x]|^2 / (2 sigma_max^2)``;
    * diffusion: ``int_{sigma_min}^{sigma_max} |E[x] - x0_hat(z_sigma)|^2 / sigma^3 dsigma``,
      at one log-uniform ``sigma`` per row, stratified over the batch (weight
      ``log(sigma_max / sigma_min) / sigma^2``);
    * reconstruction: ``-log p(x | z_{sigma_min})`` with ``p(x_i | z) ∝ exp(-|z_i -
      E[x_i]|^2 / (2 sigma_min^2))`` (Plaid's learned-embedding decoder).

    Gradients flow to ``table`` and to tensor end points (see :func:`plaid_nelbo_terms`).
    """
    prior, diffusion, recon = plaid_nelbo_terms(logits_fn, tokens, table, sigma_min, sigma_max,
                                                generator=generator)
    return prior + diffusion + recon


class PlaidEmbedding(torch.nn.Module):
    """Plaid's learned parts (Gulrajani & Hashimoto 2023, Sec. 3): the embedding table ``E``
    ``[V, d]`` and the noise schedule's end points, learned as VDM's ``gamma_min`` /
    ``gamma_max`` (``gamma = log sigma^2 = -log SNR``). Between the end points the schedule is
    log-linear; the continuous-time bound does not depend on its shape there (Kingma et al.
    2021, Sec. 5.1), only on the end points, so these are all of the schedule the bound can
    learn. ``nelbo(logits_fn, tokens)`` is the training loss (nats per row), gradients to the
    network, the table and both end points."""

    def __init__(self, vocab: int, dim: int, *, sigma_min: float = 0.02, sigma_max: float = 20.0,
                 generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64):
        super().__init__()
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        table = torch.randn(vocab, dim, generator=generator, dtype=dtype)
        self.table = torch.nn.Parameter(table / table.norm(dim=-1, keepdim=True))
        self.gamma_min = torch.nn.Parameter(torch.tensor(2 * math.log(sigma_min), dtype=dtype))
        self.gamma_max = torch.nn.Parameter(torch.tensor(2 * math.log(sigma_max), dtype=dtype))

    @property
    def sigma_min(self) -> Tensor:
        return torch.exp(self.gamma_min / 2)

    @property
    def sigma_max(self) -> Tensor:
        return torch.exp(self.gamma_max / 2)

    def nelbo(self, logits_fn: LogitsFn, tokens: Tensor, *,
              generator: torch.Generator | None = None) -> Tensor:
        return plaid_nelbo(logits_fn, tokens, self.table, self.sigma_min, self.sigma_max,
                           generator=generator)
