"""``reverie bench pde``: DiffusionPDE (Huang et al. 2024) on a tiny model trained on PDE solutions.

The PDE is 1-D Darcy flow ``-(a u')' = 1`` on ``(0, 1)`` with ``u(0) = u(1) = 0``, discretised
by finite differences on ``M = 32`` interior nodes (the coefficient at the cell faces is the mean
of its two nodes); ``log a`` is a Gaussian process (std 0.5, length scale 0.2) and ``u`` the
exact solution of the discrete linear system. The model is reverie's residual MLP trained with
the EDM objective (:func:`reverie.train.train`) on the joint field ``x = (log a / 0.5, u / 0.1)``
(64 values), as the paper's prior over coefficient and solution together
(``scripts/train_tiny_pde.py`` trains and saves it; the bench trains it in-process unless
``--model`` names the saved folder).

Two of the paper's partial-observation tasks, with ``--observed`` of the 32 nodes seen:
``forward`` (``u`` from sparse ``a``) and ``inverse`` (``a`` from sparse ``u``). Methods:
DiffusionPDE (:func:`reverie.inverse.diffusion_pde`, the paper's EDM Heun step, observation and
PDE losses; and with the DDPM step at equal NFE), the observation-only guidance (``pde_scale
= 0``), and a classical baseline (forward: linear interpolation of the observed ``log a`` and the
PDE solve; inverse: the constant ``a`` whose PDE solution best fits the observed ``u``). The
authors' released Darcy script switches the PDE loss on only in the last 20% of the steps (and
cuts the observation scale to 0.1x there): a row with that schedule (PDE scales 10x the grid).
Guidance scales are selected on the first ``--select`` problems and reported on the others.
Columns: ``rel L2`` (relative L2 error of the unknown field, per sample, mean over problems;
the scales are selected on it), ``rel L2 of mean`` (the same for the mean of the samples),
``PDE res`` (RMS of the discrete residual of the returned ``(a, u)``, in units of ``f``).
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import torch
from torch import Tensor

M = 32  # interior nodes
H = 1.0 / (M + 1)  # grid spacing
A_STD, A_LENGTH, U_SCALE = 0.5, 0.2, 0.1  # log a ~ GP(0, std^2 exp(-d^2 / 2 l^2)); u / U_SCALE


def _faces(a: Tensor) -> Tensor:
    """``a`` at the ``M + 1`` cell faces: the boundary nodes' values, then neighbour means."""
    return torch.cat([a[:, :1], 0.5 * (a[:, 1:] + a[:, :-1]), a[:, -1:]], 1)


def darcy_solve(log_a: Tensor) -> Tensor:
    """``u [B, M]``: the exact solution of the discrete ``-(a u')' = 1``, ``u = 0`` at both ends."""
    fa = _faces(log_a.exp()) / H**2
    K = torch.diag_embed(fa[:, :-1] + fa[:, 1:]) - torch.diag_embed(fa[:, 1:-1], 1) \
        - torch.diag_embed(fa[:, 1:-1], -1)
    return torch.linalg.solve(K, torch.ones_like(log_a).unsqueeze(-1)).squeeze(-1)


def darcy_residual(log_a: Tensor, u: Tensor) -> Tensor:
    """``-(a u')' - 1`` at the interior nodes (finite differences, the scheme of
    :func:`darcy_solve`): zero for its solutions."""
    zero = u.new_zeros(u.shape[0], 1)
    flux = _faces(log_a.exp()) * torch.diff(torch.cat([zero, u, zero], 1), dim=1) / H
    return -torch.diff(flux, dim=1) / H - 1.0


def split(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(log a, u)`` in physical units from joint fields ``x [B, 2M]``."""
    return x[:, :M] * A_STD, x[:, M:] * U_SCALE


def field_residual(x: Tensor) -> Tensor:
    """DiffusionPDE's residual ``f(x)`` of joint fields, in field units (``* H^2 / U_SCALE``)."""
    return darcy_residual(*split(x)) * (H**2 / U_SCALE)


def sample_pairs(n: int, generator: torch.Generator) -> Tensor:
    """``n`` joint fields ``(log a / A_STD, u / U_SCALE)`` ``[n, 2M]`` (float64)."""
    s = torch.arange(1, M + 1, dtype=torch.float64) * H
    k = torch.exp(-0.5 * (s[:, None] - s[None]) ** 2 / A_LENGTH**2) + 1e-6 * torch.eye(M)
    z = torch.randn(n, M, generator=generator, dtype=torch.float64)
    log_a = A_STD * z @ torch.linalg.cholesky(k).T
    return torch.cat([log_a / A_STD, darcy_solve(log_a) / U_SCALE], 1)


def train_model(steps: int = 12000, n_data: int = 20_000, seed: int = 0, hidden: int = 128,
                depth: int = 3, progress: bool = False) -> Any:
    """Train the joint prior (EDM objective, residual MLP); returns the :class:`TrainResult`."""
    from reverie.nets import MLP
    from reverie.train import train

    data = sample_pairs(n_data, torch.Generator().manual_seed(seed)).float()
    torch.manual_seed(seed)
    net = MLP(dim=2 * M, hidden=hidden, depth=depth)
    return train(net, data, prediction="edm", sigma_data=round(float(data.std()), 3),
                 steps=steps, batch_size=256, lr=1e-3, warmup=200, ema_decay=0.999,
                 grad_clip=1.0, seed=seed, progress=progress)


def _problem(task: str, observed: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(x_true [2M], observed indices into the joint field)``."""
    g = torch.Generator().manual_seed(10_000 + seed)
    x = sample_pairs(1, g)[0]
    nodes = torch.randperm(M, generator=g)[:observed].sort().values
    return x, nodes if task == "forward" else nodes + M


def _baseline(task: str, x: Tensor, idx: Tensor) -> Tensor:
    """The classical estimate of the joint field from the observed entries."""
    log_a, u = split(x[None])
    if task == "forward":  # interpolate log a linearly (constant outside), then solve
        nodes = idx.double()
        s = torch.arange(M, dtype=torch.float64)
        j = torch.searchsorted(nodes, s).clamp(1, len(nodes) - 1)
        w = ((s - nodes[j - 1]) / (nodes[j] - nodes[j - 1])).clamp(0, 1)
        la = torch.lerp(log_a[0, idx][j - 1], log_a[0, idx][j], w)[None]
    else:  # the constant a = c: u = u_1 / c, c fitted to the observed u by least squares
        u1, y = darcy_solve(torch.zeros(1, M, dtype=torch.float64))[0, idx - M], u[0, idx - M]
        la = torch.full((1, M), -math.log(max(float(u1 @ y / (u1 @ u1)), 1e-6)),
                        dtype=torch.float64)
    return torch.cat([la / A_STD, darcy_solve(la) / U_SCALE], 1)


def _scores(task: str, xs: Tensor, x: Tensor) -> dict[str, float]:
    """Relative L2 error of the unknown field (``u`` forward, ``a`` inverse), per sample."""
    la, u = split(xs.double())
    la0, u0 = split(x[None])
    est, true = (u, u0) if task == "forward" else (la.exp(), la0.exp())
    rel = ((est - true).norm(dim=1) / true.norm(dim=1)).mean()
    rel_mean = (est.mean(0) - true[0]).norm() / true.norm()
    res = darcy_residual(la, u).pow(2).mean(1).sqrt().mean()
    return {"rel_l2": float(rel), "rel_l2_mean": float(rel_mean), "pde_res": float(res)}


def _guided(den, task, x, idx, sampler, steps, scale, pde_scale, n, seed, **kw) -> Tensor:
    from reverie.inverse import MatrixOperator
    from reverie.inverse.diffusion_pde import diffusion_pde

    sel = torch.zeros(len(idx), 2 * M)
    sel[torch.arange(len(idx)), idx] = 1.0
    return diffusion_pde(den, MatrixOperator(sel), x[idx].float(), 0.01, field_residual,
                         steps=steps, n=n, scale=scale, pde_scale=pde_scale, sampler=sampler,
                         generator=torch.Generator().manual_seed(seed), **kw)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=str, default=None,
                        help="folder saved by scripts/train_tiny_pde.py (default: train here)")
    parser.add_argument("--train-steps", type=int, default=12000)
    parser.add_argument("--problems", type=int, default=26,
                        help="problems per task; the first --select choose the scales")
    parser.add_argument("--select", type=int, default=6)
    parser.add_argument("--observed", type=int, default=3, help="observed nodes of the 32")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem")
    parser.add_argument("--steps", type=int, default=50, help="Heun steps (DDPM: twice)")
    parser.add_argument("--scales", type=str, default="1,3,10", help="observation scales")
    parser.add_argument("--pde-scales", type=str, default="0.01,0.03,0.1,0.3,1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.bench.common import format_table
    from reverie.denoisers import Denoiser
    from reverie.samplers import NonFiniteError

    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    if not 0 < args.select < args.problems:
        raise ValueError(f"--select must be in 1..problems-1, got {args.select}")
    if not 2 <= args.observed <= M:
        raise ValueError(f"--observed must be in 2..{M}, got {args.observed}")
    if args.model:
        from reverie.hub import load

        den, train_s = load(args.model).denoiser, None
    else:
        res = train_model(args.train_steps, seed=args.seed)
        den, train_s = Denoiser(res.model.eval(), res.process, res.prediction), res.seconds
    scales = [float(s) for s in args.scales.split(",")]
    pde_scales = [float(s) for s in args.pde_scales.split(",")]
    # name -> (sampler, steps, candidate (scale, pde_scale) pairs, options)
    late = {"pde_start": 0.8, "late_scale": 0.1}  # the authors' released Darcy script
    methods = {
        "DiffusionPDE (Heun)": (
            "heun", args.steps, [(s, p) for s in scales for p in pde_scales], {}),
        "DiffusionPDE (Heun, PDE loss in the last 20%)": (
            "heun", args.steps, [(s, 10 * p) for s in scales for p in pde_scales], late),
        "DiffusionPDE (DDPM, equal NFE)": (
            "ddpm", 2 * args.steps, [(s / 2, p / 2) for s in scales for p in pde_scales], {}),
        "observation only (Heun)": ("heun", args.steps, [(s, 0.0) for s in scales], {}),
    }
    result: dict[str, Any] = {
        "pde": "-(a u')' = 1 on (0,1), u(0)=u(1)=0, 32 nodes, log a ~ GP(std 0.5, length 0.2)",
        "observed": f"{args.observed}/{M}", "samples": args.samples, "steps": args.steps,
        "problems": args.problems - args.select, "train_steps": args.train_steps,
        "train_seconds": train_s, "model": args.model or "trained here", "selection": {},
        "rows": []}
    table = []
    for task in ("forward", "inverse"):
        probs = [_problem(task, args.observed, args.seed + p) for p in range(args.problems)]
        for name, (sampler, steps, grid, kw) in methods.items():

            def score(pair, ps, sampler=sampler, steps=steps, task=task, kw=kw):
                try:
                    runs = [_scores(task, _guided(den, task, x, idx, sampler, steps, *pair,
                                                  args.samples, args.seed + p, **kw), x)
                            for p, (x, idx) in ps]
                except NonFiniteError:  # diverged at this scale: never selected
                    return {"rel_l2": math.inf, "rel_l2_mean": math.inf, "pde_res": math.inf}
                return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}

            sel = {pair: score(pair, list(enumerate(probs))[:args.select])["rel_l2"]
                   for pair in grid}
            best = min(sel, key=lambda k: sel[k])
            result["selection"][f"{task}/{name}"] = {"scale": best[0], "pde_scale": best[1]}
            s = score(best, list(enumerate(probs))[args.select:])
            result["rows"].append({"task": task, "method": name, **s})
            table.append([task, name, f"{best[0]:g} / {best[1]:g}", *s.values()])
        runs = [_scores(task, _baseline(task, x, idx), x) for x, idx in probs[args.select:]]
        s = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        base = "interpolate log a + solve" if task == "forward" else "constant a fitted + solve"
        result["rows"].append({"task": task, "method": base, **s})
        table.append([task, base, "-", *s.values()])
    print(f"DiffusionPDE on 1-D Darcy, {args.observed}/{M} nodes observed, {args.samples} "
          f"samples x {args.problems - args.select} problems (scales selected on {args.select})")
    print(format_table(["task", "method", "scale / pde scale", "rel L2", "rel L2 of mean",
                        "PDE res"], table))
    result["seconds"] = time.perf_counter() - t0
    return result
