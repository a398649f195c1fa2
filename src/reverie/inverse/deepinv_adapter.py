"""deepinv physics as reverie forward operators: :func:`from_deepinv`.

deepinv (Tachella et al., "DeepInverse: A Python package for solving imaging inverse problems
with deep learning", JOSS 2025) writes a forward model as a ``Physics`` with ``A(x)``; a
``LinearPhysics`` adds ``A_adjoint(y)`` and ``A_dagger(y)``, and a ``DecomposablePhysics``
gives its singular value decomposition ``A = U diag(mask) V^T`` through ``V_adjoint``, ``V``,
``U``, ``U_adjoint`` and the singular values ``mask``. :func:`from_deepinv` turns

* a decomposable physics whose spectral coordinates are real and as many as the pixels
  (``Inpainting``, ``Denoising``, ``Decolorize``, the fast ``SinglePixelCamera``) into a
  :class:`~reverie.inverse.LinearOperator` *with* an SVD: every method of
  :data:`reverie.inverse.METHODS` runs (DDRM and MCGdiff included);
* any other linear physics (``Blur``, ``BlurFFT`` -- its spectral coordinates are a complex
  half-spectrum --, ``Downsampling``, ``CompressedSensing``, ``MRI``, ``Tomography``, ...) into
  a :class:`~reverie.inverse.LinearOperator` without one: the methods that need only ``A`` and
  ``A^T`` (DPS, PiGDM, DiffPIR, RED-diff, TDS; :meth:`~LinearOperator.dense` gives an SVD for
  small problems);
* a non-linear physics (``RandomPhaseRetrieval``, ``Haze``, ...: no ``A_adjoint``, or an
  ``A`` that fails the probe ``A(x + 2 v) = A(x) + 2 A(v)`` -- deepinv's ``PhaseRetrieval``
  has the ``A_adjoint`` of its linear part ``B``) into a differentiable function ``x -> y``
  (:class:`DeepinvForward`), for DPS, RED-diff and TDS.

Only ``A``, ``A_adjoint``, ``A_dagger``, ``V_adjoint``, ``V``, ``U``, ``U_adjoint`` and
``mask`` are used, so any object with these methods works (deepinv itself is not imported).
The physics' own noise model is not used: pass the noise level to
:func:`reverie.inverse.solve`. The operator keeps the physics' current parameters (mask,
filter); one set of parameters for the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from reverie.inverse.methods import METHODS
from reverie.inverse.operators import SVD, LinearOperator, _shape

__all__ = ["DeepinvOperator", "DeepinvForward", "from_deepinv", "compatible_methods"]


def _name(physics: Any) -> str:
    return type(physics).__name__


def _dtype(physics: Any) -> torch.dtype | None:
    """The real dtype of the physics' tensors (deepinv physics are ``torch.nn.Module``s whose
    buffers fix it: float32 unless ``physics.double()``); ``None`` when it holds none."""
    tensors = [*getattr(physics, "buffers", list)(), *getattr(physics, "parameters", list)()]
    for t in tensors:
        if t.is_floating_point() or t.is_complex():
            return t.real.dtype if t.is_complex() else t.dtype
    return None


def _call(fn: Any, v: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``fn(v)`` in the physics' dtype, returned in ``v``'s."""
    return fn(v if dtype is None else v.to(dtype)).to(v.dtype)


def _out_shape(physics: Any, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The measurement shape, from one forward call on zeros."""
    try:
        y = physics.A(torch.zeros(1, *in_shape, dtype=_dtype(physics)))
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"deepinv {_name(physics)}.A fails on a real image of shape "
                         f"{list(in_shape)} ({e}); reverie samples real images (a physics of "
                         "complex images, e.g. phase retrieval, needs a wrapper x -> A(f(x)))"
                         ) from None
    if not isinstance(y, Tensor):
        raise TypeError(f"deepinv {_name(physics)}.A returned a {type(y).__name__}, not a "
                        "tensor (stacked physics are not supported: adapt each part)")
    if y.is_complex():
        raise TypeError(f"deepinv {_name(physics)}.A returns complex measurements; reverie "
                        "operators need real ones (deepinv's MRI returns real/imaginary channels)")
    return tuple(y.shape[1:])


class DeepinvForward:
    """A non-linear deepinv physics as a differentiable function ``x -> physics.A(x)`` for
    DPS, RED-diff and TDS (pass ``shape=in_shape`` to :func:`reverie.inverse.solve`)."""

    def __init__(self, physics: Any, in_shape: tuple[int, ...],
                 why: str = "it has no A_adjoint"):
        self.physics, self.in_shape, self.dtype = physics, in_shape, _dtype(physics)
        self.out_shape = _out_shape(physics, in_shape)
        self.__name__ = f"deepinv {_name(physics)} (not linear: {why})"

    def __call__(self, x: Tensor) -> Tensor:
        return _call(self.physics.A, x, self.dtype)

    def __repr__(self) -> str:
        return f"DeepinvForward({self.__name__}, {self.in_shape} -> {self.out_shape})"


class DeepinvOperator(LinearOperator):
    """A linear deepinv physics as a :class:`~reverie.inverse.LinearOperator`: ``A`` is
    ``physics.A``, ``A^T`` is ``physics.A_adjoint``, :attr:`svd` comes from the physics' SVD
    where it is real and square in the pixels (else ``None``, with the reason in
    :attr:`svd_reason`), :meth:`pinv` is ``physics.A_dagger`` unless the SVD gives it."""

    def __init__(self, physics: Any, in_shape: tuple[int, ...]):
        self.physics, self.in_shape, self.dtype = physics, in_shape, _dtype(physics)
        self.out_shape = _out_shape(physics, in_shape)
        self._svd, self.svd_reason = self._decompose()

    def A(self, x: Tensor) -> Tensor:
        return _call(self.physics.A, x, self.dtype)

    def AT(self, y: Tensor) -> Tensor:
        return _call(self.physics.A_adjoint, y, self.dtype)

    @property
    def svd(self) -> SVD | None:
        return self._svd

    def pinv(self, y: Tensor) -> Tensor:
        if self._svd is None and callable(getattr(self.physics, "A_dagger", None)):
            return _call(self.physics.A_dagger, y, self.dtype)  # deepinv's least squares
        return super().pinv(y)

    def _decompose(self) -> tuple[SVD | None, str]:
        """reverie's :class:`SVD` from ``V_adjoint, V, U, U_adjoint, mask``, checked on a
        random probe (``V`` orthogonal, ``A = U diag(mask) V^T``); else ``None`` and why."""
        p = self.physics
        parts = ("V_adjoint", "V", "U", "U_adjoint")
        if not all(callable(getattr(p, k, None)) for k in parts) or not hasattr(p, "mask"):
            return None, f"{_name(p)} is not a DecomposablePhysics (no U, V, mask)"
        g = torch.Generator().manual_seed(0)
        probe = torch.randn(1, *self.in_shape, generator=g).to(self.dtype or torch.float32)
        z = p.V_adjoint(probe)
        if z.is_complex():
            return None, f"{_name(p)}'s spectral coordinates are complex"
        if z.numel() != probe.numel():  # e.g. BlurFFT: the real view of a half-spectrum
            return None, (f"{_name(p)}'s spectral coordinates have {z.numel()} entries for "
                          f"{probe.numel()} pixels (a real SVD needs as many)")
        spec = tuple(z.shape[1:])
        mask = torch.as_tensor(p.mask)
        if mask.is_complex():
            return None, f"{_name(p)} has complex singular values"
        try:
            mask = mask.to(torch.float64).expand(1, *spec).reshape(-1)
        except RuntimeError:
            return None, f"{_name(p)}'s mask {tuple(mask.shape)} does not fit {spec}"
        sign = torch.where(mask < 0, -1.0, 1.0)  # negative singular values: sign into U
        s = mask.abs()
        in_shape = self.in_shape

        dt = self.dtype

        def Vt(x: Tensor) -> Tensor:
            return _call(p.V_adjoint, x, dt).reshape(x.shape[0], -1)

        def V(c: Tensor) -> Tensor:
            return _call(p.V, c.reshape(c.shape[0], *spec), dt).reshape(c.shape[0], *in_shape)

        def Ut(y: Tensor) -> Tensor:
            c = _call(p.U_adjoint, y, dt).reshape(y.shape[0], -1)
            return torch.where(s > 0, c * sign.to(y.dtype), 0.0)  # zeros where s = 0

        def U(c: Tensor) -> Tensor:
            return _call(p.U, (c * sign.to(c.dtype)).reshape(c.shape[0], *spec), dt)

        svd = SVD(Vt, V, Ut, U, s)
        x = probe.to(torch.float64)
        tol = 1e-3 * float(x.norm())  # float32 physics
        if float((V(Vt(x)) - x).norm()) > tol:
            return None, f"{_name(p)}'s V is not the inverse of V_adjoint"
        if float((U(s * Vt(x)) - self.A(x)).norm()) > tol * max(float(s.max()), 1e-12):
            return None, f"{_name(p)}'s U diag(mask) V^T differs from its A"
        return svd, ""

    def __repr__(self) -> str:
        why = f"; no SVD: {self.svd_reason}" if self._svd is None else "; with SVD"
        return f"DeepinvOperator({_name(self.physics)}, {self.in_shape} -> {self.out_shape}{why})"


def from_deepinv(
    physics: Any, in_shape: Sequence[int] | None = None
) -> DeepinvOperator | DeepinvForward:
    """A reverie forward operator from a deepinv physics (module docstring): a
    :class:`DeepinvOperator` (a :class:`~reverie.inverse.LinearOperator`, with an SVD where
    the physics gives a real one) for a linear physics (one with ``A_adjoint`` whose ``A``
    passes a linearity probe), else a :class:`DeepinvForward` function. ``in_shape``: the
    shape of one image, e.g. ``(1, 8, 8)`` (default: ``physics.img_size``)."""
    if not callable(getattr(physics, "A", None)):
        raise TypeError(f"expected a deepinv physics (an object with A(x)), got {_name(physics)}")
    if in_shape is None:
        in_shape = getattr(physics, "img_size", None)
        if in_shape is None:
            raise ValueError(f"deepinv {_name(physics)} has no img_size: pass in_shape= (the "
                             "shape of one image, e.g. (1, 8, 8))")
    shape = _shape(tuple(int(v) for v in in_shape), "in_shape")
    if not callable(getattr(physics, "A_adjoint", None)):
        return DeepinvForward(physics, shape)
    _out_shape(physics, shape)  # a clear error first if A fails on such images
    if not _is_linear(physics, shape):  # e.g. deepinv's PhaseRetrieval: A_adjoint is B's
        return DeepinvForward(physics, shape, "A(x + 2 v) != A(x) + 2 A(v), although it has "
                              "an A_adjoint")
    return DeepinvOperator(physics, shape)


def _is_linear(physics: Any, shape: tuple[int, ...]) -> bool:
    """``A(x + 2 v) = A(x) + 2 A(v)`` on a random probe, to float32 precision."""
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 1, *shape, generator=g, dtype=torch.float64)
    dt = _dtype(physics)
    lhs = _call(physics.A, x + 2 * v, dt)
    rhs = _call(physics.A, x, dt) + 2 * _call(physics.A, v, dt)
    return float((lhs - rhs).norm()) <= 1e-4 * (float(lhs.norm()) + float(rhs.norm()) + 1e-30)


def compatible_methods(operator: Any) -> tuple[str, ...]:
    """The names of :data:`reverie.inverse.METHODS` that accept ``operator`` (a linear one
    with or without an SVD, or a non-linear function), for Gaussian noise."""
    linear = isinstance(operator, LinearOperator)
    has_svd = linear and operator.svd is not None
    return tuple(name for name in METHODS if name != "structured_noise"
                 and (linear or not METHODS[name].linear) and (has_svd or not METHODS[name].svd))
