"""Posterior sampling with a discrete diffusion prior: ``p(x | y) ∝ p(x) p(y | x)`` for token
sequences observed through a known likelihood.

    obs = NoisyChannel(y, flip=0.2, vocab_size=V)            # or MaskedObservation, Classifier
    res = reverie.discrete.posterior.sample(model, obs, method="sgdd", n=64,
                                            generator=torch.Generator().manual_seed(0))
    res.samples, res.nfe                                       # [n, L]; network calls per sample

Observation models (:class:`Observation`): :class:`NoisyChannel` (each token replaced by
another uniformly drawn one with a known probability), :class:`MaskedObservation` (some
positions seen exactly) and :class:`Classifier` (any ``log p(y | x)`` on whole sequences).

==========  =========================================================  =====================
name        method                                                     prior model
==========  =========================================================  =====================
sgdd        split-Gibbs discrete diffusion (Chu et al. 2025)           uniform-noise
aps         anchored posterior sampling: quantised-expectation          masked
            guidance + anchored remasking (Rout et al. 2025)
smc         FK / SMC steering with the log-likelihood as reward, T = 1  masked
            (:func:`reverie.discrete.search.run`, ``method="fk"``)
==========  =========================================================  =====================

:func:`posterior_law` gives the exact posterior of a small exact sequence model
(:class:`~reverie.reference.HiddenMarkovModel`) by enumeration, the reference of the tests.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from reverie._checks import check_options, in_range, positive_int
from reverie._registry import Registry
from reverie.discrete._sampling import sample_categorical, uniform
from reverie.discrete._walker import Walker, edit_scores, fill_argmax
from reverie.discrete.denoiser import TokenDenoiserBase

__all__ = [
    "POSTERIOR",
    "Observation",
    "NoisyChannel",
    "MaskedObservation",
    "Classifier",
    "PosteriorResult",
    "posterior_law",
    "sample",
]


# ---------------------------------------------------------------------------------------------
# Observation models
# ---------------------------------------------------------------------------------------------


def _tokens(y: Any, vocab_size: int, what: str) -> Tensor:
    y = torch.as_tensor(y)
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or y.ndim != 1:
        raise TypeError(f"{what} must be a 1-D tensor of token ids, got {y.dtype} "
                        f"{tuple(y.shape)}")
    if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= vocab_size:
        raise ValueError(f"{what} must hold token ids in [0, {vocab_size}), got "
                         f"{y.tolist()[:8]}")
    return y.long()


class Observation:
    """``log p(y | x)`` of token sequences ``x`` of ``length`` positions over ``vocab_size``
    symbols. A factorised one has a per-position table ``table[i, v] = log p(y_i | x_i = v)``
    (``None`` otherwise)."""

    length: int
    vocab_size: int
    table: Tensor | None = None

    def log_likelihood(self, x: Tensor) -> Tensor:
        """``log p(y | x)`` per row of ``x`` ``[B, L]``: ``[B]`` float64."""
        x = self.check_tokens(x)
        picked = self.table.gather(1, x.T).T  # [B, L]: log p(y_i | x_i)
        return picked.sum(-1)

    def token_scores(self, anchor: Tensor) -> Tensor:
        """The change of ``log p(y | x)`` when one position of ``anchor`` ``[B, L]`` is set to
        each token, ``[B, L, V]``: for a factorised likelihood its table (the gradient of
        ``log p(y | x)`` in the one-hot embedding; the change up to a constant per position,
        which the guided softmax ignores), a first-order difference otherwise."""
        if self.table is not None:
            return self.table.expand(anchor.shape[0], -1, -1)
        return edit_scores(self.log_likelihood, anchor, self.vocab_size)

    def check(self, vocab_size: int, length: int) -> None:
        """Refuse a model or a canvas this observation does not fit."""
        if vocab_size != self.vocab_size:
            raise ValueError(f"the observation is over {self.vocab_size} symbols but the model "
                             f"predicts {vocab_size}")
        if length != self.length:
            raise ValueError(f"the observation has length {self.length} but the sequences have "
                             f"{length} positions")

    def check_tokens(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype != torch.long or x.ndim != 2:
            raise TypeError("sequences must be a LongTensor [batch, length]")
        if x.shape[1] != self.length:
            raise ValueError(f"the observation has length {self.length}, got sequences of "
                             f"length {x.shape[1]}")
        return x


class NoisyChannel(Observation):
    """Each token of ``x`` is seen as ``y_i = x_i`` with probability ``1 - flip`` and as each
    of the other ``V - 1`` symbols with probability ``flip / (V - 1)`` (a ``V``-ary symmetric
    channel)."""

    def __init__(self, y: Any, flip: float, vocab_size: int):
        positive_int("vocab_size", vocab_size)
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
        if isinstance(flip, bool) or not isinstance(flip, (int, float)):
            raise TypeError(f"flip must be a probability, got {type(flip).__name__}")
        in_range("flip", flip, 0, 1)
        self.y = _tokens(y, vocab_size, "y")
        self.flip, self.vocab_size, self.length = float(flip), vocab_size, self.y.numel()
        same = torch.nn.functional.one_hot(self.y, vocab_size).bool()
        with torch.no_grad():
            p = torch.where(same, 1.0 - self.flip, self.flip / (vocab_size - 1)).double()
        self.table = torch.log(p)

    def __repr__(self) -> str:
        return f"NoisyChannel(y={self.y.tolist()}, flip={self.flip:g})"


class MaskedObservation(Observation):
    """The tokens of ``x`` at the positions ``observed`` (bool ``[L]``) are seen exactly as
    ``y`` (values of ``y`` elsewhere are ignored): inpainting / infilling."""

    def __init__(self, y: Any, observed: Any, vocab_size: int):
        positive_int("vocab_size", vocab_size)
        self.y = _tokens(y, vocab_size, "y")
        obs = torch.as_tensor(observed)
        if obs.dtype != torch.bool or obs.shape != self.y.shape:
            raise ValueError(f"observed must be a bool tensor of shape {tuple(self.y.shape)}, "
                             f"got {obs.dtype} {tuple(obs.shape)}")
        self.observed, self.vocab_size, self.length = obs, vocab_size, self.y.numel()
        same = torch.nn.functional.one_hot(self.y, vocab_size).bool()
        self.table = torch.where(same | ~obs[:, None], 0.0, -math.inf).double()

    def __repr__(self) -> str:
        return f"MaskedObservation(y={self.y.tolist()}, observed={self.observed.tolist()})"


class Classifier(Observation):
    """Any ``log p(y | x)``: ``log_prob(x: LongTensor[B, L]) -> Tensor[B]`` (e.g. a
    classifier's log-probability of a class, or ``r(x) / T`` for a reward)."""

    def __init__(self, log_prob: Callable[[Tensor], Tensor], length: int, vocab_size: int):
        if not callable(log_prob):
            raise TypeError(f"log_prob must be callable, got {type(log_prob).__name__}")
        self.fn = log_prob
        self.length = positive_int("length", length)
        self.vocab_size = positive_int("vocab_size", vocab_size)

    def log_likelihood(self, x: Tensor) -> Tensor:
        x = self.check_tokens(x)
        with torch.no_grad():
            out = self.fn(x)
        if not isinstance(out, Tensor) or out.shape != (x.shape[0],):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"log_prob must return one value per sequence, shape "
                             f"[{x.shape[0]}], got {got}")
        if bool(torch.isnan(out).any()) or bool((out == math.inf).any()):
            raise ValueError("log_prob returned NaN or +inf")
        return out.double()

    def __repr__(self) -> str:
        return f"Classifier(length={self.length}, vocab_size={self.vocab_size})"


# ---------------------------------------------------------------------------------------------
# Registry and entry point
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PosteriorResult:
    """``samples`` ``[n, L]``; ``nfe`` network evaluations per sample; ``info``: diagnostics."""

    samples: Tensor
    nfe: int
    method: str
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered posterior sampler; ``process``: the prior's process kind it needs."""

    name: str
    fn: Callable[..., tuple[Tensor, int, dict[str, Any]]]
    description: str
    process: str

    @property
    def options(self) -> dict[str, Any]:
        sig = inspect.signature(self.fn)
        return {k: p.default for k, p in sig.parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}


#: Discrete posterior samplers by name.
POSTERIOR: Registry[Method] = Registry("discrete posterior method", "POSTERIOR")


def register(name: str, *, description: str, process: str) -> Callable:
    def wrap(fn: Callable) -> Callable:
        POSTERIOR.add(Method(name, fn, description, process))
        return fn

    return wrap


def sample(
    model: TokenDenoiserBase,
    observation: Observation,
    method: str = "sgdd",
    n: int = 1,
    generator: torch.Generator | None = None,
    *,
    length: int | None = None,
    **options: Any,
) -> PosteriorResult:
    """``n`` samples of ``p(x | y)`` for the prior ``model`` (a token denoiser) and the
    ``observation``; ``length`` (optional) is checked against the observation's. Method
    options are keyword arguments (``POSTERIOR[name].options``)."""
    info = POSTERIOR[method]
    if not isinstance(model, TokenDenoiserBase):
        raise TypeError(f"model must be a token denoiser, got {type(model).__name__}")
    if not isinstance(observation, Observation):
        raise TypeError(f"observation must be an Observation (NoisyChannel, MaskedObservation, "
                        f"Classifier), got {type(observation).__name__}")
    if model.process.kind != info.process:
        raise ValueError(f"method {method!r} needs a {info.process}-diffusion prior, but the "
                         f"model's process is {type(model.process).__name__}")
    observation.check(model.vocab_size, observation.length if length is None else length)
    positive_int("n", n)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    check_options("method", method, options, info.options)
    samples, nfe, extra = info.fn(model, observation, n, generator, **options)
    return PosteriorResult(samples, nfe, method, extra)


# ---------------------------------------------------------------------------------------------
# SGDD
# ---------------------------------------------------------------------------------------------


def _reverse_uniform(model: TokenDenoiserBase, x: Tensor, t: float, steps: int,
                     generator: torch.Generator | None) -> Tensor:
    """Ancestral reverse of the uniform-noise process from ``x`` taken as ``x_t`` down to
    ``0`` in ``steps`` equal steps (D3PM posterior, the ``ancestral`` sampler's step)."""
    proc, n = model.process, x.shape[0]
    for k in range(steps):
        tk, sk = t * (1 - k / steps), t * (1 - (k + 1) / steps)
        tt = torch.full((n,), tk, dtype=torch.float64)
        logp = model(x, tt)
        post = proc.posterior(logp, x, tt, torch.full((n,), sk, dtype=torch.float64), model)
        x = sample_categorical(torch.log(post), uniform(x.shape, generator))
    return x


def _likelihood_step(obs: Observation, z: Tensor, alpha: float, mh_steps: int,
                     generator: torch.Generator | None) -> Tensor:
    """Draw ``x ∝ p(y | x) prod_i q_t(x_i | z_i)`` with the uniform kernel
    ``q_t(x | z) = alpha [x = z] + (1 - alpha) / V`` (the Hamming potential of SGDD): per
    position in closed form for a factorised likelihood, else by ``mh_steps`` Metropolis-
    Hastings sweeps of single-site uniform proposals (Chu et al. 2025, code
    ``metropolis_hasting``)."""
    v = obs.vocab_size
    log_k = torch.log(torch.tensor([alpha + (1 - alpha) / v, (1 - alpha) / v],
                                   dtype=torch.float64))  # same token / another token
    if obs.table is not None:
        same = torch.nn.functional.one_hot(z, v).bool()
        logits = obs.table + torch.where(same, log_k[0], log_k[1])
        return sample_categorical(logits, uniform(z.shape, generator))
    x = z.clone()
    cur = obs.log_likelihood(x)
    rows = torch.arange(x.shape[0])
    for _ in range(mh_steps * x.shape[1]):
        u = uniform((x.shape[0], 3), generator)
        i = (u[:, 0] * x.shape[1]).long().clamp_max(x.shape[1] - 1)
        prop = x.clone()
        prop[rows, i] = (u[:, 1] * v).long().clamp_max(v - 1)
        new = obs.log_likelihood(prop)
        # the kernel term changes only at position i: log q(prop_i | z_i) - log q(x_i | z_i)
        d_k = (log_k[(prop[rows, i] != z[rows, i]).long()]
               - log_k[(x[rows, i] != z[rows, i]).long()])
        accept = torch.log(u[:, 2]) < new - cur + d_k
        x = torch.where(accept[:, None], prop, x)
        cur = torch.where(accept, new, cur)
    return x


@register("sgdd", process="uniform",
          description="split-Gibbs discrete diffusion posterior sampling (Chu et al. 2025)")
def sgdd(
    model: TokenDenoiserBase,
    obs: Observation,
    n: int,
    generator: torch.Generator | None,
    *,
    outer_steps: int = 100,
    prior_steps: int = 2,
    t_min: float = 1e-3,
    mh_steps: int = 4,
) -> tuple[Tensor, int, dict]:
    """SGDD (Chu, Wu, Chen, Song, Yue 2025, arXiv 2503.01161; code ``sampling/sgdd.py``):
    split Gibbs sampling of ``pi(x, z) ∝ p(z) exp(-D(x, z; eta)) p(y | x)`` with the Hamming
    potential ``exp(-D) = prod_i q_t(x_i | z_i)`` of the uniform-noise process at time ``t``,
    annealed over ``outer_steps`` times ``t`` from 1 down to ``t_min`` (geometric spacing: a
    choice made here, measured closer to the exact posterior on the exact chain than the linear
    spacing of the paper's code at the same NFE). Per time:

    1. prior step: ``z ~ p(z | x_t = x)``, the model's reverse process from ``x`` taken as the
       noisy state at ``t``, in ``prior_steps`` ancestral steps;
    2. likelihood step: ``x ∝ p(y | x) q_t(x | z)`` (closed form per position for factorised
       likelihoods; else ``mh_steps`` Metropolis-Hastings sweeps).

    The marginal of ``x`` is ``p(y | x) p_t(x)``, the posterior as ``t -> 0``. Returns ``x``.
    Needs a uniform-noise prior (a masked model cannot denoise a substituted token: its
    forward kernel is not a Hamming potential). NFE per sample: ``outer_steps * prior_steps``.
    """
    positive_int("outer_steps", outer_steps)
    positive_int("prior_steps", prior_steps)
    positive_int("mh_steps", mh_steps)
    in_range("t_min", t_min, 0, 1, lo_open=True, hi_open=True)
    v, length = obs.vocab_size, obs.length
    x = (uniform((n, length), generator) * v).long().clamp_max(v - 1)  # x_1 ~ uniform
    times = torch.logspace(0.0, math.log10(t_min), outer_steps, dtype=torch.float64).tolist()
    for t in times:
        z = _reverse_uniform(model, x, t, prior_steps, generator)          # prior step
        alpha = float(model.process.alpha(t))
        x = _likelihood_step(obs, z, alpha, mh_steps, generator)           # likelihood step
    return x, outer_steps * prior_steps, {"times": times}


# ---------------------------------------------------------------------------------------------
# APS
# ---------------------------------------------------------------------------------------------


@register("aps", process="masked",
          description="anchored posterior sampling: quantised-expectation guidance and anchored "
          "remasking (Rout et al. 2025)")
def aps(
    model: TokenDenoiserBase,
    obs: Observation,
    n: int,
    generator: torch.Generator | None,
    *,
    steps: int | None = None,
    scale: float = 1.0,
    remasking: str = "low_confidence",
) -> tuple[Tensor, int, dict]:
    """APS (Rout et al. 2025, arXiv 2510.02291), reconstructed for token likelihoods from the
    paper's two parts (its exact update equations were not available here):

    1. quantised expectation: at each step the prediction ``p(x0 | x_t)`` is quantised to the
       anchor ``x_hat`` (the expected one-hot embedding rounded to the nearest codeword, i.e.
       each masked position's most likely token, :func:`fill_argmax`); the likelihood's
       gradient-like signal at the anchor, ``g[i, v]`` = the change of ``log p(y | x)`` when
       position ``i`` of ``x_hat`` is set to ``v`` (:meth:`Observation.token_scores`: exact
       for factorised likelihoods), guides the whole probability table:
       ``log p~ = log_softmax(log p + scale * g)``;
    2. anchored remasking: the tokens to commit are chosen on the guided table by the token
       sampler ``remasking`` -- default ``low_confidence``, which commits the schedule's count
       of the most confident (likelihood-consistent) candidates first and leaves the others
       masked; ``ancestral`` / ``first_hitting`` commit at random positions instead.

    One network evaluation per step (``steps`` defaults to one per position). An
    approximation: the guidance ignores how the likelihood of the other masked positions
    depends on this one, so APS is biased for correlated priors (measured in the tests and
    ``reverie bench discrete-posterior``)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ValueError(f"scale must be a number >= 0, got {scale!r}")
    walker = Walker(model, obs.length, steps, remasking, generator=generator)
    mask_id = model.mask_id
    x, carry = walker.start(n), None
    for j in range(walker.steps):
        logp = walker.call(x, walker.times(j, n)[0])
        g = obs.token_scores(fill_argmax(x, logp, mask_id))        # guidance at the anchor
        bonus = scale * g if scale > 0 else torch.zeros_like(g)     # (0 * -inf is no guidance)
        guided = torch.log_softmax(logp.double() + bonus, dim=-1)
        guided = torch.where((x == mask_id)[..., None], guided, logp.double())
        x, carry = walker.step(x, j, guided, carry)
    return x, math.ceil(walker.rows / n), {"sampler": walker.info.name, "steps": walker.steps}


# ---------------------------------------------------------------------------------------------
# SMC (FK steering with the log-likelihood as the reward)
# ---------------------------------------------------------------------------------------------


@register("smc", process="masked",
          description="FK / SMC steering with log p(y | x) as the reward at T = 1")
def smc(
    model: TokenDenoiserBase,
    obs: Observation,
    n: int,
    generator: torch.Generator | None,
    *,
    budget: int = 64,
    steps: int | None = None,
    sampler: str = "ancestral",
    potential: str = "difference",
    proposal: str = "prior",
) -> tuple[Tensor, int, dict]:
    """``p(x | y) ∝ p(x) exp(log p(y | x))`` is the tilted law of the reward
    ``log p(y | x)`` at temperature 1, so FK steering (:func:`reverie.discrete.search.fk`)
    samples it as its particles (``budget // NFE(sample)``) grow. ``proposal="twisted"``:
    twisted SMC, decided tokens drawn from the likelihood-tilted table (see ``fk``). Hard
    observations (``MaskedObservation``) give particles of weight zero; a group with all
    weights zero cannot be steered (use ``aps`` or a noisy channel)."""
    from reverie.discrete import search

    res = search.run(model, obs.log_likelihood, "fk", budget=budget, n=n, temperature=1.0,
                     generator=generator, length=obs.length, steps=steps, sampler=sampler,
                     potential=potential, proposal=proposal)
    return res.samples, res.nfe, res.info


# ---------------------------------------------------------------------------------------------
# The exact posterior of a small sequence model
# ---------------------------------------------------------------------------------------------


def posterior_law(model: Any, observation: Observation) -> tuple[Tensor, Tensor]:
    """All ``V^L`` sequences of an exact model (a
    :class:`~reverie.reference.HiddenMarkovModel`) and their posterior probabilities
    ``p(x) p(y | x) / p(y)`` by enumeration (float64)."""
    if not hasattr(model, "joint"):
        raise TypeError("the exact posterior needs a model with joint(length) (an exact "
                        f"HiddenMarkovModel / MarkovChain), got {type(model).__name__}")
    observation.check(model.vocab_size, observation.length)
    seqs, p = model.joint(observation.length)
    logw = torch.log(p) + observation.log_likelihood(seqs)
    return seqs, torch.softmax(logw, 0)
