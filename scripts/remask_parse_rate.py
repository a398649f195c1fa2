"""JSON parse rate of the revising samplers (rdm, rcr, token_edit) against their base samplers
on the bundled tiny-json model, at the same steps and seed (numbers in docs/discrete.md).

    PYTHONPATH=src python scripts/remask_parse_rate.py [n]
"""

import sys
import time

import torch

from reverie.bench.discrete_cache import _parse_rate
from reverie.discrete import generate, load_model

RUNS = [  # (sampler, block_length, options)
    ("low_confidence", None, {}),
    ("rdm", None, {}),
    ("rcr", None, {}),
    ("threshold", 16, {"threshold": 0.7}),
    ("token_edit", 16, {"threshold": 0.7, "edit_threshold": 0.9}),
    ("token_edit", 16, {"threshold": 0.7, "edit_threshold": 0.5}),
]


def main(n: int = 256) -> None:
    torch.set_num_threads(1)
    model = load_model("tiny-json")
    for steps in (8, 16, 32):
        for name, bl, opts in RUNS:
            t0 = time.perf_counter()
            x = generate(model, length=64, steps=steps, sampler=name, block_length=bl, n=n,
                         generator=torch.Generator().manual_seed(0), **opts)
            print({"sampler": name, "steps": steps, "block_length": bl, **opts,
                   "parse_rate": round(_parse_rate(model, x), 3),
                   "seconds": round(time.perf_counter() - t0, 1)}, flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
