"""``reverie bench representation``: LRDM on the 8x8 digits (docs/representation.md).

Trains :class:`reverie.representation.LRDMNet` (encoder to ``--latent`` numbers, conditional
MLP denoiser, jointly, EDM objective) on the digits' train split, then on the held-out test
split reports:

1. the linear probe (ridge classifier, closed form) on the LRDM latent against the same probe
   on PCA to the same dimension, on an untrained encoder of the same architecture and on the
   raw 64 pixels;
2. reconstruction: one sample per test digit given its latent (DPM-Solver++(2M), 20 steps),
   mean squared error per pixel against the digit, beside the PCA reconstruction and a
   sample given another digit's latent (shuffled: what the decoder makes of the latent alone);
3. DoD in miniature (:func:`reverie.representation.dod_sample`): the bundled unconditional
   digits model at a few steps as stage 1, the LRDM latent of its samples as the visual prior,
   the LRDM decoder as stage 2; Frechet distance in the digits classifier's features
   (:class:`reverie.bench.digits.Judge`) to the test digits, against stage 1 alone at the same
   and at the combined number of denoiser calls, beside the floor of real training digits;
4. X2I in miniature (:func:`reverie.representation.distill_aligner`): the trained LRDM decoder
   stays frozen; a *student* encoder sees another view of each digit (the image transposed,
   PCA to 16 numbers fitted on transposed training digits) and an MLP aligner maps its
   features to the decoder's conditioning, distilled on the decoder's predictions; test
   reconstruction error from the student against the teacher's own latent, a least-squares
   map of the student features onto the latents (embedding matching instead of
   distillation) and the mean latent (no information).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine
from reverie.data import load_digits
from reverie.denoisers import Denoiser
from reverie.representation import LRDMNet, encode, linear_probe, reconstruct, train_lrdm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train-steps", type=int, default=3000, help="Adam steps (default 3000)")
    parser.add_argument("--latent", type=int, default=8, help="latent size (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dod-n", type=int, default=500, help="DoD samples (default 500)")
    parser.add_argument("--x2i-steps", type=int, default=1000,
                        help="aligner distillation steps (default 1000)")
    parser.add_argument("--dod-steps", default="3,10",
                        help="stage-1 and stage-2 dpmpp_2m steps of DoD (default 3,10)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed)
    (xtr, ytr), (xte, yte) = load_digits("train"), load_digits("test")
    xtr, xte = xtr.float(), xte.float()
    t0 = time.perf_counter()
    res = train_lrdm(xtr, latent=args.latent, steps=args.train_steps, seed=args.seed,
                     sigma_data=0.6)
    print(f"trained {args.train_steps} steps in {res.seconds:.0f} s; loss "
          f"{res.losses[0]:.4f} -> {res.losses[-1]:.4f}")
    torch.set_grad_enabled(False)
    flat_tr, flat_te = xtr.reshape(len(xtr), -1).double(), xte.reshape(len(xte), -1).double()
    centre = flat_tr.mean(0)
    basis = torch.linalg.svd(flat_tr - centre, full_matrices=False).Vh[:args.latent].T
    untrained = LRDMNet(64, args.latent)
    reps = {"LRDM latent": (encode(res.ema, xtr), encode(res.ema, xte)),
            f"PCA-{args.latent}": ((flat_tr - centre) @ basis, (flat_te - centre) @ basis),
            "untrained encoder": (encode(untrained, xtr), encode(untrained, xte)),
            "raw pixels (64)": (flat_tr, flat_te)}
    probe = {k: linear_probe(a, ytr, b, yte) for k, (a, b) in reps.items()}
    rows1 = [[k, args.latent if k != "raw pixels (64)" else 64, v] for k, v in probe.items()]
    den = Denoiser(res.model, res.process, res.prediction)
    z = reps["LRDM latent"][1]
    g = torch.Generator().manual_seed(args.seed + 1)
    noise = torch.randn(len(xte), 1, 8, 8, generator=g, dtype=torch.float64)
    perm = torch.randperm(len(xte), generator=g)

    def mse(x: torch.Tensor) -> float:
        return float(((x.reshape(len(xte), -1).double() - flat_te) ** 2).mean())

    recon = {"LRDM, own latent": mse(reconstruct(den, z, noise)),
             f"PCA-{args.latent}": mse((flat_te - centre) @ basis @ basis.T + centre),
             "LRDM, another digit's latent": mse(reconstruct(den, z[perm], noise))}
    rows2 = [[k, v] for k, v in recon.items()]
    dod = _dod(args, res, den)
    x2i = _x2i(args, res, den, xtr, xte, noise, mse)
    table = (format_table(["representation", "size", "linear-probe test accuracy"], rows1)
             + "\n\n" + format_table(["reconstruction", "MSE per pixel (data in [-1, 1])"],
                                     rows2)
             + "\n\n" + format_table(["DoD in miniature", "NFE", "FD to test digits"],
                                     [list(r.values()) for r in dod])
             + "\n\n" + format_table(["X2I in miniature: conditioning of the frozen decoder",
                                       "reconstruction MSE"], [list(r.values()) for r in x2i]))
    print(table)
    print(f"\n{time.perf_counter() - t0:.0f} s; {machine()}")
    return {"train_steps": args.train_steps, "latent": args.latent, "seed": args.seed,
            "train_seconds": res.seconds,
            "probe": [{"representation": k, "accuracy": v} for k, v in probe.items()],
            "reconstruction": [{"method": k, "mse": v} for k, v in recon.items()],
            "dod": dod,
            "x2i": x2i,
            "table": table}


def _dod(args: argparse.Namespace, res: Any, den: Denoiser) -> list[dict[str, Any]]:
    from reverie.bench.digits import Judge, frechet_distance
    from reverie.hub import load
    from reverie.representation import dod_sample

    judge, model = Judge(args.seed), load("digits")
    s1, s2 = (int(v) for v in args.dod_steps.split(","))
    n = args.dod_n

    def fd(x: torch.Tensor) -> float:
        return frechet_distance(judge.features(x.float()), judge.test_features)

    def first(steps: int) -> torch.Tensor:
        return model.sample(n, sampler="dpmpp_2m", steps=steps, seed=args.seed)

    noise2 = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed + 2),
                         dtype=torch.float64)
    x1, x2 = dod_sample(lambda _: first(s1), lambda x: encode(res.ema, x), den, noise2, noise2,
                        steps=s2)
    g = torch.Generator().manual_seed(args.seed)
    floor = sum(fd(judge.train_x[torch.randperm(len(judge.train_x), generator=g)[:n]])
                for _ in range(5)) / 5
    return [{"method": f"stage 1 alone (bundled digits model, {s1} steps)", "nfe": s1,
             "fd": fd(x1)},
            {"method": f"DoD: stage 1 + LRDM stage 2 ({s2} steps)", "nfe": s1 + s2, "fd": fd(x2)},
            {"method": f"stage 1 alone, {s1 + s2} steps", "nfe": s1 + s2,
             "fd": fd(first(s1 + s2))},
            {"method": f"floor: {n} real training digits", "nfe": 0, "fd": floor}]


def _x2i(args: argparse.Namespace, res: Any, den: Denoiser, xtr: torch.Tensor,
         xte: torch.Tensor, noise: torch.Tensor, mse: Any) -> list[dict[str, Any]]:
    from reverie.representation import distill_aligner

    def view(x: torch.Tensor) -> torch.Tensor:  # the student's modality: the transposed digit
        return x.transpose(-1, -2).reshape(len(x), -1).double()

    vtr, vte = view(xtr), view(xte)
    centre = vtr.mean(0)
    basis = torch.linalg.svd(vtr - centre, full_matrices=False).Vh[:16].T
    s_tr, s_te = (vtr - centre) @ basis, (vte - centre) @ basis  # the student encoder
    z_tr, z_te = encode(res.ema, xtr).double(), encode(res.ema, xte).double()
    torch.manual_seed(args.seed)
    aligner = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.SiLU(),
                                  torch.nn.Linear(64, args.latent)).double()
    frozen = Denoiser(res.model.requires_grad_(False), res.process, res.prediction)
    record = distill_aligner(frozen, aligner, s_tr, z_tr, xtr.double(), steps=args.x2i_steps,
                             seed=args.seed)
    print(f"X2I aligner: {record}")
    feats = torch.cat([s_tr, torch.ones(len(s_tr), 1, dtype=torch.float64)], 1)
    w = torch.linalg.lstsq(feats, z_tr).solution  # embedding matching, for comparison
    with torch.no_grad():
        conds = {"teacher: the LRDM latent of the digit": z_te,
                 "X2I: distilled aligner on the student's features": aligner(s_te),
                 "least-squares map of the student's features to the latent":
                     torch.cat([s_te, torch.ones(len(s_te), 1, dtype=torch.float64)], 1) @ w,
                 "mean latent (no information)": z_tr.mean(0).expand(len(z_te), -1)}
        return [{"conditioning": k, "mse": mse(reconstruct(den, z, noise))}
                for k, z in conds.items()]
