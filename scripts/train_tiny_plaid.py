"""A tiny trained Plaid example beside the masked-diffusion baseline, on the same data.

Data: the length-3 sequences of the 3-token Markov chain of scripts/train_tiny_sed.py (27
sequences, exact entropy 2.815 nats = 0.938 nats/token). Plaid (Gulrajani & Hashimoto 2023):
the MLP of train_tiny_sed.py, with the embedding table and the noise schedule's end points
(gamma_min, gamma_max) learned jointly by minimising Plaid's bound
(reverie.discrete.embedding.PlaidEmbedding). Masked baseline (MD4 / MDLM): an MLP of the same
width on the one-hot partially masked sequence and t, trained with reverie.discrete.nelbo.
Both get the same steps, batch and learning rate; each reports its NELBO on 20000 held-out
draws (nats per token) beside the entropy, the floor; an ablation trains the same Plaid net
with the table and end points frozen at their start. One CPU thread, about a minute::

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/train_tiny_plaid.py [--steps 1500]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

from reverie.discrete import TokenDenoiser, nelbo
from reverie.discrete.embedding import PlaidEmbedding

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_tiny_sed import TinySED  # noqa: E402  (the same network as the SED example)

V, L, D = 3, 3, 4


class MaskedMLP(torch.nn.Module):
    """``(x [B, L] in 0..V (V = mask), t [B]) -> logits [B, L, V]``."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.f = torch.nn.Sequential(
            torch.nn.Linear(L * (V + 1) + 1, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.SiLU(),
            torch.nn.Linear(hidden, L * V))

    def forward(self, x, t):
        inp = torch.nn.functional.one_hot(x, V + 1).flatten(1).double()
        return self.f(torch.cat([inp, t.double()[:, None]], 1)).reshape(-1, L, V)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    seqs = torch.tensor(list(itertools.product(range(V), repeat=L)))
    p0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    tr = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.3, 0.3, 0.4]], dtype=torch.float64)
    probs = p0[seqs[:, 0]] * tr[seqs[:, 0], seqs[:, 1]] * tr[seqs[:, 1], seqs[:, 2]]
    draw = torch.multinomial(probs, 20000, True, generator=torch.Generator().manual_seed(3))
    held = seqs[draw]

    plaid_net = TinySED(L, V, D).double()
    plaid = PlaidEmbedding(V, D, generator=torch.Generator().manual_seed(0))
    fixed_net = TinySED(L, V, D).double()  # ablation: the same start, table and ends frozen
    fixed_net.load_state_dict(plaid_net.state_dict())
    fixed = PlaidEmbedding(V, D, generator=torch.Generator().manual_seed(0)).requires_grad_(False)
    masked = TokenDenoiser(MaskedMLP().double(), mask_id=V, vocab_size=V)

    def plaid_eval(emb=plaid, net=plaid_net):
        with torch.no_grad():
            return emb.nelbo(net, held, generator=torch.Generator().manual_seed(4)).mean()

    def masked_eval():
        with torch.no_grad():
            return nelbo(masked, held, samples=8, generator=torch.Generator().manual_seed(4)).mean()

    result = {"entropy_per_token": float(-(probs * probs.log()).sum()) / L,
              "exact_nll_held_out_per_token": float(-probs[draw].log().mean()) / L,
              "untrained": {"plaid": float(plaid_eval()) / L, "masked": float(masked_eval()) / L}}
    losses = {
        "plaid": (list(plaid_net.parameters()) + list(plaid.parameters()),
                  lambda tok, g: plaid.nelbo(plaid_net, tok, generator=g)),
        "plaid_fixed_table_and_ends": (list(fixed_net.parameters()),
                                       lambda tok, g: fixed.nelbo(fixed_net, tok, generator=g)),
        "masked": (list(masked.fn.parameters()), lambda tok, g: nelbo(masked, tok, generator=g)),
    }
    for name, (params, loss_fn) in losses.items():
        opt = torch.optim.Adam(params, args.lr)
        g = torch.Generator().manual_seed(args.seed)  # the same training batches for both
        t0 = time.time()
        for _ in range(args.steps):
            tok = seqs[torch.multinomial(probs, args.batch, True, generator=g)]
            loss = loss_fn(tok, g).mean() / L
            opt.zero_grad()
            loss.backward()
            opt.step()
        result[f"train_s_{name}"] = round(time.time() - t0, 1)
    result["trained"] = {"plaid": float(plaid_eval()) / L,
                         "plaid_fixed_table_and_ends": float(plaid_eval(fixed, fixed_net)) / L,
                         "masked": float(masked_eval()) / L}
    with torch.no_grad():
        result["plaid_learned"] = {"sigma_min": float(plaid.sigma_min),
                                   "sigma_max": float(plaid.sigma_max),
                                   "table_row_norms": plaid.table.norm(dim=-1).tolist()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
