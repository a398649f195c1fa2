"""The command line's one option parser (``--option KEY=VALUE``) and its error reporting:
the user's mistakes are one line and exit 2, failures show a traceback and exit 1."""

from __future__ import annotations

import math

import numpy as np
import pytest

import reverie.samplers
from reverie.cli import main
from reverie.commands._options import parse_options, parse_value


@pytest.mark.parametrize("text,value", [
    ("false", False), ("FALSE", False), ("True", True), ("none", None), ("0.5", 0.5),
    ("10", 10), ("-3", -3), ("1e-3", 1e-3), ("inf", math.inf), ("-Inf", -math.inf),
    ("'a b'", "a b"), ('"x"', "x"), ("[1, 2.5]", [1, 2.5]), ('["a", null]', ["a", None]),
    ("max", "max"),
])
def test_values_are_python_literals(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)


def test_options_and_bad_keys():
    opts = parse_options(["legacy=false", "eta=0.5", "potential=max"])
    assert opts == {"legacy": False, "eta": 0.5, "potential": "max"}
    assert opts["legacy"] is False and not opts["legacy"]  # "false" once switched legacy on
    for bad in ("eta", "=1", "1x=2", "a b=1"):
        with pytest.raises(ValueError, match="--option expects KEY=VALUE"):
            parse_options([bad])
    with pytest.raises(ValueError, match="given twice"):
        parse_options(["eta=1", "eta=2"])


def _sample(tmp_path, name, *extra):
    out = tmp_path / f"{name}.npy"
    rc = main(["sample", "--model", "two-moons", "--n", "64", "--steps", "6", "--quiet",
               "--sampler", "dpmpp_3m", "--dtype", "float64", "--out", str(out), *extra])
    assert rc == 0
    return np.load(out)


def test_legacy_false_is_false_end_to_end(tmp_path):
    """``--option legacy=true`` gives exactly the default (legacy on) samples; ``legacy=false``
    gives other ones (so the comparison can fail: the old parser passed the truthy string
    "false", i.e. legacy on, which would equal the default)."""
    default = _sample(tmp_path, "default")
    on = _sample(tmp_path, "on", "--option", "legacy=true")
    off = _sample(tmp_path, "off", "--option", "legacy=False")
    assert np.array_equal(on, default)
    assert not np.allclose(off, default)


def test_user_error_is_one_line_exit_2(tmp_path, capsys):
    rc = main(["sample", "--model", "two-moons", "--n", "4", "--steps", "2", "--quiet",
               "--option", "nope=1", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.strip().count("\n") == 0 and "has no option(s) ['nope']" in err


@pytest.mark.parametrize("exc", [RuntimeError("boom inside"),
                                 reverie.samplers.NonFiniteError("NaN after step 3/6")])
def test_internal_error_shows_the_traceback_exit_1(tmp_path, capsys, monkeypatch, exc):
    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(reverie.samplers, "run", broken)
    rc = main(["sample", "--model", "two-moons", "--n", "4", "--steps", "2", "--quiet",
               "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback (most recent call last)" in err
    assert str(exc) in err and "internal error" in err
