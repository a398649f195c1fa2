"""reverie.inverse.from_deepinv: deepinv physics (duck-typed here; real ones when deepinv imports)
as reverie operators, their SVD checked against the dense matrix and a posterior run exactly."""

import pytest
import torch

import reverie
from reverie.inverse import (
    METHODS,
    DeepinvForward,
    DeepinvOperator,
    MatrixOperator,
    adjointness_error,
    compatible_methods,
    from_deepinv,
    solve,
)
from reverie.reference import Gaussian, linear_gaussian_posterior

F64 = torch.float64
SHAPE = (1, 2, 2)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _close(a, b, tol=1e-10):
    assert a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol), (a, b)


class DuckLinear(torch.nn.Module):
    """deepinv's LinearPhysics API on a dense matrix: a module (its buffers fix the dtype) with
    A, A_adjoint, A_dagger, img_size."""

    def __init__(self, M, img_size=SHAPE, out_shape=None):
        super().__init__()
        self.register_buffer("M", M)
        self.img_size = img_size
        self.out_shape = out_shape or (M.shape[0],)

    def A(self, x):
        return (x.reshape(len(x), -1) @ self.M.T).reshape(len(x), *self.out_shape)

    def A_adjoint(self, y):
        return (y.reshape(len(y), -1) @ self.M).reshape(len(y), *self.img_size)

    def A_dagger(self, y):
        return (y.reshape(len(y), -1) @ torch.linalg.pinv(self.M).T).reshape(len(y), *self.img_size)


class DuckDecomposable(DuckLinear):
    """deepinv's DecomposablePhysics API: A = U diag(mask) V^T with an orthogonal V (a random
    rotation of the pixels), U the identity on the spectral grid (measurements in x's shape)."""

    def __init__(self, mask, mask_error=1.0):
        q, _ = torch.linalg.qr(torch.randn(4, 4, generator=_gen(5), dtype=F64))
        self.q, self.mask = q, mask.reshape(SHAPE)
        # A as a matrix; mask_error != 1 makes mask disagree with A (a wrong SVD)
        super().__init__(q @ torch.diag(mask_error * mask) @ q.T, SHAPE, SHAPE)

    def V_adjoint(self, x):
        return (x.reshape(len(x), -1) @ self.q).reshape(len(x), *SHAPE)

    def V(self, z):
        return (z.reshape(len(z), -1) @ self.q.T).reshape(len(z), *SHAPE)

    def U(self, z):
        return (z.reshape(len(z), -1) @ self.q.T).reshape(len(z), *SHAPE)

    def U_adjoint(self, y):
        return (y.reshape(len(y), -1) @ self.q).reshape(len(y), *SHAPE)


class DuckNonLinear(torch.nn.Module):
    """A non-linear physics (no A_adjoint): intensities |B x|^2, as in phase retrieval."""

    img_size = SHAPE

    def __init__(self):
        super().__init__()
        self.register_buffer("B", torch.randn(6, 4, generator=_gen(6), dtype=F64))

    def A(self, x):
        return (x.reshape(len(x), -1) @ self.B.T) ** 2


MASK = torch.tensor([1.0, 0.5, 0.0, 0.2], dtype=F64)


def test_linear_physics_is_a_linear_operator_without_svd():
    M = torch.randn(3, 4, generator=_gen(0), dtype=F64)
    op = from_deepinv(DuckLinear(M))
    assert isinstance(op, DeepinvOperator) and op.svd is None and "not a Decomposable" in repr(op)
    assert op.in_shape == SHAPE and op.out_shape == (3,)
    _close(op.matrix(), M)
    assert adjointness_error(op) < 1e-12
    y = torch.randn(2, 3, generator=_gen(1), dtype=F64)
    _close(op.pinv(y), MatrixOperator(M, in_shape=SHAPE).pinv(y))
    assert compatible_methods(op) == tuple(m for m in METHODS if not METHODS[m].svd
                                           and m != "structured_noise")
    # a physics with a wrong adjoint fails the adjointness check
    bad = DuckLinear(M)
    bad.A_adjoint = lambda y: (y @ (1.15 * M)).reshape(len(y), *SHAPE)
    # (seeded: with the global RNG the random pairs can be near-orthogonal and hide the error)
    err = adjointness_error(from_deepinv(bad), n=16, generator=_gen(7))
    assert err > 0.05


def test_decomposable_physics_gives_the_exact_svd_and_a_wrong_one_is_refused():
    op = from_deepinv(DuckDecomposable(MASK))
    assert op.svd is not None and "with SVD" in repr(op)
    # A = U diag(s) V^T reproduces the matrix, and the singular values are the dense ones
    svd = op.svd
    eye = torch.eye(4, dtype=F64).reshape(4, *SHAPE)
    _close(svd.U(svd.s * svd.Vt(eye)), op.A(eye))
    _close(svd.s.sort().values, torch.linalg.svdvals(op.matrix()).sort().values)
    assert set(compatible_methods(op)) == set(METHODS) - {"structured_noise"}
    # singular values 15% off the physics' A: the probe check refuses the SVD
    wrong = from_deepinv(DuckDecomposable(MASK, mask_error=1.15))
    assert wrong.svd is None and "differs from its A" in wrong.svd_reason


def test_posterior_through_the_adapted_svd_is_exact():
    """MCGdiff (needs the SVD) through the adapted physics recovers the exact posterior of an
    N(0, I) prior: mean within 5 standard errors (4x fewer effective samples for the
    resampled clouds), covariance within 12%; the prior's covariance is not."""
    op = from_deepinv(DuckDecomposable(MASK))
    A, sy = op.matrix(), 0.3
    y = torch.tensor([[[0.4, -1.0], [0.3, 0.8]]], dtype=F64)
    post = linear_gaussian_posterior(Gaussian(torch.zeros(4), None), A, y.reshape(-1), sy**2)
    mu, C = post.mean(), post.covariance()
    den = Gaussian(torch.zeros(4, dtype=F64), None).denoiser(reverie.VP.linear())
    x = solve(den, op, y, sy, method="mcg_diff", steps=200, n=2000, particles=500,
              generator=_gen(2), grid="logsnr", shape=SHAPE).reshape(2000, 4)
    se = torch.sqrt(torch.diagonal(C) / 500)
    assert bool(((x.mean(0) - mu).abs() < 5 * se).all()), (x.mean(0), mu)
    rel = float(torch.linalg.norm(x.T.cov() - C) / torch.linalg.norm(C))
    assert rel < 0.12, rel
    assert float(torch.linalg.norm(torch.eye(4, dtype=F64) - C) / torch.linalg.norm(C)) > 0.5


def test_non_linear_physics_is_a_function_for_gradient_methods():
    phys = DuckNonLinear()
    fwd = from_deepinv(phys)
    assert isinstance(fwd, DeepinvForward) and fwd.out_shape == (6,)
    assert compatible_methods(fwd) == tuple(m for m in METHODS if not METHODS[m].linear)
    den = Gaussian(torch.zeros(4, dtype=F64), None).denoiser(reverie.VP.linear())
    y = phys.A(torch.ones(1, *SHAPE, dtype=F64))[0]
    kw = dict(method="dps", steps=10, n=3, shape=SHAPE, generator=_gen(3))
    got = solve(den, fwd, y, 0.1, **{**kw, "generator": _gen(3)})
    want = solve(den, phys.A, y, 0.1, **{**kw, "generator": _gen(3)})
    _close(got, want)
    with pytest.raises(TypeError, match="not linear: it has no A_adjoint"):
        solve(den, fwd, y, 0.1, method="pigdm", shape=SHAPE)
    # deepinv's PhaseRetrieval has the A_adjoint of its linear part: the probe still sees a
    # non-linear A; a linear physics passes it
    phys.A_adjoint = lambda v: v.reshape(len(v), -1) @ phys.B
    fwd = from_deepinv(phys)
    assert isinstance(fwd, DeepinvForward) and "A(x + 2 v) != A(x) + 2 A(v)" in fwd.__name__
    with pytest.raises(TypeError, match="not linear"):
        solve(den, fwd, y, 0.1, method="ddrm")
    assert isinstance(from_deepinv(DuckLinear(phys.B)), DeepinvOperator)


def test_from_deepinv_bad_input():
    with pytest.raises(TypeError, match="deepinv physics"):
        from_deepinv(object())
    phys = DuckLinear(torch.eye(4, dtype=F64))
    phys.img_size = None
    with pytest.raises(ValueError, match="pass in_shape"):
        from_deepinv(phys)
    with pytest.raises(ValueError, match="fails on a real image"):
        from_deepinv(DuckLinear(torch.eye(4, dtype=F64)), in_shape=(1, 3, 3))
    den = Gaussian(torch.zeros(4, dtype=F64), None).denoiser(reverie.VP.linear())
    op = from_deepinv(DuckLinear(torch.eye(4, dtype=F64)[:3]))
    with pytest.raises(ValueError, match="not a DecomposablePhysics"):
        solve(den, op, torch.zeros(3, dtype=F64), 0.1, method="ddrm")


def test_real_deepinv_physics():
    physics = pytest.importorskip(
        "deepinv.physics", reason="deepinv not importable (its top-level import needs "
        "torchvision, which is not installed here)")
    torch.manual_seed(0)
    shape = (1, 8, 8)
    inp = from_deepinv(physics.Inpainting(img_size=shape, mask=0.5))
    mri = from_deepinv(physics.MRI(mask=(torch.rand(8, 8) > 0.5).float(), img_size=(2, 8, 8)))
    for op in (inp, mri):
        assert op.svd is not None and adjointness_error(op) < 1e-6
        s = op.svd.s.sort(descending=True).values
        dense = torch.linalg.svdvals(op.matrix())
        assert float((s[: len(dense)] - dense).abs().max()) < 1e-5
    blur = from_deepinv(physics.BlurFFT(img_size=shape, filter=physics.blur.gaussian_blur(1.0)))
    assert blur.svd is None and "spectral coordinates" in blur.svd_reason
    cs = from_deepinv(physics.CompressedSensing(m=20, img_size=shape))
    assert cs.out_shape == (20,) and cs.svd is None and adjointness_error(cs) < 1e-6
