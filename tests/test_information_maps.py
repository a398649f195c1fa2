"""Pixel-wise information decomposition (Kong et al., ICLR 2024, sec. 3.2): per-coordinate maps
of ``log p(x | y) - log p(x)`` that sum to the pointwise information, against a labelled
Gaussian mixture whose label informs only the first coordinate (the exact map is
``[log p(x | y) - log p(x), 0, 0, 0]``)."""

import pytest
import torch

from reverie.likelihood import mmse_gap, pixel_information, pointwise_information
from reverie.process import VE
from reverie.reference.gaussian import GaussianMixture
from reverie.reference.labelled import LabelledMixture


def _case(n=6, seed=0):
    # component means differ in coordinate 0 only; isotropic covariance, so coordinates 1..3
    # are independent of the component and of the label: p(x | y) / p(x) depends on x_0 alone
    means = [[-1.2, 0.3, -0.5, 0.8], [1.0, 0.3, -0.5, 0.8], [0.2, 0.3, -0.5, 0.8]]
    mix = GaussianMixture(means, 0.3, [0.3, 0.3, 0.4])
    lm = LabelledMixture(mix, [0, 1, 1])
    den = lm.denoiser(VE(1e-3, 1e3))
    g = torch.Generator().manual_seed(seed)
    x, comp = mix.sample_with_components(n, g)
    c = lm.labels[comp]
    exact = torch.stack([lm.conditional(int(ci)).log_prob(xi[None])[0] for xi, ci in zip(x, c)])
    exact_map = torch.zeros_like(x, dtype=torch.float64)
    exact_map[:, 0] = exact - mix.log_prob(x)
    conds = ({"class_labels": c}, {"class_labels": torch.full_like(c, lm.null_class)})
    return den, x, conds, exact_map


def _map_error(info_map, exact_map):
    """(largest error on the informative coordinate, largest |value| on the others)."""
    return ((info_map[:, 0] - exact_map[:, 0]).abs().max(), info_map[:, 1:].abs().max())


def test_pixel_maps_sum_to_the_pointwise_information_with_the_same_noise():
    den, x, (cond, uncond), _ = _case()
    opts = {"points": 24, "noise": 16}
    maps = pixel_information(den, x, cond, uncond, generator=torch.Generator().manual_seed(5),
                             **opts)
    total = pointwise_information(den, x, cond, uncond,
                                  generator=torch.Generator().manual_seed(5), **opts)
    assert maps.shape == x.shape and maps.dtype == torch.float64
    torch.testing.assert_close(maps.sum(1), total, rtol=0, atol=1e-12)
    # other noise draws give another estimate: the equality above is not a coincidence
    other = pointwise_information(den, x, cond, uncond,
                                  generator=torch.Generator().manual_seed(6), **opts)
    assert (other - total).abs().max() > 1e-6
    with pytest.raises(ValueError, match="pixelwise=True"):
        mmse_gap(den, x, cond, uncond, points=4, noise=1).integrate_pixels()


def test_pixel_map_is_zero_where_the_label_is_uninformative_and_siblings_fail():
    den, x, (cond, uncond), exact_map = _case()
    assert exact_map[:, 0].abs().max() > 0.5  # an informative case
    g = torch.Generator().manual_seed(1)
    opts = {"points": 96, "noise": 256, "generator": g}
    info_map = pixel_information(den, x, cond, uncond, **opts)
    err, leak = _map_error(info_map, exact_map)
    assert err < 0.08 and leak < 1e-9, (err, leak)
    # siblings: conditional and unconditional swapped; a denoiser that ignores the label
    # (conditional = unconditional); the total spread evenly over the coordinates
    swapped = pixel_information(den, x, uncond, cond, **opts)
    assert _map_error(swapped, exact_map)[0] > 10 * err
    blind = pixel_information(den, x, uncond, uncond, **opts)
    assert _map_error(blind, exact_map)[0] > 10 * err
    even = info_map.sum(1, keepdim=True).expand_as(info_map) / x.shape[1]
    assert _map_error(even, exact_map)[1] > 0.1
