"""FAM diffusion's frequency modulation (Yang et al. 2025, "FAM Diffusion: frequency and
attention modulation for high-resolution image generation with Stable Diffusion", paper 42).

FAM first generates at the trained resolution (the *global* pass: the layout is right), enlarges
that sample, noises it (diffuse) and denoises at the high resolution (the *native* pass: the
textures are right) while a time-dependent filter in Fourier space takes the low frequencies
from the enlarged global sample and the high frequencies from the native pass. The paper
modulates the latent before each network call (DemoFusion's "skip residual"
``alpha_t up(x_base) + sigma_t eps``); reverie modulates the *data prediction*,

    D_FAM(x, t) = IFFT[ (1 - W_t) . FFT(D(x, t)) + W_t . FFT(up(x_base)) ],

so it is a denoiser combinator every sampler runs (with a deterministic sampler and a constant
prediction ``up(x_base)``, the state's low frequencies follow exactly that skip residual, its
noise being the sampler's own). ``W_t`` is a box of frequencies, a fraction ``cut`` of the
trained band, carrying the weight ``w``; ``(cut, w)`` are functions of the noise fraction
``rho = sigma^2 / (alpha^2 + sigma^2)`` (1 at pure noise, 0 at the data).

:class:`AttentionModulation` is the paper's AM (sec. 3.3, Fig. 2c) as we read it: before each
high-resolution call the network also denoises the noised enlarged global sample
``alpha_t up(x_base) + sigma_t eps`` (the skip residual, ``eps`` drawn once), and the chosen
self-attention layers (default: every attention module of the U-Net's up blocks) take the
probabilities ``(1 - lam) P + lam P_global``: the layout of the global pass steers which
positions attend to which in the high-resolution pass. Two network calls per step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from reverie._checks import in_range
from reverie._random import Generators, randn
from reverie._tensor import time_tensor
from reverie.denoisers import DenoiserBase

__all__ = ["FAM", "FILTERS", "AttentionModulation", "attention_modulation", "fam", "fam_upscale",
           "fourier_resize", "noise_fraction"]

#: Frequency filters ``(rho, c) -> (cut, w)``: the box of the trained band's frequencies (a
#: fraction ``cut`` of its half-width per axis) that takes the global pass with weight ``w``.
FILTERS: dict[str, Callable[[float, float], tuple[float, float]]] = {
    # our reading of FAM's K(t) (sec. 3.2; as in a public re-implementation): the box grows
    # as the noise falls, c (1 - rho), while its weight on the global pass falls, rho
    "fam": lambda rho, c: (c * (1.0 - rho), rho),
    # a time-constant ideal low-pass: the box c of the band is the global pass's throughout
    "lowpass": lambda rho, c: (c, 1.0),
}


def noise_fraction(process, t: Tensor) -> Tensor:
    """``rho = sigma^2 / (alpha^2 + sigma^2)`` at ``t`` (float64): FAM's ``t / T`` for any
    process (1 at pure noise, 0 at the data)."""
    a, s = process.alpha(t.to(torch.float64)), process.sigma(t.to(torch.float64))
    return s**2 / (a**2 + s**2)


def _resize_axis(x: Tensor, n: int, dim: int) -> Tensor:
    """Trigonometric interpolation of ``x`` along ``dim`` to ``n >= m`` entries: the Fourier
    coefficients (``norm="forward"``: amplitudes, independent of the size) are zero-padded; an
    even ``m``'s Nyquist bin is split in halves between ``+m/2`` and ``-m/2``."""
    m = x.shape[dim]
    if n == m:
        return x
    coef = torch.fft.fft(x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64),
                         dim=dim, norm="forward")
    f = torch.fft.fftfreq(m, 1.0 / m).round().long()
    out_shape = list(x.shape)
    out_shape[dim] = n
    out = torch.zeros(out_shape, dtype=coef.dtype)
    nyq = (f.abs() * 2 == m)
    keep = ~nyq
    out.index_add_(dim, f[keep] % n, coef.index_select(dim, keep.nonzero().reshape(-1)))
    if bool(nyq.any()):
        half = coef.index_select(dim, nyq.nonzero().reshape(-1)) / 2
        out.index_add_(dim, torch.tensor([m // 2 % n]), half)
        out.index_add_(dim, torch.tensor([-(m // 2) % n]), half)
    return torch.fft.ifft(out, dim=dim, norm="forward").real.to(x.dtype)


def fourier_resize(x: Tensor, size: Sequence[int]) -> Tensor:
    """Band-limited (trigonometric) enlargement of the trailing ``len(size)`` axes of ``x`` to
    ``size``: the enlarged signal keeps every Fourier amplitude and passes through the original
    samples (``fourier_resize(x, 2 n)[..., ::2] == x``)."""
    size = tuple(int(s) for s in size)
    k = len(size)
    if x.ndim < k or any(n < m for n, m in zip(size, x.shape[-k:])):
        raise ValueError(f"fourier_resize enlarges: a size at least {list(x.shape[-k:])} "
                         f"expected, got {list(size)}")
    for i, n in enumerate(size):
        x = _resize_axis(x, n, x.ndim - k + i)
    return x


_MODES = ("fourier", "nearest", "linear", "bilinear", "bicubic")


def _enlarge(reference: Tensor, size: Sequence[int], mode: str) -> Tensor:
    """``reference``'s trailing axes enlarged to ``size`` by ``mode``."""
    if mode == "fourier":
        return fourier_resize(reference, size)
    smooth = "linear" in mode or "cubic" in mode
    return F.interpolate(reference, size=tuple(size), mode=mode,
                         **({"align_corners": False} if smooth else {}))


def _check_reference(reference: Any, mode: str) -> None:
    if not isinstance(reference, Tensor) or reference.ndim < 2:
        raise TypeError("reference must be the trained-resolution sample [B, ...], got "
                        f"{type(reference).__name__}")
    if mode not in _MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(_MODES)}")
    if mode != "fourier" and reference.ndim < 3:
        raise ValueError(f"mode {mode!r} needs a reference [B, C, *spatial], got "
                         f"{list(reference.shape)}")


class FAM(DenoiserBase):
    """The denoiser of :func:`fam`."""

    def __init__(self, denoiser: DenoiserBase, reference: Tensor, *, c: float = 0.5,
                 filter: str | Callable[[float], tuple[float, float]] = "fam",
                 mode: str = "fourier"):
        if not isinstance(denoiser, DenoiserBase):
            raise TypeError(f"denoiser must be a reverie denoiser, got {type(denoiser).__name__}")
        _check_reference(reference, mode)
        in_range("c", c, 0, 1)
        if isinstance(filter, str):
            if filter not in FILTERS:
                raise ValueError(f"unknown filter {filter!r}; expected one of "
                                 f"{', '.join(FILTERS)} or a callable rho -> (cut, weight)")
            rule = FILTERS[filter]
            self.rule: Callable[[float], tuple[float, float]] = lambda rho: rule(rho, c)
        elif callable(filter):
            self.rule = filter
        else:
            raise TypeError(f"filter must be a name or a callable, got {type(filter).__name__}")
        self.denoiser, self.process = denoiser, denoiser.process
        self.reference, self.mode, self.c, self.filter = reference, mode, c, filter
        self.dims = max(1, reference.ndim - 2)  # spatial axes: [B, n] or [B, C, *spatial]
        self._up: dict[tuple[int, ...], Tensor] = {}

    def enlarged(self, shape: Sequence[int]) -> Tensor:
        """The reference enlarged to a sample ``shape`` (without the batch), cached."""
        shape = tuple(shape)
        if shape not in self._up:
            self._up[shape] = _enlarge(self.reference, shape[-self.dims:], self.mode)
        return self._up[shape]

    def mask(self, canvas: Sequence[int], rho: float) -> Tensor:
        """``W_t`` on the canvas's FFT grid (trailing axes ``canvas``) at noise fraction
        ``rho``: ``w`` on the frequencies ``|f_i| <= cut * m_i / 2`` of every axis (``m``: the
        reference's size), 0 elsewhere (everywhere when ``cut <= 0``)."""
        cut, w = self.rule(float(rho))
        band = self.reference.shape[-len(canvas):]
        inside = torch.tensor(cut > 0)
        for n, m in zip(canvas, band):
            f = torch.fft.fftfreq(n, 1.0 / n).abs()
            inside = inside[..., None] & (f <= cut * m / 2 + 1e-9)
        return inside.to(torch.float64) * float(w)

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        pred = self.denoiser(x, t, **cond)
        up = self.enlarged(tuple(x.shape[1:]))
        if up.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"the reference has {up.shape[0]} samples for a batch of "
                             f"{x.shape[0]}")
        k = self.dims
        dims = tuple(range(-k, 0))
        rho = noise_fraction(self.process, t)
        out = torch.empty_like(pred)
        for r in rho.unique():  # one mask per noise level in the batch
            sel = rho == r
            m = self.mask(x.shape[-k:], float(r)).to(x.device)
            if not bool(m.any()):
                out[sel] = pred[sel]
                continue
            ref = up if up.shape[0] == 1 else up[sel]
            spec = torch.fft.fftn(pred[sel].to(torch.float64), dim=dims)
            spec = spec + m * (torch.fft.fftn(ref.to(torch.float64), dim=dims) - spec)
            out[sel] = torch.fft.ifftn(spec, dim=dims).real.to(pred.dtype)
        return out

    def __repr__(self) -> str:
        return f"FAM(filter={self.filter!r}, c={self.c}, mode={self.mode!r}, {self.denoiser!r})"


def fam(denoiser: DenoiserBase, reference: Tensor, *, c: float = 0.5,
        filter: str | Callable[[float], tuple[float, float]] = "fam",
        mode: str = "fourier") -> FAM:
    """FAM's frequency modulation over ``denoiser`` run at the high resolution: the data
    prediction's low frequencies are taken from ``reference`` (a sample at the trained
    resolution, ``[B or 1, C, *trained]`` or ``[B or 1, n]``, its spatial axes enlarged to the
    canvas by ``mode``: ``"fourier"`` band-limited interpolation (:func:`fourier_resize`) or
    an ``F.interpolate`` mode), the high frequencies from ``denoiser``.

    ``filter``: ``"fam"`` (the paper's time-dependent box: a fraction ``c (1 - rho)`` of the
    trained band with weight ``rho``), ``"lowpass"`` (the fraction ``c`` with weight 1 at all
    times) or a callable ``rho -> (cut, weight)``."""
    return FAM(denoiser, reference, c=c, filter=filter, mode=mode)


def fam_upscale(denoiser: DenoiserBase, reference: Tensor, size: Sequence[int], *,
                strength: float = 0.6, c: float = 0.5,
                filter: str | Callable[[float], tuple[float, float]] = "fam",
                mode: str = "fourier", sampler: str = "dpmpp_2m", steps: int = 20,
                noise: Tensor | None = None, generator: Generators = None,
                cond: Mapping[str, Any] | None = None) -> Tensor:
    """FAM's diffuse-denoise (sec. 3.1): enlarge ``reference`` ``[B, C, *trained]`` to
    ``size`` (its trailing axes), noise it to ``strength`` and denoise with :func:`fam`
    (``reverie.sample(init=, strength=)``). ``noise``: standard normal like the output."""
    from reverie.samplers import sample

    in_range("strength", strength, 0, 1, lo_open=True)
    den = fam(denoiser, reference, c=c, filter=filter, mode=mode)
    size = tuple(size)
    shape = (reference.shape[0], *reference.shape[1: reference.ndim - len(size)], *size)
    init = den.enlarged(shape[1:]).expand(shape)
    if noise is None:
        noise = randn(shape, generator, dtype=reference.dtype)
    return sample(den, noise, sampler, steps, init=init, strength=strength, cond=cond)


class AttentionModulation(DenoiserBase):
    """The denoiser of :func:`attention_modulation`; ``remove()`` (or leaving a ``with``
    block) restores the attention layers."""

    def __init__(self, denoiser: DenoiserBase, net: Any, reference: Tensor, *, lam: float = 0.5,
                 blocks: Sequence[str] | None = None, mode: str = "fourier",
                 generator: torch.Generator | None = None):
        from diffusers.models.attention_processor import Attention, AttnProcessor

        if not isinstance(denoiser, DenoiserBase):
            raise TypeError(f"denoiser must be a reverie denoiser, got {type(denoiser).__name__}")
        _check_reference(reference, mode)
        in_range("lam", lam, 0, 1)
        mods = {n: m for n, m in net.named_modules() if isinstance(m, Attention)}
        names = [n for n in mods if n.startswith("up_blocks")] if blocks is None else list(blocks)
        unknown = [n for n in names if n not in mods]
        if unknown or not names:
            raise ValueError(f"no attention module {unknown or 'in the up blocks'}; the net's "
                             f"attention modules: {', '.join(mods) or 'none'}")
        self.denoiser, self.process, self.reference = denoiser, denoiser.process, reference
        self.lam, self.mode, self.generator = float(lam), mode, generator
        self.dims = max(1, reference.ndim - 2)
        self.calls, self._phase = 0, "off"
        self._stored: dict[str, Tensor] = {}
        self._noise: dict[tuple[int, ...], Tensor] = {}
        self._saved = {n: mods[n].processor for n in names}
        for n in names:  # the explicit-probability processor, its probabilities intercepted
            mods[n].set_processor(AttnProcessor())
            mods[n].get_attention_scores = self._wrap(n, mods[n].get_attention_scores)
        self._mods = {n: mods[n] for n in names}

    def _wrap(self, name: str, scores: Callable) -> Callable:
        def modulated(query: Tensor, key: Tensor, attention_mask: Tensor | None = None) -> Tensor:
            p = scores(query, key, attention_mask)
            if self._phase == "store":  # the global pass: keep its maps
                self._stored[name] = p
            elif self._phase == "steer":  # the high-resolution pass: P + lam (P_global - P)
                p = p + self.lam * (self._stored[name] - p)
            return p
        return modulated

    def __call__(self, x: Tensor, t: float | Tensor, **cond: Any) -> Tensor:
        t = time_tensor(t, x)
        shape = tuple(x.shape[1:])
        if shape not in self._noise:
            self._noise[shape] = randn(shape, self.generator, dtype=x.dtype)
        up = _enlarge(self.reference, shape[-self.dims:], self.mode).to(x)
        a = self.process.alpha(t).to(x).reshape(-1, *(1,) * (x.ndim - 1))
        s = self.process.sigma(t).to(x).reshape(-1, *(1,) * (x.ndim - 1))
        skip = a * up + s * self._noise[shape]  # the skip residual, noised to t
        try:
            self._phase = "store"
            self.denoiser(skip.expand_as(x), t, **cond)
            self._phase = "steer"
            out = self.denoiser(x, t, **cond)
        finally:
            self._phase = "off"
            self._stored.clear()
        self.calls += 2
        return out

    def remove(self) -> None:
        """Give the attention layers back their own processor and scores."""
        for n, mod in self._mods.items():
            mod.set_processor(self._saved[n])
            mod.__dict__.pop("get_attention_scores", None)
        self._mods = {}

    def __enter__(self) -> AttentionModulation:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def attention_modulation(denoiser: DenoiserBase, net: Any, reference: Tensor, *,
                         lam: float = 0.5, blocks: Sequence[str] | None = None,
                         mode: str = "fourier", generator: torch.Generator | None = None
                         ) -> AttentionModulation:
    """FAM's attention modulation over ``denoiser`` (whose network ``net`` has diffusers
    ``Attention`` modules): each call first denoises the skip residual ``alpha_t up(reference)
    + sigma_t eps`` (``eps`` drawn once from ``generator``) and stores the attention
    probabilities of ``blocks`` (module names; default every attention module under
    ``up_blocks``), then denoises ``x`` with the probabilities ``P + lam (P_global - P)``.
    Combine with :func:`fam` as ``fam(attention_modulation(den, net, ref), ref)``. Use as a
    context manager (or call ``remove()``) to restore the network."""
    return AttentionModulation(denoiser, net, reference, lam=lam, blocks=blocks, mode=mode,
                               generator=generator)
