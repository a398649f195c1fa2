"""Token denoiser adapter (SUBS), categorical draws and the char tokenizer."""

import math

import pytest
import torch

from reverie.discrete import CharTokenizer, TokenDenoiser
from reverie.discrete._sampling import sample_categorical, uniform


def test_subs_rules_mask_inside_vocab():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, generator=g)
    den = TokenDenoiser(lambda x, t: logits, mask_id=4, vocab_size=5)
    x = torch.tensor([[4, 1, 4, 0], [2, 4, 4, 4]])
    logp = den(x, 0.5)
    assert bool(torch.isinf(logp[..., 4]).all())  # never predict the mask
    masked = x == 4
    want = torch.log_softmax(logits[..., :4], -1)
    torch.testing.assert_close(logp[..., :4][masked], want[masked])
    clean = logp[~masked]  # carry-over: probability 1 on the observed token
    assert torch.equal(clean.argmax(-1), x[~masked]) and bool((clean.max(-1).values == 0).all())
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 4))


def test_subs_with_an_appended_mask_id():
    """MD4 convention: the mask is the extra input id V and has no logit."""
    den = TokenDenoiser(lambda x, t: torch.zeros(*x.shape, 3), mask_id=3, vocab_size=3)
    logp = den(torch.tensor([[3, 1]]), 1.0)
    torch.testing.assert_close(logp[0, 0].exp(), torch.full((3,), 1 / 3))
    assert logp[0, 1].argmax() == 1


def test_time_reaches_the_model_as_a_batch_vector():
    seen = {}

    def fn(x, t):
        seen["t"] = t
        return torch.zeros(*x.shape, 3)

    den = TokenDenoiser(fn, mask_id=3, vocab_size=3)
    den(torch.zeros(4, 2, dtype=torch.long), 0.25)
    assert seen["t"].shape == (4,) and seen["t"].dtype == torch.float32
    with pytest.raises(ValueError, match="t must be a scalar"):
        den(torch.zeros(4, 2, dtype=torch.long), torch.ones(3))
    with pytest.raises(TypeError, match="LongTensor"):
        den(torch.zeros(4, 2), 0.5)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_categorical_draws_follow_the_tempered_law(temperature):
    """Inverse-CDF draws in float64: frequencies of softmax(logp / T), 5-sigma per category,
    and a token of probability 1e-30 never appears."""
    logp = torch.log(torch.tensor([0.6, 0.3, 0.1 - 1e-30, 1e-30], dtype=torch.float64)).float()
    n = 40000
    u = uniform((n,), torch.Generator().manual_seed(1))
    x = sample_categorical(logp.expand(n, 4), u, temperature)
    freq = torch.bincount(x, minlength=4).double() / n
    p = torch.softmax(logp.double() / temperature, -1)
    for k in range(3):
        assert abs(float(freq[k] - p[k])) < 5 * math.sqrt(float(p[k] * (1 - p[k])) / n)
    assert int((x == 3).sum()) == 0 or temperature > 1
    assert torch.equal(
        sample_categorical(logp.expand(3, 4), u[:3], 0.0), torch.zeros(3, dtype=torch.long)
    )


def test_char_tokenizer_round_trip():
    tok = CharTokenizer('{}":ab')
    ids = tok.encode('{"a":"b"}')
    assert tok.decode(ids) == '{"a":"b"}'
    assert tok.decode([0, *ids, tok.mask_token_id, 0]) == '{"a":"b"}'  # pad and mask dropped
    assert tok.vocab_size == 8 and tok.pad_token_id == 0 and tok.mask_token_id == 7
    with pytest.raises(ValueError, match="not in this model's alphabet"):
        tok.encode("z")
    assert CharTokenizer.from_dict(tok.to_dict()).chars == tok.chars
