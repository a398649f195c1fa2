"""Likelihood estimators (error vs NFE on exact mixtures, digits bits/dim) and composition.

Sections:

* ``pf_ode`` -- the probability-flow ODE log-likelihood (exact divergence, Hutchinson with
  Rademacher or Gaussian probes) against the exact log-density of Gaussian mixtures in 2 and
  16 dimensions, over solver tolerances: model evaluations (NFE) and errors in nats;
* ``ito`` -- SuperDiff's Ito density estimator along DDPM paths against the exact marginal
  ``log q_t(x_t)``, over the number of steps;
* ``compose`` -- superposition (OR vs the exact mixture, AND's density gap) and products with
  MCMC correctors (sliced Wasserstein to the exact product over the sampling floor);
* ``digits`` -- bits/dim of the bundled digits model on held-out digits (needs
  :mod:`reverie.hub`), next to a Gaussian fitted to the training digits;
* ``clid`` -- CLiD membership inference on the bundled digits model: its training digits
  against held-out ones (ROC AUC with a bootstrap interval, TPR at 1% FPR), next to the
  conditional and the unconditional denoising-loss attacks.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer settings (a smoke run)")
    parser.add_argument("--n", type=int, default=64, help="data points per mixture (pf_ode)")
    parser.add_argument("--digits-n", type=int, default=None,
                        help="held-out digits to score (default: all 359)")
    parser.add_argument("--clid-n", type=int, default=300,
                        help="members and as many held-out digits for clid (at most 359)")
    parser.add_argument("--clid-points", type=int, default=16, help="log-SNR points (clid)")
    parser.add_argument("--clid-noise", type=int, default=8, help="noise draws per point (clid)")
    parser.add_argument("--sections", default="pf_ode,ito,compose,digits,clid",
                        help="comma-separated subset of pf_ode,ito,compose,digits,clid")
    parser.add_argument("--seed", type=int, default=0)


def _mixtures(seed: int):
    from reverie.reference import GaussianMixture

    covs = torch.tensor([[[0.5, 0.2], [0.2, 0.3]], [[0.2, 0.0], [0.0, 0.6]]])
    two = GaussianMixture([[-2.0, 0.0], [1.5, 1.0]], covs, weights=[0.4, 0.6])
    g = torch.Generator().manual_seed(seed)
    d = 16
    means = 1.5 * torch.randn(4, d, generator=g, dtype=torch.float64)
    diag = 0.2 + 0.6 * torch.rand(4, d, generator=g, dtype=torch.float64)
    sixteen = GaussianMixture(means, diag, weights=[0.1, 0.2, 0.3, 0.4])
    return {"2-D": two, "16-D": sixteen}


def _pf_ode(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.likelihood import log_likelihood
    from reverie.process import VPLinear

    proc = VPLinear()
    tols = [1e-2, 1e-4, 1e-6] if args.quick else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    rows = []
    for name, gm in _mixtures(args.seed).items():
        x = gm.sample(args.n, torch.Generator().manual_seed(args.seed + 1))
        exact = gm.log_prob(x)
        for tol in tols:
            base_time = None
            for est, kw in (("exact", {}),
                            ("hutchinson-rademacher", {"probe": "rademacher"}),
                            ("hutchinson-gaussian", {"probe": "gaussian"})):
                div = "exact" if est == "exact" else "hutchinson"
                t0 = time.perf_counter()
                res = log_likelihood(gm.denoiser(proc), x, div, rtol=tol, atol=tol,
                                     generator=torch.Generator().manual_seed(args.seed + 2),
                                     return_info=True, **kw)
                sec = time.perf_counter() - t0
                base_time = sec if base_time is None else base_time
                err = res.log_likelihood - exact
                rows.append({
                    "mixture": name, "estimator": est, "tol": tol, "nfe": res.nfe,
                    "mean_abs_err": float(err.abs().mean()), "max_abs_err": float(err.abs().max()),
                    "bias": float(err.mean()),
                    "rel_err": float((err.abs() / exact.abs().clamp(min=1.0)).mean()),
                    "time_vs_exact": sec / base_time,
                })
    return rows


def _ito(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.likelihood import ito_log_density
    from reverie.process import VPLinear

    proc = VPLinear()
    steps_list = [50, 200, 800] if args.quick else [50, 100, 200, 400, 800, 1600]
    n = 128 if args.quick else 256
    rows = []
    for name, gm in _mixtures(args.seed).items():
        for steps in steps_list:
            noise = torch.randn(n, gm.dim, generator=torch.Generator().manual_seed(args.seed),
                                dtype=torch.float64)
            tr = ito_log_density(gm.denoiser(proc), noise, "ddpm", steps, keep_path=True,
                                 generator=torch.Generator().manual_seed(args.seed + 1),
                                 prior=lambda x, g=gm: g.log_prob(x, proc.t_max, proc))
            exact = torch.stack([gm.log_prob(p, t, proc) for p, t in zip(tr.path, tr.t)])
            err = tr.log_q - exact
            rows.append({
                "mixture": name, "steps": steps, "nfe": tr.nfe,
                "end_mean_abs_err": float(err[-1].abs().mean()),
                "end_bias": float(err[-1].mean()),
                "path_mean_abs_err": float(err.abs().mean()),
                "exact_change": float((exact[-1] - exact[0]).abs().mean()),
            })
    return rows


def _compose(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.compose import (
        HMC,
        MALA,
        UHMC,
        ULA,
        MixtureEnergy,
        Product,
        sample_with_corrector,
        superpose,
    )
    from reverie.metrics import mode_weight_error, sliced_wasserstein
    from reverie.process import VPLinear
    from reverie.reference import Gaussian, GaussianMixture, mixture_product, mixture_union
    from reverie.samplers import sample

    proc = VPLinear()
    n = 500 if args.quick else 2000
    gen = lambda s: torch.Generator().manual_seed(args.seed + s)  # noqa: E731
    noise = lambda: torch.randn(n, 2, generator=gen(0), dtype=torch.float64)  # noqa: E731

    def sw(x, ref):
        return sliced_wasserstein(x, ref, generator=gen(99))

    def floor(target, ref):
        return sum(sw(target.sample(n, gen(200 + r)), ref) for r in range(4)) / 4

    rows = []
    a = GaussianMixture([[-2.0, 1.5], [-1.0, -2.0]], 0.15, [0.7, 0.3])
    b = GaussianMixture([[2.0, 1.0], [1.5, -1.5]], [0.2, 0.1], [0.5, 0.5])
    target = mixture_union([a, b], [0.3, 0.7])
    ref = target.sample(n, gen(100))
    fl = floor(target, ref)
    steps = 100 if args.quick else 250
    res = superpose([a.denoiser(proc), b.denoiser(proc)], noise(), "or", [0.3, 0.7],
                    sampler="ddpm", steps=steps, generator=gen(1))
    rows.append({"task": "OR of two mixtures", "method": "superpose or", "nfe": res.nfe,
                 "sw_over_floor": sw(res.x0, ref) / fl,
                 "mode_err": mode_weight_error(res.x0, target)})
    fixed = sample(Product([a.denoiser(proc), b.denoiser(proc)], [0.3, 0.7]), noise(), "ddpm",
                   steps, generator=gen(1))
    rows.append({"task": "OR of two mixtures", "method": "fixed weights (no densities)",
                 "nfe": 2 * steps, "sw_over_floor": sw(fixed, ref) / fl,
                 "mode_err": mode_weight_error(fixed, target)})
    ga = Gaussian([-1.0, 0.0], torch.tensor([0.3, 0.3]).diag())
    gb = Gaussian([1.5, 0.5], torch.tensor([0.6, 0.2]).diag())
    res = superpose([ga.denoiser(proc), gb.denoiser(proc)], noise(), "and", sampler="ddpm",
                    steps=steps, generator=gen(1))
    avg = sample(Product([ga.denoiser(proc), gb.denoiser(proc)], [0.5, 0.5]), noise(), "ddpm",
                 steps, generator=gen(1))
    pairs = (("superpose and", res.x0, res.nfe), ("average of scores", avg, 2 * steps))
    for method, x, nfe in pairs:
        rows.append({"task": "AND of two Gaussians", "method": method, "nfe": nfe,
                     "density_gap": float((ga.log_prob(x) - gb.log_prob(x)).abs().mean())})
    products = {
        "product of two Gaussians": (
            Gaussian([-1.0, 0.0], torch.tensor([1.0, 0.5]).diag()),
            Gaussian([1.5, 0.5], torch.tensor([0.3, 1.0]).diag())),
        "product of two mixtures": (
            GaussianMixture([[-1.5, 0.0], [1.5, 0.0]], 0.3),
            GaussianMixture([[0.0, -1.5], [0.0, 1.5], [1.5, 1.5]], 0.5, [0.3, 0.3, 0.4])),
    }
    for task, (pa, pb) in products.items():
        target = mixture_product(pa, pb)
        ref = target.sample(n, gen(100))
        fl = floor(target, ref)
        model = Product([MixtureEnergy(pa, proc), MixtureEnergy(pb, proc)])
        for corr in (None, ULA(), ULA(data_variance=1.0), MALA(), HMC(), UHMC(),
                     UHMC(data_variance=1.0)):
            out = sample_with_corrector(model, noise(), corr, "ddpm", 50, generator=gen(1))
            rows.append({
                "task": task, "method": "score sum" if corr is None else corr.label,
                "nfe": out.nfe + out.corrector_evals, "sw_over_floor": sw(out.x0, ref) / fl,
                "acceptance": float(out.acceptance.mean()) if len(out.acceptance) else None,
            })
    return rows


def _digits(args: argparse.Namespace) -> list[dict[str, Any]] | str:
    try:
        from reverie.data import load_digits
        from reverie.hub import load
    except ImportError as err:
        return f"skipped: {err}"
    from reverie.likelihood import bits_per_dim, log_likelihood

    model = load("digits")
    x_train, _ = load_digits("train")
    x, _ = load_digits("test")
    if args.digits_n is not None:
        x = x[: args.digits_n]
    x = x.to(torch.float64)
    bin_width = 1.0 / 8.0  # pixel values 0..16 mapped by v / 8 - 1
    g = torch.Generator().manual_seed(args.seed)
    # uniform dequantisation inside each pixel's bin (Theis et al. 2016)
    x_deq = x + bin_width * (torch.rand(x.shape, generator=g, dtype=torch.float64) - 0.5)
    dims = x[0].numel()
    rows = []
    den = model.denoiser
    n_exact = 8 if args.quick else 32  # the exact divergence costs 64 backward passes per call
    settings = [("hutchinson-rademacher", 1e-3, len(x))] if args.quick else [
        ("hutchinson-rademacher", 1e-3, len(x)), ("hutchinson-rademacher", 1e-5, len(x)),
        ("hutchinson-rademacher", 1e-3, n_exact)]
    settings.append(("exact", 1e-3, n_exact))
    for est, tol, count in settings:
        t0 = time.perf_counter()
        div = "exact" if est == "exact" else "hutchinson"
        lls, nfe = [], 0
        for start in range(0, count, 128):
            res = log_likelihood(den, x_deq[start:min(start + 128, count)], div, rtol=tol,
                                 atol=tol, return_info=True,
                                 generator=torch.Generator().manual_seed(args.seed + 1 + start))
            lls.append(res.log_likelihood)
            nfe = max(nfe, res.nfe)
        ll = torch.cat(lls)
        sec = time.perf_counter() - t0
        bpd = bits_per_dim(ll, dims, bin_width=bin_width)
        rows.append({"model": "digits (diffusion)", "estimator": est, "tol": tol, "n": count,
                     "nfe": nfe, "bits_per_dim": float(bpd.mean()),
                     "bpd_se": float(bpd.std() / math.sqrt(len(bpd))),
                     "nats_per_image": float(-ll.mean()), "seconds": sec})
    # context: a full-covariance Gaussian fitted to the (dequantised) training digits
    xt = x_train.to(torch.float64).reshape(len(x_train), -1)
    xt = xt + bin_width * (torch.rand(xt.shape, generator=g, dtype=torch.float64) - 0.5)
    mean, cov = xt.mean(0), torch.cov(xt.T) + 1e-3 * torch.eye(dims, dtype=torch.float64)
    gauss = torch.distributions.MultivariateNormal(mean, cov)
    ll = gauss.log_prob(x_deq.reshape(len(x_deq), -1))
    bpd = bits_per_dim(ll, dims, bin_width=bin_width)
    rows.append({"model": "Gaussian fit (train)", "estimator": "closed form", "tol": None,
                 "n": len(x), "nfe": 0, "bits_per_dim": float(bpd.mean()),
                 "bpd_se": float(bpd.std() / math.sqrt(len(bpd))),
                 "nats_per_image": float(-ll.mean()), "seconds": 0.0})
    return rows


def _auc_stats(members: torch.Tensor, nonmembers: torch.Tensor, seed: int,
               reps: int = 1000) -> dict[str, float]:
    """ROC AUC, its 95% percentile-bootstrap interval (members and non-members resampled
    separately) and the TPR at 1% FPR (threshold: the score above which at most 1% of the
    non-members lie)."""
    from reverie.likelihood import roc_auc

    g = torch.Generator().manual_seed(seed)
    m, n = len(members), len(nonmembers)
    boot = torch.tensor([roc_auc(members[torch.randint(m, (m,), generator=g)],
                                 nonmembers[torch.randint(n, (n,), generator=g)])
                         for _ in range(reps)])
    lo, hi = torch.quantile(boot.double(), torch.tensor([0.025, 0.975], dtype=torch.float64))
    k = int(0.01 * n)  # false positives allowed at 1% FPR
    thr = nonmembers.sort(descending=True).values[k]
    return {"auc": roc_auc(members, nonmembers), "auc_lo": float(lo), "auc_hi": float(hi),
            "tpr_at_1pct_fpr": float((members > thr).double().mean()), "fpr_cap": k / n}


def _clid(args: argparse.Namespace) -> list[dict[str, Any]] | str:
    try:
        from reverie.data import load_digits
        from reverie.hub import load
    except ImportError as err:
        return f"skipped: {err}"
    from reverie.likelihood import mmse_gap, roc_auc

    model = load("digits")  # trained on load_digits("train"); "test" is held out
    x_in, y_in = load_digits("train")
    x_out, y_out = load_digits("test")
    quick = getattr(args, "quick", False)  # a smoke run: 64 + 64 digits, 8 points x 2 draws
    n = min(args.clid_n, len(x_out), 64 if quick else len(x_out))
    g = torch.Generator().manual_seed(args.seed)  # random subsets (the order may follow writers)
    pick = torch.randperm(len(x_in), generator=g)[:n]
    pick_out = torch.randperm(len(x_out), generator=g)[:n]
    opts = {"points": min(args.clid_points, 8) if quick else args.clid_points,
            "noise": min(args.clid_noise, 2) if quick else args.clid_noise}
    scores: dict[str, list[torch.Tensor]] = {}
    levels: dict[str, list[torch.Tensor]] = {}
    t0 = time.perf_counter()
    for part, (x, y) in (("in", (x_in[pick], y_in[pick])),
                         ("out", (x_out[pick_out], y_out[pick_out]))):
        g = torch.Generator().manual_seed(args.seed + (1 if part == "in" else 2))
        for start in range(0, n, 100):
            xs, ys = x[start:start + 100].float(), y[start:start + 100]
            null = {"class_labels": torch.full_like(ys, model.num_classes)}
            with torch.no_grad():
                gap = mmse_gap(model.denoiser, xs, {"class_labels": ys}, null, generator=g, **opts)
            row = {  # higher = more likely a member
                # clid_score(alpha=1), the default: D(x, c) = log p(x | c) - log p(x)
                "CLiD D(x, c) (alpha = 1, default)": gap.integrate(),
                "loss attack -L(x, c)": -gap.cond_error.mean(0),  # clid_score(alpha=0)
                "unconditional loss -L(x, null)": -(gap.gap + gap.cond_error).mean(0),
            }
            for name, v in row.items():
                scores.setdefault(f"{name}|{part}", []).append(v)
            levels.setdefault(part, []).append(-gap.cond_error)  # [L, B]
    sec = time.perf_counter() - t0
    pairs = {name: (torch.cat(scores[f"{name}|in"]), torch.cat(scores[f"{name}|out"]))
             for name in dict.fromkeys(k.split("|")[0] for k in scores)}
    # context, not an attack one could run blind: the loss at its best single log-SNR level,
    # the level picked on these same scores (optimistic)
    l_in, l_out = torch.cat(levels["in"], 1), torch.cat(levels["out"], 1)
    best = max(range(len(l_in)), key=lambda i: roc_auc(l_in[i], l_out[i]))
    lam = float(gap.log_snr[best])
    pairs[f"loss attack at the best log-SNR ({lam:.1f}; picked on this data)"] = (
        l_in[best], l_out[best])
    # null control: the CLiD score on held-out digits split in two random halves (AUC ~ 0.5)
    d_out = pairs["CLiD D(x, c) (alpha = 1, default)"][1]
    pairs["null control: CLiD D, held-out vs held-out"] = (d_out[: n // 2], d_out[n // 2:])
    rows = []
    for name, (s_in, s_out) in pairs.items():
        rows.append({"score": name, "n_members": len(s_in), "n_heldout": len(s_out), **opts,
                     **_auc_stats(s_in, s_out, args.seed + 3),
                     "mean_in": float(s_in.mean()), "mean_out": float(s_out.mean()),
                     "seconds": sec})
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    valid = ("pf_ode", "ito", "compose", "digits", "clid")
    bad = [s for s in sections if s not in valid]
    if bad:
        raise ValueError(f"unknown section(s) {bad}; expected a subset of {', '.join(valid)}")
    torch.set_num_threads(1)  # small tensors: thread hand-offs dominate
    out: dict[str, Any] = {"machine": machine(), "quick": bool(args.quick)}
    if "pf_ode" in sections:
        rows = _pf_ode(args)
        out["pf_ode"] = rows
        print("\nProbability-flow ODE log-likelihood vs exact log p (VPLinear, dopri5, "
              f"N(0, sigma_T^2) prior, {args.n} points)")
        print(format_table(
            ["mixture", "estimator", "rtol=atol", "NFE", "mean |err| (nats)", "max |err|", "bias",
             "mean rel. err", "time / exact"],
            [[r["mixture"], r["estimator"], f"{r['tol']:.0e}", r["nfe"], r["mean_abs_err"],
              r["max_abs_err"], r["bias"], r["rel_err"], r["time_vs_exact"]] for r in rows]))
    if "ito" in sections:
        rows = _ito(args)
        out["ito"] = rows
        print("\nIto density estimator along DDPM paths vs exact log q_t(x_t) (VPLinear)")
        print(format_table(
            ["mixture", "steps = NFE", "mean |err| at t_min", "bias at t_min",
             "mean |err| along path", "mean |change of log q|"],
            [[r["mixture"], r["nfe"], r["end_mean_abs_err"], r["end_bias"],
              r["path_mean_abs_err"], r["exact_change"]] for r in rows]))
    if "compose" in sections:
        rows = _compose(args)
        out["compose"] = rows
        print("\nComposition vs exact targets (VPLinear, DDPM; SW = sliced W2 / sampling floor)")
        print(format_table(
            ["task", "method", "model evals", "SW / floor", "mode TV", "density gap", "accept"],
            [[r["task"], r["method"], r["nfe"], r.get("sw_over_floor", "-"),
              r.get("mode_err", "-"), r.get("density_gap", "-"),
              "-" if r.get("acceptance") is None else r["acceptance"]] for r in rows]))
    if "digits" in sections:
        rows = _digits(args)
        out["digits"] = rows
        if isinstance(rows, str):
            print(f"\ndigits bits/dim: {rows}")
        else:
            print("\nBits/dim on held-out digits (unconditional model, uniformly dequantised, "
                  "bin 1/8; max NFE over batches of 128)")
            print(format_table(
                ["model", "estimator", "rtol=atol", "images", "NFE", "bits/dim", "+- s.e.",
                 "NLL nats/image", "seconds"],
                [[r["model"], r["estimator"], "-" if r["tol"] is None else f"{r['tol']:.0e}",
                  r["n"], r["nfe"], r["bits_per_dim"], r["bpd_se"], r["nats_per_image"],
                  r["seconds"]] for r in rows]))
    if "clid" in sections:
        rows = _clid(args)
        out["clid"] = rows
        if isinstance(rows, str):
            print(f"\nCLiD membership: {rows}")
        else:
            print(f"\nCLiD membership inference on the digits model: {rows[0]['n_members']} "
                  f"training vs {rows[0]['n_heldout']} held-out digits, {rows[0]['points']} "
                  f"log-SNR points x {rows[0]['noise']} noise draws (seconds: all scores)")
            print(format_table(
                ["score", "members", "non-members", "ROC AUC", "95% CI (bootstrap)",
                 "TPR @ 1% FPR", "mean (members)", "mean (non-members)", "seconds"],
                [[r["score"], r["n_members"], r["n_heldout"], r["auc"],
                  f"[{r['auc_lo']:.3f}, {r['auc_hi']:.3f}]", r["tpr_at_1pct_fpr"],
                  r["mean_in"], r["mean_out"], r["seconds"]]
                 for r in rows]))
    return out
