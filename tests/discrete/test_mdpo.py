"""MDPO at toy scale (reverie.discrete.mdpo) on the exact chain: its step advantages against a
hand computation of the released code's formula, rollouts of the revising RCR sampler, and
training on its own trajectories: the mean reward climbs from the chain's exact mean to the
reward's maximum; with the advantages' sign flipped (the reward negated) it falls instead."""

from __future__ import annotations

import pytest
import torch

from reverie.discrete import TokenDenoiser
from reverie.discrete.mdpo import advantages, mdpo_step, rollout

L, V = 4, 3


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


W = torch.randn(L, V, generator=gen(3))


def reward(x: torch.Tensor) -> torch.Tensor:
    return W[torch.arange(L), x].sum(-1).double()


def policy(chain):
    """The chain's exact denoiser plus a zero-initialised MLP correction of its logits."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(L * (V + 1), 64), torch.nn.Tanh(),
                              torch.nn.Linear(64, L * V))
    torch.nn.init.zeros_(net[2].weight)
    torch.nn.init.zeros_(net[2].bias)

    def fn(x, t):
        onehot = torch.nn.functional.one_hot(x, V + 1).float().flatten(1)
        return chain(x, t) + net(onehot).reshape(-1, L, V)

    return net, TokenDenoiser(fn, mask_id=V, vocab_size=V)


def test_advantages_follow_the_released_formula():
    r = torch.tensor([[0.0, 1.0, 1.0, 3.0], [1.0, 1.0, 2.0, 2.0]], dtype=torch.float64)
    # change r_s - r_{s-1} (r_0 first) + mean of r_{s+1..S} (r_S last), by hand
    raw = torch.tensor([[0 + 5 / 3, 1 + 2.0, 0 + 3.0, 2 + 3.0],
                        [1 + 5 / 3, 0 + 2.0, 1 + 2.0, 0 + 2.0]], dtype=torch.float64)
    want = (raw - raw.mean(0)) / (raw.std(0) + 1e-4)
    assert torch.allclose(advantages(r, 2), want)
    assert not torch.allclose(advantages(r.flip(1), 2), want)
    with pytest.raises(ValueError, match="groups of 3"):
        advantages(r, 3)


def test_rollouts_of_rcr_revise_decided_tokens(chain):
    _, model = policy(chain)
    ro = rollout(model, reward, 400, L, steps=L, generator=gen())
    masked_again = (ro.canvases[:-1] != V) & (ro.canvases[1:] == V)
    assert int(masked_again.sum()) > 0  # RCR masked some decided tokens again
    plain = rollout(model, reward, 400, L, steps=L, sampler="low_confidence", generator=gen())
    assert int(((plain.canvases[:-1] != V) & (plain.canvases[1:] == V)).sum()) == 0
    assert torch.equal(ro.estimates[-1], ro.samples) and bool((ro.samples < V).all())
    assert torch.allclose(ro.rewards[:, -1], reward(ro.samples))


@pytest.mark.parametrize("sign", [1, -1])
def test_training_on_its_own_trajectories_moves_the_reward(chain, sign):
    """60 MDPO iterations (8 groups of 16): from the chain's exact mean reward the policy's
    mean reward reaches the reward's maximum within 0.1; with the reward negated (the sign of
    every advantage flipped) it falls below the exact mean instead."""
    seqs, p = chain.joint(L)
    exact_mean, best = float((p * reward(seqs)).sum()), float(reward(seqs).max())
    net, model = policy(chain)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    g = gen(1)
    for _ in range(60):
        mdpo_step(model, lambda x: sign * reward(x), opt, length=L, generator=g)
    after = float(rollout(model, reward, 1000, L, generator=gen(9)).rewards[:, -1].mean())
    if sign == 1:
        assert after > best - 0.1
    else:
        assert after < exact_mean - 1.0


def test_a_reward_of_the_wrong_shape_is_refused(chain):
    _, model = policy(chain)
    with pytest.raises(ValueError, match="one value per sequence"):
        rollout(model, lambda x: reward(x)[:, None], 8, L)
