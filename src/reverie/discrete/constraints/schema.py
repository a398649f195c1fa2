"""JSON Schema (draft 2020-12) to a regular expression, exactly or not at all.

:func:`to_regex` turns a schema into a regular expression over JSON text for
:meth:`TokenAutomaton.from_regex`. The expression uses only the syntax Python's ``re`` and
Rust's ``regex`` (outlines-core's byte DFA) share: no look-around, no back-references, no
anchors (``from_regex`` matches the whole text).

**The language.** For a schema ``S`` the expression ``R`` satisfies

    canonical(v) in R  for every instance v valid under S (with the restrictions below), and
    every string in R is JSON text whose value is valid under S.

``canonical(v)`` is ``json.dumps(v, ensure_ascii=False, separators=(",", ":"))`` with two
normalisations: object keys in the schema's declared order (``properties`` order, then the
remaining ``required`` keys), and numbers in plain notation (integral values as integers, no
exponent). ``R`` may accept other spellings of a valid value (``1.50``, ``1e3`` where no bound
applies). With ``whitespace_pattern`` the pattern may also appear between any two JSON tokens.

**Restrictions** (documented tightenings; ``R`` never accepts an invalid value):

* an object schema with ``properties`` is closed: keys outside ``properties`` (and
  ``required``) are not generated, whatever ``additionalProperties`` defaults to;
* "any JSON value" (``true``, ``{}``, an untyped array/object part) is generated nested at most
  ``any_depth`` levels deep, and a recursive ``$ref`` is unrolled ``max_recursion_depth`` times;
* numbers with bounds are written without exponent, and ``-0`` is not generated; integers
  are written as integer literals (``1``, not ``1.0``);
* formats follow their RFC grammars with: no leap seconds (``:60``) in ``time`` / ``date-time``;
  ``ipv4`` without leading zeros.

Keywords that a regular language cannot express here raise :class:`UnsupportedSchema`
naming the keyword and its location; a schema that fails the draft's meta-schema raises
``ValueError``.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from decimal import Decimal
from functools import cache
from typing import Any

from reverie._checks import integer

__all__ = ["UnsupportedSchema", "to_regex", "FORMATS"]


class UnsupportedSchema(ValueError):
    """A schema keyword that reverie cannot translate exactly into a regular expression."""

    def __init__(self, keyword: str, path: str, why: str) -> None:
        self.keyword, self.path = keyword, path or "/"
        super().__init__(f"JSON schema keyword {keyword!r} at {self.path} is not supported: {why}")


# ------------------------------------------------------------------------ regex algebra
# A regex is a str; None is the empty language (no string), "" the empty string.
_META = set("\\.+*?()|[]{}^$")


def _lit(text: str) -> str:
    """``text`` as a literal regex."""
    return "".join("\\" + c if c in _META else c for c in text)


def _alt(*xs: str | None) -> str | None:
    opts = list(dict.fromkeys(x for x in xs if x is not None))
    if not opts:
        return None
    return opts[0] if len(opts) == 1 else "(?:" + "|".join(opts) + ")"


def _cat(*xs: str | None) -> str | None:
    return None if any(x is None for x in xs) else "".join(xs)  # type: ignore[arg-type]


def _opt(x: str | None) -> str:
    return "" if not x else f"(?:{x})?"


def _rep(x: str | None, lo: int, hi: int | None) -> str | None:
    """``x`` repeated ``lo..hi`` times (``hi=None``: unbounded)."""
    if hi is not None and hi < lo:
        return None
    if x is None:
        return "" if lo == 0 else None
    if x == "" or hi == 0:
        return ""
    if hi is None:
        return f"(?:{x})" + ("*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}")
    return f"(?:{x})" + ("" if lo == hi == 1 else f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}")


# ------------------------------------------------------------------ characters of a string
# Sets of code points are sorted lists of inclusive intervals; surrogates never occur.
_MAX = 0x10FFFF
_SURROGATES = (0xD800, 0xDFFF)
_ESCAPES = {0x22: '\\\\"', 0x5C: "\\\\\\\\", 8: "\\\\b", 9: "\\\\t", 10: "\\\\n", 12: "\\\\f",
            13: "\\\\r"}  # json.dumps' short escapes, as regexes; other controls are \u00xx


def _norm(iv: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged intervals without the surrogate block."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(iv):
        for a, b in ((lo, min(hi, _SURROGATES[0] - 1)), (max(lo, _SURROGATES[1] + 1), hi)):
            if a > b:
                continue
            if out and a <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(out[-1][1], b))
            else:
                out.append((a, b))
    return out


def _complement(iv: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, at = [], 0
    for lo, hi in _norm(iv):
        if lo > at:
            out.append((at, lo - 1))
        at = hi + 1
    if at <= _MAX:
        out.append((at, _MAX))
    return _norm(out)


def _cp(c: int) -> str:
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}" if c < 0x10000 else f"\\U{c:08x}"


_ANY_UNIT = '(?:[^"\\\\\\x00-\\x1f]|\\\\["\\\\bfnrt]|\\\\u00(?:0[0-7]|0b|0e|0f|1[0-9a-f]))'


def _units(iv: list[tuple[int, int]]) -> str | None:
    """One serialized string character (raw or escaped as json.dumps does) from the set."""
    iv = _norm(iv)
    if iv == _norm([(0, _MAX)]):
        return _ANY_UNIT
    specials = set(_ESCAPES) | set(range(0x20))
    raw, parts = [], []
    for lo, hi in iv:
        for c in [c for c in specials if lo <= c <= hi]:
            parts.append(_ESCAPES.get(c, f"\\\\u{c:04x}"))
        a = lo
        for c in sorted(c for c in specials if lo <= c <= hi) + [hi + 1]:
            if a < c:
                raw.append((a, c - 1))
            a = c + 1
    if raw:
        parts.insert(0, "[" + "".join(_cp(a) if a == b else f"{_cp(a)}-{_cp(b)}"
                                      for a, b in raw) + "]")
    return _alt(*parts)


def _chars(text: str) -> list[tuple[int, int]]:
    return [(ord(c), ord(c)) for c in text]


# -------------------------------------------------------------------- ECMA-262 patterns
_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
_SPACE = [(9, 13), (0x20, 0x20), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
          (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000),
          (0xFEFF, 0xFEFF)]
_DOT = _complement([(10, 10), (13, 13), (0x2028, 0x2029)])
_CLASS_ESC = {"d": _DIGIT, "w": _WORD, "s": _SPACE}
_CTRL_ESC = {"t": 9, "n": 10, "v": 11, "f": 12, "r": 13, "0": 0}


class _Pattern:
    """Parser of the regular subset of ECMA-262 regular expressions into a tree:
    ``("set", intervals) | ("cat", [..]) | ("alt", [..]) | ("rep", node, lo, hi) | ("^",)
    | ("$",)``."""

    def __init__(self, src: str, path: str) -> None:
        self.s, self.i, self.path = src, 0, path

    def fail(self, why: str) -> UnsupportedSchema:
        return UnsupportedSchema("pattern", self.path, f"{why} in {self.s!r} (position {self.i})")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def parse(self) -> tuple:
        node = self.alt()
        if self.i < len(self.s):
            raise self.fail("unbalanced ')'")
        return node

    def alt(self) -> tuple:
        branches = [self.seq()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.seq())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def seq(self) -> tuple:
        items: list[tuple] = []
        while self.peek() not in ("", "|", ")"):
            atom = self.atom()
            items.append(self.quantified(atom))
        return ("cat", items)

    def quantified(self, atom: tuple) -> tuple:
        c = self.peek()
        bounds = {"*": (0, None), "+": (1, None), "?": (0, 1)}.get(c)
        if bounds:
            self.i += 1
        elif c == "{":
            bounds = self.braces()
        if bounds is None:
            return atom
        if atom[0] in ("^", "$"):
            raise self.fail("a quantified anchor")
        if self.peek() == "?":  # lazy: same language under a full match
            self.i += 1
        return ("rep", atom, *bounds)

    def braces(self) -> tuple[int, int | None] | None:
        j = self.s.find("}", self.i)
        body = self.s[self.i + 1 : j] if j > 0 else ""
        lo, _, hi = body.partition(",")
        if not lo.isdigit() or not (hi == "" or hi.isdigit()):
            return None  # a literal '{' (Annex B)
        self.i = j + 1
        bounds = int(lo), (int(lo) if "," not in body else int(hi) if hi else None)
        if bounds[1] is not None and bounds[1] < bounds[0]:
            raise self.fail("a quantifier {n,m} with m < n")
        return bounds

    def atom(self) -> tuple:
        c = self.peek()
        self.i += 1
        if c == "(":
            if self.s.startswith("?:", self.i):
                self.i += 2
            elif self.s.startswith("?<", self.i) and self.s[self.i + 2 : self.i + 3] not in "=!":
                self.i = self.s.index(">", self.i) + 1  # named group
            elif self.peek() == "?":
                raise self.fail("look-around")
            node = self.alt()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return node
        if c in "^$":
            return (c,)
        if c == ".":
            return ("set", _DOT)
        if c == "[":
            return ("set", self.cls())
        if c == "\\":
            got = self.escape(in_class=False)
            return ("set", got)
        if c in "*+?":
            raise self.fail("nothing to repeat")
        return ("set", _chars(c))

    def escape(self, in_class: bool) -> list[tuple[int, int]]:
        c = self.peek()
        self.i += 1
        if c.lower() in _CLASS_ESC:
            iv = _CLASS_ESC[c.lower()]
            return _complement(iv) if c.isupper() else list(iv)
        if c in _CTRL_ESC and not (c == "0" and self.peek().isdigit()):
            return _chars(chr(_CTRL_ESC[c]))
        if c in "xu":
            if c == "u" and self.peek() == "{":
                j = self.s.index("}", self.i)
                hexd, self.i = self.s[self.i + 1 : j], j + 1
            else:
                n = 2 if c == "x" else 4
                hexd = self.s[self.i : self.i + n]
                self.i += n
            try:
                return _chars(chr(int(hexd, 16)))
            except ValueError:
                raise self.fail(f"a bad escape \\{c}{hexd}") from None
        if c == "b" and in_class:
            return _chars("\b")
        if c and not c.isalnum():
            return _chars(c)  # identity escape of a syntax character
        raise self.fail(f"the escape \\{c} (word boundaries, back-references, \\p and \\c "
                        "are not supported)")

    def cls(self) -> list[tuple[int, int]]:
        neg = self.peek() == "^"
        self.i += neg
        iv: list[tuple[int, int]] = []
        first = True
        while True:
            c = self.peek()
            if c == "":
                raise self.fail("missing ']'")
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            lo = self.class_atom()
            if self.peek() == "-" and self.s[self.i + 1 : self.i + 2] not in ("]", ""):
                self.i += 1
                hi = self.class_atom()
                if len(lo) != 1 or len(hi) != 1 or lo[0][0] != lo[0][1] or hi[0][0] != hi[0][1]:
                    raise self.fail("a class range with a class escape")
                if hi[0][0] < lo[0][0]:
                    raise self.fail("a class range out of order")
                iv.append((lo[0][0], hi[0][0]))
            else:
                iv += lo
        return _complement(iv) if neg else _norm(iv)

    def class_atom(self) -> list[tuple[int, int]]:
        c = self.peek()
        self.i += 1
        return self.escape(in_class=True) if c == "\\" else _chars(c)


def _pattern_regex(pattern: str, path: str) -> str | None:
    """The serialized-string-content regex of the strings that ECMA ``pattern`` *finds*
    (JSON Schema's ``pattern`` is unanchored); anchors only at the ends of top-level
    branches."""
    tree = _Pattern(pattern, path).parse()
    branches = tree[1] if tree[0] == "alt" else [tree]
    free = _rep(_ANY_UNIT, 0, None)
    out = []
    for b in branches:
        items = list(b[1]) if b[0] == "cat" else [b]
        start = bool(items) and items[0] == ("^",)
        items = items[start:]
        end = bool(items) and items[-1] == ("$",)
        items = items[: len(items) - end]
        body = _emit(("cat", items), path, pattern)
        out.append(_cat("" if start else free, body, "" if end else free))
    return _alt(*out)


def _emit(node: tuple, path: str, pattern: str) -> str | None:
    kind = node[0]
    if kind == "set":
        return _units(node[1])
    if kind == "cat":
        return _cat(*(_emit(n, path, pattern) for n in node[1]))
    if kind == "alt":
        return _alt(*(_emit(n, path, pattern) for n in node[1]))
    if kind == "rep":
        return _rep(_emit(node[1], path, pattern), node[2], node[3])
    raise UnsupportedSchema("pattern", path, f"an anchor {kind!r} inside {pattern!r} (only at "
                            "the start or end of a top-level alternative)")


# ----------------------------------------------------------------------------- formats
_Y = "(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # 0001-9999
_LEAP = "(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
_MD = ("(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)"
       "|02-(?:0[1-9]|1[0-9]|2[0-8]))")
_DATE = f"(?:{_Y}-{_MD}|{_LEAP}-02-29)"
_TIME = ("(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\\.[0-9]+)?"
         "(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])")
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = f"{_OCTET}(?:\\.{_OCTET}){{3}}"
_HEX = "[0-9a-fA-F]"
_H16 = f"{_HEX}{{1,4}}"
_LS32 = f"(?:{_H16}:{_H16}|{_IPV4})"
_IPV6_TAILS = [f"(?:{_H16}:){{{4 - k}}}{_LS32}" for k in range(4)] + [_LS32, _H16, ""]
_IPV6 = _alt(  # RFC 3986 IPv6address: no "::", then "::" after at most k+1 groups
    f"(?:{_H16}:){{6}}{_LS32}", f"::(?:{_H16}:){{5}}{_LS32}",
    *(f"(?:(?:{_H16}:){{0,{k}}}{_H16})?::{tail}" for k, tail in enumerate(_IPV6_TAILS)))
_ATEXT = _units(_chars("!#$%&'*+-/=?^_`{|}~") + [(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)])
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_QUOTED = _cat(_units(_chars('"')),
               _rep(_alt(_units([(32, 33), (35, 91), (93, 126)]),
                         _cat(_units(_chars("\\")), _units([(32, 126)]))), 0, None),
               _units(_chars('"')))
_EMAIL = (f"(?:{_ATEXT}+(?:\\.{_ATEXT}+)*|{_QUOTED})@(?:{_LABEL}(?:\\.{_LABEL})*"
          f"|\\[{_IPV4}\\]|\\[IPv6:{_IPV6}\\])")
_N = "[0-9]+"
_DUR_TIME = f"T(?:{_N}H(?:{_N}M(?:{_N}S)?)?|{_N}M(?:{_N}S)?|{_N}S)"
_DUR_DATE = f"(?:{_N}D|{_N}M(?:{_N}D)?|{_N}Y(?:{_N}M(?:{_N}D)?)?)(?:{_DUR_TIME})?"

#: Supported ``format`` values: serialized-content regex and (min, max) length in characters.
FORMATS: dict[str, tuple[str, tuple[int, int | None]]] = {
    "date": (_DATE, (10, 10)),
    "time": (_TIME, (9, None)),
    "date-time": (f"{_DATE}[Tt]{_TIME}", (20, None)),
    "uuid": (f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}", (36, 36)),
    "ipv4": (_IPV4, (7, 15)),
    "ipv6": (_IPV6, (2, 45)),
    "email": (_EMAIL, (3, None)),
    "duration": (f"P(?:{_DUR_DATE}|{_DUR_TIME}|{_N}W)", (3, None)),
}


# ------------------------------------------------------------------------------ numbers
_INT = "-?(?:0|[1-9][0-9]*)"


def _dclass(a: int, b: int) -> str:
    return str(a) if a == b else f"[{a}-{b}]"


def _fixed(a: str, b: str) -> str:
    """Digit strings of the same length between ``a`` and ``b`` (inclusive)."""
    if a == b:
        return a
    if a[0] == b[0]:
        return a[0] + _fixed(a[1:], b[1:])
    n = len(a) - 1
    rest = "[0-9]" + (f"{{{n}}}" if n > 1 else "") if n else ""
    if a[1:] == "0" * n and b[1:] == "9" * n:
        return _dclass(int(a[0]), int(b[0])) + rest
    parts = [a[0] + _fixed(a[1:], "9" * n)]
    if int(a[0]) + 1 <= int(b[0]) - 1:
        parts.append(_dclass(int(a[0]) + 1, int(b[0]) - 1) + rest)
    parts.append(b[0] + _fixed("0" * n, b[1:]))
    return _alt(*parts) or ""


def _uint(lo: int, hi: int | None) -> str | None:
    """Canonical non-negative integer literals in ``[lo, hi]``."""
    if hi is not None and lo > hi:
        return None
    parts = []
    top = len(str(hi)) if hi is not None else len(str(lo))
    for n in range(len(str(lo)), top + 1):
        a = max(lo, 10 ** (n - 1) if n > 1 else 0)
        b = 10**n - 1 if hi is None else min(hi, 10**n - 1)
        if a <= b:
            parts.append(_fixed(str(a), str(b)))
    if hi is None:
        parts.append(f"[1-9][0-9]{{{top},}}")
    return _alt(*parts)


def _int_range(lo: int | None, hi: int | None) -> str | None:
    """Canonical integer literals in ``[lo, hi]`` (``None``: unbounded); no ``-0``."""
    if lo is None and hi is None:
        return _INT
    parts = []
    if hi is None or hi >= 0:
        parts.append(_uint(0 if lo is None else max(lo, 0), hi))
    if lo is None or lo < 0:
        mag = _uint(max(1, -hi) if hi is not None else 1, None if lo is None else -lo)
        parts.append(_cat("-", mag))
    return _alt(*parts)


_Bound = tuple[str, bool] | None  # remaining fraction digits (no trailing zeros), strict


@cache
def _between(lo: _Bound, hi: _Bound) -> tuple[bool, str | None]:
    """Digit strings ``E`` (possibly empty) with ``0.E`` above ``lo`` and below ``hi``:
    (whether the empty string is in, the regex of the non-empty ones)."""
    if lo == ("", False):
        lo = None
    if hi is not None and hi[0] == "":  # 0.E <= 0: E is all zeros
        return (False, None) if hi[1] or lo is not None else (True, "0+")
    if lo is None and hi is None:
        return True, "[0-9]+"
    if lo == ("", True) and hi is None:
        return False, "[0-9]*[1-9][0-9]*"
    groups: dict[tuple[bool, str | None], list[int]] = {}
    for d in range(10):
        nlo: _Bound = None
        if lo is not None:
            l0 = int(lo[0][0]) if lo[0] else 0
            if d < l0:
                continue
            nlo = (lo[0][1:], lo[1]) if d == l0 else None
        nhi: _Bound = None
        if hi is not None:
            h0 = int(hi[0][0])
            if d > h0:
                continue
            nhi = (hi[0][1:], hi[1]) if d == h0 else None
        tail = _between(nlo, nhi)
        if tail[0] or tail[1] is not None:
            groups.setdefault(tail, []).append(d)
    parts = []
    for (eps, ne), ds in groups.items():
        contiguous = ds == list(range(ds[0], ds[-1] + 1))
        head = _dclass(ds[0], ds[-1]) if contiguous else "[" + "".join(map(str, ds)) + "]"
        parts.append(head + (_opt(ne) if eps else ne or ""))
    return lo is None, _alt(*parts)


def _frac(d: Decimal) -> tuple[int, str]:
    """Integer part and fraction digits (no trailing zeros) of a non-negative decimal."""
    whole, _, frac = format(d, "f").partition(".")
    return int(whole), frac.rstrip("0")


def _decimal_nonneg(a: Decimal, a_strict: bool, b: Decimal | None, b_strict: bool) -> str | None:
    """Non-negative decimals ``I(.E)?`` (no exponent) with ``a <(=) value <(=) b``."""
    if b is not None and (b < a or (b == a and (a_strict or b_strict))):
        return None
    ai, af = _frac(a)
    groups: list[tuple[str | None, tuple[bool, str | None]]] = []
    if b is not None:
        bi, bf = _frac(b)
    if b is not None and ai == bi:
        groups.append((str(ai), _between((af, a_strict), (bf, b_strict))))
    else:
        groups.append((str(ai), _between((af, a_strict), None)))
        groups.append((_uint(ai + 1, None if b is None else bi - 1), (True, "[0-9]+")))
        if b is not None:
            groups.append((str(bi), _between(None, (bf, b_strict))))
    parts = []
    for whole, (eps, ne) in groups:
        if whole is None:
            continue
        frac = None if ne is None else f"\\.{ne}"
        parts.append(_cat(whole, _opt(frac) if eps else frac))
    return _alt(*parts)


def _number_range(lo: Decimal | None, lo_s: bool, hi: Decimal | None, hi_s: bool) -> str | None:
    """Plain decimal numbers within the bounds; no ``-0``."""
    parts = []
    if hi is None or hi > 0 or (hi == 0 and not hi_s):
        start = (lo, lo_s) if lo is not None and lo >= 0 else (Decimal(0), False)
        parts.append(_decimal_nonneg(start[0], start[1], hi, hi_s))
    if lo is None or lo < 0:  # magnitudes of negative numbers
        m_lo = (-hi, hi_s) if hi is not None and hi < 0 else (Decimal(0), True)
        parts.append(_cat("-", _decimal_nonneg(m_lo[0], m_lo[1],
                                               None if lo is None else -lo, lo_s)))
    return _alt(*parts)


def _dec(x: int | float) -> Decimal:
    return Decimal(x) if isinstance(x, int) else Decimal(repr(float(x)))


_NUMBER = "-?(?:0|[1-9][0-9]*)(?:\\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_STRING = f'"{_ANY_UNIT}*"'


# ----------------------------------------------------------------------------- schemas
_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
#: Keywords without effect on validity (annotations, identifiers, containers).
_IGNORED = {"$schema", "$id", "$anchor", "$dynamicAnchor", "$vocabulary", "$comment", "$defs",
            "definitions", "title", "description", "default", "examples", "deprecated",
            "readOnly", "writeOnly", "contentMediaType", "contentEncoding", "contentSchema"}
_NOT_REGULAR = {
    "not": "a complement is translated only for 'not' of true, false or a bare 'type' "
           "that does not split integer from number",
    "if": "conditional schemas are not translated",
    "$dynamicRef": "dynamic references are not translated",
    "$recursiveRef": "dynamic references are not translated",
}
_BY_TYPE = {
    "integer": {"multipleOf": "divisibility is not translated (except by 1/n)"},
    "number": {"multipleOf": "divisibility of decimals is not translated"},
    "array": {"unevaluatedItems": "unevaluatedItems is not translated",
              "uniqueItems": "distinct items are not a regular language (allowed only with "
                             "maxItems <= 1)"},
    "object": {"patternProperties": "patternProperties is not translated",
                "dependentSchemas": "dependentSchemas is not translated",
                "unevaluatedProperties": "unevaluatedProperties is not translated"},
}


def _types(schema: dict[str, Any]) -> list[str]:
    t = schema.get("type", list(_TYPES))
    return [t] if isinstance(t, str) else list(t)


def _with_integer(types: list[str]) -> set[str]:
    """Types, with integer added where number is (integers are numbers)."""
    return set(types) | ({"integer"} if "number" in types else set())


def _canonical_number(x: int | float) -> str:
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return json.dumps(x) if isinstance(x, int) else format(Decimal(repr(x)), "f")


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality (1 == 1.0, True != 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_json_equal, a, b))
    return type(a) is type(b) and a == b or (
        isinstance(a, (int, float)) and isinstance(b, (int, float)) and a == b)


def _const_as_enum(s: dict[str, Any]) -> dict[str, Any]:
    """``const: c`` as ``enum: [c]`` (intersected with an ``enum`` beside it)."""
    if "const" not in s:
        return s
    out = {k: v for k, v in s.items() if k != "const"}
    out["enum"] = [x for x in s.get("enum", [s["const"]]) if _json_equal(x, s["const"])]
    return out


def _count(s: dict[str, Any], key: str, default: int | None = None) -> int | None:
    """A count keyword as an int (the meta-schema allows 2.0)."""
    return int(s[key]) if key in s else default


def _has_nested_id(root: Any) -> bool:
    """Whether some subschema below the root declares ``$id`` (a new base for ``$ref``)."""
    todo = [v for v in root.values()] if isinstance(root, dict) else []
    while todo:
        x = todo.pop()
        if isinstance(x, dict):
            if isinstance(x.get("$id"), str):
                return True
            todo += x.values()
        elif isinstance(x, list):
            todo += x
    return False


def _positions(s: dict[str, Any]) -> tuple[list[Any], Any]:
    """An array schema's per-position subschemas and the schema of the later items."""
    return list(s.get("prefixItems", [])), s.get("items", True)


class _Translator:
    def __init__(self, root: Any, ws: str, depth: int, any_depth: int, validator: Any) -> None:
        self.root, self.depth, self.any_depth = root, depth, any_depth
        self.ws = f"(?:{ws})" if ws else ""
        self.validator = validator
        self.active: Counter[str] = Counter()  # $refs being expanded on the current path
        self.free: dict[int, str] = {}  # any(depth), cached
        self.nested_id = _has_nested_id(root)

    # ---------------------------------------------------------------- references, allOf
    def resolve(self, ref: str, path: str) -> Any:
        if ref != "#" and not ref.startswith("#/"):
            raise UnsupportedSchema("$ref", path, f"only local JSON-pointer references ('#', "
                                    f"'#/...') are supported, got {ref!r}")
        if self.nested_id:
            raise UnsupportedSchema("$ref", path, "a subschema with its own '$id' changes what "
                                    "'#/...' means; such schemas are not supported")
        from urllib.parse import unquote

        node = self.root
        for part in unquote(ref[1:]).split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise ValueError(f"$ref {ref!r} at {path or '/'} points nowhere") from None
        return node

    def expand(self, schema: Any, path: str, pushed: list[str]) -> Any:
        """``schema`` with its top-level ``$ref`` and ``allOf`` merged in (False when a
        recursive reference is past its depth)."""
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema:
            ref = schema["$ref"]
            if self.active[ref] >= self.depth:
                return False
            self.active[ref] += 1
            pushed.append(ref)
            target = self.expand(self.resolve(ref, path), path, pushed)
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.merge(self.expand(rest, path, pushed), target, path)
        if "allOf" in schema:
            out: Any = {k: v for k, v in schema.items() if k != "allOf"}
            for sub in schema["allOf"]:
                out = self.merge(out, self.expand(sub, path, pushed), path)
            return self.expand(out, path, pushed)
        return schema

    def merge(self, a: Any, b: Any, path: str) -> Any:
        """A schema equivalent to ``allOf: [a, b]`` for two expanded schemas."""
        if a is False or b is False:
            return False
        if a is True or a == {}:
            return b
        if b is True or b == {}:
            return a
        a, b = _const_as_enum(a), _const_as_enum(b)
        out = dict(a)
        tuples = "prefixItems" in a or "prefixItems" in b  # merged below
        for k, v in b.items():
            if k not in out or k in _IGNORED or (tuples and k in ("prefixItems", "items")):
                out.setdefault(k, v)
                continue
            u = out[k]
            if k == "type":
                both = _with_integer(_types(a)) & _with_integer(_types(b))
                if "number" in both:
                    both.discard("integer")
                if not both:
                    return False
                out[k] = [t for t in _TYPES if t in both]
            elif _json_equal(u, v):
                continue
            elif k in ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"):
                out[k] = max(u, v)
            elif k in ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"):
                out[k] = min(u, v)
            elif k == "required":
                out[k] = list(dict.fromkeys([*u, *v]))
            elif k == "uniqueItems":
                out[k] = u or v
            elif k == "enum":
                out[k] = [x for x in u if any(_json_equal(x, y) for y in v)]
            elif k == "properties":
                out[k] = {**u, **{p: {"allOf": [u[p], s]} if p in u else s for p, s in v.items()}}
            elif k in ("items", "additionalProperties", "propertyNames"):
                out[k] = {"allOf": [u, v]}
            elif k == "anyOf":
                out[k] = [{"allOf": [x, y]} for x in u for y in v]
            else:
                raise UnsupportedSchema("allOf", path, f"cannot combine two different {k!r}")
        if "prefixItems" in a or "prefixItems" in b:  # position i: a's and b's constraint on i
            (pa, ia), (pb, ib) = _positions(a), _positions(b)
            n = max(len(pa), len(pb))
            pa, pb = pa + [ia] * (n - len(pa)), pb + [ib] * (n - len(pb))
            out["prefixItems"] = [x if _json_equal(x, y) else {"allOf": [x, y]}
                                  for x, y in zip(pa, pb)]
            out["items"] = ia if _json_equal(ia, ib) else {"allOf": [ia, ib]}
        # Closed objects: keys outside a side with additionalProperties false cannot occur.
        for side in (a, b):
            if side.get("additionalProperties", True) is False and "properties" in out:
                keep = side.get("properties", {})
                out["properties"] = {p: s for p, s in out["properties"].items() if p in keep}
        return out

    # -------------------------------------------------------------------------- values
    def value(self, schema: Any, path: str) -> str | None:
        pushed: list[str] = []
        try:
            s = self.expand(schema, path, pushed)
            if s is True or (isinstance(s, dict) and set(s) <= _IGNORED):
                return self.any(self.any_depth)
            if s is False:
                return None
            return self.expanded(s, path)
        finally:
            self.active.subtract(pushed)

    def expanded(self, s: dict[str, Any], path: str) -> str | None:
        if "const" in s or "enum" in s:
            return self.finite(s)
        if "not" in s:
            s = self.negate(s, path)
            if s is False:
                return None
        for k, why in _NOT_REGULAR.items():
            if k in s and (k != "if" or "then" in s or "else" in s):
                raise UnsupportedSchema(k, path, why)
        if "anyOf" in s or "oneOf" in s:
            k = "anyOf" if "anyOf" in s else "oneOf"
            rest = {x: y for x, y in s.items() if x != k}
            branches, refs = [], []
            for i, b in enumerate(s[k]):
                refs.append([])
                branches.append(self.merge(rest, self.expand(b, f"{path}/{k}/{i}", refs[-1]),
                                           path))
                self.active.subtract(refs[-1])
            if k == "oneOf":
                self.check_disjoint(branches, path)
            out = []
            for i, b in enumerate(branches):  # each branch under its own expanded $refs
                self.active.update(refs[i])
                out.append(self.value(b, f"{path}/{k}/{i}"))
                self.active.subtract(refs[i])
            return _alt(*out)
        parts = []
        for t in _types(s):
            for kw, why in _BY_TYPE.get(t, {}).items():
                if kw in s and not self.trivial(kw, s, t):
                    raise UnsupportedSchema(kw, path, why)
            parts.append(getattr(self, t)(s, path))
        return _alt(*parts)

    def negate(self, s: dict[str, Any], path: str) -> Any:
        """``s`` without its ``not``, where the complement is a set of types (or all/none)."""
        pushed: list[str] = []
        inner = self.expand(s["not"], f"{path}/not", pushed)
        self.active.subtract(pushed)
        rest = {k: v for k, v in s.items() if k != "not"}
        if inner is True or (isinstance(inner, dict) and set(inner) <= _IGNORED):
            return False
        if inner is False:
            return rest
        if set(inner) - _IGNORED == {"type"}:
            banned = _with_integer(_types(inner))
            left = [t for t in _types(rest) if t not in banned]
            if not ("number" in left and "integer" in banned):  # else: non-integral numbers
                return self.merge(rest, {"type": left}, path) if left else False
        raise UnsupportedSchema("not", path, _NOT_REGULAR["not"])

    def trivial(self, kw: str, s: dict[str, Any], t: str) -> bool:
        """Keywords that have no effect on this type here."""
        if kw == "uniqueItems":
            return s[kw] is False or s.get("maxItems", 2) <= 1
        if kw == "multipleOf":  # every integer is a multiple of 1/n
            return t == "integer" and Decimal(1) % _dec(s[kw]) == 0
        return False

    def finite(self, s: dict[str, Any]) -> str | None:
        """``const`` / ``enum``: the listed values that are valid under the whole schema."""
        values = [s["const"]] if "const" in s else s["enum"]
        check = self.validator.evolve(schema=s)
        return _alt(*(self.literal(v) for v in values if check.is_valid(v)))

    def literal(self, v: Any) -> str:
        """``v`` as a regex: canonical serialization, with whitespace allowed between tokens."""
        w = self.ws
        if isinstance(v, dict):
            items = [_lit(json.dumps(k, ensure_ascii=False)) + f"{w}:{w}" + self.literal(x)
                     for k, x in v.items()]
            return f"\\{{{w}" + f"{w},{w}".join(items) + f"{w}\\}}"
        if isinstance(v, list):
            return f"\\[{w}" + f"{w},{w}".join(map(self.literal, v)) + f"{w}\\]"
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            forms = {_canonical_number(v), json.dumps(v)}
            return _alt(*(_lit(f) for f in sorted(forms))) or ""
        return _lit(json.dumps(v, ensure_ascii=False))

    def any(self, depth: int) -> str:
        """Any JSON value nested at most ``depth`` levels deep."""
        if depth in self.free:
            return self.free[depth]
        scalars = f"(?:null|true|false|{_NUMBER}|{_STRING})"
        if depth <= 0:
            self.free[depth] = scalars
            return scalars
        v, w = self.any(depth - 1), self.ws
        arr = f"\\[{w}(?:{v}(?:{w},{w}{v})*)?{w}\\]"
        obj = f"\\{{{w}(?:{_STRING}{w}:{w}{v}(?:{w},{w}{_STRING}{w}:{w}{v})*)?{w}\\}}"
        self.free[depth] = f"(?:{scalars}|{arr}|{obj})"
        return self.free[depth]

    # --------------------------------------------------------------------- by type
    def null(self, s: dict[str, Any], path: str) -> str:
        return "null"

    def boolean(self, s: dict[str, Any], path: str) -> str:
        return "(?:true|false)"

    def bounds(self, s: dict[str, Any]) -> tuple[tuple[Decimal | None, bool], ...]:
        lo: tuple[Decimal | None, bool] = (None, False)
        hi: tuple[Decimal | None, bool] = (None, False)
        for k, strict in (("minimum", False), ("exclusiveMinimum", True)):
            if k in s and (lo[0] is None or _dec(s[k]) > lo[0] or
                           (_dec(s[k]) == lo[0] and strict)):
                lo = (_dec(s[k]), strict)
        for k, strict in (("maximum", False), ("exclusiveMaximum", True)):
            if k in s and (hi[0] is None or _dec(s[k]) < hi[0] or
                           (_dec(s[k]) == hi[0] and strict)):
                hi = (_dec(s[k]), strict)
        return lo, hi

    def integer(self, s: dict[str, Any], path: str) -> str | None:
        (lo, lo_s), (hi, hi_s) = self.bounds(s)
        a = None if lo is None else math.floor(lo) + 1 if lo_s else math.ceil(lo)
        b = None if hi is None else math.ceil(hi) - 1 if hi_s else math.floor(hi)
        if a is not None and b is not None and a > b:
            return None
        return _int_range(a, b)

    def number(self, s: dict[str, Any], path: str) -> str | None:
        (lo, lo_s), (hi, hi_s) = self.bounds(s)
        if lo is None and hi is None:
            return _NUMBER
        return _number_range(lo, lo_s, hi, hi_s)

    def string(self, s: dict[str, Any], path: str) -> str | None:
        lo, hi = _count(s, "minLength", 0), _count(s, "maxLength")
        sized = lo > 0 or hi is not None
        if "format" in s and "pattern" in s:
            raise UnsupportedSchema("pattern", path, "pattern together with format "
                                    "(an intersection) is not translated")
        if "format" in s:
            if s["format"] not in FORMATS:
                raise UnsupportedSchema("format", path, f"format {s['format']!r} is not "
                                        f"supported (supported: {', '.join(FORMATS)})")
            body, (flo, fhi) = FORMATS[s["format"]]
            if hi is not None and (hi < flo or (fhi is not None and lo > fhi)):
                return None
            if lo > flo or (hi is not None and (fhi is None or hi < fhi)):
                raise UnsupportedSchema("format", path, "minLength / maxLength that cut into "
                                        "the format's lengths are not translated")
        elif "pattern" in s:
            if sized:
                raise UnsupportedSchema("pattern", path, "pattern together with minLength / "
                                        "maxLength (an intersection) is not translated")
            body = _pattern_regex(s["pattern"], path)
        else:
            body = _rep(_ANY_UNIT, lo, hi)
        return _cat('"', body, '"')

    def array(self, s: dict[str, Any], path: str) -> str | None:
        prefix = [self.value(p, f"{path}/prefixItems/{i}")
                  for i, p in enumerate(s.get("prefixItems", []))]
        item = self.value(s["items"], f"{path}/items") if "items" in s else self.any(
            self.any_depth)
        lo, hi = _count(s, "minItems", 0), _count(s, "maxItems")
        sep, w = f"{self.ws},{self.ws}", self.ws
        if hi is not None and hi < lo:
            return None
        if "contains" in s and (_count(s, "minContains", 1) or "maxContains" in s):
            return self.containing(s, item, lo, hi, path)

        def tail(i: int) -> str | None:  # the elements from position i (1-based) on
            pre = "" if i == 1 else sep
            if hi is not None and i > hi:
                return ""
            if i <= len(prefix):
                seg = _cat(pre, prefix[i - 1], tail(i + 1))
                return seg if i <= lo else (_opt(seg) if seg is not None else "")
            need, most = max(0, lo - i + 1), None if hi is None else hi - i + 1
            if i == 1:
                body = _cat(item, _rep(_cat(sep, item), max(need - 1, 0),
                                       None if most is None else most - 1))
                return body if need else (_opt(body) if body is not None else "")
            return _rep(_cat(sep, item), need, most)

        return _cat(f"\\[{w}", tail(1), f"{w}\\]")

    def containing(self, s: dict[str, Any], item: str | None, lo: int, hi: int | None,
                   path: str) -> str | None:
        """Arrays with at least ``minContains`` items valid under ``contains``: any items
        around that many items valid under both ``items`` and ``contains``."""
        m = _count(s, "minContains", 1)
        for k, bad in (("maxContains", "maxContains" in s), ("prefixItems", "prefixItems" in s),
                       ("maxItems", hi is not None), ("minItems", lo > m)):
            if bad:
                raise UnsupportedSchema("contains", path, f"contains together with {k} is not "
                                        "translated")
        both = self.value({"allOf": [s.get("items", True), s["contains"]]}, f"{path}/contains")
        sep, w = f"{self.ws},{self.ws}", self.ws
        free_after = _rep(_cat(sep, item), 0, None)
        body = _cat(_rep(_cat(item, sep), 0, None), both,
                    *[_cat(free_after, sep, both)] * (m - 1), free_after)
        return _cat(f"\\[{w}", body, f"{w}\\]")

    def object(self, s: dict[str, Any], path: str) -> str | None:
        w, sep = self.ws, f"{self.ws},{self.ws}"
        required = list(s.get("required", []))
        extra = s.get("additionalProperties", True)
        names = s.get("propertyNames", True)
        lo, hi = _count(s, "minProperties", 0), _count(s, "maxProperties")
        deps = s.get("dependentRequired", {})
        for dep, needs in deps.items():
            if set(needs) <= set(required):
                continue
            if "properties" not in s:
                raise UnsupportedSchema("dependentRequired", path, "dependencies between keys "
                                        "of objects without 'properties' are not translated")
            if dep not in s["properties"] and dep not in required:
                continue
            # Two disjoint cases: the key is absent, or it is present with its dependants.
            rest = {**s, "dependentRequired": {k: v for k, v in deps.items() if k != dep}}
            present = {**rest, "required": list(dict.fromkeys([*required, dep, *needs]))}
            if dep in required:
                return self.object(present, path)
            absent = {**rest, "properties": {k: v for k, v in s["properties"].items()
                                             if k != dep}}
            return _alt(self.object(absent, path), self.object(present, path))
        if "properties" not in s:  # a map: the required keys, then any keys
            if lo > len(required) or hi is not None:
                raise UnsupportedSchema("minProperties" if lo > len(required) else
                                        "maxProperties", path, "property counts of objects "
                                        "without 'properties' are not translated")
            val = self.value(extra, f"{path}/additionalProperties")
            key = self.value(self.merge({"type": "string"}, names, path),
                             f"{path}/propertyNames")
            if not all(self.validator.evolve(schema=names).is_valid(k) for k in required):
                return None
            more = _cat(key, f"{w}:{w}", val)
            if required:  # duplicate keys parse to one valid value: no harm
                head = [_cat(_lit(json.dumps(k, ensure_ascii=False)), f"{w}:{w}", val)
                        for k in required]
                body = _cat(*head[:1], *(_cat(sep, h) for h in head[1:]),
                            _rep(_cat(sep, more), 0, None))
            else:
                body = _opt(_cat(more, _rep(_cat(sep, more), 0, None)))
            return _cat(f"\\{{{w}", body, f"{w}\\}}")
        if extra is not False and "additionalProperties" in s:
            raise UnsupportedSchema("additionalProperties", path, "additional properties "
                                    "beside 'properties' are not translated (only false)")
        props = dict(s["properties"])
        for k in required:
            props.setdefault(k, extra)  # required but undeclared: additionalProperties
        fields = []  # (serialized key:value regex, required)
        for k, sub in props.items():
            ok = self.validator.evolve(schema=names).is_valid(k)
            v = self.value(sub, f"{path}/properties/{k}") if ok else None
            if v is None:
                if k in required:
                    return None
                continue
            fields.append((f"{_lit(json.dumps(k, ensure_ascii=False))}{w}:{w}{v}", k in required))
        n_req = sum(r for _, r in fields)
        if lo > len(fields) or (hi is not None and hi < n_req):
            return None
        if lo > n_req or (hi is not None and hi < len(fields)):
            raise UnsupportedSchema("minProperties" if lo > n_req else "maxProperties", path,
                                    "counts of optional properties are not translated")
        # After the first emitted field every later one is ",field" (optional or not); the
        # first emitted field is any optional one before the first required, or that one.
        after = [_cat(sep, f) if r else _opt(_cat(sep, f)) for f, r in fields]
        starts = []
        for i, (f, r) in enumerate(fields):
            starts.append(f + "".join(after[i + 1:]))  # type: ignore[arg-type]
            if r:
                break
        else:
            starts.append("")
        return _cat(f"\\{{{w}", _alt(*starts), f"{w}\\}}")

    # ------------------------------------------------------------------------- oneOf
    def check_disjoint(self, branches: list[Any], path: str) -> None:
        for i in range(len(branches)):
            for j in range(i + 1, len(branches)):
                if not self.disjoint(branches[i], branches[j]):
                    raise UnsupportedSchema("oneOf", path, f"branches {i} and {j} may both "
                                            "match a value (only provably disjoint branches "
                                            "are translated)")

    def disjoint(self, a: Any, b: Any) -> bool:
        """Whether no JSON value is valid under both (conservative: False when unsure)."""
        if a is False or b is False:
            return True
        if a is True or b is True:
            return False
        for x, y in ((a, b), (b, a)):
            if "const" in x or "enum" in x:
                vals = [x["const"]] if "const" in x else x["enum"]
                both = self.validator.evolve(schema={"allOf": [x, y]})
                return not any(both.is_valid(v) for v in vals)
        kinds = {"number" if t == "integer" else t for t in _types(a)} & {
            "number" if t == "integer" else t for t in _types(b)}
        return all(self.kind_disjoint(k, a, b) for k in kinds)

    def kind_disjoint(self, kind: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
        if kind == "number":
            (alo, als), (ahi, ahs) = self.bounds(a)
            (blo, bls), (bhi, bhs) = self.bounds(b)
            return any(hi is not None and lo is not None and (hi < lo or (hi == lo and (hs or ls)))
                       for (hi, hs), (lo, ls) in (((ahi, ahs), (blo, bls)),
                                                  ((bhi, bhs), (alo, als))))
        if kind in ("string", "array"):
            mn, mx = ("minLength", "maxLength") if kind == "string" else ("minItems", "maxItems")
            return a.get(mx, math.inf) < b.get(mn, 0) or b.get(mx, math.inf) < a.get(mn, 0)
        if kind == "object":
            pa, pb = a.get("properties", {}), b.get("properties", {})
            for k in set(a.get("required", [])) & set(b.get("required", [])):
                if k in pa and k in pb:
                    pushed: list[str] = []
                    x, y = self.expand(pa[k], "", pushed), self.expand(pb[k], "", pushed)
                    self.active.subtract(pushed)
                    if self.disjoint(x, y):
                        return True
            return False
        return False


def to_regex(schema: str | dict[str, Any] | bool, *, whitespace_pattern: str | None = None,
             max_recursion_depth: int = 3, any_depth: int = 2) -> str:
    """The regular expression of JSON Schema ``schema`` (a dict, a bool or JSON text): see the
    module docstring for the language and its restrictions.

    ``whitespace_pattern``: a regex allowed between JSON tokens (default: none, compact JSON);
    ``max_recursion_depth``: how often one ``$ref`` may be expanded inside itself;
    ``any_depth``: nesting of values left free by the schema.

    Raises :class:`UnsupportedSchema` (a ``ValueError``) for a keyword that cannot be
    translated exactly, ``ValueError`` for invalid JSON, an invalid schema, or a schema no
    value satisfies.
    """
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as err:
            raise ValueError(f"the JSON schema is not valid JSON: {err}") from None
    integer("max_recursion_depth", max_recursion_depth, 0)
    integer("any_depth", any_depth, 0)
    if not isinstance(schema, (dict, bool)):
        raise TypeError(f"schema must be a dict, a bool or a JSON string, got "
                        f"{type(schema).__name__}")
    import jsonschema

    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    # The meta-schema without format checks: ECMA patterns are checked by the translator
    # (Python's re would refuse valid ones such as \p{Letter}).
    err = jsonschema.exceptions.best_match(cls(cls.META_SCHEMA).iter_errors(schema))
    if err is not None:
        where = "/" + "/".join(map(str, err.absolute_path))
        raise ValueError(f"not a valid JSON schema (at {where}): {err.message}")
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    regex = _Translator(schema, whitespace_pattern or "", max_recursion_depth, any_depth,
                        validator).value(schema, "")
    if regex is None:
        raise ValueError("the JSON schema accepts no value (within the recursion bound)")
    return regex
