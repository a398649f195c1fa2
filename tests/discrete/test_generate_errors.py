"""Bad input to generate and the token denoiser: clear errors."""

import pytest
import torch

from reverie.discrete import SAMPLERS, TokenDenoiser, UniformProcess, generate


def _model(v=3, mask_id=3, **kw):
    return TokenDenoiser(lambda x, t: torch.zeros(*x.shape, v), mask_id=mask_id, vocab_size=v, **kw)


def test_prompt_longer_than_length():
    with pytest.raises(ValueError, match="longer than length=4"):
        generate(_model(), prompt=[0, 1, 2, 0, 1], length=4, steps=1)


def test_block_length_must_divide_length():
    with pytest.raises(ValueError, match="block_length=3 must divide length=8"):
        generate(_model(), length=8, steps=8, block_length=3)


@pytest.mark.parametrize(
    "sampler,steps,match",
    [
        ("ancestral", 0, "steps must be at least"),
        ("low_confidence", 9, "between 1 and the number of generated tokens"),
        ("first_hitting", 3, "exactly one token per step"),
        ("threshold", 0, "steps must be at least"),
    ],
)
def test_steps_out_of_range(sampler, steps, match):
    with pytest.raises(ValueError, match=match):
        generate(_model(), length=8, steps=steps, sampler=sampler)


def test_steps_fewer_than_blocks():
    with pytest.raises(ValueError, match="number of blocks"):
        generate(_model(), length=8, steps=1, block_length=4)


def test_non_integer_arguments():
    with pytest.raises(TypeError, match="steps must be an integer"):
        generate(_model(), length=8, steps=2.5)
    with pytest.raises(TypeError, match="length must be an integer"):
        generate(_model(), length="8", steps=2)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        generate(_model(), length=8, steps=2, n=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(_model(), length=8, steps=2, temperature=-1.0)


def test_wrong_vocabulary_size():
    bad = TokenDenoiser(lambda x, t: torch.zeros(*x.shape, 5), mask_id=3, vocab_size=3)
    with pytest.raises(ValueError, match="logits over 5 tokens.*vocab_size=3"):
        generate(bad, length=4, steps=4)
    wrong_shape = TokenDenoiser(lambda x, t: torch.zeros(x.shape[0], 3), mask_id=3, vocab_size=3)
    with pytest.raises(ValueError, match="must return logits of shape"):
        generate(wrong_shape, length=4, steps=4)


def test_missing_mask_id():
    with pytest.raises(ValueError, match="needs a mask token"):
        TokenDenoiser(lambda x, t: x, mask_id=None, vocab_size=3)
    with pytest.raises(ValueError, match="mask_id must be an integer"):
        TokenDenoiser(lambda x, t: x, mask_id=9, vocab_size=3)
    uni = TokenDenoiser(
        lambda x, t: torch.zeros(*x.shape, 3), mask_id=None, vocab_size=3, process=UniformProcess()
    )
    with pytest.raises(ValueError, match="works with masked diffusion"):
        generate(uni, length=4, steps=4, sampler="low_confidence")


def test_unknown_sampler_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown sampler 'fast'.*ancestral.*first_hitting"):
        generate(_model(), length=4, steps=4, sampler="fast")
    assert "theta_trapezoidal" in SAMPLERS


def test_unknown_option_and_bad_generator():
    with pytest.raises(ValueError, match="has no option"):
        generate(_model(), length=4, steps=4, sampler="ancestral", threshold=0.5)
    with pytest.raises(ValueError, match="one per sample"):
        generate(_model(), length=4, steps=4, n=3, generator=[torch.Generator()])
    with pytest.raises(TypeError, match="token denoiser"):
        generate(lambda x, t: x, length=4, steps=4)


def test_bad_prompts():
    with pytest.raises(ValueError, match="mask token"):
        generate(_model(v=4, mask_id=3), prompt=[0, 3], length=4, steps=2)
    with pytest.raises(ValueError, match="must lie in"):
        generate(_model(), prompt=[0, 7], length=4, steps=2)
    with pytest.raises(ValueError, match="no tokenizer"):
        generate(_model(), prompt="ab", length=4, steps=2)
    with pytest.raises(TypeError, match="integer token ids"):
        generate(_model(), prompt=[0.5], length=4, steps=2)


def test_nan_logits_are_reported():
    bad = TokenDenoiser(
        lambda x, t: torch.full((*x.shape, 3), float("nan")), mask_id=3, vocab_size=3
    )
    with pytest.raises(FloatingPointError, match="NaN"):
        generate(bad, length=4, steps=4)


def test_adablock_without_delimiters():
    with pytest.raises(ValueError, match="delimiter"):
        generate(_model(), length=8, steps=8, sampler="adablock")


def test_prompt_equal_to_length_returns_it():
    out = generate(_model(), prompt=[0, 1, 2, 0], length=4, n=2)
    assert out.tolist() == [[0, 1, 2, 0]] * 2
