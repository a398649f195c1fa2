"""Samplers that change decided tokens: RDM / MDPO re-masking and LLaDA2.1-style token editing,
on the exact sequence models (reverie.reference)."""

import dataclasses

import _exact as E
import pytest
import torch

from reverie.discrete import SAMPLERS, generate
from reverie.reference import HiddenMarkovModel

L = 8
N = 400

# each revising sampler, its options with revision on, and its base sampler with the options
# under which it must equal the base token for token (revision off at the edge value)
CASES = {
    "rdm": ({}, "low_confidence", {"max_remask": 0}),
    "rcr": ({}, "low_confidence", {"max_remask": 0}),
    # a low M2T threshold commits inconsistent neighbours in parallel: edits fix some
    "token_edit": (
        {"threshold": 0.1, "edit_threshold": 0.5}, "threshold", {"threshold": 0.1,
                                                                  "edit_threshold": 1.0},
    ),
}
KW = dict(length=L, steps=4, n=N, block_length=L)  # 4 steps in one block of 8


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module", params=["chain", "hmm"])
def model(request, chain):
    if request.param == "chain":
        return chain.denoiser()
    g = torch.Generator().manual_seed(5)
    hmm = HiddenMarkovModel(torch.rand(2, generator=g), 3 * torch.rand(2, 2, generator=g),
                            3 * torch.rand(2, 3, generator=g))
    return hmm.denoiser()


def _counting(name, log):
    """SAMPLERS[name] recording, per step, how many decided tokens it masked again / changed."""
    base = SAMPLERS[name]

    def decide(ctx):
        c = base.decide(ctx)
        rev = torch.zeros_like(ctx.active) if c.revise is None else c.revise
        assert not bool((rev & ~ctx.decided).any())  # only decided tokens are revised
        log.append((int((rev & (c.tokens == ctx.mask_id)).sum()),
                    int((rev & (c.tokens != ctx.mask_id)).sum())))
        return c

    return dataclasses.replace(base, decide=decide)


@pytest.mark.parametrize("name", list(CASES))
def test_revision_off_equals_the_base_sampler_and_on_differs(model, name):
    """At the edge value (max_remask=0, edit_threshold=1) the sampler is its base sampler token
    for token; with revision on the same draws give other sequences (the check can fail)."""
    on, base, off = CASES[name]
    kw = KW
    ref = generate(model, sampler=base, generator=_gen(), **{**kw, **{
        k: v for k, v in off.items() if k in SAMPLERS[base].options}})
    same = generate(model, sampler=name, generator=_gen(), **kw, **off)
    other = generate(model, sampler=name, generator=_gen(), **kw, **on)
    assert torch.equal(same, ref)
    assert not torch.equal(other, ref)
    assert bool(((other >= 0) & (other < model.vocab_size)).all())  # valid: no mask left


@pytest.mark.parametrize("name", list(CASES))
def test_revisions_happen_and_are_counted(model, name):
    """Decided tokens are actually masked again (rdm, rcr) or changed (token_edit)."""
    on = CASES[name][0]
    log = []
    x = generate(model, sampler=_counting(name, log), generator=_gen(), **KW, **on)
    remasked, edited = map(sum, zip(*log))
    assert (edited if name == "token_edit" else remasked) > 0
    assert (remasked if name == "token_edit" else edited) == 0
    assert not bool((x == model.mask_id).any())


def test_revising_samplers_stay_near_their_base_on_the_exact_joint(chain):
    """TV to the exact joint (L=4, steps=2): re-masking keeps low_confidence's error (it is a
    heuristic, not an exact sampler; numbers in docs/discrete.md)."""
    _, p = chain.joint(4)
    n = 4000
    tv = {
        s: E.tv(E.empirical(generate(chain.denoiser(), length=4, steps=2, sampler=s, n=n,
                                     generator=_gen()), 3), p)
        for s in ("low_confidence", "rdm")
    }
    assert abs(tv["rdm"] - tv["low_confidence"]) < 0.03
    assert tv["rdm"] > E.tv_tolerance(p, n)  # not exact: the TV check tells it apart


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"sampler": "rdm", "stream": True}, "changes decided tokens"),
        ({"sampler": "token_edit", "eos_id": 0}, "changes decided tokens"),
        ({"sampler": "rdm", "max_remask": -1}, "max_remask"),
        ({"sampler": "token_edit", "edit_threshold": 1.5}, "edit_threshold"),
    ],
    ids=str,
)
def test_bad_input(chain, kw, match):
    with pytest.raises(ValueError, match=match):
        out = generate(chain.denoiser(), length=L, steps=4, n=2, generator=_gen(), **kw)
        list(out) if kw.get("stream") else None
