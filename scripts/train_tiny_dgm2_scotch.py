"""Fit the DGM² and SCOTCH miniatures and compare them with every baseline (docs/timeseries.md).

    python scripts/train_tiny_dgm2_scotch.py [--dgm2-steps 200] [--scotch-steps 300]
        [--problems 3] [--seed 0] [--out FILE.json]

DGM²: a 3-regime hidden Markov series on 3 coordinates (reverie.timeseries.dgm2.RegimeSeries,
noise 0.5, stay probability 0.85), 200 training series of 24 steps with 70% of the entries
missing; forecasts 1-4 steps ahead of 100 new sparse series, scored by the expected CRPS under
the exact forecast mixture over that mixture's own CRPS (closed form, 1 is the floor) and by
the expected squared error of the forecast mean over the exact conditional mean's. Compared:
DGM² with 3 clusters, DGM² with 1 cluster (no cluster dynamics), the AR(1) and last-value
point forecasts, exact draws.

SCOTCH: ``--problems`` random 5-node linear SDEs with 6 edges, 20 paths at 60 irregular times on
[0, 12]; edge F1 (``q > 0.5`` for SCOTCH) and AUROC. Compared: SCOTCH with a linear drift and
with an 8-unit MLP drift, discrete-time Granger (VAR(1) ``|t|``, threshold chosen for the best
F1 on a selection problem), absolute correlation (threshold chosen alike), and the brute-force
best graph of the linear Euler-Maruyama score (BIC).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from reverie.timeseries.dgm2 import (
    RegimeSeries,
    ar1_forecast,
    crps_mixture,
    fit_dgm2,
    last_value_forecast,
    mixture_crps,
    sample_mixture,
    sparse_mask,
)
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


def dgm2_table(steps: int, seed: int) -> dict[str, dict[str, float]]:
    g = torch.Generator().manual_seed(seed + 11_000)
    law, horizon, n = RegimeSeries(), 4, 100
    x, _ = law.sample(200, 24, g)
    mask = sparse_mask(x.shape, 0.3, g)
    models = {k: fit_dgm2(x, mask, k, steps=steps, generator=g) for k in (3, 1)}
    xt, _ = law.sample(n, 24, g)
    mt = sparse_mask(xt.shape, 0.3, g)
    w, mu, sd = law.forecast_law(xt, mt, horizon)
    mean = w @ mu
    var = float((w @ mu**2 + sd**2 - mean**2).sum())
    floor = sum(mixture_crps(w[i, h], mu, sd) for i, h in np.ndindex(n, horizon))
    forecasts = {}  # name: (samples [n, s, H, d] or a point [n, H, d], mean [n, H, d])
    for k, model in models.items():
        mw, mmu, msd = (v.detach().double() for v in model.forecast_law(xt.float(), mt, horizon))
        forecasts[f"DGM² ({k} cluster{'s' if k > 1 else ''})"] = (
            sample_mixture(mw, mmu, msd, 200, g), mw @ mmu)
    forecasts["AR(1) from last obs."] = (ar1_forecast(xt, mt, horizon),) * 2
    forecasts["last observed value"] = (last_value_forecast(xt, mt, horizon),) * 2
    forecasts["exact draws"] = (sample_mixture(w, mu, sd, 200, g), mean)
    out = {}
    for name, (f, m) in forecasts.items():
        crps = sum(crps_mixture(f[i, :, h] if f.ndim == 4 else f[i, h], w[i, h], mu, sd)
                   for i, h in np.ndindex(n, horizon))
        out[name] = {"crps_ratio": crps / floor,
                     "mse_ratio": (float(((m.double() - mean) ** 2).sum()) + var) / var}
    return out


def scotch_table(steps: int, problems: int, seed: int) -> dict[str, dict[str, float]]:
    def problem(s: int):
        g = torch.Generator().manual_seed(s)
        sde = random_graph_sde(5, 6, g)
        t = random_times(60, 12.0, g)
        return sde.graph(), sde.simulate(20, t, g), t, g

    truth, x, _, _ = problem(seed + 12_000)  # selection problem: the baselines' thresholds
    cuts = {}
    for name, fn in (("Granger VAR(1)", granger_scores), ("abs. correlation", correlation_scores)):
        s = fn(x)
        cuts[name] = max(sorted(set(s[s > 0].tolist())), key=lambda c: graph_f1(s >= c, truth))
    rows: dict[str, dict[str, list[float]]] = {}

    def add(name: str, f1: float, auroc: float) -> None:
        rows.setdefault(name, {"f1": [], "auroc": []})
        rows[name]["f1"].append(f1)
        rows[name]["auroc"].append(auroc)

    for p in range(problems):
        truth, x, t, g = problem(seed + 12_001 + p)
        for hidden in (0, 8):
            torch.manual_seed(seed + p)
            q = fit_scotch(x, t, hidden=hidden, steps=steps, generator=g).edge_probs().detach()
            add(f"SCOTCH ({'linear' if hidden == 0 else 'MLP 8'} drift)", graph_f1(q > 0.5, truth),
                edge_auroc(q, truth))
        for name, fn in (("Granger VAR(1)", granger_scores),
                         ("abs. correlation", correlation_scores)):
            s = fn(x)
            add(name, graph_f1(s >= cuts[name], truth), edge_auroc(s, truth))
        brute = best_graph(x, t)
        add("brute-force best linear graph (BIC)", graph_f1(brute, truth),
            edge_auroc(brute.double(), truth))
    return {k: {m: float(np.mean(v)) for m, v in r.items()} for k, r in rows.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dgm2-steps", type=int, default=200)
    ap.add_argument("--scotch-steps", type=int, default=300)
    ap.add_argument("--problems", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dgm2 = dgm2_table(args.dgm2_steps, args.seed)
    print("| forecaster (sparse series, 70% missing, 1-4 ahead) | CRPS / exact | "
          "mean sq. err / exact |\n|---|---|---|")
    for name, r in dgm2.items():
        print(f"| {name} | {r['crps_ratio']:.3f} | {r['mse_ratio']:.3f} |")
    scotch = scotch_table(args.scotch_steps, args.problems, args.seed)
    print(f"\n| graph learner ({args.problems} x 5-node linear SDE, 60 irregular obs.) | edge F1 "
          f"| edge AUROC |\n|---|---|---|")
    for name, r in scotch.items():
        print(f"| {name} | {r['f1']:.3f} | {r['auroc']:.3f} |")
    sec = time.perf_counter() - t0
    print(f"\n{sec:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "dgm2": dgm2, "scotch": scotch, "seconds": sec}, f,
                      indent=2)


if __name__ == "__main__":
    main()
