"""The clock and block policy a token sampler carries are hooks of generate()."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from reverie.discrete import SAMPLERS, TokenSampler, generate
from reverie.discrete.policies import (
    AdaptiveBlocks,
    FixedBlocks,
    first_hitting_clock,
    grid_clock,
)


def test_names_resolve_to_the_policies():
    s = TokenSampler("x", SAMPLERS["ancestral"].decide, "d", "ancestral", clock="first_hitting",
                     blocks="adaptive")
    assert s.clock is first_hitting_clock and isinstance(s.blocks, AdaptiveBlocks)
    assert SAMPLERS["ancestral"].clock is grid_clock
    assert isinstance(SAMPLERS["ancestral"].blocks, FixedBlocks)
    assert SAMPLERS["first_hitting"].clock is first_hitting_clock
    assert isinstance(SAMPLERS["adablock"].blocks, AdaptiveBlocks)
    with pytest.raises(ValueError, match="unknown clock 'tick'; expected one of grid"):
        TokenSampler("x", SAMPLERS["ancestral"].decide, "d", "ancestral", clock="tick")


def test_a_custom_clock_is_what_generate_uses(chain):
    den = chain.denoiser()
    calls = []

    def counting(process, rows, masked, draw, new_block):
        calls.append(1)
        return grid_clock(process, rows, masked, draw, new_block)

    def late(process, rows, masked, draw, new_block):  # a wrong clock: half-length steps
        t, s = grid_clock(process, rows, masked, draw, new_block)
        return t, torch.where(s > 0, (s + t) / 2, s)

    def run(clock):
        sampler = dataclasses.replace(SAMPLERS["ancestral"], clock=clock)
        return generate(den, length=8, n=64, steps=4, sampler=sampler,
                        generator=torch.Generator().manual_seed(3))

    plain = run(grid_clock)
    assert torch.equal(run(counting), plain) and len(calls) == 4
    assert not torch.equal(run(late), plain)
