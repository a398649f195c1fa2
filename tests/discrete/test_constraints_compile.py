"""Fast token-automaton compilation (byte-trie walk over the byte DFA) against outlines-core's
token index, and the automaton caches (memory, disk) and the Vocabulary memo."""

from __future__ import annotations

import multiprocessing
import random
import re
import time

import numpy as np
import pytest
import torch

from reverie.bench.constraints import SCHEMAS as BENCH_SCHEMAS
from reverie.bench.constraints import TINY_JSON_SCHEMAS
from reverie.discrete.constraints import TokenAutomaton, Vocabulary, _cache, clear_cache
from reverie.discrete.constraints import automaton as automaton_mod
from reverie.discrete.constraints._trie import TokenTrie
from reverie.discrete.constraints.automaton import _build_by_index, _build_by_trie, schema_to_regex

# ----------------------------------------------------------------------------- helpers


def difference(a: TokenAutomaton, b: TokenAutomaton) -> str:
    """Why ``a`` and ``b`` are not the same automaton ("" if they are): same states (same
    numbering), finals, EOS / mask ids, token partition (up to class labels) and transitions.
    Works at any vocabulary size (no dense table)."""
    for name in ("n_states", "vocab_size", "n_classes", "start", "finals", "eos_id", "mask_id"):
        if getattr(a, name) != getattr(b, name):
            return f"{name}: {getattr(a, name)} != {getattr(b, name)}"
    ca, cb = a._token_class.long().numpy(), b._token_class.long().numpy()
    pairs = np.unique(np.stack([ca, cb], axis=1), axis=0)
    if len(pairs) != len(np.unique(ca)) or len(pairs) != len(np.unique(cb)):
        return "the token classes differ"
    relabel = np.full(b.n_classes + 1, -1)
    relabel[pairs[:, 1]] = pairs[:, 0]
    ta = a._triplets.long().numpy()
    tb = b._triplets.long().numpy().copy()
    tb[:, 1] = relabel[tb[:, 1]]
    ta, tb = ta[np.lexsort(ta.T[::-1])], tb[np.lexsort(tb.T[::-1])]
    if ta.shape != tb.shape or not np.array_equal(ta, tb):
        return "the transitions differ"
    return ""


def json_vocab(n_merges: int = 300, seed: int = 0) -> Vocabulary:
    """Every printable ASCII byte, JSON fragments and random merges (shared prefixes,
    duplicates under two ids, a multi-byte UTF-8 token), EOS and mask."""
    rng = random.Random(seed)
    toks = [chr(c) for c in range(32, 127)]
    toks += ['{"', '":', '",', '"}', '" ', ' "', "true", "false", "null", "name", "na", "nam",
             "email", "@", ".com", "ab", "ab", "é", "-1", "0.", "12", "123", "\\n", "\\u00"]
    letters = "abcdefghijklmnopqrstuvwxyz0123456789 _-.@"
    toks += ["".join(rng.choice(letters) for _ in range(rng.randint(2, 6)))
             for _ in range(n_merges)]
    return Vocabulary([*toks, None, None], eos_id=len(toks), mask_id=len(toks) + 1)


def random_regex(rng: random.Random, depth: int = 3) -> str:
    """A random regular expression over a small alphabet (literals, classes, groups,
    alternation, repetition)."""
    if depth == 0 or rng.random() < 0.3:
        return rng.choice(["a", "b", "ab", "1", r"\.", "-", "[ab]", "[0-9]", "[^a]", "é", " "])
    kind = rng.choice(["cat", "cat", "alt", "rep", "opt", "count"])
    if kind == "cat":
        return "".join(random_regex(rng, depth - 1) for _ in range(rng.randint(2, 3)))
    if kind == "alt":
        return f"({random_regex(rng, depth - 1)}|{random_regex(rng, depth - 1)})"
    if kind == "count":
        lo = rng.randint(0, 2)
        return f"({random_regex(rng, depth - 1)}){{{lo},{lo + rng.randint(0, 3)}}}"
    return f"({random_regex(rng, depth - 1)}){'*' if kind == 'rep' else rng.choice('?+')}"


def build_both(pattern: str, vocab: Vocabulary) -> tuple[object, object]:
    """(index build, trie build), each an automaton or the ValueError it raised."""
    out = []
    for build in (_build_by_index, _build_by_trie):
        try:
            out.append(build(TokenAutomaton, pattern, vocab))
        except ValueError as err:
            out.append(err)
    return out[0], out[1]


def error_kind(err: ValueError) -> str:
    return next((k for k in ("cannot spell", "accepts no string", "invalid") if k in str(err)),
                str(err))


SMALL = Vocabulary(["a", "b", "c", "ab", "ba", "abc", "1", "12", ".", "-", "é", "aé", " ", None,
                    None], eos_id=13, mask_id=14)


# ----------------------------------------------------------------------------- equality


@pytest.mark.parametrize("vocab", [SMALL, json_vocab(40)], ids=["small", "json"])
def test_trie_build_equals_the_index_on_random_regexes(vocab):
    rng = random.Random(0)
    built = 0
    for _ in range(100):
        pattern = random_regex(rng)
        ref, new = build_both(pattern, vocab)
        if isinstance(ref, ValueError):  # both refuse, for the same reason
            assert isinstance(new, ValueError), (pattern, ref)
            assert error_kind(new) == error_kind(ref), (pattern, new, ref)
            continue
        assert not isinstance(new, ValueError), (pattern, new)
        assert difference(ref, new) == "", pattern
        built += 1
    assert built >= 50


SCHEMAS = {
    "object": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"enum": ["ab", "cd"]}, "maxItems": 2}},
        "required": ["name", "age"]},
    "nested": {"type": "object", "properties": {
        "id": {"type": "string", "pattern": "[0-9]{3}"}, "ok": {"type": "boolean"},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "x": {"type": "number"}, "y": {"anyOf": [{"type": "null"}, {"type": "string"}]}},
            "required": ["x"]}}},
        "required": ["id", "items"]},
    **BENCH_SCHEMAS,  # user, order, event
    **TINY_JSON_SCHEMAS,  # the record shapes of the bundled tiny-json model
}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_trie_build_equals_the_index_on_json_schemas(name):
    vocab = json_vocab()
    ref, new = build_both(schema_to_regex(SCHEMAS[name]), vocab)
    assert difference(ref, new) == ""
    assert ref.live_states == new.live_states
    assert [ref.min_length(q) for q in range(ref.n_states)] == [
        new.min_length(q) for q in range(new.n_states)]
    assert torch.equal(ref.tables().pair_in, new.tables().pair_in)  # the DP reads equal tables


def synthetic_words(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct BPE-like tokens: syllable words, with and without a leading space,
    their prefixes, punctuation fragments."""
    rng = random.Random(seed)
    syll = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    out = {chr(c) for c in range(32, 127)}
    while len(out) < n:
        w = "".join(rng.choice(syll) for _ in range(rng.randint(1, 4)))
        out.add(rng.choice(["", " ", '"', " \""]) + w[: rng.randint(2, len(w))])
    return sorted(out)[:n]


def test_trie_build_equals_the_index_at_32k_tokens():
    words = synthetic_words(32_000)
    vocab = Vocabulary([*words, None, None], eos_id=32_000, mask_id=32_001)
    schema = {"type": "object", "properties": {"sku": {"type": "string"},
                                               "qty": {"type": "integer"},
                                               "note": {"type": "string", "maxLength": 12}},
              "required": ["sku", "qty", "note"]}
    ref, new = build_both(schema_to_regex(schema), vocab)
    assert ref.n_classes > 10 and difference(ref, new) == ""


def test_equality_check_rejects_wrong_builds(monkeypatch):
    """A build that forgets multi-byte tokens, and one whose trie loses a shared prefix's
    byte, are told apart from the index by the same check."""
    vocab = json_vocab()
    pattern = schema_to_regex(SCHEMAS["object"])
    ref = _build_by_index(TokenAutomaton, pattern, vocab)
    single = Vocabulary([t if t is not None and len(t) == 1 else None for t in vocab.tokens],
                        eos_id=vocab.eos_id, mask_id=vocab.mask_id)
    monkeypatch.setattr(automaton_mod, "token_trie", lambda v: TokenTrie(single))
    assert difference(ref, _build_by_trie(TokenAutomaton, pattern, vocab)) != ""

    def lossy(v):  # the depth-2 node under '{' reads '?' instead of '"' ('{"' and below)
        trie = TokenTrie(v)
        brace = int(np.flatnonzero(trie.byte[0] == ord("{"))[0])
        child = trie.first_child[0][brace] + np.flatnonzero(
            trie.byte[1][trie.first_child[0][brace]:][:trie.n_children[0][brace]] == ord('"'))
        trie.byte[1][child] = ord("?")
        return trie

    monkeypatch.setattr(automaton_mod, "token_trie", lossy)
    assert difference(ref, _build_by_trie(TokenAutomaton, pattern, vocab)) != ""
    monkeypatch.undo()
    assert difference(ref, _build_by_trie(TokenAutomaton, pattern, vocab)) == ""


def test_errors_match_the_index():
    for pattern in ["QQ", "abQ|a", "a(", "[^\\x00-\\xff]"]:
        ref, new = build_both(pattern, SMALL)
        assert isinstance(ref, ValueError) and isinstance(new, ValueError), pattern
        assert error_kind(new) == error_kind(ref), (pattern, new, ref)
    with pytest.raises(ValueError, match="no ordinary tokens"):
        TokenAutomaton.from_regex("a", Vocabulary(["", None, None], eos_id=1, mask_id=2))
    with pytest.raises(ValueError, match="method must be one of"):
        TokenAutomaton.from_regex("a", SMALL, method="fast")


# ----------------------------------------------------------------------------- caches


@pytest.fixture
def disk(tmp_path, monkeypatch):
    """The disk cache in a temporary folder, for every vocabulary size; counts builds."""
    monkeypatch.setenv("REVERIE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_cache, "DISK_MIN_VOCAB", 0)
    builds = []

    def counting(cls, pattern, vocab):
        builds.append(pattern)
        return _build_by_trie(cls, pattern, vocab)

    monkeypatch.setattr(automaton_mod, "_build_by_trie", counting)
    clear_cache()
    yield tmp_path, builds
    clear_cache()


def test_memory_and_disk_cache(disk):
    folder, builds = disk
    vocab = json_vocab()
    a = TokenAutomaton.from_regex("(ab|1)+", vocab)
    assert TokenAutomaton.from_regex("(ab|1)+", vocab) is a  # memory
    files = list(folder.glob("*"))
    assert [f.suffix for f in files] == [".npz"]  # one file, no temporary left over
    clear_cache()
    b = TokenAutomaton.from_regex("(ab|1)+", vocab)  # disk
    assert b is not a and difference(a, b) == "" and builds == ["(ab|1)+"]
    other = Vocabulary(vocab.tokens, eos_id=vocab.eos_id + 1, mask_id=vocab.eos_id)
    TokenAutomaton.from_regex("(ab|1)+", other)  # another vocabulary: another key
    assert len(builds) == 2 and len(list(folder.glob("*.npz"))) == 2
    clear_cache(disk=True)
    assert not list(folder.glob("*.npz"))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "out of range",
                                    "other key"])
def test_corrupt_cache_file_is_rebuilt(disk, damage):
    folder, builds = disk
    vocab = json_vocab()
    a = TokenAutomaton.from_regex("[0-9]+", vocab)
    (path,) = folder.glob("*.npz")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(random.Random(0).getrandbits(8) for _ in range(len(data))))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        arrays = a.to_arrays()
        key = np.frombuffer(_cache.cache_key("[0-9]+", vocab, "trie").encode(), np.uint8)
        if damage == "out of range":
            arrays["triplets"] = arrays["triplets"] + 1000
        else:
            key = key[::-1].copy()
        with open(path, "wb") as f:
            np.savez(f, key=key, **arrays)
    clear_cache()
    b = TokenAutomaton.from_regex("[0-9]+", vocab)
    assert len(builds) == 2 and difference(a, b) == ""
    clear_cache()
    TokenAutomaton.from_regex("[0-9]+", vocab)
    assert len(builds) == 2  # the rebuilt file replaced the damaged one


def _hammer(path: str, arrays: dict, n: int) -> None:
    for _ in range(n):  # rewrite the same key through the cache's atomic write
        from reverie._io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)


def test_concurrent_writers_never_leave_a_partial_file(tmp_path):
    a = TokenAutomaton.from_regex("(ab|1)+c", json_vocab(3000))
    arrays = {k: np.ascontiguousarray(v) for k, v in a.to_arrays().items()}
    path = tmp_path / "x.npz"
    _hammer(str(path), arrays, 1)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(path), arrays, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs) or reads == 0:
        with np.load(path, allow_pickle=False) as data:  # must never fail
            assert difference(a, TokenAutomaton.from_arrays(data)) == ""
        reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert [f.name for f in tmp_path.iterdir()] == ["x.npz"]


def test_disk_cache_off_and_small_vocabularies(tmp_path, monkeypatch):
    monkeypatch.setenv("REVERIE_CACHE_DIR", "off")
    assert _cache.cache_dir() is None and _cache.cache_path("a", SMALL) is None
    monkeypatch.setenv("REVERIE_CACHE_DIR", str(tmp_path))
    assert _cache.cache_path("a", SMALL) is None  # below DISK_MIN_VOCAB: memory only
    monkeypatch.delenv("REVERIE_CACHE_DIR")
    assert _cache.cache_dir().parts[-3:] == (".cache", "reverie", "automata")


def test_vocabulary_memo():
    from tokenizers import Tokenizer, models

    words = {w: i for i, w in enumerate(["<eos>", "<mask>", "a", "b", "ab"])}
    tok = Tokenizer(models.WordLevel(words, unk_token="<eos>"))
    v = Vocabulary.from_tokenizer(tok, eos_id=0, mask_id=1)
    t = time.perf_counter()
    assert Vocabulary.from_tokenizer(tok, eos_id=0, mask_id=1) is v
    assert time.perf_counter() - t < 0.01
    assert Vocabulary.from_tokenizer(tok, eos_id=1, mask_id=0) is not v  # other arguments
    tok.add_tokens(["abc"])
    grown = Vocabulary.from_tokenizer(tok, eos_id=0, mask_id=1)  # the tokenizer changed
    assert grown is not v and len(grown) == len(v) + 1
    assert re.fullmatch("[0-9a-f]{64}", grown.fingerprint)
