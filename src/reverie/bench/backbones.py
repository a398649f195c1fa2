"""``reverie bench backbones``: a state-space (Mamba-style) denoiser backbone, DiS (Fei et al.
2024; :class:`reverie.nets.ssm.DiS`), against the residual MLP of the bundled models at equal
parameter count, both trained the same way on the same data with a known law.

Data: SeasonalGP series (48 steps; :class:`reverie.timeseries.SeasonalGP`), whose exact
denoiser is closed-form, so the table can say how far each trained network is from the best
possible one:

* ``MSE / Bayes`` at a noise level: the held-out denoising error of the network over that of
  the exact posterior mean (the Bayes error; 1 is the floor), on fixed test series and noise;
* ``W2``, ``cov err``: unconditional samples (DPM-Solver++(2M), 30 steps) against the exact
  Gaussian law (:func:`reverie.timeseries.gaussian_errors`), with exact draws as the floor.

Both networks: EDM objective (sigma_data = the data std), Adam, the same steps, batch and seed.
DiS tokenises the series in patches of 4 (12 tokens plus time and class tokens), four Mamba
blocks with alternating scan directions and long skips; the MLP has hidden width chosen so
the parameter counts agree within a few percent.

Part ``maetok``: the MAE-style tokenizer (:class:`reverie.nets.maetok.MAETokenizer`) trained
with half of the patches masked against the same autoencoder trained without masking (the
plain-AE baseline), on the 8x8 digits: held-out reconstruction error, the accuracy of a
linear probe (ridge least squares on the latents, train -> test split), and latent diffusion
in miniature: a residual MLP trained on each tokenizer's (standardised) latents, sampled with
DPM-Solver++(2M) and decoded; ``FD`` is the Frechet (Gaussian W2^2) distance of 500 decoded
samples to the held-out digits in pixel space (the reconstructions of the held-out digits give
each tokenizer's floor).

Part ``vae``: a VAE trained by the ELBO (Kingma & Welling 2014; :mod:`reverie.train.vae`) with
latent diffusion on its latents, against the pixel-space bundled ``digits`` model, by the
recipe of :mod:`reverie.train.latent` (an ``AutoencoderKL`` and a class-conditional DiT of about
the digits UNet's parameter count, saved as a ``DiTPipeline`` folder and loaded back by
``reverie.load``, the latent wrapper). Rows: the negative ELBO of the held-out digits
(uniformly dequantised; nats per image and bits/dim of the discrete bins) and the Frechet
distance of 1000 class-balanced samples (DPM-Solver++(2M), 20 steps, no guidance) to the
held-out digits in the digits benchmark's classifier features (:class:`reverie.bench.digits.Judge`)
and in pixels; the VAE's reconstructions of the held-out digits bound what its latent model can
reach, and real training digits give the floor.

LRDM (representation learning) is measured by ``reverie bench representation``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from reverie.bench.common import format_table, machine

SIGMAS = (0.1, 0.5, 1.0, 2.0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=400, help="training steps of each net")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--data", type=int, default=20_000, help="training series")
    parser.add_argument("--test", type=int, default=1000, help="held-out series")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--parts", default="dis,maetok,vae",
                        help="comma-separated subset of dis, maetok, vae")
    parser.add_argument("--tok-steps", type=int, default=300, help="tokenizer training steps")
    parser.add_argument("--latent-steps", type=int, default=1000,
                        help="latent diffusion training steps")
    parser.add_argument("--vae-steps", type=int, default=1500, help="VAE training steps")
    parser.add_argument("--dit-steps", type=int, default=1500,
                        help="latent DiT training steps")
    parser.add_argument("--vae-n", type=int, default=1000, help="samples per model (part vae)")
    parser.add_argument("--vae-variance", choices=("scalar", "per-dim"), default="scalar",
                        help="the VAE decoder's learned variance: one, or one per pixel")
    parser.add_argument("--seed", type=int, default=0)


def networks() -> dict[str, torch.nn.Module]:
    """The two backbones at (nearly) equal parameter count (38.2k DiS, 38.9k MLP)."""
    from reverie.nets import MLP
    from reverie.nets.ssm import DiS

    return {"DiS (Mamba blocks)": DiS((48,), patch=4, dim=32, depth=4, state=4, expand=2),
            "MLP (residual)": MLP(dim=48, hidden=48, depth=4)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = [p for p in args.parts.split(",") if p]
    if not parts or any(p not in ("dis", "maetok", "vae") for p in parts):
        raise ValueError(f"--parts must name some of dis, maetok, vae, got {args.parts!r}")
    out: dict[str, Any] = {}
    if "dis" in parts:
        out["dis"] = _dis(args)
    if "maetok" in parts:
        out["maetok"] = _maetok(args)
    if "vae" in parts:
        out["vae"] = _vae(args)
    out["table"] = "\n\n".join(v["table"] for v in out.values())
    return out


def _fd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance (squared Gaussian W2) of two sample sets ``[n, d]``."""
    from reverie.timeseries.metrics import gaussian_w2

    a, b = a.flatten(1).double(), b.flatten(1).double()
    return gaussian_w2(a.mean(0), a.T.cov(), b.mean(0), b.T.cov()) ** 2


def _maetok(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.data import load_digits
    from reverie.denoisers import Denoiser
    from reverie.nets import MLP
    from reverie.nets.maetok import MAETokenizer, train_tokenizer
    from reverie.samplers import sample
    from reverie.train import train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    (x, y), (xt, yt) = load_digits("train"), load_digits("test")
    x, xt = x.float(), xt.float()
    rows, results = [], []
    for name, ratio in (("MAETok (mask 0.5)", 0.5), ("plain AE (mask 0)", 0.0)):
        torch.manual_seed(args.seed)
        g = torch.Generator().manual_seed(args.seed)
        tok = MAETokenizer()
        ts = time.perf_counter()
        train_tokenizer(tok, x, steps=args.tok_steps, mask_ratio=ratio, batch=64, generator=g)
        tok.eval()
        with torch.no_grad():
            z, zt = tok.encode(x), tok.encode(xt)
            rec = tok.decode(zt)
        mse = float(((rec - xt) ** 2).mean())
        probe = _probe(z, y, zt, yt)  # linear probe of the latents
        # latent diffusion: an MLP on standardised latents, sampled and decoded
        mu, sd = z.mean(0), z.std(0)
        res = train(MLP(dim=z.shape[1], hidden=128, depth=3), (z - mu) / sd,
                    prediction="edm", sigma_data=1.0, steps=args.latent_steps,
                    batch_size=128, seed=args.seed, progress=False)
        den = Denoiser(res.model.eval(), res.process, res.prediction)
        with torch.no_grad():
            zs = sample(den, torch.randn(500, z.shape[1], generator=g), "dpmpp_2m", 30)
            xs = tok.decode(zs * sd + mu)
        secs = time.perf_counter() - ts
        r = {"tokenizer": name, "mask_ratio": ratio, "recon_mse": mse, "probe_acc": probe,
             "fd_samples": _fd(xs, xt), "fd_recon": _fd(rec, xt), "seconds": round(secs, 1)}
        results.append(r)
        rows.append([name, mse, probe, r["fd_samples"], r["fd_recon"], round(secs)])
    table = format_table(["tokenizer", "recon MSE", "linear probe acc", "FD latent-diffusion "
                          "samples", "FD reconstructions (floor)", "seconds"], rows)
    print(table)
    print(f"\n16-dim latents (4 tokens x 4); {args.tok_steps} tokenizer steps, "
          f"{args.latent_steps} latent-diffusion steps; FD of two halves of the held-out "
          f"digits: {_fd(xt[::2], xt[1::2]):.3f}; {time.perf_counter() - t0:.0f} s; {machine()}")
    return {"tok_steps": args.tok_steps, "latent_steps": args.latent_steps, "rows": results,
            "table": table}


def _vae(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.train.latent import train_latent_digits

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    run = train_latent_digits(vae_steps=args.vae_steps, dit_steps=args.dit_steps,
                              obs_logvar=args.vae_variance, seed=args.seed)
    out = vae_report(run, n=args.vae_n, seed=args.seed)
    print(out["table"])
    lv = run.vae.obs_logvar
    print(f"\n{args.vae_steps} VAE steps ({run.info['vae_seconds']} s), {args.dit_steps} DiT "
          f"steps ({run.info['dit_seconds']} s); VAE decoder log-variance ({args.vae_variance}) "
          f"{float(lv.min()):.2f}..{float(lv.max()):.2f}; {out['n']} samples per row; "
          f"{time.perf_counter() - t0:.0f} s; {machine()}")
    return out


def vae_report(run: Any, *, n: int = 1000, seed: int = 0, folder: str | None = None
               ) -> dict[str, Any]:
    """Part ``vae``'s rows (module docstring) for a :class:`reverie.train.latent.LatentDigits`
    run; its ``DiTPipeline`` folder is written to ``folder`` (default: a temporary one) and
    loaded back with ``reverie.load``."""
    import tempfile

    from reverie.bench.digits import Judge, frechet_distance
    from reverie.data import load_digits
    from reverie.hub import load
    from reverie.likelihood import bits_per_dim
    from reverie.train.latent import DIGITS_BIN, save_latent_pipeline
    from reverie.train.vae import decode, elbo, posterior

    judge = Judge(seed)
    xt = load_digits("test")[0]
    labels = torch.arange(n) % 10
    g = torch.Generator().manual_seed(seed)
    real = judge.train_x[torch.randperm(len(judge.train_x), generator=g)[:n]]

    def fds(x: torch.Tensor) -> tuple[float, float]:  # classifier features, pixels
        return frechet_distance(judge.features(x), judge.test_features), _fd(x, xt)

    vae, lv = run.vae.vae, run.vae.obs_logvar
    with torch.no_grad():  # the negative ELBO of dequantised held-out digits, 16 draws each
        xd = xt + DIGITS_BIN * (torch.rand(xt.shape, generator=g) - 0.5)
        bound = elbo(vae, xd, obs_logvar=lv, samples=16, generator=g).double()
        recon = decode(vae, posterior(vae, xt)[0]).clamp(-1, 1)
    bpd = float(bits_per_dim(bound, xt[0].shape, bin_width=DIGITS_BIN).mean())
    with tempfile.TemporaryDirectory() as tmp:  # through the latent wrapper: reverie.load
        pipe = load(str(save_latent_pipeline(run, folder or f"{tmp}/digits-vae")))
        ts = time.perf_counter()
        xs = 2 * pipe.sample(labels, guidance_scale=1.0, sampler="dpmpp_2m", steps=20,
                             output_type="pt", generator=torch.Generator().manual_seed(seed)) - 1
        latent_secs = time.perf_counter() - ts
    base = load("digits")
    ts = time.perf_counter()
    xb = base.sample(n, sampler="dpmpp_2m", steps=20, seed=seed, labels=labels)
    base_secs = time.perf_counter() - ts

    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    dec = count(vae.decoder) + count(vae.post_quant_conv)
    rows = [
        ["real training digits (floor)", "-", "-", "-", *fds(real), "-"],
        ["VAE reconstructions (latent floor)", count(vae), "-", "-", *fds(recon), "-"],
        ["latent DiT + VAE decoder", f"{count(pipe.transformer)} + {dec}", -float(bound.mean()),
         bpd, *fds(xs), round(latent_secs, 1)],
        ["pixel UNet (bundled digits)", count(base.net), "-", "-", *fds(xb), round(base_secs, 1)],
    ]
    keys = ["model", "params", "nelbo_nats", "bits_per_dim", "fd_features", "fd_pixels",
            "sample_seconds"]
    table = format_table(["model", "params", "-ELBO nats/image", "bits/dim", "FD (classifier "
                          "features)", "FD (pixels)", "sample s"], rows)
    return {**run.info, "n": n, "scaling_factor": run.scaling,
            "rows": [dict(zip(keys, r)) for r in rows], "table": table}


def _probe(z: torch.Tensor, y: torch.Tensor, zt: torch.Tensor, yt: torch.Tensor) -> float:
    """Test accuracy of ridge least squares from ``[z, 1]`` to one-hot labels."""
    f = torch.cat([z, torch.ones(len(z), 1)], 1).double()
    w = torch.linalg.solve(f.T @ f + 1e-3 * torch.eye(f.shape[1], dtype=torch.float64),
                           f.T @ torch.nn.functional.one_hot(y, 10).double())
    ft = torch.cat([zt, torch.ones(len(zt), 1)], 1).double()
    return float(((ft @ w).argmax(1) == yt).float().mean())


def _dis(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.denoisers import Denoiser
    from reverie.process import EDM
    from reverie.samplers import sample
    from reverie.timeseries import SeasonalGP, gaussian_errors
    from reverie.train import train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    law = SeasonalGP()
    g = torch.Generator().manual_seed(args.seed)
    data = law.sample(args.data, g).float()
    sd = round(float(data.std()), 3)
    test = law.sample(args.test, g)
    noise = torch.randn(len(SIGMAS), *test.shape, generator=g, dtype=torch.float64)
    proc = EDM(sigma_data=sd)
    exact = law.denoiser(proc)

    def mse(den, k: int) -> float:
        s = SIGMAS[k]
        with torch.no_grad():
            return float(((den(test + s * noise[k], proc.t_from_sigma_ve(torch.tensor(s)))
                           - test) ** 2).mean())

    bayes = [mse(exact, k) for k in range(len(SIGMAS))]
    m, c = law.mean(), law.covariance()
    start = torch.randn(args.samples, law.length, generator=g, dtype=torch.float64)
    floor = gaussian_errors(law.sample(args.samples, g), m, c)
    rows, results = [["exact draws (floor)", "-", "-", *([1.0] * len(SIGMAS)), floor["w2"],
                      floor["cov_err"]]], []
    for name, net in networks().items():
        torch.manual_seed(args.seed)
        params = sum(p.numel() for p in net.parameters())
        ts = time.perf_counter()
        res = train(net, data, prediction="edm", sigma_data=sd, steps=args.steps,
                    batch_size=args.batch, lr=2e-3, warmup=50, ema_decay=0.99,
                    seed=args.seed, progress=False)
        secs = time.perf_counter() - ts
        den = Denoiser(res.model.eval(), res.process, res.prediction)
        ratio = [mse(den, k) / bayes[k] for k in range(len(SIGMAS))]
        with torch.no_grad():
            x = sample(den, start, "dpmpp_2m", 30)
        err = gaussian_errors(x, m, c)
        results.append({"net": name, "params": params, "train_seconds": round(secs, 1),
                        "mse_over_bayes": dict(zip(map(str, SIGMAS), ratio)), **err,
                        "final_loss": res.losses[-1] if res.losses else None})
        rows.append([name, params, round(secs), *ratio, err["w2"], err["cov_err"]])
    table = format_table(["network", "params", "train s",
                          *(f"MSE/Bayes s={s:g}" for s in SIGMAS), "W2", "cov err"], rows)
    print(table)
    print(f"\nBayes (exact denoiser) MSE at sigma {SIGMAS}: "
          + ", ".join(f"{b:.4f}" for b in bayes)
          + f"; {time.perf_counter() - t0:.0f} s; {machine()}")
    return {"steps": args.steps, "batch": args.batch, "data": args.data, "seed": args.seed,
            "bayes_mse": dict(zip(map(str, SIGMAS), bayes)), "floor": floor, "rows": results,
            "table": table}
