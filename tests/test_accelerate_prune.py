"""reverie.accelerate.prune (LD-Pruner, paper 2) on the bundled two-moons MLP: removing half of
the channel groups chosen by the LD score keeps the samples closer (sliced-W2) to the unpruned
model's law than removing random groups of the same count; fine-tuning closes more of the gap."""

import copy

import pytest
import torch

import reverie
from reverie.accelerate import METHODS
from reverie.accelerate.prune import ld_prune, ld_score, prunable_units
from reverie.metrics import sliced_wasserstein


@pytest.fixture(scope="module")
def setup():
    model = reverie.load("two-moons")
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(2))
    law = reverie.sample(model.denoiser, noise, sampler="dpmpp_2m", steps=20)

    def sw(den):
        x = reverie.sample(den, noise, sampler="dpmpp_2m", steps=20)
        return sliced_wasserstein(x, law, 128, torch.Generator().manual_seed(3))

    return model, sw


def test_ld_ranking_beats_random_pruning_at_the_same_ratio(setup):
    model, sw = setup
    ld = ld_prune(model.denoiser, 0.5, iters=0, samples=300, steps=6)
    assert len(ld.removed) == 12 and len(ld.scores) == 24
    assert ld.params[1] < 0.6 * ld.params[0]
    got = sw(ld.denoiser)
    rand = [ld_prune(model.denoiser, 0.5, iters=0, samples=300, steps=6, random=True, seed=k)
            for k in range(3)]
    assert all(r.params == ld.params for r in rand)
    assert got < 0.8 * min(sw(r.denoiser) for r in rand)  # sibling: random units are worse
    tuned = ld_prune(model.denoiser, 0.5, iters=60, samples=300, steps=6)
    assert tuned.removed == ld.removed and sw(tuned.denoiser) < 0.7 * got
    assert sw(ld_prune(model.denoiser, 0.0, iters=0, samples=200, steps=6).denoiser) < 0.05


def test_ld_score_and_errors(setup):
    model, _ = setup
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))
    assert ld_score(x, x) == 0 and ld_score(x, x + 0.1) == pytest.approx(0.1 * 2**0.5, 1e-5)
    assert ld_score(x, 2 * x) > ld_score(x, 1.1 * x)
    assert len(prunable_units(model.denoiser, 4)) == 12
    for bad in (1.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
            ld_prune(model.denoiser, bad)
    other = copy.copy(model.denoiser)
    other.fn = model.denoiser.fn.with_net(torch.nn.Identity())
    with pytest.raises(TypeError, match="ld_prune prunes reverie MLP denoisers"):
        ld_prune(other, 0.5)
    assert METHODS["ld_pruner"].kind == "prune"
