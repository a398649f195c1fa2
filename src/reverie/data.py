"""Small data sets for the bundled models, tests and benchmarks.

* :func:`load_digits` -- scikit-learn's 8x8 handwritten digits (UCI "Optical Recognition of
  Handwritten Digits", 1797 images, 10 classes; ships with scikit-learn), scaled to [-1, 1],
  with a fixed, seeded, class-stratified train/test split.
* :func:`two_moons` -- the classic two interleaving half circles, drawn from an explicit
  ``torch.Generator``, scaled to about unit spread, with the moon index as label.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from reverie._checks import positive_int

__all__ = ["load_digits", "two_moons", "DIGITS_SPLITS", "DIGITS_TEST_FRACTION", "DIGITS_SPLIT_SEED"]

DIGITS_SPLITS = ("train", "test", "all")
#: Fraction of each class held out for ``split="test"``.
DIGITS_TEST_FRACTION = 0.2
#: Seed of the fixed train/test split (a NumPy ``RandomState``, stable across versions).
DIGITS_SPLIT_SEED = 0


def _digits_split_indices() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = bunch.images.astype(np.float32)  # [1797, 8, 8], values 0..16
    labels = bunch.target.astype(np.int64)
    rng = np.random.RandomState(DIGITS_SPLIT_SEED)
    test_idx = []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        perm = rng.permutation(idx)
        test_idx.append(perm[: int(round(DIGITS_TEST_FRACTION * idx.size))])
    test = np.sort(np.concatenate(test_idx))
    train = np.setdiff1d(np.arange(labels.size), test)
    return images, labels, train, test


def load_digits(split: str = "train") -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 digits as ``(images [N, 1, 8, 8] in [-1, 1], labels [N] int64)``.

    Pixel values 0..16 are mapped linearly to [-1, 1] (``x / 8 - 1``). ``split`` is
    ``"train"`` (1438 images), ``"test"`` (359 images: 20% of every class, chosen with
    ``numpy.random.RandomState(0)``) or ``"all"`` (1797). The split is fixed: the same on every
    machine and run, so models trained on ``"train"`` are evaluated on unseen ``"test"`` digits.
    """
    if split not in DIGITS_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(DIGITS_SPLITS)}")
    try:
        images, labels, train, test = _digits_split_indices()
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_digits needs scikit-learn (pip install scikit-learn, or reverie[all])"
        ) from err
    idx = {"train": train, "test": test, "all": np.arange(labels.size)}[split]
    x = torch.from_numpy(images[idx] / 8.0 - 1.0).unsqueeze(1).contiguous()
    y = torch.from_numpy(labels[idx]).contiguous()
    return x, y


def digits_to_unit(x: Tensor) -> Tensor:
    """Map model-space digits ([-1, 1]) to [0, 1] for display, clamped."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


#: Offset and scale that centre two moons and give them about unit spread per axis.
TWO_MOONS_CENTER = (0.5, 0.25)
TWO_MOONS_SCALE = 1.0 / 0.75


def two_moons(
    n: int, noise: float = 0.05, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """``n`` points of two interleaving half circles (as scikit-learn's ``make_moons``),
    centred and scaled by :data:`TWO_MOONS_SCALE`; returns ``(points [n, 2], moon [n] int64)``.

    Moon 0 is the upper arc ``(cos a, sin a)``, moon 1 the lower arc ``(1 - cos a, 0.5 - sin a)``
    with ``a`` uniform in ``[0, pi]``; Gaussian noise of std ``noise`` (before scaling) is added.
    The two moons have equal size (``n // 2`` and ``n - n // 2``), in random order.
    """
    positive_int("n", n)
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    labels = torch.cat([torch.zeros(n // 2), torch.ones(n - n // 2)]).long()
    labels = labels[torch.randperm(n, generator=generator)]
    a = torch.rand(n, generator=generator, dtype=torch.float64) * math.pi
    upper = torch.stack([torch.cos(a), torch.sin(a)], dim=1)
    lower = torch.stack([1.0 - torch.cos(a), 0.5 - torch.sin(a)], dim=1)
    pts = torch.where(labels[:, None] == 0, upper, lower)
    pts = pts + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    center = torch.tensor(TWO_MOONS_CENTER, dtype=torch.float64)
    return ((pts - center) * TWO_MOONS_SCALE).float(), labels
