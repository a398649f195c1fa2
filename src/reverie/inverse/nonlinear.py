"""Non-linear forward models ``y = A(x)``: phase retrieval and a saturated (non-linear) blur.

A :class:`NonlinearForward` is a differentiable function ``x [B, *in_shape] -> y [B,
*out_shape]`` with its shapes; :func:`reverie.inverse.solve` reads them (no ``shape=`` needed)
and checks ``y`` against ``out_shape``. Only the methods that need nothing but the forward map
and autograd accept it (``compatible_methods(op)``: DPS, RED-diff, TDS); the others refuse it
in one line saying why (not linear; no SVD).

* :class:`PhaseRetrieval` -- intensities ``y = |B x|^2`` of a complex linear map ``B``, the
  definition of deepinv's ``PhaseRetrieval`` (Tachella et al., JOSS 2025);
  :func:`random_phase_retrieval` draws deepinv's ``RandomPhaseRetrieval`` matrix
  ``B_ij ~ N(0, 1/2m) + i N(0, 1/2m)``. The sign of ``x`` is not identifiable (``|B x| =
  |B (-x)|`` for real ``x``): the posterior has two mirrored modes, weighted by the prior.
* :class:`Saturated` -- ``y = g(A x)`` for a linear operator ``A`` and the smooth saturating
  camera response ``g(u) = tanh(gain u) / tanh(gain)`` (``g(+-1) = +-1``, slope
  ``gain / tanh(gain)`` at 0, flat beyond ``|u| ~ 1``); :func:`nonlinear_blur` puts it after a
  :class:`~reverie.inverse.Blur`. An analytic stand-in for the learned "non-linear blur" of DPS
  (Chung et al., ICLR 2023, which uses the GoPro blur network of Tran et al. 2021), in the
  spirit of blur with saturated pixels (Whyte, Sivic & Zisserman, IJCV 2014).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor

from reverie.inverse.operators import Blur, LinearOperator, _shape

__all__ = [
    "NonlinearForward",
    "PhaseRetrieval",
    "Saturated",
    "random_phase_retrieval",
    "nonlinear_blur",
]


class NonlinearForward(ABC):
    """A differentiable non-linear forward map with its shapes (subclasses define
    :meth:`forward`). ``__name__`` says it is not linear: :func:`reverie.inverse.solve` quotes
    it when a method that needs a linear operator is asked for."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kind = "non-linear forward model"

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int]):
        self.in_shape, self.out_shape = _shape(in_shape, "in_shape"), _shape(out_shape, "out_shape")
        self.__name__ = f"{self.kind} (not linear: no adjoint, no SVD)"

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """The measurement of ``x`` ``[B, *in_shape]``, ``[B, *out_shape]``."""

    def __call__(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.in_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must have shape [batch, {', '.join(map(str, self.in_shape))}] "
                             f"for {self!r}; got {got}")
        return self.forward(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_shape} -> {self.out_shape})"


class PhaseRetrieval(NonlinearForward):
    """``y = |B x|^2`` (entrywise squared modulus) for a complex (or real) matrix ``B``
    ``[m, n]``, ``n = prod(in_shape)``: deepinv's ``PhaseRetrieval`` on real images. Kept as
    its real and imaginary parts, so ``|B x|^2 = (Re B x)^2 + (Im B x)^2`` and its gradient
    ``2 Re(B^H diag(B x))`` come from real autograd."""

    kind = "phase retrieval |B x|^2"

    def __init__(self, B: Tensor, in_shape: Sequence[int] | None = None):
        B = torch.as_tensor(B)
        if B.ndim != 2:
            raise ValueError(f"B must be a 2-D matrix [m, n], got shape {tuple(B.shape)}")
        if not bool(torch.isfinite(torch.view_as_real(B.to(torch.complex128))).all()):
            raise ValueError("B contains NaN or inf")
        m, n = B.shape
        shape = _shape(in_shape if in_shape is not None else n, "in_shape")
        if math.prod(shape) != n:
            raise ValueError(f"in_shape {shape} has {math.prod(shape)} entries but B has {n} "
                             "columns")
        super().__init__(shape, (m,))
        B = B.to(torch.complex128)
        self.re, self.im = B.real.contiguous(), B.imag.contiguous()

    def forward(self, x: Tensor) -> Tensor:
        v = x.reshape(x.shape[0], -1)
        return (v @ self.re.to(v).T) ** 2 + (v @ self.im.to(v).T) ** 2  # |B x|^2


def random_phase_retrieval(
    m: int, in_shape: Sequence[int], generator: torch.Generator | None = None
) -> PhaseRetrieval:
    """deepinv's ``RandomPhaseRetrieval(m, img_size)``: ``B_ij ~ N(0, 1/(2m)) + i N(0,
    1/(2m))`` i.i.d., ``m`` intensity measurements of a real image of shape ``in_shape``."""
    shape = _shape(in_shape, "in_shape")
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer (number of measurements), got {m!r}")
    n = math.prod(shape)
    parts = torch.randn(2, m, n, generator=generator, dtype=torch.float64) / math.sqrt(2 * m)
    return PhaseRetrieval(torch.complex(parts[0], parts[1]), shape)


class Saturated(NonlinearForward):
    """``y = g(A x)`` with ``g(u) = tanh(gain u) / tanh(gain)``: a linear operator seen
    through a smooth saturating camera response (``gain > 0``; ``g -> identity`` as ``gain ->
    0``)."""

    kind = "saturated linear map g(A x)"

    def __init__(self, operator: LinearOperator, gain: float = 2.0):
        if not isinstance(operator, LinearOperator):
            raise TypeError(f"operator must be a reverie.inverse.LinearOperator, got "
                            f"{type(operator).__name__}")
        if not gain > 0 or not math.isfinite(gain):
            raise ValueError(f"gain must be a positive number, got {gain!r}")
        self.operator, self.gain = operator, float(gain)
        self.kind = f"saturated {type(operator).__name__} tanh({gain:g} A x) / tanh({gain:g})"
        super().__init__(operator.in_shape, operator.out_shape)

    def response(self, u: Tensor) -> Tensor:
        """The camera response ``g(u)``."""
        return torch.tanh(self.gain * u) / math.tanh(self.gain)

    def forward(self, x: Tensor) -> Tensor:
        return self.response(self.operator.A(x))

    def __repr__(self) -> str:
        return f"Saturated({self.operator!r}, gain={self.gain:g})"


def nonlinear_blur(kernel: Tensor, in_shape: Sequence[int], gain: float = 2.0) -> Saturated:
    """A blur through a saturating camera response: ``y = g(k * x)``, ``k * x`` the circular
    :class:`~reverie.inverse.Blur` by ``kernel``, ``g(u) = tanh(gain u) / tanh(gain)``."""
    return Saturated(Blur(kernel, in_shape), gain)
