"""Ragged batches, EOS exit, stop strings, streaming and chat templates in discrete.generate.

Each exactness check has a sibling that feeds a deliberately wrong variant (a model that
ignores the padding, an exit rule that ends rows on an EOS committed ahead of masks, a stream
of uncommitted text) and asserts that the check rejects it.
"""

import importlib
import json

import pytest
import torch
import transformers

from reverie import cli
from reverie._random import seeded_generators
from reverie.discrete import MaskedLM, TokenDenoiser, generate, load_model
from reverie.discrete.generate import Piece, _Ends, end_token_id
from reverie.reference import MarkovChain

gen_mod = importlib.import_module("reverie.discrete.generate")  # the module (not the function)

PROMPTS = [[1], [0, 2, 1], [], [2, 2]]  # token ids over the chain's 3 symbols


@pytest.fixture(scope="module")
def skewed():
    """A chain whose first symbol and whose symbol after a 0 differ sharply, with 1 frequent
    (an EOS-like symbol that appears mid-sequence)."""
    return MarkovChain([0.1, 0.2, 0.7], [[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7]])


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-json")


def _alone(model, prompts, seed=0, **kw):
    """Each prompt generated on its own (row r with generator seed + r)."""
    return [generate(model, p if len(p) else None, generator=seeded_generators(seed + r, 1),
                     **kw)[0] for r, p in enumerate(prompts)]


def _same_rows(batch, alone) -> bool:
    """Row r of the (left-padded) batch ends with the row generated alone."""
    return all(torch.equal(batch[r, batch.shape[1] - len(a) :], a) for r, a in enumerate(alone))


# ---- ragged batches ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler,block", [("ancestral", None), ("first_hitting", None),
                                           ("low_confidence", 2), ("threshold", 3)])
def test_ragged_batch_gives_the_rows_alone_on_the_exact_chain(chain, sampler, block):
    kw = dict(max_new_tokens=6, sampler=sampler, block_length=block)
    batch = generate(chain, PROMPTS, generator=seeded_generators(0, 4), **kw)
    assert batch.shape == (4, 3 + 6)
    assert _same_rows(batch, _alone(chain, PROMPTS, **kw))
    # canvas semantics (length=, prompt included): no padding, per-row generated lengths
    kw = dict(length=7, sampler=sampler, block_length=None if block is None else 7)
    batch = generate(chain, PROMPTS, generator=seeded_generators(0, 4), **kw)
    assert _same_rows(batch, _alone(chain, PROMPTS, **kw))


def test_models_without_padding_support_are_called_row_by_row(chain):
    """A plain fn(x, t) denoiser gets each row's unpadded part: the same rows again."""
    plain = TokenDenoiser(lambda x, t: chain._masked.fn(x, t), mask_id=3, vocab_size=3,
                          time_conditioned=False)
    assert not plain.takes_padding
    batch = generate(plain, PROMPTS, max_new_tokens=5, generator=seeded_generators(0, 4))
    assert _same_rows(batch, _alone(chain, PROMPTS, max_new_tokens=5))


def test_the_row_check_rejects_a_model_that_ignores_the_padding(skewed):
    """Wrong variant: the model claims to take the mask but reads the padding as symbols."""
    blind = TokenDenoiser(lambda x, t, attention_mask=None: skewed._masked.fn(x, t), mask_id=3,
                          vocab_size=3, time_conditioned=False, padding=True)
    prompts = [[], [0, 2, 1, 1, 2, 0]] * 4  # a Markov chain: only an empty prompt sees the pad
    alone = _alone(skewed, prompts, max_new_tokens=4)
    batch = generate(skewed, prompts, max_new_tokens=4, generator=seeded_generators(0, 8))
    assert _same_rows(batch, alone)
    batch = generate(blind, prompts, max_new_tokens=4, generator=seeded_generators(0, 8))
    assert not _same_rows(batch, alone)


def test_padded_logits_match_the_row_alone(chain, tiny):
    """Left padding with attention mask and per-row positions: the logits of a row alone."""
    x = torch.tensor([[2, 2, 1, 0, 3, 3], [1, 0, 3, 3, 3, 3]])
    real = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    torch.testing.assert_close(chain(x, 1.0, attention_mask=real)[0, 2:], chain(x[:1, 2:], 1.0)[0])
    m = tiny.mask_id
    x = torch.tensor([[0, 0, 0] + tiny.encode('{"a":') + [m] * 8])
    real = torch.arange(x.shape[1]) >= 3
    alone = tiny(x[:, 3:], 1.0)
    torch.testing.assert_close(tiny(x, 1.0, attention_mask=real[None])[:, 3:], alone,
                               atol=1e-5, rtol=1e-5)
    # wrong variant: the padding seen (no mask, positions from the canvas start)
    assert (tiny(x, 1.0)[:, 3:].exp() - alone.exp()).abs().max() > 1e-2


def test_ragged_batch_gives_the_rows_alone_on_tiny_json(tiny):
    prompts = ['{"name":"', "{", '{"id":1,"tags":["']
    ids = [tiny.encode(p) for p in prompts]
    for kw in (dict(max_new_tokens=16, sampler="ancestral"),
               dict(length=32, sampler="low_confidence", block_length=8)):
        batch = generate(tiny, prompts, generator=seeded_generators(0, 3), **kw)
        assert _same_rows(batch, _alone(tiny, ids, **kw))
    # wrong variant: the network run on the padded canvas without mask or per-row positions
    blind = TokenDenoiser(lambda x, t, attention_mask=None: tiny.network(x), mask_id=tiny.mask_id,
                          vocab_size=tiny.vocab_size, time_conditioned=False, padding=True)
    kw = dict(max_new_tokens=16, sampler="ancestral")
    batch = generate(blind, ids, generator=seeded_generators(0, 3), **kw)
    assert not _same_rows(batch, _alone(tiny, ids, **kw))


TEMPLATE = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}h{% endif %}")


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny BERT masked LM, its tokenizer (no chat template) and a saved folder whose
    tokenizer has one."""
    d = tmp_path_factory.mktemp("bert-chat")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefgh")
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=32)
    model = transformers.BertForMaskedLM(cfg).eval()
    model.save_pretrained(d)
    chat_tok = transformers.BertTokenizer(str(d / "vocab.txt"))
    chat_tok.chat_template = TEMPLATE
    chat_tok.save_pretrained(d)
    return d, model, transformers.BertTokenizer(str(d / "vocab.txt"))


def test_transformers_adapter_pads_with_mask_and_positions(bert):
    """A padded row's logits equal the row alone (positions counted from its first real
    token); without position_ids (wrong variant) they do not."""
    _, model, tok = bert
    lm = MaskedLM(model, tok)
    assert lm.takes_padding and lm.pad_id == 0 and lm.eos_id is None
    x = torch.tensor([[0, 0, 5, 6, 4, 4], [7, 5, 6, 4, 4, 4]])
    real = torch.tensor([[False, False, True, True, True, True], [True] * 6])
    alone = lm(x[:1, 2:], 1.0)
    torch.testing.assert_close(lm(x, 1.0, attention_mask=real)[:1, 2:], alone, atol=1e-5,
                               rtol=1e-5)
    lm._kwargs = {"attention_mask"}  # wrong variant: positions from the canvas start
    assert (lm(x, 1.0, attention_mask=real)[:1, 2:].exp() - alone.exp()).abs().max() > 1e-3
    lm._kwargs = {"attention_mask", "position_ids"}
    batch = generate(lm, ["a b", "c", "d e f"], max_new_tokens=4, generator=seeded_generators(0, 3))
    alone = _alone(lm, [lm.encode(p) for p in ["a b", "c", "d e f"]], max_new_tokens=4)
    assert _same_rows(batch, alone)


def test_chat_templates(bert, capsys):
    """``chat=True`` / ``--chat``: apply_chat_template(add_generation_prompt=True); a
    tokenizer without a template is a clear error."""
    folder, model, tok = bert
    with pytest.raises(ValueError, match="has none"):
        generate(MaskedLM(model, tok), "a", max_new_tokens=2, chat=True)
    with pytest.raises(ValueError, match="more than this model's length 32"):
        generate(MaskedLM(model, tok), "a", max_new_tokens=40)
    lm = load_model(str(folder))
    x = generate(lm, ["a b", "c"], max_new_tokens=3, chat=True, temperature=0)
    want = lm.tokenizer.apply_chat_template([{"role": "user", "content": "c"}],
                                            add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
    assert want[-1] == lm.tokenizer.convert_tokens_to_ids("h")  # the generation prompt
    assert x[1, x.shape[1] - 3 - len(want) : x.shape[1] - 3].tolist() == list(want)
    messages = [{"role": "user", "content": "c"}]
    alone = generate(lm, messages, max_new_tokens=3, chat=True, temperature=0)[0]
    assert torch.equal(alone, x[1, -len(alone) :])  # one conversation: the same row
    with pytest.raises(ValueError, match="texts or lists of"):
        generate(lm, [[5, 6]], max_new_tokens=3, chat=True)
    assert cli.main(["generate", "--model", str(folder), "--chat", "--prompt", "c",
                     "--max-new-tokens", "3", "--temperature", "0", "--stream"]) == 0
    assert capsys.readouterr().out.strip() == lm.decode(x[1, -3:])


# ---- EOS exit ----------------------------------------------------------------------------------


class _Eager(_Ends):
    """Wrong variant: every decided position counts as committed, as if masks before it were
    not there (an EOS committed ahead of masked positions ends the row: diffusers' bug)."""

    def committed(self, x):
        self.seen = [-1] * x.shape[0]  # and look again at every step
        return [x.shape[1]] * x.shape[0]


def _ended_intact(early, full, eos, mask_id) -> bool:
    """Each row of the early-exit run equals the full run up to and including its first EOS
    (nothing it had not decided was cut), and holds only EOS after it."""
    for e, f in zip(early, full):
        k = e.tolist().index(eos) if eos in e.tolist() else len(e)
        if (e[: k + 1] == mask_id).any() or not torch.equal(e[: k + 1], f[: k + 1]):
            return False
        if not bool((e[k:] == eos).all()):
            return False
    return True


@pytest.mark.parametrize("sampler,block", [("ancestral", None), ("low_confidence", 4)])
def test_eos_exit_never_cuts_a_row_that_had_not_ended(skewed, sampler, block, monkeypatch):
    kw = dict(max_new_tokens=12, sampler=sampler, block_length=block, return_stats=True)
    full = generate(skewed, PROMPTS * 4, generator=seeded_generators(0, 16), **kw)
    early = generate(skewed, PROMPTS * 4, generator=seeded_generators(0, 16), eos_id=1, **kw)
    gen = full.tokens.shape[1] - 12
    assert _ended_intact(early.tokens[:, gen:], full.tokens[:, gen:], 1, 3)
    assert early.row_evals < 0.8 * full.row_evals  # finished rows left the batch
    monkeypatch.setattr(gen_mod, "_Ends", _Eager)
    eager = generate(skewed, PROMPTS * 4, generator=seeded_generators(0, 16), eos_id=1, **kw)
    assert not _ended_intact(eager.tokens[:, gen:], full.tokens[:, gen:], 1, 3)


def test_eos_exit_on_tiny_json_and_its_end_token(tiny, monkeypatch):
    """tiny-json pads the canvas after the text (id 0), which low-confidence decoding commits
    first: the row ends only when the text before the padding is decided."""
    assert end_token_id(tiny) == 0
    kw = dict(max_new_tokens=40, sampler="low_confidence", generator=None)
    prompts = ['{"name":"', '{"id":']
    full = generate(tiny, prompts, **{**kw, "generator": seeded_generators(0, 2)})
    early = generate(tiny, prompts, eos_id=0, **{**kw, "generator": seeded_generators(0, 2)})
    gen = full.shape[1] - 40
    assert _ended_intact(early[:, gen:], full[:, gen:], 0, tiny.mask_id)
    monkeypatch.setattr(gen_mod, "_Ends", _Eager)
    eager = generate(tiny, prompts, eos_id=0, **{**kw, "generator": seeded_generators(0, 2)})
    assert not _ended_intact(eager[:, gen:], full[:, gen:], 0, tiny.mask_id)


# ---- stop strings ------------------------------------------------------------------------------


class _Pairs:
    """A tokenizer whose tokens are several characters: a stop string starts mid-token."""

    vocab = ["ab", "ba", "a", "b", "c", "cab"]

    def encode(self, text):
        raise ValueError("token ids only")

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids if i < len(self.vocab))


def _pairs_model():
    g = torch.Generator().manual_seed(3)
    table = torch.randn(6, 6, generator=g)

    def fn(x, t):  # each position's logits depend on its left neighbour (or on nothing)
        left = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1).clamp_max(5)
        return table[left]

    return TokenDenoiser(fn, mask_id=6, vocab_size=6, time_conditioned=False, tokenizer=_Pairs())


@pytest.mark.parametrize("stop", ["ba", "bc", "aab"])
def test_stop_strings_never_leak_even_across_token_boundaries(stop):
    model = _pairs_model()
    kw = dict(max_new_tokens=10, sampler="ancestral", return_stats=True)
    full = generate(model, [[4]] * 24, generator=seeded_generators(0, 24), **kw)
    cut = generate(model, [[4]] * 24, generator=seeded_generators(0, 24), stop=stop, **kw)
    hits = 0
    for r in range(24):
        text = full.texts[r]
        want = text[: text.find(stop)] if stop in text else text
        hits += stop in text
        assert cut.texts[r] == want  # cut exactly at the first occurrence
        assert stop not in model.decode(cut.tokens[r, 1:])  # not in the tokens either
    assert hits >= 5  # the stop string did occur, often mid-token


def test_stop_strings_on_tiny_json(tiny):
    out = generate(tiny, ['{"name":"', "{"], max_new_tokens=30, stop=[",", "}"],
                   generator=seeded_generators(0, 2), return_stats=True)
    full = generate(tiny, ['{"name":"', "{"], max_new_tokens=30,
                    generator=seeded_generators(0, 2), return_stats=True)
    for t, f in zip(out.texts, full.texts):
        assert "," not in t and "}" not in t
        assert f.startswith(t) and len(t) < len(f)


# ---- streaming ---------------------------------------------------------------------------------


def _joined(pieces, n):
    texts = [""] * n
    for p in pieces:
        assert isinstance(p, Piece) and p  # committed, non-empty text
        texts[p.row] += p
    return texts


@pytest.mark.parametrize("kw", [dict(sampler="ancestral"),
                                dict(sampler="low_confidence", block_length=8, stop='",'),
                                dict(sampler="threshold", block_length=16, eos_id=0)])
def test_stream_concatenates_to_the_final_text(tiny, kw, monkeypatch):
    prompts = ['{"name":"', "{", '{"a":[1,']
    args = dict(max_new_tokens=32, **kw)
    final = generate(tiny, prompts, generator=seeded_generators(0, 3), return_stats=True, **args)
    pieces = list(generate(tiny, prompts, generator=seeded_generators(0, 3), stream=True, **args))
    assert _joined(pieces, 3) == final.texts
    assert len(pieces) > 3  # the text came in several pieces
    if "stop" in kw:
        assert all('",' not in t for t in final.texts)
    # wrong variant: streaming decided text with undecided gaps in it
    monkeypatch.setattr(gen_mod, "_Ends", _Eager)
    eager = generate(tiny, prompts, generator=seeded_generators(0, 3), stream=True, **args)
    assert _joined(eager, 3) != final.texts


def test_single_row_stream_joins_to_a_string(tiny):
    text = "".join(generate(tiny, '{"name":"', max_new_tokens=20, stream=True,
                            generator=seeded_generators(0, 1)))
    out = generate(tiny, '{"name":"', max_new_tokens=20, generator=seeded_generators(0, 1),
                   return_stats=True)
    assert text == out.texts[0] == tiny.decode(out.tokens[0, 9:])


# ---- bad input and the CLI ---------------------------------------------------------------------


@pytest.mark.parametrize("kw,err,match", [
    (dict(prompt=[]), ValueError, "prompt list is empty"),
    (dict(prompt=[[1], [2]], n=3), ValueError, "got 2 prompts for n=3"),
    (dict(prompt=[[1, 2, 0, 1, 2]], length=4), ValueError, "longer than length=4"),
    (dict(prompt=[[1]], length=8, max_new_tokens=4), ValueError, "not both"),
    (dict(prompt=[[1]], max_new_tokens=6, block_length=4), ValueError, "divide max_new_tokens"),
    (dict(prompt=[[1]], max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(prompt=[[1], [1, 2]], max_new_tokens=4, sampler="theta_trapezoidal", steps=2),
     ValueError, "left padding"),
    (dict(prompt=[[1], [1, 2]], max_new_tokens=4, guidance_scale=2.0), ValueError, "one length"),
    (dict(stop=""), ValueError, "non-empty"),
    (dict(stop=["}", ""]), ValueError, "non-empty"),
    (dict(stop="}"), ValueError, "needs a tokenizer"),
    (dict(eos_id=3), ValueError, "eos_id"),
    (dict(stream=True, return_stats=True), ValueError, "stream=True returns"),
    (dict(chat=True, prompt="a"), ValueError, "chat template"),
])
def test_bad_input_is_a_clear_error(chain, kw, err, match):
    with pytest.raises(err, match=match):
        generate(chain, **{"length": None, **kw})


def test_constraints_in_a_ragged_batch(tiny):
    from reverie.discrete.constraints import Regex

    kw = dict(max_new_tokens=12, sampler="low_confidence", constraint=Regex(r'[A-Z][a-z]{2,6}"}'))
    prompts = ['{"name":"', '{"id":1,"n":"']
    batch = generate(tiny, prompts, generator=seeded_generators(0, 2), **kw)
    assert _same_rows(batch, _alone(tiny, [tiny.encode(p) for p in prompts], **kw))


def test_tiny_json_canvas_limit(tiny):
    with pytest.raises(ValueError, match="more than this model's length 64"):
        generate(tiny, ["{" * 40, "{"], max_new_tokens=30)


def test_cli_streams_stops_and_batches_ragged_prompts(capsys, tmp_path):
    out = tmp_path / "s.jsonl"
    assert cli.main(["generate", "--prompt", '{"name":"', "--prompt", "{", "--max-new-tokens",
                     "30", "--stop", '",', "--stream", "--threads", "1", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    texts = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert lines == texts and texts[0].startswith('{"name":"') and texts[1].startswith("{")
    assert all('",' not in t for t in texts)
    assert cli.main(["generate", "--prompt", "{", "--max-new-tokens", "30", "--eos",
                     "--no-progress", "--threads", "1"]) == 0
    assert "\x00" not in capsys.readouterr().out
    assert cli.main(["generate", "--chat", "--prompt", "x", "--threads", "1"]) == 2
    assert "chat template" in capsys.readouterr().err


def test_cancel_stops_before_the_next_model_call():
    from reverie.discrete.generate import Cancelled

    model = load_model("tiny-json")
    calls = []
    net = model.network
    hook = net.register_forward_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(Cancelled):
            generate(model, length=16, steps=16, cancel=lambda: len(calls) >= 3)
        assert len(calls) == 3  # not one model call after the answer turned true
        calls.clear()
        out = generate(model, length=16, steps=16, cancel=lambda: False)  # never: runs to the end
        assert out.shape == (1, 16) and len(calls) > 3  # (skipped steps: unchanged input)
    finally:
        hook.remove()
