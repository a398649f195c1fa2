"""``reverie search``: inference-time search / reward alignment under an NFE budget; writes a
grid of the samples, a reward-vs-NFE plot, the samples and a JSON summary."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from reverie._io import save_array, write_text
from reverie.commands._options import add_option_argument, parse_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="steer a model towards a reward with an NFE budget (best-of-N, FK, DTS, ...)",
        description="Spend an NFE budget per sample to get samples that score higher under a "
        "reward (or follow p(x) exp(r(x)/T)). Writes grid.png (the samples), reward_vs_nfe.png "
        "(mean reward at the budget and at smaller ones), samples.pt and result.json.",
    )
    p.add_argument("--model", default="digits",
                   help="bundled model name, model folder or hub id; 'mixture' is the exact 2-D "
                   "Gaussian mixture of the benchmark (default: digits)")
    p.add_argument("--reward", default=None,
                   help="classifier:LABEL (digit classifier log-probability) or linear:W1,W2,... "
                   "(default: classifier:7 for digits, linear:0.75,0.5 for 2-D models)")
    p.add_argument("--method", default="fk", help="search method (see reverie.search.METHODS)")
    p.add_argument("--budget", type=int, required=True, help="network evaluations per sample")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=16,
                   help="samples returned (default 16)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="T of the target p(x) exp(r(x)/T) (default 1)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps per trajectory (20)")
    p.add_argument("--sampler", default=None, help="sampler (default: the method's)")
    p.add_argument("--seed", type=int, default=0, help="sample k depends only on seed + k")
    p.add_argument("--levels", type=int, default=4,
                   help="also run budget/2, budget/4, ... (this many) for the reward-vs-NFE plot")
    add_option_argument(p, "method option, e.g. potential=max or max_children=8")
    p.add_argument("--chunk", type=int, default=2048, help="most rows per network call")
    p.add_argument("--out", default="out/search", help="output folder (default out/search)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, distributed_ok=True)  # sharded / split under torchrun


def _load(name: str):
    """``(denoiser or LoadedModel, sample shape, exact TiltedMixture factory or None)``."""
    if name == "mixture":
        from reverie.bench.search import problem

        mix, _, den, _ = problem()
        return den, (2,), mix
    from reverie import hub

    model = hub.load(name)
    return model, tuple(model.sample_shape), None


def run(args: argparse.Namespace) -> int:
    import torch

    from reverie import distributed as dist
    from reverie import search
    from reverie.rewards import ClassifierReward, LinearReward, digit_judge, parse_reward

    method = search.METHODS[args.method].name
    options = parse_options(args.option)
    model, shape, mixture = _load(args.model)
    spec = args.reward or ("classifier:7" if shape == (1, 8, 8) else
                           "linear:0.75,0.5" if shape == (2,) else None)
    if spec is None:
        raise ValueError(f"pass --reward for a model with samples of shape {shape}")
    reward = parse_reward(spec)
    budgets = sorted({max(1, args.budget // 2**j) for j in range(max(args.levels, 0) + 1)})
    judge = None
    if isinstance(reward, ClassifierReward) and shape == (1, 8, 8):
        judge = digit_judge()
    levels, final = [], None
    for budget in budgets:
        try:
            res = search.run(
                model, reward, method=method, budget=budget, n=args.n,
                temperature=args.temperature, generator=_generators(args.seed, args.n),
                shape=shape, sampler=args.sampler, steps=args.steps, chunk=args.chunk,
                progress=not args.quiet and dist.is_main(), **options,
                distributed=dist.is_initialized(),  # particle methods: one population
            )
        except ValueError as err:
            if budget != args.budget and "needs a budget" in str(err):
                continue  # a smaller level the method cannot run
            raise
        entry = {"budget": budget, "nfe": res.nfe, "reward_mean": float(res.rewards.mean()),
                 "reward_sem": float(res.rewards.std() / math.sqrt(args.n)) if args.n > 1 else 0.0,
                 "reward_max": float(res.rewards.max()), "info": _jsonable(res.info)}
        if judge is not None:
            entry["accuracy"] = float((judge(res.samples) == reward.label).double().mean())
        levels.append(entry)
        final = res
    if not dist.is_main():  # under torchrun rank 0 writes and reports every rank's samples
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exact = None
    if mixture is not None and isinstance(reward, LinearReward):
        exact = reward.tilt(mixture, args.temperature).mean_reward()
    title = f"{method}, {args.budget} NFE/sample, mean reward {levels[-1]['reward_mean']:.3f}"
    _grid(final.samples, shape, out / "grid.png", title)
    _curve(levels, out / "reward_vs_nfe.png", method, spec, exact)
    save_array(final.samples, out / "samples.pt")
    summary = {"model": args.model, "reward": spec, "method": method, "budget": args.budget,
               "n": args.n, "temperature": args.temperature, "steps": args.steps,
               "options": options, "levels": levels, "exact_tilted_mean_reward": exact}
    write_text(json.dumps(summary, indent=2), out / "result.json")
    for e in levels:
        acc = f", accuracy {e['accuracy']:.3f}" if "accuracy" in e else ""
        print(f"NFE {e['nfe']:6d}: mean reward {e['reward_mean']:.4f} "
              f"(max {e['reward_max']:.4f}){acc}")
    if exact is not None:
        print(f"exact tilted target mean reward: {exact:.4f}")
    print(f"wrote {out / 'grid.png'}, {out / 'reward_vs_nfe.png'}, {out / 'samples.pt'}, "
          f"{out / 'result.json'}")
    del torch
    return 0


def _generators(seed: int, n: int):
    from reverie import seeded_generators

    return seeded_generators(seed, n)


def _jsonable(info: dict) -> dict:
    return {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool, type(None)))}


def _grid(samples, shape: tuple[int, ...], path: Path, title: str) -> None:
    from reverie import plot

    if len(shape) == 3:
        plot.image_grid(samples, path, title=title)
    elif shape == (2,):
        plot.scatter(samples, path, title=title)
    else:
        raise ValueError(f"no picture for samples of shape {shape}; see samples.pt")


def _curve(levels: list[dict], path: Path, method: str, spec: str, exact: float | None) -> None:
    from reverie.plot import _figure, save_figure

    fig = _figure(4.5, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    x = [e["nfe"] for e in levels]
    y = [e["reward_mean"] for e in levels]
    err = [e["reward_sem"] for e in levels]
    ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{method}: mean reward")
    if exact is not None:
        ax.axhline(exact, color="k", ls="--", lw=1, label="exact tilted target")
    if len(x) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE per sample")
    ax.set_ylabel(f"reward ({spec})")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


