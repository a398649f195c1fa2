"""Guidance: every method a denoiser -> denoiser combinator, registered by name.

``guide(denoiser, method, scale, *, uncond=None, classifier=None, loss=None, reward=None,
**options)`` returns a :class:`Guided` denoiser that any sampler, search method or inverse
solver walks like the original. The methods are in :data:`METHODS`:

* classifier-free family (:mod:`reverie.guidance.cfg`): ``cfg``, ``cfg_rescale``, ``apg``,
  ``cfg_zero_star``, ``cfg_pp``, ``autoguidance``, ``tcfg``, ``mambo_g``, ``fdg``. They
  combine a conditional prediction ``D(x | c)`` (``denoiser`` called with the caller's
  conditioning keywords) and an unconditional one: ``uncond`` maps each conditioning keyword
  to its null value (both branches run in one batched call) or is a separate denoiser (an
  unconditional model, or for autoguidance a weaker model of the same data, called with the
  same keywords);
* gradient family (:mod:`reverie.guidance.gradient`): ``classifier`` (a time-dependent
  classifier ``(x, t) -> log p(c | x_t)`` per row), ``universal`` (a differentiable ``loss``
  of the data prediction, ``x0 -> loss`` per row) and ``reward`` (``x0 -> reward`` per row,
  ascended).

Options every method takes (:data:`COMMON_OPTIONS`): ``schedule`` (``"constant"``,
``"linear"``, ``"cosine"``, ``"power"``: the scale as a function of time, each averaging to
``scale``'s excess over 1 along the walk, with ``power`` the exponent of ``"power"``),
``interval=(t_lo, t_hi)`` (guidance only for ``t_lo <= t <= t_hi``, Kynkaanniemi et al. 2024;
elsewhere scale 1: the conditional model for the classifier-free family, the plain denoiser
for the gradient family) and ``threshold`` (dynamic thresholding, Saharia et al. 2022: the
data prediction is clipped to its ``threshold`` quantile of ``|x0|`` (at least 1) and divided
by it; for data in [-1, 1]).

A method is a function ``fn(call, scale, **options) -> x0`` registered with :func:`register`;
``call`` (a :class:`Call`) gives the branch predictions, the process coefficients at ``t`` and
a per-walk ``memory`` (cleared when ``t`` goes up: a new walk started). A method that must
change the sampler's update (CFG++) also registers a ``hook`` (:data:`reverie.samplers.Hook`)
that :func:`reverie.samplers.run` applies after each step, and names the samplers it is exact
for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from reverie._checks import check_options
from reverie._registry import Registry
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase, _coefs, both_branches

__all__ = [
    "METHODS",
    "COMMON_OPTIONS",
    "SCHEDULES",
    "Call",
    "Guided",
    "Method",
    "guide",
    "register",
]

#: the options every method takes, with their defaults.
COMMON_OPTIONS: dict[str, Any] = {
    "schedule": "constant",
    "power": 2.0,
    "interval": None,
    "threshold": None,
}


def _u_constant(u: float, p: float) -> float:
    return 1.0


#: scale schedules: ``f(u)`` with ``u`` in [0, 1] the fraction of the walk done (in log-SNR,
#: from the noisiest time to the cleanest), each with mean 1 over ``u``; the excess
#: ``scale - 1`` is multiplied by it (guidance weak early, strong late for all but constant,
#: following Wang et al. 2024, "Analysis of classifier-free guidance weight schedulers").
SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "constant": _u_constant,
    "linear": lambda u, p: 2.0 * u,
    "cosine": lambda u, p: 1.0 - math.cos(math.pi * u),
    "power": lambda u, p: (p + 1.0) * u**p,
}


@dataclass(frozen=True)
class Method:
    """A registered guidance method (see the module docstring).

    ``needs``: what ``guide`` must be given (``"uncond"``, ``"classifier"``, ``"loss"``,
    ``"reward"``, or ``"loss|classifier"`` for either); ``scale_range``: the valid scales
    (inclusive); ``options``: the method's own options with defaults; ``hook``: a step hook
    factory ``hook(guided) -> Hook`` for methods that change the update, exact for the
    samplers in ``samplers`` (``None``: all).
    """

    name: str
    fn: Callable[..., Tensor]
    family: str
    needs: tuple[str, ...]
    description: str
    paper: str
    scale_range: tuple[float, float] = (0.0, math.inf)
    options: Mapping[str, Any] = field(default_factory=dict)
    hook: Callable[[Guided], Callable] | None = None
    samplers: tuple[str, ...] | None = None
    schedulable: bool = True  # whether the common schedule / interval options apply
    #: classifier-free family: whether scale 1 is the conditional model (then it alone runs)
    conditional_at_one: bool = True
    #: ``uncond`` is a weaker denoiser of the same data, called with the caller's conditioning
    #: (autoguidance), not an unconditional branch
    weak_model: bool = False


#: Guidance methods by name (lower case with underscores).
METHODS: Registry[Method] = Registry("guidance method", "METHODS")


def register(
    name: str,
    *,
    family: str,
    needs: Sequence[str],
    description: str,
    paper: str,
    scale_range: tuple[float, float] = (0.0, math.inf),
    options: Mapping[str, Any] | None = None,
    hook: Callable | None = None,
    samplers: Sequence[str] | None = None,
    schedulable: bool = True,
    conditional_at_one: bool = True,
    weak_model: bool = False,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register ``fn(call, scale, **options) -> x0`` as a guidance method."""

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        METHODS.add(Method(name, fn, family, tuple(needs), description, paper, scale_range,
                           dict(options or {}), hook, None if samplers is None else
                           tuple(samplers), schedulable,
                           conditional_at_one, weak_model))
        return fn

    return deco


class Call:
    """One evaluation of a guided denoiser at ``(x, t)`` with conditioning ``cond``: what a
    method's function reads. Branch predictions are computed once and cached."""

    def __init__(self, guided: Guided, x: Tensor, t: Tensor, cond: dict[str, Any]):
        self.guided, self.x, self.t, self.cond = guided, x, t, cond
        self.process = guided.process
        self.memory = guided.memory
        self._pair: tuple[Tensor, Tensor] | None = None

    def coefs(self) -> tuple[Any, Any]:
        """``(alpha, sigma)`` at ``t``, broadcastable against ``x``."""
        a, s, _, _ = _coefs(self.process, self.t, self.x)
        return a, s

    def conditional(self) -> Tensor:
        """``D(x | c)``: the denoiser with the caller's conditioning."""
        if self._pair is not None:
            return self._pair[0]
        return self.guided.denoiser(self.x, self.t, **self.cond)

    def pair(self) -> tuple[Tensor, Tensor]:
        """``(D(x | c), D_u(x))``: the conditional and unconditional (or weak) predictions, in
        one batched call when ``uncond`` maps keywords to tensors with the batch first."""
        if self._pair is None:
            self._pair = _pair(self.guided, self.x, self.t, self.cond)
        return self._pair

    def convert(self, x0: Tensor, space: str) -> Tensor:
        """A data prediction as the ``space`` a method is defined in (``x0``, ``eps``, ``v``,
        ``flow`` = the ODE velocity); :meth:`back` inverts it."""
        from reverie.denoisers import from_x0

        return x0 if space == "x0" else from_x0(x0, space, self.x, self.t, self.process)

    def back(self, value: Tensor, space: str) -> Tensor:
        from reverie.denoisers import to_x0

        return value if space == "x0" else to_x0(value, space, self.x, self.t, self.process)


def _pair(guided: Guided, x: Tensor, t: Tensor, cond: dict[str, Any]) -> tuple[Tensor, Tensor]:
    den, uncond = guided.denoiser, guided.uncond
    if isinstance(uncond, DenoiserBase):
        weak = guided.method.weak_model  # a weak model sees the same condition
        return den(x, t, **cond), uncond(x, t, **(cond if weak else {}))
    # null values bound once with one row (e.g. a null class or a negative prompt) serve any batch
    uncond = {k: _rows_for(v, x) for k, v in uncond.items()}
    return both_branches(den, uncond, x, t, cond)


def _rows_for(value: Any, x: Tensor) -> Any:
    if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == 1 != x.shape[0]:
        return value.to(x.device).expand(x.shape[0], *value.shape[1:])
    return value.to(x.device) if isinstance(value, Tensor) else value


class Guided(DenoiserBase):
    """A guided denoiser (module docstring); made by :func:`guide`."""

    def __init__(
        self,
        denoiser: DenoiserBase,
        method: Method,
        scale: float,
        *,
        uncond: Mapping[str, Any] | DenoiserBase | None,
        classifier: Callable | None,
        loss: Callable | None,
        options: dict[str, Any],
    ):
        self.denoiser, self.method, self.scale = denoiser, method, float(scale)
        self.process = denoiser.process
        self.uncond = uncond if isinstance(uncond, DenoiserBase) or uncond is None else dict(
            uncond)
        self.classifier, self.loss = classifier, loss
        common = {k: options.pop(k, v) for k, v in COMMON_OPTIONS.items()}
        self.schedule, self.power = common["schedule"], float(common["power"])
        self.interval, self.threshold = common["interval"], common["threshold"]
        self.options = {**method.options, **options}
        self.memory: dict[str, Any] = {}
        self._last_t: float | None = None
        self._snr_range = tuple(self._log_snr(t) for t in (self.process.t_max,
                                                            self.process.t_min))
        self.step_hook = None if method.hook is None else method.hook(self)
        self.samplers = method.samplers

    def scale_at(self, t: Tensor) -> float:
        """The scale at time ``t`` (schedule and interval applied)."""
        tf = float(t.reshape(-1)[0])
        if self.interval is not None and not (self.interval[0] <= tf <= self.interval[1]):
            return 1.0 if self.method.family == "cfg" else 0.0
        if self.schedule == "constant":
            return self.scale
        lo, hi = self._snr_range
        lam = self._log_snr(tf)
        u = min(max((lam - lo) / (hi - lo), 0.0), 1.0) if hi != lo else 1.0
        base = 1.0 if self.method.family == "cfg" else 0.0  # "no guidance" for the family
        return base + (self.scale - base) * SCHEDULES[self.schedule](u, self.power)

    def _log_snr(self, t: float) -> float:
        """The log-SNR at ``t``, clipped to [-30, 30] (infinite at a flow's noise end)."""
        lam = float(self.process.log_snr(torch.tensor(t, dtype=torch.float64)))
        return min(max(lam, -30.0), 30.0)

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        tf = float(t.max())
        if self._last_t is not None and tf > self._last_t:  # a new walk: forget the last one's
            self.memory.clear()
        self._last_t = tf
        call = Call(self, x, t, cond)
        w = self.scale_at(t)
        off = self.interval is not None and not (
            self.interval[0] <= float(t.reshape(-1)[0]) <= self.interval[1])
        # the classifier-free family is the conditional model outside the interval, and at
        # w = 1 for the methods that say so (Method.conditional_at_one)
        if self.method.family == "cfg" and (off or w == 1.0 and self.method.conditional_at_one):
            out = call.conditional()
        else:
            out = self.method.fn(call, w, **self.options)
        if self.threshold is not None:
            out = dynamic_threshold(out, float(self.threshold))
        return out

    def __repr__(self) -> str:
        return f"Guided({self.method.name}, scale={self.scale}, {self.denoiser!r})"


def dynamic_threshold(x0: Tensor, quantile: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022): ``s = max(1, quantile of |x0|)``
    per sample, then ``clip(x0, -s, s) / s``."""
    flat = x0.detach().abs().reshape(x0.shape[0], -1).float()
    s = torch.quantile(flat, quantile, dim=1).clamp(min=1.0).to(x0.dtype)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def guide(
    denoiser: DenoiserBase,
    method: str,
    scale: float,
    *,
    uncond: Mapping[str, Any] | DenoiserBase | None = None,
    classifier: Callable[[Tensor, Tensor], Tensor] | None = None,
    loss: Callable[[Tensor], Tensor] | None = None,
    reward: Callable[[Tensor], Tensor] | None = None,
    **options: Any,
) -> Guided:
    """``denoiser`` guided by ``method`` at ``scale`` (module docstring). ``reward`` is a loss
    to ascend (``loss = -reward``)."""
    if not isinstance(denoiser, DenoiserBase):
        raise TypeError(f"denoiser must be a reverie denoiser, got {type(denoiser).__name__}")
    info = METHODS[method]
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"scale must be a number, got {scale!r}") from None
    lo, hi = info.scale_range
    if not (lo <= scale <= hi) or math.isnan(scale):
        raise ValueError(f"{info.name} takes a scale in [{lo:g}, {hi:g}], got {scale:g}")
    check_options("guidance method", info.name, options, {**COMMON_OPTIONS, **info.options})
    _check_common(options)
    if not info.schedulable and (options.get("schedule", "constant") != "constant"
                                 or options.get("interval") is not None):
        raise ValueError(f"{info.name} takes no schedule or interval (its scale has no "
                         "'no guidance' value that a schedule could start from)")
    if reward is not None:
        if loss is not None:
            raise ValueError("give a loss or a reward, not both")
        loss = _negated(reward)
    given = {"uncond": uncond, "classifier": classifier, "loss": loss,
             "perturb": options.get("perturb")}  # the perturbed family's perturbation
    for need in info.needs:
        alternatives = need.split("|")
        if all(given.get(a) is None for a in alternatives):
            what = " or ".join(f"{a}=" for a in alternatives)
            raise ValueError(f"guidance method {info.name!r} needs {what} ({info.description})")
    if uncond is not None and not isinstance(uncond, (DenoiserBase, Mapping)):
        raise TypeError("uncond must map conditioning keywords to their null values, or be a "
                        f"denoiser; got {type(uncond).__name__}")
    if info.weak_model and not isinstance(uncond, DenoiserBase):
        raise TypeError(f"{info.name} needs uncond= a weaker denoiser of the same data (e.g. a "
                        "smaller or less trained model)")
    for name, fn in (("classifier", classifier), ("loss", loss)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    return Guided(denoiser, info, scale, uncond=uncond, classifier=classifier, loss=loss,
                  options=dict(options))


def _negated(reward: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    def loss(x0: Tensor) -> Tensor:
        return -reward(x0)

    return loss


def _check_common(options: dict[str, Any]) -> None:
    schedule = options.get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    interval = options.get("interval")
    if interval is not None and (
        not isinstance(interval, (tuple, list)) or len(interval) != 2
        or not interval[0] <= interval[1]
    ):
        raise ValueError(f"interval must be (t_lo, t_hi) with t_lo <= t_hi, got {interval!r}")
    q = options.get("threshold")
    if q is not None and not (isinstance(q, (int, float)) and 0.0 < q <= 1.0):
        raise ValueError(f"threshold is a quantile in (0, 1], got {q!r}")


# the method modules register themselves on import
from reverie.guidance import attention as _attention  # noqa: E402,F401
from reverie.guidance import cfg as _cfg  # noqa: E402,F401
from reverie.guidance import coherence as _coherence  # noqa: E402,F401
from reverie.guidance import density as _density  # noqa: E402,F401
from reverie.guidance import dreamguider as _dreamguider  # noqa: E402,F401
from reverie.guidance import gradient as _gradient  # noqa: E402,F401
from reverie.guidance import minority as _minority  # noqa: E402,F401
from reverie.guidance import self_guidance as _self_guidance  # noqa: E402,F401
from reverie.guidance import semantic as _semantic  # noqa: E402,F401
from reverie.guidance import steered as _steered  # noqa: E402,F401
from reverie.guidance import unite as _unite  # noqa: E402,F401

METHODS.reorder([n for n, m in METHODS.items() if m.family != "perturbed"])  # those last
