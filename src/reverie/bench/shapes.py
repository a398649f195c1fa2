"""Prompt following and image quality of the bundled text-to-image model ``shapes``.

Images come from ``StableDiffusion.sample`` with its defaults (``dpmpp_2m``, the sampler's
default grid, 20 steps = 20 NFE; each step with guidance evaluates the UNet on the prompt and
the empty prompt in one batched call), float32, judged by :func:`reverie.shapes.prompt_follows`
(the exact detector: the colour, shape and place the prompt names, one object, a drawable size).

* **guidance scale**: chosen on a selection set -- the 50 *training* combinations, 5 images
  each, seeds ``seed + 1000 + ...`` -- as the scale with the highest accuracy among
  ``--scales``; the report uses other seeds and (for the held-out set) other prompts, so the
  choice is not fitted to the reported runs.
* **accuracy**: on the 10 combinations held out of training (``reverie.shapes.HELD_OUT``:
  prompts the model never saw) and, separately, on the 50 training combinations with fresh
  seeds, at the selected scale (``--n`` images per set) and, for reference (``--n-ref``
  images), at 7.5 (the pipeline's default), 1 (no guidance) and 0 (the unconditional model:
  what ignoring the prompt scores).
* **Frechet distance** between Gaussians fitted to :func:`reverie.shapes.features` of the
  generated images and of real images of the same prompts (Heusel et al. 2017's FID with the
  detector's measurements in place of Inception features: centroid, area, bounding box, fill,
  median colour -- the quantities the data is drawn from -- plus the share of soft (blurred)
  pixels and of the largest connected part, which see blur and clutter). The floor is the same
  distance between two independent real sets of the same size (mean of 5 draws): what a
  perfect model would score. Also shown: the same ratio on the 9 drawing parameters alone
  (without the blur and clutter measures), and a row for real images of the same prompts
  sent through the VAE and back (the ceiling the latent model works under).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reverie import shapes
from reverie.bench.common import format_table, machine
from reverie.bench.digits import frechet_distance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="shapes", help="model name or folder (default shapes)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    parser.add_argument("--scales", default="1.5,2,3,4,5,7.5",
                        help="guidance scales to select from (default 1.5,2,3,4,5,7.5)")
    parser.add_argument("--n", type=int, default=500,
                        help="images per reported set (held-out, seen) at the selected "
                             "guidance (default 500)")
    parser.add_argument("--n-ref", type=int, default=100,
                        help="images per set for the reference guidance scales (default 100)")
    parser.add_argument("--select-n", type=int, default=250,
                        help="images per scale in the selection (default 250: 5 per training "
                             "combination)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw a grid of samples with their prompts (e.g. "
                             "docs/shapes-samples.png)")
    parser.add_argument("--quick", action="store_true",
                        help="100 and 50 images per set, 50 per scale, scales 2,4")
    parser.add_argument("--semantic", action="store_true",
                        help="instead: CFG vs SynGen vs semantic guidance tuning at the model's "
                             "default guidance scale (see run_semantic); --n images per set "
                             "(default there 200), --select-n per candidate setting; give "
                             "--out benchmarks/results/shapes-semantic.json")
    parser.add_argument("--semantic-scale", type=float, default=None,
                        help="--semantic: the guidance scale of every method (default: the "
                             "model's default_guidance)")
    parser.add_argument("--syngen-steps", default="20,200,2000",
                        help="--semantic: SynGen step sizes to select from (default 20,200,2000;"
                             " the paper's is 20)")
    parser.add_argument("--sgt-scales", default="1.5,7.5",
                        help="--semantic: SGT concept scales to select from (default 1.5,7.5; "
                             "the paper's is 7.5)")


def generate(pipe: Any, prompts: list[str], scale: float, steps: int, seed: int,
             chunk: int = 250, **sample_options: Any) -> torch.Tensor:
    """Images ``[len(prompts), 3, 32, 32]`` in [0, 1]; chunk ``k`` drawn from ``seed + k``;
    ``sample_options`` (e.g. ``guidance``) go to ``pipe.sample``."""
    out = []
    for k in range(0, len(prompts), chunk):
        g = torch.Generator().manual_seed(seed + k)
        out.append(pipe.sample(prompts[k : k + chunk], steps=steps, guidance_scale=scale,
                               generator=g, output_type="pt", **sample_options))
    return torch.cat(out)


def _prompts(combos: tuple, n: int) -> list[str]:
    """``n`` prompts cycling through ``combos`` (equal shares)."""
    return [shapes.prompt(*combos[k % len(combos)]) for k in range(n)]


def _accuracy(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Share of images following their prompt, and per attribute."""
    want = torch.tensor([shapes.parse_prompt(p) for p in prompts])
    d = shapes.detect(images)
    ok = d.valid()
    return {
        "accuracy": float(shapes.prompt_follows(images, prompts).float().mean()),
        "colour": float((ok & (d.colour == want[:, 0])).float().mean()),
        "shape": float((ok & (d.shape == want[:, 1])).float().mean()),
        "place": float((ok & (d.place == want[:, 2])).float().mean()),
        "valid": float(ok.float().mean()),
    }


def _real(prompts: list[str], seed: int) -> torch.Tensor:
    """Real images of exactly these prompts."""
    combos = torch.tensor([shapes.parse_prompt(p) for p in prompts])
    return shapes.draw(combos, torch.Generator().manual_seed(seed))


#: the first 9 features are the drawing parameters (centroid, area, box, fill, colour); the
#: last 2 (soft-edge share, largest-part share) see blur and clutter
DRAWN = slice(0, 9)


def _floor(prompts: list[str], seed: int, draws: int = 5) -> tuple[float, float, np.ndarray]:
    """Mean Frechet distance between two independent real sets (all features; drawing
    parameters only), and one real set's features (the reference)."""
    ref = shapes.features(_real(prompts, seed)).numpy()
    others = [shapes.features(_real(prompts, seed + 1 + k)).numpy() for k in range(draws)]
    full = np.mean([frechet_distance(f, ref) for f in others])
    drawn = np.mean([frechet_distance(f[:, DRAWN], ref[:, DRAWN]) for f in others])
    return float(full), float(drawn), ref


def _frechet(images: torch.Tensor, floor: tuple[float, float, np.ndarray]) -> dict[str, float]:
    full, drawn, ref = floor
    f = shapes.features(images).numpy()
    fd, fd_drawn = frechet_distance(f, ref), frechet_distance(f[:, DRAWN], ref[:, DRAWN])
    return {"frechet": fd, "frechet_floor": full, "frechet_over_floor": fd / full,
            "frechet_drawn": fd_drawn, "frechet_drawn_floor": drawn,
            "frechet_drawn_over_floor": fd_drawn / drawn}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from reverie.hub import load

    if getattr(args, "semantic", False):
        return run_semantic(args)
    torch.set_grad_enabled(False)
    n, n_ref, n_sel = (100, 50, 50) if args.quick else (args.n, args.n_ref, args.select_n)
    scales = [2.0, 4.0] if args.quick else [float(s) for s in args.scales.split(",") if s]
    pipe = load(args.model)
    folder = Path(pipe.path) if pipe.path is not None else None
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder else None
    train = {}
    if folder is not None and (folder / "reverie.json").is_file():
        import json

        train = json.loads((folder / "reverie.json").read_text()).get("training", {})
    t0 = time.perf_counter()

    # 1. the guidance scale, selected on the training combinations with selection seeds
    select_prompts = _prompts(shapes.TRAIN_COMBOS, n_sel)
    selection = {}
    for s in scales:
        images = generate(pipe, select_prompts, s, args.steps, args.seed + 1000)
        selection[s] = _accuracy(images, select_prompts)["accuracy"]
        print(f"  selection: guidance {s:g}: accuracy {selection[s]:.3f}", flush=True)
    best = max(scales, key=lambda s: (selection[s], -s))  # ties: the smaller scale

    # 2. the report: held-out and seen combinations, other seeds
    sets = {"held-out": _prompts(shapes.HELD_OUT, n), "seen": _prompts(shapes.TRAIN_COMBOS, n)}
    floors = {name: _floor(p, args.seed + 5000) for name, p in sets.items()}
    rows, results, kept = [], [], {}
    for name, prompts in sets.items():
        for label, s in [("selected", best), ("SD default", 7.5), ("no guidance", 1.0),
                         ("unconditional", 0.0)]:
            if label != "selected" and s == best:
                continue
            some = prompts if label == "selected" else prompts[:n_ref]
            t1 = time.perf_counter()
            images = generate(pipe, some, s, args.steps, args.seed + 2000)
            secs = time.perf_counter() - t1
            acc = _accuracy(images, some)
            res = {"set": name, "guidance": s, "which": label, "n": len(some), **acc,
                   "seconds": secs}
            fd_cells: list[Any] = ["-"] * 4
            if label == "selected":  # the Frechet distance at the full size only
                res.update(_frechet(images, floors[name]))
                fd_cells = [res[k] for k in ("frechet", "frechet_floor", "frechet_over_floor",
                                             "frechet_drawn_over_floor")]
                kept[name] = (images, prompts)
            results.append(res)
            rows.append([name, f"{s:g} ({label})", len(some), acc["accuracy"], acc["colour"],
                         acc["shape"], acc["place"], *fd_cells, secs])
            print(f"  {name} guidance {s:g}: accuracy {acc['accuracy']:.3f}"
                  + (f", FD {res['frechet']:.3f} ({res['frechet_over_floor']:.2f}x floor)"
                     if "frechet" in res else ""), flush=True)
        # the ceiling set by the VAE: real images of the same prompts, encoded and decoded
        t1 = time.perf_counter()
        images = pipe.decode(pipe.encode_image(_real(prompts, args.seed + 6000)))
        res = {"set": name, "guidance": None, "which": "VAE round trip of real images",
               "n": len(prompts), **_accuracy(images, prompts), **_frechet(images, floors[name]),
               "seconds": time.perf_counter() - t1}
        results.append(res)
        rows.append([name, "(VAE round trip of real images)", len(prompts), res["accuracy"],
                     res["colour"], res["shape"], res["place"], res["frechet"],
                     res["frechet_floor"], res["frechet_over_floor"],
                     res["frechet_drawn_over_floor"], res["seconds"]])
    headers = ["prompts", "guidance", "n", "accuracy", "colour", "shape", "place", "Frechet",
               "floor", "FD / floor", "FD / floor, drawing parameters only", "seconds"]
    table = format_table(headers, rows)
    print()
    print(table)
    real_acc = {name: float(shapes.prompt_follows(_real(p, args.seed + 7000), p).float().mean())
                for name, p in sets.items()}
    print(f"\nselected guidance {best:g} (selection accuracies "
          f"{', '.join(f'{s:g}: {a:.3f}' for s, a in selection.items())}; {n_sel} images "
          f"each); "
          f"detector on real images: {real_acc}; {args.steps} steps dpmpp_2m; model "
          f"{size / 1e6 if size else float('nan'):.2f} MB, trained {train.get('seconds')} s; "
          f"{time.perf_counter() - t0:.0f} s; {machine()}")
    if args.plot:
        _plot(kept, args.plot, best, args.steps)
        print(f"wrote {args.plot}")
    return {
        "model": args.model, "n": n, "n_ref": n_ref, "select_n": n_sel, "steps": args.steps,
        "sampler": "dpmpp_2m",
        "dtype": "float32", "seed": args.seed, "selection": {f"{s:g}": a for s, a in
                                                             selection.items()},
        "selected_guidance": best, "held_out_combinations": [shapes.prompt(*c) for c in
                                                             shapes.HELD_OUT],
        "detector_accuracy_on_real": real_acc, "model_bytes": size, "training": train,
        "rows": results, "table": table,
    }


def _plot(kept: dict, path: str, scale: float, steps: int, per_row: int = 8) -> None:
    """A grid: one row per prompt (all held-out prompts, then 6 seen ones), samples across."""
    from reverie.plot import _figure, mosaic, save_figure

    rows = []
    for name, (images, prompts) in kept.items():
        order = list(dict.fromkeys(prompts))[: 10 if name == "held-out" else 6]
        for p in order:
            idx = [k for k, q in enumerate(prompts) if q == p][:per_row]
            rows.append((f"{p}{' (held out)' if name == 'held-out' else ''}", images[idx]))
    fig = _figure(2.6 + 0.55 * per_row, 0.55 * len(rows) + 0.5)
    for r, (label, imgs) in enumerate(rows):
        ax = fig.add_subplot(len(rows), 1, r + 1)
        ax.imshow(mosaic(imgs, ncol=per_row, value_range=(0, 1), pad_value=1.0),
                  interpolation="nearest")
        ax.set_axis_off()
        ax.text(-3, 16, label, ha="right", va="center", fontsize=8)
    fig.suptitle(f"shapes: dpmpp_2m, {steps} steps, guidance {scale:g}", fontsize=9)
    fig.subplots_adjust(left=0.33, right=0.99, top=1 - 0.35 / (0.55 * len(rows) + 0.5),
                        bottom=0.01, hspace=0.15)
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# --semantic: SynGen and semantic guidance tuning against CFG
# ---------------------------------------------------------------------------------------------


def run_semantic(args: argparse.Namespace) -> dict[str, Any]:
    """CFG, SynGen and SGT (:mod:`reverie.guidance.semantic`) at the model's default guidance
    scale (or ``--semantic-scale``), ``--steps`` dpmpp_2m steps, the same seeds for every
    method: accuracy per attribute and the Frechet distance on the held-out and the seen
    combinations. Each method at its paper's
    defaults, and with one setting (SynGen's step size, SGT's concept scale) selected by
    accuracy on the training combinations with selection seeds (as the scale of the main
    benchmark), reported on the other seeds."""
    from reverie.hub import load

    pipe = load(args.model)
    w = float(pipe.default_guidance if args.semantic_scale is None else args.semantic_scale)
    n = 100 if args.quick else (args.n if args.n != 500 else 200)
    n_sel = 50 if args.quick else args.select_n
    t0 = time.perf_counter()

    def images(prompts, seed, guidance="cfg", **options):
        return generate(pipe, prompts, w, args.steps, seed, guidance=guidance,
                        guidance_options=options)

    select_prompts = _prompts(shapes.TRAIN_COMBOS, n_sel)
    selection: dict[str, dict[str, float]] = {}
    for method, key, values in (("syngen", "step_size", args.syngen_steps),
                                ("sgt", "concept_scale", args.sgt_scales)):
        selection[method] = {}
        for v in [float(s) for s in values.split(",") if s]:
            acc = _accuracy(images(select_prompts, args.seed + 1000, method, **{key: v}),
                            select_prompts)["accuracy"]
            selection[method][f"{v:g}"] = acc
            print(f"  selection: {method} {key} {v:g}: accuracy {acc:.3f}", flush=True)
    best = {m: float(max(sel, key=lambda v: (sel[v], -float(v)))) for m, sel in
            selection.items()}
    variants = [("cfg", "CFG", {})]
    for method, what, key, paper in (("syngen", "CFG + SynGen, step", "step_size", 20.0),
                                     ("sgt", "SGT, concept scale", "concept_scale", 7.5)):
        if best[method] == paper:
            variants.append((method, f"{what} {paper:g} (paper's, also selected)",
                             {key: paper}))
        else:
            variants += [(method, f"{what} {paper:g} (paper's)", {key: paper}),
                         (method, f"{what} {best[method]:g} (selected)", {key: best[method]})]
    sets = {"held-out": _prompts(shapes.HELD_OUT, n), "seen": _prompts(shapes.TRAIN_COMBOS, n)}
    rows, results, kept = [], [], {}
    for name, prompts in sets.items():
        floor = _floor(prompts, args.seed + 5000)
        for method, label, options in variants:
            t1 = time.perf_counter()
            imgs = images(prompts, args.seed + 2000, method, **options)
            secs = time.perf_counter() - t1
            res = {"set": name, "method": method, "label": label, "options": options,
                   "n": len(prompts), **_accuracy(imgs, prompts), **_frechet(imgs, floor),
                   "seconds": secs}
            results.append(res)
            kept.setdefault(name, []).append((label, imgs, prompts))
            rows.append([name, label, len(prompts), res["accuracy"], res["colour"],
                         res["shape"], res["place"], res["frechet"], res["frechet_over_floor"],
                         secs])
            print(f"  {name} {label}: accuracy {res['accuracy']:.3f}, FD "
                  f"{res['frechet']:.3f}", flush=True)
    headers = ["prompts", "method", "n", "accuracy", "colour", "shape", "place", "Frechet",
               "FD / floor", "seconds"]
    table = format_table(headers, rows)
    print()
    print(table)
    print(f"\nguidance scale {w:g} for every method; {args.steps} steps "
          f"dpmpp_2m; same seeds per set; selection ({n_sel} images on training combinations, "
          f"other seeds): {selection}; {time.perf_counter() - t0:.0f} s; {machine()}")
    if args.plot:
        _plot_semantic(kept["held-out"], args.plot, w, args.steps)
        print(f"wrote {args.plot}")
    return {"model": args.model, "part": "semantic", "n": n, "select_n": n_sel,
            "steps": args.steps, "sampler": "dpmpp_2m", "guidance_scale": w, "seed": args.seed,
            "selection": selection, "selected": best, "rows": results, "table": table}


def _plot_semantic(kept: list, path: str, scale: float, steps: int, per: int = 4) -> None:
    """One row per held-out prompt; per method a block of ``per`` samples (same seeds)."""
    from reverie.plot import _figure, mosaic, save_figure

    prompts = list(dict.fromkeys(kept[0][2]))
    fig = _figure(2.4 + 1.45 * len(kept), 0.5 * len(prompts) + 0.8)
    for r, p in enumerate(prompts):
        for c, (label, imgs, ps) in enumerate(kept):
            idx = [k for k, q in enumerate(ps) if q == p][:per]
            ax = fig.add_subplot(len(prompts), len(kept), r * len(kept) + c + 1)
            ax.imshow(mosaic(imgs[idx], ncol=per, value_range=(0, 1), pad_value=1.0),
                      interpolation="nearest")
            ax.set_axis_off()
            if r == 0:
                ax.set_title(label, fontsize=6)
            if c == 0:
                ax.text(-3, 16, p, ha="right", va="center", fontsize=7)
    fig.suptitle(f"shapes, held-out prompts: dpmpp_2m {steps} steps, guidance {scale:g}, "
                 "the same seeds in every block", fontsize=8)
    fig.subplots_adjust(left=0.2, right=0.99, top=1 - 0.6 / (0.5 * len(prompts) + 0.8),
                        bottom=0.01, hspace=0.1, wspace=0.05)
    save_figure(fig, path)
