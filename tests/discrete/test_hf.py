"""The transformers adapter on tiny randomly initialised models built from configs (no download)."""

import types

import pytest
import torch
import transformers  # noqa: E402 -- a dev dependency: a missing install fails

from reverie.discrete import MaskedLM, TokenClassifierFreeGuidance, generate, load_model
from reverie.discrete.hf import shift_logits

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefgh")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny BERT masked LM and its tokenizer saved to a local folder."""
    d = tmp_path_factory.mktemp("tiny-bert")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tok = transformers.BertTokenizer(str(d / "vocab.txt"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    model = transformers.BertForMaskedLM(cfg).eval()
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d, model, tok


def test_adapter_matches_the_raw_model_with_subs(saved):
    _, model, tok = saved
    lm = MaskedLM(model, tok)
    assert lm.mask_id == tok.mask_token_id == 4 and lm.vocab_size == len(VOCAB)
    x = torch.tensor([[5, 4, 6, 4, 4]])
    logp = lm(x, 1.0)
    with torch.no_grad():
        raw = model(input_ids=x).logits
    raw[..., 4] = -torch.inf
    want = torch.log_softmax(raw, -1)
    torch.testing.assert_close(logp[0, 1], want[0, 1])  # masked: the model's law, no mask
    assert logp[0, 0, 5] == 0 and bool(torch.isinf(logp[0, 0, :5]).all())  # carry-over
    assert bool(torch.isinf(logp[..., 4]).all())


def test_from_pretrained_local_folder_with_a_text_prompt(saved):
    d, _, _ = saved
    lm = load_model(str(d))
    assert isinstance(lm, MaskedLM)
    x = generate(
        lm,
        prompt="a b",
        length=8,
        steps=6,
        sampler="low_confidence",
        n=3,
        generator=torch.Generator().manual_seed(0),
    )
    assert x.shape == (3, 8) and x[:, :2].tolist() == [[5, 6]] * 3
    assert bool((x != lm.mask_id).all())
    text = lm.decode(x[0])
    assert text.startswith("a b")
    lm2 = MaskedLM.from_pretrained(str(d))
    torch.testing.assert_close(lm2(x, 0.5), lm(x, 0.5))


def test_shifted_logits_dream_style():
    """An AR-initialised model predicts token i+1 from position i; the adapter shifts the
    logits back (on by default for model_type "Dream"), so greedy decoding recovers target."""
    target = torch.tensor([3, 1, 4, 1, 5, 2, 6, 0])

    class ToyDream(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(model_type="Dream", vocab_size=8, mask_token_id=7)
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids):
            b, n = input_ids.shape
            nxt = torch.cat([target[1:n], target[:1]])  # row i predicts target[i + 1]
            logits = torch.full((b, n, 8), -5.0)
            logits.scatter_(-1, nxt.expand(b, -1).unsqueeze(-1), 5.0)
            return types.SimpleNamespace(logits=logits + self.w)

    lm = MaskedLM(ToyDream())
    assert lm.shift and lm.mask_id == 7
    x = generate(lm, prompt=[3], length=8, steps=7, sampler="low_confidence", temperature=0.0)
    assert torch.equal(x[0, :7], target[:7])
    unshifted = MaskedLM(ToyDream(), shift=False)
    y = generate(
        unshifted, prompt=[3], length=8, steps=7, sampler="low_confidence", temperature=0.0
    )
    assert not torch.equal(y[0, :7], target[:7])
    raw = torch.randn(2, 5, 3)
    torch.testing.assert_close(shift_logits(raw)[:, 1:], raw[:, :-1])


def test_shift_on_a_real_transformers_model(saved):
    _, model, tok = saved
    x = torch.tensor([[5, 4, 4, 6, 4]])
    a = MaskedLM(model, tok, shift=True)(x, 1.0)
    raw = model(input_ids=x).logits.detach()
    want = torch.log_softmax(shift_logits(raw).index_fill(-1, torch.tensor([4]), -torch.inf), -1)
    torch.testing.assert_close(a[0, 2], want[0, 2])


def test_classifier_free_guidance(saved):
    _, model, tok = saved
    lm = MaskedLM(model, tok)
    x = torch.tensor([[5, 6, 4, 4, 4], [7, 5, 4, 4, 4]])
    t = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(TokenClassifierFreeGuidance(lm, 1.0, 2)(x, t), lm(x, t))
    xu = x.clone()
    xu[:, :2] = lm.mask_id
    g0 = TokenClassifierFreeGuidance(lm, 0.0, 2)(x, t)
    torch.testing.assert_close(g0[:, 2:], lm(xu, t)[:, 2:], rtol=1e-5, atol=1e-5)
    g2 = TokenClassifierFreeGuidance(lm, 2.0, 2)(x, t)
    lc, lu = lm(x, t), lm(xu, t)
    mix = torch.log_softmax(torch.where(torch.isfinite(lc), 2 * lc - lu, lc), -1)
    torch.testing.assert_close(g2[:, 2:], mix[:, 2:], rtol=1e-5, atol=1e-5)
    assert torch.equal(g2[:, :2].argmax(-1), x[:, :2])  # the prompt stays carried over
    out = generate(
        lm,
        prompt=[5, 6],
        length=5,
        steps=3,
        guidance_scale=3.0,
        n=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert out[:, :2].tolist() == [[5, 6]] * 2


def test_missing_mask_id_is_an_error(saved):
    _, model, _ = saved
    with pytest.raises(ValueError, match="no mask token"):
        MaskedLM(model, None)


def test_from_pretrained_with_dtype(saved):
    d, _, _ = saved
    lm = MaskedLM.from_pretrained(str(d), dtype=torch.float64)
    assert next(lm.model.parameters()).dtype == torch.float64
    assert lm(torch.tensor([[5, 4]]), 1.0).dtype == torch.float32
