"""EM with the M-step as diffusion training (Rozet et al. 2024; reverie.inverse.diffusion_fit)
beside the Gaussian-mixture M-step, on the 2-D mixture seen through 200 noisy 1-D projections
(tests/inverse/test_m4_em.py): sliced W2 of the learned prior to the true mixture per round.

    PYTHONPATH=src OMP_NUM_THREADS=1 python scripts/bench_em_diffusion.py
"""

import argparse
import math
import time

import torch

import reverie
from reverie.inverse import MatrixOperator, diffusion_fit, em_prior
from reverie.metrics import sliced_wasserstein
from reverie.nets import MLP
from reverie.reference import GaussianMixture
from reverie.truncation import fit_gaussian_mixture

F64, PROC = torch.float64, reverie.VP.linear()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def observations(per, sy, seed):
    """Four groups of 1-D projections (0, 45, 90, 135 degrees) of a 2-D two-component mixture."""
    true = GaussianMixture(torch.tensor([[-2.0, -1.0], [1.5, 1.5]], dtype=F64), 0.3,
                           torch.tensor([0.4, 0.6], dtype=F64))
    g, obs = gen(seed), []
    for th in (0.0, math.pi / 4, math.pi / 2, 3 * math.pi / 4):
        A = torch.tensor([[math.cos(th), math.sin(th)]], dtype=F64)
        x = true.sample(per, g)
        obs.append((MatrixOperator(A), x @ A.T + sy * torch.randn(per, 1, generator=g, dtype=F64)))
    return true, obs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=400)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--per", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)
    sy = 0.2
    true, obs = observations(args.per, sy, args.seed)
    ref = true.sample(4000, gen(9))

    def dist(x):
        return float(sliced_wasserstein(x, ref, 64, gen(3)))

    def sample(den):  # the learned prior's samples: 32 DDIM steps from the denoiser
        return reverie.sample(den, torch.randn(4000, 2, generator=gen(8), dtype=F64), "ddim",
                              steps=32)

    start = GaussianMixture(torch.zeros(1, 2, dtype=F64), 4.0, torch.ones(1, dtype=F64))
    rows = {"diffusion (MLP, diffusion_fit)": [dist(sample(start.denoiser(PROC)))],
            "Gaussian mixture (2 comp.)": [dist(start.sample(4000, gen(8)))]}
    torch.manual_seed(args.seed)
    net = MLP(dim=2, hidden=args.hidden, depth=2, time_scale=1.0)
    fit = diffusion_fit(net, PROC, steps=args.train_steps, batch_size=128, lr=2e-3, warmup=20,
                        ema_decay=0.99, seed=args.seed)
    t0 = time.perf_counter()
    em_prior(fit, start.denoiser(PROC), obs, sy, rounds=args.rounds, steps=12,
             generator=gen(2), callback=lambda k, den, x: rows[
                 "diffusion (MLP, diffusion_fit)"].append(dist(sample(den))))
    secs = time.perf_counter() - t0
    mixes = []

    def gmm_fit(x):
        mixes.append(fit_gaussian_mixture(x, 2, iters=50, generator=gen(1)))
        return mixes[-1].denoiser(PROC)

    em_prior(gmm_fit, start.denoiser(PROC), obs, sy, rounds=args.rounds, steps=12,
             generator=gen(2))
    rows["Gaussian mixture (2 comp.)"] += [dist(m.sample(4000, gen(8))) for m in mixes]
    lifted = torch.cat([op.pinv(y) for op, y in obs])  # naive: the pseudo-inverses A^+ y
    torch.manual_seed(args.seed)
    naive = diffusion_fit(MLP(dim=2, hidden=args.hidden, depth=2, time_scale=1.0), PROC,
                          steps=args.rounds * args.train_steps, batch_size=128, lr=2e-3,
                          warmup=20, ema_decay=0.99, seed=args.seed)(lifted)
    print(f"diffusion EM: {secs:.1f} s for {args.rounds} rounds")
    print("| M-step | " + " | ".join(f"round {k}" for k in range(args.rounds + 1)) + " |")
    print("|---" * (args.rounds + 2) + "|")
    for name, d in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in d) + " |")
    print(f"naive diffusion fit to A^+ y ({args.rounds * args.train_steps} steps): "
          f"{dist(sample(naive)):.3f}")


if __name__ == "__main__":
    main()
