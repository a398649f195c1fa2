"""Tiny trained examples of three row-M7 training objectives, beside their exact references
(the ``trained_*`` parts of ``reverie bench discrete-processes``; not in its default parts).

* ``trained_blackout`` -- Blackout diffusion on 3 sites whose counts 0..4 follow a Markov chain:
  ``E[n0 | n_t]`` from an MLP's per-site prior times the binomial likelihood, trained by
  Blackout's loss on that mean alone (:meth:`BlackoutProcess.nelbo`); its
  NELBO beside the exact ``E[n0 | n_t]``'s (= the entropy), and the TV of its tau-leaping samples
  beside tau-leaping and the binomial bridge with the exact posterior;
* ``trained_genmd4`` -- GenMD4 with learned exponents (RLOO, :meth:`GenMD4Process.rloo_nelbo`)
  against MD4 (one linear schedule, :func:`reverie.discrete.nelbo`), the same MLP, batches and
  steps, on a 3-token chain (L = 3): NELBO and TV of ancestral samples;
* ``trained_rdm`` -- RDM's reweighted routing loss (``linear`` weight, coupled times;
  :func:`reverie.discrete.rdm.rdm_loss`) against the plain masked ELBO, the same MLP, batches and
  steps, on the RDLM example's chain (V = 3, L = 4): NELBO and TV of ``ancestral`` and ``rdm``
  samples.

NELBOs are nats per token (per site), on held-out draws; one seed, one run each.
"""

from __future__ import annotations

import time
from typing import Any

import torch

V_CHAIN = 3


def _tv(x: torch.Tensor, p: torch.Tensor, v: int) -> float:
    powers = v ** torch.arange(x.shape[1] - 1, -1, -1)
    emp = torch.bincount((x * powers).sum(-1), minlength=p.numel()).double() / x.shape[0]
    return 0.5 * float((emp - p).abs().sum())


def _floor(p: torch.Tensor, n: int, seed: int) -> float:
    g = torch.Generator().manual_seed(seed + 999)
    tvs = []
    for _ in range(5):
        idx = torch.multinomial(p, n, replacement=True, generator=g)
        tvs.append(0.5 * float((torch.bincount(idx, minlength=p.numel()).double() / n - p)
                               .abs().sum()))
    return sum(tvs) / 5


class _MLP(torch.nn.Module):
    """``(x [B, L] in 0..K-1, t [B]) -> [B, L, out]``: an MLP on the one-hot sequence and
    time features (float64)."""

    def __init__(self, length: int, k: int, out: int, hidden: int = 128):
        super().__init__()
        self.length, self.k, self.out = length, k, out
        self.f = torch.nn.Sequential(
            torch.nn.Linear(length * k + 3, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, length * out)).double()

    def forward(self, x: torch.Tensor, tfeat: torch.Tensor) -> torch.Tensor:
        inp = torch.nn.functional.one_hot(x, self.k).flatten(1).double()
        return self.f(torch.cat([inp, tfeat.double()], 1)).reshape(-1, self.length, self.out)


def _time_features(t: torch.Tensor) -> torch.Tensor:
    t = t.double().reshape(-1, 1)
    return torch.cat([t, t.clamp_min(1e-6).log() / 4, torch.sqrt(t)], 1)


def _train(params, loss_fn, sample_x0, steps: int, lr: float, seed: int) -> float:
    opt = torch.optim.Adam(params, lr)
    g = torch.Generator().manual_seed(seed)  # the same batches for every model
    t0 = time.time()
    for _ in range(steps):
        loss = loss_fn(sample_x0(g), g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return round(time.time() - t0, 1)


def trained_blackout(args) -> dict[str, Any]:
    from reverie.discrete.blackout import BlackoutProcess
    from reverie.reference import MarkovChain

    n_max, sites = 4, 3
    chain = MarkovChain.random(n_max + 1, torch.Generator().manual_seed(1), sharpness=2.0)
    seqs, law = chain.joint(sites)
    proc = BlackoutProcess(n_max)
    torch.manual_seed(args.seed)
    net = _MLP(sites, n_max + 1, n_max + 1)
    values = torch.arange(n_max + 1, dtype=torch.float64)

    def model(n, t):
        # E[n0 | n_t] under p(n0^i | n_t) ∝ softmax(net)(n0^i) Binomial(n_t^i; n0^i, p_t): the
        # network gives a prior per site from all sites, the known likelihood does the rest
        post = torch.softmax(net(n, _time_features(proc.survival(t))), -1) * proc.evidence(n, t)
        return (post / post.sum(-1, keepdim=True) * values).sum(-1)

    def draw(g):
        return seqs[torch.multinomial(law, args.batch, replacement=True, generator=g)]

    train_s = _train(net.parameters(), lambda x, g: proc.nelbo(model, x, generator=g) / sites,
                     draw, args.train_steps, args.lr, args.seed)
    held = seqs[torch.multinomial(law, 20000, True, generator=torch.Generator().manual_seed(3))]
    exact_mean = proc.mean_model(proc.exact_model(chain))
    marg = torch.zeros(n_max + 1, dtype=torch.float64).index_add_(0, seqs[:, 1], law)

    def bound(m):
        with torch.no_grad():
            return float(proc.nelbo(m, held, samples=4,
                                    generator=torch.Generator().manual_seed(4)).mean()) / sites

    prod = marg[seqs].prod(-1)  # the law of independent sites with the exact marginals
    rows = [{"model": "trained MLP (Blackout loss)", "nelbo": bound(model)},
            {"model": "exact E[n0 | n_t]", "nelbo": bound(exact_mean)},
            {"model": "independent sites (exact marginal)",
             "nelbo": bound(proc.mean_model(proc.exact_model(marg))),
             "tv_of_its_law": 0.5 * float((prod - law).abs().sum())}]
    n = args.n
    with torch.no_grad():
        for row, m in zip(rows[:2], (model, exact_mean)):
            x = proc.sample(m, n, sites, 64, method="tau_leaping",
                            generator=torch.Generator().manual_seed(args.seed + 5))
            row["tv_tau_leaping_64"] = _tv(x, law, n_max + 1)
        x = proc.sample(proc.exact_model(chain), n, sites, 64, method="bridge",
                        generator=torch.Generator().manual_seed(args.seed + 5))
    rows[1]["tv_bridge_64"] = _tv(x, law, n_max + 1)
    entropy = float(-(law * law.log()).sum()) / sites
    return {"rows": rows, "entropy_per_site": entropy, "floor": _floor(law, n, args.seed),
            "train_s": train_s, "steps": args.train_steps}


def _chain_data(seed: int, length: int, sharpness: float):
    from reverie.reference import MarkovChain

    chain = MarkovChain.random(V_CHAIN, torch.Generator().manual_seed(seed), sharpness=sharpness)
    return (chain, *chain.joint(length))


def _token_denoiser(net, process):
    from reverie.discrete import TokenDenoiser

    return TokenDenoiser(lambda x, t: net(x, _time_features(t)), mask_id=V_CHAIN,
                         vocab_size=V_CHAIN, process=process)


def trained_genmd4(args) -> dict[str, Any]:
    from reverie.discrete import MaskedProcess, generate, nelbo
    from reverie.discrete.genmd4 import GenMD4Process, LearnedExponents

    length = 3
    chain, seqs, law = _chain_data(4, length, 1.5)  # the GenMD4 test chain

    def draw(g):
        return seqs[torch.multinomial(law, args.batch, replacement=True, generator=g)]

    torch.manual_seed(args.seed)
    gen_net = _MLP(length, V_CHAIN + 1, V_CHAIN)
    md4_net = _MLP(length, V_CHAIN + 1, V_CHAIN)
    md4_net.load_state_dict(gen_net.state_dict())  # the same start
    exps = LearnedExponents(V_CHAIN, init=1.0)
    md4 = _token_denoiser(md4_net, MaskedProcess())

    def gen_loss(x, g):
        den = _token_denoiser(gen_net, exps.process())
        return exps.process().rloo_nelbo(den, x, generator=g) / length

    result: dict[str, Any] = {"steps": args.train_steps}
    result["train_s_genmd4"] = _train(list(gen_net.parameters()) + list(exps.parameters()),
                                      gen_loss, draw, args.train_steps, args.lr, args.seed)
    result["train_s_md4"] = _train(md4_net.parameters(),
                                   lambda x, g: nelbo(md4, x, generator=g) / length,
                                   draw, args.train_steps, args.lr, args.seed)
    held = seqs[torch.multinomial(law, 20000, True, generator=torch.Generator().manual_seed(3))]
    w = exps.w.detach()
    gen_den = _token_denoiser(gen_net, GenMD4Process(w))
    n = args.n
    with torch.no_grad():
        rows = []
        for name, den in (("GenMD4 (learned w)", gen_den), ("MD4 (linear schedule)", md4),
                          ("exact GenMD4 denoiser (learned w)",
                           GenMD4Process(w).exact_denoiser(chain)),
                          ("exact MD4 denoiser", chain.denoiser())):
            nel = float(nelbo(den, held, samples=8,
                              generator=torch.Generator().manual_seed(4)).mean()) / length
            g = torch.Generator().manual_seed(args.seed + 5)
            if isinstance(den.process, GenMD4Process):
                x = den.process.sample(den, n, length, 32, g)
            else:
                x = generate(den, length=length, steps=32, sampler="ancestral", n=n, generator=g)
            rows.append({"model": name, "nelbo": nel, "tv_ancestral_32": _tv(x, law, V_CHAIN)})
    result.update(rows=rows, learned_w=w.tolist(),
                  entropy_per_token=float(-(law * law.log()).sum()) / length,
                  floor=_floor(law, n, args.seed))
    return result


def trained_rdm(args) -> dict[str, Any]:
    from reverie.discrete import MaskedProcess, generate, nelbo
    from reverie.discrete.rdm import rdm_loss

    length = 4
    chain, seqs, law = _chain_data(0, length, 2.0)  # the RDLM example's chain

    def draw(g):
        return seqs[torch.multinomial(law, args.batch, replacement=True, generator=g)]

    torch.manual_seed(args.seed)
    nets = {"rdm": _MLP(length, V_CHAIN + 1, V_CHAIN), "masked": _MLP(length, V_CHAIN + 1, V_CHAIN)}
    nets["masked"].load_state_dict(nets["rdm"].state_dict())
    dens = {k: _token_denoiser(v, MaskedProcess()) for k, v in nets.items()}
    losses = {
        "rdm": lambda x, g: rdm_loss(dens["rdm"], x, coupled=True, generator=g) / length,
        "masked": lambda x, g: nelbo(dens["masked"], x, generator=g) / length,
    }
    result: dict[str, Any] = {"steps": args.train_steps}
    for k in nets:
        result[f"train_s_{k}"] = _train(nets[k].parameters(), losses[k], draw, args.train_steps,
                                        args.lr, args.seed)
    held = seqs[torch.multinomial(law, 20000, True, generator=torch.Generator().manual_seed(3))]
    n = args.n
    names = {"rdm": "RDM loss (linear weight, coupled)", "masked": "masked ELBO (MD4 / MDLM)",
             "exact": "exact chain denoiser"}
    dens["exact"] = chain.denoiser()
    rows = []
    with torch.no_grad():
        for k, den in dens.items():
            row = {"model": names[k], "nelbo": float(nelbo(
                den, held, samples=8, generator=torch.Generator().manual_seed(4)).mean()) / length}
            for sampler, steps in (("ancestral", 16), ("rdm", 4)):
                x = generate(den, length=length, steps=steps, sampler=sampler, n=n,
                             generator=torch.Generator().manual_seed(args.seed + 5))
                row[f"tv_{sampler}_{steps}"] = _tv(x, law, V_CHAIN)
            rows.append(row)
    result.update(rows=rows, entropy_per_token=float(-(law * law.log()).sum()) / length,
                  floor=_floor(law, n, args.seed))
    return result


PARTS = {"trained_blackout": trained_blackout, "trained_genmd4": trained_genmd4,
         "trained_rdm": trained_rdm}
