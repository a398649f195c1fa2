"""Token samplers against the exact joint of a Markov chain (and against their own exact laws)."""

import dataclasses
import math

import _exact as E
import pytest
import torch

from reverie.discrete import SAMPLERS, MaskedProcess, TokenDenoiser, UniformProcess, generate
from reverie.reference import MarkovChain

L = 4
N = 20000


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registry_names():
    expected = {
        "ancestral",
        "first_hitting",
        "low_confidence",
        "topk_margin",
        "entropy",
        "random",
        "threshold",
        "adablock",
        "tau_leaping",
        "theta_trapezoidal",
    }
    assert expected <= set(SAMPLERS)
    with pytest.raises(ValueError, match="ancestral, first_hitting"):
        SAMPLERS["nope"]


def test_first_hitting_reproduces_the_exact_joint(chain):
    """One token at a time in a uniformly random order with exact conditionals is the chain
    rule: the samples follow the exact joint (TV within the sampling-noise bound)."""
    _, p = chain.joint(L)
    x = generate(
        chain.denoiser(), length=L, steps=L, sampler="first_hitting", n=N, generator=_gen()
    )
    assert E.tv(E.empirical(x, 3), p) < E.tv_tolerance(p, N)


@pytest.mark.parametrize(
    "kw",
    [
        {"sampler": "first_hitting", "steps": L, "temperature": 0.85},
        {"sampler": "first_hitting", "steps": L, "temperature": 1.15},
        {"sampler": "ancestral", "steps": L // 2},
        {"sampler": "low_confidence", "steps": L},
    ],
    ids=str,
)
def test_exact_joint_check_rejects_wrong_samplers(chain, kw):
    """The TV check above (tolerance 0.024 at N = 20000; first-hitting measures 0.006) rejects
    first-hitting at temperature 0.85 / 1.15 (TV 0.071 / 0.075), two tokens per ancestral step
    (0.086) and low-confidence ordering (mode seeking, 0.12)."""
    _, p = chain.joint(L)
    x = generate(chain.denoiser(), length=L, n=N, generator=_gen(), **kw)
    assert E.tv(E.empirical(x, 3), p) > E.tv_tolerance(p, N)


@pytest.mark.parametrize("sampler", ["first_hitting", "random"])
def test_one_token_per_step_in_blocks_is_exact(chain, sampler):
    """Semi-autoregressive blocks keep a valid chain-rule order: still the exact joint."""
    _, p = chain.joint(L)
    x = generate(
        chain.denoiser(), length=L, steps=L, sampler=sampler, block_length=2, n=N, generator=_gen(1)
    )
    assert E.tv(E.empirical(x, 3), p) < E.tv_tolerance(p, N)


def test_first_hitting_with_a_prompt_samples_the_exact_conditional(chain):
    _, p = chain.joint(L)
    seqs, _ = chain.joint(L)
    cond = p * (seqs[:, 0] == 2).double()
    cond = cond / cond.sum()
    x = generate(
        chain.denoiser(),
        prompt=[2],
        length=L,
        steps=L - 1,
        sampler="first_hitting",
        n=N,
        generator=_gen(2),
    )
    assert bool((x[:, 0] == 2).all())
    assert E.tv(E.empirical(x, 3), cond) < E.tv_tolerance(cond, N)


def _unmask_ancestral(t, s):
    return (t - s) / t  # linear schedule: (alpha_s - alpha_t) / (1 - alpha_t)


def _unmask_tau(t, s):
    return 1 - math.exp(-(t - s) / t)  # frozen hazard 1/t


@pytest.mark.parametrize(
    "sampler,rule", [("ancestral", _unmask_ancestral), ("tau_leaping", _unmask_tau)]
)
def test_sampler_matches_its_exact_law(chain, sampler, rule):
    """Parallel samplers: the empirical law equals the scheme's exact law (enumerated)."""
    law = E.law_to_vector(E.masked_grid_law(chain, L, 2, rule), chain, L)
    x = generate(chain.denoiser(), length=L, steps=2, sampler=sampler, n=N, generator=_gen(3))
    assert E.tv(E.empirical(x, 3), law) < E.tv_tolerance(law, N)


def test_ancestral_converges_to_the_exact_joint_first_order(chain):
    """The exact law of ancestral sampling approaches the data as steps grow, at order 1."""
    L3 = 3
    _, p = chain.joint(L3)
    tvs = [
        E.tv(E.law_to_vector(E.masked_grid_law(chain, L3, s, _unmask_ancestral), chain, L3), p)
        for s in (1, 2, 4, 8, 16)
    ]
    assert all(b < a for a, b in zip(tvs, tvs[1:]))
    assert tvs[-1] < 0.01
    ratio = tvs[-2] / tvs[-1]
    assert 1.6 < ratio < 2.5  # first order: halves with every doubling


def test_theta_trapezoidal_matches_its_law_and_beats_tau_leaping(chain):
    """theta-trapezoidal: the sampler follows its enumerated law; that law is much closer to
    the data than tau-leaping's at the same step count (KL divergence)."""
    L3 = 3
    theta_law = E.law_to_vector(E.theta_law(chain, L3, 2, 0.5, lambda t: 1 / t), chain, L3)
    x = generate(
        chain.denoiser(), length=L3, steps=2, sampler="theta_trapezoidal", n=N, generator=_gen(4)
    )
    assert E.tv(E.empirical(x, 3), theta_law) < E.tv_tolerance(theta_law, N)
    _, p = chain.joint(L3)

    def kl(q):
        return float((p * (p / q).log()).sum())

    for steps in (2, 4):
        th = E.law_to_vector(E.theta_law(chain, L3, steps, 0.5, lambda t: 1 / t), chain, L3)
        tau = E.law_to_vector(E.masked_grid_law(chain, L3, steps, _unmask_tau), chain, L3)
        assert kl(th) < kl(tau) / 2.5


def _theta_tv_ratios(chain, steps):
    _, p = chain.joint(3)
    tvs = [E.tv(E.law_to_vector(E.theta_law(chain, 3, s, 0.5, lambda t: 1 / t), chain, 3), p)
           for s in steps]
    return [a / b for a, b in zip(tvs, tvs[1:])]


def test_theta_trapezoidal_is_second_order_while_its_rates_stay_positive(chain):
    """The theta-trapezoidal law (which the sampler follows, test above) converges at second
    order in TV (error / 4 per doubling, up to the hazard's singularity at t = 0) on a smooth
    chain, where the extrapolated rates ``a1 mu_rho - a2 mu_t`` stay positive, while
    tau-leaping stays first order. On the sharp test chain a neighbour's unmasking in stage 1
    can make them negative; the positive part then costs the order (documented in
    docs/discrete.md)."""
    smooth = MarkovChain.random(3, torch.Generator().manual_seed(0), sharpness=0.3)
    assert all(r > 3.0 for r in _theta_tv_ratios(smooth, (4, 8, 16)))
    _, p = smooth.joint(3)
    tau = [E.tv(E.law_to_vector(E.masked_grid_law(smooth, 3, s, _unmask_tau), smooth, 3), p)
           for s in (8, 16)]
    assert tau[0] / tau[1] < 2.3
    assert _theta_tv_ratios(chain, (8, 16))[0] < 3.0


def test_uniform_noise_ancestral_matches_its_exact_law_and_converges(chain):
    proc = UniformProcess("linear")
    L3 = 3
    _, p = chain.joint(L3)
    law4 = E.uniform_ancestral_law(chain, proc, L3, 4)
    x = generate(
        chain.denoiser(proc), length=L3, steps=4, sampler="ancestral", n=N, generator=_gen(5)
    )
    assert E.tv(E.empirical(x, 3), law4) < E.tv_tolerance(law4, N)
    tvs = [E.tv(E.uniform_ancestral_law(chain, proc, L3, s), p) for s in (4, 8, 16, 32)]
    assert all(b < a for a, b in zip(tvs, tvs[1:])) and tvs[-1] < 0.007


@pytest.mark.parametrize("sampler", ["tau_leaping", "theta_trapezoidal"])
def test_uniform_noise_rate_samplers_converge(chain, sampler):
    proc = UniformProcess("linear")
    _, p = chain.joint(3)
    n = 6000
    few = generate(chain.denoiser(proc), length=3, steps=4, sampler=sampler, n=n, generator=_gen(6))
    many = generate(
        chain.denoiser(proc), length=3, steps=32, sampler=sampler, n=n, generator=_gen(7)
    )
    tv_few, tv_many = E.tv(E.empirical(few, 3), p), E.tv(E.empirical(many, 3), p)
    assert tv_many < tv_few
    assert tv_many < E.tv_tolerance(p, n) + 0.015


def _recording(name, log):
    """SAMPLERS[name] with its decision function wrapped to record every step."""
    base = SAMPLERS[name]

    def decide(ctx):
        c = base.decide(ctx)
        log.append(
            {
                "count": ctx.count.clone(),
                "committed": (c.positions & ctx.active).sum(-1),
                "pos": (c.positions & ctx.active).clone(),
                "lo": ctx.block_start.clone(),
                "hi": ctx.block_end.clone(),
                "new": ctx.new_block.clone(),
                "carry": ctx.carry,
            }
        )
        return dataclasses.replace(c, carry=len(log))

    return dataclasses.replace(base, decide=decide)


@pytest.mark.parametrize("name", ["low_confidence", "topk_margin", "entropy", "random"])
def test_confidence_samplers_commit_the_schedule(chain, name):
    """k tokens per step: the linear schedule splits N tokens evenly over the steps."""
    log = []
    x = generate(
        chain.denoiser(), length=8, steps=4, sampler=_recording(name, log), n=16, generator=_gen()
    )
    assert len(log) == 4
    for rec in log:
        assert bool((rec["committed"] == 2).all()) and bool((rec["count"] == 2).all())
    assert [r["carry"] for r in log] == [None, 1, 2, 3]  # carry is handed back
    assert x.max() < 3


def test_low_confidence_commits_the_most_confident_positions():
    """A model whose confidence is highest at position 3, then 0, ...: that is the order."""
    conf = torch.tensor([0.8, 0.5, 0.6, 0.95])

    def fn(x, t):
        p = torch.stack([conf, 1 - conf], -1)  # token 0 with prob conf
        return torch.log(p).expand(x.shape[0], -1, -1)

    den = TokenDenoiser(fn, mask_id=2, vocab_size=2, time_conditioned=False)
    log = []
    generate(den, length=4, steps=4, sampler=_recording("low_confidence", log), temperature=0.0)
    order = [int(r["pos"][0].nonzero()) for r in log]
    assert order == [3, 0, 2, 1]


def test_threshold_decoding_commits_all_confident_tokens():
    def fn(x, t):
        p = torch.tensor([0.97, 0.03]).expand(x.shape[0], x.shape[1], 2)
        return torch.log(p)

    den = TokenDenoiser(fn, mask_id=2, vocab_size=2, time_conditioned=False)
    out = generate(
        den, length=16, steps=16, sampler="threshold", n=2, temperature=0.0, return_stats=True
    )
    assert out.nfe == 1 and bool((out.tokens == 0).all())  # all above 0.9 at the first step
    out = generate(
        den,
        length=16,
        steps=4,
        sampler="threshold",
        threshold=0.99,
        n=2,
        temperature=0.0,
        return_stats=True,
    )
    assert out.nfe == 4  # none above the threshold: the schedule's 4 per step


def test_semi_autoregressive_blocks_go_left_to_right(chain):
    log = []
    generate(
        chain.denoiser(),
        length=8,
        steps=4,
        block_length=4,
        sampler=_recording("low_confidence", log),
        n=3,
        generator=_gen(),
    )
    assert len(log) == 4
    for j, rec in enumerate(log):
        lo = 0 if j < 2 else 4
        assert bool((rec["lo"] == lo).all()) and bool((rec["hi"] == lo + 4).all())
        assert bool(rec["pos"][:, :lo].sum() == 0) and bool(rec["pos"][:, lo + 4 :].sum() == 0)
    assert [bool(r["new"].all()) for r in log] == [True, False, True, False]


def test_blocks_skip_the_prompt(chain):
    """A prompt covering block 0 and part of block 1: decoding starts in block 1."""
    log = []
    x = generate(
        chain.denoiser(),
        prompt=[1, 0, 2, 1, 0, 2],
        length=8,
        steps=2,
        block_length=4,
        sampler=_recording("ancestral", log),
        n=2,
        generator=_gen(),
    )
    assert x[:, :6].tolist() == [[1, 0, 2, 1, 0, 2]] * 2
    assert bool((log[0]["lo"] == 4).all())


def test_adablock_ends_blocks_at_a_confident_delimiter():
    target = torch.tensor([1, 1, 1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1])

    def fn(x, t):
        logits = torch.full((x.shape[0], x.shape[1], 2), -4.0)
        logits.scatter_(-1, target.expand(x.shape[0], -1).unsqueeze(-1), 4.0)
        return logits

    den = TokenDenoiser(fn, mask_id=2, vocab_size=2, time_conditioned=False)
    log = []
    x = generate(
        den,
        length=16,
        steps=16,
        sampler=_recording("adablock", log),
        delimiters=[0],
        window=0.5,
        threshold=1.1,
        temperature=0.0,
        block_length=8,
    )
    ends = [int(r["hi"][0]) for r in log if bool(r["new"][0])]
    assert ends[:2] == [4, 9]  # blocks end just after the delimiters at 3 and 8
    assert torch.equal(x[0], target)


def test_cache_skips_unchanged_rows_and_keeps_results(chain):
    """MDLM's cache: a model that ignores t is re-evaluated only for rows that changed; the
    samples are identical to running without the cache."""
    den = chain.denoiser()
    fresh = TokenDenoiser(den.fn, mask_id=den.mask_id, vocab_size=3, time_conditioned=True)
    a = generate(den, length=L, steps=64, n=50, generator=_gen(9), return_stats=True)
    b = generate(fresh, length=L, steps=64, n=50, generator=_gen(9), return_stats=True)
    assert torch.equal(a.tokens, b.tokens)
    assert a.row_evals <= 50 * L < b.row_evals <= 50 * 64


@pytest.mark.parametrize("sampler", ["ancestral", "low_confidence", "first_hitting", "threshold"])
def test_per_sample_generators_make_samples_batch_independent(chain, sampler):
    gens = [torch.Generator().manual_seed(100 + k) for k in range(5)]
    many = generate(chain.denoiser(), length=6, steps=6, sampler=sampler, n=5, generator=gens)
    one = generate(
        chain.denoiser(),
        length=6,
        steps=6,
        sampler=sampler,
        n=1,
        generator=[torch.Generator().manual_seed(103)],
    )
    assert torch.equal(many[3], one[0])


def test_zero_temperature_is_greedy(chain):
    x = generate(
        chain.denoiser(),
        length=5,
        steps=5,
        sampler="low_confidence",
        n=4,
        temperature=0.0,
        generator=_gen(),
    )
    assert bool((x == x[0]).all())


def test_schedule_of_the_process_is_used():
    """Cosine schedule: the confidence samplers' counts follow round(N alpha(s))."""
    den = TokenDenoiser(
        lambda x, t: torch.zeros(*x.shape, 3),
        mask_id=3,
        vocab_size=3,
        process=MaskedProcess("cosine"),
    )
    log = []
    generate(den, length=16, steps=4, sampler=_recording("random", log), generator=_gen())
    alpha = [1 - math.cos(math.pi / 2 * (1 - s)) for s in (0.75, 0.5, 0.25, 0.0)]
    cum = [round(16 * a) for a in alpha]
    got = [int(r["committed"][0]) for r in log]
    assert got == [cum[0]] + [b - a for a, b in zip(cum, cum[1:])]


def test_the_reference_model_is_itself_a_token_denoiser(chain):
    x = generate(chain, length=3, steps=3, sampler="first_hitting", n=5, generator=_gen())
    y = generate(chain.denoiser(), length=3, steps=3, sampler="first_hitting", n=5,
                 generator=_gen())
    assert torch.equal(x, y)
