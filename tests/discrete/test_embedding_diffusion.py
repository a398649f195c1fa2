"""Embedding diffusion (SED / Plaid) against an exact model: a fixed embedding table and a
3-token Markov chain of length 3 (27 sequences), whose token posterior given a noisy
embedding is a finite sum (exact_token_logits)."""

import itertools
import math

import pytest
import torch

from reverie.discrete.embedding import (
    PlaidEmbedding,
    denoised,
    exact_token_logits,
    nearest_tokens,
    plaid_nelbo,
    plaid_nelbo_terms,
    sample,
    sed_loss,
    sigma_grid,
)

V, L = 3, 3
SEQS = torch.tensor(list(itertools.product(range(V), repeat=L)))
P0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
T = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]], dtype=torch.float64)
PROBS = P0[SEQS[:, 0]] * T[SEQS[:, 0], SEQS[:, 1]] * T[SEQS[:, 1], SEQS[:, 2]]
TABLE = torch.randn(V, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
TABLE = TABLE / TABLE.norm(dim=-1, keepdim=True)
EXACT = exact_token_logits(SEQS, PROBS, TABLE)
ENTROPY = -(PROBS * PROBS.log()).sum().item()


def _tv(x):
    counts = torch.bincount((x * torch.tensor([9, 3, 1])).sum(-1), minlength=27).double()
    return 0.5 * (counts / len(x) - PROBS).abs().sum().item()


def _wrong_scale(z, sigma, prev):  # the exact model told a noise level 15% off
    return EXACT(z, sigma * 1.15, prev)


def _point(z, sigma, prev):  # a point estimate: all mass on the most likely token
    return torch.nn.functional.one_hot(EXACT(z, sigma, prev).argmax(-1), V).double() * 50


def test_sampling_reproduces_the_token_law():
    """4000 samples, 30 steps: TV at the sampling-noise floor (~0.035 for 4000 draws of 27
    outcomes); siblings: a point-estimate denoiser collapses, no rounding gives no tokens."""
    grid = sigma_grid(0.02, 20.0, 30)
    for rounding in ("nearest", "argmax"):
        x = sample(EXACT, TABLE, 4000, L, grid, rounding=rounding,
                   generator=torch.Generator().manual_seed(1))
        assert _tv(x) < 0.055
    g = torch.Generator().manual_seed(1)
    assert _tv(sample(_point, TABLE, 4000, L, grid, generator=g)) > 0.15
    z = sample(EXACT, TABLE, 500, L, grid, rounding=None, generator=g)
    assert (z - TABLE[nearest_tokens(z, TABLE)]).norm(dim=-1).max() > 1e-3  # not on the table


def test_self_conditioning_feeds_the_previous_estimate():
    seen, outs = [], []

    def model(z, sigma, prev):
        seen.append(prev.clone())
        outs.append(EXACT(z, sigma, prev))
        return outs[-1]

    sample(model, TABLE, 8, L, sigma_grid(0.05, 10.0, 5))
    assert torch.equal(seen[0], torch.zeros_like(seen[0]))
    for i in range(1, 5):
        assert torch.allclose(seen[i], denoised(outs[i - 1], TABLE))
    seen.clear()
    sample(model, TABLE, 8, L, sigma_grid(0.05, 10.0, 5), self_condition=False)
    assert all(not s.any() for s in seen)  # sibling: without self-conditioning, zeros

    seen.clear()
    tokens = SEQS[torch.multinomial(PROBS, 16, True, generator=torch.Generator().manual_seed(0))]
    sigma = torch.full((16,), 0.5, dtype=torch.float64)
    sed_loss(model, tokens, TABLE, sigma, self_condition_p=1.0)
    assert len(seen) == 2 and seen[1].abs().sum(-1).gt(0).all()  # graded call sees the estimate
    seen.clear()
    sed_loss(model, tokens, TABLE, sigma, self_condition_p=0.0)
    assert len(seen) == 1 and not seen[0].any()


def test_sed_loss_is_smallest_at_the_exact_posterior():
    """Cross-entropy is a proper scoring rule: the exact posterior's expected loss is below a
    15%-off noise level's and a point estimate's (same draws for all three)."""
    g = torch.Generator().manual_seed(0)
    tokens = SEQS[torch.multinomial(PROBS, 20000, True, generator=g)]
    sigma = 0.05 * torch.exp(torch.rand(20000, generator=g, dtype=torch.float64) * 4)

    def loss(fn):
        return sed_loss(fn, tokens, TABLE, sigma, generator=torch.Generator().manual_seed(1),
                        self_condition_p=0.0).mean().item()

    exact = loss(EXACT)
    assert exact < loss(_wrong_scale) - 0.01
    assert exact < loss(lambda z, s, p: _point(z, s, p) / 10) - 0.1


def test_plaid_nelbo_equals_the_entropy_with_the_exact_denoiser():
    """With the exact posterior mean the bound is tight (I-MMSE): E[NELBO] = H(x) up to the
    prior and reconstruction terms (~0.004 nats here) and Monte Carlo error; siblings: a
    15%-off noise level and a point estimate leave a gap."""
    g = torch.Generator().manual_seed(3)
    tokens = SEQS[torch.multinomial(PROBS, 20000, True, generator=g)]

    def nelbo(fn):
        return plaid_nelbo(fn, tokens, TABLE, 0.02, 20.0,
                           generator=torch.Generator().manual_seed(4)).mean().item()

    exact = nelbo(EXACT)
    assert abs(exact - ENTROPY) < 0.1
    # same draws: the paired gap of a 15%-off noise level is ~0.055 +- 0.007 over seeds
    assert nelbo(_wrong_scale) > exact + 0.025
    assert nelbo(_point) > ENTROPY + 1.0


def test_plaid_gradient_to_the_table_and_end_points_matches_finite_differences():
    """Plaid learns E, gamma_min, gamma_max: with the draws fixed by the seed the bound is a
    smooth function of them and autograd must match central differences; sibling: a model
    handed the noise level cut from the graph (same values) gets a wrong end-point gradient."""
    tokens = SEQS[torch.multinomial(PROBS, 64, True, generator=torch.Generator().manual_seed(5))]

    def bound(params, cut=False):
        table, g_min, g_max = params
        exact = exact_token_logits(SEQS, PROBS, table)
        fn = (lambda z, s, p: exact(z, s.detach(), p)) if cut else exact
        return plaid_nelbo(fn, tokens, table, torch.exp(g_min / 2), torch.exp(g_max / 2),
                           generator=torch.Generator().manual_seed(6)).mean()

    params = [TABLE.clone(), torch.tensor(2 * math.log(0.3), dtype=torch.float64),
              torch.tensor(2 * math.log(3.0), dtype=torch.float64)]

    def grads(cut):
        leaves = [q.clone().requires_grad_() for q in params]
        return torch.autograd.grad(bound(leaves, cut), leaves)

    fd, h = [], 1e-6
    for q in params:
        flat = q.reshape(-1)
        col = []
        for i in range(flat.numel()):
            flat[i] += h
            up = bound(params).item()
            flat[i] -= 2 * h
            down = bound(params).item()
            flat[i] += h
            col.append((up - down) / (2 * h))
        fd.append(torch.tensor(col, dtype=torch.float64).reshape(q.shape))
    for a, f in zip(grads(False), fd):
        assert torch.allclose(a, f, rtol=1e-5, atol=1e-6)
    cut = grads(True)
    assert (cut[1] - fd[1]).abs() > 0.05 and (cut[2] - fd[2]).abs() > 0.05


def test_plaid_bound_stays_above_the_entropy_for_any_end_points():
    """E[NELBO] >= H(x) for every schedule (it bounds the model's -log p): the exact denoiser
    with coarse end points pays > H, the wide schedule is ~H; sibling: the bound without its
    reconstruction term falls below the entropy, and the check catches it."""
    g = torch.Generator().manual_seed(7)
    tokens = SEQS[torch.multinomial(PROBS, 20000, True, generator=g)]

    def terms(s_min, s_max):
        return [t.mean().item() for t in plaid_nelbo_terms(
            EXACT, tokens, TABLE, s_min, s_max, generator=torch.Generator().manual_seed(8))]

    for s_min, s_max in ((0.02, 20.0), (0.3, 20.0), (0.02, 1.0), (0.5, 2.0)):
        assert sum(terms(s_min, s_max)) > ENTROPY - 0.05
    assert sum(terms(0.5, 2.0)) > ENTROPY + 0.3  # coarse end points leave a gap
    prior, diffusion, _ = terms(0.5, 2.0)
    assert prior + diffusion < ENTROPY - 0.5  # sibling: no reconstruction term
    learned = PlaidEmbedding(V, 4, sigma_min=0.5, sigma_max=2.0)
    assert torch.allclose(learned.sigma_min, torch.tensor(0.5, dtype=torch.float64))
    assert torch.allclose(learned.sigma_max, torch.tensor(2.0, dtype=torch.float64))


COND, MASK = torch.tensor([0, 2, 0]), torch.tensor([False, True, False])  # middle token given


def _cond_tv(x):  # TV to the exact law of the sequence given x[1] = 2 (9 outcomes)
    p = PROBS * (SEQS[:, 1] == 2)
    counts = torch.bincount((x * torch.tensor([9, 3, 1])).sum(-1), minlength=27).double()
    return 0.5 * (counts / len(x) - p / p.sum()).abs().sum().item()


def test_span_masking_infills_the_exact_conditional_law():
    """SED's span masking with the exact conditional denoiser: 4000 infilled samples, 30
    steps, TV to p(x0, x2 | x1 = 2) ~0.03-0.05 (floor ~0.025 plus ~0.02 step bias: 0.028
    with 40000 draws, 0.010 at 100 steps); siblings: a model that ignores the mask (reads
    the clean embedding as noisy) ~0.13, the mask shifted by one position ~0.84."""
    grid, g = sigma_grid(0.02, 20.0, 30), torch.Generator().manual_seed(0)
    x = sample(EXACT, TABLE, 4000, L, grid, condition=COND, mask=MASK, generator=g)
    assert _cond_tv(x) < 0.07 and (x[:, 1] == 2).all()

    def ignores_mask(z, sigma, prev, mask):
        return EXACT(z, sigma, prev)

    assert _cond_tv(sample(ignores_mask, TABLE, 4000, L, grid, condition=COND, mask=MASK,
                           generator=torch.Generator().manual_seed(0))) > 0.1
    assert _cond_tv(sample(EXACT, TABLE, 4000, L, grid, condition=COND, mask=MASK.roll(1),
                           generator=torch.Generator().manual_seed(0))) > 0.5


def test_span_masked_loss_grades_generated_positions_only():
    """With a mask the loss skips the conditioning positions (a model wrong only there pays
    nothing) and the exact conditional denoiser beats one that ignores the mask."""
    g = torch.Generator().manual_seed(0)
    tokens = SEQS[torch.multinomial(PROBS, 4000, True, generator=g)]
    sigma = 0.05 * torch.exp(torch.rand(4000, generator=g, dtype=torch.float64) * 4)

    def loss(fn, mask=MASK):
        return sed_loss(fn, tokens, TABLE, sigma, mask=mask, self_condition_p=0.5,
                        generator=torch.Generator().manual_seed(1)).mean().item()

    def wrong_at_given(z, sigma, prev, mask=None):  # logits rolled at position 1
        out = EXACT(z, sigma, prev, mask)
        return torch.where(MASK[:, None], out.roll(1, -1), out)

    exact = loss(EXACT)
    assert loss(wrong_at_given) == pytest.approx(exact, abs=1e-12)
    # sibling: graded on every position (no mask), the same model pays
    assert loss(wrong_at_given, mask=None) > loss(EXACT, mask=None) + 0.1
    assert exact < loss(lambda z, s, p, mask: EXACT(z, s, p)) - 0.05


def test_bad_input():
    with pytest.raises(ValueError, match="embedding matrix"):
        nearest_tokens(torch.zeros(1, 2, 4), torch.zeros(3))
    with pytest.raises(ValueError, match="rounding"):
        sample(EXACT, TABLE, 2, L, sigma_grid(0.1, 1, 2), rounding="floor")
    with pytest.raises(ValueError, match="sigma_min"):
        sigma_grid(1.0, 0.5, 3)
    with pytest.raises(ValueError, match="condition and mask"):
        sample(EXACT, TABLE, 2, L, sigma_grid(0.1, 1, 2), mask=MASK)
    with pytest.raises(ValueError, match="probs"):
        exact_token_logits(SEQS, PROBS[:5], TABLE)
    with pytest.raises(ValueError, match="sigma_min"):
        plaid_nelbo(EXACT, SEQS[:2], TABLE, 2.0, 1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        PlaidEmbedding(V, 4, sigma_min=0.0)
