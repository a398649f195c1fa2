"""The shared argument checks (reverie._checks): one wording, TypeError for a wrong type and
ValueError for a value out of range."""

from __future__ import annotations

import pytest

from reverie._checks import check_options, in_range, integer, positive, positive_int


def test_positive_int():
    assert positive_int("steps", 3) == 3
    for bad, err in ((0, ValueError), (-2, ValueError), (True, TypeError), (2.5, TypeError),
                     ("3", TypeError)):
        with pytest.raises(err, match="steps must be an integer >= 1, got"):
            positive_int("steps", bad)
    assert integer("k", -4) == -4  # no lower bound
    with pytest.raises(TypeError, match="k must be an integer, got float"):
        integer("k", 1.0)


def test_positive_and_in_range():
    assert positive("rate", 2) == 2.0
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate must be a positive number"):
            positive("rate", bad)
    assert in_range("p", 0.0, 0, 1) == 0.0 and in_range("p", 1.0, 0, 1) == 1.0
    with pytest.raises(ValueError, match=r"p must lie in \(0, 1\], got 0"):
        in_range("p", 0.0, 0, 1, lo_open=True)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\) or be None, got 1"):
        in_range("p", 1, 0, 1, hi_open=True, none_ok=True)
    assert in_range("p", None, 0, 1, none_ok=True) is None


def test_check_options():
    check_options("sampler", "ddim", {"eta": 0.5}, {"eta": 0.0})
    with pytest.raises(ValueError, match=r"sampler 'ddim' has no option\(s\) \['nope'\]; its "
                                         r"options are \['eta'\]"):
        check_options("sampler", "ddim", {"nope": 1}, {"eta": 0.0})
    with pytest.raises(ValueError, match="its options are none"):
        check_options("method", "dps", ["x"], [])
