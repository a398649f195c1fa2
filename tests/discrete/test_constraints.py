"""Constrained decoding: DINGO dynamic program, sampling variant, per-token baseline, token
automata from regular expressions and JSON schemas."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
import torch

from reverie.discrete.constraints import (
    BlockDecoder,
    InfeasibleConstraint,
    JsonSchema,
    Regex,
    TokenAutomaton,
    Vocabulary,
    best_block,
    clear_cache,
    per_token_block,
    sample_block,
)

# ----------------------------------------------------------------------------- helpers


def random_automaton(rng: np.random.Generator, n_states: int, vocab: int, p_dead: float = 0.4,
                     shared: bool = False):
    """A random DFA; with ``shared``, tokens share columns (multi-token classes)."""
    width = max(1, vocab // 2) if shared else vocab
    table = rng.integers(0, n_states, size=(n_states, width))
    table[rng.random((n_states, width)) < p_dead] = -1
    if shared:
        table = table[:, rng.integers(0, width, size=vocab)]
    finals = {int(q) for q in np.flatnonzero(rng.random(n_states) < 0.4)} or {n_states - 1}
    return TokenAutomaton(torch.from_numpy(table), 0, finals), table, finals


def dist_to_final(table: np.ndarray, finals: set[int]) -> np.ndarray:
    """Fewest tokens to a final state, by value iteration (independent of the BFS)."""
    n = table.shape[0]
    d = np.full(n, 10**9)
    for f in finals:
        d[f] = 0
    for _ in range(n + 1):
        for q in range(n):
            nxt = table[q][table[q] >= 0]
            if nxt.size:
                d[q] = min(d[q], 1 + d[nxt].min())
    return d


def run(table: np.ndarray, q: int, xs) -> int:
    for x in xs:
        q = int(table[q, x])
        if q < 0:
            return -1
    return q


def brute_force(table, finals, lp, start, masked, remaining):
    """max over full strings x (masked positions: any token) of sum_{unmasked} lp[i, x_i],
    the string ending in an allowed state; returns (score, set of best unmasked parts)."""
    length, vocab = lp.shape
    d = dist_to_final(table, finals)
    allowed = d < 10**9 if remaining is None else d <= remaining
    best, arg = -math.inf, set()
    for xs in itertools.product(range(vocab), repeat=length):
        q = run(table, start, xs)
        if q < 0 or not allowed[q]:
            continue
        s = sum(float(lp[i, x]) for i, x in enumerate(xs) if not masked[i])
        key = tuple(-1 if masked[i] else x for i, x in enumerate(xs))
        if s > best + 1e-12:
            best, arg = s, {key}
        elif abs(s - best) <= 1e-12:
            arg.add(key)
    return best, arg


CHAR_TOKENS = list("0123456789abcdefghijklmnopqrstuvwxyz-:,{}[]\" .") + [
    "ab", "cat", "dog", "12", "345", "-1", "\":", "\", \"", "{\"", "\"}", "true", "fal", "se",
    "null", "name", "age", "\"name\"", "ing", " \"",
]


def char_vocab() -> Vocabulary:
    return Vocabulary([*CHAR_TOKENS, None, None, None], eos_id=len(CHAR_TOKENS),
                      mask_id=len(CHAR_TOKENS) + 1)


# ----------------------------------------------------------------------------- automaton


def test_class_compression_round_trips_the_dense_table():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, table, finals = random_automaton(rng, int(rng.integers(1, 7)), int(rng.integers(1, 9)))
        assert torch.equal(a.transitions, torch.from_numpy(table))
        assert a.finals == frozenset(finals)
        live = dist_to_final(table, finals) < 10**9
        assert a.live_states == frozenset(np.flatnonzero(live).tolist())
        for q in range(table.shape[0]):
            for t in range(table.shape[1]):
                assert a.step(q, t) == table[q, t]


def test_advance_matches_run():
    rng = np.random.default_rng(1)
    a, table, _ = random_automaton(rng, 6, 5, p_dead=0.2)
    tokens = torch.from_numpy(rng.integers(0, 5, size=(40, 4)))
    states = torch.from_numpy(rng.integers(0, 6, size=40))
    got = a.advance(states, tokens)
    want = [run(table, int(s), row.tolist()) for s, row in zip(states, tokens)]
    assert got.tolist() == want


SMALL = ["a", "b", "c", "ab", "ba", "1", "12", ".", "-"]


@pytest.mark.parametrize(
    "pattern",
    [r"(ab)+c?", r"a|abc", r"-?[0-9]+(\.[0-9]+)?", r"(a|b)*c", r"[ab]{2,3}", r"((ab)|c)+1?",
     r"[ab]*", r"(ab)*|c", r""],
)
def test_from_regex_accepts_exactly_the_pattern(pattern):
    """Every token string of up to 4 tokens: accepted (possibly EOS-padded) iff Python's ``re``
    full-matches its text; EOS is only allowed as trailing padding. Patterns that continue past
    an accepting state (``(ab)+c?``, ``a|abc``, numbers) catch an incomplete token index;
    patterns that accept the empty string (``[ab]*``, ``""``) need the start marker."""
    voc = Vocabulary([*SMALL, None, None], eos_id=len(SMALL), mask_id=len(SMALL) + 1)
    a = TokenAutomaton.from_regex(pattern, voc)
    eos = voc.eos_id
    for n in range(5):
        for seq in itertools.product(range(len(SMALL)), repeat=n):
            text = "".join(SMALL[t] for t in seq)
            want = re.fullmatch(pattern, text) is not None
            assert a.accepts(list(seq)) == want, (pattern, text)
            assert a.accepts([*seq, eos, eos]) == want
            if n:
                assert not a.accepts([*seq[:-1], eos, seq[-1]])
    assert a.step(a.start, voc.mask_id) == -1
    assert Regex(pattern).matches("abab") == (re.fullmatch(pattern, "abab") is not None)


def test_cache_and_errors():
    voc = char_vocab()
    clear_cache()
    assert TokenAutomaton.from_regex("ab+", voc) is TokenAutomaton.from_regex("ab+", voc)
    with pytest.raises(ValueError, match="invalid regular expression"):
        TokenAutomaton.from_regex("a(", voc)
    with pytest.raises(ValueError, match="invalid regular expression"):
        Regex("[")
    with pytest.raises(ValueError, match="cannot spell"):
        TokenAutomaton.from_regex("QQ", voc)
    with pytest.raises(ValueError, match="JSON schema"):
        JsonSchema({"type": "no-such-type"})
    with pytest.raises(ValueError, match="not valid JSON"):
        JsonSchema("{not json")
    with pytest.raises(ValueError, match="eos"):
        Vocabulary(["a", "b"], eos_id=None, mask_id=1)
    with pytest.raises(ValueError, match="mask"):
        Vocabulary(["a", "b"], eos_id=0, mask_id=None)
    with pytest.raises(ValueError, match="at least 3 tokens"):
        Regex("[0-9]{8}").decoder(voc, length=2)  # "345" "345" "12"
    a = TokenAutomaton.from_regex("[0-9]{8}", voc)
    with pytest.raises(ValueError, match="entries per position"):
        best_block(torch.zeros(3, len(voc) + 1), a, 0)
    dead = torch.tensor([[1, -1], [-1, -1]])
    with pytest.raises(ValueError, match="dead"):
        best_block(torch.zeros(2, 2), TokenAutomaton(dead, 1, {0}), 1)
    with pytest.raises(TypeError):
        TokenAutomaton(torch.zeros(2, 2), 0, {0})
    bad = torch.zeros(3, len(voc))
    bad[1, 5] = float("nan")
    for decode in (best_block, sample_block, per_token_block):
        with pytest.raises(ValueError, match="NaN"):
            decode(bad, a, 0)


# ----------------------------------------------------------------------------- DINGO DP


@pytest.mark.parametrize("seed", range(6))
def test_best_block_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    checked = 0
    while checked < 25:
        n_states, vocab, length = (int(rng.integers(2, 6)), int(rng.integers(2, 5)),
                                   int(rng.integers(1, 5)))
        a, table, finals = random_automaton(rng, n_states, vocab, shared=checked % 2 == 1)
        if not a.is_live(0):
            continue
        lp = torch.randn(length, vocab, generator=gen, dtype=torch.float64).log_softmax(-1)
        masked = torch.from_numpy(rng.random(length) < 0.3)
        remaining = [None, 0, int(rng.integers(0, 3))][checked % 3]
        best, args = brute_force(table, finals, lp.numpy(), 0, masked.numpy(), remaining)
        if best == -math.inf:
            with pytest.raises(InfeasibleConstraint):
                best_block(lp, a, 0, masked, remaining=remaining)
            continue
        tokens, end, logprob = best_block(lp, a, 0, masked, remaining=remaining)
        assert logprob == pytest.approx(best, abs=1e-9)
        assert tuple(tokens.tolist()) in args
        # The returned path is real: some filling of the masked positions ends in `end`.
        fills = itertools.product(range(vocab), repeat=int(masked.sum()))
        ends = set()
        for fill in fills:
            xs, it = tokens.tolist(), iter(fill)
            xs = [next(it) if m else x for x, m in zip(xs, masked.tolist())]
            ends.add(run(table, 0, xs))
        assert end in ends
        checked += 1


def test_best_block_batched_equals_rows_and_dense_reference():
    """Batched rows equal single calls; a medium automaton agrees with a plain dense Viterbi."""
    rng = np.random.default_rng(7)
    a, table, finals = random_automaton(rng, 12, 40, p_dead=0.7)
    while not a.is_live(0):
        a, table, finals = random_automaton(rng, 12, 40, p_dead=0.7)
    gen = torch.Generator().manual_seed(0)
    lp = torch.randn(5, 9, 40, generator=gen).log_softmax(-1)
    states = torch.tensor([0] * 5)
    tokens, end, logprob = best_block(lp, a, states, remaining=0)
    for b in range(5):
        t1, e1, l1 = best_block(lp[b], a, 0, remaining=0)
        assert torch.equal(t1, tokens[b]) and e1 == int(end[b])
        assert l1 == pytest.approx(float(logprob[b]))
        # dense Viterbi over the [Q, V] table
        w = np.full(12, -np.inf)
        w[0] = 0.0
        for i in range(9):
            nw = np.full(12, -np.inf)
            for q in range(12):
                if w[q] == -np.inf:
                    continue
                for t in range(40):
                    n = table[q, t]
                    if n >= 0:
                        nw[n] = max(nw[n], w[q] + float(lp[b, i, t]))
            w = nw
        assert max(w[f] for f in finals) == pytest.approx(l1, abs=1e-5)
        assert run(table, 0, t1.tolist()) in finals


# ----------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("shared", [False, True])
def test_sample_block_matches_exact_restricted_distribution(shared):
    vocab = 4 if shared else 3
    rng = np.random.default_rng(3)
    a, table, finals = random_automaton(rng, 4, vocab, p_dead=0.3, shared=shared)
    length, n = 4, 20_000

    def usable(a, table, finals):
        fits = any(run(table, 0, xs) in finals
                   for xs in itertools.product(range(vocab), repeat=length))
        sizes = np.bincount(a._token_class.numpy().astype(np.int64))[: a.n_classes]
        return a.is_live(0) and fits and (not shared or sizes.max() >= 2)

    while not usable(a, table, finals):
        a, table, finals = random_automaton(rng, 4, vocab, p_dead=0.3, shared=shared)
    gen = torch.Generator().manual_seed(1)
    lp = torch.randn(length, vocab, generator=gen, dtype=torch.float64).mul(1.5).log_softmax(-1)
    masked = torch.tensor([False, True, False, False])
    for remaining in (None, 0):
        d = dist_to_final(table, finals)
        allowed = d < 10**9 if remaining is None else d <= remaining
        exact = {}
        for xs in itertools.product(range(vocab), repeat=length):
            q = run(table, 0, xs)
            if q >= 0 and allowed[q]:
                key = tuple(-1 if m else x for x, m in zip(xs, masked.tolist()))
                p = math.exp(sum(float(lp[i, x]) for i, x in enumerate(xs)))
                exact[key] = exact.get(key, 0.0) + p
        z = sum(exact.values())
        tokens, end, _ = sample_block(lp.expand(n, -1, -1), a, 0, masked, remaining=remaining,
                                      generator=gen)
        assert bool(allowed[end.numpy()].all())
        rows, counts = np.unique(tokens.numpy(), axis=0, return_counts=True)
        freq = {tuple(r.tolist()): c / n for r, c in zip(rows, counts)}
        assert set(freq) <= set(exact)
        for key, p in exact.items():
            p /= z
            tol = 5 * math.sqrt(p * (1 - p) / n) + 1 / n
            assert abs(freq.get(key, 0.0) - p) <= tol, (key, freq.get(key, 0.0), p)


def test_sample_block_one_generator_per_row():
    a = TokenAutomaton.from_regex(r"[a-z]{2,5}", char_vocab())
    lp = torch.randn(3, 6, len(char_vocab()), generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(10 + k) for k in range(3)]
    batch, _, _ = sample_block(lp, a, 0, remaining=0, generator=gens)
    for k in range(3):
        one, _, _ = sample_block(lp[k:k + 1], a, 0, remaining=0,
                                 generator=[torch.Generator().manual_seed(10 + k)])
        assert torch.equal(one[0], batch[k])


# ----------------------------------------------------------------------------- decoding text

PATTERNS = [r"(cat|dog)s? [0-9]{1,3}", r"[0-9]{3}-[0-9]{2,4}", r"(ab)+c?", r"-?[1-9][0-9]*"]
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 6}, "age": {"type": "integer"},
                   "ok": {"type": "boolean"}},
    "required": ["name", "age", "ok"],
}


def _canvas(decoder: BlockDecoder, vocab: Vocabulary, lp: torch.Tensor, block: int, steps: int,
            temperature: float, gen: torch.Generator) -> torch.Tensor:
    """Semi-autoregressive decoding with random remasking: each block is revealed over
    ``steps`` denoising steps; the model scores are fixed random logits."""
    n, length, _ = lp.shape
    x = torch.full((n, length), vocab.mask_id)
    for b0 in range(0, length, block):
        sl = slice(b0, b0 + block)
        for s in range(steps):
            still = x[:, sl] == vocab.mask_id
            keep = torch.rand(still.shape, generator=gen) < 1 - (s + 1) / steps
            masked = still & keep
            out = decoder.decode(lp[:, sl], masked, current=x[:, sl], temperature=temperature,
                                 generator=gen)
            assert torch.equal(torch.where(~still, out, x[:, sl]), x[:, sl])  # kept
            x[:, sl] = torch.where(masked, vocab.mask_id, out)
        decoder.commit(x[:, sl])
    return x


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_decoded_text_full_matches_pattern(temperature):
    vocab = char_vocab()
    gen = torch.Generator().manual_seed(5)
    for pattern in PATTERNS:
        constraint = Regex(pattern)
        for block in (4, 12):
            lp = torch.randn(6, 12, len(vocab), generator=gen).mul(3).log_softmax(-1)
            dec = constraint.decoder(vocab, length=12, n=6)
            x = _canvas(dec, vocab, lp, block, steps=3, temperature=temperature, gen=gen)
            assert bool(dec.accepted().all())
            for row in x:
                text = vocab.decode(row.tolist())
                assert re.fullmatch(pattern, text), (pattern, text)
                assert constraint.matches(text)
                # EOS only as padding: nothing but EOS after the first EOS.
                ids = row.tolist()
                if vocab.eos_id in ids:
                    assert set(ids[ids.index(vocab.eos_id):]) == {vocab.eos_id}


def test_decoded_json_is_valid_under_schema():
    vocab = char_vocab()
    gen = torch.Generator().manual_seed(6)
    constraint = JsonSchema(SCHEMA)
    lp = torch.randn(4, 40, len(vocab), generator=gen).mul(2).log_softmax(-1)
    for temperature in (0.0, 1.0):
        dec = constraint.decoder(vocab, length=40, n=4)
        x = _canvas(dec, vocab, lp, 8, steps=2, temperature=temperature, gen=gen)
        for row in x:
            text = vocab.decode(row.tolist())
            obj = json.loads(text)
            assert set(obj) == {"name", "age", "ok"}
            assert isinstance(obj["name"], str) and len(obj["name"]) <= 6
            assert isinstance(obj["age"], int) and isinstance(obj["ok"], bool)
            assert re.fullmatch(constraint.regex, text)


def test_single_block_decoder_equals_best_block():
    vocab = char_vocab()
    a = TokenAutomaton.from_regex(PATTERNS[0], vocab)
    lp = torch.randn(2, 10, len(vocab), generator=torch.Generator().manual_seed(2))
    dec = BlockDecoder(a, 10, 2)
    out = dec.decode(lp)
    want, _, _ = best_block(lp, a, 0, remaining=0)
    assert torch.equal(out, want)


def test_dingo_beats_or_equals_per_token_and_per_token_can_fail():
    """DINGO's block is the most probable valid one, so it is never below the baseline's
    (when the baseline succeeds); the length-blind baseline walks into dead ends: with 3
    slots for ``x|[0-9]{5}`` it starts with digits and cannot finish."""
    vocab = char_vocab()
    pattern = r"x|[0-9]{5}"
    a = TokenAutomaton.from_regex(pattern, vocab)
    gen = torch.Generator().manual_seed(9)
    lp = torch.randn(64, 3, len(vocab), generator=gen).mul(3).log_softmax(-1)
    tb, eb, lb = best_block(lp, a, 0, remaining=0)
    tp, ep, lpt = per_token_block(lp, a, 0)
    ok = torch.tensor([e in a.finals for e in ep.tolist()])
    assert bool((lb[ok] >= lpt[ok] - 1e-9).all())
    assert all(e in a.finals for e in eb.tolist())
    assert 0 < int(ok.sum()) < 64
    for row, good in zip(tp, ok):
        if good:
            assert re.fullmatch(pattern, vocab.decode(row.tolist()))
    for row in tb:
        assert re.fullmatch(pattern, vocab.decode(row.tolist()))


# ----------------------------------------------------------------------------- vocabulary


def test_vocabulary_from_byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = ['{"name": "café", "age": 42}', "naïve résumé ✓ 3.14", "hello world"] * 50
    tok.train_from_iterator(corpus, trainer)
    voc = Vocabulary.from_tokenizer(tok, eos_id=tok.token_to_id("<eos>"),
                                    mask_id=tok.token_to_id("<mask>"))
    for text in corpus[:3]:
        ids = tok.encode(text).ids
        assert voc.decode(ids) == text
    assert voc.tokens[voc.eos_id] is None and voc.tokens[voc.mask_id] is None
    sp = Vocabulary.from_tokenizer(_FakeSentencePiece(), decoding="sentencepiece")
    assert sp.tokens[:3] == (b" hi", b"\xc3", b"x")


class _FakeSentencePiece:
    eos_token_id, mask_token_id, all_special_ids = 3, 4, [3, 4]

    def __len__(self):
        return 5

    def convert_ids_to_tokens(self, ids):
        return ["\u2581hi", "<0xC3>", "x", "</s>", "<mask>"]


class _CharTokenizer:  # the shape of reverie.discrete's character tokenizer
    chars = '{}":, 0123456789abcdefghijklmnopqrstuvwxyz'
    pad_token_id, mask_token_id = 0, len(chars) + 1


class _Denoiser:  # the attributes of a token denoiser that Vocabulary.coerce reads
    tokenizer, mask_id, vocab_size, pad_id = _CharTokenizer(), len(_CharTokenizer.chars) + 1, 48, 0


def test_vocabulary_from_character_tokenizer_and_denoiser():
    voc = Vocabulary.coerce(_Denoiser())
    assert len(voc) == 48 and voc.eos_id == 0 and voc.mask_id == len(_CharTokenizer.chars) + 1
    ids = [1 + _CharTokenizer.chars.index(c) for c in '{"a": 1}']
    assert voc.decode([*ids, 0, 0]) == '{"a": 1}'
    a = TokenAutomaton.from_schema({"type": "object", "properties": {"a": {"type": "integer"}},
                                    "required": ["a"]}, _Denoiser())
    lp = torch.randn(12, 48, generator=torch.Generator().manual_seed(0))
    tokens, end, _ = best_block(lp, a, 0, remaining=0)
    obj = json.loads(voc.decode(tokens.tolist()))
    assert set(obj) == {"a"} and type(obj["a"]) is int
    ids = tokens.tolist()
    if 0 in ids:  # padding only at the end
        assert set(ids[ids.index(0):]) == {0}
