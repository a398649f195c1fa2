"""Products of trained energy-parameterised diffusion models (Du et al. 2023, "Reduce, Reuse,
Recycle", the 2-D product experiment in miniature).

Two :class:`~reverie.compose.EnergyNet` models are trained by denoising score matching on two
2-D Gaussian mixtures; their product is sampled with DDPM alone (score addition), with ULA
(score addition + unadjusted Langevin) and with MALA (Metropolis-adjusted, needs the learned
energies), and compared with the exact product law (sliced W2 over the sampling floor). The
exact models (:class:`~reverie.compose.MixtureEnergy`) give the same rows with no learning
error.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer samples and steps")
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.compose import (
        MALA,
        ULA,
        EnergyNet,
        MixtureEnergy,
        Product,
        sample_with_corrector,
        train_energy,
    )
    from reverie.metrics import sliced_wasserstein
    from reverie.nets.mlp import MLP
    from reverie.process import VPLinear
    from reverie.reference import GaussianMixture, mixture_product

    torch.set_num_threads(1)
    proc = VPLinear()
    n, steps = (500, 25) if args.quick else (2000, 50)
    gen = lambda s: torch.Generator().manual_seed(args.seed + s)  # noqa: E731
    # the pair of test_product_of_mixtures_with_correctors_beats_score_addition
    a = GaussianMixture([[-1.5, 0.0], [1.5, 0.0]], 0.3)
    b = GaussianMixture([[0.0, -1.5], [0.0, 1.5], [1.5, 1.5]], 0.5, [0.3, 0.3, 0.4])
    target = mixture_product(a, b)
    ref = target.sample(n, gen(100))
    sw = lambda x: sliced_wasserstein(x.double(), ref, generator=gen(99))  # noqa: E731
    floor = sum(sw(target.sample(n, gen(200 + r))) for r in range(4)) / 4
    learned, train_s = [], 0.0
    for k, mix in enumerate((a, b)):
        torch.manual_seed(args.seed + k)
        t0 = time.perf_counter()
        _, model = train_energy(EnergyNet(MLP(2, hidden=128, depth=3)),
                                mix.sample(8000, gen(10 + k)).float(), proc,
                                steps=args.train_steps, batch_size=256, lr=2e-3, warmup=50,
                                ema_decay=0.995, seed=args.seed + k)
        train_s += time.perf_counter() - t0
        learned.append(model)
    rows = []
    pairs = (("exact energies", [MixtureEnergy(a, proc), MixtureEnergy(b, proc)], torch.float64),
             ("trained EnergyNets", learned, torch.float32))
    for models_name, models, dtype in pairs:
        for corr_name, corr in (("none (score addition)", None), ("ULA x5", ULA(5)),
                                ("MALA x5", MALA(5))):
            noise = torch.randn(n, 2, generator=gen(0), dtype=dtype)
            t0 = time.perf_counter()
            out = sample_with_corrector(Product(models), noise, corr, "ddpm", steps,
                                        generator=gen(1))
            rows.append({"models": models_name, "corrector": corr_name,
                         "model_evals": out.nfe + out.corrector_evals,
                         "sw": sw(out.x0), "sw_over_floor": sw(out.x0) / floor,
                         "acceptance": float(out.acceptance.mean()) if corr else None,
                         "seconds": time.perf_counter() - t0})
    print(f"\nProduct of two 2-D mixtures: sliced W2 to the exact product (floor {floor:.4f}); "
          f"DDPM {steps} steps, {n} samples; training {train_s:.1f} s")
    print(format_table(["models", "corrector", "model evals", "SW", "SW / floor", "accept", "s"],
                       [[r["models"], r["corrector"], r["model_evals"], r["sw"],
                         r["sw_over_floor"], "-" if r["acceptance"] is None else r["acceptance"],
                         r["seconds"]] for r in rows]))
    return {"machine": machine(), "quick": bool(args.quick), "floor": floor,
              "train_steps": args.train_steps, "train_seconds": train_s, "rows": rows}
