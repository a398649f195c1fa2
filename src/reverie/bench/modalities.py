"""``reverie bench modalities``: one row per data modality, its quality measure for reverie's
method against a simple baseline and against exact draws (the floor), in one table.

Every row reuses the modality's own code (docs/timeseries.md, functions.md, graphs.md,
audio.md); ``lower`` / ``higher`` says which way is better.

* **time series** -- TSDiff self-guided forecasts of the bundled ``seasonal`` model (scale 4,
  200 ancestral steps: the defaults) of the last 12 steps of a SeasonalGP series, CRPS over
  the exact conditional law's own CRPS (1 is the floor); baseline: the linear AR(12) forecast
  (ARIMA-like, a point forecast).
* **functions** -- NDP conditional sampling (bundled ``ndp-gp``, RePaint 50 x 3 DDPM steps) at
  12 targets given 4 observed points, CRPS over the exact GP posterior's; baseline: linear
  interpolation of the observed points (a point estimate).
* **graphs** -- GDSS with the tiny score network trained ``--graph-train-steps`` on community
  graphs, the mean of the degree / clustering / spectrum MMDs to held-out graphs; baseline:
  Erdos-Renyi at the family's edge density.
* **point clouds** -- Bayesian Diffusion Models' fusion of a Gaussian shape prior and a noisy
  reconstruction (exact beliefs, no trained network), CRPS against the exact posterior;
  baseline: the reconstruction alone.
* **audio timing** -- Stable Audio's timing conditioning: a tiny :class:`reverie.audio.TimingNet`
  trained ``--audio-train-steps``, asked for 0.4-1.2 s of a tone in a 1.28 s window; the mean
  absolute error (seconds) of the rendered audio's sounding length; baseline: the same network
  trained without the timing embedding.
* **audio pitch** -- the same samples: the fraction of sounding frames whose measured pitch
  (FFT peak of the rendered waveform, within half a bin, 25 Hz) is the requested note's;
  baseline: the untimed network.
* **sparse series** -- DGM² in miniature (3 clusters, fitted ``--dgm2-steps`` on 200 series of
  24 steps of a 3-regime hidden Markov series on 3 coordinates, 70% of the entries missing),
  forecasts 1-4 steps ahead of 100 new sparse series: CRPS of its samples over the exact
  forecast mixture's own CRPS (closed form; 1 is the floor), and the squared error of its
  forecast mean over the exact conditional mean's; baseline: a per-coordinate AR(1) from the
  last observed value (a point forecast).
* **SDE graph** -- SCOTCH in miniature (linear drift, ``--scotch-steps`` Adam steps) on
  ``--problems`` random 5-node linear SDEs with 6 edges, 20 paths observed at 60 irregular
  times: F1 of the edges with ``q > 0.5`` against a discrete-time Granger test (VAR(1) ``|t|``
  over a threshold chosen for the best F1 on a separate selection problem), and AUROC of
  ``q`` against the absolute correlations; floor: the brute-force best graph of the same
  Euler-Maruyama score (least squares over every parent set, BIC penalty).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reverie.bench.common import format_table, machine

MODALITIES = ("timeseries", "functions", "graphs", "pointclouds", "audio", "dgm2", "scotch")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only", default=",".join(MODALITIES),
                        help=f"comma-separated subset of {', '.join(MODALITIES)}")
    parser.add_argument("--problems", type=int, default=3,
                        help="problems per Gaussian row (series, functions)")
    parser.add_argument("--samples", type=int, default=200, help="samples per problem")
    parser.add_argument("--graph-train-steps", type=int, default=400)
    parser.add_argument("--audio-train-steps", type=int, default=600)
    parser.add_argument("--dgm2-steps", type=int, default=200)
    parser.add_argument("--scotch-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)


def _crps_ratio(x: Tensor, mean: Tensor, cov: Tensor) -> float:
    """Expected CRPS of samples ``[n, d]`` (or a point ``[d]``) under the exact Gaussian law
    over the law's own CRPS (1 is the floor; a point at the exact mean scores sqrt 2)."""
    from reverie.timeseries import crps_gaussian

    sd = torch.diagonal(cov).sqrt()
    x = x[None].repeat(2, 1) if x.ndim == 1 else x
    return crps_gaussian(x, mean, sd) / float(sd.mean() / torch.pi**0.5)


def _row(modality: str, data: str, method: str, measure: str, better: str, value: float,
         baseline: str, base_value: float, floor: float, seconds: float) -> dict[str, Any]:
    return {"modality": modality, "data": data, "method": method, "measure": measure,
            "better": better, "value": value, "baseline": baseline, "baseline_value": base_value,
            "floor": floor, "seconds": round(seconds, 1)}


def _timeseries(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.hub import load
    from reverie.timeseries import SeasonalGP, forecast_mask, impute
    from reverie.timeseries.tsdiff import linear_forecast

    t0 = time.perf_counter()
    law, model = SeasonalGP(), load("seasonal")
    mask = forecast_mask(law.length, 12)
    acc: dict[str, list[float]] = {"tsdiff": [], "ar": [], "exact": []}
    for p in range(args.problems):
        g = torch.Generator().manual_seed(10_000 + args.seed + p)
        truth = law.sample(1, g)[0]
        cond = law.conditional(truth, mask)
        m, c = cond.means[0][~mask], cond.covariances[0][~mask][:, ~mask]
        x = impute(model.denoiser, truth, mask, args.samples, generator=g)[:, ~mask]
        acc["tsdiff"].append(_crps_ratio(x, m, c))
        acc["ar"].append(_crps_ratio(linear_forecast(truth[mask].float(), 12), m, c))
        acc["exact"].append(_crps_ratio(cond.sample(args.samples, g)[:, ~mask], m, c))
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    return [_row("time series", "SeasonalGP, forecast 12 of 48", "TSDiff self-guidance "
                 "(bundled seasonal)", "CRPS / exact CRPS", "lower", mean["tsdiff"],
                 "linear AR(12)", mean["ar"], mean["exact"], time.perf_counter() - t0)]


def _functions(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.functions import condition, load_ndp

    t0 = time.perf_counter()
    net, gp = load_ndp()
    targets = torch.linspace(-0.95, 0.95, 12, dtype=torch.float64)
    acc: dict[str, list[float]] = {"ndp": [], "interp": [], "exact": []}
    for p in range(args.problems):
        g = torch.Generator().manual_seed(args.seed + 4000 + p)
        x_obs = gp.locations(1, 4, g)[0].sort().values
        y_obs = gp.sample(x_obs, 1, g)[0]
        m, c = gp.posterior(x_obs, y_obs, targets)
        with torch.no_grad():
            s = condition(net, x_obs, y_obs, targets, n=args.samples, steps=50, resample=3,
                          generator=g)
        acc["ndp"].append(_crps_ratio(s, m, c))
        interp = torch.from_numpy(np.interp(targets.numpy(), x_obs.numpy(), y_obs.numpy()))
        acc["interp"].append(_crps_ratio(interp, m, c))
        exact = torch.distributions.MultivariateNormal(m, c).sample((args.samples,))
        acc["exact"].append(_crps_ratio(exact, m, c))
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    return [_row("functions", "GP (SE 0.3), 4 observed -> 12 targets", "NDP conditional "
                 "(bundled ndp-gp)", "CRPS / exact CRPS", "lower", mean["ndp"],
                 "linear interpolation", mean["interp"], mean["exact"], time.perf_counter() - t0)]


def _graphs(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.graphs import GDSS, erdos_renyi, family, graph_mmd, quantize, sample_gdss
    from reverie.graphs.net import GraphScoreNet, train_gdss

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(args.seed)
    train, test = family("community", 256, g), family("community", 64, g)
    net = GraphScoreNet(features=1, hidden=64, layers=3)
    train_gdss(net, train, steps=args.graph_train_steps, generator=g)
    net = net.double().eval()
    n = test.shape[-1]
    density = float(test.sum() / (64 * n * (n - 1)))
    with torch.no_grad():
        _, a = sample_gdss(lambda x, a, t: net(x, a, t), GDSS(), 64, n, 1, steps=200,
                           generator=g)

    def score(sample: Tensor) -> float:
        return float(np.mean(list(graph_mmd(sample, test).values())))

    er = torch.stack([erdos_renyi(n, density, g) for _ in range(64)])
    return [_row("graphs", "community (2 x 6 nodes)", f"GDSS predictor (tiny net, "
                 f"{args.graph_train_steps} steps)", "MMD (deg/clus/spec mean)", "lower",
                 score(quantize(a)), f"Erdos-Renyi p={density:.2f}", score(er),
                 score(family("community", 64, g)), time.perf_counter() - t0)]


def _pointclouds(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.pointclouds import BayesianFusion, GaussianPointPrior, primitive
    from reverie.process import VPLinear
    from reverie.samplers import sample

    t0 = time.perf_counter()
    proc, var_p, var_r = VPLinear(), 0.2, 0.1
    acc: dict[str, list[float]] = {"bdm": [], "recon": [], "exact": []}
    for p in range(args.problems):
        g = torch.Generator().manual_seed(args.seed + 7000 + p)
        template = primitive("sphere", 1, 16, g)[0].double()
        truth = primitive("cube", 1, 16, g)[0].double()
        y = truth + var_r**0.5 * torch.randn(16, 3, generator=g, dtype=torch.float64)
        prior = GaussianPointPrior(template, var_p, proc)
        post_m = ((template * var_r + y * var_p) / (var_p + var_r)).reshape(-1)
        post_c = torch.eye(48, dtype=torch.float64) * var_p * var_r / (var_p + var_r)

        def recon(x, t, y=y):  # the data-driven belief: the observation and its noise
            return y.expand_as(x), torch.full_like(x, var_r)

        noise = torch.randn(args.samples, 16, 3, generator=g, dtype=torch.float64)
        x = sample(BayesianFusion(prior.belief, recon, proc), noise, "dpmpp_2m", 20)
        acc["bdm"].append(_crps_ratio(x.reshape(args.samples, -1), post_m, post_c))
        r = y + var_r**0.5 * torch.randn(args.samples, 16, 3, generator=g, dtype=torch.float64)
        acc["recon"].append(_crps_ratio(r.reshape(args.samples, -1), post_m, post_c))
        e = post_m + post_c.diagonal().sqrt() * torch.randn(args.samples, 48, generator=g,
                                                             dtype=torch.float64)
        acc["exact"].append(_crps_ratio(e, post_m, post_c))
    mean = {k: float(np.mean(v)) for k, v in acc.items()}
    return [_row("point clouds", "cube from noisy points, sphere prior (16 pts)",
                 "BDM fusion (exact beliefs)", "CRPS / exact CRPS", "lower", mean["bdm"],
                 "reconstruction alone", mean["recon"], mean["exact"], time.perf_counter() - t0)]


def _audio(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.audio import TimedNotes, TimingNet, analyse, render, sounding, train_timing
    from reverie.process import VPLinear
    from reverie.samplers import sample

    t0 = time.perf_counter()
    proc, law = VPLinear(), TimedNotes(32)
    pitches, bin_hz = [4, 6, 8], 50.0
    g = torch.Generator().manual_seed(args.seed)
    totals = torch.tensor([0.4, 0.6, 0.8, 1.0, 1.2]).repeat(4)
    pitch = torch.tensor(pitches).repeat_interleave(7)[: len(totals)]
    n = len(totals)

    def judge(x: Tensor) -> tuple[float, float]:
        """Mean |sounding length - requested| (s) and the fraction of sounding frames at the
        requested pitch, measured on the rendered waveforms."""
        err, hit = [], []
        for i in range(n):
            f0, loud = analyse(render(x[i]))
            err.append(abs(sounding(loud) - float(totals[i])))
            k = int(round(float(totals[i]) * law.rate))
            hit.append(float((abs(f0[:k] - bin_hz * float(pitch[i])) < bin_hz / 2).mean()))
        return float(np.mean(err)), float(np.mean(hit))

    res = {}
    for timing in (True, False):
        net = TimingNet(law.frames, timing=timing)
        train_timing(net, law, proc, pitches, steps=args.audio_train_steps, generator=g)
        cond = {"pitch": pitch, "seconds_start": torch.zeros(n), "seconds_total": totals}
        with torch.no_grad():
            x = sample(net.eval().denoiser(proc), torch.randn(n, law.frames, law.bins,
                                                                 generator=g),
                       "dpmpp_2m", 20, cond=cond)
        res[timing] = judge(x)
    mu = torch.stack([law.means([int(p)], [0.0], 0.0, float(s)) for p, s in zip(pitch, totals)])
    floor = judge(law.sample(mu, g))
    sec = time.perf_counter() - t0
    data = "one tone, 0.4-1.2 s in a 1.28 s window"
    name = f"Stable Audio timing cond. (tiny net, {args.audio_train_steps} steps)"
    return [_row("audio timing", data, name, "abs length error (s)", "lower", res[True][0],
                 "same net, no timing", res[False][0], floor[0], sec),
            _row("audio pitch", data, name, "frames at the note's pitch", "higher",
                 res[True][1], "same net, no timing", res[False][1], floor[1], 0.0)]


def _dgm2(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.timeseries.dgm2 import (
        RegimeSeries,
        ar1_forecast,
        crps_mixture,
        fit_dgm2,
        mixture_crps,
        sample_mixture,
        sparse_mask,
    )

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(args.seed + 11_000)
    law, horizon = RegimeSeries(), 4
    x, _ = law.sample(200, 24, g)
    model = fit_dgm2(x, sparse_mask(x.shape, 0.3, g), 3, steps=args.dgm2_steps, generator=g)
    xt, _ = law.sample(100, 24, g)
    mt = sparse_mask(xt.shape, 0.3, g)
    w, mu, sd = law.forecast_law(xt, mt, horizon)
    mw, mmu, msd = model.forecast_law(xt.float(), mt, horizon)
    s = sample_mixture(mw.detach().double(), mmu.detach().double(), msd.detach().double(),
                       args.samples, g)
    ex = sample_mixture(w, mu, sd, args.samples, g)
    ar = ar1_forecast(xt, mt, horizon)
    crps: dict[str, float] = {"dgm2": 0.0, "ar": 0.0, "exact": 0.0, "floor": 0.0}
    for i, h in np.ndindex(100, horizon):
        law_ih = (w[i, h], mu, sd)
        crps["dgm2"] += crps_mixture(s[i, :, h], *law_ih)
        crps["ar"] += crps_mixture(ar[i, h], *law_ih)
        crps["exact"] += crps_mixture(ex[i, :, h], *law_ih)
        crps["floor"] += mixture_crps(*law_ih)
    mean = w @ mu  # the exact conditional mean and the expected squared errors around it
    var = float((w @ mu**2 + sd**2 - mean**2).sum())

    def mse(point: Tensor) -> float:
        return (float(((point.double() - mean) ** 2).sum()) + var) / var

    sec = time.perf_counter() - t0
    data = "3 regimes x 3 coords, 70% missing, 1-4 ahead"
    name = f"DGM² miniature (3 clusters, {args.dgm2_steps} steps)"
    return [_row("sparse series", data, name, "CRPS / exact CRPS", "lower",
                 crps["dgm2"] / crps["floor"], "AR(1) from last obs.",
                 crps["ar"] / crps["floor"], crps["exact"] / crps["floor"], sec),
            _row("sparse series", data, name, "mean sq. err / exact", "lower",
                 mse((mw @ mmu).detach()), "AR(1) from last obs.", mse(ar), 1.0, 0.0)]


def _scotch(args: argparse.Namespace) -> list[dict[str, Any]]:
    from reverie.timeseries.scotch import (
        best_graph,
        correlation_scores,
        edge_auroc,
        fit_scotch,
        granger_scores,
        graph_f1,
        random_graph_sde,
        random_times,
    )

    t0 = time.perf_counter()

    def problem(seed: int):
        g = torch.Generator().manual_seed(seed)
        sde = random_graph_sde(5, 6, g)
        t = random_times(60, 12.0, g)
        return sde.graph(), sde.simulate(20, t, g), t, g

    truth, x, t, _ = problem(args.seed + 12_000)  # selection: Granger's threshold
    tg = granger_scores(x)
    cut = max(sorted(set(tg[tg > 0].tolist())), key=lambda c: graph_f1(tg >= c, truth))
    acc: dict[str, list[float]] = {k: [] for k in ("f1", "auroc", "granger", "corr", "brute")}
    for p in range(args.problems):
        truth, x, t, g = problem(args.seed + 12_001 + p)
        q = fit_scotch(x, t, steps=args.scotch_steps, generator=g).edge_probs().detach()
        acc["f1"].append(graph_f1(q > 0.5, truth))
        acc["auroc"].append(edge_auroc(q, truth))
        acc["granger"].append(graph_f1(granger_scores(x) >= cut, truth))
        acc["corr"].append(edge_auroc(correlation_scores(x), truth))
        acc["brute"].append(graph_f1(best_graph(x, t), truth))
    m = {k: float(np.mean(v)) for k, v in acc.items()}
    data = "5-node linear SDE, 6 edges, 60 irregular obs."
    name = f"SCOTCH miniature (linear drift, {args.scotch_steps} steps)"
    return [_row("SDE graph", data, name, "edge F1 (q > 0.5)", "higher", m["f1"],
                 f"Granger VAR(1), abs t >= {cut:.1f}", m["granger"], m["brute"],
                 time.perf_counter() - t0),
            _row("SDE graph", data, name, "edge AUROC (q)", "higher", m["auroc"],
                 "abs. correlation", m["corr"], 1.0, 0.0)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    only = [m for m in args.only.split(",") if m]
    bad = [m for m in only if m not in MODALITIES]
    if bad:
        raise ValueError(f"unknown modality {bad[0]!r}; expected some of {', '.join(MODALITIES)}")
    if args.problems < 1 or args.samples < 2:
        raise ValueError(f"--problems must be >= 1 and --samples >= 2, got {args.problems} and "
                         f"{args.samples}")
    t0 = time.perf_counter()
    fns = {"timeseries": _timeseries, "functions": _functions, "graphs": _graphs,
           "pointclouds": _pointclouds, "audio": _audio, "dgm2": _dgm2, "scotch": _scotch}
    rows = []
    for m in only:
        torch.manual_seed(args.seed)  # network initialisations: the same whatever runs before
        rows += fns[m](args)
    table = format_table(["modality", "data", "method", "measure", "better", "method value",
                          "baseline", "baseline value", "exact draws (floor)", "seconds"],
                         [[r["modality"], r["data"], r["method"], r["measure"], r["better"],
                           r["value"], r["baseline"], r["baseline_value"], r["floor"],
                           r["seconds"]] for r in rows])
    print(table)
    print(f"\n{time.perf_counter() - t0:.0f} s; {machine()}")
    return {"problems": args.problems, "samples": args.samples, "seed": args.seed,
            "graph_train_steps": args.graph_train_steps,
            "audio_train_steps": args.audio_train_steps, "dgm2_steps": args.dgm2_steps,
            "scotch_steps": args.scotch_steps, "rows": rows, "table": table}
