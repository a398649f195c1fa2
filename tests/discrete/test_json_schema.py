"""reverie's JSON Schema translator (``reverie.discrete.constraints.schema``).

The language claim (see the module docstring): for every supported schema S with regex R,
``canonical(v)`` matches R for every valid v (up to the documented restrictions), and every
string R matches is JSON whose value (numbers as exact decimals) is valid under S.

* The official JSON-Schema-Test-Suite (draft 2020-12, a vendored subset in tests/data): no
  invalid instance is accepted; the valid ones rejected are exactly the documented
  restrictions; a loosened translator (and outlines-core's) is caught.
* Random schemas (hypothesis): strings sampled from the byte DFA validate with ``jsonschema``;
  random values are valid iff their canonical serialization matches.
"""

from __future__ import annotations

import decimal
import itertools
import json
import random
import re
from collections import deque
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reverie.discrete.constraints import JsonSchema, schema_to_regex
from reverie.discrete.constraints import schema as schema_mod
from reverie.discrete.constraints.automaton import byte_dfa
from reverie.discrete.constraints.schema import UnsupportedSchema, to_regex
from reverie.discrete.constraints.schema_suite import canonical, key_order, suite_coverage

SUITE = Path(__file__).parents[1] / "data" / "json_schema_suite"


# ------------------------------------------------------------------------------ helpers
def run_suite(translate=to_regex, files: list[str] | None = None) -> dict[str, dict]:
    return suite_coverage(SUITE, translate, files)


def validator(schema: Any) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


#: Valid suite instances outside the language, each a documented restriction.
RESTRICTED = {
    ("additionalProperties", "additionalProperties are allowed by default",
     "additional properties are allowed"): "closed objects",
    ("anyOf", "anyOf complex types", "both anyOf valid (complex)"): "closed objects",
    ("properties", "object properties validation", "doesn't invalidate other properties"):
        "closed objects",
    ("not", "forbidden property", "property absent"): "closed objects",
    ("uniqueItems", "uniqueItems=false validation", "unique array of nested objects is valid"):
        "free values nested at most any_depth=2",
    ("uniqueItems", "uniqueItems=false validation",
     "non-unique array of nested objects is valid"): "free values nested at most any_depth=2",
    **{("optional/format/date-time", "validation of date-time strings", d): "no leap seconds"
       for d in ("a valid date-time with a leap second, UTC",
                 "a valid date-time with a leap second, with minus offset")},
    **{("optional/format/time", "validation of time strings", d): "no leap seconds"
       for d in ("a valid time string with leap second, Zulu",
                 "valid leap second, zero time-offset", "valid leap second, positive time-offset",
                 "valid leap second, large positive time-offset",
                 "valid leap second, negative time-offset",
                 "valid leap second, large negative time-offset")},
}


@pytest.fixture(scope="module")
def suite_table() -> dict[str, dict]:
    return run_suite()


# --------------------------------------------------------------------------- the suite
def test_suite_no_false_accepts_and_only_documented_rejects(suite_table):
    false_accepts = [(n, *x) for n, row in suite_table.items() for x in row["fa"]]
    assert false_accepts == []
    false_rejects = {(n, *x) for n, row in suite_table.items() for x in row["fr"]}
    assert false_rejects == set(RESTRICTED)
    total = {k: sum(r[k] for r in suite_table.values())
             for k in ("cases", "supported", "refused", "instances", "passed")}
    # The coverage table in docs/constraints.md: keep them in step.
    assert total == dict(cases=248, supported=167, refused=81, instances=911, passed=897)


def test_suite_refuses_what_it_cannot_express(suite_table):
    for name in ("patternProperties", "minProperties", "maxProperties"):
        row = suite_table[name]
        assert row["refused"] == row["cases"], name
    for name in ("type", "enum", "const", "required", "minimum", "maximum", "prefixItems",
                 "optional/format/date", "optional/format/uuid", "optional/format/ipv4",
                 "optional/format/ipv6", "optional/format/email"):
        row = suite_table[name]
        assert row["refused"] == 0 and row["passed"] == row["instances"], name


def test_suite_regexes_mean_the_same_to_outlines_core():
    """Python's re (used above) and outlines-core's byte DFA (used to decode) agree."""
    n = 0
    for name in ("minimum", "exclusiveMaximum", "anyOf", "properties", "prefixItems",
                 "optional/format/date-time", "optional/format/email"):
        for case in json.loads((SUITE / f"{name}.json").read_text()):
            try:
                regex = to_regex(case["schema"])
            except ValueError:
                continue
            trans, start, finals = byte_dfa(regex)
            order = key_order(case["schema"])
            for t in case["tests"]:
                text = canonical(t["data"], order)
                q = start
                for b in text.encode():
                    q = trans.get(q, {}).get(b)
                    if q is None:
                        break
                assert (q in finals) == bool(re.fullmatch(regex, text)), (name, text)
                n += 1
    assert n > 100


def _loosened(monkeypatch, what: str) -> None:
    """Deliberately wrong translators: each drops one constraint."""
    if what == "maximum":
        orig = schema_mod._Translator.bounds
        monkeypatch.setattr(schema_mod._Translator, "bounds", lambda self, s: orig(
            self, {k: v for k, v in s.items() if k != "maximum"}))
    elif what == "oneOf-as-anyOf":
        monkeypatch.setattr(schema_mod._Translator, "check_disjoint", lambda *a: None)
    elif what == "pattern":
        monkeypatch.setattr(schema_mod, "_pattern_regex", lambda p, path: schema_mod._rep(
            schema_mod._ANY_UNIT, 0, None))
    elif what == "required":
        orig_obj = schema_mod._Translator.object
        monkeypatch.setattr(schema_mod._Translator, "object", lambda self, s, path: orig_obj(
            self, {k: v for k, v in s.items() if k != "required"}, path))


@pytest.mark.parametrize("what,file", [("maximum", "maximum"), ("oneOf-as-anyOf", "oneOf"),
                                       ("pattern", "pattern"), ("required", "required")])
def test_suite_catches_a_loosened_translator(monkeypatch, what, file):
    _loosened(monkeypatch, what)
    assert run_suite(files=[file])[file]["fa"]


def test_suite_catches_outlines_core():
    """outlines-core's translator (used before) drops keywords: the same check catches it."""
    from outlines_core.json_schema import build_regex_from_schema

    def outlines(schema):
        try:
            return build_regex_from_schema(json.dumps(schema))
        except (ValueError, TypeError) as err:
            raise ValueError(str(err)) from None

    table = run_suite(outlines, files=["minimum", "maximum", "uniqueItems", "allOf"])
    assert sum(len(r["fa"]) for r in table.values()) > 0


# --------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("schema,keyword,where", [
    ({"type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}},
     "uniqueItems", "/properties/a"),
    ({"type": "number", "multipleOf": 0.5}, "multipleOf", "/"),
    ({"anyOf": [{"type": "string"}, {"not": {"type": "integer"}}]}, "not", "/anyOf/1"),
    ({"type": "object", "not": {"required": ["a"]}}, "not", "/"),
    ({"if": {"type": "string"}, "then": {"minLength": 2}}, "if", "/"),
    ({"type": "object", "dependentSchemas": {"a": {"required": ["b"]}}}, "dependentSchemas", "/"),
    ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties", "/"),
    ({"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "string"}},
     "additionalProperties", "/"),
    ({"type": "object", "properties": {"a": {}, "b": {}}, "minProperties": 1},
     "minProperties", "/"),
    ({"type": "array", "contains": {"minimum": 3}, "maxContains": 2}, "contains", "/"),
    ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf", "/"),
    ({"type": "string", "pattern": "a", "maxLength": 3}, "pattern", "/"),
    ({"type": "string", "pattern": "(?=a)b"}, "pattern", "/"),
    ({"type": "string", "pattern": "\\bword"}, "pattern", "/"),
    ({"type": "string", "format": "hostname"}, "format", "/"),
    ({"$ref": "#anchor", "$defs": {"a": {"$anchor": "anchor"}}}, "$ref", "/"),
    ({"$ref": "other.json"}, "$ref", "/"),
])
def test_unsupported_keywords_are_named_with_their_place(schema, keyword, where):
    with pytest.raises(UnsupportedSchema, match=re.escape(f"{keyword!r} at {where}")):
        to_regex(schema)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        to_regex({"type": "no-such-type"})
    with pytest.raises(ValueError, match="not a valid JSON schema .at /minLength"):
        to_regex({"type": "string", "minLength": -1})
    with pytest.raises(ValueError, match="not valid JSON"):
        to_regex("{not json")
    with pytest.raises(TypeError, match="dict, a bool or a JSON string"):
        to_regex(3)
    with pytest.raises(ValueError, match="accepts no value"):
        to_regex({"type": "integer", "minimum": 3, "maximum": 2})
    with pytest.raises(ValueError, match="points nowhere"):
        to_regex({"$ref": "#/$defs/missing"})
    with pytest.raises(ValueError, match="JSON schema keyword 'uniqueItems'"):
        JsonSchema({"type": "array", "uniqueItems": True})


def full(regex: str, value: Any, order: dict[str, int] | None = None) -> bool:
    return re.fullmatch(regex, canonical(value, order)) is not None


def test_numeric_ranges_are_exact():
    r = to_regex({"type": "integer", "minimum": -17, "exclusiveMaximum": 230})
    assert [v for v in range(-300, 300) if full(r, v)] == list(range(-17, 230))
    r = to_regex({"type": "integer", "exclusiveMinimum": 9.5})
    assert full(r, 10) and not full(r, 9) and full(r, 10**30)
    r = to_regex({"type": "number", "exclusiveMinimum": -1.25, "maximum": 2.5})
    grid = [Decimal(i) / 100 for i in range(-400, 400)]
    assert [x for x in grid if full(r, x)] == [x for x in grid if Decimal("-1.25") < x <= 2.5]
    for text, ok in (("2.50000", True), ("2.500001", False), ("-1.2500", False),
                     ("-1.24999", True), ("0", True), ("-0", False), ("1e0", False)):
        assert bool(re.fullmatch(r, text)) == ok, text


def test_objects_optional_properties_any_subset_in_order():
    s = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "null"},
                                          "c": {"type": "boolean"}}, "required": ["b"]}
    r = to_regex(s)
    assert full(r, {"b": None}) and full(r, {"a": 1, "b": None, "c": True})
    assert full(r, {"b": None, "c": False}) and not full(r, {"a": 1})
    assert not re.fullmatch(r, '{"b":null,"a":1}')  # declared order only
    assert not full(r, {"b": None, "z": 1})  # closed: undeclared keys are not generated


def test_whitespace_pattern_between_tokens():
    s = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}},
         "required": ["a"]}
    assert not re.fullmatch(to_regex(s), '{"a": [1, 2]}')
    r = to_regex(s, whitespace_pattern="[ ]?")
    assert re.fullmatch(r, '{ "a" : [1, 2] }') and re.fullmatch(r, '{"a":[1,2]}')
    assert schema_to_regex(s, whitespace_pattern="[ ]?") == r


def test_recursive_ref_is_unrolled_to_the_depth():
    s = {"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
         "$ref": "#/$defs/n"}
    nested = lambda d: {} if d == 0 else {"next": nested(d - 1)}  # noqa: E731
    r2 = to_regex(s, max_recursion_depth=2)
    assert full(r2, nested(1)) and not full(r2, nested(2))
    assert full(to_regex(s, max_recursion_depth=4), nested(3))


# ----------------------------------------------------------------------- random schemas
def dfa_sampler(regex: str, rng: random.Random, n: int) -> list[str]:
    """Random walks over the byte DFA, half the time stepping towards acceptance."""
    trans, start, finals = byte_dfa(regex)
    preds: dict[int, set[int]] = {}
    for q, d in trans.items():
        for r in d.values():
            preds.setdefault(r, set()).add(q)
    dist = {f: 0 for f in finals}
    todo = deque(finals)
    while todo:
        q = todo.popleft()
        for p in preds.get(q, ()):
            if p not in dist:
                dist[p] = dist[q] + 1
                todo.append(p)
    out = []
    for _ in range(n):
        q, text = start, bytearray()
        while not (q in finals and rng.random() < 0.3):
            moves = [(b, r) for b, r in trans.get(q, {}).items() if r in dist]
            if not moves:
                break
            if rng.random() < 0.5:
                moves = [m for m in moves if dist[m[1]] < dist[q]] or moves
            b, q = rng.choice(moves)
            text.append(b)
        out.append(text.decode("utf-8"))
    return out


_INTS = st.integers(-20, 20)
_DECS = st.sampled_from([-12.5, -1, -0.25, 0, 0.5, 1, 3.75, 10])
_PATTERNS = ["^[a-c]+$", "ab", "^x?y{1,2}$", "[0-9]", "^(foo|ba+r)$", "\\d\\.\\d", "^[^a]*$"]
_SCALARS = [None, True, False, 0, 1, -3, 2.5, "", "a", "ab", "x\"y", "é"]


def _bounds(values):
    keys = st.sampled_from(["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"])
    return st.dictionaries(keys, values, max_size=2)


_LEAVES = st.one_of(
    st.builds(lambda b: {"type": "integer", **b}, _bounds(_INTS)),
    st.builds(lambda b: {"type": "number", **b}, _bounds(_DECS)),
    st.builds(lambda a, b: {"type": "string", "minLength": min(a, b), "maxLength": max(a, b)},
              st.integers(0, 3), st.integers(0, 4)),
    st.builds(lambda p: {"type": "string", "pattern": p}, st.sampled_from(_PATTERNS)),
    st.builds(lambda f: {"type": "string", "format": f}, st.sampled_from(["date", "uuid",
                                                                          "ipv4"])),
    st.builds(lambda v: {"enum": v}, st.lists(st.sampled_from(_SCALARS), min_size=1,
                                              max_size=3)),
    st.builds(lambda v: {"const": v}, st.sampled_from(_SCALARS)),
    st.sampled_from([{"type": "boolean"}, {"type": "null"}, {"type": ["integer", "null"]}]),
)


def _compound(child):
    return st.one_of(
        st.builds(lambda c, a, b: {"type": "array", "items": c, "minItems": min(a, b),
                                   "maxItems": max(a, b)}, child, st.integers(0, 2),
                  st.integers(0, 3)),
        st.builds(lambda c, d: {"type": "array", "prefixItems": [c, d], "items": False},
                  child, child),
        st.builds(lambda props, req, deps: {"type": "object", "properties": props,
                                            "required": [k for k in props if k in req],
                                            "dependentRequired": deps,
                                            "additionalProperties": False},
                  st.dictionaries(st.sampled_from("abc"), child, max_size=3),
                  st.sets(st.sampled_from("abc")),
                  st.dictionaries(st.sampled_from("abc"), st.lists(st.sampled_from("abc"),
                                                                   max_size=2, unique=True),
                                  max_size=2)),
        st.builds(lambda c, d, k: {"type": "array", "items": c, "contains": d, "minContains": k},
                  child, child, st.integers(0, 2)),
        st.builds(lambda a, b: {"anyOf": [a, b]}, child, child),
        st.builds(lambda a, b: {"oneOf": [a, b]}, child, child),
        st.builds(lambda a, b: {"allOf": [a, b]}, child, child),
        st.builds(lambda a, t: {"allOf": [a], "not": {"type": t}}, child,
                  st.sampled_from(["null", "string", "boolean", ["array", "object"]])),
    )


SCHEMAS = st.recursive(_LEAVES, _compound, max_leaves=5)
_STR = st.text(alphabet=list("abcxy0123.\"\\é\tF-"), max_size=5) | st.sampled_from(
    ["2024-02-29", "2023-02-29", "01234567-89ab-cdef-0123-456789ABCDEF", "10.0.0.255",
     "10.0.0.256", "foo", "baar", "1.5", "xyy"])
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-25, 25) | st.sampled_from(
        [-12.5, -12.25, -1.0, -0.25, 0.5, 0.75, 2.0, 3.75, 4.0, 10.5]) | _STR,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from("abcz"), c, max_size=3),
    max_leaves=6)


def _translate(schema):
    try:
        return to_regex(schema)
    except UnsupportedSchema:
        return None
    except ValueError as err:  # an unsatisfiable random schema
        assert "accepts no value" in str(err)
        return None


def check_samples_valid(regex: str, schema: Any, seed: int, n: int = 12) -> None:
    """Soundness: strings of the language are JSON of valid values (exact decimals), and
    the canonical serialization of each such value is in the language too."""
    v, order = validator(schema), key_order(schema)
    for text in dfa_sampler(regex, random.Random(seed), n):
        if re.search("[eE][+-]?0*[0-9]{18}", text):  # an exponent beyond any Decimal: valid
            continue  # JSON the regex rightly allows, but jsonschema cannot read it exactly
        with decimal.localcontext() as ctx:  # the largest exponents Decimal can hold
            ctx.Emax, ctx.Emin = decimal.MAX_EMAX, decimal.MIN_EMIN
            value = json.loads(text, parse_float=Decimal)
        assert v.is_valid(value), (schema, text)
        if re.search("[0-9][eE]", text):  # an exponent: canonical() may not fit in memory
            continue
        # (anyOf branches may declare keys in other orders: the sampled order then counts)
        assert full(regex, value, order) or full(regex, value), (schema, text)


def check_values(regex: str, schema: Any, values: list[Any]) -> None:
    """Valid iff the canonical serialization (declared key order) matches."""
    v, order = validator(schema), key_order(schema)
    for value in values:
        assert v.is_valid(value) == full(regex, value, order), (schema, value)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=SCHEMAS, seed=st.integers(0, 2**16), values=st.lists(VALUES, max_size=12))
def test_random_schemas(schema, seed, values):
    regex = _translate(schema)
    assume(regex is not None)
    check_samples_valid(regex, schema, seed)
    check_values(regex, schema, values)


@pytest.mark.parametrize("what,schema", [
    ("maximum", {"type": "array", "items": {"type": "integer", "maximum": 3}}),
    ("oneOf-as-anyOf", {"oneOf": [{"enum": [1, 2]}, {"type": "integer", "minimum": 2}]}),
    ("pattern", {"type": "string", "pattern": "^a+$"}),
    ("required", {"type": "object", "properties": {"a": {"type": "null"}}, "required": ["a"],
                  "additionalProperties": False}),
])
def test_random_checks_catch_a_loosened_translator(monkeypatch, what, schema):
    """The same two checks reject each deliberately loosened translation."""
    if what == "oneOf-as-anyOf":  # overlapping branches: refused when exact
        with pytest.raises(UnsupportedSchema, match="oneOf"):
            to_regex(schema)
    else:
        exact = to_regex(schema)
        check_samples_valid(exact, schema, seed=0, n=60)
        check_values(exact, schema, [[1, 5], 2, "ab", {}])
    _loosened(monkeypatch, what)
    loose = to_regex(schema)
    with pytest.raises(AssertionError):
        check_samples_valid(loose, schema, seed=0, n=60)
    with pytest.raises(AssertionError):
        check_values(loose, schema, [[1, 5], 2, "ab", {}])


def test_one_of_tagged_union_and_any_of_siblings():
    branch = lambda tag, key, t: {  # noqa: E731
        "type": "object", "properties": {"kind": {"const": tag}, key: {"type": t}},
        "required": ["kind", key], "additionalProperties": False}
    r = to_regex({"oneOf": [branch("a", "x", "integer"), branch("b", "y", "string")]})
    assert full(r, {"kind": "a", "x": 1}) and full(r, {"kind": "b", "y": "s"})
    assert not full(r, {"kind": "a", "y": "s"}) and not full(r, {"kind": "c", "x": 1})
    r = to_regex({"type": "integer", "maximum": 10, "anyOf": [{"minimum": 8}, {"maximum": -8}]})
    assert [v for v in range(-20, 20) if full(r, v)] == [*range(-20, -7), 8, 9, 10]


def test_dependent_required_between_optional_properties():
    s = {"type": "object", "properties": {"a": {"type": "null"}, "b": {"type": "null"},
                                          "c": {"type": "null"}},
         "dependentRequired": {"a": ["b"], "b": ["c"]}, "additionalProperties": False}
    r = to_regex(s)
    subsets = [dict.fromkeys(k) for n in range(4) for k in itertools.combinations("abc", n)]
    v = validator(s)
    assert [full(r, x) for x in subsets] == [v.is_valid(x) for x in subsets]
    assert sum(v.is_valid(x) for x in subsets) == 4  # {}, c, bc, abc


def test_contains_at_least_k():
    r = to_regex({"type": "array", "items": {"type": "integer"}, "contains": {"minimum": 5},
                  "minContains": 2})
    assert full(r, [5, 1, 7]) and full(r, [9, 9]) and not full(r, [5, 1]) and not full(r, [])
    assert not full(r, [5, 6, "a"])


def test_not_of_types():
    r = to_regex({"type": ["string", "null", "integer"], "not": {"type": ["null", "string"]}})
    assert full(r, 3) and not full(r, None) and not full(r, "a")
    assert re.fullmatch(to_regex({"properties": {"a": {"not": {}}}, "type": "object"}), "{}")
    with pytest.raises(ValueError, match="accepts no value"):
        to_regex({"not": True})


def test_nested_id_changes_refs_so_it_is_refused():
    s = {"$defs": {"a": {"$id": "http://x.example/a", "type": "integer"}},
         "$ref": "#/$defs/a"}
    with pytest.raises(UnsupportedSchema, match="own '\\$id'"):
        to_regex(s)
