"""Operators: adjointness, SVDs and solves against dense linear algebra, bad input."""

import pytest
import torch

from reverie.inverse import (
    Blur,
    Composed,
    Downsample,
    Identity,
    Inpainting,
    MatrixOperator,
    adjointness_error,
    gaussian_kernel,
)


def _ops():
    g = torch.Generator().manual_seed(0)
    return {
        "matrix_wide": MatrixOperator(torch.randn(3, 7, generator=g, dtype=torch.float64)),
        "matrix_tall": MatrixOperator(torch.randn(9, 4, generator=g, dtype=torch.float64)),
        "matrix_image": MatrixOperator(torch.randn(5, 16, generator=g, dtype=torch.float64),
                                       in_shape=(1, 4, 4)),
        "inpainting": Inpainting(torch.rand(1, 4, 4, generator=g) > 0.5),
        "blur_symmetric": Blur(gaussian_kernel(3, 1.0), (2, 6, 6)),
        "blur_general": Blur(torch.rand(3, 2, generator=g, dtype=torch.float64), (1, 5, 6)),
        "downsample": Downsample(2, (2, 4, 6)),
        "identity": Identity((3,)),
        "composed": Composed(Downsample(2, (1, 4, 4)), Blur(gaussian_kernel(3, 1.0), (1, 4, 4))),
    }


OPS = _ops()


@pytest.mark.parametrize("name", list(OPS))
def test_adjointness(name):
    assert adjointness_error(OPS[name], generator=torch.Generator().manual_seed(1)) < 1e-12


@pytest.mark.parametrize("name", list(OPS))
def test_svd_reconstructs_the_operator(name):
    op = OPS[name]
    svd = op.svd
    if name in ("blur_general", "composed"):
        assert svd is None  # no closed form: dense() gives one
        svd = op.dense().svd
    M = op.matrix()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(5, *op.in_shape, dtype=torch.float64, generator=g)
    torch.testing.assert_close(svd.U(svd.s * svd.Vt(x)), op.A(x), atol=1e-10, rtol=0)
    torch.testing.assert_close(svd.V(svd.Vt(x)), x, atol=1e-10, rtol=0)  # V orthogonal
    y = torch.randn(5, *op.out_shape, dtype=torch.float64, generator=g)
    torch.testing.assert_close(svd.V(svd.s * svd.Ut(y)), op.AT(y), atol=1e-10, rtol=0)
    sv = torch.linalg.svdvals(M)
    s = svd.s.sort(descending=True).values[: sv.numel()]
    torch.testing.assert_close(s, torch.where(sv > 1e-9, sv, 0.0), atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", list(OPS))
def test_solves_match_dense_linear_algebra(name):
    op = OPS[name]
    M = op.matrix()
    g = torch.Generator().manual_seed(3)
    y = torch.randn(4, *op.out_shape, dtype=torch.float64, generator=g)
    v = torch.randn(4, *op.in_shape, dtype=torch.float64, generator=g)
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    pinv = (torch.linalg.pinv(M) @ flat(y).T).T
    torch.testing.assert_close(flat(op.pinv(y)), pinv, atol=1e-8, rtol=0)
    eye_x, eye_y = torch.eye(M.shape[1], dtype=M.dtype), torch.eye(M.shape[0], dtype=M.dtype)
    normal = torch.linalg.solve(2 * M.T @ M + 0.3 * eye_x, flat(v).T).T
    torch.testing.assert_close(flat(op.normal_solve(v, 2.0, 0.3)), normal, atol=1e-8, rtol=0)
    gram = torch.linalg.solve(2 * M @ M.T + 0.3 * eye_y, flat(y).T).T
    torch.testing.assert_close(flat(op.gram_solve(y, 2.0, 0.3)), gram, atol=1e-8, rtol=0)
    # per-sample coefficients
    a = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    got = flat(op.gram_solve(y, a, 0.1))
    for k in range(4):
        ref = torch.linalg.solve(a[k] * M @ M.T + 0.1 * eye_y, flat(y)[k])
        torch.testing.assert_close(got[k], ref, atol=1e-8, rtol=0)


def test_inpainting_fill_and_downsample_values():
    mask = torch.tensor([[[True, False], [False, True]]])
    op = Inpainting(mask)
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    assert op.A(x).tolist() == [[0.0, 3.0]]
    assert op.fill(op.A(x), -1.0).tolist() == [[[[0.0, -1.0], [-1.0, 3.0]]]]
    d = Downsample(2, (1, 2, 4))
    x = torch.arange(8.0).reshape(1, 1, 2, 4)
    assert d.A(x).tolist() == [[[[2.5, 4.5]]]]


def test_blur_matches_direct_circular_convolution():
    g = torch.Generator().manual_seed(4)
    k = torch.rand(3, 3, generator=g, dtype=torch.float64)
    op = Blur(k, (1, 5, 5))
    x = torch.randn(1, 1, 5, 5, generator=g, dtype=torch.float64)
    ref = torch.zeros_like(x)
    for i in range(5):
        for j in range(5):
            for a in range(3):
                for b in range(3):
                    ref[0, 0, i, j] += k[a, b] * x[0, 0, (i - a + 1) % 5, (j - b + 1) % 5]
    torch.testing.assert_close(op.A(x), ref, atol=1e-12, rtol=0)


def test_operator_bad_input():
    with pytest.raises(ValueError, match="2-D matrix"):
        MatrixOperator(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="broadcast"):
        Inpainting(torch.ones(3, 3, dtype=torch.bool), in_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="observes nothing"):
        Inpainting(torch.zeros(1, 2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="factor"):
        Downsample(3, (1, 4, 4))
    with pytest.raises(ValueError, match="cannot compose"):
        Composed(Downsample(2, (1, 4, 4)), Identity((1, 2, 2)))
    with pytest.raises(ValueError, match="larger than the image"):
        Blur(torch.ones(5, 5), (1, 4, 4))
    op = MatrixOperator(torch.ones(2, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        op.check_input(torch.ones(4, 2))


def test_motion_kernel_and_compressed_sensing():
    """Random motion kernels (deepinv's MotionBlurGenerator in spirit): a normalised,
    reproducible, non-symmetric kernel (so its Blur has no SVD); a tiny trajectory is a delta
    at the centre. Compressed sensing has deepinv's N(0, 1/m) entries (a 15% larger scale is
    outside the tolerance)."""
    from reverie.inverse import compressed_sensing, motion_kernel

    g = torch.Generator().manual_seed
    k = motion_kernel(7, g(0))
    assert k.shape == (7, 7) and bool((k >= 0).all()) and abs(float(k.sum()) - 1) < 1e-12
    assert torch.equal(k, motion_kernel(7, g(0))) and not torch.equal(k, motion_kernel(7, g(1)))
    assert (k > 0).sum() > 2 and Blur(k, (1, 8, 8)).svd is None
    delta = torch.zeros(5, 5, dtype=torch.float64)
    delta[2, 2] = 1
    assert torch.equal(motion_kernel(5, g(2), std=1e-3), delta)
    a = compressed_sensing(1000, (1, 5, 5), g(3)).matrix()
    assert a.shape == (1000, 25) and abs(float(a.var()) * 1000 - 1) < 0.04
    assert abs(float((1.15 * a).var()) * 1000 - 1) > 0.04
    with pytest.raises(ValueError, match="positive integer"):
        compressed_sensing(0, (1, 4, 4))
    with pytest.raises(ValueError, match="size >= 1"):
        motion_kernel(0)
