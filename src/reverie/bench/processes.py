"""Forward processes trained on two-moons: negative log-likelihoods beside the plain VP.

Every model is the same residual MLP trained for the same number of steps (batch, learning rate
and seed fixed) on 20000 two-moons points; NLLs are on held-out points, by the
probability-flow ODE with the exact divergence (:mod:`reverie.likelihood`), in nats per point
and bits per dimension (continuous density; two-moons is 2-D).

Sections:

* ``vp`` -- the baseline: eps-prediction on ``VPLinear`` (``t`` in ``[1e-3, 1]``), prior
  ``N(0, sigma_1^2 I)``;
* ``truncated`` -- Franzese et al. (2023): the same process stopped at ``T`` (eps-prediction on
  ``Truncated(VPLinear(), T)``), with the auxiliary prior (a Gaussian mixture fitted by EM to the
  forward marginal at ``T``) and, for contrast, the ``N(0, sigma_T^2 I)`` prior;
* ``interpolant`` -- Albergo et al. (2023): two-sided interpolants ``(1 - t) x0 + t x1 +
  gamma z`` from a Gaussian-mixture source (and from ``N(0, I)``) to two-moons, velocity
  objective, NLL by the ODE's change of variables from the source's density;
* ``etsdm`` -- Yang et al. (2024): the VP model with shared time conditions on
  ``[0, 0.1)`` (5 intervals): NLL and the Lipschitz constant in ``t`` near 0 beside the VP's;
* ``mixture`` -- Li et al. (2024), soft mixture denoising in its mixture-posterior form: an
  8-component posterior over ``x0`` trained by maximum likelihood; NLL of its mean denoiser and
  sliced W2 at 2, 4 and 10 steps of the mixture kernel against DDPM's Gaussian kernel (with the
  same network's mean, and with the VP baseline);
* ``bridge`` -- BBDM / EBDM Brownian bridges translating ``y = (x0_1, 0)`` (the first coordinate
  only) into two-moons points ``x0``: sliced Wasserstein distance of the joint ``(x0, y)`` to
  held-out pairs, with and without the end point ``y`` given to the network (BBDM's network
  sees only ``x_t``). A conditional model has no NLL comparable to the others.
* ``learned`` -- NFDM / NDM / DiffEnc / MuLAN-style learned forward processes
  (:mod:`reverie.learned_process`): the negative ELBO (an upper bound on the NLL) of the VP
  process trained by the same ELBO (``F = identity``, fixed schedule) beside the process with a
  learned transform ``F(x, t) = x + t net(x, t)`` and a learned per-dimension schedule, both
  trained jointly with the same network for the same steps; sliced W2 of 100-step reverse-SDE
  samples.
* ``mulan`` -- MuLAN (Sahoo et al. 2024) in miniature: the auxiliary latent ``z_aux ~ q(z_aux |
  x)`` (a Gaussian encoder, prior ``N(0, I)``, 2 dimensions) conditions the polynomial
  per-dimension schedule and the network, trained on the auxiliary-variable ELBO (diffusion
  bound given ``z_aux`` plus ``KL(q || p)``); its negative ELBO beside the VP process and the
  (input-independent) learned per-dimension schedule, all ``F = identity``, trained by the same
  ELBO for the same steps, and an ablation whose schedule ignores ``z_aux`` (the polynomial's
  context weights frozen at 0); the -ELBO difference to VP paired over held-out points; sliced
  W2 of 100-step reverse-SDE samples (``z_aux`` from the prior).
* ``multivariate`` -- linear multivariate diffusions (:mod:`reverie.multivariate`), all trained
  by the same KL-form ELBO with the same network and steps: the VP special case (``n = 1``),
  CLD (one auxiliary velocity), MDM's learned auxiliary-variable diffusion (Singhal et al. 2023,
  ``n = 2``, ``(Q, D)`` trained with the network) and FP-Diffusion's learned spatial
  ``(R, omega)`` (Du et al. 2023); negative ELBO of held-out points and sliced W2 of 100- and
  400-step reverse-SDE samples.
* ``flexible`` -- FP-Diffusion's general spatial SDE (:mod:`reverie.fp_diffusion`): VP, a
  constant ``(R, omega)`` and the ``x``-dependent ``FlexibleSDE.example()``, all trained by the
  same implicit score matching on a simulated forward bank
  (:func:`reverie.train.fp_diffusion.train_flexible`): the NLL of held-out points by the
  probability-flow ODE and sliced W2 of 100- and 400-step reverse-SDE samples.
* ``modulated`` -- SAM-DiffSR's structure-modulated noise in miniature: the two moons are the
  "segments", each with its own noise offset; the modulated model is sampled with the unchanged
  reverse process from ``N(0, I)`` (the paper's inference) and from the modulated prior, beside
  the VP baseline (sliced W2 of 25-step Heun samples).
* ``nested`` -- nested diffusion (Zhang et al. 2024) with a one-level hierarchy: ``z`` = the
  leading principal component of the data plus noise; an unconditional model of ``z`` and a
  data model conditioned on ``z``, each trained for the same steps; sliced W2 of chain samples
  beside the VP baseline.
* ``exemplar`` -- EBDM in miniature: the bridge from ``y = (x0_1, 0)`` with a style exemplar
  (another point of the target's moon) given to the network, against BBDM without it: sliced
  W2 of the joint ``(x0, y)`` and the fraction of outputs on the exemplar's moon.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine

SECTIONS = ("vp", "truncated", "interpolant", "etsdm", "bridge", "mixture", "learned",
            "mulan", "multivariate", "flexible", "modulated", "nested", "exemplar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every model")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--n-test", type=int, default=512, help="held-out points for the NLL")
    parser.add_argument("--n-samples", type=int, default=2000,
                        help="samples drawn per model (sliced W2 to held-out points)")
    parser.add_argument("--truncation", default="0.3,0.5",
                        help="comma-separated truncation times T of VPLinear (t in [0, 1])")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true", help="300 steps, 128 test points")
    parser.add_argument("--seed", type=int, default=0)


def _net(args: argparse.Namespace, dim: int = 2):
    from reverie.nets import MLP

    torch.manual_seed(args.seed)
    return MLP(dim=dim, hidden=args.hidden, depth=3)


def _nll_row(name: str, ll: torch.Tensor, seconds: float, extra: dict[str, Any]) -> dict[str, Any]:
    nll = -ll.to(torch.float64)
    se = float(nll.std() / math.sqrt(len(nll)))
    return {"model": name, "nll": float(nll.mean()), "nll_se": se,
            "bits_per_dim": float(nll.mean()) / (2 * math.log(2)), "train_seconds": seconds,
            **extra}


def _vp_model(args, data, process, wrap=None):
    from reverie.denoisers import Denoiser
    from reverie.train import train

    net = _net(args)
    if wrap is not None:
        net = wrap(net)
    res = train(net, data, process=process, prediction="eps", steps=args.steps,
                batch_size=args.batch_size, lr=1e-3, warmup=100, ema_decay=0.999,
                seed=args.seed, progress=False)
    return Denoiser(res.model, process, "eps"), res.seconds


def _sw(x: torch.Tensor, cache) -> float:
    """Sliced W2 of samples to the held-out reference set, over the sampling floor."""
    from reverie.metrics import sliced_wasserstein

    ref, floor = cache["sw_ref"]
    return sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0)) / floor


def _vp(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.likelihood import log_likelihood
    from reverie.process import VPLinear
    from reverie.samplers import sample

    den, sec = _vp_model(args, data, VPLinear())
    cache["vp"] = (den, sec)
    res = log_likelihood(den, test, rtol=1e-4, atol=1e-4, return_info=True)
    noise = torch.randn(args.n_samples, 2, generator=torch.Generator().manual_seed(21))
    with torch.no_grad():
        x = sample(den, noise, "heun", 25)
        x_sde = sample(den, noise, "euler_maruyama", 25,
                       generator=torch.Generator().manual_seed(22))
    return [_nll_row("VP (VPLinear, T = 1)", res.log_likelihood, sec,
                     {"prior": "N(0, sigma_1^2 I)", "nfe": res.nfe, "sw": _sw(x, cache),
                      "sw_sde": _sw(x_sde, cache)})]


def _truncated(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.likelihood import log_likelihood
    from reverie.process import Truncated, VPLinear
    from reverie.reference import Gaussian
    from reverie.truncation import fit_prior, sample_truncated

    rows = []
    for T in [float(v) for v in args.truncation.split(",") if v.strip()]:
        proc = Truncated(VPLinear(), T)
        den, sec = _vp_model(args, data, proc)
        prior = fit_prior(data, proc, n_components=16, iters=100,
                          generator=torch.Generator().manual_seed(args.seed + 7))
        normal = Gaussian([0.0, 0.0], float(proc.sigma(T)) ** 2)
        for pname, aux in (("GMM-16 fitted to q_T", prior), ("N(0, sigma_T^2 I)", normal)):
            res = log_likelihood(den, test, rtol=1e-4, atol=1e-4, prior=aux.log_prob,
                                 return_info=True)
            with torch.no_grad():
                x = sample_truncated(den, aux, args.n_samples, "heun", 25,
                                     generator=torch.Generator().manual_seed(21))
                x_sde = sample_truncated(den, aux, args.n_samples, "euler_maruyama", 25,
                                         generator=torch.Generator().manual_seed(21),
                                         noise_generator=torch.Generator().manual_seed(22))
            rows.append(_nll_row(f"truncated VP, T = {T}", res.log_likelihood, sec,
                                 {"prior": pname, "nfe": res.nfe, "sw": _sw(x, cache),
                                  "sw_sde": _sw(x_sde, cache)}))
    return rows


def _source_mixture():
    from reverie.reference import GaussianMixture

    # two blobs where the moons are, isotropic std 0.5: a cheap, known-density source
    return GaussianMixture([[-0.67, 0.33], [0.67, -0.33]], 0.25, [0.5, 0.5])


def _interpolant(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.interpolants import (
        TwoSidedInterpolant,
        interpolant_log_likelihood,
        interpolant_ode,
    )
    from reverie.likelihood.flow import gaussian_prior
    from reverie.reference import Gaussian
    from reverie.train.interpolants import field_of, train_interpolant

    rows = []
    mixture = ("Gaussian mixture", _source_mixture())
    normal = ("N(0, I)", Gaussian([0.0, 0.0], 1.0))
    for gamma, (sname, src) in (("sqrt", mixture), ("quadratic", mixture), ("quadratic", normal)):
        interp = TwoSidedInterpolant.linear(1.0, gamma)
        res = train_interpolant(_net(args), lambda n, g, s=src: s.sample(n, g).float(), data,
                                interp, objective="velocity", steps=args.steps,
                                batch_size=args.batch_size, seed=args.seed)
        log_src = src.log_prob if src is not normal[1] else gaussian_prior(1.0)
        t0 = time.perf_counter()
        ll = interpolant_log_likelihood(field_of(res.ema), test, log_src, rtol=1e-4, atol=1e-4)
        with torch.no_grad():
            x0 = src.sample(args.n_samples, torch.Generator().manual_seed(21))
            x = interpolant_ode(field_of(res.ema), x0, 25)
        rows.append(_nll_row(f"two-sided interpolant, gamma = {interp.name}", ll, res.seconds,
                             {"prior": f"source {sname}", "sw": _sw(x, cache),
                              "nll_seconds": time.perf_counter() - t0}))
    return rows


def _etsdm(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.likelihood import log_likelihood
    from reverie.process import VPLinear
    from reverie.samplers import sample
    from reverie.train.etsdm import SharedTimeConditions, time_lipschitz

    proc = VPLinear()
    base, base_sec = cache.get("vp") or _vp_model(args, data, proc)
    den, sec = _vp_model(args, data, proc, wrap=lambda n: SharedTimeConditions(n, 0.1, 5))
    x = proc.add_noise(test, torch.randn(test.shape, generator=torch.Generator().manual_seed(5),
                                         dtype=torch.float64), 0.05)
    fine = torch.linspace(proc.t_min, 0.1, 100, dtype=torch.float64)
    shared = torch.linspace(0.0, 0.1, 6, dtype=torch.float64).clamp(min=proc.t_min)
    rows = []
    for name, d, seconds in (("VP", base, base_sec), ("E-TSDM (t~ = 0.1, n = 5)", den, sec)):
        res = log_likelihood(d, test, rtol=1e-4, atol=1e-4, return_info=True)
        k_fine = time_lipschitz(d.eps, x, fine)
        k_shared = time_lipschitz(d.eps, x, shared)
        noise = torch.randn(args.n_samples, 2, generator=torch.Generator().manual_seed(21))
        with torch.no_grad():
            sw = {k: _sw(sample(d, noise, k, 10, generator=torch.Generator().manual_seed(22)),
                         cache) for k in ("ddim", "dpmpp_2m", "euler_maruyama")}
        rows.append(_nll_row(name, res.log_likelihood, seconds,
                             {"nfe": res.nfe, "lipschitz_fine_max": float(k_fine.max()),
                              "lipschitz_fine_mean": float(k_fine.mean()),
                              "lipschitz_shared_max": float(k_shared.max()),
                              "sw_ddim_10": sw["ddim"], "sw_dpmpp_2m_10": sw["dpmpp_2m"],
                              "sw_sde_10": sw["euler_maruyama"]}))
    return rows


def _bridge(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.bridge import BrownianBridge, bridge_sample
    from reverie.metrics import sliced_wasserstein
    from reverie.train.interpolants import EndConditioned, train_bridge

    def source(x0):
        return torch.stack([x0[:, 0], torch.zeros_like(x0[:, 0])], 1)

    bridge = BrownianBridge(1.0)
    held = test.float()
    y = source(held)
    ref = torch.cat([held, y], 1)
    shuffled = held[torch.randperm(len(held), generator=torch.Generator().manual_seed(3))]
    g = torch.Generator().manual_seed(11)

    def sw(x0):
        return sliced_wasserstein(torch.cat([x0, y], 1), ref,
                                  generator=torch.Generator().manual_seed(0))

    rows = [{"model": "targets re-paired at random (y ignored)", "steps": 0,
             "sw_joint": sw(shuffled)}]
    for name, model in (("bridge, network sees (x_t, t, y)", EndConditioned(_net(args, 4))),
                        ("bridge, network sees (x_t, t) (BBDM)", _Adapter(_net(args)))):
        res = train_bridge(model, (data, source(data)), bridge, steps=args.steps,
                           batch_size=args.batch_size, seed=args.seed)

        def den(x, t, y_, m=res.ema):
            return x - m(x, t, y_)

        for steps in (20, 100):
            with torch.no_grad():
                out = bridge_sample(den, y, bridge, steps, eta=1.0, generator=g)
            rows.append({"model": name, "steps": steps, "train_seconds": res.seconds,
                         "sw_joint": sw(out)})
    return rows


def _mixture(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.grids import make_grid
    from reverie.likelihood import log_likelihood
    from reverie.mixture_denoising import (
        MixtureMeanDenoiser,
        MixturePosteriorNet,
        mixture_ancestral,
    )
    from reverie.process import VPLinear
    from reverie.samplers import sample
    from reverie.train.mixture import train_mixture

    proc = VPLinear()
    base, base_sec = cache.get("vp") or _vp_model(args, data, proc)
    torch.manual_seed(args.seed)
    net = MixturePosteriorNet(proc, 2, 8, args.hidden, 3, sigma_data=float(data.std()))
    res = train_mixture(net, data, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    mean = MixtureMeanDenoiser(res.ema, proc)
    noise = torch.randn(args.n_samples, 2, generator=torch.Generator().manual_seed(21))
    rows = []
    for name, den, seconds in (("VP (eps)", base, base_sec),
                               ("mixture posterior, K = 8", mean, res.seconds)):
        ll = log_likelihood(den, test, rtol=1e-4, atol=1e-4)
        row = _nll_row(name, ll, seconds, {})
        for steps in (2, 4, 10):
            grid = make_grid(proc, steps, "uniform")
            g = torch.Generator().manual_seed(22)
            with torch.no_grad():
                row[f"sw_ddpm_{steps}"] = _sw(sample(den, noise, "ddpm", steps, grid=grid,
                                                     generator=g), cache)
                if den is mean:
                    x = mixture_ancestral(res.ema, noise * float(proc.sigma(grid[0])), proc, grid,
                                          generator=g)
                    row[f"sw_mixture_{steps}"] = _sw(x, cache)
        rows.append(row)
    return rows


def _negative_elbo(model, test: torch.Tensor, latent_dim: int = 0) -> torch.Tensor:
    """Per-point -ELBO of ``test``, mean of 16 draws of ``(t, eps[, eps_aux])``."""
    from reverie.train.learned import negative_elbo

    g = torch.Generator().manual_seed(5)
    x, draws = test.float(), []
    for _ in range(16):
        t = 1e-3 + (1 - 1e-3) * torch.rand(len(x), generator=g)
        eps = torch.randn(x.shape, generator=g)
        eps_aux = torch.randn(len(x), latent_dim, generator=g) if latent_dim else None
        draws.append(negative_elbo(model, x, t, eps, eps_aux).detach())
    return torch.stack(draws).mean(0)


def _learned(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.learned_process import (
        LearnedProcess,
        PerDimSchedule,
        ResidualTransform,
        sample_learned,
    )
    from reverie.nets import MLP
    from reverie.train.learned import LearnedDiffusion, train_learned

    rows = []
    for name, learn in (("VP (F = identity, fixed schedule), ELBO-trained", False),
                        ("learned F and per-dimension schedule", True)):
        torch.manual_seed(args.seed + 1)
        transform = ResidualTransform(MLP(dim=2, hidden=64, depth=2)) if learn else None
        proc = LearnedProcess(PerDimSchedule(2, learn=learn), transform)
        res = train_learned(LearnedDiffusion(_net(args), proc), data, steps=args.steps,
                            batch_size=args.batch_size, seed=args.seed)
        nelbo = _negative_elbo(res.ema, test)
        noise = torch.randn(args.n_samples, 2, generator=torch.Generator().manual_seed(21))
        out = sample_learned(res.ema.process, res.ema.net, noise, 100,
                             generator=torch.Generator().manual_seed(22))
        row = _nll_row(name, -nelbo, res.seconds, {"sw_sde_100": _sw(out, cache)})
        row["schedule_warp_exponents"] = torch.exp(res.ema.process.schedule.a).tolist()
        rows.append(row)
    return rows


def _mulan(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.learned_process import (
        AuxiliaryLatentProcess,
        GaussianEncoder,
        LatentConditioned,
        LearnedProcess,
        PerDimSchedule,
        PolynomialSchedule,
        sample_auxiliary,
        sample_learned,
    )
    from reverie.nets import MLP
    from reverie.train.learned import LearnedDiffusion, train_learned

    m, rows, vp = 2, [], None
    noise = torch.randn(args.n_samples, 2, generator=torch.Generator().manual_seed(21))
    for name in ("VP (fixed schedule), ELBO-trained", "per-dimension schedule (learned warp)",
                 "MuLAN: z_aux-conditioned polynomial schedule",
                 "ablation: polynomial schedule, z_aux not used by it (W = 0 frozen)"):
        aux = not name.startswith(("VP", "per"))
        torch.manual_seed(args.seed + 1)
        if aux:
            proc = AuxiliaryLatentProcess(GaussianEncoder(2, m), PolynomialSchedule(2, m))
            proc.schedule.linear.weight.requires_grad_(name.startswith("MuLAN"))
            torch.manual_seed(args.seed)
            net = LatentConditioned(MLP(dim=2 + m, hidden=args.hidden, depth=3), 2)
        else:
            proc = LearnedProcess(PerDimSchedule(2, learn=name.startswith("per")))
            net = _net(args)
        res = train_learned(LearnedDiffusion(net, proc), data, steps=args.steps,
                            batch_size=args.batch_size, seed=args.seed)
        p = res.ema.process
        nelbo = _negative_elbo(res.ema, test, m if aux else 0)
        vp = nelbo if vp is None else vp
        diff = nelbo - vp                                      # paired, per held-out point
        extra = {"diff_vs_vp": float(diff.mean()),
                 "diff_vs_vp_se": float(diff.std() / math.sqrt(len(diff)))}
        g = torch.Generator().manual_seed(22)
        if aux:
            out = sample_auxiliary(p, res.ema.net, noise, 100, generator=g)
            with torch.no_grad():
                mean, log_std = p.encoder(test.float())
                z = torch.randn(512, m, generator=torch.Generator().manual_seed(23))
                warp = p.schedule.warp(torch.full((512,), 0.5), z)   # s(0.5, z_aux), z ~ p
            extra |= {"kl_latent": float(p.encoder.kl(test.float()).mean()),
                      "encoder_std": float(log_std.exp().mean()),
                      "warp_half_spread": warp.std(0).tolist()}
        else:
            out = sample_learned(p, res.ema.net, noise, 100, generator=g)
            extra["schedule_warp_exponents"] = torch.exp(p.schedule.a).tolist()
        rows.append(_nll_row(name, -nelbo, res.seconds, {"sw_sde_100": _sw(out, cache), **extra}))
    return rows


def _multivariate(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.multivariate import LinearDiffusion, sample_linear
    from reverie.nets import MLP
    from reverie.train.multivariate import LinearDiffusionModel, negative_elbo, train_linear

    rows = []
    for name, proc in (("VP (n = 1)", LinearDiffusion.vp()), ("CLD (n = 2)", LinearDiffusion.cld()),
                       ("MDM learned (n = 2)", LinearDiffusion.learnable(2, seed=args.seed)),
                       ("FP-Diffusion learned (R, omega)",
                        LinearDiffusion.learnable(2, spatial=True, seed=args.seed))):
        torch.manual_seed(args.seed)
        m = 1 if proc.spatial else 2
        model = LinearDiffusionModel(MLP(dim=proc.n * m, hidden=args.hidden, depth=3), proc)
        res = train_linear(model, data, steps=args.steps, batch_size=args.batch_size,
                           seed=args.seed)
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            nelbo = torch.stack([negative_elbo(res.ema, test, 1e-3 + (1 - 1e-3) * torch.rand(
                len(test), generator=g, dtype=torch.float64), torch.randn(
                proc.state_shape(test), generator=g, dtype=torch.float64))
                for _ in range(16)]).mean(0)
        noise = torch.randn(args.n_samples, proc.n, m, generator=torch.Generator().manual_seed(21),
                            dtype=torch.float64)
        sws = {}
        for steps in (100, 400):
            out = sample_linear(res.ema.process, res.ema.score, noise, steps,
                                generator=torch.Generator().manual_seed(22))
            finite = bool(torch.isfinite(out).all())
            sws[f"sw_sde_{steps}"] = _sw(out.float(), cache) if finite else float("inf")
        row = _nll_row(name, -nelbo, res.seconds, sws)
        with torch.no_grad():
            row["Q"], row["D"] = res.ema.process.Q().tolist(), res.ema.process.D().tolist()
        rows.append(row)
    return rows


def _flexible(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.fp_diffusion import FlexibleSDE, log_likelihood_flexible, sample_flexible
    from reverie.nets import MLP
    from reverie.train.fp_diffusion import FlexibleScoreModel, train_flexible

    rows = []
    for name, proc in (("VP (R = I, omega = 0)", FlexibleSDE.constant([[1.0, 0.0], [0.0, 1.0]])),
                       ("FP constant (R, omega)", FlexibleSDE.constant(
                           [[1.2, 0.3], [0.3, 0.6]], [[0.0, 0.8], [-0.8, 0.0]])),
                       ("FP x-dependent R(x), omega(x)", FlexibleSDE.example())):
        torch.manual_seed(args.seed)
        model = FlexibleScoreModel(MLP(dim=2, hidden=args.hidden, depth=3), proc)
        res = train_flexible(model, data, steps=args.steps, batch_size=args.batch_size,
                             seed=args.seed)
        with torch.no_grad():
            ll = log_likelihood_flexible(proc, res.ema, test, 100)
        noise = torch.randn(args.n_samples, 2, generator=torch.Generator().manual_seed(21),
                            dtype=torch.float64)
        sws = {}
        for steps in (100, 400):
            with torch.no_grad():
                out = sample_flexible(proc, res.ema, noise, steps,
                                      generator=torch.Generator().manual_seed(22))
            finite = bool(torch.isfinite(out).all())
            sws[f"sw_sde_{steps}"] = _sw(out.float(), cache) if finite else float("inf")
        rows.append(_nll_row(name, ll, res.seconds, sws))
    return rows


def _moons(args, n: int, seed: int):
    from reverie.data import two_moons

    return two_moons(n, generator=torch.Generator().manual_seed(seed))


def _robust(x: torch.Tensor, cache) -> dict[str, float]:
    """SW / floor of the samples with ``|x| <= 4`` and the fraction beyond (two-moons lies in
    ``|x| < 2.5``): a few far outliers of a 25-step ODE dominate the plain sliced W2."""
    far = x.norm(dim=1) > 4
    return {"sw_inliers": _sw(x[~far], cache), "far": float(far.float().mean())}


def _modulated(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.denoisers import Denoiser
    from reverie.process import VPLinear
    from reverie.samplers import sample
    from reverie.train.modulated import train_modulated

    proc = VPLinear()
    base, base_sec = cache.get("vp") or _vp_model(args, data, proc)
    _, labels = _moons(args, 20_000, args.seed)                  # the labels of ``data``
    offsets = torch.tensor([[0.5, -0.5], [-0.5, 0.5]])            # one noise offset per moon
    res = train_modulated(_net(args), data, offsets[labels], proc, steps=args.steps,
                          batch_size=args.batch_size, seed=args.seed)
    den = Denoiser(res.ema, proc, "eps")
    noise = torch.randn(args.n_samples, 2, generator=torch.Generator().manual_seed(21))
    moon = torch.randint(0, 2, (args.n_samples,), generator=torch.Generator().manual_seed(23))
    shifted = noise + offsets[moon]                  # the modulated prior at t_max (alpha ~ 0)
    rows = []
    for name, d, start, sec in (("VP", base, noise, base_sec),
                                ("modulated, from N(0, I) (paper)", den, noise, res.seconds),
                                ("modulated, from the modulated prior", den, shifted,
                                 res.seconds)):
        with torch.no_grad():
            x = sample(d, start.double(), "heun", 25)
        rows.append({"model": name, "sw": _sw(x.float(), cache), "train_seconds": sec,
                     **_robust(x.float(), cache)})
    return rows


def _nested(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.denoisers import Denoiser
    from reverie.nested import LatentHierarchy, nested_sample
    from reverie.nets import MLP
    from reverie.process import VPLinear
    from reverie.samplers import sample
    from reverie.train.nested import LevelNet, train_level

    proc = VPLinear()
    base, base_sec = cache.get("vp") or _vp_model(args, data, proc)
    hier = LatentHierarchy.fit(data.double(), [1], [0.3])
    (z,) = hier.encode(data.double(), torch.Generator().manual_seed(args.seed + 9))
    torch.manual_seed(args.seed)
    top = train_level(LevelNet(MLP(dim=1, hidden=args.hidden, depth=3), 1), z, None, proc,
                      steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    bottom = train_level(LevelNet(MLP(dim=3, hidden=args.hidden, depth=3), 2), data, z, proc,
                         steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    levels = [Denoiser(top.ema, proc, "eps"), Denoiser(bottom.ema, proc, "eps")]
    with torch.no_grad():
        _, x = nested_sample(levels, [1, 2], args.n_samples, "heun", 25,
                             generator=torch.Generator().manual_seed(21))
        x_vp = sample(base, torch.randn(args.n_samples, 2, dtype=torch.float64,
                                        generator=torch.Generator().manual_seed(21)), "heun", 25)
    return [{"model": "VP", "sw": _sw(x_vp.float(), cache), "train_seconds": base_sec,
             **_robust(x_vp.float(), cache)},
            {"model": "nested (z = PC1 + 0.3 noise)", "sw": _sw(x.float(), cache),
             "train_seconds": top.seconds + bottom.seconds, **_robust(x.float(), cache)}]


def _exemplar(args, data, test, cache) -> list[dict[str, Any]]:
    from reverie.bridge import BrownianBridge, bridge_sample
    from reverie.metrics import sliced_wasserstein
    from reverie.train.interpolants import EndConditioned, ExemplarConditioned, train_bridge

    bridge = BrownianBridge(1.0)
    _, labels = _moons(args, 20_000, args.seed)
    held, held_labels = _moons(args, args.n_test, args.seed + 1)
    g = torch.Generator().manual_seed(13)

    def exemplars(lab, pool, pool_labels):  # a random point of the same moon, per example
        out = torch.empty(len(lab), 2)
        for k in (0, 1):
            idx = (pool_labels == k).nonzero()[:, 0]
            sel = lab == k
            out[sel] = pool[idx[torch.randint(0, len(idx), (int(sel.sum()),), generator=g)]]
        return out

    def source(x0):
        return torch.stack([x0[:, 0], torch.zeros_like(x0[:, 0])], 1)

    y = source(held)
    e = exemplars(held_labels, data, labels)
    ref = torch.cat([held, y], 1)

    def moon_of(x):  # 1-nearest labelled training point
        return labels[torch.cdist(x, data[:4000]).argmin(1) % 4000]

    rows = []
    for name, model, triples in (
            ("bridge + exemplar (global encoder)",
             ExemplarConditioned(_net(args, 6), torch.nn.Sequential(
                 torch.nn.Linear(2, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))), True),
            ("bridge, network sees (x_t, t, y) (no exemplar)",
             EndConditioned(_net(args, 4)), False)):
        pairs = (data, source(data), exemplars(labels, data, labels)) if triples else \
            (data, source(data))
        res = train_bridge(model, pairs, bridge, steps=args.steps, batch_size=args.batch_size,
                           seed=args.seed)
        extra = {"exemplar": e} if triples else {}
        with torch.no_grad():
            out = bridge_sample(lambda x, t, y_, *ex, m=res.ema: x - m(x, t, y_, *ex), y,
                                bridge, 100, generator=torch.Generator().manual_seed(11),
                                **extra)
        rows.append({"model": name, "train_seconds": res.seconds,
                     "sw_joint": sliced_wasserstein(torch.cat([out, y], 1), ref,
                                                    generator=torch.Generator().manual_seed(0)),
                     "on_exemplar_moon": float((moon_of(out) == held_labels).float().mean())})
    return rows


class _Adapter(torch.nn.Module):
    """``(x, t, y) -> net(x, t)``: BBDM's network, blind to the end point."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, t, y):
        return self.net(x, t)



def _sde_table(rows: list[dict[str, Any]], nll: str) -> str:
    """The likelihood (column ``nll``) and reverse-SDE sample table of the SDE sections."""
    return format_table(["model", nll, "+- s.e.", "bits/dim", "SW / floor SDE 100",
                         "SW / floor SDE 400", "train s"],
                        [[r["model"], r["nll"], r["nll_se"], r["bits_per_dim"], r["sw_sde_100"],
                          r["sw_sde_400"], r["train_seconds"]] for r in rows])


def _sw_table(rows: list[dict[str, Any]]) -> str:
    """The sample-distance table of the sections judged by SW alone (with its outlier split)."""
    return format_table(["model", "SW / floor", "SW / floor, norm <= 4", "share norm > 4",
                         "train s"],
                        [[r["model"], r["sw"], r["sw_inliers"], r["far"], r["train_seconds"]]
                         for r in rows])

def run(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.data import two_moons
    from reverie.metrics import sliced_wasserstein_floor

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        raise ValueError(f"unknown section(s) {bad}; expected a subset of {', '.join(SECTIONS)}")
    if args.quick:
        args.steps, args.n_test = 300, 128
    torch.set_num_threads(1)
    data, _ = two_moons(20_000, generator=torch.Generator().manual_seed(args.seed))
    test = two_moons(args.n_test, generator=torch.Generator().manual_seed(args.seed + 1))[0]
    test = test.to(torch.float64)
    out: dict[str, Any] = {"machine": machine(), "steps": args.steps, "n_test": args.n_test}
    ref = two_moons(args.n_samples, generator=torch.Generator().manual_seed(args.seed + 3))[0]
    fresh = iter(range(100, 200))
    floor = sliced_wasserstein_floor(
        lambda n: two_moons(n, generator=torch.Generator().manual_seed(next(fresh)))[0],
        args.n_samples, generator=torch.Generator().manual_seed(0))
    cache: dict[str, Any] = {"sw_ref": (ref, floor)}
    out["sw_floor"] = floor
    nll_rows = []
    for name, fn in (("vp", _vp), ("truncated", _truncated), ("interpolant", _interpolant)):
        if name in sections:
            rows = fn(args, data, test, cache)
            out[name] = rows
            nll_rows += rows
    if nll_rows:
        print(f"\nNLL of {args.n_test} held-out two-moons points (nats/point, bits/dim), "
              f"{args.steps} training steps each")
        print(format_table(
            ["model", "prior / source", "NLL", "+- s.e.", "bits/dim", "SW / floor, ODE 25 steps",
             "SW / floor, SDE 25 steps", "train s"],
            [[r["model"], r["prior"], r["nll"], r["nll_se"], r["bits_per_dim"], r["sw"],
              r.get("sw_sde", "-"), r["train_seconds"]] for r in nll_rows]))
    if "etsdm" in sections:
        rows = _etsdm(args, data, test, cache)
        out["etsdm"] = rows
        print("\nE-TSDM vs VP: NLL and the Lipschitz constant of eps in t on [t_min, 0.1] "
              "(mean over points noised to t = 0.05)")
        print(format_table(
            ["model", "NLL", "+- s.e.", "bits/dim", "K max (dt = 0.001)", "K mean (dt = 0.001)",
             "K max (dt = 0.02, shared conditions)", "SW / floor DDIM 10", "SW / floor DPM++2M 10",
             "SW / floor Euler-Maruyama 10"],
            [[r["model"], r["nll"], r["nll_se"], r["bits_per_dim"], r["lipschitz_fine_max"],
              r["lipschitz_fine_mean"], r["lipschitz_shared_max"], r["sw_ddim_10"],
              r["sw_dpmpp_2m_10"], r["sw_sde_10"]] for r in rows]))
    if "mixture" in sections:
        rows = _mixture(args, data, test, cache)
        out["mixture"] = rows
        print("\nMixture reverse kernel vs DDPM's Gaussian kernel: NLL (PF-ODE of the mean "
              "denoiser) and SW / floor at few steps (uniform grid)")
        heads = ["model", "NLL", "+- s.e.", "train s"]
        for k in ("ddpm", "mixture"):
            heads += [f"{k} {n} steps" for n in (2, 4, 10)]
        print(format_table(heads, [
            [r["model"], r["nll"], r["nll_se"], r["train_seconds"]]
            + [r.get(f"sw_{k}_{n}", "-") for k in ("ddpm", "mixture") for n in (2, 4, 10)]
            for r in rows]))
    if "bridge" in sections:
        rows = _bridge(args, data, test, cache)
        out["bridge"] = rows
        print("\nBrownian bridge y = (x0_1, 0) -> x0: sliced W2 of the joint (x0, y) to held-out "
              "pairs (eta = 1)")
        print(format_table(["model", "sampling steps", "SW joint"],
                           [[r["model"], r["steps"], r["sw_joint"]] for r in rows]))
    if "learned" in sections:
        rows = _learned(args, data, test, cache)
        out["learned"] = rows
        print("\nLearned forward process (NFDM-style) vs VP, both trained by the ELBO: negative "
              "ELBO of held-out points (16 draws of t, eps per point; an upper bound on the NLL)")
        print(format_table(["model", "-ELBO", "+- s.e.", "bits/dim", "SW / floor SDE 100",
                            "train s"],
                           [[r["model"], r["nll"], r["nll_se"], r["bits_per_dim"],
                             r["sw_sde_100"], r["train_seconds"]] for r in rows]))
    if "mulan" in sections:
        out["mulan"] = rows = _mulan(args, data, test, cache)
        print("\nMuLAN (auxiliary latent, adaptive schedule) vs the per-dimension schedule and VP, "
              "all trained by the ELBO: negative ELBO of held-out points (16 draws of t, eps, "
              "z_aux per point)")
        print(format_table(["model", "-ELBO", "+- s.e.", "bits/dim", "minus VP (paired)",
                            "+- s.e.", "SW / floor SDE 100", "KL(q(z_aux|x) || p)", "train s"],
                           [[r["model"], r["nll"], r["nll_se"], r["bits_per_dim"],
                             r["diff_vs_vp"], r["diff_vs_vp_se"], r["sw_sde_100"],
                             r.get("kl_latent", "-"), r["train_seconds"]] for r in rows]))
    if "multivariate" in sections:
        rows = _multivariate(args, data, test, cache)
        out["multivariate"] = rows
        print("\nLinear multivariate diffusions (MDM / FP-Diffusion), all trained by the ELBO: "
              "negative ELBO of held-out points (16 draws of t, eps per point)")
        print(_sde_table(rows, "-ELBO"))
    if "flexible" in sections:
        rows = _flexible(args, data, test, cache)
        out["flexible"] = rows
        print("\nFP-Diffusion's general forward SDE vs its constant case and VP, all trained by "
              "implicit score matching on a simulated forward bank: NLL of held-out points "
              "(probability-flow ODE, Heun 100, exact divergence)")
        print(_sde_table(rows, "NLL"))
    if "modulated" in sections:
        out["modulated"] = rows = _modulated(args, data, test, cache)
        print("\nStructure-modulated noise (SAM-DiffSR, moons as segments): SW / floor, Heun 25")
        print(_sw_table(rows))
    if "nested" in sections:
        out["nested"] = rows = _nested(args, data, test, cache)
        print("\nNested diffusion (one latent level) vs VP: SW / floor, Heun 25 per level")
        print(_sw_table(rows))
    if "exemplar" in sections:
        out["exemplar"] = rows = _exemplar(args, data, test, cache)
        print("\nExemplar-guided bridge (EBDM in miniature): y = (x0_1, 0), exemplar = a point "
              "of the target's moon; 100 steps, eta = 1")
        print(format_table(["model", "SW joint", "on the exemplar's moon", "train s"],
                           [[r["model"], r["sw_joint"], r["on_exemplar_moon"],
                             r["train_seconds"]] for r in rows]))
    return out
