"""Train SDAR in miniature on tiny-json: an autoregressive model, its conversion into a
block-diffusion model, and a block-diffusion model from scratch (:mod:`reverie.discrete.sdar`).

    PYTHONPATH=src python scripts/train_tiny_sdar.py --out /tmp/tiny-sdar

Trains the tiny models of ``reverie bench sdar`` (same options, same defaults: width 64, depth
2, 600 AR steps, 200 conversion / scratch steps, blocks of 4), saves each as a model folder
(``OUT/ar``, ``OUT/sdar``, ``OUT/ar_shifted``, ``OUT/sdar_shifted``, ``OUT/scratch``:
safetensors + ``config.json``, readable by
``reverie.load``) and prints their held-out NLL / exact block NELBO per character and the
parse rates and calls per sample of ``threshold`` and ``low_confidence`` sampling. The models
are not bundled; ``reverie bench sdar`` retrains them and writes the results file (4-6
minutes of training plus about a minute of evaluation on the shared 2-core CPU with one
thread under load, 2026-11-30; ``--scratch-total`` adds about 2 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))

from train_tiny_json import CHARS, CharTokenizer, save  # noqa: E402

from reverie.bench import sdar  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/tiny-sdar", help="folder for the three models")
    sdar.add_arguments(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    nets, seconds = sdar.train_models(args)
    data = sdar.tiny_json_data()
    tok = CharTokenizer(CHARS)
    for name, net in nets.items():
        training = {"script": "scripts/train_tiny_sdar.py", "model": name,
                    "train_seconds": seconds[name],
                    **{k: v for k, v in vars(args).items() if k != "out"}}
        save(net, tok, Path(args.out) / name, training)
        metrics = sdar.evaluate(net, args, data, shifted=name == "ar_shifted")
        print(f"{name}: " + json.dumps(metrics), flush=True)
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
