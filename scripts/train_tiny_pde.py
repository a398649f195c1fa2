"""Train the tiny joint (coefficient, solution) prior of ``reverie bench pde`` (DiffusionPDE).

    python scripts/train_tiny_pde.py [--out /tmp/reverie-darcy1d] [--steps 12000] [--threads 1]

Data: 20000 pairs ``(log a, u)`` of the 1-D Darcy equation ``-(a u')' = 1`` (32 interior nodes,
``log a`` a Gaussian process, ``u`` the exact finite-difference solve; see
:mod:`reverie.bench.pde`), stacked as one 64-value field. Network: reverie's residual MLP
(hidden 128, depth 3), EDM objective with sigma_data = the data std, Adam lr 1e-3, batch 256,
EMA 0.999: 321 s for 12000 steps on the shared 2-core machine (1 thread, other jobs running),
final loss 0.150. No weights are shipped: the bench trains the same model in-process unless given
``--model`` with the folder written here.
"""

from __future__ import annotations

import argparse

import torch

from reverie.bench.pde import M, train_model
from reverie.hub import save_native


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/reverie-darcy1d")
    p.add_argument("--steps", type=int, default=12000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = train_model(args.steps, seed=args.seed, progress=True)
    training = {"recipe": "scripts/train_tiny_pde.py", "steps": args.steps, "seed": args.seed,
                "seconds": round(res.seconds, 1), "final_loss": res.losses[-1]}
    folder = save_native(
        args.out, res.ema, net_class="MLP", net_config=res.ema.config, process=res.process,
        prediction="x0", precondition="edm", sigma_data=res.process.sigma_data,
        time_input="c_noise", name="darcy1d", description="joint (log a, u) of 1-D Darcy flow "
        "(reverie.bench.pde); residual MLP, EDM", sample_shape=(2 * M,),
        extra={"training": training})
    print(f"wrote {folder} (final loss {res.losses[-1]:.4f}, {res.seconds:.0f} s)")


if __name__ == "__main__":
    main()
