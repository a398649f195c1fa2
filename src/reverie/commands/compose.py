"""``reverie compose``: sample a composition of 2-D models (superposition OR / AND, product,
negation, mixture with MCMC correctors) and plot it next to its parts and the exact target."""

from __future__ import annotations

import argparse
import time

import torch

from reverie._io import save_array

OPS = ("or", "and", "product", "negation", "mixture")


def register(sub: argparse._SubParsersAction) -> None:
    from reverie.compose import CORRECTORS

    p = sub.add_parser(
        "compose",
        help="sample a composition of models (OR / AND / product / negation / mixture) and plot it",
        description="Compose diffusion models: superposition with Ito-tracked densities "
                    "(SuperDiff; --op or/and) or products / negations / mixtures with MCMC "
                    "correctors (Reduce, Reuse, Recycle; --op product/negation/mixture). Models "
                    "are exact toy mixtures (ring, grid, left, right, top, bottom) or bundled "
                    "2-D models, NAME or NAME:LABEL (e.g. two-moons:0).",
    )
    p.add_argument("models", nargs="+", help="two or more models (one for a lone sample)")
    p.add_argument("--op", choices=OPS, default="or")
    p.add_argument("--weights", type=float, nargs="+", default=None,
                   help="OR / mixture weights, or product exponents")
    p.add_argument("--strength", type=float, default=0.5, help="negation strength g: q1^(1+g)/q2^g")
    p.add_argument("--corrector", choices=["auto", "none", *CORRECTORS], default="auto",
                   help="MCMC corrector per noise level for product/negation/mixture (auto: MALA "
                        "for models with an energy, else ULA)")
    p.add_argument("--corrector-steps", type=int, default=5)
    p.add_argument("--step-size", type=float, default=None, help="corrector step (relative)")
    p.add_argument("--data-variance", type=float, default=None,
                   help="corrector step scale alpha^2 * data_variance + sigma^2 (default 1 for "
                        "MALA/HMC, 0 for ULA/U-HMC)")
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default 500 for or/and, 50 otherwise)")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=2000,
                   help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 is fastest for small models on a busy machine)")
    p.add_argument("--plot", default="compose.png", help="image file for the plot ('' for none)")
    p.add_argument("--out", default=None, help="save the samples as a .pt file")
    p.set_defaults(func=_run)


def _exact_target(op, models, weights):
    from reverie.reference import mixture_product, mixture_union

    mixtures = [m.mixture for m in models]
    if any(m is None for m in mixtures):
        return None
    if op in ("or", "mixture"):
        return mixture_union(mixtures, weights)
    if op == "product" and (weights is None or all(w == 1.0 for w in weights)):
        target = mixtures[0]
        for m in mixtures[1:]:
            target = mixture_product(target, m)
        return target
    return None


def _save_plot(path: str, panels: list[tuple[str, torch.Tensor]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    allx = torch.cat([p[1] for p in panels]).float()
    lo, hi = torch.quantile(allx, 0.005, dim=0), torch.quantile(allx, 0.995, dim=0)
    pad = 0.1 * (hi - lo)
    for ax, (name, x) in zip(axes[0], panels):
        x = x.float()
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, color="C3" if "compos" in name else "C0")
        ax.set_title(name, fontsize=9)
        ax.set_xlim(float(lo[0] - pad[0]), float(hi[0] + pad[0]))
        ax.set_ylim(float(lo[1] - pad[1]), float(hi[1] + pad[1]))
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    from reverie.plot import save_figure

    save_figure(fig, path, dpi=110)
    plt.close(fig)


def _run(args: argparse.Namespace) -> int:
    from reverie.commands._models import resolve
    from reverie.compose import (
        Mixture,
        Negation,
        Product,
        has_energy,
        make_corrector,
        sample_with_corrector,
        superpose,
    )
    from reverie.metrics import mode_weight_error, sliced_wasserstein
    from reverie.samplers import sample

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    models = resolve(args.models)
    for m in models:
        if tuple(m.sample_shape) != (2,):
            raise ValueError(f"reverie compose plots 2-D models; {m.name!r} has samples of shape "
                             f"{tuple(m.sample_shape)}")
    if args.op == "negation" and len(models) != 2:
        raise ValueError(f"--op negation takes two models (keep, remove), got {len(models)}")
    if args.op in ("or", "and", "mixture", "product") and len(models) < 2:
        raise ValueError(f"--op {args.op} composes two or more models, got {len(models)}")
    steps = args.steps or (500 if args.op in ("or", "and") else 50)
    dens = [m.denoiser for m in models]
    g = lambda s: torch.Generator().manual_seed(args.seed + s)  # noqa: E731
    noise = torch.randn(args.n, 2, generator=g(0), dtype=torch.float64)
    t0 = time.perf_counter()
    info = ""
    if args.op in ("or", "and"):
        res = superpose(dens, noise, args.op, args.weights if args.op == "or" else None,
                        sampler=args.sampler, steps=steps, generator=g(1), progress=True)
        x, nfe = res.x0, res.nfe
        if args.op == "and":
            gap = (res.log_q[-1, 0] - res.log_q[-1, 1]).abs().mean()
            info = f"tracked log-density gap at the last noisy step: {float(gap):.2e}"
    else:
        if args.op == "product":
            model = Product(dens, args.weights)
        elif args.op == "negation":
            model = Negation(dens[0], dens[1], args.strength)
        else:
            model = Mixture(dens, args.weights)
        name = args.corrector
        if name == "auto":
            name = "mala" if has_energy(model) else "ula"
        corr = None
        if name != "none":
            kw = {"steps": args.corrector_steps}
            if args.step_size is not None:
                kw["step_size"] = args.step_size
            if args.data_variance is not None:
                kw["data_variance"] = args.data_variance
            corr = make_corrector(name, **kw)
        out = sample_with_corrector(model, noise, corr, args.sampler, steps, generator=g(1),
                                    progress=True)
        x, nfe = out.x0, out.nfe + out.corrector_evals
        if len(out.acceptance):
            info = f"corrector {corr.label}: mean acceptance {float(out.acceptance.mean()):.3f}"
    seconds = time.perf_counter() - t0
    print(f"{args.op} of {', '.join(args.models)} ({models[0].process!r}): {args.n} samples, "
          f"{nfe} model evaluations per sample, {seconds:.1f} s")
    if info:
        print(info)
    target = _exact_target(args.op, models, args.weights)
    panels = []
    for m in models:
        if m.mixture is not None:
            px = m.mixture.sample(min(args.n, 2000), g(2))
        else:
            px = sample(m.denoiser, torch.randn(min(args.n, 2000), 2, generator=g(2)),
                        "dpmpp_2m", 20)
        panels.append((m.name, px))
    if target is not None:
        ref = target.sample(args.n, g(3))
        sw = sliced_wasserstein(x, ref, generator=g(4))
        floor = sliced_wasserstein(target.sample(args.n, g(5)), ref, generator=g(4))
        print(f"exact target: sliced W2 {sw:.4f} (two exact sample sets: {floor:.4f}); "
              f"mode-weight TV {mode_weight_error(x, target):.3f}")
        panels.append(("exact target", ref))
    panels.append((f"composition ({args.op})", x))
    if args.plot:
        _save_plot(args.plot, panels, f"{args.op}: {' , '.join(args.models)}")
        print(f"plot written to {args.plot}")
    if args.out:
        path = save_array(x, args.out)
        print(f"samples written to {path}")
    return 0
