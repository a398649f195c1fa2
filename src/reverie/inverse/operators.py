"""Forward operators ``y = A(x)`` for inverse problems.

A :class:`LinearOperator` gives ``A`` and its adjoint ``A^T`` on batches (batch first, then
the operator's ``in_shape`` / ``out_shape``), and, where it is known in closed form, a singular
value decomposition ``A = U diag(s) V^T`` (:class:`SVD`; deepinv's ``DecomposablePhysics``,
DDRM's ``H_functions``). From these follow the pseudo-inverse and the regularised normal
equations ``(a A^T A + b I)^{-1}`` that PiGDM, DiffPIR and the joint structured-noise sampler
need: in closed form through the SVD, else by conjugate gradients.

Operators here: :class:`MatrixOperator` (dense matrix: compressed sensing -- Gaussian with
deepinv's scaling in :func:`compressed_sensing` --, random projections, any small operator),
:class:`Inpainting` (a mask; ``y`` holds the observed entries), :class:`Blur` (circular
convolution by FFT; SVD through the discrete Hartley transform when the kernel is symmetric;
:func:`gaussian_kernel`, random motion blur by :func:`motion_kernel`), :class:`Downsample`
(block averaging, super-resolution), :class:`Identity` and :class:`Composed` (``A2 @ A1``). A
non-linear forward model is any differentiable function ``x -> y`` (phase retrieval and a
saturated blur: :mod:`reverie.inverse.nonlinear`).

Every linear operator satisfies ``<A x, y> = <x, A^T y>`` (:func:`adjointness_error`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SVD",
    "LinearOperator",
    "MatrixOperator",
    "Inpainting",
    "Blur",
    "Downsample",
    "Identity",
    "Composed",
    "adjointness_error",
    "gaussian_kernel",
    "motion_kernel",
    "compressed_sensing",
]


def _shape(shape: int | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(int(s) for s in shape)
    if not shape or any(s < 1 for s in shape):
        raise ValueError(f"{name} must be a non-empty shape of positive sizes, got {shape}")
    return shape


@dataclass(frozen=True)
class SVD:
    """``A = U diag(s) V^T`` in *spectral coordinates* of length ``n = prod(in_shape)``.

    ``Vt(x) -> [B, n]`` and ``V(z) -> [B, *in_shape]`` are orthogonal. ``s`` ``[n]`` holds the
    singular values (0 for directions ``A`` does not see). ``U(z)`` maps spectral coordinates
    to measurements and ``Ut(y)`` back (zeros where ``s = 0``), with ``Ut(U(z)) = z`` on the
    coordinates where ``s > 0``. Then ``A x = U(s * Vt(x))`` and ``A^T y = V(s * Ut(y))``.
    """

    Vt: Callable[[Tensor], Tensor]
    V: Callable[[Tensor], Tensor]
    Ut: Callable[[Tensor], Tensor]
    U: Callable[[Tensor], Tensor]
    s: Tensor

    @property
    def rank(self) -> int:
        return int((self.s > 0).sum())


class LinearOperator(ABC):
    """A linear forward operator on batches: ``x [B, *in_shape] -> y [B, *out_shape]``."""

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @abstractmethod
    def A(self, x: Tensor) -> Tensor:
        """The forward map."""

    @abstractmethod
    def AT(self, y: Tensor) -> Tensor:
        """The adjoint (transpose)."""

    def __call__(self, x: Tensor) -> Tensor:
        return self.A(x)

    @property
    def svd(self) -> SVD | None:
        """The singular value decomposition, or ``None`` where none is known in closed form
        (use :meth:`dense` to get one by a dense SVD)."""
        return None

    @property
    def in_dim(self) -> int:
        return math.prod(self.in_shape)

    @property
    def out_dim(self) -> int:
        return math.prod(self.out_shape)

    def __matmul__(self, other: LinearOperator) -> Composed:
        return Composed(self, other)

    def check_input(self, x: Tensor, name: str = "x") -> None:
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.in_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{name} must have shape [batch, {', '.join(map(str, self.in_shape))}] for "
                f"{self!r}; got {got}"
            )

    # ---- derived ----------------------------------------------------------------------------
    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The dense ``[out_dim, in_dim]`` matrix (``A`` applied to the basis vectors)."""
        eye = torch.eye(self.in_dim, dtype=dtype).reshape(self.in_dim, *self.in_shape)
        return self.A(eye).reshape(self.in_dim, self.out_dim).T.contiguous()

    def dense(self) -> MatrixOperator:
        """The same operator as a :class:`MatrixOperator` (which has an SVD)."""
        return MatrixOperator(self.matrix(), in_shape=self.in_shape, out_shape=self.out_shape)

    def normal_solve(self, v: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
        """``(a A^T A + b I)^{-1} v`` for ``v`` in ``x``-space (``a, b >= 0``; scalars or
        ``[B]``). With ``b = 0`` the minimum-norm solution. Closed form through the SVD,
        else conjugate gradients."""
        svd = self.svd
        if svd is not None:
            a_, b_ = _col(a, v), _col(b, v)
            s2 = svd.s.to(v.dtype) ** 2
            den = a_ * s2 + b_
            z = svd.Vt(v)
            z = torch.where(den > 0, z / torch.where(den > 0, den, torch.ones_like(den)), 0.0)
            return svd.V(z)
        return _cg(lambda u: _bc(a, u) * self.AT(self.A(u)) + _bc(b, u) * u, v)

    def gram_solve(self, v: Tensor, a: float | Tensor, b: float | Tensor) -> Tensor:
        """``(a A A^T + b I)^{-1} v`` for ``v`` in ``y``-space (``b > 0`` unless ``A A^T`` is
        invertible). Closed form through the SVD, else conjugate gradients."""
        svd = self.svd
        if svd is not None and svd.rank == self.out_dim:
            a_, b_ = _col(a, v), _col(b, v)
            s2 = svd.s.to(v.dtype) ** 2
            z = svd.Ut(v) / torch.where(svd.s > 0, a_ * s2 + b_, torch.ones_like(s2))
            return svd.U(z)
        return _cg(lambda u: _bc(a, u) * self.A(self.AT(u)) + _bc(b, u) * u, v)

    def pinv(self, y: Tensor) -> Tensor:
        """The pseudo-inverse ``A^+ y`` (minimum-norm least squares)."""
        svd = self.svd
        if svd is not None:
            s = svd.s.to(y.dtype)
            z = svd.Ut(y)
            return svd.V(torch.where(s > 0, z / torch.where(s > 0, s, torch.ones_like(s)), 0.0))
        return self.normal_solve(self.AT(y), 1.0, 0.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_shape} -> {self.out_shape})"


def _bc(v: float | Tensor, like: Tensor) -> float | Tensor:
    if isinstance(v, Tensor) and v.ndim == 1:
        return v.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
    return v


def _col(v: float | Tensor, like: Tensor) -> Tensor:
    """A scalar or ``[B]`` coefficient as ``[1|B, 1]`` for spectral ``[B, n]`` tensors."""
    t = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1) if t.ndim == 1 else t


def _cg(
    op: Callable[[Tensor], Tensor], rhs: Tensor, iters: int = 200, tol: float = 1e-10
) -> Tensor:
    """Conjugate gradients for a symmetric positive semi-definite ``op``, batched (each
    sample its own system); started at 0, so it returns the minimum-norm solution."""
    dims = tuple(range(1, rhs.ndim))
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rs = (r * r).sum(dims, keepdim=True)
    stop = tol**2 * rs.clamp(min=1e-300)
    for _ in range(iters):
        if bool((rs <= stop).all()):
            break
        ap = op(p)
        pap = (p * ap).sum(dims, keepdim=True)
        alpha = torch.where(pap > 0, rs / torch.where(pap > 0, pap, torch.ones_like(pap)), 0.0)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(dims, keepdim=True)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), 0.0)
        p = r + beta * p
        rs = rs_new
    return x


# ---------------------------------------------------------------------------------------------
# Concrete operators
# ---------------------------------------------------------------------------------------------


class MatrixOperator(LinearOperator):
    """A dense matrix ``A`` ``[m, n]`` (compressed sensing, random projections).

    ``in_shape`` (default ``(n,)``) and ``out_shape`` (default ``(m,)``) reshape flat vectors,
    e.g. ``in_shape=(1, 8, 8)`` for images. The SVD is computed once, in float64.
    """

    def __init__(
        self,
        A: Tensor,
        *,
        in_shape: int | Sequence[int] | None = None,
        out_shape: int | Sequence[int] | None = None,
    ):
        if not isinstance(A, Tensor):
            A = torch.as_tensor(A)
        if A.ndim != 2:
            raise ValueError(f"A must be a 2-D matrix [m, n], got shape {tuple(A.shape)}")
        if not bool(torch.isfinite(A).all()):
            raise ValueError("A contains NaN or inf")
        self.matrix64 = A.detach().to(torch.float64)
        m, n = A.shape
        self.in_shape = _shape(in_shape if in_shape is not None else n, "in_shape")
        self.out_shape = _shape(out_shape if out_shape is not None else m, "out_shape")
        if self.in_dim != n or self.out_dim != m:
            raise ValueError(
                f"in_shape {self.in_shape} / out_shape {self.out_shape} do not match the "
                f"matrix shape {tuple(A.shape)}"
            )
        self._svd: SVD | None = None

    def _mat(self, like: Tensor) -> Tensor:
        return self.matrix64.to(like.dtype)

    def A(self, x: Tensor) -> Tensor:
        return (x.reshape(x.shape[0], -1) @ self._mat(x).T).reshape(x.shape[0], *self.out_shape)

    def AT(self, y: Tensor) -> Tensor:
        return (y.reshape(y.shape[0], -1) @ self._mat(y)).reshape(y.shape[0], *self.in_shape)

    def matrix(self, dtype: torch.dtype = torch.float64) -> Tensor:
        return self.matrix64.to(dtype)

    @property
    def svd(self) -> SVD:
        if self._svd is None:
            u, s, vh = torch.linalg.svd(self.matrix64, full_matrices=True)
            m, n = self.matrix64.shape
            k = min(m, n)
            s_full = torch.zeros(n, dtype=torch.float64)
            s_full[:k] = s
            s_full = torch.where(
                s_full > 1e-12 * max(float(s.max()) if k else 0.0, 1e-300),
                s_full,
                torch.zeros_like(s_full),
            )
            in_shape = self.in_shape

            def Vt(x: Tensor) -> Tensor:
                return x.reshape(x.shape[0], -1) @ vh.to(x.dtype).T

            def V(z: Tensor) -> Tensor:
                return (z @ vh.to(z.dtype)).reshape(z.shape[0], *in_shape)

            def Ut(y: Tensor) -> Tensor:
                out = torch.zeros(y.shape[0], n, dtype=y.dtype, device=y.device)
                out[:, :k] = (y.reshape(y.shape[0], -1) @ u.to(y.dtype))[:, :k]
                return out

            out_shape = self.out_shape

            def U(z: Tensor) -> Tensor:
                return (z[:, :k] @ u[:, :k].to(z.dtype).T).reshape(z.shape[0], *out_shape)

            self._svd = SVD(Vt, V, Ut, U, s_full)
        return self._svd


class Identity(LinearOperator):
    """``A = I`` (denoising)."""

    def __init__(self, shape: int | Sequence[int]):
        self.in_shape = self.out_shape = _shape(shape, "shape")

    def A(self, x: Tensor) -> Tensor:
        return x

    def AT(self, y: Tensor) -> Tensor:
        return y

    @property
    def svd(self) -> SVD:
        n, shape = self.in_dim, self.in_shape

        def flat(x: Tensor) -> Tensor:
            return x.reshape(x.shape[0], -1)

        def unflat(z: Tensor) -> Tensor:
            return z.reshape(z.shape[0], *shape)

        return SVD(flat, unflat, flat, unflat, torch.ones(n, dtype=torch.float64))


class Inpainting(LinearOperator):
    """Keep the entries where ``mask`` is true: ``y = x[mask]`` (``[B, number observed]``).

    ``mask`` has the shape of one sample (e.g. ``[1, 8, 8]``) or is broadcast to it.
    ``A^T`` puts the observed values back and zeros elsewhere (:meth:`fill`).
    """

    def __init__(self, mask: Tensor, in_shape: Sequence[int] | None = None):
        mask = torch.as_tensor(mask).to(torch.bool)
        shape = _shape(in_shape if in_shape is not None else tuple(mask.shape), "in_shape")
        try:
            mask = mask.expand(shape).clone()
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to in_shape {shape}"
            ) from None
        self.mask = mask
        self.in_shape = shape
        self.index = torch.nonzero(mask.reshape(-1)).reshape(-1)
        if self.index.numel() == 0:
            raise ValueError("the mask observes nothing (all entries false)")
        self.out_shape = (int(self.index.numel()),)

    def A(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)[:, self.index.to(x.device)]

    def AT(self, y: Tensor) -> Tensor:
        out = torch.zeros(y.shape[0], self.in_dim, dtype=y.dtype, device=y.device)
        out[:, self.index.to(y.device)] = y.reshape(y.shape[0], -1)
        return out.reshape(y.shape[0], *self.in_shape)

    def fill(self, y: Tensor, value: float = 0.0) -> Tensor:
        """The measurement as an image, with ``value`` where nothing is observed."""
        x = self.AT(y)
        return torch.where(self.mask.to(x.device), x, torch.full_like(x, value))

    @property
    def svd(self) -> SVD:
        n, shape, idx = self.in_dim, self.in_shape, self.index
        m = idx.numel()
        # spectral order: observed entries first, then the others (V is a permutation)
        rest = torch.nonzero(~self.mask.reshape(-1)).reshape(-1)
        perm = torch.cat([idx, rest])
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(n)
        s = torch.zeros(n, dtype=torch.float64)
        s[:m] = 1.0

        def Vt(x: Tensor) -> Tensor:
            return x.reshape(x.shape[0], -1)[:, perm.to(x.device)]

        def V(z: Tensor) -> Tensor:
            return z[:, inv.to(z.device)].reshape(z.shape[0], *shape)

        def Ut(y: Tensor) -> Tensor:
            out = torch.zeros(y.shape[0], n, dtype=y.dtype, device=y.device)
            out[:, :m] = y.reshape(y.shape[0], -1)
            return out

        def U(z: Tensor) -> Tensor:
            return z[:, :m]

        return SVD(Vt, V, Ut, U, s)

    def __repr__(self) -> str:
        n_obs = self.out_shape[0]
        return f"Inpainting({n_obs} of {self.in_dim} observed, in_shape={self.in_shape})"


def gaussian_kernel(size: int, std: float) -> Tensor:
    """A normalised, symmetric 2-D Gaussian blur kernel ``[size, size]``."""
    if size < 1 or std <= 0:
        raise ValueError(f"need size >= 1 and std > 0, got size={size}, std={std}")
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / std) ** 2)
    k = g[:, None] * g[None, :]
    return k / k.sum()


def motion_kernel(
    size: int,
    generator: torch.Generator | None = None,
    *,
    length_scale: float = 0.3,
    std: float = 0.25,
    points: int = 250,
) -> Tensor:
    """A random motion-blur kernel ``[size, size]``, as deepinv's ``MotionBlurGenerator``
    (after Schuler et al., TPAMI 2016): a camera trajectory ``(f_x(t), f_y(t))``, ``t`` in
    ``[0, 1]``, of two independent Gaussian processes with the Matern-5/2 covariance
    ``std^2 (1 + r + r^2 / 3) exp(-r)``, ``r = sqrt(5) |t - s| / length_scale``, centred and
    rasterised over ``[-1, 1]^2`` into ``size x size`` bins (points outside are dropped),
    normalised to sum 1. Not symmetric in general: its :class:`Blur` has no SVD."""
    if not isinstance(size, int) or size < 1 or not length_scale > 0 or not std > 0:
        raise ValueError(f"need an integer size >= 1 and length_scale, std > 0; got size={size}"
                         f", length_scale={length_scale}, std={std}")
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    r = math.sqrt(5) * (t[:, None] - t[None, :]).abs() / length_scale
    cov = std**2 * (1 + r + r**2 / 3) * torch.exp(-r)
    chol = torch.linalg.cholesky(cov + 1e-9 * torch.eye(points, dtype=torch.float64))
    f = chol @ torch.randn(points, 2, generator=generator, dtype=torch.float64)
    f = f - f.mean(0)  # the trajectory, centred
    idx = torch.floor((f + 1) / 2 * size).long()  # bin of each point (col from x, row from y)
    inside = ((idx >= 0) & (idx < size)).all(1)
    k = torch.zeros(size * size, dtype=torch.float64)
    k.index_add_(0, idx[inside, 1] * size + idx[inside, 0], torch.ones(int(inside.sum()),
                                                                      dtype=torch.float64))
    return (k / k.sum()).reshape(size, size)


def _dht2(x: Tensor) -> Tensor:
    """Orthonormal 2-D discrete Hartley transform ``Re F - Im F`` over the last two axes;
    symmetric and its own inverse."""
    f = torch.fft.fft2(x, norm="ortho")
    return f.real - f.imag


class Blur(LinearOperator):
    """Circular convolution of each channel with ``kernel`` ``[kh, kw]`` (centred), by FFT.

    ``in_shape = out_shape = (C, H, W)``. When the kernel is symmetric (``k(-n) = k(n)``, e.g.
    :func:`gaussian_kernel`) its Fourier transform is real and the discrete Hartley transform
    diagonalises the blur, giving an exact SVD; otherwise :attr:`svd` is ``None``.
    """

    def __init__(self, kernel: Tensor, in_shape: Sequence[int]):
        self.in_shape = self.out_shape = _shape(in_shape, "in_shape")
        if len(self.in_shape) != 3:
            raise ValueError(f"in_shape must be (channels, height, width), got {self.in_shape}")
        k = torch.as_tensor(kernel, dtype=torch.float64)
        if k.ndim != 2:
            raise ValueError(f"kernel must be 2-D [kh, kw], got shape {tuple(k.shape)}")
        _, h, w = self.in_shape
        kh, kw = k.shape
        if kh > h or kw > w:
            raise ValueError(f"kernel {tuple(k.shape)} is larger than the image {(h, w)}")
        full = torch.zeros(h, w, dtype=torch.float64)
        full[:kh, :kw] = k
        full = torch.roll(full, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))  # centre at 0
        self.kernel = k
        self.kernel_fft = torch.fft.fft2(full)
        scale = float(self.kernel_fft.abs().max())
        self.symmetric = bool(self.kernel_fft.imag.abs().max() < 1e-12 * scale)

    def _conv(self, x: Tensor, kf: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(x) * kf.to(x.device)).real.to(x.dtype)

    def A(self, x: Tensor) -> Tensor:
        return self._conv(x, self.kernel_fft)

    def AT(self, y: Tensor) -> Tensor:
        return self._conv(y, self.kernel_fft.conj())

    @property
    def svd(self) -> SVD | None:
        if not self.symmetric:
            return None
        lam = self.kernel_fft.real  # real eigenvalues [H, W]
        c, h, w = self.in_shape
        sign = torch.where(lam < 0, -1.0, 1.0).expand(c, h, w).reshape(-1)
        s = lam.abs().expand(c, h, w).reshape(-1).clone()
        s = torch.where(s > 1e-12 * float(s.max()), s, torch.zeros_like(s))
        shape = self.in_shape

        def Vt(x: Tensor) -> Tensor:
            return _dht2(x).reshape(x.shape[0], -1)

        def V(z: Tensor) -> Tensor:
            return _dht2(z.reshape(z.shape[0], *shape))

        def Ut(y: Tensor) -> Tensor:
            return _dht2(y).reshape(y.shape[0], -1) * sign.to(y.dtype)

        def U(z: Tensor) -> Tensor:
            return _dht2((z * sign.to(z.dtype)).reshape(z.shape[0], *shape))

        return SVD(Vt, V, Ut, U, s)

    def __repr__(self) -> str:
        return f"Blur(kernel {tuple(self.kernel.shape)}, in_shape={self.in_shape})"


def _dct_matrix(n: int) -> Tensor:
    """Orthonormal DCT-II matrix ``[n, n]``; row 0 is constant ``1/sqrt(n)``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (i + 0.5) * k / n) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


class Downsample(LinearOperator):
    """Average ``factor x factor`` blocks of each channel (super-resolution):
    ``[C, H, W] -> [C, H/factor, W/factor]``.

    SVD: every output pixel sees its block through the unit vector ``1 / factor`` with
    singular value ``1 / factor``; the other directions of each block (an orthonormal DCT
    basis of the block) are unseen.
    """

    def __init__(self, factor: int, in_shape: Sequence[int]):
        self.in_shape = _shape(in_shape, "in_shape")
        if len(self.in_shape) != 3:
            raise ValueError(f"in_shape must be (channels, height, width), got {self.in_shape}")
        c, h, w = self.in_shape
        if not isinstance(factor, int) or factor < 1 or h % factor or w % factor:
            raise ValueError(
                f"factor must be a positive integer dividing {h} and {w}, got {factor}"
            )
        self.factor = factor
        self.out_shape = (c, h // factor, w // factor)

    def _blocks(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H/f, W/f, f*f]``."""
        b = x.shape[0]
        c, h, w = self.in_shape
        f = self.factor
        x = x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 2, 4, 3, 5)
        return x.reshape(b, c, h // f, w // f, f * f)

    def _unblocks(self, z: Tensor) -> Tensor:
        b = z.shape[0]
        c, h, w = self.in_shape
        f = self.factor
        z = z.reshape(b, c, h // f, w // f, f, f).permute(0, 1, 2, 4, 3, 5)
        return z.reshape(b, c, h, w)

    def A(self, x: Tensor) -> Tensor:
        return self._blocks(x).mean(-1)

    def AT(self, y: Tensor) -> Tensor:
        f2 = self.factor**2
        return self._unblocks(y.unsqueeze(-1).expand(*y.shape, f2) / f2)

    @property
    def svd(self) -> SVD:
        f, q = self.factor, _dct_matrix(self.factor**2)
        m = self.out_dim
        n = self.in_dim
        s = torch.zeros(n, dtype=torch.float64)
        s[:m] = 1.0 / f
        out_shape = self.out_shape

        # spectral layout: [block DC coefficients (m) | the other f*f - 1 per block]
        def Vt(x: Tensor) -> Tensor:
            z = self._blocks(x) @ q.to(x.dtype).T  # [B, C, h, w, f*f]
            z = z.reshape(x.shape[0], m, f * f)
            return torch.cat([z[:, :, 0], z[:, :, 1:].reshape(x.shape[0], -1)], dim=1)

        def V(z: Tensor) -> Tensor:
            b = z.shape[0]
            blocks = torch.cat([z[:, :m, None], z[:, m:].reshape(b, m, f * f - 1)], dim=2)
            blocks = blocks @ q.to(z.dtype)
            return self._unblocks(blocks.reshape(b, *out_shape, f * f))

        def Ut(y: Tensor) -> Tensor:
            out = torch.zeros(y.shape[0], n, dtype=y.dtype, device=y.device)
            out[:, :m] = y.reshape(y.shape[0], -1)
            return out

        def U(z: Tensor) -> Tensor:
            return z[:, :m].reshape(z.shape[0], *out_shape)

        return SVD(Vt, V, Ut, U, s)

    def __repr__(self) -> str:
        return f"Downsample(factor={self.factor}, in_shape={self.in_shape})"


class Composed(LinearOperator):
    """``outer @ inner``: ``x -> outer.A(inner.A(x))``. Its SVD is not known in closed form
    (take :meth:`dense` for one)."""

    def __init__(self, outer: LinearOperator, inner: LinearOperator):
        if not isinstance(outer, LinearOperator) or not isinstance(inner, LinearOperator):
            raise TypeError("both factors of a composition must be LinearOperators")
        if inner.out_shape != outer.in_shape:
            raise ValueError(
                f"cannot compose: the inner operator outputs {inner.out_shape} but the outer "
                f"one expects {outer.in_shape}"
            )
        self.outer, self.inner = outer, inner
        self.in_shape, self.out_shape = inner.in_shape, outer.out_shape

    def A(self, x: Tensor) -> Tensor:
        return self.outer.A(self.inner.A(x))

    def AT(self, y: Tensor) -> Tensor:
        return self.inner.AT(self.outer.AT(y))

    def __repr__(self) -> str:
        return f"Composed({self.outer!r} @ {self.inner!r})"


def compressed_sensing(
    m: int, in_shape: Sequence[int], generator: torch.Generator | None = None
) -> MatrixOperator:
    """deepinv's ``CompressedSensing(m, img_size)``: ``y = A x`` with a Gaussian ``A``
    ``[m, prod(in_shape)]``, entries ``N(0, 1/m)`` (so ``E |A x|^2 = |x|^2``); a
    :class:`MatrixOperator` (SVD by dense decomposition)."""
    shape = _shape(in_shape, "in_shape")
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive integer (number of measurements), got {m!r}")
    a = torch.randn(m, math.prod(shape), generator=generator, dtype=torch.float64)
    return MatrixOperator(a / math.sqrt(m), in_shape=shape)


def adjointness_error(
    op: LinearOperator, n: int = 4, generator: torch.Generator | None = None
) -> float:
    """Relative error ``|<A x, y> - <x, A^T y>| / (|A x| |y|)`` on random float64 pairs."""
    x = torch.randn(n, *op.in_shape, dtype=torch.float64, generator=generator)
    y = torch.randn(n, *op.out_shape, dtype=torch.float64, generator=generator)
    ax, aty = op.A(x), op.AT(y)
    lhs = (ax * y).reshape(n, -1).sum(1)
    rhs = (x * aty).reshape(n, -1).sum(1)
    scale = ax.reshape(n, -1).norm(dim=1) * y.reshape(n, -1).norm(dim=1) + 1e-300
    return float(((lhs - rhs).abs() / scale).max())
