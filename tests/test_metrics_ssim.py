"""SSIM (reverie.metrics.ssim) against hand computations and, when installed, torchmetrics."""

import pytest
import torch

from reverie.metrics import ssim


def _hand_ssim(a, b, c1, c2, ddof=0):
    """SSIM of two equal-size patches from their plain statistics (Wang et al. 2004, eq. 13)."""
    a, b = a.reshape(-1).tolist(), b.reshape(-1).tolist()
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    va = sum((v - ma) ** 2 for v in a) / (n - ddof)
    vb = sum((v - mb) ** 2 for v in b) / (n - ddof)
    cov = sum((u - ma) * (v - mb) for u, v in zip(a, b)) / (n - ddof)
    return (2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2))


def test_ssim_map_equals_the_hand_computation_on_an_interior_window():
    """A uniform 3x3 window at the centre of a 5x5 image sees only the image (no padding):
    the map there is eq. 13 on the 3x3 patch's population statistics; the sample-variance
    variant (ddof 1) is a different number the check tells apart."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64)
    ref = 0.6 * x + 0.4 * torch.rand(1, 1, 5, 5, generator=g, dtype=torch.float64)
    _, smap = ssim(x, ref, data_range=1.0, kernel_size=3, return_map=True)
    c1, c2 = 0.01**2, 0.03**2
    for i, j in ((1, 1), (2, 2), (3, 2)):
        pa, pb = x[0, 0, i - 1:i + 2, j - 1:j + 2], ref[0, 0, i - 1:i + 2, j - 1:j + 2]
        assert float(smap[0, 0, i, j]) == pytest.approx(_hand_ssim(pa, pb, c1, c2), rel=1e-12)
        wrong = _hand_ssim(pa, pb, c1, c2, ddof=1)
        assert abs(float(smap[0, 0, i, j]) - wrong) > 1e-4  # the check can fail


def test_ssim_of_constant_images_is_the_luminance_term_and_orders_noise():
    """Constant images a, b: SSIM = (2ab + C1) / (a^2 + b^2 + C1) exactly (any window); a
    copy scores 1, and more noise scores lower."""
    a, b = 0.3, -0.5
    x = torch.full((2, 3, 8, 8), a, dtype=torch.float64)
    ref = torch.full((2, 3, 8, 8), b, dtype=torch.float64)
    c1 = (0.01 * 2.0) ** 2
    exact = (2 * a * b + c1) / (a * a + b * b + c1)
    assert ssim(x, ref).tolist() == pytest.approx([exact, exact], rel=1e-9)
    assert ssim(x, ref, data_range=1.0).tolist() != pytest.approx([exact, exact], rel=1e-3)
    g = torch.Generator().manual_seed(1)
    img = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    noise = torch.randn(4, 1, 8, 8, generator=g)
    s0, s1, s2 = (ssim(img + e * noise, img) for e in (0.0, 0.1, 0.3))
    assert torch.allclose(s0, torch.ones(4, dtype=torch.float64))
    assert bool((s1 < s0).all() and (s2 < s1).all())


def test_ssim_matches_torchmetrics_when_installed():
    tm = pytest.importorskip("torchmetrics.functional.image",
                             reason="torchmetrics not installed (optional cross-check)")
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 16, 16, generator=g, dtype=torch.float64) * 2 - 1
    ref = (x + 0.2 * torch.randn(3, 2, 16, 16, generator=g, dtype=torch.float64)).clamp(-1, 1)
    for kw, tkw in (({}, {}), ({"kernel_size": 5}, {"gaussian_kernel": False, "kernel_size": 5})):
        want = tm.structural_similarity_index_measure(x, ref, data_range=2.0, reduction="none",
                                                      **tkw)
        assert torch.allclose(ssim(x, ref, **kw), want, rtol=1e-9, atol=1e-12)


def test_ssim_bad_input():
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 7))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ssim(torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="odd"):
        ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), kernel_size=4)
    with pytest.raises(ValueError, match="larger than"):
        ssim(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
