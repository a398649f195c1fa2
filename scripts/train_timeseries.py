"""Train the bundled ``seasonal`` time-series model (seeded; see docs/timeseries.md).

    python scripts/train_timeseries.py [--out src/reverie/models/seasonal] [--steps 15000]

Data: 50000 exact draws of :class:`reverie.timeseries.SeasonalGP` (48 steps, period 12: a
periodic, an AR(1) and a slow squared-exponential part plus white noise). Network: the residual
MLP of :mod:`reverie.nets` on the 48 values (hidden 192, depth 3, 0.4 M parameters), EDM
objective (Karras et al. 2022) with sigma_data = the data std, Adam lr 1e-3, batch 512,
15000 steps, EMA 0.999. This is TSDiff's *unconditional* model (Kollovieh et al. 2023): it
never sees a mask; forecasting and imputation come from self-guidance at inference
(:mod:`reverie.timeseries`). 1201 s on the shared 2-core machine with 1 thread while ~7 other
jobs ran (an estimated 5-6 minutes on an idle core); the record is in the folder's
``reverie.json``.
"""

from __future__ import annotations

import argparse
import platform

import torch

from reverie.hub import save_native
from reverie.nets import MLP
from reverie.timeseries import SeasonalGP
from reverie.train import train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="src/reverie/models/seasonal")
    p.add_argument("--steps", type=int, default=15000)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n-data", type=int, default=50_000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    law = SeasonalGP()
    data = law.sample(args.n_data, torch.Generator().manual_seed(args.seed)).float()
    sigma_data = round(float(data.std()), 3)
    torch.manual_seed(args.seed)
    net = MLP(dim=law.length, hidden=192, depth=3)
    res = train(net, data, prediction="edm", sigma_data=sigma_data, steps=args.steps,
                batch_size=args.batch_size, lr=args.lr, warmup=200, ema_decay=0.999,
                grad_clip=1.0, seed=args.seed, checkpoint=args.checkpoint)
    training = {
        "recipe": "scripts/train_timeseries.py", "steps": args.steps,
        "batch_size": args.batch_size, "seed": args.seed, "lr": args.lr,
        "seconds": round(res.seconds, 1), "final_loss": res.losses[-1],
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "objective": "edm", "sigma_data": sigma_data,
        "data": f"reverie.timeseries.SeasonalGP().sample({args.n_data}, seed)",
        "law": {k: getattr(law, k) for k in law.__dataclass_fields__},
    }
    folder = save_native(
        args.out, res.ema, net_class="MLP", net_config=net.config, process=res.process,
        prediction="x0", precondition="edm", sigma_data=sigma_data, time_input="c_noise",
        name="seasonal", description="seasonal series of 48 steps (reverie.timeseries."
        "SeasonalGP), unconditional residual MLP (TSDiff's model); EDM",
        sample_shape=(law.length,), extra={"training": training})
    print(f"wrote {folder} (final loss {res.losses[-1]:.4f}, {res.seconds:.0f} s)")


if __name__ == "__main__":
    main()
